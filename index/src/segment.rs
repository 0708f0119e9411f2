//! Segments: immutable batches of documents, written once, read in place.
//!
//! Files of a segment folder (all little-endian arrays, see `index/FORMAT.md`):
//!
//! | file | type | length |
//! |---|---|---|
//! | `offsets.u64` | u64 | docs + 1: token range of each document |
//! | `codes.u32` | u32 | tokens: nearest centroid of each token |
//! | `vectors.bin` | bytes | tokens × codec bytes per token |
//! | `ivf_offsets.u64` | u64 | centroids + 1 |
//! | `ivf_docs.u32` | u32 | per centroid, sorted local ids of documents with a token there |
//! | `ids_offsets.u64`, `ids.bin` | u64, UTF-8 | external ids |
//! | `docs_offsets.u64`, `docs.bin` | u64, JSON | stored `{title, text, metadata}` |

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};
use crate::io::{write_array, ArrayWriter, FileEntry, Mapped};
use crate::manifest::SegmentEntry;
use crate::text::{Analyzer, TextReader, TextWriter, TEXT_DIR};

const OFFSETS: &str = "offsets.u64";
const CODES: &str = "codes.u32";
const VECTORS: &str = "vectors.bin";
const IVF_OFFSETS: &str = "ivf_offsets.u64";
const IVF_DOCS: &str = "ivf_docs.u32";
const IDS_OFFSETS: &str = "ids_offsets.u64";
const IDS: &str = "ids.bin";
const DOCS_OFFSETS: &str = "docs_offsets.u64";
const DOCS: &str = "docs.bin";

pub(crate) const SEGMENT_FILES: [&str; 9] = [
    OFFSETS,
    CODES,
    VECTORS,
    IVF_OFFSETS,
    IVF_DOCS,
    IDS_OFFSETS,
    IDS,
    DOCS_OFFSETS,
    DOCS,
];

/// Writes one segment folder.
pub struct SegmentWriter {
    dir: PathBuf,
    name: String,
    codes: ArrayWriter,
    vectors: ArrayWriter,
    ids: ArrayWriter,
    docs: ArrayWriter,
    offsets: Vec<u64>,
    ids_offsets: Vec<u64>,
    docs_offsets: Vec<u64>,
    /// Postings per centroid (documents with a token there), counted as
    /// documents arrive; the lists themselves are built at `finish` from
    /// `codes.u32` on disk, so memory stays O(K), not O(tokens).
    ivf_counts: Vec<u64>,
    scratch: Vec<u32>,
    text: TextWriter,
}

impl SegmentWriter {
    /// Creates `parent/name/` and its files.
    pub fn create(
        parent: &Path,
        name: &str,
        num_centroids: usize,
        analyzer: Analyzer,
    ) -> Result<Self> {
        let dir = parent.join(name);
        // A fresh folder: never mix with files of an earlier attempt.
        std::fs::create_dir(&dir).map_err(|e| IndexError::io(&dir, e))?;
        Ok(Self {
            codes: ArrayWriter::create(&dir.join(CODES))?,
            vectors: ArrayWriter::create(&dir.join(VECTORS))?,
            ids: ArrayWriter::create(&dir.join(IDS))?,
            docs: ArrayWriter::create(&dir.join(DOCS))?,
            offsets: vec![0],
            ids_offsets: vec![0],
            docs_offsets: vec![0],
            ivf_counts: vec![0; num_centroids],
            scratch: Vec::new(),
            text: TextWriter::create(&dir, analyzer)?,
            dir,
            name: name.to_owned(),
        })
    }

    pub fn docs(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Appends one document: its centroid codes, encoded vector bytes, id and
    /// stored JSON.
    pub fn add(
        &mut self,
        id: &str,
        stored: &[u8],
        codes: &[u32],
        vector_bytes: &[u8],
    ) -> Result<()> {
        let local = self.docs() as u32;
        self.text.add(local, id, stored)?;
        self.codes.write(codes)?;
        self.vectors.write_bytes(vector_bytes)?;
        self.ids.write_bytes(id.as_bytes())?;
        self.docs.write_bytes(stored)?;
        let last = |v: &Vec<u64>| *v.last().expect("offsets start with 0");
        self.offsets.push(last(&self.offsets) + codes.len() as u64);
        self.ids_offsets
            .push(last(&self.ids_offsets) + id.len() as u64);
        self.docs_offsets
            .push(last(&self.docs_offsets) + stored.len() as u64);
        self.scratch.clear();
        self.scratch.extend_from_slice(codes);
        self.scratch.sort_unstable();
        self.scratch.dedup();
        for &c in &self.scratch {
            self.ivf_counts[c as usize] += 1;
        }
        Ok(())
    }

    /// Builds the IVF lists with a counting sort over `codes.u32` read back
    /// through a map, writing `ivf_docs.u32` through a writable map: docs
    /// within a list come out in increasing order.
    fn write_ivf(
        dir: &Path,
        counts: &[u64],
        doc_offsets: &[u64],
        codes_entry: &FileEntry,
    ) -> Result<(FileEntry, FileEntry)> {
        let k = counts.len();
        let mut offsets = vec![0u64; k + 1];
        for c in 0..k {
            offsets[c + 1] = offsets[c] + counts[c];
        }
        let total = offsets[k];
        let codes_map = Mapped::open(&dir.join(CODES), codes_entry)?;
        let codes: &[u32] = codes_map.slice()?;
        let path = dir.join(IVF_DOCS);
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| IndexError::io(&path, e))?;
        file.set_len(total * 4)
            .map_err(|e| IndexError::io(&path, e))?;
        if total > 0 {
            // SAFETY: the file was just created by us (create_new) and sized
            // to `total` u32s; nothing else maps or writes it while this
            // mapping lives, and every write below is bounds-checked.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }
                .map_err(|e| IndexError::io(&path, e))?;
            let out: &mut [u32] = bytemuck::try_cast_slice_mut(&mut map[..])
                .map_err(|e| IndexError::corrupt(&path, format!("{e:?}")))?;
            let mut cursor = offsets.clone();
            let mut uniq = Vec::new();
            for (d, w) in doc_offsets.windows(2).enumerate() {
                uniq.clear();
                uniq.extend_from_slice(&codes[w[0] as usize..w[1] as usize]);
                uniq.sort_unstable();
                uniq.dedup();
                for &c in &uniq {
                    out[cursor[c as usize] as usize] = d as u32;
                    cursor[c as usize] += 1;
                }
            }
            map.flush().map_err(|e| IndexError::io(&path, e))?;
        }
        file.sync_all().map_err(|e| IndexError::io(&path, e))?;
        let docs_entry = crate::io::file_crc(&path)?;
        let offsets_entry = write_array(&dir.join(IVF_OFFSETS), &offsets)?;
        Ok((offsets_entry, docs_entry))
    }

    /// Writes the remaining files, fsyncs everything and returns the entry.
    pub fn finish(self) -> Result<SegmentEntry> {
        let mut files = BTreeMap::new();
        files.insert(CODES.to_owned(), self.codes.finish()?);
        files.insert(VECTORS.to_owned(), self.vectors.finish()?);
        files.insert(IDS.to_owned(), self.ids.finish()?);
        files.insert(DOCS.to_owned(), self.docs.finish()?);
        files.insert(
            OFFSETS.to_owned(),
            write_array(&self.dir.join(OFFSETS), &self.offsets)?,
        );
        files.insert(
            IDS_OFFSETS.to_owned(),
            write_array(&self.dir.join(IDS_OFFSETS), &self.ids_offsets)?,
        );
        files.insert(
            DOCS_OFFSETS.to_owned(),
            write_array(&self.dir.join(DOCS_OFFSETS), &self.docs_offsets)?,
        );
        let (ivf_offsets, ivf_docs) =
            Self::write_ivf(&self.dir, &self.ivf_counts, &self.offsets, &files[CODES])?;
        files.insert(IVF_OFFSETS.to_owned(), ivf_offsets);
        files.insert(IVF_DOCS.to_owned(), ivf_docs);
        files.extend(self.text.finish()?);
        crate::io::sync_dir(&self.dir)?;
        Ok(SegmentEntry {
            name: self.name,
            docs: (self.offsets.len() - 1) as u32,
            tokens: *self.offsets.last().expect("non-empty"),
            files,
            deleted: Vec::new(),
        })
    }
}

/// A segment opened for reading: every file mapped and validated, so that
/// accessors can index without further checks.
#[derive(Debug)]
pub struct Segment {
    pub entry: SegmentEntry,
    files: BTreeMap<&'static str, Mapped>,
    live: Vec<bool>,
    bytes_per_token: usize,
    text: Option<TextReader>,
    dir: PathBuf,
}

impl Segment {
    /// Opens and validates the segment described by `entry` under `index_dir`.
    pub fn open(
        index_dir: &Path,
        entry: &SegmentEntry,
        num_centroids: usize,
        bytes_per_token: usize,
        analyzer: Analyzer,
    ) -> Result<Self> {
        let dir = index_dir.join(&entry.name);
        let mut files = BTreeMap::new();
        for name in SEGMENT_FILES {
            let fe = entry.files.get(name).ok_or_else(|| {
                IndexError::corrupt(&dir, format!("manifest lists no {name} for this segment"))
            })?;
            files.insert(name, Mapped::open(&dir.join(name), fe)?);
        }
        let mut seg = Self {
            live: Vec::new(),
            entry: entry.clone(),
            files,
            bytes_per_token,
            text: None,
            dir: dir.clone(),
        };
        // Validate against the files before allocating anything sized by
        // the manifest's counts.
        seg.validate(num_centroids)?;
        let text_files = entry
            .files
            .keys()
            .filter(|k| k.starts_with("text/"))
            .count();
        if text_files == 0 {
            return Err(IndexError::corrupt(
                dir.join(TEXT_DIR),
                "manifest lists no text index files",
            ));
        }
        // tantivy trusts its files (it can panic on damaged ones), so they
        // are checksummed before tantivy reads them.
        for (name, fe) in entry.files.iter().filter(|(k, _)| k.starts_with("text/")) {
            crate::io::check_file(&dir.join(name), fe)?;
        }
        seg.text = Some(TextReader::open(&dir, entry.docs, analyzer)?);
        seg.live = vec![true; entry.docs as usize];
        for &d in &entry.deleted {
            seg.live[d as usize] = false; // d < docs: checked by Manifest::check
        }
        Ok(seg)
    }

    fn validate(&self, k: usize) -> Result<()> {
        let docs = self.entry.docs as usize;
        let tokens = self.entry.tokens;
        let check_offsets = |name: &'static str, len: usize, end: u64| -> Result<()> {
            let m = &self.files[name];
            let v: &[u64] = m.slice()?;
            if v.len() != len + 1 {
                return Err(IndexError::corrupt(
                    m.path(),
                    format!("{} entries, expected {}", v.len(), len + 1),
                ));
            }
            if v[0] != 0 || v[len] != end || v.windows(2).any(|w| w[0] > w[1]) {
                return Err(IndexError::corrupt(
                    m.path(),
                    "offsets are not increasing from 0 to the file's end",
                ));
            }
            Ok(())
        };
        check_offsets(OFFSETS, docs, tokens)?;
        let codes: &[u32] = self.files[CODES].slice()?;
        if codes.len() as u64 != tokens {
            return Err(IndexError::corrupt(
                self.files[CODES].path(),
                format!("{} codes for {tokens} tokens", codes.len()),
            ));
        }
        if let Some(c) = codes.iter().find(|&&c| c as usize >= k) {
            return Err(IndexError::corrupt(
                self.files[CODES].path(),
                format!("centroid id {c} ≥ {k}"),
            ));
        }
        let vec_bytes = self.files[VECTORS].bytes().len() as u64;
        if Some(vec_bytes) != tokens.checked_mul(self.bytes_per_token as u64) {
            return Err(IndexError::corrupt(
                self.files[VECTORS].path(),
                format!("{vec_bytes} bytes for {tokens} tokens"),
            ));
        }
        let ivf_docs: &[u32] = self.files[IVF_DOCS].slice()?;
        check_offsets(IVF_OFFSETS, k, ivf_docs.len() as u64)?;
        if let Some(d) = ivf_docs.iter().find(|&&d| d as usize >= docs) {
            return Err(IndexError::corrupt(
                self.files[IVF_DOCS].path(),
                format!("document id {d} ≥ {docs}"),
            ));
        }
        check_offsets(IDS_OFFSETS, docs, self.files[IDS].bytes().len() as u64)?;
        check_offsets(DOCS_OFFSETS, docs, self.files[DOCS].bytes().len() as u64)?;
        for i in 0..docs {
            let r = self.range(IDS_OFFSETS, i);
            std::str::from_utf8(&self.files[IDS].bytes()[r]).map_err(|_| {
                IndexError::corrupt(
                    self.files[IDS].path(),
                    format!("id of document {i} is not UTF-8"),
                )
            })?;
        }
        Ok(())
    }

    fn u64s(&self, name: &str) -> &[u64] {
        bytemuck::cast_slice(self.files[name].bytes())
    }

    fn range(&self, offsets: &str, i: usize) -> Range<usize> {
        let o = self.u64s(offsets);
        o[i] as usize..o[i + 1] as usize
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    pub fn num_docs(&self) -> usize {
        self.entry.docs as usize
    }

    pub fn is_live(&self, doc: u32) -> bool {
        self.live[doc as usize]
    }

    /// Token positions of document `doc`.
    pub fn token_range(&self, doc: u32) -> Range<usize> {
        self.range(OFFSETS, doc as usize)
    }

    pub fn codes(&self) -> &[u32] {
        bytemuck::cast_slice(self.files[CODES].bytes())
    }

    /// Encoded bytes of the tokens in `tokens`.
    pub fn vector_bytes(&self, tokens: Range<usize>) -> &[u8] {
        let b = self.bytes_per_token;
        &self.files[VECTORS].bytes()[tokens.start * b..tokens.end * b]
    }

    /// Documents with at least one token in centroid `c`.
    pub fn ivf_list(&self, c: usize) -> &[u32] {
        let docs: &[u32] = bytemuck::cast_slice(self.files[IVF_DOCS].bytes());
        &docs[self.range(IVF_OFFSETS, c)]
    }

    pub fn external_id(&self, doc: u32) -> &str {
        let r = self.range(IDS_OFFSETS, doc as usize);
        std::str::from_utf8(&self.files[IDS].bytes()[r]).unwrap_or("")
    }

    /// Stored `{title, text, metadata}` JSON of `doc`.
    pub fn stored(&self, doc: u32) -> &[u8] {
        &self.files[DOCS].bytes()[self.range(DOCS_OFFSETS, doc as usize)]
    }

    /// The segment's tantivy index.
    pub fn text(&self) -> &TextReader {
        self.text.as_ref().expect("set by Segment::open")
    }

    /// Paths and manifest entries of all the segment's files, for `verify`.
    pub fn file_entries(&self) -> Vec<(PathBuf, &FileEntry)> {
        self.entry
            .files
            .iter()
            .map(|(name, fe)| (self.dir.join(name), fe))
            .collect()
    }
}
