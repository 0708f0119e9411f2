//! [`Index`]: an opened, validated, memory-mapped snapshot of one index
//! generation.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::codec::{Buckets, Codec, CodecKind};
use crate::error::{IndexError, Result};
use crate::filter::{lookup, FieldValue};
use crate::io::{file_crc, Mapped};
use crate::manifest::Manifest;
use crate::projection::Projection;
use crate::segment::Segment;

/// A stored document, as returned with hits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StoredDoc {
    pub title: String,
    pub text: String,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

type Column = Arc<Vec<FieldValue>>;

/// A read-only snapshot of an index.
pub struct Index {
    dir: PathBuf,
    manifest: Manifest,
    codec: Codec,
    centroids: Mapped,
    reduction: Option<Projection>,
    segments: Vec<Segment>,
    ids: HashMap<String, (u32, u32)>,
    columns: Vec<Mutex<HashMap<String, Column>>>,
    pub(crate) hnsw: std::sync::OnceLock<crate::hnsw::CentroidGraph>,
    /// The centroids quantised to 8 bits for the integer centroid-score
    /// kernel, made on first use.
    pub(crate) centroids_i8: std::sync::OnceLock<crate::linalg::QuantRows>,
    max_centroid_norm: std::sync::OnceLock<f32>,
    /// Metadata field paths of the live documents, found on first use.
    metadata_fields: std::sync::OnceLock<Vec<String>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("generation", &self.manifest.generation)
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// Result of [`Index::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    pub bytes: u64,
}

impl Index {
    /// Opens the index in `dir`: reads the manifest (checking its own
    /// checksum), checks the format version, every file's size and CRC-32
    /// and every array's internal consistency, and maps the files. The CRCs
    /// read every byte once (in parallel); a file this process verified
    /// before and that has not changed since is not read again. Fails with an error naming the file on anything
    /// missing, truncated or foreign; never panics on file contents.
    pub fn open(dir: &Path) -> Result<Self> {
        // A writer may swap the manifest and remove the files of the
        // generation we just read; then the newer generation opens.
        let mut last_err = None;
        for _ in 0..3 {
            let manifest = Manifest::load(dir)?;
            match Self::open_manifest(dir, manifest.clone()) {
                Ok(ix) => return Ok(ix),
                Err(e) => {
                    let now = Manifest::load(dir)?;
                    if now.generation == manifest.generation {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("loop ran"))
    }

    fn open_manifest(dir: &Path, manifest: Manifest) -> Result<Self> {
        let m = &manifest;
        let file = |name: &str| -> Result<Mapped> {
            let entry = m
                .files
                .get(name)
                .ok_or_else(|| IndexError::corrupt(dir.join(name), "not listed in the manifest"))?;
            Mapped::open(&dir.join(name), entry)
        };
        let cname = m
            .files
            .keys()
            .find(|k| k.starts_with("centroids"))
            .ok_or_else(|| {
                IndexError::corrupt(dir.join("manifest.json"), "no centroids file listed")
            })?
            .clone();
        let centroids = file(&cname)?;
        let cv: &[f32] = centroids.slice()?;
        if cv.len() != m.num_centroids * m.dim {
            return Err(IndexError::corrupt(
                centroids.path(),
                format!(
                    "{} floats, expected {}×{}",
                    cv.len(),
                    m.num_centroids,
                    m.dim
                ),
            ));
        }
        if cv.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::corrupt(
                centroids.path(),
                "non-finite centroid value",
            ));
        }
        let buckets = match m.codec {
            CodecKind::Residual { nbits } => {
                let bname = m
                    .files
                    .keys()
                    .find(|k| k.starts_with("buckets"))
                    .ok_or_else(|| {
                        IndexError::corrupt(
                            dir.join("manifest.json"),
                            "residual codec without a buckets file",
                        )
                    })?
                    .clone();
                let bf = file(&bname)?;
                let v: &[f32] = bf.slice()?;
                let n = 1usize << nbits;
                if v.len() != 2 * n - 1 || v.iter().any(|x| !x.is_finite()) {
                    return Err(IndexError::corrupt(
                        bf.path(),
                        format!("expected {} finite floats", 2 * n - 1),
                    ));
                }
                Some(Buckets {
                    cutoffs: v[..n - 1].to_vec(),
                    weights: v[n - 1..].to_vec(),
                })
            }
            _ => None,
        };
        let codec = Codec::new(m.codec, m.dim, buckets, m.renormalise)?;
        let reduction = match &m.reduction {
            Some(r) => {
                let f = file(&r.file)?;
                let v: &[f32] = f.slice()?;
                Some(
                    Projection::from_floats(r.in_dim, r.out_dim, v, r.query_mean)
                        .map_err(|e| IndexError::corrupt(f.path(), e.to_string()))?,
                )
            }
            None => None,
        };
        let mut segments = Vec::with_capacity(m.segments.len());
        for s in &m.segments {
            segments.push(Segment::open(
                dir,
                s,
                m.num_centroids,
                codec.bytes_per_token(),
                m.analyzer,
            )?);
        }
        let mut ids = HashMap::new();
        for (si, seg) in segments.iter().enumerate() {
            for d in 0..seg.num_docs() as u32 {
                if seg.is_live(d)
                    && ids
                        .insert(seg.external_id(d).to_owned(), (si as u32, d))
                        .is_some()
                {
                    return Err(IndexError::corrupt(
                        dir.join(&seg.entry.name),
                        format!("document id {:?} is live in two places", seg.external_id(d)),
                    ));
                }
            }
        }
        let columns = segments
            .iter()
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            codec,
            centroids,
            reduction,
            segments,
            ids,
            columns,
            hnsw: std::sync::OnceLock::new(),
            centroids_i8: std::sync::OnceLock::new(),
            max_centroid_norm: std::sync::OnceLock::new(),
            metadata_fields: std::sync::OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Dimension of stored vectors.
    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    /// Dimension queries must have (before the index's reduction).
    pub fn query_dim(&self) -> usize {
        self.reduction
            .as_ref()
            .map_or(self.manifest.dim, |r| r.in_dim)
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The largest centroid norm (computed once).
    pub fn max_centroid_norm(&self) -> f32 {
        *self.max_centroid_norm.get_or_init(|| {
            self.centroids()
                .chunks_exact(self.dim().max(1))
                .map(|c| crate::linalg::norm2(c).sqrt())
                .fold(0.0, f32::max)
        })
    }

    pub fn centroids(&self) -> &[f32] {
        bytemuck::cast_slice(self.centroids.bytes())
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Number of live documents.
    pub fn num_docs(&self) -> usize {
        self.ids.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// `(segment, local doc)` of a live document.
    pub fn locate(&self, id: &str) -> Option<(usize, u32)> {
        self.ids.get(id).map(|&(s, d)| (s as usize, d))
    }

    /// The stored title, text and metadata of a live document.
    pub fn document(&self, id: &str) -> Option<StoredDoc> {
        let (s, d) = self.locate(id)?;
        self.stored(s, d)
    }

    pub(crate) fn stored(&self, seg: usize, doc: u32) -> Option<StoredDoc> {
        serde_json::from_slice(self.segments[seg].stored(doc)).ok()
    }

    /// Applies the index's reduction (if any) to document vectors.
    pub fn prepare_documents(&self, vectors: &[f32]) -> Vec<f32> {
        match &self.reduction {
            Some(r) => r.apply(vectors),
            None => vectors.to_vec(),
        }
    }

    /// Applies the index's reduction (if any) to query vectors.
    pub fn prepare_query(&self, vectors: &[f32]) -> Vec<f32> {
        match &self.reduction {
            Some(r) => r.apply_query(vectors),
            None => vectors.to_vec(),
        }
    }

    /// Every metadata field path (`a`, `a.b` for nested objects) that some
    /// live document has, sorted. Read from the stored documents on first
    /// use.
    pub fn metadata_fields(&self) -> &[String] {
        self.metadata_fields.get_or_init(|| {
            fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
                if let serde_json::Value::Object(m) = v {
                    for (k, x) in m {
                        let path = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&path, x, out);
                        out.insert(path);
                    }
                }
            }
            let mut out = BTreeSet::new();
            for s in &self.segments {
                for d in 0..s.num_docs() as u32 {
                    if !s.is_live(d) {
                        continue;
                    }
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(s.stored(d)) {
                        if let Some(m) = v.get("metadata") {
                            walk("", m, &mut out);
                        }
                    }
                }
            }
            out.into_iter().collect()
        })
    }

    /// The fields `filter` names that no live document has (such a filter
    /// part can never match).
    pub fn unknown_filter_fields(&self, filter: &crate::Filter) -> Vec<String> {
        let mut names = Vec::new();
        filter.fields(&mut names);
        names.sort();
        names.dedup();
        let have = self.metadata_fields();
        names
            .into_iter()
            .filter(|n| have.binary_search(n).is_err())
            .collect()
    }

    /// The column of metadata `field` for segment `seg` (cached).
    pub(crate) fn column(&self, seg: usize, field: &str) -> Column {
        let mut cache = self.columns[seg].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(field) {
            return c.clone();
        }
        let s = &self.segments[seg];
        let col: Vec<FieldValue> = (0..s.num_docs() as u32)
            .map(|d| {
                let meta: Option<serde_json::Value> =
                    serde_json::from_slice::<serde_json::Value>(s.stored(d))
                        .ok()
                        .and_then(|v| v.get("metadata").cloned());
                FieldValue::from_json(meta.as_ref().and_then(|m| lookup(m, field)))
            })
            .collect();
        let col = Arc::new(col);
        cache.insert(field.to_owned(), col.clone());
        col
    }

    /// Recomputes every file's CRC-32 and compares with the manifest.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut files = 0;
        let mut bytes = 0;
        let mut check = |path: &Path, want: &crate::io::FileEntry| -> Result<()> {
            let got = file_crc(path)?;
            crate::io::check_entry(path, &got, want)?;
            files += 1;
            bytes += got.bytes;
            Ok(())
        };
        for (name, entry) in &self.manifest.files {
            check(&self.dir.join(name), entry)?;
        }
        for seg in &self.segments {
            for (path, entry) in seg.file_entries() {
                check(&path, entry)?;
            }
        }
        Ok(VerifyReport { files, bytes })
    }
}
