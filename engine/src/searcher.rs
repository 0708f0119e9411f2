//! The search engine the CLI and the gRPC service drive: an opened index
//! plus, for MaxSim retrieval, the encoder that built it; and the checks
//! both make of a request (a filter's unknown fields).

use std::path::{Path, PathBuf};

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use tessera_eval::beir::Query;
use tessera_eval::Run;
use tessera_index::{Candidates, Filter, Fusion, Hit, Index, SearchParams, TokenVectors};
use tessera_training::Encoder;

use crate::model::ModelArgs;

/// Which ranking answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retriever {
    /// Late interaction: MaxSim over token vectors.
    Colbert,
    /// BM25 over titles and texts (tantivy).
    Bm25,
    /// Fusion of ColBERT and BM25 (see --fusion).
    Hybrid,
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

/// Candidate generation for MaxSim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidatesArg {
    /// PLAID: centroid probing, approximate scores, exact re-rank.
    Plaid,
    /// Exact MaxSim over every document (the reference; slow on big indexes).
    Exhaustive,
    /// HNSW over the centroids, then exact re-rank.
    Hnsw,
}

impl From<CandidatesArg> for Candidates {
    fn from(c: CandidatesArg) -> Self {
        match c {
            CandidatesArg::Plaid => Candidates::Plaid,
            CandidatesArg::Exhaustive => Candidates::Exhaustive,
            CandidatesArg::Hnsw => Candidates::Hnsw,
        }
    }
}

/// Hybrid fusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FusionArg {
    /// Reciprocal-rank fusion (k = 60).
    Rrf,
    /// Convex combination of min-max normalised scores.
    Linear,
}

fn default_bm25_weight() -> f32 {
    match Fusion::default() {
        Fusion::Linear { bm25_weight } => bm25_weight,
        Fusion::Rrf { .. } => 0.5,
    }
}

fn parse_weight(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(w) if (0.0..=1.0).contains(&w) => Ok(w),
        _ => Err(format!("{s:?} is not a weight in [0, 1]")),
    }
}

/// The approximate-search settings `search`, `eval` and `serve` share: one
/// set of names, meanings and bounds (unset: the index crate's defaults;
/// `serve` makes them the default of calls that set none).
#[derive(Args, Debug, Clone, Default)]
pub struct PlaidArgs {
    /// PLAID: centroids probed per query token, at least, for 8,192
    /// centroids (scaled with the index's centroid count), 1 to 256.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub n_probe: Option<u32>,
    /// PLAID: probe budget in query tokens × cells (a query of n tokens
    /// probes N/n cells per token, within --n-probe and 256; 0: off).
    #[arg(long, value_name = "N")]
    pub probe_budget: Option<u32>,
    /// PLAID/HNSW: documents kept by the first approximate score (IVF
    /// lists only) for the second (every token's centroid); at most the
    /// exact candidates (e.g. 1): no second pass, the first pass's best
    /// are re-ranked exactly.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub n_approx: Option<u32>,
    /// PLAID/HNSW: exact re-rank budget in query tokens × documents (a
    /// query of n tokens re-ranks N/n documents; 0: the candidate count
    /// alone).
    #[arg(long, value_name = "N")]
    pub rerank_budget: Option<u32>,
}

impl PlaidArgs {
    /// `p` with the settings given here.
    pub fn apply(&self, p: &mut SearchParams) {
        let set = |v: Option<u32>, field: &mut usize| {
            if let Some(n) = v {
                *field = n as usize;
            }
        };
        set(self.n_probe, &mut p.n_probe);
        set(self.probe_budget, &mut p.probe_budget);
        set(self.n_approx, &mut p.n_approx);
        set(self.rerank_budget, &mut p.rerank_budget);
    }
}

/// Ranking options shared by `search` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct RankArgs {
    /// Ranking: hybrid (MaxSim fused with BM25, see --fusion; the
    /// default: better than either alone on every collection measured,
    /// in-domain and zero-shot), colbert (MaxSim alone) or bm25.
    #[arg(long, value_enum, default_value_t = Retriever::Hybrid)]
    pub retriever: Retriever,
    /// MaxSim candidate generation.
    #[arg(long, value_enum, default_value_t = CandidatesArg::Plaid)]
    pub candidates: CandidatesArg,
    #[command(flatten)]
    pub plaid: PlaidArgs,
    /// PLAID/HNSW: documents re-ranked exactly, at least (4·k at least).
    #[arg(long, value_name = "N")]
    pub n_candidates: Option<usize>,
    /// PLAID/HNSW: at most N documents re-ranked exactly.
    #[arg(long, value_name = "N")]
    pub max_candidates: Option<usize>,
    /// Hybrid: rrf (reciprocal ranks) or linear (min-max normalised
    /// scores, `(1 − w)·colbert + w·bm25`).
    #[arg(long, value_enum, default_value_t = FusionArg::Linear)]
    pub fusion: FusionArg,
    /// Hybrid with --fusion linear: the BM25 weight w in [0, 1].
    #[arg(long, value_name = "W", default_value_t = default_bm25_weight(), value_parser = parse_weight)]
    pub bm25_weight: f32,
    /// Metadata filter as JSON, e.g. '{"range": {"field": "year", "gte": 2020}}'
    /// or '{"eq": {"field": "lang", "value": "en"}}'.
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
}

impl RankArgs {
    /// Index search parameters for `k` results.
    pub fn params(&self, k: usize) -> Result<SearchParams> {
        let mut p = SearchParams {
            k,
            candidates: self.candidates.into(),
            ..SearchParams::default()
        };
        self.plaid.apply(&mut p);
        if let Some(n) = self.n_candidates {
            p.n_candidates = n;
        }
        if let Some(n) = self.max_candidates {
            p.max_candidates = n;
        }
        p.fusion = match self.fusion {
            FusionArg::Rrf => Fusion::Rrf {
                c: tessera_index::search::RRF_K,
            },
            FusionArg::Linear => Fusion::Linear {
                bm25_weight: self.bm25_weight,
            },
        };
        if let Some(f) = &self.filter {
            let f: Filter = serde_json::from_str(f).with_context(|| format!("--filter {f:?}"))?;
            f.validate()?;
            p.filter = Some(f);
        }
        Ok(p)
    }
}

/// An index, and the encoder when the retriever needs one.
pub struct Engine {
    pub index: Index,
    pub encoder: Option<Encoder>,
    pub model_dir: Option<PathBuf>,
}

impl Engine {
    /// Opens `dir`; loads the model that built it (or `--model`) unless the
    /// retriever is BM25. Refuses a model whose output width differs from
    /// the index's.
    pub fn open(dir: &Path, model: &ModelArgs, retriever: Retriever) -> Result<Self> {
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
        match &self.encoder {
            None => Ok(Vec::new()),
            Some(e) => Ok(e
                .encode_queries(texts)?
                .items
                .into_iter()
                .map(|i| i.vectors)
                .collect()),
        }
    }

    /// Ranks one query given its text and (unless BM25) its vectors.
    pub fn rank(
        &self,
        retriever: Retriever,
        text: &str,
        vectors: Option<&TokenVectors>,
        p: &SearchParams,
    ) -> Result<Vec<Hit>> {
        let need = || vectors.context("the query was not encoded");
        Ok(match retriever {
            Retriever::Bm25 => self.index.search_text(text, p.k, p.filter.as_ref())?,
            Retriever::Colbert => self.index.search(need()?, p)?,
            Retriever::Hybrid => self.index.search_hybrid(need()?, text, p)?,
        })
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
        let mut run = Run::default();
        let mut timing = RunTiming::default();
        for chunk in queries.chunks(64) {
            let texts: Vec<&str> = chunk.iter().map(|q| q.text.as_str()).collect();
            let t = Instant::now();
            let vecs = self.encode_queries(&texts)?;
            timing.encode_s += t.elapsed().as_secs_f64();
            for (i, q) in chunk.iter().enumerate() {
                let t = Instant::now();
                let hits = self.rank(retriever, &q.text, vecs.get(i), p)?;
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
}

/// Fields a filter names that no document has ([`unknown_fields`]).
pub struct UnknownFields {
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
