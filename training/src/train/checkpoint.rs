//! Checkpoints and run records both trainers keep the same way: the
//! checkpoint folder (written whole, then swapped in), the check that a
//! resumed run is the same run, and `metrics.jsonl` with the best
//! validation so far.

use super::*;

/// Files of a checkpoint folder.
pub(crate) const CK_HEAD: &str = "head.safetensors";
pub(crate) const CK_OPTIM: &str = "optim.safetensors";
pub(crate) const CK_BACKBONE: &str = "backbone.safetensors";
pub(crate) const CK_STATE: &str = "state.json";

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

pub(crate) fn load_into(path: &Path, named: &HashMap<String, Tensor>) -> Result<()> {
    let mut w = tessera_model::weights::WeightFile::read(path)?;
    let _g = tch::no_grad_guard();
    for (n, t) in named {
        let src = w.take(n, &t.size())?;
        let mut dst = t.shallow_clone();
        dst.copy_(&src.to_device(t.device()));
    }
    Ok(())
}

pub(crate) fn write_checkpoint(
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
