//! `tessera reduce plan` (measure every (dim, codec) pair that fits a byte
//! budget on a dev split and recommend one) and `tessera reduce summarize`
//! (tables and plots of reduction runs and plans).

use anyhow::Result;
use clap::{Args, Subcommand};

mod plan;
mod summarize;

use plan::PlanArgs;
use summarize::SummarizeArgs;

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

pub fn run(args: ReduceArgs) -> Result<()> {
    match args.command {
        ReduceCommand::Plan(p) => plan::plan(*p),
        ReduceCommand::Summarize(a) => summarize::summarize(a),
    }
}
