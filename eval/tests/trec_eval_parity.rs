//! Metrics against values from independent implementations (pytrec_eval =
//! trec_eval 9 as a library, RR@k from its uncut recip_rank), produced by
//! `scripts/make-eval-fixtures.py` on the fixtures next to this file.

use std::path::{Path, PathBuf};

use tessera_eval::{evaluate, stats, Measure, Qrels, Run};

// The package folder as `cargo test` gives it at run time (the compile-time
// path is a fallback): a test binary reused from another checkout that shares
// the target folder must read this checkout's files.
fn fixture(name: &str) -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fixtures")
    .join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

#[test]
fn every_measure_matches_trec_eval_per_query() {
    let qrels = Qrels::read(&fixture("qrels.tsv")).unwrap();
    let run = Run::read(&fixture("run.trec")).unwrap();
    let want = expected();
    let want = want["per_query"].as_object().unwrap();
    let names: Vec<String> = want
        .values()
        .next()
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let measures: Vec<Measure> = names.iter().map(|n| n.parse().unwrap()).collect();
    let e = evaluate(&qrels, &run, &measures, false);
    assert_eq!(e.per_query.len(), want.len(), "evaluated queries");
    assert_eq!(e.missing, vec!["q7".to_string()]);
    let mut checked = 0;
    for (q, row) in want {
        let got = &e.per_query[q];
        for (i, name) in names.iter().enumerate() {
            let w = row[name].as_f64().unwrap();
            assert!(
                (got[i] - w).abs() < 1e-9,
                "{q} {name}: tessera {} vs reference {w}",
                got[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, want.len() * 25);
}

#[test]
fn means_are_over_evaluated_queries_and_complete_adds_zeros() {
    let qrels = Qrels::read(&fixture("qrels.tsv")).unwrap();
    let run = Run::read(&fixture("run.trec")).unwrap();
    let want = expected();
    let rows = want["per_query"].as_object().unwrap();
    let m = Measure::Ndcg(10);
    let mean: f64 = rows
        .values()
        .map(|r| r["nDCG@10"].as_f64().unwrap())
        .sum::<f64>()
        / rows.len() as f64;
    let e = evaluate(&qrels, &run, &[m], false);
    assert!((e.get(m).unwrap() - mean).abs() < 1e-9);
    let c = evaluate(&qrels, &run, &[m], true);
    let n = rows.len() as f64;
    assert!((c.get(m).unwrap() - mean * n / (n + 1.0)).abs() < 1e-9);
}

#[test]
fn paired_t_test_matches_scipy() {
    let want = expected();
    for t in want["ttests"].as_array().unwrap() {
        let v = |k: &str| -> Vec<f64> {
            t[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let r = stats::paired(&v("a"), &v("b"), 2000, 7);
        let (ts, p) = (t["t"].as_f64().unwrap(), t["p"].as_f64().unwrap());
        assert!((r.t - ts).abs() < 1e-9, "t {} vs {ts}", r.t);
        assert!((r.p_t - p).abs() < 1e-7, "p {} vs {p}", r.p_t);
        // The randomisation test agrees on the verdict where it is clear.
        if p < 0.01 {
            assert!(r.p_rand < 0.02, "{r:?}");
        }
        if p > 0.5 {
            assert!(r.p_rand > 0.3, "{r:?}");
        }
    }
}

#[test]
fn run_files_round_trip_and_bad_lines_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::read(&fixture("run.trec")).unwrap();
    let p = dir.path().join("r.trec");
    run.write(&p, "t").unwrap();
    let back = Run::read(&p).unwrap();
    assert_eq!(back.results.len(), run.results.len());
    for (q, docs) in &run.results {
        let b = &back.results[q];
        assert_eq!(b.len(), docs.len());
        for ((d1, s1), (d2, s2)) in docs.iter().zip(b) {
            assert_eq!(d1, d2);
            assert!((s1 - s2).abs() < 1e-6);
        }
    }
    std::fs::write(&p, "q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 high t\n").unwrap();
    let e = Run::read(&p).unwrap_err().to_string();
    assert!(e.contains("r.trec:2") && e.contains("high"), "{e}");
    std::fs::write(&p, "q1 d1 1\n").unwrap();
    let e = Qrels::read(&p).unwrap();
    assert_eq!(e.get("q1").unwrap()["d1"], 1);
    std::fs::write(&p, "query-id\tcorpus-id\tscore\nq1\td1\tx\n").unwrap();
    let e = Qrels::read(&p).unwrap_err().to_string();
    assert!(e.contains("r.trec:2"), "{e}");
}
