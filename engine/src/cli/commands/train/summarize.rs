//! `tessera train summarize`: flags → [`RunSummaryOptions`] →
//! [`tessera_engine::fit::summary::summarize_runs`], then the table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tessera_engine::fit::summary::{summarize_runs, RunSummaryOptions};

/// Tabulate training runs (mean ± std over seeds per head and dim) and draw
/// their dev curves.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera train summarize runs/*/ --plot docs/experiments/projection-heads-dev\n\n\
    Runs with the same head, output dim and mode form one row; the table (Markdown) gives\n\
    each dataset's best-checkpoint dev nDCG@10 and Recall@100, their mean, the seeds,\n\
    training time and parameters.")]
pub struct SummarizeArgs {
    /// Output folders of `tessera train heads`.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Also draw the mean dev nDCG@10 curve per row to FILE.png and FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// One row per run folder name with its seed (a `-sN` part) left out
    /// — `plain-s1`, `plain-s2` → `plain` — instead of per head, dim and mode.
    #[arg(long)]
    pub by_folder: bool,
}

impl SummarizeArgs {
    /// The library's options for these flags.
    pub fn options(self) -> RunSummaryOptions {
        RunSummaryOptions {
            runs: self.runs,
            plot: self.plot,
            by_folder: self.by_folder,
        }
    }
}

pub fn summarize(args: SummarizeArgs) -> Result<()> {
    let table = summarize_runs(&args.options())?;
    // A closed standard output (`… | head`) ends the command quietly.
    std::io::Write::write_all(&mut std::io::stdout().lock(), table.as_bytes())?;
    Ok(())
}
