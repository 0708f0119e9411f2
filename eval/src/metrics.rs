//! IR measures with trec_eval's definitions.
//!
//! - A run's documents are ordered by score, descending; ties are broken by
//!   document id, descending (byte order), exactly as trec_eval does. The
//!   rank column of the file plays no part.
//! - A document is relevant when its grade is ≥ 1. nDCG uses the grades as
//!   gains (`gain / log2(rank + 1)`), and its ideal ranking comes from all
//!   judged relevant documents of the query, not only the retrieved ones.
//! - `Recall@k` = relevant in the top k / all relevant; `P@k` = relevant in
//!   the top k / k; `MAP@k` (trec_eval `map_cut_k`) = sum of precision at
//!   the rank of each relevant document in the top k / all relevant;
//!   `MRR@k` = 1 / rank of the first relevant document if it is in the top
//!   k, else 0.
//! - Averages are over the queries that have judgements and results (as
//!   trec_eval by default), or over every judged query, scoring missing ones
//!   0, with `complete` (trec_eval `-c`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::EvalError;
use crate::qrels::Qrels;
use crate::run::Run;

/// One measure at one cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    Ndcg(usize),
    Recall(usize),
    Map(usize),
    Mrr(usize),
    P(usize),
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ndcg(k) => write!(f, "nDCG@{k}"),
            Self::Recall(k) => write!(f, "Recall@{k}"),
            Self::Map(k) => write!(f, "MAP@{k}"),
            Self::Mrr(k) => write!(f, "MRR@{k}"),
            Self::P(k) => write!(f, "P@{k}"),
        }
    }
}

impl FromStr for Measure {
    type Err = EvalError;

    /// `nDCG@10`, `recall@100`, `map@100`, `mrr@10`, `p@5` (any case).
    fn from_str(s: &str) -> Result<Self, EvalError> {
        let bad = || EvalError::UnknownMeasure(s.to_owned());
        let (name, k) = s.split_once('@').ok_or_else(bad)?;
        let k: usize = k.parse().ok().filter(|&k| k > 0).ok_or_else(bad)?;
        Ok(match name.to_ascii_lowercase().as_str() {
            "ndcg" => Self::Ndcg(k),
            "recall" | "r" => Self::Recall(k),
            "map" | "ap" => Self::Map(k),
            "mrr" | "rr" => Self::Mrr(k),
            "p" | "precision" => Self::P(k),
            _ => return Err(bad()),
        })
    }
}

impl Serialize for Measure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The measures `tessera eval` reports by default.
pub fn default_measures() -> Vec<Measure> {
    vec![
        Measure::Ndcg(10),
        Measure::Recall(100),
        Measure::Map(100),
        Measure::Mrr(10),
    ]
}

/// Results of [`evaluate`].
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub measures: Vec<Measure>,
    /// Mean per measure, in `measures` order.
    pub mean: Vec<f64>,
    /// Query id → value per measure.
    pub per_query: BTreeMap<String, Vec<f64>>,
    /// Judged queries absent from the run.
    pub missing: Vec<String>,
}

impl Evaluation {
    /// Mean of one measure.
    pub fn get(&self, m: Measure) -> Option<f64> {
        self.measures
            .iter()
            .position(|&x| x == m)
            .map(|i| self.mean[i])
    }
}

/// A run's documents in trec_eval order: score descending, then document id
/// descending.
pub fn trec_order(docs: &[(String, f64)]) -> Vec<(&str, f64)> {
    let mut v: Vec<(&str, f64)> = docs.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(a.0)));
    v
}

/// Evaluates `run` against `qrels`.
pub fn evaluate(qrels: &Qrels, run: &Run, measures: &[Measure], complete: bool) -> Evaluation {
    let mut per_query = BTreeMap::new();
    let mut missing = Vec::new();
    let empty = Vec::new();
    for (qid, judged) in &qrels.judgements {
        let docs = match run.results.get(qid) {
            Some(d) => d,
            None => {
                missing.push(qid.clone());
                if !complete {
                    continue;
                }
                &empty
            }
        };
        let ranked = trec_order(docs);
        let grades: Vec<i32> = ranked
            .iter()
            .map(|(d, _)| judged.get(*d).copied().unwrap_or(0))
            .collect();
        let mut ideal: Vec<i32> = judged.values().copied().filter(|&g| g > 0).collect();
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let num_rel = ideal.len();
        let values = measures
            .iter()
            .map(|&m| query_measure(m, &grades, &ideal, num_rel))
            .collect();
        per_query.insert(qid.clone(), values);
    }
    let n = per_query.len().max(1) as f64;
    let mean = (0..measures.len())
        .map(|i| per_query.values().map(|v: &Vec<f64>| v[i]).sum::<f64>() / n)
        .collect();
    Evaluation {
        measures: measures.to_vec(),
        mean,
        per_query,
        missing,
    }
}

fn query_measure(m: Measure, grades: &[i32], ideal: &[i32], num_rel: usize) -> f64 {
    let top = |k: usize| &grades[..grades.len().min(k)];
    match m {
        Measure::Ndcg(k) => {
            let dcg = |g: &[i32]| -> f64 {
                g.iter()
                    .enumerate()
                    .filter(|(_, &g)| g > 0)
                    .map(|(i, &g)| g as f64 / ((i + 2) as f64).log2())
                    .sum()
            };
            let idcg = dcg(&ideal[..ideal.len().min(k)]);
            if idcg > 0.0 {
                dcg(top(k)) / idcg
            } else {
                0.0
            }
        }
        Measure::Recall(k) => {
            if num_rel == 0 {
                0.0
            } else {
                top(k).iter().filter(|&&g| g > 0).count() as f64 / num_rel as f64
            }
        }
        Measure::P(k) => top(k).iter().filter(|&&g| g > 0).count() as f64 / k as f64,
        Measure::Map(k) => {
            if num_rel == 0 {
                return 0.0;
            }
            let mut hits = 0usize;
            let mut sum = 0.0;
            for (i, &g) in top(k).iter().enumerate() {
                if g > 0 {
                    hits += 1;
                    sum += hits as f64 / (i + 1) as f64;
                }
            }
            sum / num_rel as f64
        }
        Measure::Mrr(k) => top(k)
            .iter()
            .position(|&g| g > 0)
            .map_or(0.0, |i| 1.0 / (i + 1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qrels(v: &[(&str, &str, i32)]) -> Qrels {
        let mut q = Qrels::default();
        for (a, b, r) in v {
            q.judgements
                .entry(a.to_string())
                .or_default()
                .insert(b.to_string(), *r);
        }
        q
    }

    fn run(v: &[(&str, &str, f64)]) -> Run {
        let mut r = Run::default();
        for (a, b, s) in v {
            r.results
                .entry(a.to_string())
                .or_default()
                .push((b.to_string(), *s));
        }
        r
    }

    #[test]
    fn parses_measure_names() {
        assert_eq!("nDCG@10".parse::<Measure>().unwrap(), Measure::Ndcg(10));
        assert_eq!(
            "recall@100".parse::<Measure>().unwrap(),
            Measure::Recall(100)
        );
        assert_eq!("MRR@10".parse::<Measure>().unwrap(), Measure::Mrr(10));
        assert!("ndcg".parse::<Measure>().is_err());
        assert!("ndcg@0".parse::<Measure>().is_err());
        assert!("foo@3".parse::<Measure>().is_err());
        assert_eq!(Measure::Map(100).to_string(), "MAP@100");
    }

    #[test]
    fn hand_computed_values() {
        // Relevant: a (2), c (1); retrieved b, a, c.
        let q = qrels(&[("1", "a", 2), ("1", "c", 1), ("1", "x", 0)]);
        let r = run(&[("1", "b", 3.0), ("1", "a", 2.0), ("1", "c", 1.0)]);
        let ms = [
            Measure::Ndcg(3),
            Measure::Recall(2),
            Measure::P(2),
            Measure::Map(3),
            Measure::Mrr(1),
            Measure::Mrr(3),
        ];
        let e = evaluate(&q, &r, &ms, false);
        let dcg = 2.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        let want = [dcg / idcg, 0.5, 0.5, (0.5 + 2.0 / 3.0) / 2.0, 0.0, 0.5];
        for (got, want) in e.mean.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn ties_break_by_docid_descending_and_ignore_file_order() {
        let q = qrels(&[("1", "a", 1)]);
        // Same score: trec_eval puts "b" before "a".
        let r = run(&[("1", "a", 1.0), ("1", "b", 1.0)]);
        let e = evaluate(&q, &r, &[Measure::Mrr(10)], false);
        assert_eq!(e.mean[0], 0.5);
    }

    #[test]
    fn missing_queries_count_only_when_complete() {
        let q = qrels(&[("1", "a", 1), ("2", "b", 1)]);
        let r = run(&[("1", "a", 1.0)]);
        let e = evaluate(&q, &r, &[Measure::P(1)], false);
        assert_eq!((e.mean[0], e.missing.clone()), (1.0, vec!["2".to_string()]));
        let e = evaluate(&q, &r, &[Measure::P(1)], true);
        assert_eq!(e.mean[0], 0.5);
    }
}
