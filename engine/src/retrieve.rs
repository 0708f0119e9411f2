//! Retrieval: an [`Engine`] is an opened index plus, for MaxSim, the
//! encoder that built it. [`Engine::rank`] is the one dispatch over the
//! retrievers (ColBERT, BM25, hybrid) that the CLI, `eval` and the gRPC
//! service all use; [`unknown_fields`] is the check they all make of a
//! filter.

use std::path::{Path, PathBuf};

use std::time::Instant;

use tessera_eval::beir::Query;
use tessera_eval::Run;
use tessera_index::{Hit, Index, SearchParams, TokenVectors};
use tessera_model::Encoder;

use crate::error::{Context, Result};
use crate::model::ModelOptions;

/// Which ranking answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retriever {
    /// Late interaction: MaxSim over token vectors.
    Colbert,
    /// BM25 over titles and texts (tantivy).
    Bm25,
    /// Fusion of ColBERT and BM25 ([`SearchParams::fusion`]); the default:
    /// better than either alone on every collection measured.
    #[default]
    Hybrid,
}

impl std::str::FromStr for Retriever {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "colbert" => Ok(Self::Colbert),
            "bm25" => Ok(Self::Bm25),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err(format!("unknown retriever {s:?} (hybrid, colbert or bm25)")),
        }
    }
}

impl std::fmt::Display for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Colbert => "colbert",
            Self::Bm25 => "bm25",
            Self::Hybrid => "hybrid",
        })
    }
}

/// An index, and the encoder when the retriever needs one.
pub struct Engine {
    /// The opened index.
    pub index: Index,
    /// The model that encodes queries (`None` for BM25 alone).
    pub encoder: Option<Encoder>,
    /// The model's folder.
    pub model_dir: Option<PathBuf>,
}

impl Engine {
    /// Opens `dir`; loads the model that built it (or `model.model`) unless the
    /// retriever is BM25. Refuses a model whose output width differs from
    /// the index's.
    pub fn open(dir: &Path, model: &ModelOptions, retriever: Retriever) -> Result<Self> {
        let index = Index::open(dir).with_context(|| format!("opening index {}", dir.display()))?;
        if retriever == Retriever::Bm25 {
            return Ok(Self {
                index,
                encoder: None,
                model_dir: None,
            });
        }
        let (encoder, model_dir) = model.load_for_index(&index, dir)?;
        Ok(Self {
            index,
            encoder: Some(encoder),
            model_dir: Some(model_dir),
        })
    }

    /// Encodes queries (nothing for BM25).
    pub fn encode_queries(&self, texts: &[&str]) -> Result<Vec<TokenVectors>> {
        encode_with(self.encoder.as_ref(), texts)
    }

    /// Ranks one query given its text and (unless BM25) its vectors.
    pub fn rank(
        &self,
        retriever: Retriever,
        text: &str,
        vectors: Option<&TokenVectors>,
        p: &SearchParams,
    ) -> Result<Vec<Hit>> {
        Ok(rank(&self.index, retriever, text, vectors, p)?.hits)
    }
}

/// One query's ranking and where its time went.
#[derive(Debug, Default)]
pub struct Ranked {
    /// The best `k` documents, best first.
    pub hits: Vec<Hit>,
    /// Milliseconds finding candidates (centroids, probing, approximate
    /// scores, BM25).
    pub candidate_ms: f64,
    /// Milliseconds in the exact MaxSim re-rank.
    pub rerank_ms: f64,
}

/// Ranks one query over `index` with `retriever`: the one dispatch the
/// CLI, `eval` and the gRPC service share. `vectors` are the query's
/// (needed unless BM25); an index error comes back as
/// [`EngineError::Index`](crate::EngineError::Index).
pub fn rank(
    index: &Index,
    retriever: Retriever,
    text: &str,
    vectors: Option<&TokenVectors>,
    p: &SearchParams,
) -> Result<Ranked> {
    let need = || vectors.context("the query was not encoded");
    let split = |hits, s: tessera_index::SearchStats| Ranked {
        hits,
        candidate_ms: s.centroid_ms + s.probe_ms + s.approx_ms + s.text_ms,
        rerank_ms: s.exact_ms,
    };
    Ok(match retriever {
        Retriever::Bm25 => {
            let t = Instant::now();
            let hits = index.search_text_with(
                text,
                p.k,
                p.filter.as_ref(),
                &p.stop,
                p.bm25_stats.as_deref(),
            )?;
            Ranked {
                hits,
                candidate_ms: t.elapsed().as_secs_f64() * 1e3,
                rerank_ms: 0.0,
            }
        }
        Retriever::Colbert => {
            let (hits, s) = index.search_with_stats(need()?, p)?;
            split(hits, s)
        }
        Retriever::Hybrid => {
            let (hits, s) = index.search_hybrid_with_stats(need()?, text, p)?;
            split(hits, s)
        }
    })
}

/// Encodes query texts with `encoder`; nothing without one (BM25 alone).
pub fn encode_with(encoder: Option<&Encoder>, texts: &[&str]) -> Result<Vec<TokenVectors>> {
    match encoder {
        None => Ok(Vec::new()),
        Some(e) => Ok(e
            .encode_queries(texts)?
            .items
            .into_iter()
            .map(|i| i.vectors)
            .collect()),
    }
}

/// Timing of [`Engine::run_queries`].
#[derive(Debug, Default)]
pub struct RunTiming {
    /// Query encoding, seconds (0 for BM25).
    pub encode_s: f64,
    /// Ranking, seconds.
    pub search_s: f64,
    /// Per-query ranking latency, milliseconds, in query order.
    pub latencies_ms: Vec<f64>,
}

impl Engine {
    /// Ranks every query into a run, encoding 64 queries at a time (memory
    /// stays small however many there are) and timing encoding and
    /// ranking apart. `pb` advances by one per query.
    pub fn run_queries(
        &self,
        queries: &[Query],
        retriever: Retriever,
        p: &SearchParams,
        pb: &indicatif::ProgressBar,
    ) -> Result<(Run, RunTiming)> {
        run_with(
            queries,
            |texts| self.encode_queries(texts),
            |text, v| self.rank(retriever, text, v, p),
            pb,
        )
    }
}

/// Ranks every query into a run with `encode` and `rank`, encoding 64
/// queries at a time and timing encoding and ranking apart (what
/// [`Engine::run_queries`] and a shard set's do). `pb` advances by one per
/// query.
pub fn run_with(
    queries: &[Query],
    encode: impl Fn(&[&str]) -> Result<Vec<TokenVectors>>,
    rank: impl Fn(&str, Option<&TokenVectors>) -> Result<Vec<Hit>>,
    pb: &indicatif::ProgressBar,
) -> Result<(Run, RunTiming)> {
    let mut run = Run::default();
    let mut timing = RunTiming::default();
    for chunk in queries.chunks(64) {
        let texts: Vec<&str> = chunk.iter().map(|q| q.text.as_str()).collect();
        let t = Instant::now();
        let vecs = encode(&texts)?;
        timing.encode_s += t.elapsed().as_secs_f64();
        for (i, q) in chunk.iter().enumerate() {
            let t = Instant::now();
            let hits = rank(&q.text, vecs.get(i))?;
            let secs = t.elapsed().as_secs_f64();
            timing.search_s += secs;
            timing.latencies_ms.push(secs * 1e3);
            run.results.insert(
                q.id.clone(),
                hits.into_iter().map(|h| (h.id, h.score as f64)).collect(),
            );
            pb.inc(1);
        }
    }
    Ok((run, timing))
}

/// Fields a filter names that no document has ([`unknown_fields`]).
pub struct UnknownFields {
    /// How many fields are unknown.
    pub count: usize,
    /// The unknown fields, quoted and comma-separated.
    pub listed: String,
    /// The metadata fields the index does have, or "none".
    pub present: String,
}

/// The fields `f` names that no document of `index` has; `None` when every
/// field exists.
pub fn unknown_fields(
    index: &tessera_index::Index,
    f: &tessera_index::Filter,
) -> Option<UnknownFields> {
    let unknown = index.unknown_filter_fields(f);
    if unknown.is_empty() {
        return None;
    }
    let have = index.metadata_fields();
    let listed = unknown
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let present = if have.is_empty() {
        "none".to_owned()
    } else {
        have.join(", ")
    };
    Some(UnknownFields {
        count: unknown.len(),
        listed,
        present,
    })
}
