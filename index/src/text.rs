//! The text side of a segment: a tantivy index in `<segment>/text/` that
//! stores each document's id, title, text and metadata (JSON) and serves
//! BM25 over title and text.
//!
//! BM25 runs over one field that holds title and text together (as
//! Anserini's BEIR indexes do), analysed by the index's [`Analyzer`]: English
//! by default (lower-casing, ASCII folding, Lucene's English stop words,
//! Snowball English stemming), or `simple` (lower-cased words only). A query
//! is analysed the same way and scored as a bag of words (every term an
//! optional clause), so query text is never parsed as query syntax.
//! Indexes written before analyzers were selectable ([`Analyzer::Legacy`])
//! keep their layout: tantivy's default tokenizer on separate title and
//! text fields, queries through tantivy's lenient query parser.
//!
//! Each document also carries its local id in the segment as a fast field,
//! which maps tantivy's hits back to the vector side and lets filters run
//! inside the collector (before ranking). BM25 statistics are per segment;
//! after `compact` there is one segment and they are exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::{
    Bm25StatisticsProvider, BooleanQuery, BoostQuery, Occur, Query, QueryParser, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED,
    STRING, TEXT,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer,
};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, Term};

use crate::error::{IndexError, Result};
use crate::io::{file_crc, FileEntry};

/// Folder of the tantivy index inside a segment.
pub const TEXT_DIR: &str = "text";

/// How titles and texts are cut into BM25 terms; chosen per index at build
/// time and recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Analyzer {
    /// English: words lower-cased and ASCII-folded, Lucene's English stop
    /// words (and a possessive `s`) removed, Snowball English stemming.
    #[default]
    En,
    /// Words lower-cased, nothing removed or stemmed (any language).
    Simple,
    /// Indexes from before analyzers were selectable: tantivy's default
    /// tokenizer on separate title and text fields.
    Legacy,
}

impl std::str::FromStr for Analyzer {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "en" | "english" => Ok(Self::En),
            "simple" => Ok(Self::Simple),
            "legacy" => Ok(Self::Legacy),
            o => Err(IndexError::InvalidParameter(format!(
                "unknown analyzer {o:?} (en, simple, legacy)"
            ))),
        }
    }
}

impl std::fmt::Display for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::En => "en",
            Self::Simple => "simple",
            Self::Legacy => "legacy",
        })
    }
}

impl Analyzer {
    /// The tantivy tokenizer name of the BM25 field.
    fn tokenizer_name(self) -> &'static str {
        match self {
            Self::En => "tessera_en",
            Self::Simple => "tessera_simple",
            Self::Legacy => "default",
        }
    }

    /// The tantivy analyzer.
    pub fn text_analyzer(self) -> TextAnalyzer {
        let base = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser);
        match self {
            Self::En => {
                // Lucene's English stop set (tantivy's list) plus the `s` a
                // possessive leaves once the tokenizer splits at `'`.
                let mut words: Vec<String> =
                    ENGLISH_STOP_WORDS.iter().map(|w| w.to_string()).collect();
                words.push("s".into());
                base.filter(AsciiFoldingFilter)
                    .filter(StopWordFilter::remove(words))
                    .filter(Stemmer::new(Language::English))
                    .build()
            }
            Self::Simple => base.filter(AsciiFoldingFilter).build(),
            Self::Legacy => base.build(),
        }
    }

    fn register(self, index: &tantivy::Index) {
        if self != Self::Legacy {
            index
                .tokenizers()
                .register(self.tokenizer_name(), self.text_analyzer());
        }
    }

    /// The terms of `text` as this analyzer cuts them.
    pub fn terms(self, text: &str) -> Vec<String> {
        let mut a = self.text_analyzer();
        let mut stream = a.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }
}

/// Most distinct terms a BM25 query may have. Each distinct term walks
/// its posting list and holds a scorer; a query text past this (a
/// document pasted as a query, or a hostile request) is refused instead
/// of taking the machine's memory and time.
pub const MAX_QUERY_TERMS: usize = 1024;

/// A query's analysed terms, each once with its number of occurrences, in
/// order of first occurrence; more than [`MAX_QUERY_TERMS`] distinct terms
/// is an error.
pub fn query_terms(analyzer: Analyzer, text: &str) -> Result<Vec<(String, usize)>> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out: Vec<(String, usize)> = Vec::new();
    // Streamed, so a huge text is refused at its 1,025th distinct term
    // rather than after every word of it is held.
    let mut a = analyzer.text_analyzer();
    let mut stream = a.token_stream(text);
    while stream.advance() {
        let t = &stream.token().text;
        match seen.get(t) {
            Some(&i) => out[i].1 += 1,
            None => {
                if out.len() == MAX_QUERY_TERMS {
                    return Err(IndexError::InvalidParameter(format!(
                        "the query has more than {MAX_QUERY_TERMS} distinct BM25 terms"
                    )));
                }
                seen.insert(t.clone(), out.len());
                out.push((t.clone(), 1));
            }
        }
    }
    Ok(out)
}

/// Lucene's `EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`.
const ENGLISH_STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

struct Fields {
    id: Field,
    title: Field,
    text: Field,
    /// Title and text, analysed for BM25 (absent from legacy indexes).
    body: Option<Field>,
    metadata: Field,
    local: Field,
}

fn schema(analyzer: Analyzer) -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = if analyzer == Analyzer::Legacy {
        Fields {
            id: b.add_text_field("id", STRING | STORED),
            title: b.add_text_field("title", TEXT | STORED),
            text: b.add_text_field("text", TEXT | STORED),
            body: None,
            metadata: b.add_json_field("metadata", STORED),
            local: b.add_u64_field("local", INDEXED | FAST | STORED),
        }
    } else {
        let body = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(analyzer.tokenizer_name())
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        Fields {
            id: b.add_text_field("id", STRING | STORED),
            title: b.add_text_field("title", STORED),
            text: b.add_text_field("text", STORED),
            body: Some(b.add_text_field("body", body)),
            metadata: b.add_json_field("metadata", STORED),
            local: b.add_u64_field("local", INDEXED | FAST | STORED),
        }
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
    pub fn create(segment_dir: &Path, analyzer: Analyzer) -> Result<Self> {
        let dir = segment_dir.join(TEXT_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        let (schema, fields) = schema(analyzer);
        let index = tantivy::Index::create_in_dir(&dir, schema).map_err(|e| text_err(&dir, e))?;
        analyzer.register(&index);
        let writer: IndexWriter = index
            .writer_with_num_threads(1, 50_000_000)
            .map_err(|e| text_err(&dir, e))?;
        // `finish` merges everything into one tantivy segment itself; a
        // background merge started by tantivy's default policy (after
        // eight flushes, i.e. a segment of much text) would take segments
        // from under that merge and fail it.
        writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
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
        let (title, text) = (s("title"), s("text"));
        let mut d = doc!(f.id => id, f.local => u64::from(local));
        if let Some(body) = f.body {
            d.add_text(body, format!("{title} {text}"));
        }
        d.add_text(f.title, title);
        d.add_text(f.text, text);
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
/// BM25 statistics (documents, tokens, document frequencies) summed over
/// the text indexes of all of an index's segments: each segment's tantivy
/// index knows only its own, and a term's IDF in a three-document appended
/// segment is nothing like its IDF in the corpus. Every segment shares one
/// schema, so fields and terms mean the same in each.
pub struct CorpusStats {
    searchers: Vec<tantivy::Searcher>,
}

impl CorpusStats {
    pub fn new<'a>(readers: impl IntoIterator<Item = &'a TextReader>) -> Self {
        Self {
            searchers: readers.into_iter().map(|r| r.reader.searcher()).collect(),
        }
    }

    fn sum(&self, f: impl Fn(&tantivy::Searcher) -> tantivy::Result<u64>) -> tantivy::Result<u64> {
        self.searchers.iter().map(f).sum()
    }
}

impl Bm25StatisticsProvider for CorpusStats {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        self.sum(|s| s.total_num_tokens(field))
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        self.sum(Bm25StatisticsProvider::total_num_docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        self.sum(|s| Bm25StatisticsProvider::doc_freq(s, term))
    }
}

/// BM25 statistics for one query's terms, as plain numbers that can be
/// summed across indexes (the shards of a document-partitioned collection)
/// and sent over a network: documents, tokens of the indexed body field,
/// and each term's document frequency. Summed over every shard and given
/// to each shard's search, they make its BM25 scores those of one index
/// holding every shard's documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermStats {
    /// Documents (live or not: tantivy's BM25 counts every stored one).
    pub docs: u64,
    /// Tokens of the body field over those documents.
    pub tokens: u64,
    /// Document frequency of each analysed query term.
    pub doc_freq: BTreeMap<String, u64>,
}

impl TermStats {
    /// Adds another index's statistics for the same query.
    pub fn add(&mut self, other: &TermStats) {
        self.docs += other.docs;
        self.tokens += other.tokens;
        for (t, n) in &other.doc_freq {
            *self.doc_freq.entry(t.clone()).or_default() += n;
        }
    }
}

impl Bm25StatisticsProvider for TermStats {
    fn total_num_tokens(&self, _field: Field) -> tantivy::Result<u64> {
        Ok(self.tokens)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        Ok(term
            .value()
            .as_str()
            .and_then(|t| self.doc_freq.get(t))
            .copied()
            .unwrap_or(0))
    }
}

pub struct TextReader {
    dir: PathBuf,
    reader: IndexReader,
    analyzer: Analyzer,
    /// Legacy indexes: tantivy's parser over title and text.
    parser: QueryParser,
    body: Option<Field>,
}

impl std::fmt::Debug for TextReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReader")
            .field("dir", &self.dir)
            .finish()
    }
}

impl TextReader {
    pub fn open(segment_dir: &Path, docs: u32, analyzer: Analyzer) -> Result<Self> {
        let dir = segment_dir.join(TEXT_DIR);
        guard(&dir, || Self::open_inner(dir.clone(), docs, analyzer))
    }

    fn open_inner(dir: PathBuf, docs: u32, analyzer: Analyzer) -> Result<Self> {
        let index = tantivy::Index::open_in_dir(&dir).map_err(|e| text_err(&dir, e))?;
        let (want, f) = schema(analyzer);
        if index.schema() != want {
            return Err(text_err(
                &dir,
                format!("schema is not Tessera's for analyzer {analyzer}"),
            ));
        }
        analyzer.register(&index);
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
            analyzer,
            parser,
            body: f.body,
        })
    }

    /// This text index's BM25 statistics for `query`'s terms. Indexes
    /// whose BM25 has no single body field (built before it existed) have
    /// none to share.
    pub fn term_stats(&self, query: &str) -> Result<TermStats> {
        let body = self.body.ok_or_else(|| {
            text_err(
                &self.dir,
                "a legacy text index (no body field) cannot share BM25 statistics; rebuild it",
            )
        })?;
        let searcher = self.reader.searcher();
        let mut out = TermStats {
            docs: Bm25StatisticsProvider::total_num_docs(&searcher)
                .map_err(|e| text_err(&self.dir, e))?,
            tokens: searcher
                .total_num_tokens(body)
                .map_err(|e| text_err(&self.dir, e))?,
            doc_freq: BTreeMap::new(),
        };
        for (t, _) in query_terms(self.analyzer, query)? {
            let df = Bm25StatisticsProvider::doc_freq(&searcher, &Term::from_field_text(body, &t))
                .map_err(|e| text_err(&self.dir, e))?;
            out.doc_freq.insert(t, df);
        }
        Ok(out)
    }

    /// BM25 top `k` for free text `query`, as `(local id, score)`. Query
    /// syntax errors are forgiven (lenient parsing). With `allowed`, only
    /// those local ids are collected (the filter runs before ranking).
    ///
    /// `stats`: BM25 statistics of the whole index ([`CorpusStats`]), so
    /// that scores of several segments compare; this segment's own
    /// statistics otherwise.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        allowed: Option<Arc<Vec<bool>>>,
        stats: Option<&dyn Bm25StatisticsProvider>,
    ) -> Result<Vec<(u32, f32)>> {
        guard(&self.dir, || self.search_inner(query, k, allowed, stats))
    }

    fn search_inner(
        &self,
        query: &str,
        k: usize,
        allowed: Option<Arc<Vec<bool>>>,
        stats: Option<&dyn Bm25StatisticsProvider>,
    ) -> Result<Vec<(u32, f32)>> {
        let q: Box<dyn Query> = match self.body {
            Some(body) => {
                let clauses: Vec<(Occur, Box<dyn Query>)> = query_terms(self.analyzer, query)?
                    .into_iter()
                    .map(|(t, count)| {
                        let term: Box<dyn Query> = Box::new(TermQuery::new(
                            Term::from_field_text(body, &t),
                            IndexRecordOption::WithFreqs,
                        ));
                        // A word that occurs n times scores n times, as n
                        // clauses would, from one posting-list walk.
                        let q: Box<dyn Query> = if count > 1 {
                            Box::new(BoostQuery::new(term, count as f32))
                        } else {
                            term
                        };
                        (Occur::Should, q)
                    })
                    .collect();
                if clauses.is_empty() {
                    return Ok(Vec::new());
                }
                Box::new(BooleanQuery::new(clauses))
            }
            None => self.parser.parse_query_lenient(query).0,
        };
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(k.max(1)).order_by_score();
        let own = &searcher as &dyn Bm25StatisticsProvider;
        let stats = stats.unwrap_or(own);
        let hits = match allowed {
            None => searcher.search_with_statistics_provider(&q, &top, stats),
            Some(a) => {
                let pred = move |local: u64| a.get(local as usize).copied().unwrap_or(false);
                let filtered = FilterCollector::new("local".to_string(), pred, top);
                searcher.search_with_statistics_provider(&q, &filtered, stats)
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
