//! Training projection heads (and, in `full` mode, the backbone with them)
//! for late interaction.
//!
//! * Data ([`Source`]): per dataset, the texts on each side — backbone
//!   states cached on disk ([`crate::states`], `frozen` mode) or tokenised
//!   texts the backbone runs over with gradients (`full` mode) — and the
//!   training [`Example`]s: a query, its judged positives, mined hard
//!   negatives and optional teacher scores. Several sources train together,
//!   each step drawing its batch from one source chosen by weight.
//! * Loss ([`loss`]): InfoNCE over MaxSim with in-batch and hard negatives,
//!   plus optional KL distillation from teacher scores.
//! * Optimiser ([`optim`]): AdamW, warm-up + linear/cosine decay, clipping.
//! * Determinism: the batch of step `s` is drawn from an RNG seeded by
//!   `(seed, s)` and the head is initialised from `seed`, so the same seed
//!   and data give the same weights on CPU, and a run resumed from a
//!   checkpoint continues exactly as an uninterrupted one.
//! * Validation ([`score`]): exact MaxSim of the dev queries over a fixed
//!   candidate pool per query; the caller turns scores into nDCG@10.
//! * Checkpoints: `checkpoint/` in the output folder, replaced atomically;
//!   the best head on dev is kept apart.

pub mod anchor;
mod batch;
mod checkpoint;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod score;
pub mod select;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainingError};
use crate::states::StateCache;
use optim::{AdamW, Decay, Group};
use tessera_model::bert::BertModel;
use tessera_model::heads::{blocks, HeadSpec};
use tessera_model::tokenize::{ColbertTokenizer, TextKind, TokenizedText};

pub use batch::*;
pub use checkpoint::*;
pub(crate) use checkpoint::{
    checkpoint_state_path, due, load_into, read_checkpoint_state, step_of_field, write_checkpoint,
    write_checkpoint_dir, DevRecord, Records, StepOf, CK_BACKBONE, CK_HEAD,
};

/// `frozen`: only the head trains, on cached backbone states; `full`: the
/// backbone is fine-tuned with the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Frozen,
    Full,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "frozen" => Ok(Self::Frozen),
            "full" => Ok(Self::Full),
            _ => Err(format!("unknown mode {s:?} (frozen or full)")),
        }
    }
}

/// Everything that decides what a run learns (saved with checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub spec: HeadSpec,
    pub mode: Mode,
    pub steps: usize,
    /// Queries per step.
    pub batch_size: usize,
    /// Mined hard negatives per query per step.
    pub negatives: usize,
    /// Judged positives per query per step (at most; each is a loss row of
    /// its own, the query's other positives left out of its softmax).
    #[serde(default = "one")]
    pub positives: usize,
    pub lr: f64,
    /// Learning rate of the backbone in full mode.
    pub backbone_lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub decay: Decay,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
    pub temperature: f64,
    /// Weight of the distillation term (0: off).
    pub distill_weight: f64,
    pub distill_temperature: f64,
    /// Teacher candidates per query when distilling.
    pub distill_candidates: usize,
    /// Weight of the L2-SP pull of the head towards its starting weights
    /// ([`anchor::l2_sp`]; 0: off).
    #[serde(default)]
    pub l2_sp: f64,
    /// Weight of KL(backbone's own MaxSim ‖ head's) over each query's batch
    /// documents ([`anchor::raw_scores`]; 0: off). Frozen mode only.
    #[serde(default)]
    pub raw_kl: f64,
    pub seed: u64,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// What the run trains on, as the caller describes it (datasets,
    /// splits, mining, teachers, model): a resumed run must match it.
    /// Null where the caller records nothing.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// Settings a resumed run may change: how long it runs (and so its
/// default warm-up) and how often it validates and checkpoints.
pub const RESUMABLE_CHANGES: &[&str] = &["steps", "warmup", "eval_every", "checkpoint_every"];

/// The settings of `new` that differ from a checkpoint's `old`, as
/// `name: old → new` with the names `state.json` uses (nested ones
/// dotted: `data.mine_depth`), leaving out the top-level names in
/// `may_change`. A setting the checkpoint does not record (written before
/// it existed) is not compared.
pub fn changed_settings<T: Serialize>(old: &T, new: &T, may_change: &[&str]) -> Vec<String> {
    fn walk(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (old, new) {
            (Value::Object(o), Value::Object(n)) => {
                // The checkpoint's keys: one it lacks was written before
                // that setting existed (a null it holds is a value).
                for (k, ov) in o {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, ov, n.get(k).unwrap_or(&Value::Null), out);
                }
            }
            (o, n) if o != n => out.push(format!("{prefix}: {o} → {n}")),
            _ => {}
        }
    }
    let (Ok(serde_json::Value::Object(mut o)), Ok(serde_json::Value::Object(mut n))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    for k in may_change {
        o.remove(*k);
        n.remove(*k);
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::Value::Object(o),
        &serde_json::Value::Object(n),
        &mut out,
    );
    out
}

/// Refuses a checkpoint (its `state.json` at `path`) whose settings `old`
/// differ from the requested `new` but for [`RESUMABLE_CHANGES`], naming
/// each difference. Both trainers.
pub(crate) fn check_settings<T: Serialize>(path: &Path, old: &T, new: &T) -> Result<()> {
    let changed = changed_settings(old, new, RESUMABLE_CHANGES);
    if changed.is_empty() {
        return Ok(());
    }
    Err(TrainingError::config(
        path,
        format!(
            "the checkpoint was trained with other settings ({}); resume with the same \
             options, or use another --out",
            changed.join("; ")
        ),
    ))
}

/// Serde's default for counts that older files lack (one, as before).
pub(crate) fn one() -> usize {
    1
}

impl TrainConfig {
    /// Checks the numbers; the message names the option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.spec.validate()?;
        if self.batch_size < 1 {
            return Err("--batch-size must be at least 1".into());
        }
        if self.positives < 1 {
            return Err("--positives must be at least 1".into());
        }
        for (name, v) in [
            ("--lr", self.lr),
            ("--temperature", self.temperature),
            ("--distill-temperature", self.distill_temperature),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, not {v}"));
            }
        }
        if self.mode == Mode::Full && !(self.backbone_lr.is_finite() && self.backbone_lr >= 0.0) {
            return Err(format!(
                "--backbone-lr must be ≥ 0, not {}",
                self.backbone_lr
            ));
        }
        if !(self.weight_decay >= 0.0 && self.clip >= 0.0 && self.distill_weight >= 0.0) {
            return Err("--weight-decay, --clip and --distill-weight must be ≥ 0".into());
        }
        for (name, v) in [("--l2-sp", self.l2_sp), ("--raw-kl", self.raw_kl)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a number ≥ 0, not {v}"));
            }
        }
        if self.raw_kl > 0.0 && self.mode == Mode::Full {
            return Err(
                "--raw-kl needs --mode frozen: its teacher is the backbone as it was".into(),
            );
        }
        Ok(())
    }
}

/// One training query.
#[derive(Debug, Clone, Default)]
pub struct Example {
    /// Position of the query on the source's query side.
    pub query: usize,
    /// Judged relevant documents (positions on the document side); never
    /// empty.
    pub positives: Vec<usize>,
    /// Mined hard negatives, judged positives excluded.
    pub negatives: Vec<usize>,
    /// Teacher scores over candidates, for distillation.
    pub teacher: Vec<(usize, f32)>,
}

/// One side's texts: cached backbone states, or token ids for full mode
/// (cloning shares them).
#[derive(Clone)]
pub enum Texts {
    Cached(Arc<StateCache>),
    Tokens(Arc<Vec<TokenizedText>>),
}

impl Texts {
    pub fn len(&self) -> usize {
        match self {
            Self::Cached(c) => c.len(),
            Self::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dataset's training material.
pub struct Source {
    pub name: String,
    pub weight: f64,
    pub queries: Texts,
    pub docs: Texts,
    pub examples: Vec<Example>,
}

/// What the backbone needs in full mode.
pub struct Backbone<'a> {
    pub bert: &'a BertModel,
    /// Its trainable variables (a frozen VarStore's, unfrozen).
    pub variables: Vec<(String, Tensor)>,
    pub tokenizer: &'a ColbertTokenizer,
}

/// One logged step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub contrastive: f64,
    pub distill: f64,
    /// The weighted L2-SP and raw-KL terms (0 when both are off).
    #[serde(default)]
    pub anchor: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub source: String,
    pub seconds: f64,
}

/// One validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevLog {
    pub step: usize,
    /// Mean nDCG@10 over the sources trained on (over every source when
    /// none of them is; the score the in-domain rule ranks by).
    pub ndcg10: f64,
    /// Mean nDCG@10 over the dev splits of the collections trained on.
    #[serde(default)]
    pub in_domain: Option<f64>,
    /// Mean nDCG@10 over collections validated on but never trained on.
    #[serde(default)]
    pub zero_shot: Option<f64>,
    /// Per source: (name, nDCG@10, Recall@100).
    pub per_source: Vec<(String, f64, f64)>,
    pub seconds: f64,
}

/// `checkpoint/state.json` of either trainer: its settings `C`, the step
/// it stopped after, and the run's step (`S`) and dev (`D`) records so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint<C, S, D> {
    pub config: C,
    pub step: usize,
    pub best: Option<D>,
    pub steps: Vec<S>,
    pub dev: Vec<D>,
    pub train_seconds: f64,
}

/// A head-training checkpoint's state.
pub type CheckpointState = Checkpoint<TrainConfig, StepLog, DevLog>;

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub steps: Vec<StepLog>,
    pub dev: Vec<DevLog>,
    pub best: Option<DevLog>,
    pub train_seconds: f64,
    pub parameters: i64,
    /// Query–document pairs scored per second of training steps.
    pub pairs_per_s: f64,
}

/// The trainable state: head parameters (and the backbone's in full mode).
pub struct Trainee<'a> {
    pub spec: HeadSpec,
    pub head: HashMap<String, Tensor>,
    /// The head's starting weights, for L2-SP (`None`: not kept).
    pub start: Option<HashMap<String, Tensor>>,
    pub backbone: Option<Backbone<'a>>,
    pub device: Device,
}

impl Trainee<'_> {
    /// The head over `states` (`[…, in_dim]`), normalised.
    pub fn project(&self, states: &Tensor) -> Tensor {
        loss::normalise(&blocks::forward(&self.spec, &self.head, states))
    }

    /// [`Trainee::project`] over the real tokens of a padded batch only
    /// (`mask` `[N, L]`), scattered back to `[N, L, k]` with zeros at the
    /// padding: the head's cost follows the tokens, not the padding.
    pub fn project_masked(&self, states: &Tensor, mask: &Tensor) -> Tensor {
        let keep = mask.gt(0.0);
        let packed = states.index(&[Some(&keep)]);
        let y = self.project(&packed);
        let (n, l) = (states.size()[0], states.size()[1]);
        Tensor::zeros([n, l, y.size()[1]], (y.kind(), y.device())).index_put(
            &[Some(keep)],
            &y,
            false,
        )
    }

    /// Head parameters detached onto the CPU, in [`blocks::parameter_shapes`] order.
    pub fn head_tensors(&self) -> Vec<(String, Tensor)> {
        blocks::parameter_shapes(&self.spec)
            .into_iter()
            .map(|(n, _)| {
                let t = self.head[&n].detach().to_device(Device::Cpu).copy();
                (n, t)
            })
            .collect()
    }

    /// Backbone states and keep-mask of `items` of `texts`: from the cache,
    /// or by running the backbone (with gradients when enabled).
    pub fn states(&self, texts: &Texts, items: &[usize], kind: TextKind) -> (Tensor, Tensor) {
        match texts {
            Texts::Cached(c) => c.batch(items, self.device),
            Texts::Tokens(t) => {
                let bb = self
                    .backbone
                    .as_ref()
                    .expect("token sides come with a backbone (checked at start)");
                run_backbone(bb.bert, bb.tokenizer, t, items, kind, self.device)
            }
        }
    }
}

/// The backbone over tokenised texts: `[n, L, d]` states and the mask of
/// tokens the encoder keeps (padding, and document punctuation when the
/// settings skip it, are 0).
pub fn run_backbone(
    bert: &BertModel,
    tokenizer: &ColbertTokenizer,
    texts: &[TokenizedText],
    items: &[usize],
    kind: TextKind,
    device: Device,
) -> (Tensor, Tensor) {
    let width = items
        .iter()
        .map(|&i| texts[i].ids.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let pad = i64::from(tokenizer.pad_id());
    let n = items.len();
    let mut ids = vec![pad; n * width];
    let mut attend = vec![0i64; n * width];
    let mut keep = vec![0f32; n * width];
    let skip_punct = kind == TextKind::Document && tokenizer.settings().skip_punctuation;
    for (row, &i) in items.iter().enumerate() {
        let t = &texts[i];
        for (j, &id) in t.ids.iter().enumerate() {
            ids[row * width + j] = i64::from(id);
            if !(skip_punct && tokenizer.is_punctuation(id)) {
                keep[row * width + j] = 1.0;
            }
        }
        attend[row * width..row * width + t.attended].fill(1);
    }
    let shape = [n as i64, width as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let attend = Tensor::from_slice(&attend).view(shape).to_device(device);
    let keep = Tensor::from_slice(&keep).view(shape).to_device(device);
    (bert.forward(&ids, &attend), keep)
}

/// A short name of a spec: `ffn-d2-w2-gelu+res`.
pub fn describe(spec: &HeadSpec) -> String {
    use tessera_model::heads::HeadKind;
    let mut s = spec.kind.to_string();
    match spec.kind {
        HeadKind::Ffn => {
            s += &format!(
                "-d{}-w{}-{:?}",
                spec.depth,
                spec.width_factor,
                spec.activation()
            );
            if spec.layer_norm {
                s += "-ln";
            }
        }
        HeadKind::Glu => s += &format!("-w{}-{:?}", spec.width_factor, spec.activation()),
        _ => {}
    }
    if spec.residual {
        s += "+res";
    }
    s.to_lowercase()
}

/// Where a run writes; the caller's hooks for validation and progress.
pub struct Hooks<'a> {
    /// Scores the dev split with the current trainee after the given step
    /// (0: the initial head): `None` when the run has no dev data.
    pub validate: &'a mut dyn FnMut(&Trainee<'_>, usize) -> Result<Option<DevLog>>,
    /// After each step.
    pub on_step: &'a mut dyn FnMut(&StepLog, Option<&DevLog>),
    /// When the best dev score improves (or at the end without dev data):
    /// the caller writes the model it will keep.
    pub on_best: &'a mut dyn FnMut(&Trainee<'_>, Option<&DevLog>) -> Result<()>,
}

/// Runs (or resumes) training into `out` (checkpoints and metrics.jsonl).
pub fn train(
    cfg: &TrainConfig,
    sources: &[Source],
    trainee: Trainee<'_>,
    out: &Path,
    resume: Option<CheckpointState>,
    hooks: Hooks<'_>,
) -> Result<Summary> {
    cfg.validate().map_err(TrainingError::InvalidInput)?;
    for s in sources {
        if s.examples.is_empty() {
            return Err(TrainingError::InvalidInput(format!(
                "{}: no training examples",
                s.name
            )));
        }
        if matches!(s.docs, Texts::Tokens(_)) && trainee.backbone.is_none() {
            return Err(TrainingError::InvalidInput(format!(
                "{}: token inputs need the backbone (full mode)",
                s.name
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TrainingError::io(out, e))?;
    let mut run = Records::<StepLog, DevLog>::new(out);
    let mut start = 0usize;

    let mut groups = vec![Group {
        params: blocks::parameter_shapes(&cfg.spec)
            .into_iter()
            .map(|(n, _)| (n.clone(), trainee.head[&n].shallow_clone()))
            .collect(),
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
    }];
    if let Some(bb) = &trainee.backbone {
        groups.push(Group {
            params: bb
                .variables
                .iter()
                .map(|(n, t)| (format!("backbone.{n}"), t.shallow_clone()))
                .collect(),
            lr: cfg.backbone_lr,
            weight_decay: cfg.weight_decay,
        });
    }
    let mut opt = AdamW::new(groups);

    if let Some(state) = resume {
        check_resumable(out, &state, cfg)?;
        let ck = checkpoint_dir(out);
        load_into(&ck.join(CK_HEAD), &trainee.head)?;
        if let Some(bb) = &trainee.backbone {
            let named: HashMap<String, Tensor> = bb
                .variables
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect();
            load_into(&ck.join(CK_BACKBONE), &named)?;
        }
        start = run.resume(out, &mut opt, state)?;
    } else {
        run.start()?;
    }

    let mut pairs = 0usize;
    // Seconds of this invocation's steps (validation excluded).
    let mut step_seconds = 0.0;
    if cfg.steps == 0 {
        // Evaluation only: the head as initialised (an identity head's
        // baseline on the same pools as every trained head).
        let _ng = tch::no_grad_guard();
        let d = (hooks.validate)(&trainee, 0)?;
        if let Some(d) = &d {
            run.record_dev(d.clone())?;
        }
        (hooks.on_best)(&trainee, d.as_ref())?;
        run.best = d;
    }
    for step in start..cfg.steps {
        let t0 = std::time::Instant::now();
        let batch = draw_batch(cfg, sources, step);
        pairs += batch.queries.len() * batch.docs.len();
        opt.zero_grad();
        let parts = batch_loss(cfg, &trainee, sources, &batch);
        let loss = parts.total;
        let total = f64::try_from(&loss).unwrap_or(f64::NAN);
        if !total.is_finite() {
            return Err(TrainingError::InvalidInput(format!(
                "the loss became {total} at step {step}: lower --lr or raise --temperature"
            )));
        }
        loss.backward();
        let grad_norm = opt.clip_grad_norm(cfg.clip);
        let factor = optim::lr_factor(step, cfg.warmup, cfg.steps, cfg.decay);
        opt.step(factor);
        let seconds = t0.elapsed().as_secs_f64();
        step_seconds += seconds;
        let log = StepLog {
            step: step + 1,
            loss: total,
            contrastive: parts.contrastive,
            distill: parts.distill,
            anchor: parts.anchor,
            lr: cfg.lr * factor,
            grad_norm,
            source: sources[batch.source].name.clone(),
            seconds,
        };
        run.record_step(&log, seconds)?;
        let dev = {
            let _ng = tch::no_grad_guard();
            run.validate_if_due(
                || &trainee,
                step + 1,
                cfg.steps,
                cfg.eval_every,
                |t| (hooks.validate)(t, step + 1),
                |t, d| (hooks.on_best)(t, d),
            )?
        };
        (hooks.on_step)(&log, dev.as_ref());
        if due(step + 1, cfg.steps, cfg.checkpoint_every) {
            write_checkpoint(out, &trainee, &opt, &run.checkpoint(cfg, step + 1))?;
        }
    }
    let parameters = blocks::parameter_count(&cfg.spec);
    Ok(Summary {
        steps: run.steps,
        dev: run.dev,
        best: run.best,
        train_seconds: run.train_seconds,
        parameters,
        pairs_per_s: pairs as f64 / step_seconds.max(1e-9),
    })
}
