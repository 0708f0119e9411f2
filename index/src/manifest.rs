//! `manifest.json`: the one file that says what an index is.
//!
//! It carries a checksum of its own (`"checksum": "crc32:…"`, over the
//! rest of the document as written), so a damaged manifest — a flipped
//! digit in a tombstone list, a size, a CRC — is an error at open, not a
//! different index. Manifests written before the checksum existed open
//! without one; their next commit adds it.
//!
//! Everything else in the directory is immutable once written; a commit
//! writes new files, then atomically replaces the manifest (see
//! [`crate::io::write_atomic`]). A reader that loaded generation `g` keeps
//! seeing exactly generation `g`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec::CodecKind;
use crate::error::{IndexError, Result};
use crate::io::FileEntry;
use crate::text::Analyzer;

pub const FORMAT_NAME: &str = "tessera-index";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

/// Upper bounds that keep a damaged manifest from asking for absurd
/// allocations.
pub const MAX_DIM: usize = 1 << 16;
pub const MAX_CENTROIDS: usize = 1 << 24;

/// A linear dimension reduction applied to every vector before coding:
/// `y = R · (x − mean)` (then renormalised), `R` is `out_dim × in_dim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReductionEntry {
    pub in_dim: usize,
    pub out_dim: usize,
    /// File holding `R` (`out_dim × in_dim` f32) followed by `mean` (`in_dim`
    /// f32) and, if `query_mean`, the queries' own mean (`in_dim` f32).
    pub file: String,
    /// Queries are centred on a mean of their own (absent: on `mean`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub query_mean: bool,
}

/// One immutable segment: a batch of documents written together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    /// Folder name inside the index directory.
    pub name: String,
    pub docs: u32,
    pub tokens: u64,
    /// Files of the segment (relative to its folder) with sizes and CRCs.
    pub files: BTreeMap<String, FileEntry>,
    /// Local ids of deleted documents (tombstones), sorted.
    #[serde(default)]
    pub deleted: Vec<u32>,
}

/// The parsed manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Incremented by every commit.
    pub generation: u64,
    /// Dimension of the stored vectors (after reduction).
    pub dim: usize,
    pub codec: CodecKind,
    pub num_centroids: usize,
    /// Decoded residual vectors are renormalised (inputs were unit length).
    pub renormalise: bool,
    #[serde(default)]
    pub reduction: Option<ReductionEntry>,
    /// Index-level files: `centroids.f32`, `buckets.f32`, the reduction.
    pub files: BTreeMap<String, FileEntry>,
    pub segments: Vec<SegmentEntry>,
    /// Free-form facts recorded by the builder's caller (e.g. the model).
    #[serde(default)]
    pub info: serde_json::Value,
    /// The BM25 text analyzer; indexes from before it was recorded are
    /// `legacy`.
    #[serde(default = "legacy_analyzer")]
    pub analyzer: Analyzer,
}

fn legacy_analyzer() -> Analyzer {
    Analyzer::Legacy
}

impl Manifest {
    /// Reads and checks `dir/manifest.json` (shape only; files are checked by
    /// the reader).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                IndexError::corrupt(
                    &path,
                    "missing: this is not a Tessera index (or it was never completed)",
                )
            } else {
                IndexError::io(&path, e)
            }
        })?;
        let m = Self::parse(&bytes).map_err(|e| IndexError::corrupt(&path, e))?;
        m.check(&path)?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(IndexError::corrupt(path, m));
        if self.format != FORMAT_NAME {
            return bad(format!("format is {:?}, not {FORMAT_NAME:?}", self.format));
        }
        if self.version != FORMAT_VERSION {
            return bad(format!(
                "format version {} is not supported (this build reads version {FORMAT_VERSION})",
                self.version
            ));
        }
        if self.dim == 0 || self.dim > MAX_DIM {
            return bad(format!("dim {} out of range", self.dim));
        }
        if self.num_centroids == 0 || self.num_centroids > MAX_CENTROIDS {
            return bad(format!("num_centroids {} out of range", self.num_centroids));
        }
        self.codec
            .validate(self.dim)
            .or_else(|e| bad(e.to_string()))?;
        if let Some(r) = &self.reduction {
            if r.out_dim != self.dim || r.in_dim == 0 || r.in_dim > MAX_DIM {
                return bad(format!(
                    "reduction {}→{} does not fit dim {}",
                    r.in_dim, r.out_dim, self.dim
                ));
            }
            if !self.files.contains_key(&r.file) {
                return bad(format!("reduction file {:?} is not listed", r.file));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.segments {
            if !safe_name(&s.name) || !names.insert(&s.name) {
                return bad(format!("bad or duplicate segment name {:?}", s.name));
            }
            if s.deleted.windows(2).any(|w| w[0] >= w[1])
                || s.deleted.last().is_some_and(|&d| d >= s.docs)
            {
                return bad(format!(
                    "segment {}: tombstones are not sorted local ids",
                    s.name
                ));
            }
            for f in s.files.keys() {
                let plain = f.strip_prefix("text/").unwrap_or(f);
                if !safe_name(plain) {
                    return bad(format!("segment {}: bad file name {f:?}", s.name));
                }
            }
        }
        for f in self.files.keys() {
            if !safe_name(f) {
                return bad(format!("bad file name {f:?}"));
            }
        }
        Ok(())
    }

    pub fn live_docs(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| u64::from(s.docs) - s.deleted.len() as u64)
            .sum()
    }

    pub fn tokens(&self) -> u64 {
        self.segments.iter().map(|s| s.tokens).sum()
    }

    /// Parses manifest bytes, checking the checksum they carry.
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
        let obj = doc
            .as_object_mut()
            .ok_or("invalid manifest: not a JSON object")?;
        // A newer format may hash differently: say so before the checksum.
        if let Some(v) = obj.get("version").and_then(|v| v.as_u64()) {
            if v != u64::from(FORMAT_VERSION) {
                return Err(format!(
                    "format version {v} is not supported (this build reads version {FORMAT_VERSION})"
                ));
            }
        }
        let stated = obj.remove(CHECKSUM_FIELD);
        if let Some(stated) = stated {
            let want = checksum(&doc);
            if stated.as_str() != Some(want.as_str()) {
                return Err(format!(
                    "checksum mismatch (manifest says {stated}, its contents hash to {want:?}): \
                     the file was changed or damaged after it was written"
                ));
            }
        }
        serde_json::from_value(doc).map_err(|e| format!("invalid manifest: {e}"))
    }

    /// The manifest's JSON as written: pretty-printed, with its checksum.
    pub fn to_json(&self) -> Vec<u8> {
        let mut doc = serde_json::to_value(self).expect("manifest serialises");
        let sum = checksum(&doc);
        if let Some(o) = doc.as_object_mut() {
            o.insert(CHECKSUM_FIELD.into(), serde_json::Value::String(sum));
        }
        serde_json::to_vec_pretty(&doc).expect("manifest serialises")
    }

    /// Writes the manifest atomically into `dir`.
    pub fn store(&self, dir: &Path) -> Result<()> {
        crate::io::write_atomic(&dir.join(MANIFEST), &self.to_json())
    }
}

const CHECKSUM_FIELD: &str = "checksum";

/// `crc32:XXXXXXXX` of the document (without its checksum) as pretty JSON.
fn checksum(doc: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec_pretty(doc).expect("JSON serialises");
    format!("crc32:{:08x}", crc32fast::hash(&bytes))
}

/// A plain file or folder name: no separators, no `..`, not hidden.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
