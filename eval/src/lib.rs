//! # tessera-eval
//!
//! Evaluation of retrieval runs, free of any torch dependency:
//!
//! - [`beir`]: a BEIR dataset folder (`corpus.jsonl`, `queries.jsonl`,
//!   `qrels/<split>.tsv`): locating files, reading queries.
//! - [`qrels`] and [`run`]: relevance judgements (BEIR TSV or TREC qrels) and
//!   TREC run files (`qid Q0 docid rank score tag`), read and written.
//! - [`metrics`]: nDCG@k, Recall@k, MAP@k, MRR@k (reciprocal rank cut at k)
//!   and P@k with trec_eval's definitions, per query and averaged.
//! - [`stats`]: paired significance tests over per-query values (Student's
//!   paired t-test and a paired randomisation test).
//!
//! The crate never depends on `training` or `engine`.

pub mod beir;
pub mod error;
pub mod metrics;
pub mod qrels;
pub mod run;
pub mod stats;

pub use error::{EvalError, Result};
pub use metrics::{evaluate, Evaluation, Measure};
pub use qrels::Qrels;
pub use run::Run;
