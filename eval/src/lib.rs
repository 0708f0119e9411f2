//! # tessera-eval
//!
//! Evaluation of retrieval runs, free of any torch dependency: reading BEIR
//! datasets (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`) and TREC
//! run files, and computing nDCG, Recall, MAP, MRR and P@k with trec_eval's
//! definitions. The readers and metrics land with the evaluation milestone;
//! this crate exists now so the dependency graph is fixed from the start:
//! `eval` never depends on `training` or `engine`.
