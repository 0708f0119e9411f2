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

/// A drawn batch (positions within one source).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub source: usize,
    pub queries: Vec<usize>,
    pub docs: Vec<usize>,
    /// Per loss row: its query (an index into `queries`); one row per drawn
    /// positive, so a query with several positives has several rows.
    pub rows: Vec<usize>,
    /// Per loss row: the column of its target positive in `docs`.
    pub targets: Vec<i64>,
    /// Per loss row, per doc: whether it takes part in the row's softmax
    /// (the query's other judged positives do not).
    pub allowed: Vec<Vec<bool>>,
    /// Per query: teacher (column, score) pairs.
    pub teacher: Vec<Vec<(usize, f32)>>,
}

impl Batch {
    /// The loss rows' query positions (`[rows]`) and which documents take
    /// part in each row's softmax (`[rows, docs]`, bool), on `device`.
    fn row_tensors(&self, device: tch::Device) -> (Tensor, Tensor) {
        let rows: Vec<i64> = self.rows.iter().map(|&q| q as i64).collect();
        let flat: Vec<bool> = self.allowed.iter().flatten().copied().collect();
        let allowed = Tensor::from_slice(&flat)
            .view([self.rows.len() as i64, self.docs.len() as i64])
            .to_device(device);
        (Tensor::from_slice(&rows).to_device(device), allowed)
    }

    /// The contrastive loss of the batch's rows, given the scores of its
    /// queries against its documents (`[queries, docs]`).
    pub fn info_nce(&self, scores: &Tensor, temperature: f64) -> Tensor {
        let device = scores.device();
        let (rows, allowed) = self.row_tensors(device);
        let targets = Tensor::from_slice(&self.targets).to_device(device);
        loss::info_nce(
            &scores.index_select(0, &rows),
            &targets,
            &allowed,
            temperature,
        )
    }

    /// KL(teacher ‖ student) over each loss row's softmax columns (the
    /// documents [`Batch::info_nce`] lets take part), given both models'
    /// scores of the batch's queries against its documents.
    pub fn kl_rows(&self, student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
        let device = student.device();
        let (rows, allowed) = self.row_tensors(device);
        loss::kl_distill(
            &student.index_select(0, &rows),
            &teacher.to_device(device).index_select(0, &rows),
            &allowed,
            temperature,
        )
    }
}

/// What decides a drawn batch, besides the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawPlan {
    pub seed: u64,
    pub batch_size: usize,
    pub negatives: usize,
    /// Judged positives per query (at most).
    pub positives: usize,
    /// Teacher candidates per query (`None`: no distillation).
    pub distill_candidates: Option<usize>,
}

impl TrainConfig {
    pub fn draw_plan(&self) -> DrawPlan {
        DrawPlan {
            seed: self.seed,
            batch_size: self.batch_size,
            negatives: self.negatives,
            positives: self.positives,
            distill_candidates: (self.distill_weight > 0.0).then_some(self.distill_candidates),
        }
    }
}

/// The RNG of `step` (seeded by `(seed, step)` only).
pub fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(step as u64 + 1),
    )
}

/// Draws the batch of `step`: depends only on `(seed, step)` and the data.
pub fn draw_batch(cfg: &TrainConfig, sources: &[Source], step: usize) -> Batch {
    let sets: Vec<(f64, &[Example])> = sources
        .iter()
        .map(|s| (s.weight, s.examples.as_slice()))
        .collect();
    draw(&cfg.draw_plan(), &sets, step)
}

/// [`draw_batch`] over weighted example sets (any training material).
pub fn draw(plan: &DrawPlan, sets: &[(f64, &[Example])], step: usize) -> Batch {
    let mut rng = step_rng(plan.seed, step);
    let total: f64 = sets.iter().map(|s| s.0).sum();
    let mut pick = rng.gen::<f64>() * total;
    let mut si = sets.len() - 1;
    for (i, s) in sets.iter().enumerate() {
        if pick < s.0 {
            si = i;
            break;
        }
        pick -= s.0;
    }
    let examples = sets[si].1;
    let b = plan.batch_size.min(examples.len());
    let chosen = rand::seq::index::sample(&mut rng, examples.len(), b).into_vec();
    let mut docs: Vec<usize> = Vec::new();
    let mut col: HashMap<usize, usize> = HashMap::new();
    let mut add = |d: usize, docs: &mut Vec<usize>| {
        *col.entry(d).or_insert_with(|| {
            docs.push(d);
            docs.len() - 1
        })
    };
    let mut rows = Vec::with_capacity(b);
    let mut targets = Vec::with_capacity(b);
    let mut queries = Vec::with_capacity(b);
    let mut teacher = Vec::with_capacity(b);
    for (qi, &e) in chosen.iter().enumerate() {
        let ex = &examples[e];
        queries.push(ex.query);
        let n = ex.positives.len();
        // One positive: the draw every run made before --positives existed.
        let picks = if plan.positives <= 1 {
            vec![rng.gen_range(0..n)]
        } else {
            rand::seq::index::sample(&mut rng, n, plan.positives.min(n)).into_vec()
        };
        for i in picks {
            rows.push(qi);
            targets.push(add(ex.positives[i], &mut docs) as i64);
        }
    }
    for &e in &chosen {
        let ex = &examples[e];
        let k = plan.negatives.min(ex.negatives.len());
        for j in rand::seq::index::sample(&mut rng, ex.negatives.len(), k) {
            add(ex.negatives[j], &mut docs);
        }
    }
    if let Some(candidates) = plan.distill_candidates {
        for &e in &chosen {
            let ex = &examples[e];
            let row: Vec<(usize, f32)> = ex
                .teacher
                .iter()
                .take(candidates)
                .map(|&(d, s)| (add(d, &mut docs), s))
                .collect();
            teacher.push(row);
        }
    } else {
        teacher.resize(b, Vec::new());
    }
    // Each query's judged positives, once per query (a query has a row per
    // drawn positive).
    let judged: Vec<HashSet<usize>> = chosen
        .iter()
        .map(|&e| examples[e].positives.iter().copied().collect())
        .collect();
    let allowed = rows
        .iter()
        .zip(&targets)
        .map(|(&qi, &t)| {
            docs.iter()
                .enumerate()
                .map(|(j, d)| j as i64 == t || !judged[qi].contains(d))
                .collect()
        })
        .collect();
    Batch {
        source: si,
        queries,
        docs,
        rows,
        targets,
        allowed,
        teacher,
    }
}

/// The loss of one batch: the total to backpropagate through and its
/// parts' values.
pub struct BatchLoss {
    pub total: Tensor,
    pub contrastive: f64,
    pub distill: f64,
    /// The weighted L2-SP and raw-KL terms.
    pub anchor: f64,
}

/// Loss of one batch: contrastive, plus distillation from a teacher run
/// and the anchor terms ([`anchor`]) where the config weighs them.
pub fn batch_loss(
    cfg: &TrainConfig,
    trainee: &Trainee<'_>,
    sources: &[Source],
    batch: &Batch,
) -> BatchLoss {
    let src = &sources[batch.source];
    let device = trainee.device;
    let (qs, qm) = trainee.states(&src.queries, &batch.queries, TextKind::Query);
    let (ds, dm) = trainee.states(&src.docs, &batch.docs, TextKind::Document);
    let q = trainee.project_masked(&qs, &qm);
    let d = trainee.project_masked(&ds, &dm);
    let scores = loss::maxsim(&q, &qm, &d, &dm);
    let contrastive = batch.info_nce(&scores, cfg.temperature);
    let value = |t: &Tensor| f64::try_from(t).unwrap_or(f64::NAN);
    let mut out = BatchLoss {
        contrastive: value(&contrastive),
        total: contrastive,
        distill: 0.0,
        anchor: 0.0,
    };
    let mut anchor: Option<Tensor> = None;
    let mut add_anchor = |t: Tensor| {
        anchor = Some(match anchor.take() {
            Some(a) => a + t,
            None => t,
        });
    };
    if cfg.raw_kl > 0.0 {
        let teacher = anchor::raw_scores(&qs, &qm, &ds, &dm);
        add_anchor(batch.kl_rows(&scores, &teacher, cfg.distill_temperature) * cfg.raw_kl);
    }
    if cfg.l2_sp > 0.0 {
        if let Some(start) = &trainee.start {
            add_anchor(anchor::l2_sp(&trainee.head, start) * cfg.l2_sp);
        }
    }
    if let Some(a) = anchor {
        out.anchor = value(&a);
        out.total += a;
    }
    let width = batch.teacher.iter().map(Vec::len).max().unwrap_or(0);
    if cfg.distill_weight == 0.0 || width == 0 {
        return out;
    }
    let b = batch.queries.len();
    let mut cols = vec![0i64; b * width];
    let mut teach = vec![0f32; b * width];
    let mut valid = vec![false; b * width];
    for (r, row) in batch.teacher.iter().enumerate() {
        for (j, &(c, s)) in row.iter().enumerate() {
            cols[r * width + j] = c as i64;
            teach[r * width + j] = s;
            valid[r * width + j] = true;
        }
    }
    let shape = [b as i64, width as i64];
    let cols = Tensor::from_slice(&cols).view(shape).to_device(device);
    let student = scores.gather(1, &cols, false);
    let teacher = Tensor::from_slice(&teach).view(shape).to_device(device);
    let valid = Tensor::from_slice(&valid).view(shape).to_device(device);
    let kl = loss::kl_distill(&student, &teacher, &valid, cfg.distill_temperature);
    out.distill = value(&kl);
    out.total += kl * cfg.distill_weight;
    out
}

/// Files of a checkpoint folder.
const CK_HEAD: &str = "head.safetensors";
const CK_OPTIM: &str = "optim.safetensors";
const CK_BACKBONE: &str = "backbone.safetensors";
const CK_STATE: &str = "state.json";

/// `out/checkpoint/state.json`: where both trainers' checkpoint state is.
pub(crate) fn checkpoint_state_path(out: &Path) -> PathBuf {
    checkpoint_dir(out).join(CK_STATE)
}

/// Reads `dir/checkpoint/state.json` if there is one.
pub fn read_checkpoint(dir: &Path) -> Result<Option<CheckpointState>> {
    read_checkpoint_state(dir)
}

/// `dir/checkpoint/state.json` as any trainer's state type, if there is one.
pub(crate) fn read_checkpoint_state<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<Option<T>> {
    let path = checkpoint_state_path(dir);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| TrainingError::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainingError::config(&path, tessera_model::config::json_message(&e)))
}

/// Checks that a checkpoint can resume `cfg`: same head spec, mode and
/// settings (but for [`RESUMABLE_CHANGES`]), at most `cfg.steps` in.
pub fn check_resumable(dir: &Path, state: &CheckpointState, cfg: &TrainConfig) -> Result<()> {
    let path = checkpoint_state_path(dir);
    if state.config.spec != cfg.spec {
        return Err(TrainingError::config(
            &path,
            format!(
                "the checkpoint is of head {} ({}→{}), not the requested {} ({}→{}); \
                 resume with the same head options or use another --out",
                describe(&state.config.spec),
                state.config.spec.in_dim,
                state.config.spec.out_dim,
                describe(&cfg.spec),
                cfg.spec.in_dim,
                cfg.spec.out_dim
            ),
        ));
    }
    if state.config.mode != cfg.mode {
        return Err(TrainingError::config(
            &path,
            format!(
                "the checkpoint is of --mode {:?}, not {:?}",
                state.config.mode, cfg.mode
            ),
        ));
    }
    if state.step > cfg.steps {
        return Err(TrainingError::config(
            &path,
            format!(
                "the checkpoint is at step {}, past --steps {}",
                state.step, cfg.steps
            ),
        ));
    }
    check_settings(&path, &state.config, cfg)
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

fn load_into(path: &Path, named: &HashMap<String, Tensor>) -> Result<()> {
    let mut w = tessera_model::weights::WeightFile::read(path)?;
    let _g = tch::no_grad_guard();
    for (n, t) in named {
        let src = w.take(n, &t.size())?;
        let mut dst = t.shallow_clone();
        dst.copy_(&src.to_device(t.device()));
    }
    Ok(())
}

fn write_checkpoint(
    out: &Path,
    trainee: &Trainee<'_>,
    opt: &AdamW,
    state: &CheckpointState,
) -> Result<()> {
    let mut head = trainee.head_tensors();
    if head.is_empty() {
        // An identity head has no tensors; keep the file so resume finds it.
        head.push((
            "empty".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ));
    }
    let mut files = vec![(CK_HEAD, head)];
    if let Some(bb) = &trainee.backbone {
        files.push((
            CK_BACKBONE,
            bb.variables
                .iter()
                .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu)))
                .collect(),
        ));
    }
    write_checkpoint_dir(out, &files, opt, state)
}

/// Writes `out/checkpoint` whole or not at all: each `(file, tensors)` of
/// the model, the optimiser's moments and `state.json`, written to
/// `checkpoint.tmp` first and then put in place. Both trainers.
pub(crate) fn write_checkpoint_dir(
    out: &Path,
    files: &[(&str, Vec<(String, Tensor)>)],
    opt: &AdamW,
    state: &impl Serialize,
) -> Result<()> {
    let tmp = out.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainingError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainingError::io(&tmp, e))?;
    for (name, tensors) in files {
        Tensor::write_safetensors(tensors, tmp.join(name))?;
    }
    let moments: Vec<(String, Tensor)> = opt
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&moments, tmp.join(CK_OPTIM))?;
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    let sp = tmp.join(CK_STATE);
    std::fs::write(&sp, json).map_err(|e| TrainingError::io(&sp, e))?;
    replace_dir(&tmp, &checkpoint_dir(out))
}

/// Moves folder `tmp` to `dst`, replacing what was there (the old copy is
/// kept until the new one is in place).
pub(crate) fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    let old = dst.with_extension("old");
    if dst.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainingError::io(&old, e))?;
        }
        std::fs::rename(dst, &old).map_err(|e| TrainingError::io(dst, e))?;
    }
    std::fs::rename(tmp, dst).map_err(|e| TrainingError::io(dst, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainingError::io(&old, e))?;
    }
    Ok(())
}

/// A validation record of either trainer: stamped with the step it
/// followed, ranked by the score the best checkpoint is chosen by.
pub(crate) trait DevRecord: Clone + Serialize + StepOf {
    fn stamp(&mut self, step: usize);
    fn score(&self) -> f64;
}

/// The step a step or dev record was logged after.
pub(crate) trait StepOf {
    fn step_of(&self) -> usize;
}

/// `StepOf` for record types with a `step` field.
macro_rules! step_of_field {
    ($($t:ty),*) => {
        $(impl $crate::train::StepOf for $t {
            fn step_of(&self) -> usize {
                self.step
            }
        })*
    };
}
pub(crate) use step_of_field;

step_of_field!(StepLog, DevLog);

impl DevRecord for DevLog {
    fn stamp(&mut self, step: usize) {
        self.step = step;
    }
    fn score(&self) -> f64 {
        self.ndcg10
    }
}

/// Whether step `done` (counted from 1) of `steps` is the last or a
/// multiple of `every` (0: only the last).
pub(crate) fn due(done: usize, steps: usize, every: usize) -> bool {
    done == steps || (every > 0 && done.is_multiple_of(every))
}

/// A run's records as its steps go, kept the same way by both trainers:
/// `metrics.jsonl` (a line per step and per validation), the step and dev
/// records a checkpoint saves, the best validation so far, and the seconds
/// spent in steps.
pub(crate) struct Records<S, D> {
    metrics: PathBuf,
    pub steps: Vec<S>,
    pub dev: Vec<D>,
    pub best: Option<D>,
    pub train_seconds: f64,
}

impl<S: Serialize + Clone + StepOf, D: DevRecord> Records<S, D> {
    /// Nothing recorded yet; the log is `out/metrics.jsonl`.
    pub fn new(out: &Path) -> Self {
        Self {
            metrics: out.join("metrics.jsonl"),
            steps: Vec::new(),
            dev: Vec::new(),
            best: None,
            train_seconds: 0.0,
        }
    }

    /// A fresh run: an empty log.
    pub fn start(&self) -> Result<()> {
        rewrite_metrics(&self.metrics, &[] as &[S], &[] as &[D])
    }

    /// Continues from checkpoint `state` of the run in `out`: its records,
    /// the optimiser's moments, and the log cut back to the checkpoint's
    /// step (later lines were never saved). Returns the step to go on from.
    pub fn resume<C>(
        &mut self,
        out: &Path,
        opt: &mut AdamW,
        state: Checkpoint<C, S, D>,
    ) -> Result<usize> {
        let path = checkpoint_dir(out).join(CK_OPTIM);
        let moments = tessera_model::weights::WeightFile::read(&path)?;
        opt.load_state(moments.tensors, state.step as i64)
            .map_err(|m| TrainingError::config(&path, m))?;
        self.steps = state.steps;
        self.dev = state.dev;
        self.best = state.best;
        self.train_seconds = state.train_seconds;
        rewrite_metrics(&self.metrics, &self.steps, &self.dev)?;
        tracing::info!(step = state.step, "resumed from checkpoint");
        Ok(state.step)
    }

    /// Logs a step that took `seconds`.
    pub fn record_step(&mut self, log: &S, seconds: f64) -> Result<()> {
        self.train_seconds += seconds;
        append_metric(
            &self.metrics,
            &serde_json::json!({"type": "step", "step": log}),
        )?;
        self.steps.push(log.clone());
        Ok(())
    }

    /// Logs a validation (not ranked against the best).
    pub fn record_dev(&mut self, d: D) -> Result<()> {
        append_metric(&self.metrics, &serde_json::json!({"type": "dev", "dev": d}))?;
        self.dev.push(d);
        Ok(())
    }

    /// The validation after step `done` of `steps` when it is due (every
    /// `every` steps and the last): scores `model()` (made only then), logs
    /// the record, and
    /// hands a new best to `on_best` — or, with nothing to validate on, the
    /// last step's model. Returns the record.
    pub fn validate_if_due<M>(
        &mut self,
        model: impl FnOnce() -> M,
        done: usize,
        steps: usize,
        every: usize,
        validate: impl FnOnce(&M) -> Result<Option<D>>,
        on_best: impl FnOnce(&M, Option<&D>) -> Result<()>,
    ) -> Result<Option<D>> {
        if !due(done, steps, every) {
            return Ok(None);
        }
        let model = model();
        let Some(mut d) = validate(&model)? else {
            if done == steps {
                on_best(&model, None)?;
            }
            return Ok(None);
        };
        d.stamp(done);
        self.record_dev(d.clone())?;
        if self.best.as_ref().is_none_or(|b| d.score() > b.score()) {
            on_best(&model, Some(&d))?;
            self.best = Some(d.clone());
        }
        Ok(Some(d))
    }

    /// What `checkpoint/state.json` saves after step `step`.
    pub fn checkpoint<C: Clone>(&self, config: &C, step: usize) -> Checkpoint<C, S, D> {
        Checkpoint {
            config: config.clone(),
            step,
            best: self.best.clone(),
            steps: self.steps.clone(),
            dev: self.dev.clone(),
            train_seconds: self.train_seconds,
        }
    }
}

/// Appends one JSON line to a metrics log.
pub(crate) fn append_metric(path: &Path, v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainingError::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| TrainingError::io(path, e))
}

/// Rewrites a metrics log from the records a resumed run kept: each step's
/// line, each validation after the step it followed (validations before the
/// first step first, any after the last step last). Both trainers' logs.
pub(crate) fn rewrite_metrics<S: Serialize + StepOf, D: Serialize + StepOf>(
    path: &Path,
    steps: &[S],
    dev: &[D],
) -> Result<()> {
    let mut text = String::new();
    let mut dev = dev.iter().peekable();
    let mut flush_dev = |text: &mut String, upto: usize| {
        while let Some(d) = dev.next_if(|d| d.step_of() <= upto) {
            *text += &serde_json::json!({"type": "dev", "dev": d}).to_string();
            text.push('\n');
        }
    };
    flush_dev(&mut text, 0);
    for s in steps {
        text += &serde_json::json!({"type": "step", "step": s}).to_string();
        text.push('\n');
        flush_dev(&mut text, s.step_of());
    }
    flush_dev(&mut text, usize::MAX);
    std::fs::write(path, text).map_err(|e| TrainingError::io(path, e))
}

/// `out/checkpoint`: where either trainer keeps a run's checkpoint.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(positives: usize) -> DrawPlan {
        DrawPlan {
            seed: 5,
            batch_size: 3,
            negatives: 1,
            positives,
            distill_candidates: None,
        }
    }

    /// Queries 0..4, each judged relevant to documents 10q..10q+4 (five
    /// positives), with one mined negative 100 + q.
    fn examples() -> Vec<Example> {
        (0..4)
            .map(|q| Example {
                query: q,
                positives: (10 * q..10 * q + 5).collect(),
                negatives: vec![100 + q],
                teacher: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn several_positives_give_a_row_each_and_mask_each_other() {
        let ex = examples();
        let b = draw(&plan(3), &[(1.0, &ex)], 0);
        assert_eq!(b.queries.len(), 3);
        assert_eq!(b.rows.len(), 9, "three positives for each of three queries");
        assert_eq!(b.targets.len(), 9);
        for (r, (&qi, &t)) in b.rows.iter().zip(&b.targets).enumerate() {
            let q = b.queries[qi];
            let target = b.docs[t as usize];
            assert!(ex[q].positives.contains(&target), "row {r}: {target}");
            for (j, &d) in b.docs.iter().enumerate() {
                let own_positive = ex[q].positives.contains(&d);
                // The target takes part; the query's other positives do not;
                // everything else (other queries' documents, negatives) does.
                let want = j as i64 == t || !own_positive;
                assert_eq!(b.allowed[r][j], want, "row {r}, doc {d}");
            }
        }
        // The positives of one query are distinct.
        for qi in 0..3 {
            let mut t: Vec<i64> = (0..9)
                .filter(|&r| b.rows[r] == qi)
                .map(|r| b.targets[r])
                .collect();
            t.sort_unstable();
            t.dedup();
            assert_eq!(t.len(), 3);
        }
        // More positives than a query has: all of them, once each.
        let all = draw(&plan(50), &[(1.0, &ex)], 0);
        assert_eq!(all.rows.len(), 15);
    }

    #[test]
    fn one_positive_draws_one_row_per_query() {
        let ex = examples();
        let b = draw(&plan(1), &[(1.0, &ex)], 3);
        assert_eq!(b.rows, vec![0, 1, 2]);
        assert_eq!(
            draw(&plan(1), &[(1.0, &ex)], 3),
            b,
            "seeded by (seed, step)"
        );
    }

    #[test]
    fn row_losses_pick_their_query_scores() {
        let ex = examples();
        let b = draw(&plan(2), &[(1.0, &ex)], 1);
        let (nq, nd) = (b.queries.len() as i64, b.docs.len() as i64);
        let scores = Tensor::arange(nq * nd, (Kind::Float, Device::Cpu)).view([nq, nd]) / 10.0;
        let got = f64::try_from(b.info_nce(&scores, 1.0)).unwrap();
        // By hand: mean over rows of logsumexp(allowed scores) − target score.
        let s: Vec<f32> = scores.view([-1]).try_into().unwrap();
        let mut want = 0.0;
        for (r, &qi) in b.rows.iter().enumerate() {
            let row = &s[qi * nd as usize..(qi + 1) * nd as usize];
            let lse = row
                .iter()
                .zip(&b.allowed[r])
                .filter(|(_, &a)| a)
                .map(|(&x, _)| f64::from(x).exp())
                .sum::<f64>()
                .ln();
            want += lse - f64::from(row[b.targets[r] as usize]);
        }
        want /= b.rows.len() as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
}
