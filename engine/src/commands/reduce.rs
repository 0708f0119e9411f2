//! Dimension reductions: `tessera train reduce` (fit PCA or train an
//! orthogonal Matryoshka reduction on a model's token vectors),
//! `tessera reduce plan` (measure every (dim, codec) pair that fits a byte
//! budget on a dev split and recommend one), `tessera reduce summarize`
//! (tables and plots of runs and plans, in [`summarize`]), and the
//! `--reduction DIR --dim R` options of `index build`, `search`, `serve`
//! and `eval`.
//!
//! A reduction trains on vectors, not text: the backbone states of the
//! training and dev texts are the cached ones of `tessera train heads`
//! (computed once per dataset and model), the model's head turns them into
//! its `k`-dim vectors once per run, and every step and validation works on
//! those.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use tessera_eval::beir::Dataset;
use tessera_eval::stats::percentile;
use tessera_eval::{evaluate, Measure, Run};
use tessera_index::{BuildOptions, CodecKind, Index, SearchParams};
use tessera_training::reduce::train::{
    self as rtrain, DimScore, ReduceConfig, ReduceDev, ReduceHooks, VectorDev, VectorSource,
};
use tessera_training::reduce::{check_dims, pca, Centring, Covariance, Method, Reduction};
use tessera_training::tch::{Device, Tensor};
use tessera_training::train::score::{project_by, Projected};
use tessera_training::train::{loss, plot, Texts};

use crate::commands::train::{
    add_pseudo_queries, peak_rss_mib, pool_metrics, prepare, read_dataset, DataArgs, Prep,
    PseudoFrom, ScheduleArgs,
};
use crate::model::{absolute, ModelArgs};
use crate::progress;

mod summarize;
pub use summarize::SummarizeArgs;

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
    /// The reduction and `r`, checked against vectors of `model_dim` dims.
    pub fn load(&self, model_dim: Option<usize>) -> Result<Option<(Reduction, usize)>> {
        let (Some(dir), Some(r)) = (&self.reduction, self.reduced_dim) else {
            return Ok(None);
        };
        let red = Reduction::load(dir).with_context(|| format!("--reduction {}", dir.display()))?;
        if let Some(k) = model_dim {
            ensure!(
                red.in_dim() == k,
                "--reduction {}: it reduces {}-dim vectors, the model makes {k}-dim ones",
                dir.display(),
                red.in_dim()
            );
        }
        red.check_r(r)?;
        Ok(Some((red, r)))
    }

    /// Checks that `index` was built with this reduction (when one is given).
    pub fn check_index(&self, index: &Index, index_dir: &Path) -> Result<()> {
        let Some(dir) = &self.reduction else {
            return Ok(());
        };
        let Some((red, r)) = self.load(Some(index.query_dim()))? else {
            return Ok(());
        };
        let recorded = &index.manifest().info["reduction"];
        ensure!(
            !recorded.is_null(),
            "--reduction {}: index {} was built without a reduction ({}-dim vectors)",
            dir.display(),
            index_dir.display(),
            index.dim()
        );
        let same = recorded["fingerprint"].as_str() == Some(red.fingerprint().as_str())
            && recorded["dim"].as_u64() == Some(r as u64);
        ensure!(
            same,
            "--reduction {} --dim {r}: index {} was built with another reduction ({} {} at dim {}, \
             from {}); search it without --reduction (it applies its own) or rebuild it",
            dir.display(),
            index_dir.display(),
            recorded["method"].as_str().unwrap_or("?"),
            recorded["fingerprint"].as_str().unwrap_or("?"),
            recorded["dim"],
            recorded["dir"].as_str().unwrap_or("?"),
        );
        Ok(())
    }
}

/// What an index manifest records of its reduction.
pub fn reduction_info(red: &Reduction, r: usize) -> serde_json::Value {
    serde_json::json!({
        "dir": red.dir.as_deref().map(absolute),
        "method": red.meta.method,
        "in_dim": red.in_dim(),
        "dim": r,
        "dims": red.meta.dims,
        "fingerprint": red.fingerprint(),
        "centring": red.meta.centring,
    })
}

/// Build options reducing to `r` with `red`.
pub fn apply_to_options(opts: &mut BuildOptions, red: &Reduction, r: usize) -> Result<()> {
    opts.reduction = Some(red.to_index(r)?);
    let mut info = match std::mem::take(&mut opts.info) {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    info.insert("reduction".into(), reduction_info(red, r));
    opts.info = serde_json::Value::Object(info);
    Ok(())
}

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse()
}

/// Fit or train a dimension reduction of a model's token vectors.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera train reduce --dataset path/to/beir/scifact --dataset path/to/beir/nfcorpus \\\n    \
      --dims 16,32,48,64,96 --out reductions/orthogonal\n  \
    tessera train reduce --dataset path/to/beir/scifact --method pca --dims 16,32,64 --out reductions/pca\n  \
    tessera train reduce --dataset path/to/beir/scifact --method pca --centre-queries 0 --centre-documents 0.5 \\\n    \
      --out reductions/pca-centred\n  \
    tessera train reduce --dataset my-beir-corpus-without-train-split --out reductions/mine\n  \
    tessera index build --input corpus.jsonl --out small.idx --reduction reductions/orthogonal --dim 32\n\n\
    orthogonal (the default) starts from PCA and trains U = cayley(X) with a Matryoshka strategy:\n\
    each step one dim of --dims, distilling the full-dimension MaxSim distribution over each\n\
    query's candidates, plus the contrastive loss on the labels. One reduction serves every dim\n\
    of its set. linear trains U itself the same way (no orthogonality): an upper-bound diagnostic\n\
    for the rotation. --pseudo-queries adds unlabelled queries cut from each dataset's documents\n\
    (the only ones where it has no train split). The training defaults (200 steps of 16 queries\n\
    with 16 mined negatives, lr 3e-3, distillation temperature 2, contrastive weight 1, 5,000\n\
    pseudo-queries per dataset) are the best recipe of docs/experiments/reductions.md.\n\
    --centre-queries/--centre-documents set how much of the mean each side subtracts (1 and 1:\n\
    the same (x − μ)·U for both); PCA with 0 and 0.5 comes within 0.2–0.6 points of the trained\n\
    rotation at 32 dims on the experiment's dev sets, without training.\n\
    The folder holds reduction.json + reduction.safetensors, metrics.jsonl, dev.png/svg (a curve\n\
    per dim) and a checkpoint (--resume continues an interrupted run).")]
pub struct TrainReduceArgs {
    /// A BEIR dataset folder (repeat for several): its train split trains,
    /// its dev split validates.
    #[arg(long = "dataset", value_name = "DIR", required = true)]
    pub datasets: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// orthogonal (PCA-initialised, trained), pca (fitted only), truncate,
    /// or linear (a free matrix trained like orthogonal, not orthogonal: a
    /// diagnostic of what the rotation's constraint costs).
    #[arg(long, default_value = "orthogonal", value_parser = parse_method)]
    pub method: Method,
    /// The nested output sizes, increasing, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,32,48,64,96",
        value_name = "R,.."
    )]
    pub dims: Vec<usize>,
    /// Document tokens the PCA covariance is computed from (evenly strided
    /// over the training corpora; 0: all).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub pca_tokens: usize,
    /// Optimiser steps (orthogonal and linear; pca and truncate only fit).
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Queries per step (each with --positives of its judged documents,
    /// --negatives mined negatives, and the other queries' documents).
    #[arg(long, default_value_t = 16)]
    pub batch_queries: usize,
    /// Mined hard negatives per query per step.
    #[arg(long, default_value_t = 16)]
    pub negatives: usize,
    /// Judged positives per query per step (at most): each is a row of the
    /// contrastive term (the query's other positives left out of its
    /// softmax), and each joins the candidates the distillation ranks.
    #[arg(long, default_value_t = 1)]
    pub positives: usize,
    /// Learning rate (AdamW, no weight decay) of X and the mean.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[command(flatten)]
    pub sched: ScheduleArgs,
    /// Temperature of the teacher and student softmax over candidates.
    #[arg(long, default_value_t = 2.0)]
    pub distill_temperature: f64,
    /// Weight of the contrastive loss on the labels (0: distillation only).
    #[arg(long, default_value_t = 1.0)]
    pub contrastive_weight: f64,
    /// Temperature of the contrastive loss.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed of the batches and of the size drawn at each step (pseudo-queries
    /// are drawn with one seed whatever this is).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Validate every size on the dev pools every N steps (0: only at the
    /// end); the best mean over the sizes is kept.
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue the run in --out from its checkpoint (refused if the
    /// settings or data differ, but for --steps, --warmup, --eval-every and
    /// --checkpoint-every).
    #[arg(long)]
    pub resume: bool,
    /// Parametrise U = U_pca · cayley(X) from X = 0 (well conditioned at
    /// the start) instead of X = cayley⁻¹(U_pca).
    #[arg(long)]
    pub relative: bool,
    /// Unlabelled training queries added per dataset, drawn from its own
    /// documents (a span of 4–16 words each; the same N for every --seed):
    /// mined and distilled on like the labelled ones, their document
    /// counting as their positive for the contrastive term. 0: none.
    /// Orthogonal and linear only (pca and truncate do not train).
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub pseudo_queries: usize,
    /// What pseudo-queries are cut from: spans (4–16 words of a document)
    /// or titles (each document title of 2 words or more, once; at most
    /// --pseudo-queries of them).
    #[arg(long, value_enum, default_value = "spans")]
    pub pseudo_from: PseudoFrom,
    /// The fraction of the mean μ that query vectors subtract before
    /// projecting (1: the same (x − μ)·U as documents). 0 keeps queries
    /// uncentred: at full width their MaxSim ranking is then untouched.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub centre_queries: f32,
    /// The fraction of μ that document vectors subtract before projecting.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub centre_documents: f32,
    /// The reduction folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Pseudo-queries are drawn with one seed whatever `--seed` is: runs that
/// differ only in their seed share the queries (and their mined negatives).
const PSEUDO_SEED: u64 = 1;

/// The model's vectors of every text of a cached side.
fn project_all(
    encoder: &tessera_training::Encoder,
    texts: &Texts,
    device: Device,
) -> Result<Projected> {
    let Texts::Cached(cache) = texts else {
        bail!("reductions train on cached backbone states");
    };
    let head = &encoder.model().head;
    let items: Vec<usize> = (0..cache.len()).collect();
    Ok(project_by(
        &items,
        64,
        device,
        &|g| cache.batch(g, device),
        &|s| loss::normalise(&head.forward(s)),
    ))
}

pub fn train_reduce(args: TrainReduceArgs) -> Result<()> {
    let t_all = Instant::now();
    let trains = matches!(args.method, Method::Orthogonal | Method::Linear);
    // Fitting (pca, truncate) has no use for queries of its own making.
    let pseudo_queries = if trains { args.pseudo_queries } else { 0 };
    args.data.check(args.datasets.len())?;
    let model_dir = args.model.model_dir()?;
    let encoder = args.model.load_dir(&model_dir)?;
    let k = encoder.dim();
    check_dims(&args.dims, k).map_err(|m| anyhow::anyhow!("--dims: {m}"))?;
    let cfg = ReduceConfig {
        in_dim: k,
        dims: args.dims.clone(),
        steps: if trains { args.steps } else { 0 },
        batch_size: args.batch_queries,
        negatives: args.negatives,
        positives: args.positives,
        lr: args.lr,
        warmup: args.sched.warmup(args.steps),
        decay: args.sched.schedule,
        clip: args.sched.clip,
        distill_temperature: args.distill_temperature,
        contrastive_weight: args.contrastive_weight,
        temperature: args.temperature,
        seed: args.seed,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        relative: args.relative,
        free: args.method == Method::Linear,
        centring: Centring {
            queries: args.centre_queries,
            documents: args.centre_documents,
        },
        data: args.data.describe(
            &args.datasets,
            serde_json::json!({
                "model": absolute(&model_dir),
                "pca_tokens": args.pca_tokens,
                "pseudo_queries": pseudo_queries,
                "pseudo_from": args.pseudo_from,
            }),
        ),
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let resume = if args.resume {
        let st = rtrain::read_checkpoint(&args.out)?
            .with_context(|| format!("--resume: {} holds no checkpoint", args.out.display()))?;
        rtrain::check_resumable(&args.out, &st, &cfg)?;
        Some(st)
    } else {
        ensure!(
            rtrain::read_checkpoint(&args.out)?.is_none(),
            "{} holds a reduction run already: continue it with --resume, or pick another --out",
            args.out.display()
        );
        None
    };
    let mut data = Vec::new();
    for d in &args.datasets {
        let mut dd = read_dataset(
            d,
            &args.data.train_split,
            &args.data.dev_split,
            pseudo_queries == 0,
        )?;
        if pseudo_queries > 0 {
            let n = add_pseudo_queries(&mut dd, pseudo_queries, args.pseudo_from, PSEUDO_SEED);
            ensure!(
                n > 0,
                "--pseudo-queries: no document of {} has {}",
                d.display(),
                args.pseudo_from.requirement()
            );
            eprintln!("{}: {n} pseudo-queries from its documents", dd.name);
        }
        data.push(dd);
    }
    let (sources, devs) = prepare(
        &encoder,
        &data,
        &Prep {
            model: &args.model,
            model_dir: &model_dir,
            full: false,
            data: &args.data,
            teachers: &[],
        },
    )?;
    // The model's k-dim vectors of every text, once.
    let device = encoder.device();
    let t = Instant::now();
    let pb = progress::bar(Some(sources.len() as u64 * 2), "sides");
    pb.set_prefix("model vectors");
    let mut vsources = Vec::new();
    let mut vdevs = Vec::new();
    for s in sources {
        let docs = project_all(&encoder, &s.docs, device)?;
        pb.inc(1);
        let queries = project_all(&encoder, &s.queries, device)?;
        pb.inc(1);
        if let Some((dev, qrels)) = devs.iter().find(|(d, _)| d.name == s.name) {
            vdevs.push((
                VectorDev {
                    name: dev.name.clone(),
                    queries: queries.map(|v| v.shallow_clone()),
                    docs: docs.map(|v| v.shallow_clone()),
                    items: dev.items.clone(),
                },
                qrels.clone(),
            ));
        }
        vsources.push(VectorSource {
            name: s.name,
            weight: s.weight,
            queries,
            docs,
            examples: s.examples,
        });
    }
    pb.finish_and_clear();
    let tokens: i64 = vsources.iter().map(|s| s.docs.vectors.size()[0] - 1).sum();
    eprintln!(
        "{tokens} document token vectors ({k} dims) of {} in {:.1} s",
        vsources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        t.elapsed().as_secs_f64()
    );

    // PCA (the start of orthogonal training) over the document tokens.
    let t = Instant::now();
    let mut cov = Covariance::new(k);
    let stride = if args.pca_tokens > 0 {
        (tokens as usize).div_ceil(args.pca_tokens).max(1)
    } else {
        1
    };
    for s in &vsources {
        let n = s.docs.vectors.size()[0] - 1;
        let rows = s.docs.vectors.narrow(0, 0, n);
        let rows = if stride > 1 {
            let idx = Tensor::arange_start_step(
                0,
                n,
                stride as i64,
                (tessera_training::tch::Kind::Int64, device),
            );
            rows.index_select(0, &idx)
        } else {
            rows
        };
        let n = rows.size()[0];
        let mut at = 0;
        while at < n {
            let len = (n - at).min(65536);
            cov.push(&rows.narrow(0, at, len));
            at += len;
        }
    }
    let mut init = match args.method {
        Method::Truncate => Reduction::truncate(k, args.dims.clone())?,
        _ => pca(&cov, args.dims.clone())?,
    };
    init.meta.centring = cfg.centring;
    let pca_s = t.elapsed().as_secs_f64();
    eprintln!(
        "{} over {} vectors in {pca_s:.1} s",
        if args.method == Method::Truncate {
            "truncation"
        } else {
            "PCA"
        },
        cov.count()
    );

    // The full-dimension score on the same pools: the reference.
    let metrics_of = |red: Option<(&Reduction, usize)>| -> Vec<(String, f64, f64)> {
        vdevs
            .iter()
            .map(|(dev, qrels)| {
                let scored = rtrain::score_dev(dev, red);
                let (n, r) = pool_metrics(&data, &dev.name, &dev.items, scored, qrels);
                (dev.name.clone(), n, r)
            })
            .collect()
    };
    let mean =
        |p: &[(String, f64, f64)]| p.iter().map(|x| x.1).sum::<f64>() / p.len().max(1) as f64;
    let full = metrics_of(None);
    if !full.is_empty() {
        eprintln!(
            "full {k} dims: dev nDCG@10 {:.4} ({})",
            mean(&full),
            full.iter()
                .map(|p| format!("{} {:.4}", p.0, p.1))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let dims = args.dims.clone();
    let mut validate = |red: &Reduction| -> tessera_training::Result<Option<ReduceDev>> {
        if vdevs.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let per_dim: Vec<DimScore> = dims
            .iter()
            .map(|&r| {
                let per = metrics_of(Some((red, r)));
                DimScore {
                    dim: r,
                    ndcg10: mean(&per),
                    per_source: per,
                }
            })
            .collect();
        let ndcg10 = per_dim.iter().map(|d| d.ndcg10).sum::<f64>() / per_dim.len() as f64;
        Ok(Some(ReduceDev {
            step: 0,
            ndcg10,
            per_dim,
            seconds: t0.elapsed().as_secs_f64(),
        }))
    };
    let pb = progress::bar(Some(cfg.steps as u64), "steps");
    pb.set_prefix("training reduction");
    if let Some(r) = &resume {
        pb.set_position(r.step as u64);
    }
    let mut last_dev = String::from("-");
    let mut on_step = |s: &rtrain::ReduceStep, d: Option<&ReduceDev>| {
        if let Some(d) = d {
            last_dev = format!("{:.4}", d.ndcg10);
            tracing::info!(step = s.step, ndcg10 = d.ndcg10, "dev");
            eprintln!("step {}: loss {:.4}, {}", s.step, s.loss, dev_line(d));
        }
        pb.set_message(format!("r {} loss {:.4} dev {last_dev}", s.dim, s.loss));
        pb.inc(1);
    };
    let out = args.out.clone();
    let command: Vec<String> = std::env::args().collect();
    let mut on_best = |red: &Reduction, d: Option<&ReduceDev>| -> tessera_training::Result<()> {
        let mut red = red.clone();
        red.meta.method = args.method;
        red.meta.training = serde_json::json!({
            "command": command,
            "model": model_dir,
            "best": d,
        });
        red.save(&out)
    };
    let summary = rtrain::train(
        &cfg,
        &vsources,
        &init,
        &args.out,
        resume,
        ReduceHooks {
            validate: &mut validate,
            on_step: &mut on_step,
            on_best: &mut on_best,
        },
    )?;
    pb.finish_and_clear();

    // The final record, in reduction.json with the best numbers.
    let mut red = Reduction::load(&args.out)?;
    red.meta.training = serde_json::json!({
        "tessera": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "model": model_dir,
        "datasets": data.iter().map(|d| d.dir.display().to_string()).collect::<Vec<_>>(),
        "config": cfg,
        "pca": init.meta.training,
        "pca_seconds": pca_s,
        "full": {"dim": k, "ndcg10": mean(&full), "per_source": full},
        "initial": summary.initial,
        "best": summary.best,
        "final_dev": summary.dev.last(),
        "inverse_cayley_init": summary.inverse_cayley_init,
        "train_seconds": summary.train_seconds,
        "steps_per_s": summary.steps.len() as f64 / summary.train_seconds.max(1e-9),
        "total_seconds": t_all.elapsed().as_secs_f64(),
        "peak_rss_mib": peak_rss_mib(),
    });
    red.save(&args.out)?;
    draw_dev_curves(&args.out, &summary.dev);
    if let Some(b) = &summary.best {
        eprintln!("best (step {}): {}", b.step, dev_line(b));
    }
    eprintln!("reduction written to {}", args.out.display());
    Ok(())
}

fn dev_line(d: &ReduceDev) -> String {
    d.per_dim
        .iter()
        .map(|p| format!("r{} {:.4}", p.dim, p.ndcg10))
        .collect::<Vec<_>>()
        .join(", ")
}

fn draw_dev_curves(out: &Path, dev: &[ReduceDev]) {
    if dev.len() < 2 {
        return;
    }
    let dims: Vec<usize> = dev[0].per_dim.iter().map(|p| p.dim).collect();
    let series: Vec<plot::Series> = dims
        .iter()
        .map(|&r| plot::Series {
            name: format!("r = {r}"),
            points: dev
                .iter()
                .filter_map(|d| {
                    d.per_dim
                        .iter()
                        .find(|p| p.dim == r)
                        .map(|p| (d.step as f64, p.ndcg10))
                })
                .collect(),
        })
        .collect();
    if let Err(e) = plot::line_chart(
        &out.join("dev"),
        "dev nDCG@10 per dimension",
        "step",
        "nDCG@10 (mean over dev sets)",
        &series,
    ) {
        eprintln!("note: curves not drawn: {e}");
    }
}

/// Choose a (dim, codec) pair for a byte budget by measuring them, and
/// tabulate reduction experiments.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera reduce plan --dataset path/to/beir/scifact --budget 16 --reduction my-reduction\n  \
    tessera reduce summarize runs/pca runs/orthogonal-s1 runs/plan-*.json --plot ndcg-vs-bytes\n  \
    tessera reduce summarize runs/budget16-*.json --frontier speed-frontier\n\n\
    Reductions are made by `tessera train reduce`.")]
pub struct ReduceArgs {
    #[command(subcommand)]
    pub command: ReduceCommand,
}

#[derive(Subcommand, Debug)]
pub enum ReduceCommand {
    Plan(Box<PlanArgs>),
    Summarize(SummarizeArgs),
}

/// Measure dev nDCG@10 and search p50 of every configuration — dim, codec,
/// centroid count, search setting — that fits a budget in bytes per token,
/// from one encoding of the corpus, and recommend one.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera reduce plan --dataset path/to/beir/scifact --budget 16 --reduction reductions/orthogonal\n  \
    tessera reduce plan --dataset path/to/beir/scifact --budget 16 --reduction reductions/orthogonal \\\n    \
      --centroids auto,4096 --probes 32/512,16/256/256,16/256/1/1280 --min-share 0.95\n  \
    tessera reduce plan --dataset path/to/beir/nfcorpus --budget 40 --codecs f16,residual2 --json plan.json\n\n\
    Bytes per token = the codec's bytes at dim r plus the 4-byte centroid id every index stores\n\
    (f16 2r, int8 r + 4, residual-b r·b/8). For each codec the walk goes up the dims (the\n\
    reduction's nested set, and the model's full width) while the pair fits; each pair is built\n\
    once per --centroids value (an index from the one cached encoding: the corpus is encoded once\n\
    per model) and searched with every dev query at each --probes setting (cells per query token,\n\
    probe budget, and optionally the approximate pass's survivors and the exact re-rank budget).\n\
    The full-width f16 index is measured too, at every centroid count and setting: the one built\n\
    and searched with the defaults is the reference. Search p50 is over --rounds interleaved rounds.\n\
    The recommendation is the best nDCG@10 within the budget (ties within 0.002: the faster\n\
    one), or with --min-share S the fastest configuration that keeps S of the reference's\n\
    nDCG@10. The report also gives the full-width index's own speed at the recommendation's\n\
    centroids and search setting, so what the reduction buys is told apart from what a coarser\n\
    quantiser or a narrower search buys; it ends with the build and search options to use.")]
pub struct PlanArgs {
    /// A BEIR dataset folder.
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,
    /// The qrels split measured on.
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Bytes per token the index may spend.
    #[arg(long, value_name = "BYTES")]
    pub budget: f64,
    /// The reduction giving the smaller dims (none: full width only).
    #[arg(long, value_name = "DIR")]
    pub reduction: Option<PathBuf>,
    /// Dims considered (default: the reduction's set and the model's width).
    #[arg(long, value_delimiter = ',', value_name = "R,..")]
    pub dims: Vec<usize>,
    /// Codecs considered.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f16,int8,residual1,residual2,residual4"
    )]
    pub codecs: Vec<String>,
    /// Centroid counts each pair is built with (`index build --centroids`);
    /// auto: the build default, 2^round(log2(16·√tokens)).
    #[arg(long, value_delimiter = ',', default_value = "auto", value_parser = parse_centroids, value_name = "K,..")]
    pub centroids: Vec<CentroidCount>,
    /// Search settings timed on every index, as N_PROBE/PROBE_BUDGET, with
    /// optionally /N_APPROX and /RERANK_BUDGET (`search --n-probe N
    /// --probe-budget B --n-approx A --rerank-budget R`; A and R default to
    /// the search defaults, 1024 and 4096; A = 1 skips the second
    /// approximate pass).
    #[arg(long, value_delimiter = ',', default_value = "32/512", value_parser = parse_probe, value_name = "N/B[/A[/R]],..")]
    pub probes: Vec<Probe>,
    /// Recommend the fastest fitting configuration that keeps at least
    /// this share of the reference's nDCG@10 (e.g. 0.95), instead of the
    /// best nDCG@10.
    #[arg(long, value_name = "SHARE")]
    pub min_share: Option<f64>,
    /// Timing rounds over every index and probe setting, interleaved
    /// (search p50 is over all of them; nDCG@10 is from the first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Results per query when timing search (nDCG@10 needs 10).
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Skip the full-width f16 reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Write the whole table as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the indexes in this folder (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    pub keep_indexes: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--centroids` value: a count, or `None` for the build default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentroidCount(pub Option<usize>);

fn parse_centroids(s: &str) -> Result<CentroidCount, String> {
    let s = s.trim();
    if s == "auto" {
        return Ok(CentroidCount(None));
    }
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(CentroidCount(Some(n))),
        _ => Err(format!(
            "{s:?}: a centroid count is a positive integer or auto"
        )),
    }
}

/// One PLAID search setting: cells per query token (at 8,192 cells), the
/// probe budget in query tokens × cells, the documents the first
/// approximate pass keeps for the second, and the exact re-rank budget in
/// query tokens × documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    pub n_probe: usize,
    pub probe_budget: usize,
    pub n_approx: usize,
    pub rerank_budget: usize,
}

impl Probe {
    /// The search defaults of the index crate.
    pub fn default_search() -> Self {
        let p = SearchParams::default();
        Self {
            n_probe: p.n_probe,
            probe_budget: p.probe_budget,
            n_approx: p.n_approx,
            rerank_budget: p.rerank_budget,
        }
    }

    /// The `search` (and `serve`, `eval`) options that select it.
    pub fn options(&self) -> String {
        format!(
            "--n-probe {} --probe-budget {} --n-approx {} --rerank-budget {}",
            self.n_probe, self.probe_budget, self.n_approx, self.rerank_budget
        )
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = SearchParams::default();
        write!(f, "{}/{}", self.n_probe, self.probe_budget)?;
        if self.n_approx != d.n_approx || self.rerank_budget != d.rerank_budget {
            write!(f, "/{}", self.n_approx)?;
        }
        if self.rerank_budget != d.rerank_budget {
            write!(f, "/{}", self.rerank_budget)?;
        }
        Ok(())
    }
}

fn parse_probe(s: &str) -> Result<Probe, String> {
    let bad = || {
        format!(
            "{s:?}: a search setting is N_PROBE/PROBE_BUDGET[/N_APPROX[/RERANK_BUDGET]], e.g. 32/512 or 16/256/512/768"
        )
    };
    let parts: Vec<usize> = s
        .trim()
        .split('/')
        .map(|x| x.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let d = SearchParams::default();
    let (n_probe, probe_budget, n_approx, rerank_budget) = match parts[..] {
        [a, b] => (a, b, d.n_approx, d.rerank_budget),
        [a, b, c] => (a, b, c, d.rerank_budget),
        [a, b, c, e] => (a, b, c, e),
        _ => return Err(bad()),
    };
    if n_probe == 0 || n_approx == 0 {
        return Err(format!("{s:?}: N_PROBE and N_APPROX must be at least 1"));
    }
    Ok(Probe {
        n_probe,
        probe_budget,
        n_approx,
        rerank_budget,
    })
}

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanRow {
    pub dim: usize,
    pub codec: String,
    /// Centroids of the built index.
    pub centroids: usize,
    /// Built with the default centroid count and searched with the default
    /// probe setting.
    pub default_settings: bool,
    /// The search setting the row was timed with (its four fields at the
    /// row's top level in JSON).
    #[serde(flatten)]
    pub probe: Probe,
    /// Codec bytes + the 4-byte centroid id.
    pub bytes_per_token: f64,
    /// What the built index spends per token (codes, vectors, offsets).
    pub measured_bytes_per_token: f64,
    pub fits: bool,
    /// A full-width f16 row (measured for comparison, not recommended
    /// unless it fits).
    pub reference: bool,
    pub ndcg10: f64,
    /// Of the top k (k = 10 by default: Recall@10).
    pub recall: f64,
    pub search_p50_ms: f64,
    pub index_bytes: u64,
    pub build_s: f64,
}

pub fn run(args: ReduceArgs) -> Result<()> {
    match args.command {
        ReduceCommand::Plan(p) => plan(*p),
        ReduceCommand::Summarize(a) => summarize::summarize(a),
    }
}

/// Nominal bytes per token of `codec` at `dim`, centroid id included.
pub fn bytes_per_token(codec: CodecKind, dim: usize) -> f64 {
    (codec.bytes_per_token(dim) + 4) as f64
}

/// One index the planner builds, and the probe settings it is timed with.
struct PlanBuild {
    dim: usize,
    codec: CodecKind,
    centroids: CentroidCount,
    reference: bool,
    probes: Vec<Probe>,
}

fn plan(args: PlanArgs) -> Result<()> {
    let t_all = Instant::now();
    ensure!(
        args.budget.is_finite() && args.budget > 0.0,
        "--budget must be a positive number of bytes per token, not {}",
        args.budget
    );
    if let Some(s) = args.min_share {
        ensure!(
            s.is_finite() && s > 0.0 && s <= 1.0,
            "--min-share must be in (0, 1], not {s}"
        );
        ensure!(
            !args.no_reference,
            "--min-share is a share of the reference's nDCG@10: it needs the reference (drop --no-reference)"
        );
    }
    let codecs: Vec<CodecKind> = args
        .codecs
        .iter()
        .map(|c| {
            c.parse::<CodecKind>()
                .with_context(|| format!("--codecs {c}"))
        })
        .collect::<Result<_>>()?;
    let centroid_counts = first_of_each(&args.centroids);
    let probes = first_of_each(&args.probes);
    let model_dir = args.model.model_dir()?;
    let encoder = args.model.load_dir(&model_dir)?;
    let k = encoder.dim();
    let red = match &args.reduction {
        Some(d) => {
            let r = Reduction::load(d).with_context(|| format!("--reduction {}", d.display()))?;
            ensure!(
                r.in_dim() == k,
                "--reduction {}: it reduces {}-dim vectors, the model makes {k}-dim ones",
                d.display(),
                r.in_dim()
            );
            Some(r)
        }
        None => None,
    };
    let mut dims: Vec<usize> = if args.dims.is_empty() {
        let mut d = red
            .as_ref()
            .map(|r| r.meta.dims.clone())
            .unwrap_or_default();
        d.push(k);
        d
    } else {
        args.dims.clone()
    };
    dims.sort_unstable();
    dims.dedup();
    for &r in &dims {
        if r == k {
            continue;
        }
        match &red {
            Some(red) => red.check_r(r)?,
            None => bail!("--dims {r}: dims below the model's {k} need --reduction"),
        }
    }
    // The walk: per codec, up the dims while the pair fits.
    let mut pairs: Vec<(usize, CodecKind)> = Vec::new();
    for &c in &codecs {
        for &r in &dims {
            if c.validate(r).is_err() {
                continue;
            }
            if bytes_per_token(c, r) > args.budget {
                break;
            }
            pairs.push((r, c));
        }
    }
    if pairs.is_empty() {
        let smallest = codecs
            .iter()
            .flat_map(|&c| dims.iter().map(move |&r| (bytes_per_token(c, r), c, r)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match smallest {
            Some((b, c, r)) => bail!(
                "no (dim, codec) pair fits {} bytes per token: the smallest is {b} ({c} at dim {r})",
                args.budget
            ),
            None => bail!("no (dim, codec) pair to measure"),
        }
    }
    let mut builds: Vec<PlanBuild> = Vec::new();
    for &(dim, codec) in &pairs {
        for &centroids in &centroid_counts {
            builds.push(PlanBuild {
                dim,
                codec,
                centroids,
                reference: false,
                probes: probes.clone(),
            });
        }
    }
    if !args.no_reference {
        // The full-width f16 index at every centroid count and probe
        // setting, and always with the defaults (the reference).
        let mut counts = centroid_counts.clone();
        if !counts.contains(&CentroidCount(None)) {
            counts.insert(0, CentroidCount(None));
        }
        for centroids in counts {
            if builds
                .iter()
                .any(|b| b.dim == k && b.codec == CodecKind::F16 && b.centroids == centroids)
            {
                continue;
            }
            let mut p = probes.clone();
            if centroids.0.is_none() && !p.contains(&Probe::default_search()) {
                p.insert(0, Probe::default_search());
            }
            builds.push(PlanBuild {
                dim: k,
                codec: CodecKind::F16,
                centroids,
                reference: true,
                probes: p,
            });
        }
    }
    eprintln!(
        "planning {} pairs within {} bytes/token × {} centroid count(s) × {} probe setting(s){}",
        pairs.len(),
        args.budget,
        centroid_counts.len(),
        probes.len(),
        if args.no_reference {
            ""
        } else {
            " (+ the full-width f16 reference)"
        }
    );

    // One encoding of the corpus, one of the queries.
    let dataset = Dataset::open(&args.dataset)?;
    let enc = crate::commands::eval::cached_dataset_encoding(
        &dataset,
        &args.model,
        &model_dir,
        &crate::commands::encode_corpus::RecordArgs::default(),
    )?;
    let mut qrels = dataset.qrels(&args.split)?;
    let queries = dataset.queries(&qrels)?;
    ensure!(
        !queries.is_empty(),
        "{}: no queries of split {:?}",
        args.dataset.display(),
        args.split
    );
    let have: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    qrels.judgements.retain(|q, _| have.contains(q.as_str()));
    let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
    let qvecs: Vec<tessera_index::TokenVectors> = encoder
        .encode_queries(&texts)?
        .items
        .into_iter()
        .map(|i| i.vectors)
        .collect();

    let tmp;
    let work = match &args.keep_indexes {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("a temporary folder for the indexes")?;
            tmp.path().to_owned()
        }
    };
    let search_params = |p: Probe| SearchParams {
        k: args.k.max(10),
        n_probe: p.n_probe,
        probe_budget: p.probe_budget,
        n_approx: p.n_approx,
        rerank_budget: p.rerank_budget,
        ..SearchParams::default()
    };
    // Build every index; search each with every probe setting once (the
    // first timing round, and the nDCG@10).
    let mut rows: Vec<PlanRow> = Vec::new();
    let mut indexes: Vec<Index> = Vec::new();
    // Per row: its index, its probe, and its latencies over the rounds.
    let mut timed: Vec<(usize, Probe, Vec<f64>)> = Vec::new();
    for b in &builds {
        let dir = work.join(format!(
            "r{}-{}-c{}",
            b.dim,
            b.codec,
            b.centroids.0.map_or("auto".into(), |n| n.to_string())
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
        let mut opts = BuildOptions {
            codec: b.codec,
            num_centroids: b.centroids.0,
            ..BuildOptions::default()
        };
        if b.dim < k {
            let red = red
                .as_ref()
                .expect("checked: dims below k need a reduction");
            apply_to_options(&mut opts, red, b.dim)?;
        }
        let t = Instant::now();
        let (stats, _) = crate::commands::index::build_from_vectors(&enc, &dir, opts)?;
        let build_s = t.elapsed().as_secs_f64();
        let index = Index::open(&dir)?;
        for &probe in &b.probes {
            let params = search_params(probe);
            let mut run = Run::default();
            let mut lat = Vec::with_capacity(queries.len() * args.rounds as usize);
            for (q, v) in queries.iter().zip(&qvecs) {
                let t = Instant::now();
                let hits = index.search(v, &params)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                run.results.insert(
                    q.id.clone(),
                    hits.into_iter()
                        .map(|h| (h.id, f64::from(h.score)))
                        .collect(),
                );
            }
            let e = evaluate(
                &qrels,
                &run,
                &[Measure::Ndcg(10), Measure::Recall(args.k.max(10))],
                true,
            );
            let row = PlanRow {
                dim: b.dim,
                codec: b.codec.to_string(),
                centroids: stats.num_centroids,
                default_settings: b.centroids.0.is_none() && probe == Probe::default_search(),
                probe,
                bytes_per_token: bytes_per_token(b.codec, b.dim),
                measured_bytes_per_token: stats.bytes_per_token,
                fits: bytes_per_token(b.codec, b.dim) <= args.budget,
                reference: b.reference,
                ndcg10: e.mean[0],
                recall: e.mean[1],
                search_p50_ms: percentile(&lat, 0.5),
                index_bytes: stats.index_bytes,
                build_s,
            };
            eprintln!(
                "r {:>4} {:<10} {:>6} centroids  probe {:<8} {:>6.1} B/token  nDCG@10 {:.4}  p50 {:.2} ms  {:.1} MiB  built in {:.1} s",
                row.dim,
                row.codec,
                row.centroids,
                probe.to_string(),
                row.bytes_per_token,
                row.ndcg10,
                row.search_p50_ms,
                row.index_bytes as f64 / (1 << 20) as f64,
                row.build_s
            );
            rows.push(row);
            timed.push((indexes.len(), probe, lat));
        }
        indexes.push(index);
    }
    // The other timing rounds, interleaved over every index and setting so
    // that drift of the machine falls on all of them alike.
    for round in 1..args.rounds {
        eprintln!("timing round {} of {}", round + 1, args.rounds);
        for (i, probe, lat) in timed.iter_mut() {
            let params = search_params(*probe);
            for v in &qvecs {
                let t = Instant::now();
                indexes[*i].search(v, &params)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (row, (_, _, lat)) in rows.iter_mut().zip(&timed) {
        row.search_p50_ms = percentile(lat, 0.5);
    }
    drop(indexes);

    let reference = rows
        .iter()
        .position(|r| r.dim == k && r.codec == "f16" && r.default_settings);
    let ref_ndcg = reference.map(|i| rows[i].ndcg10);
    let mut note = None;
    let pick = match (args.min_share, ref_ndcg) {
        (Some(s), Some(f)) => match recommend_fastest(&rows, s * f) {
            Some(i) => Some(i),
            None => {
                note = Some(format!(
                    "no configuration within the budget keeps {:.1} % of the reference's nDCG@10 ({:.4}); the best one instead",
                    100.0 * s,
                    s * f
                ));
                recommend(&rows)
            }
        },
        _ => recommend(&rows),
    };
    // The full-width f16 index at the pick's centroids and probe.
    let matched = pick.and_then(|p| {
        rows.iter().position(|r| {
            r.dim == k
                && r.codec == "f16"
                && r.centroids == rows[p].centroids
                && r.probe == rows[p].probe
        })
    });
    print_plan(
        &rows,
        pick,
        reference.map(|i| &rows[i]),
        matched.map(|i| &rows[i]),
        args.budget,
    );
    if let Some(n) = &note {
        println!("({n})");
    }
    if let Some(p) = pick {
        let r = &rows[p];
        let red_opt = match (&args.reduction, r.dim < k) {
            (Some(d), true) => format!(" --reduction {} --dim {}", d.display(), r.dim),
            _ => String::new(),
        };
        println!(
            "build it:  tessera index build --input CORPUS --out INDEX --codec {} --centroids {}{red_opt}",
            r.codec, r.centroids
        );
        println!(
            "search it: tessera search --index INDEX{red_opt} {} (the same options for eval and serve)",
            r.probe.options()
        );
    }
    let secs = t_all.elapsed().as_secs_f64();
    eprintln!("planned in {secs:.1} s");
    if let Some(p) = &args.json {
        let v = serde_json::json!({
            "dataset": args.dataset, "split": args.split, "budget": args.budget,
            "model": model_dir, "reduction": args.reduction, "rows": rows,
            "min_share": args.min_share, "rounds": args.rounds,
            "recommended": pick.map(|i| &rows[i]),
            "reference": reference.map(|i| &rows[i]),
            "reference_at_recommended_settings": matched.map(|i| &rows[i]),
            "note": note, "seconds": secs,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| p.display().to_string())?;
    }
    Ok(())
}

/// Each value of `xs` once, in the order given (a value repeated anywhere
/// in an option's list is built or timed once).
fn first_of_each<T: PartialEq + Copy>(xs: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(xs.len());
    for &x in xs {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Index of the best fitting row: highest nDCG@10; within 0.002 of it, the
/// fastest.
pub fn recommend(rows: &[PlanRow]) -> Option<usize> {
    let best = rows
        .iter()
        .filter(|r| r.fits)
        .map(|r| r.ndcg10)
        .fold(f64::NEG_INFINITY, f64::max);
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.fits && r.ndcg10 >= best - 0.002)
        .min_by(|a, b| a.1.search_p50_ms.total_cmp(&b.1.search_p50_ms))
        .map(|(i, _)| i)
}

/// Index of the fastest fitting row whose nDCG@10 is at least `floor`.
pub fn recommend_fastest(rows: &[PlanRow], floor: f64) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.fits && r.ndcg10 >= floor)
        .min_by(|a, b| a.1.search_p50_ms.total_cmp(&b.1.search_p50_ms))
        .map(|(i, _)| i)
}

fn print_plan(
    rows: &[PlanRow],
    pick: Option<usize>,
    reference: Option<&PlanRow>,
    matched: Option<&PlanRow>,
    budget: f64,
) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(
        o,
        "| dim | codec | centroids | search | bytes/token | nDCG@10 | % of reference | Recall@k | search p50 ms | speed-up | index MiB | build s |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, r) in rows.iter().enumerate() {
        let pct = reference.map_or("-".into(), |f| {
            format!("{:.1} %", 100.0 * r.ndcg10 / f.ndcg10.max(1e-12))
        });
        let speed = reference.map_or("-".into(), |f| {
            format!("{:.2}×", f.search_p50_ms / r.search_p50_ms.max(1e-9))
        });
        let mark = if Some(i) == pick {
            " **recommended**"
        } else if r.reference && r.default_settings {
            " (reference)"
        } else if !r.fits {
            " (over budget)"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "| {} | {}{mark} | {} | {} | {:.1} | {:.4} | {pct} | {:.4} | {:.2} | {speed} | {:.1} | {:.1} |",
            r.dim,
            r.codec,
            r.centroids,
            r.probe,
            r.bytes_per_token,
            r.ndcg10,
            r.recall,
            r.search_p50_ms,
            r.index_bytes as f64 / (1 << 20) as f64,
            r.build_s
        );
    }
    match pick {
        Some(i) => {
            let r = &rows[i];
            let vs = reference.map_or(String::new(), |f| {
                format!(
                    ": {:.1} % of the reference's nDCG@10 (full-width f16, default build and search), {:.2}× its search speed",
                    100.0 * r.ndcg10 / f.ndcg10.max(1e-12),
                    f.search_p50_ms / r.search_p50_ms.max(1e-9)
                )
            });
            let _ = writeln!(
                o,
                "\nrecommended within {budget} bytes/token: dim {} with {} ({:.1} bytes/token), {} centroids, search {}{vs}",
                r.dim, r.codec, r.bytes_per_token, r.centroids, r.probe
            );
            if let (Some(f), Some(m)) = (reference, matched) {
                let pick_is_full = m.dim == r.dim && m.codec == r.codec;
                if !r.default_settings && !pick_is_full {
                    let _ = writeln!(
                        o,
                        "the full-width f16 index with the same centroids and search settings: {:.1} % of the reference's nDCG@10, {:.2}× its speed — the reduction itself is {:.2}× faster than it",
                        100.0 * m.ndcg10 / f.ndcg10.max(1e-12),
                        f.search_p50_ms / m.search_p50_ms.max(1e-9),
                        m.search_p50_ms / r.search_p50_ms.max(1e-9)
                    );
                }
            }
        }
        None => {
            let _ = writeln!(o, "\nno pair fits {budget} bytes/token");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(dim: usize, codec: &str, ndcg10: f64, p50: f64, fits: bool) -> PlanRow {
        PlanRow {
            dim,
            codec: codec.into(),
            centroids: 4096,
            default_settings: true,
            probe: Probe::default_search(),
            bytes_per_token: 0.0,
            measured_bytes_per_token: 0.0,
            fits,
            reference: !fits,
            ndcg10,
            recall: 0.0,
            search_p50_ms: p50,
            index_bytes: 0,
            build_s: 0.0,
        }
    }

    #[test]
    fn bytes_count_the_codec_and_the_centroid_id() {
        assert_eq!(bytes_per_token(CodecKind::F16, 128), 260.0);
        assert_eq!(
            bytes_per_token(CodecKind::Residual { nbits: 2 }, 384),
            100.0
        );
        assert_eq!(bytes_per_token(CodecKind::Residual { nbits: 1 }, 96), 16.0);
        assert_eq!(bytes_per_token(CodecKind::Int8, 8), 16.0);
    }

    #[test]
    fn the_recommendation_is_the_best_fitting_pair_and_the_faster_of_near_ties() {
        let rows = vec![
            row(32, "residual2", 0.700, 5.0, true),
            row(48, "residual2", 0.7015, 7.0, true),
            row(96, "residual1", 0.690, 4.0, true),
            row(128, "f16", 0.800, 20.0, false),
        ];
        // 0.7015 is best; 0.700 is within 0.002 and faster; the reference
        // does not fit.
        assert_eq!(recommend(&rows), Some(0));
        assert_eq!(recommend(&rows[3..]), None);
    }

    #[test]
    fn with_a_floor_the_recommendation_is_the_fastest_fitting_row_above_it() {
        let rows = vec![
            row(48, "residual2", 0.790, 3.0, true),
            row(64, "residual1", 0.780, 2.0, true),
            row(32, "residual2", 0.700, 1.5, true),
            row(128, "f16", 0.810, 1.0, false),
        ];
        // 95 % of 0.81 = 0.7695: rows 0 and 1 qualify, row 1 is faster; the
        // reference is faster still but over budget.
        assert_eq!(recommend_fastest(&rows, 0.95 * 0.81), Some(1));
        assert_eq!(recommend_fastest(&rows, 0.785), Some(0));
        assert_eq!(recommend_fastest(&rows, 0.80), None);
    }

    #[test]
    fn repeated_option_values_are_measured_once_in_the_order_given() {
        let c = [
            CentroidCount(None),
            CentroidCount(Some(4096)),
            CentroidCount(None),
        ];
        assert_eq!(
            first_of_each(&c),
            vec![CentroidCount(None), CentroidCount(Some(4096))]
        );
        assert_eq!(first_of_each(&[3, 1, 3, 2, 1]), vec![3, 1, 2]);
    }

    #[test]
    fn probe_and_centroid_options_parse_and_name_bad_values() {
        assert_eq!(
            parse_probe("16/256"),
            Ok(Probe {
                n_probe: 16,
                probe_budget: 256,
                n_approx: 1024,
                rerank_budget: 4096
            })
        );
        assert_eq!(
            parse_probe("16/256/512"),
            Ok(Probe {
                n_probe: 16,
                probe_budget: 256,
                n_approx: 512,
                rerank_budget: 4096
            })
        );
        let p = parse_probe("16/256/1024/768").unwrap();
        assert_eq!((p.n_approx, p.rerank_budget), (1024, 768));
        assert_eq!(p.to_string(), "16/256/1024/768");
        assert_eq!(parse_probe("16/256/512").unwrap().to_string(), "16/256/512");
        // The option's default string is the search defaults.
        assert_eq!(parse_probe("32/512"), Ok(Probe::default_search()));
        assert_eq!(Probe::default_search().to_string(), "32/512");
        for bad in [
            "16",
            "16/",
            "a/256",
            "0/256",
            "16/-1",
            "16/256/0",
            "1/2/3/4/5",
            "1/2/3/x",
        ] {
            let e = parse_probe(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(parse_centroids("auto"), Ok(CentroidCount(None)));
        assert_eq!(parse_centroids("4096"), Ok(CentroidCount(Some(4096))));
        for bad in ["0", "-4", "many"] {
            assert!(parse_centroids(bad).unwrap_err().contains(bad));
        }
    }
}
