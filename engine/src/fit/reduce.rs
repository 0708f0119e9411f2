//! Training dimension reductions (`tessera train reduce`): fit PCA or
//! truncation, or train an orthogonal Matryoshka rotation (or a linear map)
//! on a model's token vectors.
//!
//! A reduction trains on vectors, not text: the backbone states of the
//! training and dev texts are the cached ones of head training (computed
//! once per dataset and model), the model's head turns them into its
//! `k`-dim vectors once per run, and every step and validation works on
//! those.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera_model::reduction::{check_dims, Centring, Method, Reduction};
use tessera_model::tch::{Device, Tensor};
use tessera_training::reduce::train::{
    self as rtrain, DimScore, ReduceConfig, ReduceDev, ReduceHooks, VectorDev, VectorSource,
};
use tessera_training::reduce::{pca, Covariance};
use tessera_training::train::score::{project_by, Projected};
use tessera_training::train::{loss, plot, Texts};

use crate::fit::{
    add_pseudo_queries, peak_rss_mib, pool_metrics, prepare, read_dataset, Prep, PseudoFrom,
};
use crate::model::absolute;
use crate::progress;

use crate::error::{bail, ensure, err, Context, EngineError, Result};
use crate::fit::{DataOptions, ScheduleOptions, TrainerOptions};
use crate::model::ModelOptions;

/// What `tessera train reduce` fits or trains, on what, and where the
/// reduction folder goes (each field is the flag of the same name).
#[derive(Debug, Clone)]
pub struct ReduceTrainOptions {
    /// Steps, batches, learning rate, seed, validation and checkpoints.
    pub trainer: TrainerOptions,
    /// A BEIR dataset folder (repeat for several): its train split trains,
    /// its dev split validates.
    pub datasets: Vec<PathBuf>,
    /// The data options the trainers share.
    pub data: DataOptions,
    /// orthogonal (PCA-initialised, trained), pca (fitted only), truncate,
    /// or linear (a free matrix trained like orthogonal, not orthogonal: a
    /// diagnostic of what the rotation's constraint costs).
    pub method: Method,
    /// The nested output sizes, increasing, comma-separated.
    pub dims: Vec<usize>,
    /// Document tokens the PCA covariance is computed from (evenly strided
    /// over the training corpora; 0: all).
    pub pca_tokens: usize,
    /// The learning-rate schedule and clipping.
    pub sched: ScheduleOptions,
    /// Temperature of the teacher and student softmax over candidates.
    pub distill_temperature: f64,
    /// Weight of the contrastive loss on the labels (0: distillation only).
    pub contrastive_weight: f64,
    /// Parametrise U = U_pca · cayley(X) from X = 0 (well conditioned at
    /// the start) instead of X = cayley⁻¹(U_pca).
    pub relative: bool,
    /// Unlabelled training queries added per dataset, drawn from its own
    /// documents (a span of 4–16 words each; the same N for every --seed):
    /// mined and distilled on like the labelled ones, their document
    /// counting as their positive for the contrastive term. 0: none.
    /// Orthogonal and linear only (pca and truncate do not train).
    pub pseudo_queries: usize,
    /// What pseudo-queries are cut from: spans (4–16 words of a document)
    /// or titles (each document title of 2 words or more, once; at most
    /// --pseudo-queries of them).
    pub pseudo_from: PseudoFrom,
    /// The fraction of the mean μ that query vectors subtract before
    /// projecting (1: the same (x − μ)·U as documents). 0 keeps queries
    /// uncentred: at full width their MaxSim ranking is then untouched.
    pub centre_queries: f32,
    /// The fraction of μ that document vectors subtract before projecting.
    pub centre_documents: f32,
    /// The reduction folder to write.
    pub out: PathBuf,
    /// The model and how it runs.
    pub model: ModelOptions,
}

/// Pseudo-queries are drawn with one seed whatever `--seed` is: runs that
/// differ only in their seed share the queries (and their mined negatives).
const PSEUDO_SEED: u64 = 1;

/// The model's vectors of every text of a cached side.
fn project_all(
    encoder: &tessera_model::Encoder,
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

/// Fits (pca, truncate) or trains (orthogonal, linear) a dimension
/// reduction of the model's token vectors as `args` says and writes the
/// reduction folder `args.out` (see the module docs).
pub fn train_reduction(args: &ReduceTrainOptions) -> Result<()> {
    let t_all = Instant::now();
    let trains = matches!(args.method, Method::Orthogonal | Method::Linear);
    // Fitting (pca, truncate) has no use for queries of its own making.
    let pseudo_queries = if trains { args.pseudo_queries } else { 0 };
    args.data.check(args.datasets.len())?;
    let model_dir = args.model.model_dir()?;
    let encoder = args.model.load_dir(&model_dir)?;
    let k = encoder.dim();
    check_dims(&args.dims, k).map_err(|m| err!("--dims: {m}"))?;
    let cfg = ReduceConfig {
        in_dim: k,
        dims: args.dims.clone(),
        steps: if trains { args.trainer.steps } else { 0 },
        batch_size: args.trainer.batch_queries,
        negatives: args.trainer.negatives,
        positives: args.trainer.positives,
        lr: args.trainer.lr,
        warmup: args.sched.warmup(args.trainer.steps),
        decay: args.sched.schedule,
        clip: args.sched.clip,
        distill_temperature: args.distill_temperature,
        contrastive_weight: args.contrastive_weight,
        temperature: args.trainer.temperature,
        seed: args.trainer.seed,
        eval_every: args.trainer.eval_every,
        checkpoint_every: args.trainer.checkpoint_every,
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
    cfg.validate().map_err(EngineError::msg)?;
    let resume = if args.trainer.resume {
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
            progress::note(format!(
                "{}: {n} pseudo-queries from its documents",
                dd.name
            ));
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
    progress::note(format!(
        "{tokens} document token vectors ({k} dims) of {} in {:.1} s",
        vsources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        t.elapsed().as_secs_f64()
    ));

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
                (tessera_model::tch::Kind::Int64, device),
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
    progress::note(format!(
        "{} over {} vectors in {pca_s:.1} s",
        if args.method == Method::Truncate {
            "truncation"
        } else {
            "PCA"
        },
        cov.count()
    ));

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
        progress::note(format!(
            "full {k} dims: dev nDCG@10 {:.4} ({})",
            mean(&full),
            full.iter()
                .map(|p| format!("{} {:.4}", p.0, p.1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
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
            progress::note(format!(
                "step {}: loss {:.4}, {}",
                s.step,
                s.loss,
                dev_line(d)
            ));
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
        progress::note(format!("best (step {}): {}", b.step, dev_line(b)));
    }
    progress::note(format!("reduction written to {}", args.out.display()));
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
        progress::note(format!("note: curves not drawn: {e}"));
    }
}
