//! `tessera eval --against-exact`: what the approximate search costs
//! against exact MaxSim over the same encoding.
//!
//! The loss is split by stage. Exact f32 MaxSim over the unquantised
//! vectors is the reference; exhaustive MaxSim over the compressed index
//! (every document, decoded vectors) loses only what the codec loses; the
//! index's candidate search (PLAID or HNSW) loses the rest. Each is
//! measured at `k = 10` — what most calls ask for, where the exact re-rank
//! budget is smallest — and at the run's depth, as nDCG@10 with its paired
//! difference to exact f32 (t-test and sign-flip randomisation, as `eval
//! --compare` does) and as recall@10 against both exact rankings.

use std::collections::HashSet;

use crate::error::Result;
use serde::{Deserialize, Serialize};
use tessera_eval::beir::Query;
use tessera_eval::{evaluate, stats, Measure, Qrels, Run};
use tessera_index::{Candidates, Index, SearchParams};

use crate::progress;
use crate::retrieve::{Engine, Retriever};

/// Paired difference of one ranking's nDCG@10 against exact f32 MaxSim.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    /// Mean of `this − exact f32` over the queries.
    pub diff: f64,
    /// Two-sided p-value of the paired t-test.
    pub p_t: f64,
    /// Two-sided p-value of the paired randomisation test (10,000 flips).
    pub p_rand: f64,
}

/// The index's own search at one `k`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AtK {
    pub k: usize,
    pub ndcg10: f64,
    /// Against exact f32 MaxSim (absent without the f32 vectors).
    pub vs_f32: Option<Delta>,
    /// Recall@10 against exhaustive MaxSim over the same index.
    pub recall10_vs_exhaustive: f64,
    /// Recall@10 against exact f32 MaxSim.
    pub recall10_vs_f32: Option<f64>,
    /// Per-query search latency at this `k` (query encoding excluded).
    pub search_p50_ms: f64,
    pub search_p99_ms: f64,
    /// Queries per second of search alone, one query at a time.
    pub queries_per_s: f64,
}

/// Fidelity of a dataset run against exact MaxSim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fidelity {
    /// nDCG@10 of exact f32 MaxSim over the unquantised vectors.
    pub exact_f32_ndcg10: Option<f64>,
    /// nDCG@10 of exhaustive MaxSim over the compressed index: the codec's
    /// loss alone.
    pub exhaustive_ndcg10: f64,
    pub exhaustive_vs_f32: Option<Delta>,
    /// The index's search at k = 10 and at the run's depth.
    pub at: Vec<AtK>,
}

/// Seed of the randomisation tests (reports are reproducible).
const SEED: u64 = 0x7e55e7a;
const TRIALS: usize = 10_000;

/// Per-query nDCG@10 of `run`, every judged query counted (0 when absent).
fn ndcg10(qrels: &Qrels, run: &Run) -> (f64, Vec<f64>) {
    let e = evaluate(qrels, run, &[Measure::Ndcg(10)], true);
    let per: Vec<f64> = e.per_query.values().map(|v| v[0]).collect();
    (e.mean[0], per)
}

fn delta(reference: &[f64], this: &[f64]) -> Delta {
    let t = stats::paired(reference, this, TRIALS, SEED);
    Delta {
        diff: t.mean_diff,
        p_t: t.p_t,
        p_rand: t.p_rand,
    }
}

/// Recall@10 of `run` against the top 10 of `truth`, over `queries`.
pub fn recall_at_10(queries: &[Query], run: &Run, truth: &Run) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for q in queries {
        let truth: HashSet<&str> = tessera_eval::metrics::trec_order(&truth.results[&q.id])
            .iter()
            .take(10)
            .map(|(d, _)| *d)
            .collect();
        let got = tessera_eval::metrics::trec_order(&run.results[&q.id]);
        hit += got
            .iter()
            .take(10)
            .filter(|(d, _)| truth.contains(*d))
            .count();
        total += truth.len();
    }
    hit as f64 / total.max(1) as f64
}

/// One pass of every query with `params`, behind a progress bar.
fn search_all(
    engine: &Engine,
    queries: &[Query],
    retriever: Retriever,
    params: &SearchParams,
    label: &str,
) -> Result<(Run, Vec<f64>)> {
    let pb = progress::bar(Some(queries.len() as u64), "queries");
    pb.set_prefix(label.to_owned());
    let (run, timing) = engine.run_queries(queries, retriever, params, &pb)?;
    pb.finish_and_clear();
    Ok((run, timing.latencies_ms))
}

/// Measures `engine`'s search (`made`: its run at `params.k` and the
/// latencies of that run) against exhaustive MaxSim over the same index
/// and, with `f32_index` (the same vectors unquantised), exact MaxSim.
pub fn measure(
    engine: &mut Engine,
    f32_index: Option<Index>,
    queries: &[Query],
    qrels: &Qrels,
    retriever: Retriever,
    params: &SearchParams,
    made: (&Run, &[f64]),
) -> Result<Fidelity> {
    let (run, run_latencies_ms) = made;
    let exact = SearchParams {
        k: 10,
        candidates: Candidates::Exhaustive,
        ..params.clone()
    };
    let (exhaustive, _) = search_all(engine, queries, retriever, &exact, "exhaustive search")?;
    // The f32 index is searched through the same engine (its encoder),
    // swapped in for that pass and out again whatever the outcome.
    let f32_run = match f32_index {
        Some(mut f32_index) => {
            std::mem::swap(&mut engine.index, &mut f32_index);
            let r = search_all(engine, queries, retriever, &exact, "exact f32 search");
            std::mem::swap(&mut engine.index, &mut f32_index);
            Some(r?.0)
        }
        None => None,
    };
    let f32_ndcg = f32_run.as_ref().map(|r| ndcg10(qrels, r));
    let (exhaustive_ndcg10, exhaustive_per) = ndcg10(qrels, &exhaustive);

    // The index's search at k = 10 (unless that is the run) and at the
    // run's depth.
    let at10 = match params.k {
        10 => None,
        _ => {
            let p10 = SearchParams {
                k: 10,
                ..params.clone()
            };
            Some(search_all(
                engine,
                queries,
                retriever,
                &p10,
                "search at k = 10",
            )?)
        }
    };
    let ks = at10.iter().map(|(r, lat)| (10, r, lat.as_slice())).chain([(
        params.k,
        run,
        run_latencies_ms,
    )]);
    let mut at = Vec::new();
    for (k, r, lat) in ks {
        let (nd, per) = ndcg10(qrels, r);
        let (p50, p99) = stats::p50_p99(lat);
        at.push(AtK {
            k,
            ndcg10: nd,
            vs_f32: f32_ndcg.as_ref().map(|(_, f)| delta(f, &per)),
            recall10_vs_exhaustive: recall_at_10(queries, r, &exhaustive),
            recall10_vs_f32: f32_run.as_ref().map(|t| recall_at_10(queries, r, t)),
            search_p50_ms: p50,
            search_p99_ms: p99,
            queries_per_s: lat.len() as f64 / (lat.iter().sum::<f64>() / 1e3).max(1e-9),
        });
    }
    Ok(Fidelity {
        exact_f32_ndcg10: f32_ndcg.as_ref().map(|(m, _)| *m),
        exhaustive_ndcg10,
        exhaustive_vs_f32: f32_ndcg.as_ref().map(|(_, f)| delta(f, &exhaustive_per)),
        at,
    })
}

/// The fidelity table: a row per dataset (and their mean), nDCG@10 of exact
/// f32 MaxSim, of exhaustive search over the index, and of the index's
/// search at each `k`, with the differences in points, recall@10 against
/// exhaustive search, and the search's latency and single-stream QPS.
pub fn print(w: &mut impl std::io::Write, rows: &[(String, &Fidelity)]) -> std::io::Result<()> {
    let Some((_, first)) = rows.first() else {
        return Ok(());
    };
    let ks: Vec<usize> = first.at.iter().map(|a| a.k).collect();
    writeln!(
        w,
        "\nAgainst exact MaxSim (nDCG@10; Δ in points against exact f32, * p < 0.05 in both paired tests; R@10: recall@10 against the index's exhaustive search)\n"
    )?;
    write!(w, "| dataset | exact f32 | exhaustive (Δ) |")?;
    for k in &ks {
        write!(w, " k = {k} (Δ) | R@10 | p50 / p99 ms | QPS |")?;
    }
    writeln!(w)?;
    write!(w, "|---|---|---|")?;
    for _ in &ks {
        write!(w, "---|---|---|---|")?;
    }
    writeln!(w)?;
    let pts = |d: &Option<Delta>| match d {
        Some(d) => {
            let star = if d.p_t < 0.05 && d.p_rand < 0.05 {
                "*"
            } else {
                ""
            };
            format!(" ({:+.2}{star})", 100.0 * d.diff)
        }
        None => String::new(),
    };
    let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.4}"));
    for (name, f) in rows {
        write!(
            w,
            "| {name} | {} | {:.4}{} |",
            opt(f.exact_f32_ndcg10),
            f.exhaustive_ndcg10,
            pts(&f.exhaustive_vs_f32)
        )?;
        for a in &f.at {
            write!(
                w,
                " {:.4}{} | {:.4} | {:.2} / {:.2} | {:.0} |",
                a.ndcg10,
                pts(&a.vs_f32),
                a.recall10_vs_exhaustive,
                a.search_p50_ms,
                a.search_p99_ms,
                a.queries_per_s
            )?;
        }
        writeln!(w)?;
    }
    if rows.len() > 1 {
        let n = rows.len() as f64;
        let mean = |g: &dyn Fn(&Fidelity) -> Option<f64>| -> Option<f64> {
            let v: Option<Vec<f64>> = rows.iter().map(|(_, f)| g(f)).collect();
            v.map(|v| v.iter().sum::<f64>() / n)
        };
        let mean_pts = |g: &dyn Fn(&Fidelity) -> Option<f64>| {
            mean(g).map_or(String::new(), |d| format!(" ({:+.2})", 100.0 * d))
        };
        write!(
            w,
            "| mean | {} | {:.4}{} |",
            opt(mean(&|f| f.exact_f32_ndcg10)),
            mean(&|f| Some(f.exhaustive_ndcg10)).unwrap_or(0.0),
            mean_pts(&|f| f.exhaustive_vs_f32.map(|d| d.diff))
        )?;
        for (i, _) in ks.iter().enumerate() {
            let at = |f: &Fidelity| f.at.get(i).cloned();
            write!(
                w,
                " {:.4}{} | {:.4} | – | – |",
                mean(&|f| at(f).map(|a| a.ndcg10)).unwrap_or(0.0),
                mean_pts(&|f| at(f).and_then(|a| a.vs_f32.map(|d| d.diff))),
                mean(&|f| at(f).map(|a| a.recall10_vs_exhaustive)).unwrap_or(0.0),
            )?;
        }
        writeln!(w)?;
    }
    Ok(())
}
