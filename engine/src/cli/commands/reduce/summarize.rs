//! `tessera reduce summarize`: flags → [`ReductionSummaryOptions`] →
//! [`tessera_engine::fit::summary::summarize_reductions`], then the tables.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tessera_engine::fit::summary::{summarize_reductions, ReductionSummaryOptions};

/// Tabulate reduction runs and plans: dev nDCG@10 per method and dim on
/// the fixed pools (reduction folders of `train reduce`, model folders of
/// `train heads` for small heads), and nDCG@10 against bytes per token on
/// full indexes (`reduce plan --json` files), drawn to PNG and SVG.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera reduce summarize runs/truncate runs/pca runs/orthogonal-s* runs/head-*-s1 \\\n    \
      runs/plan-*.json --plot docs/experiments/reductions/ndcg-vs-bytes\n  \
    tessera reduce summarize runs/speed16-*.json --frontier docs/experiments/reductions/speed-frontier\n\n\
    Runs of one method and dim form a row (mean ± std over seeds); plans form one row per\n\
    method, dim and codec, with each dataset's nDCG@10 and their mean (mean ± std over the\n\
    plans of several runs: one plan per dataset of each run's reduction or head).")]
pub struct SummarizeArgs {
    /// Reduction folders, head model folders and plan JSON files.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Draw nDCG@10 (dev mean) against bytes per token of the plans to
    /// FILE.png and FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Draw each plan's speed/quality frontier to FILE.png and FILE.svg:
    /// share of the reference's nDCG@10 against the speed-up over it, the
    /// best configurations within the budget beside the full-width f16
    /// index's (plans run with --centroids or --probes).
    #[arg(long, value_name = "FILE")]
    pub frontier: Option<PathBuf>,
}

impl SummarizeArgs {
    /// The library's options for these flags.
    pub fn options(self) -> ReductionSummaryOptions {
        ReductionSummaryOptions {
            runs: self.runs,
            plot: self.plot,
            frontier: self.frontier,
        }
    }
}

pub fn summarize(args: SummarizeArgs) -> Result<()> {
    let table = summarize_reductions(&args.options())?;
    // A closed standard output (`… | head`) ends the command quietly.
    std::io::Write::write_all(&mut std::io::stdout().lock(), table.as_bytes())?;
    Ok(())
}
