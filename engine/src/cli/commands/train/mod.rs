//! `tessera train heads | reduce | summarize | interpolate`.

use anyhow::Result;
use clap::{Args, Subcommand};

mod heads;
mod interpolate;
mod reduce;
mod summarize;

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
    Heads(Box<heads::HeadsArgs>),
    Reduce(Box<reduce::TrainReduceArgs>),
    Summarize(summarize::SummarizeArgs),
    Interpolate(interpolate::InterpolateArgs),
}

pub fn run(args: TrainArgs) -> Result<()> {
    match args.what {
        TrainWhat::Heads(a) => heads::heads(*a),
        TrainWhat::Reduce(a) => reduce::train_reduce(*a),
        TrainWhat::Summarize(a) => summarize::summarize(a),
        TrainWhat::Interpolate(a) => interpolate::run(a),
    }
}
