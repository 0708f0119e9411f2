//! Summaries of experiments: tables (Markdown) and plots of head-training
//! runs ([`runs`]) and of reduction runs and budget plans
//! ([`reductions`]).

pub mod reductions;
pub mod runs;

pub use reductions::{summarize_reductions, ReductionSummaryOptions};
pub use runs::{summarize_runs, RunSummaryOptions};
