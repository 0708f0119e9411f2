//! `tessera eval` and batch search end to end with the tiny test model:
//! runs written and scored, collections with empty documents and dangling
//! judgements, several datasets with in-domain and zero-shot means, and
//! comparisons of reports.

mod common;

use std::path::{Path, PathBuf};

use common::{err, ok, run, sample, tiny};

#[test]
fn batch_search_writes_a_run_and_eval_scores_it() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("mini");
    std::fs::create_dir_all(ds.join("qrels")).unwrap();
    std::fs::copy(sample(), ds.join("corpus.jsonl")).unwrap();
    std::fs::write(
        ds.join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"what causes tides\"}\n{\"_id\": \"q2\", \"text\": \"rust memory safety\"}\n{\"_id\": \"q3\", \"text\": \"unjudged\"}\n",
    )
    .unwrap();
    std::fs::write(
        ds.join("qrels/dev.tsv"),
        "query-id\tcorpus-id\tscore\nq1\tdoc01\t1\nq2\tdoc11\t2\n",
    )
    .unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let tiny = tiny();
    let report = dir.path().join("bm25.json");
    let args = |retriever: &str, out: &Path| -> Vec<String> {
        [
            "eval",
            "--dataset",
            ds.to_str().unwrap(),
            "--split",
            "dev",
            "--retriever",
            retriever,
            "--model",
            &tiny,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args("bm25", &report);
    let o = run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &envs,
        None,
    );
    let table = ok(&o);
    assert!(
        table.contains("nDCG@10") && table.contains("| 2 |"),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // BM25 puts both judged documents first: every measure is 1.
    assert_eq!(r["measures"][0][0], "nDCG@10");
    assert_eq!(r["measures"][0][1], 1.0);
    assert!(report.with_extension("trec").exists());
    // BM25 alone needs no vectors: the corpus's text was indexed, nothing
    // was encoded.
    assert!(home.join("cache/text").exists());
    assert!(!home.join("cache/encodings").exists());
    assert!(String::from_utf8_lossy(&o.stderr).contains("BM25 needs no vectors"));
    // A ColBERT run encodes and indexes the corpus once (and caches it)...
    let a = args("colbert", &dir.path().join("first.json"));
    ok(&run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &envs,
        None,
    ));

    // The second run reuses the cached index.
    let report2 = dir.path().join("colbert.json");
    let mut a = args("colbert", &report2);
    a.push("--against-exact".into());
    let o = run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &envs,
        None,
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("using cached index"));
    // The cache follows the corpus's bytes, not its file: rewritten with
    // the same bytes (a new modification time) it is still used; with one
    // byte more it is not.
    let corpus = ds.join("corpus.jsonl");
    let bytes = std::fs::read(&corpus).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&corpus, &bytes).unwrap();
    let again = |out: &Path| {
        let a = args("colbert", out);
        let o = run(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &envs,
            None,
        );
        ok(&o);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = again(&dir.path().join("same-bytes.json"));
    assert!(e.contains("using cached index"), "{e}");
    let mut more = bytes.clone();
    more.push(b'\n');
    std::fs::write(&corpus, &more).unwrap();
    let e = again(&dir.path().join("one-more-byte.json"));
    assert!(!e.contains("using cached index"), "{e}");
    std::fs::write(&corpus, &bytes).unwrap();
    let r2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report2).unwrap()).unwrap();
    assert!(r2["recall10_vs_exact"].as_f64().unwrap() > 0.0);

    let cmp = ok(&run(
        &[
            "eval",
            "--compare",
            report.to_str().unwrap(),
            report2.to_str().unwrap(),
        ],
        &[],
        None,
    ));
    assert!(cmp.contains("p (t)") && cmp.contains("nDCG@10"), "{cmp}");

    // search --queries writes a TREC run that eval --run reads.
    let idx = std::fs::read_dir(home.join("cache/indexes"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let run_file = dir.path().join("run.trec");
    ok(&run(
        &[
            "search",
            "--index",
            idx.to_str().unwrap(),
            "--retriever",
            "bm25",
            "--queries",
            ds.join("queries.jsonl").to_str().unwrap(),
            "--run-out",
            run_file.to_str().unwrap(),
            "-k",
            "20",
        ],
        &[],
        None,
    ));
    let text = std::fs::read_to_string(&run_file).unwrap();
    let first: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    assert_eq!(
        (first[0], first[1], first[2], first[3]),
        ("q1", "Q0", "doc01", "1")
    );
    let out = ok(&run(
        &[
            "eval",
            "--run",
            run_file.to_str().unwrap(),
            "--qrels",
            ds.join("qrels/dev.tsv").to_str().unwrap(),
        ],
        &[],
        None,
    ));
    assert!(out.contains("| 1.0000 |"), "{out}");
}

/// A BEIR folder `dir/name` with a corpus of `docs` (`(id, title, text)`),
/// queries and one split's qrels.
fn dataset(
    dir: &Path,
    name: &str,
    docs: &[(&str, &str, &str)],
    queries: &[(&str, &str)],
    split: &str,
    qrels: &[(&str, &str, u32)],
) -> PathBuf {
    let ds = dir.join(name);
    std::fs::create_dir_all(ds.join("qrels")).unwrap();
    let corpus: String = docs
        .iter()
        .map(|(id, t, x)| serde_json::json!({"_id": id, "title": t, "text": x}).to_string() + "\n")
        .collect();
    std::fs::write(ds.join("corpus.jsonl"), corpus).unwrap();
    let q: String = queries
        .iter()
        .map(|(id, t)| serde_json::json!({"_id": id, "text": t}).to_string() + "\n")
        .collect();
    std::fs::write(ds.join("queries.jsonl"), q).unwrap();
    let mut r = String::from("query-id\tcorpus-id\tscore\n");
    for (q, d, g) in qrels {
        r.push_str(&format!("{q}\t{d}\t{g}\n"));
    }
    std::fs::write(ds.join(format!("qrels/{split}.tsv")), r).unwrap();
    ds
}

/// `eval --model tiny --device cpu --threads 1 REST…`
fn eval_args<'a>(tiny: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", "--model", tiny, "--device", "cpu", "--threads", "1"];
    a.extend_from_slice(rest);
    a
}

/// Cranfield ships empty documents, one of them judged: a benchmark must
/// run as it ships. Qrels naming a document or query that is not there
/// are reported with counts.
#[test]
fn eval_runs_a_collection_with_empty_documents_and_reports_dangling_qrels() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(
        dir.path(),
        "cran",
        &[
            (
                "1",
                "experimental investigation of the aerodynamics of a wing",
                "the slipstream of a propeller over a wing was studied",
            ),
            ("2", "", ""),
            ("3", "boundary layer", "simple shear flow past a flat plate"),
            ("4", "  ", ""),
            ("5", "heat transfer", "heat transfer in supersonic flow"),
        ],
        &[
            ("q1", "propeller slipstream over a wing"),
            ("q2", "empty"),
            ("q3", "heat transfer supersonic"),
        ],
        "test",
        &[
            ("q1", "1", 2),
            ("q2", "2", 1),
            ("q3", "5", 1),
            ("q3", "99", 1),
            ("q9", "3", 1),
        ],
    );
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let tiny = tiny();
    let out = dir.path().join("r.json");
    let a = eval_args(
        &tiny,
        &[
            "--dataset",
            ds.to_str().unwrap(),
            "--split",
            "test",
            "--retriever",
            "bm25",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let o = run(&a, &envs, None);
    let table = ok(&o);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("2 empty documents"), "{log}");
    assert!(
        log.contains("judges 1 queries that queries.jsonl lacks (e.g. q9)"),
        "{log}"
    );
    assert!(
        log.contains("names 1 documents that are not in the index (e.g. 99)"),
        "{log}"
    );
    // q1, q2, q3 are evaluated (q9 cannot be searched).
    assert!(table.contains("| 3 |"), "{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["per_query"]["q1"]["nDCG@10"], 1.0);
    // The empty judged document is never retrieved: q2 scores 0.
    assert_eq!(r["per_query"]["q2"]["nDCG@10"], 0.0);
    // The same with ColBERT (and its exactness check), on the cached encoding.
    let a = eval_args(
        &tiny,
        &[
            "--dataset",
            ds.to_str().unwrap(),
            "--split",
            "test",
            "--against-exact",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let o = run(&a, &envs, None);
    let table = ok(&o);
    assert!(table.contains("R@10 vs f32 exact"), "{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["per_query"]["q2"]["nDCG@10"], 0.0);
    assert!(r["recall10_vs_f32"].as_f64().unwrap() > 0.5);
    // What the search costs against exact MaxSim: exact f32's nDCG@10,
    // exhaustive search over the index, and the index's search at k = 10
    // and at the run's depth (100), each paired against exact f32.
    assert!(table.contains("Against exact MaxSim"), "{table}");
    let f = &r["fidelity"];
    let exact = f["exact_f32_ndcg10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&exact), "{f}");
    let at = f["at"].as_array().unwrap();
    assert_eq!(
        at.iter()
            .map(|a| a["k"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [10, 100]
    );
    // nDCG@10 of the run at depth 100 is the report's own.
    assert_eq!(at[1]["ndcg10"], r["measures"][0][1]);
    for a in at {
        let d = a["vs_f32"]["diff"].as_f64().unwrap();
        assert!(
            (a["ndcg10"].as_f64().unwrap() - exact - d).abs() < 1e-9,
            "{a}"
        );
        assert!(a["search_p50_ms"].as_f64().unwrap() > 0.0, "{a}");
    }
    let run_text = std::fs::read_to_string(out.with_extension("trec")).unwrap();
    for line in run_text.lines().filter(|l| l.starts_with("q1 ")) {
        let doc = line.split(' ').nth(2).unwrap();
        assert!(
            doc != "2" && doc != "4",
            "an empty document ranked for q1: {line}"
        );
    }
}

/// Several datasets in one run: a row each and their mean; combined
/// reports compare per dataset and on the mean.
#[test]
fn eval_over_several_datasets_prints_the_mean_and_compares_combined_reports() {
    let dir = tempfile::tempdir().unwrap();
    let a = dataset(
        dir.path(),
        "alpha",
        &[
            ("a1", "tides", "the moon raises ocean tides"),
            ("a2", "rust", "memory safety without a garbage collector"),
            ("a3", "bread", "yeast makes dough rise"),
        ],
        &[("q1", "ocean tides"), ("q2", "memory safety")],
        "dev",
        &[("q1", "a1", 1), ("q2", "a2", 1)],
    );
    let b = dataset(
        dir.path(),
        "beta",
        &[
            ("b1", "volcano", "molten rock erupts"),
            ("b2", "glacier", "ice flows slowly downhill"),
        ],
        &[("q1", "molten rock"), ("q3", "ice")],
        "test",
        &[("q1", "b1", 1), ("q3", "b2", 1)],
    );
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let tiny = tiny();
    let b_spec = format!("{}:test", b.display());
    let combined = |retriever: &str| {
        let out = dir.path().join(format!("all-{retriever}.json"));
        let args = eval_args(
            &tiny,
            &[
                "--dataset",
                a.to_str().unwrap(),
                "--dataset",
                &b_spec,
                "--retriever",
                retriever,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let table = ok(&run(&args, &envs, None));
        (out, table)
    };
    let (bm25, table) = combined("bm25");
    assert!(
        table.contains("alpha-dev-bm25") && table.contains("beta-test-bm25"),
        "{table}"
    );
    assert!(table.contains("mean (2 datasets)"), "{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bm25).unwrap()).unwrap();
    assert_eq!(r["reports"].as_array().unwrap().len(), 2);
    let per: Vec<f64> = r["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["measures"][0][1].as_f64().unwrap())
        .collect();
    assert!((r["mean"][0][1].as_f64().unwrap() - (per[0] + per[1]) / 2.0).abs() < 1e-12);
    assert!(dir.path().join("all-bm25-alpha-dev.json").exists());
    assert!(dir.path().join("all-bm25-beta-test.json").exists());
    // A collection given as --zero-shot is averaged apart as well.
    let zs = dir.path().join("zs-bm25.json");
    let args = eval_args(
        &tiny,
        &[
            "--dataset",
            a.to_str().unwrap(),
            "--zero-shot",
            &b_spec,
            "--retriever",
            "bm25",
            "--out",
            zs.to_str().unwrap(),
        ],
    );
    let table = ok(&run(&args, &envs, None));
    assert!(
        table.contains("in-domain mean (1 datasets)")
            && table.contains("zero-shot mean (1 datasets)"),
        "{table}"
    );
    let z: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&zs).unwrap()).unwrap();
    assert_eq!(z["reports"][1]["zero_shot"], true, "{z}");
    assert!(z["reports"][0].get("zero_shot").is_none(), "{z}");
    assert_eq!(z["in_domain_mean"][0][1].as_f64(), Some(per[0]));
    assert_eq!(z["zero_shot_mean"][0][1].as_f64(), Some(per[1]));
    assert!(r.get("zero_shot_mean").is_none(), "{r}");
    let (colbert, _) = combined("colbert");
    let cmp = ok(&run(
        &[
            "eval",
            "--compare",
            bm25.to_str().unwrap(),
            colbert.to_str().unwrap(),
        ],
        &[],
        None,
    ));
    assert!(
        cmp.contains("### alpha/dev") && cmp.contains("### beta/test"),
        "{cmp}"
    );
    assert!(cmp.contains("mean over 2 datasets"), "{cmp}");
    // A single-dataset report is not mixed with combined ones.
    let one = dir.path().join("all-bm25-alpha-dev.json");
    let e = err(&run(
        &[
            "eval",
            "--compare",
            bm25.to_str().unwrap(),
            one.to_str().unwrap(),
        ],
        &[],
        None,
    ));
    assert!(e.contains("compare like with like"), "{e}");
}

/// Every option an error message suggests is one the command accepts.
#[test]
fn error_suggestions_name_options_of_the_command_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(
        dir.path(),
        "bad",
        &[("d1", "t", "first"), ("d2", "t", "second")],
        &[("q1", "first")],
        "dev",
        &[("q1", "d1", 1)],
    );
    let mut body = std::fs::read(ds.join("corpus.jsonl")).unwrap();
    body.extend_from_slice(b"{\"_id\": \"d3\", \"text\": \n");
    std::fs::write(ds.join("corpus.jsonl"), &body).unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let tiny = tiny();
    let corpus = ds.join("corpus.jsonl");
    let idx = dir.path().join("b.idx");
    let idx_s = idx.to_string_lossy().into_owned();
    let cases: Vec<Vec<&str>> = vec![
        eval_args(
            &tiny,
            &["--dataset", ds.to_str().unwrap(), "--retriever", "bm25"],
        ),
        vec![
            "index",
            "build",
            "--input",
            corpus.to_str().unwrap(),
            "--out",
            &idx_s,
            "--model",
            &tiny,
            "--device",
            "cpu",
        ],
    ];
    for args in cases {
        let e = err(&run(&args, &envs, None));
        assert!(e.contains("corpus.jsonl:3: malformed JSON"), "{e}");
        let flags: Vec<String> = e
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
            .filter(|w| w.starts_with("--"))
            .map(|w| w.trim_end_matches(['.', ';', ':']).to_owned())
            .collect();
        assert!(flags.iter().any(|f| f == "--skip-invalid"), "{e}");
        for f in &flags {
            let mut with = args.clone();
            with.push(f);
            let o = run(&with, &envs, None);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                !stderr.contains("unexpected argument") && o.status.code() != Some(2),
                "{args:?}: suggested {f} does not parse: {stderr}"
            );
        }
    }
}
