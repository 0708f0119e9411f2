//! Fitting models to data: the training data pipeline both trainers share
//! ([`data`]: datasets, backbone-state caches, mined negatives, crops,
//! pseudo-queries), the options they share ([`DataOptions`],
//! [`ScheduleOptions`]), zero-shot validation and robust selection
//! ([`robust`]), and what a run reports and writes ([`report`]).

use std::path::PathBuf;

use tessera_training::train::optim::Decay;

use crate::error::{bail, ensure, Result};
use crate::model::absolute;

pub mod data;
pub mod heads;
pub mod plan;
pub mod reduce;
pub mod report;
pub mod robust;
pub mod summary;

pub use data::{
    add_pseudo_queries, prepare, read_dataset, DatasetData, DevSets, Prep, PseudoFrom, PSEUDO_WORDS,
};
pub use report::{peak_rss_mib, pool_metrics};

/// The learning-rate schedule and gradient clipping (both trainers).
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// Warm-up steps (default: a tenth of --steps).
    pub warmup: Option<usize>,
    /// Decay after warm-up: linear, cosine or constant.
    pub schedule: Decay,
    /// Clip the gradients' global norm to this (0: off).
    pub clip: f64,
}

impl ScheduleOptions {
    /// Warm-up steps of a run of `steps`.
    pub fn warmup(&self, steps: usize) -> usize {
        self.warmup.unwrap_or(steps / 10)
    }
}

/// The data options both trainers (`train heads`, `train reduce`) share:
/// the splits, how the datasets are weighted, how hard negatives are mined
/// and how the dev pools are drawn.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Sampling weight of each --dataset (default 1 each), comma-separated.
    pub weights: Vec<f64>,
    /// Split trained on.
    pub train_split: String,
    /// Split validated on (skipped for datasets without it).
    pub dev_split: String,
    /// Hard negatives mined per train query from each of BM25 and the model.
    pub mine_depth: usize,
    /// Dev candidate pool: top N of BM25 and top N of the model, per query.
    pub pool_depth: usize,
    /// Use at most N dev queries per dataset for validation (0: all).
    pub dev_queries: usize,
}

impl DataOptions {
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

/// The run options both trainers share (`train heads`, `train reduce`):
/// how long, in what batches, how fast, with what seed, and how often to
/// validate and checkpoint. The commands give each trainer its own
/// defaults.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    /// Optimiser steps (0: only evaluate the starting point on dev).
    pub steps: usize,
    /// Queries per step.
    pub batch_queries: usize,
    /// Mined hard negatives per query per step.
    pub negatives: usize,
    /// Judged positives per query per step (at most).
    pub positives: usize,
    /// Learning rate.
    pub lr: f64,
    /// Softmax temperature of the contrastive loss.
    pub temperature: f64,
    /// Seed of the batches drawn (and of what else the trainer draws).
    pub seed: u64,
    /// Validate every N steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Continue the run from its checkpoint.
    pub resume: bool,
}
