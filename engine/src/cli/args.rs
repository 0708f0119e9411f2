//! The option groups several commands share, as flags, and their
//! conversion to the library's plain option types (each command turns its
//! flags into options once, then makes one library call).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_engine::corpus::Format;
use tessera_engine::fit::{DataOptions, ScheduleOptions, TrainerOptions};
use tessera_engine::ingest::RecordOptions;
use tessera_engine::input::check_text;
use tessera_engine::model::ModelOptions;
use tessera_engine::reduction::ReductionChoice;
use tessera_engine::retrieve::Retriever;
use tessera_index::{Analyzer, Candidates, Filter, Fusion, SearchParams};
use tessera_model::{DeviceChoice, PrecisionChoice};
use tessera_training::train::optim::Decay;

/// `--model`, `--device`, `--precision`, `--threads`, `--batch-size`.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (Hugging Face BERT, Stanford ColBERT, PyLate or
    /// Tessera layout), or a name: `tessera-minilm` (the default: the
    /// committed trained head over all-MiniLM-L6-v2, 128-dim vectors) or
    /// `raw` (all-MiniLM-L6-v2's raw 384-dim states, no head). Default:
    /// $TESSERA_MODEL, else tessera-minilm.
    #[arg(long, value_name = "DIR|NAME")]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu, cuda or auto (CUDA when available).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Threads for the model and for parallel work. Default:
    /// $RAYON_NUM_THREADS, else the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Precision of the backbone: fp32; bf16 (matrix products in
    /// bfloat16, vectors still f32 and unit length); or auto: bf16 on CUDA
    /// and on CPUs with AVX-512 BF16 or AMX, fp32 elsewhere (emulated bf16
    /// is slower than fp32). Default: auto; search, serve and eval encode
    /// queries with the precision the index was built with.
    #[arg(long, value_name = "P", value_parser = parse_precision)]
    pub precision: Option<PrecisionChoice>,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

fn parse_precision(s: &str) -> Result<PrecisionChoice, String> {
    s.parse()
}

impl ModelArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> ModelOptions {
        ModelOptions {
            model: self.model.clone(),
            device: self.device,
            threads: self.threads,
            batch_size: self.batch_size,
            precision: self.precision,
        }
    }
}

/// Which ranking answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetrieverArg {
    /// Late interaction: MaxSim over token vectors.
    Colbert,
    /// BM25 over titles and texts (tantivy).
    Bm25,
    /// Fusion of ColBERT and BM25 (see --fusion).
    Hybrid,
}

impl From<RetrieverArg> for Retriever {
    fn from(r: RetrieverArg) -> Self {
        match r {
            RetrieverArg::Colbert => Retriever::Colbert,
            RetrieverArg::Bm25 => Retriever::Bm25,
            RetrieverArg::Hybrid => Retriever::Hybrid,
        }
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
    #[arg(long, value_enum, default_value_t = RetrieverArg::Hybrid)]
    pub retriever: RetrieverArg,
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
    /// The retriever asked for.
    pub fn retriever(&self) -> Retriever {
        self.retriever.into()
    }

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

/// `--reduction DIR --dim R`, shared by the commands that build or search
/// indexes.
#[derive(Args, Debug, Clone, Default)]
pub struct ReductionArgs {
    /// A reduction folder (`tessera train reduce`): token vectors are
    /// reduced to --dim dims before coding, and queries the same way. An
    /// index records its reduction; searching it with another one is refused.
    #[arg(long, value_name = "DIR", requires = "reduced_dim")]
    pub reduction: Option<PathBuf>,
    /// Output size of --reduction: one of its nested set (any size up to
    /// the model's for pca and truncate).
    #[arg(long = "dim", value_name = "R", requires = "reduction")]
    pub reduced_dim: Option<usize>,
}

impl ReductionArgs {
    /// The library's reduction choice for these flags.
    pub fn choice(&self) -> ReductionChoice {
        ReductionChoice {
            reduction: self.reduction.clone(),
            reduced_dim: self.reduced_dim,
        }
    }
}

/// Layout of a dump's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// One JSON object per line.
    Jsonl,
    /// `id<TAB>text` per line.
    Tsv,
}

/// How to read a dump's records and what to do with bad ones.
#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    /// Record format (default: from the extension; JSONL for `-`).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// JSONL: the document id field (`_id`, falling back to `id`).
    #[arg(long, default_value = "_id", value_name = "FIELD")]
    pub id_field: String,
    /// JSONL: fields encoded, in order; `title` is stored as the title.
    #[arg(
        long,
        default_value = "title,text",
        value_delimiter = ',',
        value_name = "FIELDS"
    )]
    pub text_fields: Vec<String>,
    /// Skip malformed lines, missing ids or text fields, duplicate ids and
    /// invalid UTF-8 (counted per kind) instead of stopping. Documents with
    /// an empty title and text are not invalid: they are indexed (and
    /// counted) with no tokens.
    #[arg(long)]
    pub skip_invalid: bool,
}

impl RecordArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> RecordOptions {
        RecordOptions {
            format: self.format.map(|f| match f {
                FormatArg::Jsonl => Format::Jsonl,
                FormatArg::Tsv => Format::Tsv,
            }),
            id_field: self.id_field.clone(),
            text_fields: self.text_fields.clone(),
            skip_invalid: self.skip_invalid,
        }
    }
}

/// What to search for, shared by `search` and `query`: one query, or a
/// file of them with the run file to write; and `k`.
#[derive(Args, Debug)]
pub struct QueryInput {
    /// The query text.
    #[arg(value_name = "QUERY", required_unless_present = "queries")]
    pub query: Option<String>,
    /// Queries file: JSONL (`{"_id", "text"}`) or TSV (`id<TAB>text`).
    #[arg(
        long,
        value_name = "FILE",
        requires = "run_out",
        conflicts_with = "query"
    )]
    pub queries: Option<PathBuf>,
    /// With --queries: the TREC run file to write.
    #[arg(long, value_name = "FILE")]
    pub run_out: Option<PathBuf>,
    /// Results per query.
    #[arg(short = 'k', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub k: u32,
}

impl QueryInput {
    /// The queries of `--queries`, refusing an empty file; `None` for a
    /// single query.
    pub fn batch(&self) -> Result<Option<Vec<tessera_eval::beir::Query>>> {
        let Some(qpath) = &self.queries else {
            return Ok(None);
        };
        let queries = tessera_eval::beir::read_queries(qpath)?;
        if queries.is_empty() {
            bail!("{}: no queries", qpath.display());
        }
        Ok(Some(queries))
    }

    /// The single query's text, refusing an empty one.
    pub fn text(&self) -> Result<&str> {
        let query = self.query.as_deref().expect("clap requires a query");
        check_text(query, "the query")?;
        Ok(query)
    }

    /// Writes `run` (of `n` queries, started at `t`) to `--run-out` under
    /// the run name `name`, and says so on stderr.
    pub fn write_run(
        &self,
        run: &tessera_eval::Run,
        name: &str,
        n: usize,
        t: Instant,
    ) -> Result<()> {
        let out = self.run_out.as_ref().expect("clap requires --run-out");
        run.write(out, name)?;
        eprintln!(
            "{n} queries in {:.2} s; run written to {}",
            t.elapsed().as_secs_f64(),
            out.display()
        );
        Ok(())
    }
}

/// The learning-rate schedule and gradient clipping (both trainers).
#[derive(Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// Warm-up steps (default: a tenth of --steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Decay after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear", value_parser = parse_decay)]
    pub schedule: Decay,
    /// Clip the gradients' global norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
}

impl ScheduleArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> ScheduleOptions {
        ScheduleOptions {
            warmup: self.warmup,
            schedule: self.schedule,
            clip: self.clip,
        }
    }
}

/// The data options both trainers (`train heads`, `train reduce`) share:
/// the splits, how the datasets are weighted, how hard negatives are mined
/// and how the dev pools are drawn.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Sampling weight of each --dataset (default 1 each), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "W,..")]
    pub weights: Vec<f64>,
    /// Split trained on.
    #[arg(long, default_value = "train")]
    pub train_split: String,
    /// Split validated on (skipped for datasets without it).
    #[arg(long, default_value = "dev")]
    pub dev_split: String,
    /// Hard negatives mined per train query from each of BM25 and the model.
    #[arg(long, default_value_t = 30)]
    pub mine_depth: usize,
    /// Dev candidate pool: top N of BM25 and top N of the model, per query.
    #[arg(long, default_value_t = 100)]
    pub pool_depth: usize,
    /// Use at most N dev queries per dataset for validation (0: all).
    #[arg(long, default_value_t = 0)]
    pub dev_queries: usize,
}

impl DataArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> DataOptions {
        DataOptions {
            weights: self.weights.clone(),
            train_split: self.train_split.clone(),
            dev_split: self.dev_split.clone(),
            mine_depth: self.mine_depth,
            pool_depth: self.pool_depth,
            dev_queries: self.dev_queries,
        }
    }
}

fn parse_decay(s: &str) -> Result<Decay, String> {
    s.parse()
}

/// `--analyzer` values.
pub fn parse_analyzer(s: &str) -> Result<Analyzer, String> {
    match s.parse::<Analyzer>() {
        Ok(Analyzer::Legacy) => Err("legacy is only read, not built (en, simple)".into()),
        Ok(a) => Ok(a),
        Err(e) => Err(e.to_string()),
    }
}

/// The run options both trainers share (`train heads`, `train reduce`);
/// each command sets its own defaults.
#[derive(Args, Debug, Clone)]
pub struct TrainerArgs {
    /// Optimiser steps (0: only evaluate the starting point on dev; pca and
    /// truncate reductions only fit).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Queries per step (each with up to --positives judged documents and
    /// --negatives mined negatives; the batch's other documents are
    /// in-batch negatives).
    #[arg(long, default_value_t = 32)]
    pub batch_queries: usize,
    /// Mined hard negatives per query per step.
    #[arg(long, default_value_t = 1)]
    pub negatives: usize,
    /// Judged positives per query per step (at most): each is a loss row of
    /// its own, with the query's other positives left out of its softmax.
    /// More than 1 uses more of a dataset with many judgements per query
    /// (NFCorpus: about 43) in the same number of steps.
    #[arg(long, default_value_t = 1)]
    pub positives: usize,
    /// Learning rate (AdamW): of the head, or of a reduction's free matrix
    /// and mean.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Softmax temperature of the contrastive loss (on MaxSim sums).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed of the batches drawn, and of a head's initialisation and
    /// unsupervised crops or a reduction's size at each step
    /// (pseudo-queries are drawn with one seed whatever this is).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Validate on dev every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue the run in --out from its checkpoint (refused if the
    /// settings or data differ, but for --steps, --warmup, --eval-every and
    /// --checkpoint-every).
    #[arg(long)]
    pub resume: bool,
}

impl TrainerArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> TrainerOptions {
        TrainerOptions {
            steps: self.steps,
            batch_queries: self.batch_queries,
            negatives: self.negatives,
            positives: self.positives,
            lr: self.lr,
            temperature: self.temperature,
            seed: self.seed,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
        }
    }
}
