//! Training an orthogonal reduction the MatryoshkaKV way, on token vectors
//! computed once (a model's vectors of the training and dev texts; the
//! backbone never runs here).
//!
//! The parameters are a free matrix `X` (`k × k`, f64) and a mean `μ`:
//! `U = B · cayley(X)` with `B` a fixed rotation — the identity when `X`
//! starts at the inverse Cayley transform of the PCA basis, the PCA basis
//! itself (and `X = 0`) when that basis has an eigenvalue too close to −1
//! for the inverse to be exact. `U` is orthogonal by construction at every
//! step. Each step draws a batch of queries with their positives and mined
//! negatives, and one `r` of the nested set (uniformly, seeded by the step);
//! the loss is KL between the softmax of the full-dimension MaxSim scores
//! (teacher) and of the `r`-dimension scores (student) over each query's
//! candidates, plus optionally the contrastive loss on the labels.
//! Validation scores every `r` on fixed dev pools; the best mean over `r`
//! is kept.

use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{cayley, inverse_cayley};
use crate::error::{Result, TrainingError};
use crate::train::optim::{self, AdamW, Decay, Group};
use crate::train::score::{score_items, Projected};
use crate::train::{
    draw, due, loss, step_rng, write_checkpoint_dir, Checkpoint, DevRecord, DrawPlan, Example,
    Records,
};
use tessera_model::reduction::{
    check_dims, orthogonality_error, reduce, Centring, Method, Reduction, ReductionMeta, Side,
};

/// Everything that decides what a run learns (saved with checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceConfig {
    pub in_dim: usize,
    /// The nested set, increasing.
    pub dims: Vec<usize>,
    pub steps: usize,
    pub batch_size: usize,
    pub negatives: usize,
    /// Judged positives per query per step (at most): each is a row of the
    /// contrastive term, and each joins the batch's candidates.
    #[serde(default = "crate::train::one")]
    pub positives: usize,
    pub lr: f64,
    pub warmup: usize,
    pub decay: Decay,
    pub clip: f64,
    /// Softmax temperature of teacher and student score distributions.
    pub distill_temperature: f64,
    /// Weight of the contrastive term on labelled pairs (0: distillation only).
    pub contrastive_weight: f64,
    pub temperature: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Train `U = U_pca · cayley(X)` from `X = 0` instead of starting `X`
    /// at the inverse Cayley transform of the PCA basis: the same set of
    /// rotations, but the map is well conditioned at the start whatever the
    /// PCA basis's eigenvalues.
    #[serde(default)]
    pub relative: bool,
    /// Train `U` itself, a free matrix started at the PCA basis, instead
    /// of a rotation (`--method linear`: not orthogonal; a diagnostic of
    /// what the constraint costs).
    #[serde(default)]
    pub free: bool,
    /// How much of the mean queries and documents subtract (the fitted
    /// reduction's; trained with it and written into the result).
    #[serde(default)]
    pub centring: Centring,
    /// What the run trains on, as the caller describes it (datasets,
    /// splits, mining, pseudo-queries, model): a resumed run must match it.
    /// Null where the caller records nothing.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl ReduceConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_dims(&self.dims, self.in_dim).map_err(|m| format!("--dims: {m}"))?;
        if self.batch_size < 1 {
            return Err("--batch-queries must be at least 1".into());
        }
        if self.positives < 1 {
            return Err("--positives must be at least 1".into());
        }
        for (name, v) in [
            ("--lr", self.lr),
            ("--distill-temperature", self.distill_temperature),
            ("--temperature", self.temperature),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, not {v}"));
            }
        }
        if !(self.contrastive_weight >= 0.0 && self.clip >= 0.0) {
            return Err("--contrastive-weight and --clip must be ≥ 0".into());
        }
        self.centring
            .check(["--centre-queries", "--centre-documents"])?;
        if self.free && self.relative {
            return Err(
                "--relative is a parametrisation of the rotation: not with --method linear".into(),
            );
        }
        Ok(())
    }
}

/// A dataset's training material: its texts' vectors and the examples.
pub struct VectorSource {
    pub name: String,
    pub weight: f64,
    pub queries: Projected,
    pub docs: Projected,
    pub examples: Vec<Example>,
}

/// A dev split: vectors and fixed pools `(query position, documents)`.
pub struct VectorDev {
    pub name: String,
    pub queries: Projected,
    pub docs: Projected,
    pub items: Vec<(usize, Vec<usize>)>,
}

/// Scores a dev split's pools at full width (`None`) or reduced to `r`.
pub fn score_dev(
    dev: &VectorDev,
    reduction: Option<(&Reduction, usize)>,
) -> Vec<Vec<(usize, f32)>> {
    match reduction {
        None => score_items(&dev.queries, &dev.docs, &dev.items),
        Some((red, r)) => {
            let q = dev.queries.map(|v| red.apply(v, r, Side::Query));
            let d = dev.docs.map(|v| red.apply(v, r, Side::Document));
            score_items(&q, &d, &dev.items)
        }
    }
}

/// One logged step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReduceStep {
    pub step: usize,
    pub dim: usize,
    pub loss: f64,
    pub distill: f64,
    pub contrastive: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// max |UᵀU − I| after the step.
    pub orthogonality: f64,
    pub seconds: f64,
}

/// One validation: per `r`, the mean nDCG@10 over dev sets and each set's
/// (name, nDCG@10, Recall@100).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReduceDev {
    pub step: usize,
    /// Mean over `r` of the dev-mean nDCG@10: what picks the best step.
    pub ndcg10: f64,
    pub per_dim: Vec<DimScore>,
    pub seconds: f64,
}

crate::train::step_of_field!(ReduceStep, ReduceDev);

impl DevRecord for ReduceDev {
    fn stamp(&mut self, step: usize) {
        self.step = step;
    }
    fn score(&self) -> f64 {
        self.ndcg10
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DimScore {
    pub dim: usize,
    pub ndcg10: f64,
    pub per_source: Vec<(String, f64, f64)>,
}

/// `checkpoint/state.json` of a reduction run.
pub type ReduceCheckpoint = Checkpoint<ReduceConfig, ReduceStep, ReduceDev>;

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReduceSummary {
    pub steps: Vec<ReduceStep>,
    pub dev: Vec<ReduceDev>,
    pub best: Option<ReduceDev>,
    pub initial: Option<ReduceDev>,
    pub train_seconds: f64,
    /// Whether `X` started at the inverse Cayley transform of the PCA basis
    /// (else `B` is that basis and `X` starts at 0).
    pub inverse_cayley_init: bool,
}

/// The caller's hooks.
pub struct ReduceHooks<'a> {
    /// Scores the dev sets with a reduction (the caller turns scores into
    /// nDCG): `None` without dev data.
    pub validate: &'a mut dyn FnMut(&Reduction) -> Result<Option<ReduceDev>>,
    pub on_step: &'a mut dyn FnMut(&ReduceStep, Option<&ReduceDev>),
    /// When the dev score improves (or at the end without dev data).
    pub on_best: &'a mut dyn FnMut(&Reduction, Option<&ReduceDev>) -> Result<()>,
}

/// The trainable parameters.
struct Params {
    x: Tensor,
    mean: Tensor,
    base: Tensor,
    /// `U = X` (a free matrix) instead of `B · cayley(X)`.
    free: bool,
}

impl Params {
    fn u(&self) -> Tensor {
        if self.free {
            self.x.shallow_clone()
        } else {
            self.base.matmul(&cayley(&self.x))
        }
    }

    fn reduction(&self, cfg: &ReduceConfig) -> Reduction {
        let _g = tch::no_grad_guard();
        let to_vec = |t: &Tensor| -> Vec<f32> {
            Vec::try_from(
                t.detach()
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu)
                    .contiguous()
                    .view([-1]),
            )
            .unwrap_or_default()
        };
        let mut meta = ReductionMeta::new(
            if self.free {
                Method::Linear
            } else {
                Method::Orthogonal
            },
            cfg.in_dim,
            cfg.dims.clone(),
        );
        meta.centring = cfg.centring;
        Reduction {
            meta,
            mean: to_vec(&self.mean),
            basis: to_vec(&self.u()),
            dir: None,
        }
    }
}

const CK_PARAMS: &str = "params.safetensors";

/// Reads `out/checkpoint/state.json` if there is one.
pub fn read_checkpoint(out: &Path) -> Result<Option<ReduceCheckpoint>> {
    crate::train::read_checkpoint_state(out)
}

/// Refuses to resume a checkpoint of another nested set, width, past
/// `--steps`, or trained with other settings or data.
pub fn check_resumable(out: &Path, st: &ReduceCheckpoint, cfg: &ReduceConfig) -> Result<()> {
    let path = crate::train::checkpoint_state_path(out);
    if st.config.dims != cfg.dims || st.config.in_dim != cfg.in_dim {
        return Err(TrainingError::config(
            &path,
            format!(
                "the checkpoint reduces {}-dim vectors to {:?}, not {}-dim to {:?}; \
                 resume with the same --dims and model, or use another --out",
                st.config.in_dim, st.config.dims, cfg.in_dim, cfg.dims
            ),
        ));
    }
    if st.step > cfg.steps {
        return Err(TrainingError::config(
            &path,
            format!(
                "the checkpoint is at step {}, past --steps {}",
                st.step, cfg.steps
            ),
        ));
    }
    crate::train::check_settings(&path, &st.config, cfg)
}

/// Trains (or resumes) an orthogonal reduction from `init` (a PCA of the
/// same vectors) into `out` (checkpoints, metrics.jsonl).
pub fn train(
    cfg: &ReduceConfig,
    sources: &[VectorSource],
    init: &Reduction,
    out: &Path,
    resume: Option<ReduceCheckpoint>,
    hooks: ReduceHooks<'_>,
) -> Result<ReduceSummary> {
    cfg.validate().map_err(TrainingError::InvalidInput)?;
    if init.meta.in_dim != cfg.in_dim {
        return Err(TrainingError::InvalidInput(format!(
            "the initial reduction takes {}-dim vectors, the model makes {}",
            init.meta.in_dim, cfg.in_dim
        )));
    }
    for s in sources {
        if s.examples.is_empty() {
            return Err(TrainingError::InvalidInput(format!(
                "{}: no training examples",
                s.name
            )));
        }
    }
    let device = sources
        .first()
        .map_or(Device::Cpu, |s| s.docs.vectors.device());
    std::fs::create_dir_all(out).map_err(|e| TrainingError::io(out, e))?;
    let k = cfg.in_dim as i64;
    let pca_u = Tensor::from_slice(&init.basis)
        .view([k, k])
        .to_kind(Kind::Double)
        .to_device(device);
    let inverse = if cfg.relative || cfg.free {
        None
    } else {
        inverse_cayley(&pca_u)
    };
    let (x0, base, exact) = match inverse {
        None if cfg.free => (pca_u.copy(), Tensor::eye(k, (Kind::Double, device)), false),
        Some(x) => (x, Tensor::eye(k, (Kind::Double, device)), true),
        None if cfg.relative => (Tensor::zeros([k, k], (Kind::Double, device)), pca_u, false),
        None => {
            tracing::warn!(
                "PCA basis too close to an eigenvalue −1: training U = U_pca · cayley(X)"
            );
            (Tensor::zeros([k, k], (Kind::Double, device)), pca_u, false)
        }
    };
    let params = Params {
        x: x0.set_requires_grad(true),
        mean: Tensor::from_slice(&init.mean)
            .to_device(device)
            .set_requires_grad(true),
        base,
        free: cfg.free,
    };
    let mut opt = AdamW::new(vec![Group {
        params: vec![
            ("x".into(), params.x.shallow_clone()),
            ("mean".into(), params.mean.shallow_clone()),
        ],
        lr: cfg.lr,
        weight_decay: 0.0,
    }]);
    let mut run = Records::<ReduceStep, ReduceDev>::new(out);
    let mut start = 0usize;
    let mut initial = None;
    if let Some(st) = resume {
        check_resumable(out, &st, cfg)?;
        let ck = crate::train::checkpoint_dir(out);
        let path = ck.join(CK_PARAMS);
        let saved = tessera_model::weights::WeightFile::read(&path)?;
        {
            let _g = tch::no_grad_guard();
            // Copied in their own kinds (X and B are f64: a resumed run
            // continues bit for bit).
            for (name, dst) in [
                ("x", &params.x),
                ("mean", &params.mean),
                ("base", &params.base),
            ] {
                let src = saved
                    .tensors
                    .get(name)
                    .ok_or_else(|| TrainingError::MissingTensor {
                        path: path.clone(),
                        name: name.into(),
                    })?;
                if src.size() != dst.size() {
                    return Err(TrainingError::TensorShape {
                        path: path.clone(),
                        name: name.into(),
                        expected: dst.size(),
                        actual: src.size(),
                    });
                }
                dst.shallow_clone().copy_(&src.to_device(device));
            }
        }
        start = run.resume(out, &mut opt, st)?;
    } else {
        run.start()?;
        // The PCA starting point, scored like every later step.
        let _g = tch::no_grad_guard();
        if let Some(d) = (hooks.validate)(&params.reduction(cfg))? {
            run.record_dev(d.clone())?;
            (hooks.on_best)(&params.reduction(cfg), Some(&d))?;
            run.best = Some(d.clone());
            initial = Some(d);
        }
    }
    let plan = DrawPlan {
        seed: cfg.seed,
        batch_size: cfg.batch_size,
        negatives: cfg.negatives,
        positives: cfg.positives,
        distill_candidates: None,
    };
    let sets: Vec<(f64, &[Example])> = sources
        .iter()
        .map(|s| (s.weight, s.examples.as_slice()))
        .collect();
    for step in start..cfg.steps {
        let t0 = std::time::Instant::now();
        let batch = draw(&plan, &sets, step);
        // One r per step, from its own stream of the step's seed.
        let r = dim_of_step(cfg, step);
        let src = &sources[batch.source];
        let (q, qm) = src.queries.batch(&batch.queries);
        let (d, dm) = src.docs.batch(&batch.docs);
        let teacher = {
            let _g = tch::no_grad_guard();
            loss::maxsim(&q, &qm, &d, &dm)
        };
        opt.zero_grad();
        let u = params.u().narrow(1, 0, r as i64).to_kind(Kind::Float);
        let mean = |side| &params.mean * f64::from(cfg.centring.of(side));
        let qr = reduce(&q, &mean(Side::Query), &u);
        let dr = reduce(&d, &mean(Side::Document), &u);
        let student = loss::maxsim(&qr, &qm, &dr, &dm);
        let valid = Tensor::ones(student.size().as_slice(), (Kind::Bool, device));
        let kl = loss::kl_distill(&student, &teacher, &valid, cfg.distill_temperature);
        let distill = f64::try_from(&kl).unwrap_or(f64::NAN);
        let (total, contrastive) = if cfg.contrastive_weight > 0.0 {
            let c = batch.info_nce(&student, cfg.temperature);
            let cv = f64::try_from(&c).unwrap_or(f64::NAN);
            (kl + c * cfg.contrastive_weight, cv)
        } else {
            (kl, 0.0)
        };
        let lv = f64::try_from(&total).unwrap_or(f64::NAN);
        if !lv.is_finite() {
            return Err(TrainingError::InvalidInput(format!(
                "the loss became {lv} at step {step}: lower --lr"
            )));
        }
        total.backward();
        let grad_norm = opt.clip_grad_norm(cfg.clip);
        let factor = optim::lr_factor(step, cfg.warmup, cfg.steps, cfg.decay);
        opt.step(factor);
        let orthogonality = {
            let _g = tch::no_grad_guard();
            orthogonality_error(&params.u())
        };
        let seconds = t0.elapsed().as_secs_f64();
        let log = ReduceStep {
            step: step + 1,
            dim: r,
            loss: lv,
            distill,
            contrastive,
            lr: cfg.lr * factor,
            grad_norm,
            orthogonality,
            seconds,
        };
        run.record_step(&log, seconds)?;
        let dev = {
            let _g = tch::no_grad_guard();
            run.validate_if_due(
                || params.reduction(cfg),
                step + 1,
                cfg.steps,
                cfg.eval_every,
                |r| (hooks.validate)(r),
                |r, d| (hooks.on_best)(r, d),
            )?
        };
        (hooks.on_step)(&log, dev.as_ref());
        if due(step + 1, cfg.steps, cfg.checkpoint_every) {
            write_checkpoint(out, &params, &opt, &run.checkpoint(cfg, step + 1))?;
        }
    }
    if cfg.steps == 0 && initial.is_none() {
        (hooks.on_best)(&params.reduction(cfg), None)?;
    }
    Ok(ReduceSummary {
        steps: run.steps,
        dev: run.dev,
        best: run.best,
        initial,
        train_seconds: run.train_seconds,
        inverse_cayley_init: exact,
    })
}

fn write_checkpoint(out: &Path, p: &Params, opt: &AdamW, st: &ReduceCheckpoint) -> Result<()> {
    let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu);
    let params = vec![
        ("x".to_string(), cpu(&p.x)),
        ("mean".to_string(), cpu(&p.mean)),
        ("base".to_string(), cpu(&p.base)),
    ];
    write_checkpoint_dir(out, &[(CK_PARAMS, params)], opt, st)
}

/// The `r` step `step` trains: uniform over the nested set, from its own
/// stream of the step's seed (so batches and dims are independent).
pub fn dim_of_step(cfg: &ReduceConfig, step: usize) -> usize {
    cfg.dims[step_rng(cfg.seed ^ 0x5EED_D1A5, step).gen_range(0..cfg.dims.len())]
}
