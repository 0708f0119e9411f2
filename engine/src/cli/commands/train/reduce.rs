//! `tessera train reduce`: flags → [`ReduceTrainOptions`] →
//! [`tessera_engine::fit::reduce::train_reduction`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tessera_engine::fit::reduce::{train_reduction, ReduceTrainOptions};
use tessera_engine::fit::PseudoFrom;
use tessera_model::reduction::Method;

use crate::cli::args::{DataArgs, ModelArgs, ScheduleArgs, TrainerArgs};

fn parse_pseudo_from(s: &str) -> Result<PseudoFrom, String> {
    s.parse()
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
#[command(
    mut_arg("steps", |a| a.default_value("200")),
    mut_arg("batch_queries", |a| a.default_value("16")),
    mut_arg("negatives", |a| a.default_value("16")),
    mut_arg("lr", |a| a.default_value("0.003")),
    mut_arg("eval_every", |a| a.default_value("50")),
    mut_arg("checkpoint_every", |a| a.default_value("50"))
)]
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
    #[command(flatten)]
    pub trainer: TrainerArgs,
    #[command(flatten)]
    pub sched: ScheduleArgs,
    /// Temperature of the teacher and student softmax over candidates.
    #[arg(long, default_value_t = 2.0)]
    pub distill_temperature: f64,
    /// Weight of the contrastive loss on the labels (0: distillation only).
    #[arg(long, default_value_t = 1.0)]
    pub contrastive_weight: f64,
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
    #[arg(long, default_value = "spans", value_parser = parse_pseudo_from)]
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

impl TrainReduceArgs {
    /// The library's options for these flags.
    pub fn options(self) -> ReduceTrainOptions {
        ReduceTrainOptions {
            datasets: self.datasets,
            data: self.data.options(),
            method: self.method,
            dims: self.dims,
            pca_tokens: self.pca_tokens,
            sched: self.sched.options(),
            distill_temperature: self.distill_temperature,
            contrastive_weight: self.contrastive_weight,
            relative: self.relative,
            pseudo_queries: self.pseudo_queries,
            pseudo_from: self.pseudo_from,
            centre_queries: self.centre_queries,
            centre_documents: self.centre_documents,
            out: self.out,
            model: self.model.options(),
            trainer: self.trainer.options(),
        }
    }
}

pub fn train_reduce(args: TrainReduceArgs) -> Result<()> {
    train_reduction(&args.options())?;
    Ok(())
}
