//! Search benchmark on an existing index and real query vectors: for each
//! setting of the candidate generator, single-query latency p50/p99 (all
//! threads and one thread), the mean time of each stage, and recall@10
//! against exhaustive search on the same index.
//!
//! The query vectors come from `tessera encode --queries FILE --json` (one
//! JSON object per line with `tokens[].vector`), so the bench needs no
//! libtorch:
//!
//! ```text
//! tessera encode --queries dev-queries.txt --json > queries.jsonl
//! scripts/bench-search --index DIR --queries queries.jsonl \
//!     [--k 10] [--n-probe 8,32] [--n-approx 512,1024] [--n-candidates 64,128] [--threshold 0.4] [--generators plaid,hnsw]
//!     [--repeat 3] [--no-truth]
//! ```
//! Lists run every combination. `--repeat` passes over the queries with all
//! threads (default 3); `--no-truth` skips the exhaustive reference (no
//! recall, a quicker run for profiling). Prints one JSON line per setting
//! and a Markdown table.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use tessera_eval::stats::p50_p99;
use tessera_index::recall_at;
use tessera_index::*;

const USAGE: &str = "usage: scripts/bench-search --index DIR --queries FILE [--k 10] [--n-probe 8,32] [--n-approx 512,1024]
       [--n-candidates 64,128] [--rerank-budget 0,2048] [--probe-budget 0,512] [--max-candidates 1024] [--threshold 0.4]
       [--generators plaid,hnsw] [--repeat 3] [--no-truth] [--truth-index F32_INDEX]
FILE is `tessera encode --queries queries.txt --json` output. Lists run every combination.
example: scripts/bench-search --index ~/.local/share/tessera/cache/indexes/scifact-residual2-HASH --queries devq.jsonl --n-candidates 64,128";

struct Args {
    index: PathBuf,
    queries: PathBuf,
    k: usize,
    generators: Vec<String>,
    n_probe: Vec<usize>,
    n_candidates: Vec<usize>,
    n_approx: Vec<usize>,
    threshold: Vec<f32>,
    repeat: usize,
    /// Skip the exhaustive reference (recall is then not reported).
    no_truth: bool,
    rerank_budget: Vec<usize>,
    probe_budget: Vec<usize>,
    max_candidates: usize,
    /// An f32 index of the same vectors: recall is also measured against
    /// its exhaustive search (exact f32 MaxSim).
    truth_index: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(v: String) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    v.split(',').map(|x| x.parse().unwrap()).collect()
}

fn args() -> Args {
    let d = SearchParams::default();
    let mut a = Args {
        index: PathBuf::new(),
        queries: PathBuf::new(),
        k: 10,
        generators: vec!["plaid".into()],
        n_probe: vec![d.n_probe],
        n_candidates: vec![d.n_candidates],
        n_approx: vec![d.n_approx],
        threshold: vec![d.centroid_threshold],
        repeat: 3,
        no_truth: false,
        rerank_budget: vec![d.rerank_budget],
        probe_budget: vec![d.probe_budget],
        max_candidates: d.max_candidates,
        truth_index: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--index" => a.index = v().into(),
            "--queries" => a.queries = v().into(),
            "--k" | "-k" => a.k = v().parse().unwrap(),
            "--generators" => a.generators = v().split(',').map(String::from).collect(),
            "--n-probe" => a.n_probe = list(v()),
            "--n-candidates" => a.n_candidates = list(v()),
            "--threshold" => a.threshold = list(v()),
            "--n-approx" => a.n_approx = list(v()),
            "--repeat" => a.repeat = v().parse().unwrap(),
            "--no-truth" => a.no_truth = true,
            "--rerank-budget" => a.rerank_budget = list(v()),
            "--probe-budget" => a.probe_budget = list(v()),
            "--max-candidates" => a.max_candidates = v().parse().unwrap(),
            "--truth-index" => a.truth_index = Some(v().into()),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !a.index.as_os_str().is_empty() && !a.queries.as_os_str().is_empty(),
        "usage: --index DIR --queries FILE (see the module docs)"
    );
    a
}

/// Query vectors from `tessera encode --json` output.
fn read_queries(path: &PathBuf) -> Vec<TokenVectors> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(f)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            let dim = v["dim"].as_u64().expect("dim") as usize;
            let data: Vec<f32> = v["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .flat_map(|t| t["vector"].as_array().expect("vector").clone())
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            TokenVectors::new(dim, data).unwrap()
        })
        .collect()
}

fn main() {
    let a = args();
    let index = Index::open(&a.index).unwrap();
    let queries = read_queries(&a.queries);
    let threads = rayon::current_num_threads();
    let exact = SearchParams {
        k: a.k,
        candidates: Candidates::Exhaustive,
        ..SearchParams::default()
    };
    let t = Instant::now();
    let truth: Vec<Vec<Hit>> = queries
        .iter()
        .map(|q| {
            if a.no_truth {
                Vec::new()
            } else {
                index.search(q, &exact).unwrap()
            }
        })
        .collect();
    let exhaustive_ms = t.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
    let f32_truth: Option<Vec<Vec<Hit>>> = a.truth_index.as_ref().map(|p| {
        let f = Index::open(p).unwrap();
        let exact = SearchParams {
            k: 10,
            ..exact.clone()
        };
        queries
            .iter()
            .map(|q| f.search(q, &exact).unwrap())
            .collect()
    });
    let r10_f32_exhaustive = f32_truth.as_ref().map(|ft| {
        ft.iter()
            .zip(&truth)
            .map(|(f, t)| recall_at(f, t, 10))
            .sum::<f64>()
            / queries.len() as f64
    });
    if let Some(r) = r10_f32_exhaustive {
        eprintln!("exhaustive search on this index: recall@10 vs f32 exact {r:.4}");
    }
    eprintln!(
        "{} queries, {} centroids, exhaustive {exhaustive_ms:.1} ms/query",
        queries.len(),
        index.manifest().num_centroids
    );
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for gen in &a.generators {
        for (&rerank_budget, &probe_budget) in a
            .rerank_budget
            .iter()
            .flat_map(|r| a.probe_budget.iter().map(move |b| (r, b)))
        {
            for &n_probe in &a.n_probe {
                for &n_candidates in &a.n_candidates {
                    for (&threshold, &n_approx) in a
                        .threshold
                        .iter()
                        .flat_map(|t| a.n_approx.iter().map(move |m| (t, m)))
                    {
                        let p = SearchParams {
                            n_approx,
                            k: a.k,
                            candidates: gen.parse().unwrap(),
                            n_probe,
                            n_candidates,
                            centroid_threshold: threshold,
                            rerank_budget,
                            probe_budget,
                            max_candidates: a.max_candidates,
                            ..SearchParams::default()
                        };
                        index.search(&queries[0], &p).unwrap(); // warm-up
                        let mut lat = Vec::new();
                        let mut sum = SearchStats::default();
                        let mut r10 = 0.0;
                        let mut r10_f32 = 0.0;
                        for _ in 0..a.repeat {
                            for (i, (q, t)) in queries.iter().zip(&truth).enumerate() {
                                let s = Instant::now();
                                let (hits, st) = index.search_with_stats(q, &p).unwrap();
                                lat.push(s.elapsed().as_secs_f64() * 1e3);
                                r10 += recall_at(t, &hits, 10);
                                if let Some(ft) = &f32_truth {
                                    r10_f32 += recall_at(&ft[i], &hits, 10);
                                }
                                sum.centroid_ms += st.centroid_ms;
                                sum.probe_ms += st.probe_ms;
                                sum.approx_ms += st.approx_ms;
                                sum.exact_ms += st.exact_ms;
                                sum.cells += st.cells;
                                sum.candidates += st.candidates;
                                sum.exact_docs += st.exact_docs;
                            }
                        }
                        let lat1: Vec<f64> = one.install(|| {
                            queries
                                .iter()
                                .map(|q| {
                                    let s = Instant::now();
                                    index.search(q, &p).unwrap();
                                    s.elapsed().as_secs_f64() * 1e3
                                })
                                .collect()
                        });
                        let n = lat.len() as f64;
                        let (all, one) = (p50_p99(&lat), p50_p99(&lat1));
                        let row = serde_json::json!({
                            "generator": gen, "k": a.k, "threads": threads,
                            "n_probe": n_probe, "n_candidates": n_candidates, "threshold": threshold, "n_approx": n_approx,
                            "rerank_budget": rerank_budget, "probe_budget": probe_budget,
                            "p50_ms_all": all.0, "p99_ms_all": all.1,
                            "p50_ms_1t": one.0, "p99_ms_1t": one.1,
                            "centroid_ms": sum.centroid_ms / n, "probe_ms": sum.probe_ms / n,
                            "approx_ms": sum.approx_ms / n, "exact_ms": sum.exact_ms / n,
                            "cells": sum.cells as f64 / n, "candidates": sum.candidates as f64 / n,
                            "exact_docs": sum.exact_docs as f64 / n,
                            "recall10": if a.no_truth { f64::NAN } else { r10 / n },
                            "recall10_f32": if f32_truth.is_some() { r10_f32 / n } else { f64::NAN },
                            "recall10_f32_exhaustive": r10_f32_exhaustive,
                        });
                        println!("{row}");
                        rows.push(row);
                    }
                }
            }
        }
    }
    println!();
    println!("| generator | n_probe | n_approx | n_cand | rerank budget | probe budget | threshold | p50 ms (all) | p99 ms (all) | p50 ms (1 thr) | centroids ms | probe ms | approx ms | exact ms | cells | candidates | exact docs | R@10 vs exhaustive | R@10 vs f32 exact |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.4} | {:.4} |",
            r["generator"].as_str().unwrap(),
            r["n_probe"],
            r["n_approx"],
            r["n_candidates"],
            r["rerank_budget"],
            r["probe_budget"],
            f("threshold"),
            f("p50_ms_all"),
            f("p99_ms_all"),
            f("p50_ms_1t"),
            f("centroid_ms"),
            f("probe_ms"),
            f("approx_ms"),
            f("exact_ms"),
            f("cells"),
            f("candidates"),
            f("exact_docs"),
            f("recall10"),
            f("recall10_f32"),
        );
    }
}
