//! The text side of a segment: a tantivy index in `<segment>/text/` that
//! stores each document's id, title, text and metadata (JSON) and serves
//! BM25 over title and text.
//!
//! Each document also carries its local id in the segment as a fast field,
//! which maps tantivy's hits back to the vector side and lets filters run
//! inside the collector (before ranking). BM25 statistics are per segment;
//! after `compact` there is one segment and they are exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy};

use crate::error::{IndexError, Result};
use crate::io::{file_crc, FileEntry};

/// Folder of the tantivy index inside a segment.
pub const TEXT_DIR: &str = "text";

struct Fields {
    id: Field,
    title: Field,
    text: Field,
    metadata: Field,
    local: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        title: b.add_text_field("title", TEXT | STORED),
        text: b.add_text_field("text", TEXT | STORED),
        metadata: b.add_json_field("metadata", STORED),
        local: b.add_u64_field("local", INDEXED | FAST | STORED),
    };
    (b.build(), fields)
}

fn text_err(path: &Path, e: impl std::fmt::Display) -> IndexError {
    IndexError::corrupt(path, format!("text index: {e}"))
}

/// Runs a tantivy call, turning a panic inside tantivy (which trusts its
/// files) into an error naming the text index. Files are checksummed at open,
/// so this is defence in depth.
fn guard<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(text_err(dir, format!("damaged ({msg})")))
    })
}

/// Writes a segment's tantivy index.
pub struct TextWriter {
    dir: PathBuf,
    writer: IndexWriter,
    fields: Fields,
}

impl TextWriter {
    pub fn create(segment_dir: &Path) -> Result<Self> {
        let dir = segment_dir.join(TEXT_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        let (schema, fields) = schema();
        let index = tantivy::Index::create_in_dir(&dir, schema).map_err(|e| text_err(&dir, e))?;
        let writer = index
            .writer_with_num_threads(1, 50_000_000)
            .map_err(|e| text_err(&dir, e))?;
        Ok(Self {
            dir,
            writer,
            fields,
        })
    }

    /// Adds document `local` from its stored `{title, text, metadata}` JSON.
    pub fn add(&mut self, local: u32, id: &str, stored: &[u8]) -> Result<()> {
        let v: serde_json::Value =
            serde_json::from_slice(stored).map_err(|e| IndexError::InvalidDocument {
                id: id.into(),
                message: e.to_string(),
            })?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        let f = &self.fields;
        let mut d = doc!(
            f.id => id,
            f.title => s("title"),
            f.text => s("text"),
            f.local => u64::from(local),
        );
        if let Some(serde_json::Value::Object(m)) = v.get("metadata") {
            let obj: BTreeMap<String, tantivy::schema::OwnedValue> = m
                .iter()
                .map(|(k, x)| (k.clone(), json_to_owned(x)))
                .collect();
            d.add_object(f.metadata, obj);
        }
        self.writer
            .add_document(d)
            .map_err(|e| text_err(&self.dir, e))?;
        Ok(())
    }

    /// Commits, merges into one tantivy segment, and returns the files with
    /// their sizes and CRCs, keyed `text/<name>`.
    pub fn finish(mut self) -> Result<BTreeMap<String, FileEntry>> {
        self.writer.commit().map_err(|e| text_err(&self.dir, e))?;
        let ids = self
            .writer
            .index()
            .searchable_segment_ids()
            .map_err(|e| text_err(&self.dir, e))?;
        if ids.len() > 1 {
            self.writer
                .merge(&ids)
                .wait()
                .map_err(|e| text_err(&self.dir, e))?;
        }
        self.writer
            .wait_merging_threads()
            .map_err(|e| text_err(&self.dir, e))?;
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| IndexError::io(&self.dir, e))? {
            let e = e.map_err(|e| IndexError::io(&self.dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // tantivy's lock files
            }
            let path = e.path();
            let f = std::fs::File::open(&path).map_err(|e| IndexError::io(&path, e))?;
            f.sync_all().map_err(|e| IndexError::io(&path, e))?;
            files.insert(format!("{TEXT_DIR}/{name}"), file_crc(&path)?);
        }
        crate::io::sync_dir(&self.dir)?;
        Ok(files)
    }
}

fn json_to_owned(v: &serde_json::Value) -> tantivy::schema::OwnedValue {
    use tantivy::schema::OwnedValue as O;
    match v {
        serde_json::Value::Null => O::Null,
        serde_json::Value::Bool(b) => O::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(O::U64)
            .or_else(|| n.as_i64().map(O::I64))
            .unwrap_or_else(|| O::F64(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => O::Str(s.clone()),
        serde_json::Value::Array(a) => O::Array(a.iter().map(json_to_owned).collect()),
        serde_json::Value::Object(m) => O::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), json_to_owned(x)))
                .collect(),
        ),
    }
}

/// Reads a segment's tantivy index.
pub struct TextReader {
    dir: PathBuf,
    reader: IndexReader,
    parser: QueryParser,
}

impl std::fmt::Debug for TextReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReader")
            .field("dir", &self.dir)
            .finish()
    }
}

impl TextReader {
    pub fn open(segment_dir: &Path, docs: u32) -> Result<Self> {
        let dir = segment_dir.join(TEXT_DIR);
        guard(&dir, || Self::open_inner(dir.clone(), docs))
    }

    fn open_inner(dir: PathBuf, docs: u32) -> Result<Self> {
        let index = tantivy::Index::open_in_dir(&dir).map_err(|e| text_err(&dir, e))?;
        let (_, f) = schema();
        if index.schema() != schema().0 {
            return Err(text_err(&dir, "schema is not Tessera's"));
        }
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| text_err(&dir, e))?;
        let n = reader.searcher().num_docs();
        if n != u64::from(docs) {
            return Err(text_err(
                &dir,
                format!("{n} documents, the segment has {docs}"),
            ));
        }
        let parser = QueryParser::for_index(&index, vec![f.title, f.text]);
        Ok(Self {
            dir,
            reader,
            parser,
        })
    }

    /// BM25 top `k` for free text `query`, as `(local id, score)`. Query
    /// syntax errors are forgiven (lenient parsing). With `allowed`, only
    /// those local ids are collected (the filter runs before ranking).
    pub fn search(
        &self,
        query: &str,
        k: usize,
        allowed: Option<Arc<Vec<bool>>>,
    ) -> Result<Vec<(u32, f32)>> {
        guard(&self.dir, || self.search_inner(query, k, allowed))
    }

    fn search_inner(
        &self,
        query: &str,
        k: usize,
        allowed: Option<Arc<Vec<bool>>>,
    ) -> Result<Vec<(u32, f32)>> {
        let (q, _errors) = self.parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(k.max(1)).order_by_score();
        let hits = match allowed {
            None => searcher.search(&q, &top),
            Some(a) => {
                let pred = move |local: u64| a.get(local as usize).copied().unwrap_or(false);
                searcher.search(&q, &FilterCollector::new("local".to_string(), pred, top))
            }
        }
        .map_err(|e| text_err(&self.dir, e))?;
        let mut out = Vec::with_capacity(hits.len());
        for (score, addr) in hits {
            let col = searcher
                .segment_reader(addr.segment_ord)
                .fast_fields()
                .u64("local")
                .map_err(|e| text_err(&self.dir, e))?;
            if let Some(local) = col.first(addr.doc_id) {
                out.push((local as u32, score));
            }
        }
        Ok(out)
    }
}
