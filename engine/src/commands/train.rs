//! `tessera train heads`: trains a projection head (frozen backbone, on
//! cached backbone states) or the backbone with it (`--mode full`) on BEIR
//! train splits and self-supervised pairs, validating on dev splits, and
//! writes a model folder every other command accepts.
//!
//! Steps: (1) read every dataset's train and dev split and check them; (2)
//! cache the backbone states of corpus and queries (once per dataset, model
//! and ColBERT settings, under `$TESSERA_HOME/cache/states`); (3) mine hard
//! negatives for the train queries and candidate pools for the dev queries
//! with BM25 and the current model's own index (the cached evaluation index
//! of `tessera eval`); (4) train ([`tessera_training::train`]); (5) keep the
//! best head on dev, its settings and the training record in `--out`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};
use tessera_eval::beir::{Dataset, Query};
use tessera_eval::stats::mean_std;
use tessera_eval::{evaluate, Measure, Qrels, Run};
use tessera_index::SearchParams;
use tessera_training::heads::blocks::Activation;
use tessera_training::heads::HeadSpec;
use tessera_training::states::{StateCache, StatesWriter};
use tessera_training::train::optim::Decay;
use tessera_training::train::score::{score_dev, DevSet};
use tessera_training::train::select::Selection;
use tessera_training::train::{
    self, plot, Backbone, DevLog, Example, Mode, Source, Texts, TrainConfig, Trainee,
};
use tessera_training::{
    ColbertModel, ColbertSettings, Encoder, HeadKind, ProjectionHead, TextKind,
};

mod interpolate;
mod robust;

use crate::commands::encode_corpus::RecordArgs;
use crate::commands::eval::cached_dataset_index;
use crate::corpus::{CorpusOptions, CorpusReader};
use crate::model::{absolute, ModelArgs};
use crate::progress;
use crate::searcher::{Engine, Retriever};

/// Train the model's projection head on labelled or unlabelled data.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera train heads --dataset path/to/beir/scifact --head ffn --residual --dim 128 --out my-head\n  \
    tessera train reduce --dataset path/to/beir/scifact --dims 16,32,64 --out my-reduction\n\n\
    See `tessera train heads --help` and `tessera train reduce --help` for every option.")]
pub struct TrainArgs {
    #[command(subcommand)]
    pub what: TrainWhat,
}

#[derive(Subcommand, Debug)]
pub enum TrainWhat {
    Heads(Box<HeadsArgs>),
    Reduce(Box<crate::commands::reduce::TrainReduceArgs>),
    Summarize(SummarizeArgs),
    Interpolate(interpolate::InterpolateArgs),
}

/// Tabulate training runs (mean ± std over seeds per head and dim) and draw
/// their dev curves.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera train summarize runs/*/ --plot docs/experiments/projection-heads-dev\n\n\
    Runs with the same head, output dim and mode form one row; the table (Markdown) gives\n\
    each dataset's best-checkpoint dev nDCG@10 and Recall@100, their mean, the seeds,\n\
    training time and parameters.")]
pub struct SummarizeArgs {
    /// Output folders of `tessera train heads`.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Also draw the mean dev nDCG@10 curve per row to FILE.png and FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// One row per run folder name with its seed (a `-sN` part) left out
    /// — `plain-s1`, `plain-s2` → `plain` — instead of per head, dim and mode.
    #[arg(long)]
    pub by_folder: bool,
}

/// A run folder's name without its seed part (`-s` and digits).
fn name_without_seed(dir: &Path) -> String {
    let name = absolute(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('-')
        .filter(|part| {
            !(part.len() > 1
                && part.starts_with('s')
                && part[1..].bytes().all(|b| b.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Train a projection head — linear, FFN, GLU, any with a residual path —
/// on BEIR train splits (and/or self-supervised pairs from a dump), keeping
/// the best checkpoint on the dev splits.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera train heads --dataset path/to/beir/scifact --dataset path/to/beir/nfcorpus \\\n    \
      --head ffn --depth 2 --width-factor 2 --residual --dim 128 --out heads/ffn-res-128\n  \
    tessera train heads --dataset path/to/beir/scifact --dataset path/to/beir/nfcorpus \\\n    \
      --head glu --dim 128 --steps 600 --batch-queries 24 --positives 4 --out heads/glu-128  \
    # the recipe of the default model v4\n  \
    tessera train heads --dataset path/to/beir/scifact --head linear --dim 128 --mode full \\\n    \
      --steps 100 --batch-queries 8 --out heads/linear-full\n  \
    tessera train heads --unsupervised-corpus my-dump.jsonl --head glu --dim 128 --out heads/mine\n  \
    tessera index build --input corpus.jsonl --out my.idx --model heads/ffn-res-128\n\n\
    The output folder is a model folder: head.json + head.safetensors, tessera.json (ColBERT\n\
    settings and the backbone it sits on), training.json (the command, config and scores),\n\
    metrics.jsonl, loss.png/svg and dev.png/svg. An interrupted run continues with --resume.")]
pub struct HeadsArgs {
    /// A BEIR dataset folder with a train split (repeat for several).
    #[arg(long = "dataset", value_name = "DIR")]
    pub datasets: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Self-supervised pairs from a dump without labels: two random spans of
    /// one document as query and positive (Contriever's cropping).
    #[arg(long, value_name = "DUMP")]
    pub unsupervised_corpus: Option<PathBuf>,
    /// Documents of --unsupervised-corpus to crop pairs from.
    #[arg(long, default_value_t = 5000)]
    pub unsupervised_docs: usize,
    /// Head architecture: identity, linear, ffn or glu.
    #[arg(long, default_value = "ffn", value_parser = parse_head)]
    pub head: HeadKind,
    /// Output dimension.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub dim: i64,
    /// FFN: linear layers.
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// FFN and GLU: hidden width as a multiple of the backbone's width.
    #[arg(long, default_value_t = 2.0)]
    pub width_factor: f64,
    /// gelu, relu or silu (default: gelu for FFN, silu — SwiGLU — for GLU).
    #[arg(long, value_parser = parse_activation)]
    pub activation: Option<Activation>,
    /// FFN: LayerNorm after each hidden activation.
    #[arg(long)]
    pub layer_norm: bool,
    /// Add a skip path (identity when widths match, a learned shortcut otherwise).
    #[arg(long)]
    pub residual: bool,
    /// Biases on the head's linear layers.
    #[arg(long)]
    pub bias: bool,
    /// frozen (cached backbone states; only the head trains) or full.
    #[arg(long, default_value = "frozen", value_parser = parse_mode)]
    pub mode: Mode,
    /// Optimiser steps (0: only evaluate the initial head on dev, e.g. the
    /// identity baseline on the same candidate pools).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Queries per step (each with a positive and --negatives hard negatives;
    /// every other document of the batch is an in-batch negative).
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
    /// Learning rate of the head.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate of the backbone (full mode).
    #[arg(long, default_value_t = 2e-5)]
    pub backbone_lr: f64,
    /// AdamW's decoupled weight decay on the head's (and backbone's) weights.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[command(flatten)]
    pub sched: ScheduleArgs,
    /// Softmax temperature of the contrastive loss (on MaxSim sums).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Teacher scores for distillation: a TREC run file per --dataset, in
    /// order (scores of a larger model over each train query's candidates).
    #[arg(long = "teacher", value_name = "RUN")]
    pub teachers: Vec<PathBuf>,
    /// Weight of the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    pub distill_weight: f64,
    /// Temperature of the teacher's and the student's softmax over a
    /// query's candidates (distillation).
    #[arg(long, default_value_t = 1.0)]
    pub distill_temperature: f64,
    /// Teacher candidates per query.
    #[arg(long, default_value_t = 8)]
    pub distill_candidates: usize,
    /// Seed of the head's initialisation, the batches drawn and the
    /// unsupervised crops.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Validate on dev every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Train with ColBERT's markers ([unused0] for queries, [unused1] for
    /// documents); recorded in the model so encoding follows.
    #[arg(long)]
    pub markers: bool,
    /// Pad queries with [MASK] to the query length and keep those outputs.
    #[arg(long)]
    pub query_augmentation: bool,
    /// Start from the head of this model folder or built-in model name
    /// (its head.json replaces the head options); with --steps 0, evaluate
    /// it on the dev pools.
    #[arg(long, value_name = "DIR", conflicts_with = "start")]
    pub init_head: Option<PathBuf>,
    /// How a fresh head starts: random (torch's Linear init) or pca — the
    /// backbone's principal directions, learnt from no labels (a linear
    /// head's weight, or the learned shortcut of a --residual head whose
    /// branch starts at zero): a general head that training moves from.
    #[arg(long, default_value = "random", value_parser = ["random", "pca"])]
    pub start: String,
    /// L2-SP: pull the head's weights towards where they started with this
    /// weight (Σ‖θ − θ₀‖²; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub l2_sp: f64,
    /// Weight of a KL term from the backbone's own MaxSim scores (no head)
    /// to the head's, over each query's batch documents: the trained head
    /// keeps the order the backbone knew (frozen mode; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub raw_kl: f64,
    /// A collection to validate on but never train on (its --dev-split
    /// against its whole corpus, exact MaxSim); repeat for several. The
    /// validations report an in-domain and a zero-shot mean.
    #[arg(long = "zero-shot", value_name = "DIR")]
    pub zero_shot: Vec<PathBuf>,
    /// Which validated head to keep: in-domain (best in-domain mean) or
    /// robust (best zero-shot mean among those within --select-margin of
    /// the best in-domain mean; needs --zero-shot, frozen mode).
    #[arg(long, default_value = "in-domain")]
    pub select: Selection,
    /// The robust rule's margin below the best in-domain mean (nDCG@10).
    #[arg(long, default_value_t = 0.01)]
    pub select_margin: f64,
    /// The model folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The learning-rate schedule and gradient clipping (both trainers).
#[derive(clap::Args, Debug, Clone)]
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
    /// Warm-up steps of a run of `steps`.
    pub fn warmup(&self, steps: usize) -> usize {
        self.warmup.unwrap_or(steps / 10)
    }
}

/// The data options both trainers (`train heads`, `train reduce`) share:
/// the splits, how the datasets are weighted, how hard negatives are mined
/// and how the dev pools are drawn.
#[derive(clap::Args, Debug, Clone)]
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
    /// The weights fit `datasets` datasets and are positive.
    pub fn check(&self, datasets: usize) -> Result<()> {
        ensure!(
            self.weights.is_empty() || self.weights.len() == datasets,
            "--weights lists {} weights for {datasets} datasets",
            self.weights.len(),
        );
        if let Some(w) = self.weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            bail!("--weights: {w} is not a positive weight");
        }
        Ok(())
    }

    /// What decides a run's training examples, recorded in its checkpoint
    /// so that a resume with other data is refused: of these options the
    /// ones that pick the examples of `datasets` (the dev options only
    /// validate and are left out), plus the trainer's own fields in `more`
    /// (an object).
    pub fn describe(&self, datasets: &[PathBuf], more: serde_json::Value) -> serde_json::Value {
        let datasets: Vec<PathBuf> = datasets.iter().map(|d| absolute(d)).collect();
        let mut v = serde_json::json!({
            "datasets": datasets,
            "weights": self.weights,
            "train_split": self.train_split,
            "mine_depth": self.mine_depth,
        });
        if let (Some(o), serde_json::Value::Object(m)) = (v.as_object_mut(), more) {
            o.extend(m);
        }
        v
    }
}

fn parse_head(s: &str) -> Result<HeadKind, String> {
    match s {
        "identity" => Ok(HeadKind::Identity),
        "linear" => Ok(HeadKind::Linear),
        "ffn" => Ok(HeadKind::Ffn),
        "glu" => Ok(HeadKind::Glu),
        "residual" => {
            Err("residual is a path, not a head: add --residual to linear, ffn or glu".into())
        }
        _ => Err(format!("unknown head {s:?} (identity, linear, ffn or glu)")),
    }
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    match s {
        "gelu" => Ok(Activation::Gelu),
        "relu" => Ok(Activation::Relu),
        "silu" | "swish" => Ok(Activation::Silu),
        _ => Err(format!("unknown activation {s:?} (gelu, relu or silu)")),
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_decay(s: &str) -> Result<Decay, String> {
    s.parse()
}

pub fn run(args: TrainArgs) -> Result<()> {
    match args.what {
        TrainWhat::Heads(a) => heads(*a),
        TrainWhat::Reduce(a) => crate::commands::reduce::train_reduce(*a),
        TrainWhat::Summarize(a) => summarize(a),
        TrainWhat::Interpolate(a) => interpolate::run(a),
    }
}

/// One dataset's texts and judgements, read and checked.
pub(crate) struct DatasetData {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) doc_ids: Vec<String>,
    pub(crate) doc_texts: Vec<String>,
    pub(crate) doc_titles: Vec<String>,
    pub(crate) queries: Vec<Query>,
    pub(crate) train: Qrels,
    pub(crate) dev: Option<Qrels>,
}

/// Reads a dataset to train on. Without `require_train` a dataset may lack
/// the train split (its training queries then come from elsewhere: the
/// pseudo-queries of `train reduce`).
pub(crate) fn read_dataset(
    dir: &Path,
    train_split: &str,
    dev_split: &str,
    require_train: bool,
) -> Result<DatasetData> {
    read_splits(dir, Some(train_split), dev_split, require_train)
}

/// Reads a dataset, its train split only when `train_split` names one (a
/// zero-shot validation set has none: its train judgements stay empty).
fn read_splits(
    dir: &Path,
    train_split: Option<&str>,
    dev_split: &str,
    require_train: bool,
) -> Result<DatasetData> {
    let ds = Dataset::open(dir)?;
    let no_train = || Qrels {
        judgements: BTreeMap::new(),
    };
    let train = if let Some(train_split) =
        train_split.filter(|t| require_train || ds.qrels_path(t).is_file())
    {
        let train = ds
            .qrels(train_split)
            .with_context(|| format!("{}: no {train_split} split to train on", dir.display()))?;
        ensure!(
            !train.is_empty() || !require_train,
            "{}: qrels/{train_split}.tsv judges no queries",
            dir.display()
        );
        train
    } else if let Some(train_split) = train_split {
        eprintln!(
            "note: {}: no {train_split} split; it trains on pseudo-queries only",
            dir.display()
        );
        no_train()
    } else {
        no_train()
    };
    let dev = match ds.qrels(dev_split) {
        Ok(q) if !q.is_empty() => Some(q),
        _ => {
            eprintln!(
                "note: {}: no {dev_split} split; it is not validated on",
                dir.display()
            );
            None
        }
    };
    let queries = tessera_eval::beir::read_queries(&dir.join("queries.jsonl"))?;
    let DumpTexts {
        ids: doc_ids,
        texts: doc_texts,
        titles: doc_titles,
    } = read_texts(&ds.corpus_path(), &CorpusOptions::default(), usize::MAX)?;
    let known_docs: HashSet<&str> = doc_ids.iter().map(String::as_str).collect();
    let known_q: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    for (split, qrels) in [(train_split, Some(&train)), (Some(dev_split), dev.as_ref())] {
        let (Some(split), Some(qrels)) = (split, qrels) else {
            continue;
        };
        let path = ds.qrels_path(split);
        if let Some(q) = qrels
            .judgements
            .keys()
            .find(|q| !known_q.contains(q.as_str()))
        {
            bail!(
                "{}: names query {q:?}, which queries.jsonl does not have",
                path.display()
            );
        }
        for (q, judged) in &qrels.judgements {
            if let Some(d) = judged.keys().find(|d| !known_docs.contains(d.as_str())) {
                bail!(
                    "{}: query {q} judges document {d:?}, which corpus.jsonl does not have",
                    path.display()
                );
            }
        }
    }
    let canonical = absolute(dir);
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    Ok(DatasetData {
        name,
        dir: canonical,
        doc_ids,
        doc_texts,
        doc_titles,
        queries,
        train,
        dev,
    })
}

/// The records of a dump, field by field.
struct DumpTexts {
    ids: Vec<String>,
    /// What the encoder sees (title and text).
    texts: Vec<String>,
    titles: Vec<String>,
}

/// Up to `limit` records of a dump.
fn read_texts(path: &Path, opts: &CorpusOptions, limit: usize) -> Result<DumpTexts> {
    let mut reader = CorpusReader::open(path, opts.clone())?;
    let (mut ids, mut texts, mut titles) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = reader.next_record() {
        match r? {
            Ok(rec) => {
                ids.push(rec.id.clone());
                texts.push(rec.encoded_text());
                titles.push(rec.title);
            }
            Err(bad) => bail!("{bad}"),
        }
        if ids.len() >= limit {
            break;
        }
    }
    Ok(DumpTexts { ids, texts, titles })
}

/// The state cache of `texts` (built if missing), keyed by the model, the
/// settings, the side and the texts themselves.
fn cached_states(
    encoder: &Encoder,
    label: &str,
    ids: &[String],
    texts: &[String],
    kind: TextKind,
) -> Result<Arc<StateCache>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let bb = &encoder.model().backbone_dir;
    absolute(bb).hash(&mut h);
    format!("{:?}", encoder.settings()).hash(&mut h);
    format!("{kind:?}").hash(&mut h);
    ids.hash(&mut h);
    texts.hash(&mut h);
    let side = match kind {
        TextKind::Query => "queries",
        TextKind::Document => "docs",
    };
    let dir = crate::commands::eval::cache_root()?
        .join("states")
        .join(format!("{label}-{side}-{:016x}", h.finish()));
    if let Some(c) = StateCache::open(&dir)? {
        return Ok(Arc::new(c));
    }
    eprintln!(
        "caching backbone states of {} {label} {side} into {}",
        texts.len(),
        dir.display()
    );
    let t = Instant::now();
    let dim = encoder.model().bert.config().hidden_size as usize;
    let mut w = StatesWriter::create(&dir, dim)?;
    let pb = progress::bar(Some(texts.len() as u64), side);
    pb.set_prefix(format!("backbone states {label}"));
    for (ci, chunk) in texts.chunks(512).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let tok = encoder.tokenize(&refs, kind)?;
        let out = encoder.backbone_states(&tok, kind, &mut |n| pb.inc(n as u64))?;
        for (j, item) in out.items.iter().enumerate() {
            w.push(&ids[ci * 512 + j], item.vectors.as_slice())?;
        }
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let source = serde_json::json!({
        "backbone": bb,
        "settings": encoder.settings(),
        "label": label,
        "side": side,
    });
    let c = w.finish(source, secs)?;
    eprintln!(
        "cached {} texts, {} tokens in {secs:.1} s",
        c.len(),
        c.meta.tokens
    );
    Ok(Arc::new(c))
}

/// One side of a source: token ids for full mode (the backbone runs with
/// gradients), else the cached backbone states.
fn side(
    encoder: &Encoder,
    full: bool,
    label: &str,
    ids: &[String],
    texts: &[String],
    kind: TextKind,
) -> Result<Texts> {
    if full {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        return Ok(Texts::Tokens(Arc::new(encoder.tokenize(&refs, kind)?)));
    }
    Ok(Texts::Cached(cached_states(
        encoder, label, ids, texts, kind,
    )?))
}

/// Top-`k` document ids per query from BM25 and from the model's index
/// (`index`), cached on disk: every run over the same index, queries and
/// depth reuses them.
fn mine(
    engine: &Engine,
    index: &Path,
    queries: &[Query],
    k: usize,
    label: &str,
) -> Result<HashMap<String, Vec<String>>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    index.hash(&mut h);
    k.hash(&mut h);
    for q in queries {
        (&q.id, &q.text).hash(&mut h);
    }
    let cache = crate::commands::eval::cache_root()?
        .join("mined")
        .join(format!(
            "{}-{:016x}.json",
            label.replace(' ', "-"),
            h.finish()
        ));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(m) = serde_json::from_str(&text) {
            return Ok(m);
        }
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let params = SearchParams {
        k,
        ..SearchParams::default()
    };
    for retriever in [Retriever::Bm25, Retriever::Colbert] {
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix(format!("mining {label} ({retriever})"));
        let (run, _) = engine.run_queries(queries, retriever, &params, &pb)?;
        pb.finish_and_clear();
        for (q, hits) in run.results {
            let e = out.entry(q).or_default();
            for (d, _) in hits {
                if !e.contains(&d) {
                    e.push(d);
                }
            }
        }
    }
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let tmp = cache.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&out)?).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, &cache).with_context(|| cache.display().to_string())?;
    Ok(out)
}

/// `len` consecutive words (all of them if fewer) at a random start,
/// blank-joined.
fn random_span(words: &[&str], len: usize, rng: &mut rand::rngs::StdRng) -> String {
    let len = len.min(words.len());
    let start = rng.gen_range(0..=words.len() - len);
    words[start..start + len].join(" ")
}

/// Contriever-style crops: two random spans (10–50 % of the words, at least
/// 4) of each document with at least 8 words.
fn crops(texts: &[String], seed: u64) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xC0FF_EE00);
    let mut out = Vec::new();
    for t in texts {
        let words: Vec<&str> = t.split_whitespace().collect();
        if words.len() < 8 {
            continue;
        }
        let span = |rng: &mut rand::rngs::StdRng| {
            let lo = (words.len() / 10).max(4);
            let hi = (words.len() / 2).max(lo + 1);
            let len = rng.gen_range(lo..hi);
            random_span(&words, len, rng)
        };
        let a = span(&mut rng);
        let b = span(&mut rng);
        out.push((a, b));
    }
    out
}

/// Shortest and longest pseudo-query, in words.
pub(crate) const PSEUDO_WORDS: (usize, usize) = (4, 16);

/// What pseudo-queries are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PseudoFrom {
    /// A span of 4–16 consecutive words of a document.
    Spans,
    /// A document's title (of at least 2 words), each title once.
    Titles,
}

impl PseudoFrom {
    /// Whether document `i` can give a pseudo-query.
    fn usable(self, d: &DatasetData, i: usize) -> bool {
        match self {
            Self::Spans => d.doc_texts[i]
                .split_whitespace()
                .nth(PSEUDO_WORDS.0 - 1)
                .is_some(),
            Self::Titles => d.doc_titles[i].split_whitespace().nth(1).is_some(),
        }
    }

    /// What [`Self::usable`] asks of a document, for an error message.
    pub(crate) fn requirement(self) -> String {
        match self {
            Self::Spans => format!("the {} words a pseudo-query needs", PSEUDO_WORDS.0),
            Self::Titles => "a title of 2 words or more (--pseudo-from titles)".into(),
        }
    }
}

/// Adds up to `n` unlabelled queries to a dataset's training split, drawn
/// from its own documents (in a seeded random order) and judged relevant
/// to that document only: spans of 4–16 consecutive words (documents
/// cycled when `n` exceeds them), or titles (each once). Their ids
/// (`pseudo-N`) are kept apart from the dataset's own. Returns how many
/// were added.
pub(crate) fn add_pseudo_queries(
    d: &mut DatasetData,
    n: usize,
    from: PseudoFrom,
    seed: u64,
) -> usize {
    let (lo, hi) = PSEUDO_WORDS;
    let mut order: Vec<usize> = (0..d.doc_texts.len())
        .filter(|&i| from.usable(d, i))
        .collect();
    if order.is_empty() {
        return 0;
    }
    let n = match from {
        PseudoFrom::Spans => n,
        PseudoFrom::Titles => n.min(order.len()),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5E0D_0051);
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let taken: HashSet<String> = d.queries.iter().map(|q| q.id.clone()).collect();
    let mut prefix = String::from("pseudo-");
    while taken.iter().any(|id| id.starts_with(&prefix)) {
        prefix.insert(0, '_');
    }
    for j in 0..n {
        let doc = order[j % order.len()];
        let text = match from {
            PseudoFrom::Spans => {
                let words: Vec<&str> = d.doc_texts[doc].split_whitespace().collect();
                let len = rng.gen_range(lo..=hi);
                random_span(&words, len, &mut rng)
            }
            PseudoFrom::Titles => d.doc_titles[doc]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        };
        let id = format!("{prefix}{j}");
        d.train
            .judgements
            .insert(id.clone(), BTreeMap::from([(d.doc_ids[doc].clone(), 1)]));
        d.queries.push(Query { id, text });
    }
    n
}

/// Dev sets with the qrels of the queries kept.
pub(crate) type DevSets = Vec<(DevSet, Qrels)>;

/// How [`prepare`] reads its datasets.
pub(crate) struct Prep<'a> {
    pub model: &'a ModelArgs,
    pub model_dir: &'a Path,
    /// Token ids (full mode) instead of cached backbone states.
    pub full: bool,
    pub data: &'a DataArgs,
    pub teachers: &'a [Run],
}

/// Per dataset: its training source (cached states or token ids, examples
/// with mined hard negatives, judged positives excluded) and, with a dev
/// split, its dev set (fixed pools: BM25 ∪ the model's own top
/// `pool_depth`) and the dev qrels of the queries kept.
pub(crate) fn prepare(
    encoder: &Encoder,
    data: &[DatasetData],
    o: &Prep<'_>,
) -> Result<(Vec<Source>, DevSets)> {
    let mut sources = Vec::new();
    let mut devs: Vec<(DevSet, Qrels)> = Vec::new();
    for (di, d) in data.iter().enumerate() {
        let index = cached_dataset_index(
            &Dataset::open(&d.dir)?,
            o.model,
            o.model_dir,
            &RecordArgs::default(),
        )?;
        let engine = Engine::open(
            &index,
            &ModelArgs {
                model: Some(o.model_dir.to_owned()),
                ..o.model.clone()
            },
            Retriever::Colbert,
        )?;
        let qpos: HashMap<&str, usize> = d
            .queries
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.as_str(), i))
            .collect();
        let dpos: HashMap<&str, usize> = d
            .doc_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let train_q: Vec<Query> = d
            .queries
            .iter()
            .filter(|q| d.train.judgements.contains_key(&q.id))
            .cloned()
            .collect();
        let mined = mine(
            &engine,
            &index,
            &train_q,
            o.data.mine_depth,
            &format!("{} {}", d.name, o.data.train_split),
        )?;
        let mut examples = Vec::new();
        for q in &train_q {
            let judged = &d.train.judgements[&q.id];
            let mut positives: Vec<usize> = judged
                .iter()
                .filter(|(_, &r)| r > 0)
                .map(|(id, _)| dpos[id.as_str()])
                .collect();
            // In corpus order, so the index a step draws names the same
            // document whatever order the judgements are kept in.
            positives.sort_unstable();
            if positives.is_empty() {
                continue;
            }
            let negatives: Vec<usize> = mined
                .get(&q.id)
                .into_iter()
                .flatten()
                .filter(|id| judged.get(*id).is_none_or(|&r| r <= 0))
                .filter_map(|id| dpos.get(id.as_str()).copied())
                .collect();
            let teacher = o
                .teachers
                .get(di)
                .and_then(|t| t.results.get(&q.id))
                .map(|hits| {
                    let mut h: Vec<(usize, f32)> = hits
                        .iter()
                        .filter_map(|(id, s)| dpos.get(id.as_str()).map(|&p| (p, *s as f32)))
                        .collect();
                    h.sort_by(|a, b| b.1.total_cmp(&a.1));
                    h
                })
                .unwrap_or_default();
            examples.push(Example {
                query: qpos[q.id.as_str()],
                positives,
                negatives,
                teacher,
            });
        }
        ensure!(
            !examples.is_empty(),
            "{}: qrels/{}.tsv has no query with a relevant document",
            d.dir.display(),
            o.data.train_split
        );
        let qids: Vec<String> = d.queries.iter().map(|q| q.id.clone()).collect();
        let qtexts: Vec<String> = d.queries.iter().map(|q| q.text.clone()).collect();
        let queries = side(encoder, o.full, &d.name, &qids, &qtexts, TextKind::Query)?;
        let docs = side(
            encoder,
            o.full,
            &d.name,
            &d.doc_ids,
            &d.doc_texts,
            TextKind::Document,
        )?;
        if let Some(dev) = &d.dev {
            let mut dev_q: Vec<Query> = d
                .queries
                .iter()
                .filter(|q| dev.judgements.contains_key(&q.id))
                .cloned()
                .collect();
            if o.data.dev_queries > 0 {
                dev_q.truncate(o.data.dev_queries);
            }
            let pools = mine(
                &engine,
                &index,
                &dev_q,
                o.data.pool_depth,
                &format!("{} {}", d.name, o.data.dev_split),
            )?;
            let items = dev_q
                .iter()
                .map(|q| {
                    let pool = pools
                        .get(&q.id)
                        .into_iter()
                        .flatten()
                        .filter_map(|id| dpos.get(id.as_str()).copied())
                        .collect();
                    (qpos[q.id.as_str()], pool)
                })
                .collect();
            let mut qrels = dev.clone();
            let keep: HashSet<&str> = dev_q.iter().map(|q| q.id.as_str()).collect();
            qrels.judgements.retain(|q, _| keep.contains(q.as_str()));
            devs.push((
                DevSet {
                    name: d.name.clone(),
                    queries: queries.clone(),
                    docs: docs.clone(),
                    items,
                },
                qrels,
            ));
        }
        sources.push(Source {
            name: d.name.clone(),
            weight: o.data.weights.get(di).copied().unwrap_or(1.0),
            queries,
            docs,
            examples,
        });
    }
    Ok((sources, devs))
}

fn heads(args: HeadsArgs) -> Result<()> {
    let t_all = Instant::now();
    ensure!(
        !args.datasets.is_empty() || args.unsupervised_corpus.is_some(),
        "give at least one --dataset (with a train split) or --unsupervised-corpus"
    );
    ensure!(args.dim >= 1, "--dim must be at least 1, not {}", args.dim);
    args.data.check(args.datasets.len())?;
    ensure!(
        args.teachers.len() <= args.datasets.len(),
        "--teacher given {} times for {} datasets",
        args.teachers.len(),
        args.datasets.len()
    );
    let select = match args.select {
        Selection::Robust { .. } => Selection::Robust {
            margin: args.select_margin,
        },
        rule => rule,
    };
    select.validate().map_err(anyhow::Error::msg)?;
    if matches!(select, Selection::Robust { .. }) {
        ensure!(
            !args.zero_shot.is_empty(),
            "--select robust weighs a zero-shot mean: give --zero-shot DIR"
        );
        ensure!(
            args.mode == Mode::Frozen,
            "--select robust keeps a copy of every validated head: frozen mode only"
        );
    }
    let model_dir = args.model.model_dir()?;
    let encoder = args.model.load_dir(&model_dir)?;
    let hidden = encoder.model().bert.config().hidden_size;
    let mut spec = HeadSpec::new(args.head, hidden, args.dim);
    spec.depth = args.depth;
    spec.width_factor = args.width_factor;
    spec.activation = args.activation;
    spec.layer_norm = args.layer_norm;
    spec.residual = args.residual;
    spec.bias = args.bias;
    // --init-head: start from (or, with --steps 0, evaluate) a trained head.
    let init = match &args.init_head {
        None => None,
        Some(dir) => {
            let dir = crate::model::resolve_model(dir)?;
            let sp = dir.join("head.json");
            let loaded: HeadSpec = serde_json::from_str(
                &std::fs::read_to_string(&sp)
                    .with_context(|| format!("--init-head {}", sp.display()))?,
            )
            .with_context(|| format!("--init-head {}", sp.display()))?;
            ensure!(
                loaded.in_dim == hidden,
                "--init-head {}: the head takes {}-dim states, the backbone makes {hidden}",
                sp.display(),
                loaded.in_dim
            );
            spec = loaded;
            let wp = dir.join("head.safetensors");
            let tensors = if wp.is_file() {
                tessera_training::weights::WeightFile::read(&wp)?.tensors
            } else {
                HashMap::new()
            };
            Some(tensors)
        }
    };
    if spec.kind == HeadKind::Identity {
        ensure!(
            spec.out_dim == hidden,
            "--head identity keeps the backbone's {hidden} dims: give --dim {hidden}"
        );
    }
    if let Err(m) = spec.validate() {
        bail!(
            "head options: {}",
            m.replace("field ", "--").replace('_', "-")
        );
    }
    let cfg = TrainConfig {
        spec: spec.clone(),
        mode: args.mode,
        steps: args.steps,
        batch_size: args.batch_queries,
        negatives: args.negatives,
        positives: args.positives,
        lr: args.lr,
        backbone_lr: args.backbone_lr,
        weight_decay: args.weight_decay,
        warmup: args.sched.warmup(args.steps),
        decay: args.sched.schedule,
        clip: args.sched.clip,
        temperature: args.temperature,
        distill_weight: if args.teachers.is_empty() {
            0.0
        } else {
            args.distill_weight
        },
        distill_temperature: args.distill_temperature,
        distill_candidates: args.distill_candidates,
        l2_sp: args.l2_sp,
        raw_kl: args.raw_kl,
        seed: args.seed,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        data: args.data.describe(
            &args.datasets,
            serde_json::json!({
                "model": absolute(&model_dir),
                "unsupervised_corpus": args.unsupervised_corpus.as_deref().map(absolute),
                "unsupervised_docs": args.unsupervised_docs,
                "teachers": args.teachers.iter().map(|t| absolute(t)).collect::<Vec<_>>(),
                "markers": args.markers,
                "query_augmentation": args.query_augmentation,
                "init_head": args.init_head.as_deref().map(absolute),
                "start": args.start,
            }),
        ),
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let resume = if args.resume {
        let st = train::read_checkpoint(&args.out)?
            .with_context(|| format!("--resume: {} holds no checkpoint", args.out.display()))?;
        train::check_resumable(&args.out, &st, &cfg)?;
        Some(st)
    } else {
        if train::read_checkpoint(&args.out)?.is_some() {
            bail!(
                "{} holds a training run already: continue it with --resume, or pick another --out",
                args.out.display()
            );
        }
        None
    };
    // The settings the head trains (and will encode) with.
    let mut settings: ColbertSettings = encoder.settings().clone();
    if args.markers {
        settings.query_marker = Some("[unused0]".into());
        settings.doc_marker = Some("[unused1]".into());
    }
    if args.query_augmentation {
        settings.query_augmentation = true;
    }
    let encoder = encoder.with_settings(settings.clone())?;

    // 1. Data, checked before anything runs.
    let mut data = Vec::new();
    for d in &args.datasets {
        data.push(read_dataset(
            d,
            &args.data.train_split,
            &args.data.dev_split,
            true,
        )?);
    }
    let teachers: Vec<Run> = args
        .teachers
        .iter()
        .map(|p| Run::read(p).with_context(|| format!("--teacher {}", p.display())))
        .collect::<Result<_>>()?;

    // 2–3. States, mining, pools.
    let full = args.mode == Mode::Full;
    let (mut sources, devs) = prepare(
        &encoder,
        &data,
        &Prep {
            model: &args.model,
            model_dir: &model_dir,
            full,
            data: &args.data,
            teachers: &teachers,
        },
    )?;
    let (zs_data, zs_devs) =
        robust::zero_shot_devs(&encoder, &args.zero_shot, &args.data.dev_split, full, &data)?;
    let zero_shot: HashSet<String> = zs_data.iter().map(|d| d.name.clone()).collect();
    let mut devs = devs;
    devs.extend(zs_devs);
    if let Some(dump) = &args.unsupervised_corpus {
        let texts = read_texts(dump, &CorpusOptions::default(), args.unsupervised_docs)
            .with_context(|| format!("--unsupervised-corpus {}", dump.display()))?
            .texts;
        let pairs = crops(&texts, args.seed);
        ensure!(
            !pairs.is_empty(),
            "--unsupervised-corpus {}: no document has the 8 words two crops need",
            dump.display()
        );
        let ids: Vec<String> = (0..pairs.len()).map(|i| format!("crop{i}")).collect();
        let qa: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
        let db: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
        let label = format!(
            "unsup-{}",
            dump.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let queries = side(&encoder, full, &label, &ids, &qa, TextKind::Query)?;
        let docs = side(&encoder, full, &label, &ids, &db, TextKind::Document)?;
        let examples = (0..pairs.len())
            .map(|i| Example {
                query: i,
                positives: vec![i],
                ..Example::default()
            })
            .collect();
        eprintln!("{label}: {} self-supervised pairs", pairs.len());
        sources.push(Source {
            name: label,
            weight: 1.0,
            queries,
            docs,
            examples,
        });
    }
    eprintln!(
        "training {} ({} parameters) for {} steps on {}",
        train::describe(&spec),
        tessera_training::heads::blocks::parameter_count(&spec),
        cfg.steps,
        sources
            .iter()
            .map(|s| format!("{} ({} queries)", s.name, s.examples.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 4. Train.
    let device = encoder.device();
    let mut full_model = None;
    if full {
        let mut m = ColbertModel::load(&model_dir, device)?;
        m.vs.unfreeze();
        // bf16 autocast on CUDA; f32 on CPU, where emulated bf16 is slower.
        if device.is_cuda() {
            m.bert.set_training_bf16(true);
        }
        full_model = Some(m);
    }
    let backbone = full_model.as_ref().map(|m| {
        let mut variables: Vec<(String, tch_tensor::Tensor)> =
            m.vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        Backbone {
            bert: &m.bert,
            variables,
            tokenizer: encoder.tokenizer(),
        }
    });
    let mut head = tessera_training::heads::blocks::init(&spec, device, args.seed as i64);
    // Fitted on resume too: L2-SP pulls towards this start (the checkpoint
    // then replaces the weights).
    if args.start == "pca" {
        let cached: Vec<&tessera_training::states::StateCache> = sources
            .iter()
            .filter_map(|s| match &s.docs {
                Texts::Cached(c) => Some(c.as_ref()),
                Texts::Tokens(_) => None,
            })
            .collect();
        ensure!(
            !cached.is_empty(),
            "--start pca fits the backbone's states: frozen mode only"
        );
        let p = robust::principal_projection(&cached, spec.out_dim)?;
        tessera_training::heads::start::start_at_projection(&spec, &mut head, &p)
            .map_err(|m| anyhow::anyhow!("--start pca: {m}"))?;
    }
    if let Some(mut tensors) = init {
        for (name, shape) in tessera_training::heads::blocks::parameter_shapes(&spec) {
            let t = tensors
                .remove(&name)
                .with_context(|| format!("--init-head: head.safetensors lacks tensor {name}"))?;
            ensure!(
                t.size() == shape,
                "--init-head: tensor {name} has shape {:?}, expected {shape:?}",
                t.size()
            );
            head.insert(name, t.to_kind(tch_tensor::Kind::Float).to_device(device));
        }
    }
    let start = (args.l2_sp > 0.0).then(|| {
        head.iter()
            .map(|(n, t)| (n.clone(), t.detach().copy()))
            .collect::<HashMap<_, _>>()
    });
    for t in head.values_mut() {
        *t = t.set_requires_grad(true);
    }
    let trainee = Trainee {
        spec: spec.clone(),
        head,
        start,
        backbone,
        device,
    };
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let backbone_ref = tessera_training::checkpoint::backbone_dir(&absolute(&model_dir))?;
    let keep_validated = matches!(select, Selection::Robust { .. });
    let mut validate = |t: &Trainee<'_>, step: usize| -> tessera_training::Result<Option<DevLog>> {
        if devs.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let mut per = Vec::new();
        for (dev, qrels) in &devs {
            let of = if zero_shot.contains(&dev.name) {
                &zs_data
            } else {
                &data
            };
            let (ndcg, recall) = pool_metrics(of, &dev.name, &dev.items, score_dev(t, dev), qrels);
            per.push((dev.name.clone(), ndcg, recall));
        }
        if keep_validated {
            write_model(
                &robust::validated_dir(&out, step),
                t,
                &settings,
                &backbone_ref,
                hidden,
            )?;
        }
        let mean_of = |zs: bool| {
            let v: Vec<f64> = per
                .iter()
                .filter(|p| zero_shot.contains(&p.0) == zs)
                .map(|p| p.1)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let (in_domain, zs_mean) = (mean_of(false), mean_of(true));
        Ok(Some(DevLog {
            step: 0,
            ndcg10: in_domain.or(zs_mean).unwrap_or(0.0),
            in_domain,
            zero_shot: zs_mean,
            per_source: per,
            seconds: t0.elapsed().as_secs_f64(),
        }))
    };
    let pb = progress::bar(Some(cfg.steps as u64), "steps");
    pb.set_prefix(format!("training {}", train::describe(&spec)));
    if let Some(r) = &resume {
        pb.set_position(r.step as u64);
    }
    let mut last_dev = String::from("-");
    let mut on_step = |s: &train::StepLog, d: Option<&DevLog>| {
        if let Some(d) = d {
            last_dev = format!("{:.4}", d.ndcg10);
            tracing::info!(step = s.step, ndcg10 = d.ndcg10, "dev");
            eprintln!(
                "step {}: loss {:.4}, dev nDCG@10 {:.4}{} ({})",
                s.step,
                s.loss,
                d.ndcg10,
                d.zero_shot
                    .map(|z| format!(", zero-shot {z:.4}"))
                    .unwrap_or_default(),
                d.per_source
                    .iter()
                    .map(|p| format!("{} {:.4}/R@100 {:.4}", p.0, p.1, p.2))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        pb.set_message(format!("loss {:.4} dev {last_dev}", s.loss));
        pb.inc(1);
    };
    let mut on_best = |t: &Trainee<'_>, _d: Option<&DevLog>| -> tessera_training::Result<()> {
        write_model(&out, t, &settings, &backbone_ref, hidden)
    };
    let summary = train::train(
        &cfg,
        &sources,
        trainee,
        &out,
        resume,
        train::Hooks {
            validate: &mut validate,
            on_step: &mut on_step,
            on_best: &mut on_best,
        },
    )?;
    pb.finish_and_clear();
    // The robust rule looks back over every validation: its pick replaces
    // the in-domain best written during training.
    let kept = match select.choose(&summary.dev) {
        Some(i) if keep_validated => {
            let d = summary.dev[i].clone();
            robust::restore_validated(&out, d.step)?;
            Some(d)
        }
        _ => summary.best.clone(),
    };

    // 5. Record and draw.
    let record = serde_json::json!({
        "tessera": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "config": cfg,
        "head": train::describe(&spec),
        "parameters": summary.parameters,
        "settings": settings,
        "datasets": data.iter().map(|d| d.dir.display().to_string()).collect::<Vec<_>>(),
        "unsupervised_corpus": args.unsupervised_corpus,
        "best": kept,
        "selection": select,
        "zero_shot": zs_data.iter().map(|d| d.dir.display().to_string()).collect::<Vec<_>>(),
        "final_dev": summary.dev.last(),
        "train_seconds": summary.train_seconds,
        "steps_per_s": summary.steps.len() as f64 / summary.train_seconds.max(1e-9),
        "pairs_per_s": summary.pairs_per_s,
        "total_seconds": t_all.elapsed().as_secs_f64(),
        "peak_rss_mib": peak_rss_mib(),
    });
    let rp = out.join("training.json");
    std::fs::write(&rp, serde_json::to_vec_pretty(&record)?)
        .with_context(|| rp.display().to_string())?;
    draw_curves(&out, &summary);
    match &kept {
        Some(b) => eprintln!(
            "{} dev nDCG@10 {:.4}{} at step {} ({}); model written to {}",
            match select {
                Selection::InDomain => "best",
                Selection::Robust { .. } => "kept by the robust rule:",
            },
            b.ndcg10,
            b.zero_shot
                .map(|z| format!(", zero-shot {z:.4}"))
                .unwrap_or_default(),
            b.step,
            b.per_source
                .iter()
                .map(|p| format!("{} {:.4}", p.0, p.1))
                .collect::<Vec<_>>()
                .join(", "),
            out.display()
        ),
        None => eprintln!("model written to {}", out.display()),
    }
    Ok(())
}

use tessera_training::tch as tch_tensor;

/// nDCG@10 and Recall@100 of scored dev pools (positions of dataset
/// `name`'s queries and documents) against `qrels`.
pub(crate) fn pool_metrics(
    data: &[DatasetData],
    name: &str,
    items: &[(usize, Vec<usize>)],
    scored: Vec<Vec<(usize, f32)>>,
    qrels: &Qrels,
) -> (f64, f64) {
    let ids = doc_ids_of(data, name);
    let qids = query_ids_of(data, name);
    let mut run = Run::default();
    for ((q, _), hits) in items.iter().zip(scored) {
        run.results.insert(
            qids[*q].clone(),
            hits.into_iter()
                .map(|(d, s)| (ids[d].clone(), f64::from(s)))
                .collect(),
        );
    }
    let e = evaluate(
        qrels,
        &run,
        &[Measure::Ndcg(10), Measure::Recall(100)],
        true,
    );
    (e.mean[0], e.mean[1])
}

fn doc_ids_of<'a>(data: &'a [DatasetData], name: &str) -> &'a [String] {
    &data
        .iter()
        .find(|d| d.name == name)
        .expect("dev sets come from datasets")
        .doc_ids
}

fn query_ids_of(data: &[DatasetData], name: &str) -> Vec<String> {
    data.iter()
        .find(|d| d.name == name)
        .expect("dev sets come from datasets")
        .queries
        .iter()
        .map(|q| q.id.clone())
        .collect()
}

/// Writes the model folder: head files, tessera.json (settings and the
/// backbone: a reference in frozen mode, the fine-tuned weights in full
/// mode, with config.json and tokenizer.json copied beside them).
fn write_model(
    out: &Path,
    t: &Trainee<'_>,
    settings: &ColbertSettings,
    backbone: &Path,
    hidden: i64,
) -> tessera_training::Result<()> {
    use tessera_training::TrainingError;
    let io = |p: &Path, e| TrainingError::Io {
        path: p.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let params: HashMap<String, tch_tensor::Tensor> = t.head_tensors().into_iter().collect();
    let head = ProjectionHead::from_spec(t.spec.clone(), params, out)?;
    head.save_tessera(out, hidden)?;
    let mut own = serde_json::json!({ "colbert": settings });
    match &t.backbone {
        None => own["backbone"] = serde_json::json!(backbone),
        Some(bb) => {
            let named: Vec<(String, tch_tensor::Tensor)> = bb
                .variables
                .iter()
                .map(|(n, v)| (n.clone(), v.detach().to_device(tch_tensor::Device::Cpu)))
                .collect();
            tch_tensor::Tensor::write_safetensors(&named, out.join("model.safetensors"))?;
            for f in ["config.json", "tokenizer.json"] {
                std::fs::copy(backbone.join(f), out.join(f)).map_err(|e| io(&out.join(f), e))?;
            }
        }
    }
    let p = out.join("tessera.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&own).expect("json")).map_err(|e| io(&p, e))
}

fn draw_curves(out: &Path, s: &train::Summary) {
    let loss: Vec<(f64, f64)> = s.steps.iter().map(|l| (l.step as f64, l.loss)).collect();
    let mut curves = vec![(
        "loss",
        "training loss",
        "loss",
        vec![
            plot::Series {
                name: "loss".into(),
                points: loss.clone(),
            },
            plot::Series {
                name: "smoothed (EMA 0.1)".into(),
                points: plot::smooth(&loss, 0.1),
            },
        ],
    )];
    if !s.dev.is_empty() {
        let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for d in &s.dev {
            by.entry("mean".into())
                .or_default()
                .push((d.step as f64, d.ndcg10));
            for (n, v, _) in &d.per_source {
                by.entry(n.clone()).or_default().push((d.step as f64, *v));
            }
        }
        curves.push((
            "dev",
            "dev nDCG@10 (exact MaxSim over the candidate pools)",
            "nDCG@10",
            by.into_iter()
                .map(|(name, points)| plot::Series { name, points })
                .collect(),
        ));
    }
    for (stem, title, y, series) in curves {
        if let Err(e) = plot::line_chart(&out.join(stem), title, "step", y, &series) {
            eprintln!("warning: curves not drawn: {e}");
            return;
        }
    }
}

/// Peak resident memory of this process (Linux), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn summarize(args: SummarizeArgs) -> Result<()> {
    struct Row {
        seeds: Vec<u64>,
        /// dataset → (nDCG@10s, R@100s)
        per: BTreeMap<String, (Vec<f64>, Vec<f64>)>,
        mean: Vec<f64>,
        /// In-domain and zero-shot means, where the runs validated on both.
        in_domain: Vec<f64>,
        zero_shot: Vec<f64>,
        secs: Vec<f64>,
        params: i64,
        curves: Vec<Vec<(f64, f64)>>,
    }
    let mut rows: BTreeMap<(String, i64, String), Row> = BTreeMap::new();
    for r in &args.runs {
        let p = r.join("training.json");
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
        )
        .with_context(|| p.display().to_string())?;
        let best = &v["best"];
        ensure!(
            best.is_object(),
            "{}: the run has no dev score",
            p.display()
        );
        let head = if args.by_folder {
            name_without_seed(r)
        } else {
            v["head"].as_str().unwrap_or("?").to_owned()
        };
        let key = (
            head,
            v["config"]["spec"]["out_dim"].as_i64().unwrap_or(0),
            v["config"]["mode"].as_str().unwrap_or("?").to_owned(),
        );
        let row = rows.entry(key).or_insert_with(|| Row {
            seeds: Vec::new(),
            per: BTreeMap::new(),
            mean: Vec::new(),
            in_domain: Vec::new(),
            zero_shot: Vec::new(),
            secs: Vec::new(),
            params: v["parameters"].as_i64().unwrap_or(0),
            curves: Vec::new(),
        });
        row.seeds.push(v["config"]["seed"].as_u64().unwrap_or(0));
        row.mean.push(best["ndcg10"].as_f64().unwrap_or(f64::NAN));
        if let (Some(i), Some(z)) = (best["in_domain"].as_f64(), best["zero_shot"].as_f64()) {
            row.in_domain.push(i);
            row.zero_shot.push(z);
        }
        row.secs.push(v["train_seconds"].as_f64().unwrap_or(0.0));
        for ps in best["per_source"].as_array().into_iter().flatten() {
            let e = row
                .per
                .entry(ps[0].as_str().unwrap_or("?").to_owned())
                .or_default();
            e.0.push(ps[1].as_f64().unwrap_or(f64::NAN));
            e.1.push(ps[2].as_f64().unwrap_or(f64::NAN));
        }
        let metrics = std::fs::read_to_string(r.join("metrics.jsonl")).unwrap_or_default();
        let curve: Vec<(f64, f64)> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["type"] == "dev")
            .map(|m| {
                (
                    m["dev"]["step"].as_f64().unwrap_or(0.0),
                    m["dev"]["ndcg10"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        row.curves.push(curve);
    }
    let datasets: Vec<String> = rows
        .values()
        .flat_map(|r| r.per.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let pm = |v: &[f64]| {
        let (m, s) = mean_std(v);
        format!("{m:.4} ± {s:.4}")
    };
    let split = rows.values().any(|r| !r.zero_shot.is_empty());
    let mut head = format!(
        "| {} | dim | mode | seeds |",
        if args.by_folder { "run" } else { "head" }
    );
    let mut rule = String::from("|---|---|---|---|");
    for d in &datasets {
        head += &format!(" {d} nDCG@10 | {d} R@100 |");
        rule += "---|---|";
    }
    if split {
        head += " in-domain nDCG@10 | zero-shot nDCG@10 |";
        rule += "---|---|";
    } else {
        head += " mean nDCG@10 |";
        rule += "---|";
    }
    head += " train s | parameters |";
    rule += "---|---|";
    println!("{head}\n{rule}");
    for ((name, dim, mode), r) in &rows {
        let mut line = format!("| {name} | {dim} | {mode} | {} |", r.seeds.len());
        for d in &datasets {
            match r.per.get(d) {
                Some((n, rc)) => line += &format!(" {} | {} |", pm(n), pm(rc)),
                None => line += " – | – |",
            }
        }
        if split {
            let cell = |v: &[f64]| {
                if v.is_empty() {
                    "–".to_owned()
                } else {
                    pm(v)
                }
            };
            line += &format!(" {} | {} |", cell(&r.in_domain), cell(&r.zero_shot));
        } else {
            line += &format!(" {} |", pm(&r.mean));
        }
        line += &format!(" {:.0} | {} |", mean_std(&r.secs).0, r.params);
        println!("{line}");
    }
    if let Some(stem) = &args.plot {
        let series: Vec<plot::Series> = rows
            .iter()
            .filter(|(_, r)| r.curves.iter().all(|c| c.len() > 1))
            .map(|((name, dim, mode), r)| {
                let n = r.curves.iter().map(Vec::len).min().unwrap_or(0);
                let points = (0..n)
                    .map(|i| {
                        let ys: Vec<f64> = r.curves.iter().map(|c| c[i].1).collect();
                        (r.curves[0][i].0, mean_std(&ys).0)
                    })
                    .collect();
                let m = if mode == "full" { " full" } else { "" };
                plot::Series {
                    name: format!("{name} @{dim}{m}"),
                    points,
                }
            })
            .collect();
        plot::line_chart(
            stem,
            "dev nDCG@10 (mean of datasets, mean over seeds)",
            "step",
            "nDCG@10",
            &series,
        )?;
        eprintln!("curves: {}.png, {}.svg", stem.display(), stem.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> DatasetData {
        let doc_texts: Vec<String> = vec![
            "Tides follow the moon and the sun over the course of a lunar day".into(),
            "too short".into(),
            "coral reefs bleach when the water warms for weeks on end".into(),
        ];
        let doc_titles = vec!["Tides".into(), String::new(), "coral reefs".into()];
        DatasetData {
            name: "toy".into(),
            dir: PathBuf::from("toy"),
            doc_ids: vec!["d0".into(), "d1".into(), "d2".into()],
            doc_texts,
            doc_titles,
            queries: vec![Query {
                id: "pseudo-0".into(),
                text: "a real query whose id looks like a pseudo one".into(),
            }],
            train: Qrels {
                judgements: BTreeMap::from([(
                    "pseudo-0".to_string(),
                    BTreeMap::from([("d0".to_string(), 1)]),
                )]),
            },
            dev: None,
        }
    }

    #[test]
    fn pseudo_queries_are_spans_of_the_document_they_judge() {
        let mut d = dataset();
        assert_eq!(add_pseudo_queries(&mut d, 7, PseudoFrom::Spans, 3), 7);
        assert_eq!(d.queries.len(), 8);
        // The dataset's own query and judgement are untouched.
        assert_eq!(
            d.queries[0].text,
            "a real query whose id looks like a pseudo one"
        );
        assert_eq!(
            d.train.judgements["pseudo-0"],
            BTreeMap::from([("d0".into(), 1)])
        );
        let ids: HashSet<&str> = d.queries.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids.len(), 8, "ids are unique");
        let mut docs_used = HashSet::new();
        for q in &d.queries[1..] {
            let judged = &d.train.judgements[&q.id];
            assert_eq!(judged.len(), 1);
            let (doc, &rel) = judged.iter().next().unwrap();
            assert_eq!(rel, 1);
            assert_ne!(doc, "d1", "a document under 4 words gives no query");
            let text = &d.doc_texts[d.doc_ids.iter().position(|x| x == doc).unwrap()];
            let words = q.text.split_whitespace().count();
            assert!(
                (PSEUDO_WORDS.0..=PSEUDO_WORDS.1).contains(&words),
                "{}",
                q.text
            );
            assert!(
                text.contains(&q.text),
                "{:?} is not a span of {doc}",
                q.text
            );
            docs_used.insert(doc.clone());
        }
        assert_eq!(docs_used.len(), 2, "documents are cycled through");
        // The same seed draws the same queries.
        let mut again = dataset();
        add_pseudo_queries(&mut again, 7, PseudoFrom::Spans, 3);
        let texts = |d: &DatasetData| d.queries.iter().map(|q| q.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&d), texts(&again));
    }

    #[test]
    fn title_pseudo_queries_take_each_title_of_two_words_once() {
        let mut d = dataset();
        // One title has two words, one one word, one none: one query.
        assert_eq!(add_pseudo_queries(&mut d, 5, PseudoFrom::Titles, 1), 1);
        let q = d.queries.last().unwrap();
        assert_eq!(q.text, "coral reefs");
        assert_eq!(
            d.train.judgements[&q.id],
            BTreeMap::from([("d2".into(), 1)])
        );
    }

    #[test]
    fn no_pseudo_query_comes_from_documents_without_four_words() {
        let mut d = dataset();
        d.doc_texts = vec!["one two three".into(), "a b".into(), String::new()];
        assert_eq!(add_pseudo_queries(&mut d, 5, PseudoFrom::Spans, 1), 0);
        assert_eq!(d.queries.len(), 1);
    }
}
