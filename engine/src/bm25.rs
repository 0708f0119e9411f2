//! BM25 without vectors: a text-only index of a corpus — the index crate's
//! own tantivy schema, analyzer and scoring, one segment — for runs that
//! rank by BM25 alone. An evaluation with `--retriever bm25` and no index
//! builds this instead of encoding the corpus with the model: seconds
//! instead of minutes, and the same ranking as BM25 over a full index of
//! the same corpus (a full index built in one pass is one segment too).
//!
//! The index is cached like the encodings (`$TESSERA_HOME/cache/text/`),
//! keyed by the corpus's bytes, how records are read, the analyzer and the
//! layout version; it is built in a private folder and renamed into place,
//! so a killed build leaves nothing that opens.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera_eval::beir::{Dataset, Query};
use tessera_eval::Run;
use tessera_index::text::{TextReader, TextWriter};
use tessera_index::Analyzer;

use crate::cache::{cache_root, records_key};
use crate::corpus::{BadRecord, CorpusReader};
use crate::error::{bail, Context, Result};
use crate::ingest::{Input, RecordOptions};
use crate::progress;
use crate::retrieve::RunTiming;

/// Bumped when the folder's layout changes (old folders are then rebuilt).
const LAYOUT: &str = "tessera-text-v1";
/// The ids of the documents, one per line, in local-id order.
const IDS: &str = "ids.txt";

/// An opened text-only index.
pub struct TextOnly {
    /// Its folder.
    pub dir: PathBuf,
    ids: Vec<String>,
    known: HashSet<String>,
    reader: TextReader,
}

impl TextOnly {
    /// Opens the text-only index in `dir` (made by [`cached_text_index`]).
    pub fn open(dir: &Path, analyzer: Analyzer) -> Result<Self> {
        let ids_path = dir.join(IDS);
        let ids: Vec<String> = std::fs::read_to_string(&ids_path)
            .with_context(|| ids_path.display().to_string())?
            .lines()
            .map(str::to_owned)
            .collect();
        let reader = TextReader::open(dir, ids.len() as u32, analyzer)?;
        Ok(Self {
            dir: dir.to_owned(),
            known: ids.iter().cloned().collect(),
            ids,
            reader,
        })
    }

    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether a document of this id is indexed.
    pub fn contains(&self, id: &str) -> bool {
        self.known.contains(id)
    }

    /// The BM25 top `k` of `query`, as `(id, score)`, best first.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(String, f32)>> {
        Ok(self
            .reader
            .search(query, k, None, None)?
            .into_iter()
            .map(|(local, score)| (self.ids[local as usize].clone(), score))
            .collect())
    }

    /// Ranks every query into a run of depth `k`, timing each search.
    pub fn run_queries(
        &self,
        queries: &[Query],
        k: usize,
        pb: &indicatif::ProgressBar,
    ) -> Result<(Run, RunTiming)> {
        let mut run = Run::default();
        let mut timing = RunTiming::default();
        for q in queries {
            let t = Instant::now();
            let hits = self.search(&q.text, k)?;
            let secs = t.elapsed().as_secs_f64();
            timing.search_s += secs;
            timing.latencies_ms.push(secs * 1e3);
            run.results.insert(
                q.id.clone(),
                hits.into_iter().map(|(id, s)| (id, s as f64)).collect(),
            );
            pb.inc(1);
        }
        Ok((run, timing))
    }
}

/// The cached text-only index of a dataset's corpus (built if missing),
/// and the build time when it was built now.
pub fn cached_text_index(
    dataset: &Dataset,
    records: &RecordOptions,
    analyzer: Analyzer,
) -> Result<(PathBuf, Option<f64>)> {
    let canonical = dataset
        .dir
        .canonicalize()
        .with_context(|| dataset.dir.display().to_string())?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    LAYOUT.hash(&mut h);
    canonical.hash(&mut h);
    crate::model::hash_file(&dataset.corpus_path(), &mut h, true)?;
    records_key(records).hash(&mut h);
    analyzer.hash(&mut h);
    let name = crate::cache::dataset_name(&canonical);
    let dir = cache_root()?
        .join("text")
        .join(format!("{name}-{analyzer}-{:016x}", h.finish()));
    if dir.join(IDS).exists() {
        progress::note(format!("using cached text index {}", dir.display()));
        return Ok((dir, None));
    }
    progress::note(format!(
        "indexing the text of {} into {} (BM25 needs no vectors; cached for later runs)",
        dataset.corpus_path().display(),
        dir.display()
    ));
    let t = Instant::now();
    let input = Input {
        input: dataset.corpus_path(),
        records: records.clone(),
    };
    let built = build_text_index(&input, &dir, analyzer)?;
    let secs = t.elapsed().as_secs_f64();
    let empty = match built.empty {
        0 => String::new(),
        1 => "; 1 empty document (no text) indexed with no terms".into(),
        n => format!("; {n} empty documents (no text) indexed with no terms"),
    };
    progress::note(format!(
        "indexed the text of {} documents in {secs:.1} s{empty}",
        built.docs
    ));
    Ok((dir, Some(secs)))
}

/// What [`build_text_index`] indexed.
#[derive(Debug, Clone, Copy)]
pub struct TextBuilt {
    /// Documents indexed.
    pub docs: usize,
    /// Of those, documents with neither title nor text.
    pub empty: usize,
}

/// Builds the text-only index of the dump `input` at `out` (in a private
/// folder beside it, renamed into place when complete). Records are read
/// and checked as an index build reads them: a malformed record or a
/// repeated id stops the build unless `skip_invalid`.
pub fn build_text_index(input: &Input, out: &Path, analyzer: Analyzer) -> Result<TextBuilt> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    let tmp = parent.join(format!(
        ".{}.building-{}",
        out.file_name()
            .map_or("text".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
        let mut writer = TextWriter::create(&tmp, analyzer)?;
        let mut reader = CorpusReader::open(&input.input, input.corpus_options())?;
        let mut ids: Vec<String> = Vec::new();
        let mut empty = 0;
        let mut seen: HashSet<String> = HashSet::new();
        let skip = input.records.skip_invalid;
        let refuse = |bad: BadRecord| -> Result<()> {
            if skip {
                tracing::debug!("skipping {bad}");
                return Ok(());
            }
            bail!(
                "{bad}\n  nothing was evaluated; fix the input and rerun, or pass \
                 --skip-invalid to skip such records"
            )
        };
        while let Some(next) = reader.next_record() {
            match next? {
                Err(bad) => refuse(bad)?,
                Ok(r) if seen.contains(&r.id) => refuse(BadRecord {
                    path: reader.name().to_owned(),
                    line: r.line,
                    problem: crate::corpus::Problem::DuplicateId,
                    detail: format!("{:?} appeared earlier", r.id),
                })?,
                Ok(r) => {
                    empty += usize::from(r.is_empty());
                    let stored = serde_json::to_vec(&serde_json::json!({
                        "title": r.title, "text": r.text, "metadata": r.metadata,
                    }))?;
                    writer.add(ids.len() as u32, &r.id, &stored)?;
                    seen.insert(r.id.clone());
                    ids.push(r.id);
                }
            }
        }
        if ids.is_empty() {
            bail!("{}: no documents to index", input.input.display());
        }
        writer.finish()?;
        let ids_path = tmp.join(IDS);
        std::fs::write(&ids_path, ids.join("\n") + "\n")
            .with_context(|| ids_path.display().to_string())?;
        let _ = std::fs::remove_dir_all(out);
        std::fs::rename(&tmp, out).with_context(|| out.display().to_string())?;
        Ok(TextBuilt {
            docs: ids.len(),
            empty,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
