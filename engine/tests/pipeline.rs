//! End-to-end tests of the product's journeys with the tiny test model:
//! index a dump, search it, evaluate runs; bad input, resuming, and
//! precomputed vectors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{err, ids, index_info, ok, run, sample, search_json, tiny};

/// `index build --input INPUT --out OUT` with the tiny model, one thread.
fn build(
    input: &str,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Output {
    let out = out.to_string_lossy();
    let tiny = tiny();
    let mut a = vec![
        "index",
        "build",
        "--input",
        input,
        "--out",
        &out,
        "--model",
        &tiny,
        "--device",
        "cpu",
        "--threads",
        "1",
    ];
    a.extend_from_slice(extra);
    run(&a, envs, stdin)
}

/// Every index file except the tantivy text index (whose segment names are
/// random) and the manifest (which lists those names), by relative path.
fn vector_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !rel.ends_with("text") {
                    stack.push(p);
                }
            } else if rel != "manifest.json" && !rel.ends_with(".lock") {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn build_search_info_and_the_remembered_model() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("s.idx");
    let o = build(&sample(), &idx, &[], &[], None);
    ok(&o);
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(summary.contains("indexed 40 documents"), "{summary}");
    assert!(
        !dir.path().join(".s.idx.encoding").exists(),
        "work folder removed"
    );

    // The search loads the model recorded in the index (no --model).
    let v = search_json(&idx, "ocean tides and the moon", &["-k", "5"]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["rank"], 1);
    assert!(results[0]["title"].as_str().is_some_and(|t| !t.is_empty()));
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // BM25 finds the one document about tides first.
    let v = search_json(&idx, "tides moon", &["--retriever", "bm25"]);
    assert_eq!(ids(&v)[0], "doc01");
    let v = search_json(&idx, "tides moon", &["--retriever", "hybrid", "-k", "3"]);
    assert_eq!(ids(&v).len(), 3);
    // Filters apply before ranking.
    let v = search_json(
        &idx,
        "tides moon",
        &[
            "--retriever",
            "bm25",
            "--filter",
            r#"{"range": {"field": "n", "gte": 30}}"#,
        ],
    );
    assert!(v["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["metadata"]["n"].as_i64().unwrap() >= 30));

    let info = index_info(&idx, &[]);
    assert_eq!(info["documents"], 40);
    assert!(info["info"]["model"]["path"]
        .as_str()
        .unwrap()
        .ends_with("tiny-bert"));
    assert!(ok(&run(
        &["index", "verify", &idx.to_string_lossy()],
        &[],
        None
    ))
    .contains("OK"));

    // Text output: rank, score, id, title and a snippet.
    let out = ok(&run(
        &[
            "search",
            "--index",
            &idx.to_string_lossy(),
            "--retriever",
            "bm25",
            "tides",
        ],
        &[],
        None,
    ));
    assert!(
        out.contains("1.") && out.contains("doc01") && out.contains("Tides"),
        "{out}"
    );
    // A rebuild over an existing index needs --overwrite.
    let e = err(&build(&sample(), &idx, &[], &[], None));
    assert!(e.contains("--overwrite"), "{e}");
}

#[test]
fn compressed_and_stdin_inputs_give_the_same_index() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let body = std::fs::read(sample()).unwrap();
    let gz = dir.path().join("c.jsonl.gz");
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    e.write_all(&body).unwrap();
    e.finish().unwrap();
    let zst = dir.path().join("c.jsonl.zst");
    std::fs::write(
        &zst,
        ruzstd::encoding::compress_to_vec(&body[..], ruzstd::encoding::CompressionLevel::Fastest),
    )
    .unwrap();
    let plain = dir.path().join("plain.idx");
    ok(&build(&sample(), &plain, &[], &[], None));
    let want = vector_files(&plain);
    for (name, input, stdin) in [
        ("gz.idx", gz.to_string_lossy().into_owned(), None),
        ("zst.idx", zst.to_string_lossy().into_owned(), None),
        ("stdin.idx", "-".to_string(), Some(&body[..])),
    ] {
        let out = dir.path().join(name);
        ok(&build(&input, &out, &[], &[], stdin));
        assert!(
            vector_files(&out) == want,
            "{name} differs from the plain build"
        );
    }
    // TSV, MS MARCO style.
    let tsv = dir.path().join("collection.tsv");
    std::fs::write(&tsv, "0\tThe Moon pulls the oceans.\n1\tVolcanoes erupt.\n").unwrap();
    let out = dir.path().join("tsv.idx");
    ok(&build(&tsv.to_string_lossy(), &out, &[], &[], None));
    let v = search_json(&out, "volcanoes", &["--retriever", "bm25"]);
    assert_eq!(ids(&v), vec!["1"]);
}

#[test]
fn bad_records_stop_the_build_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dump.jsonl");
    let mut body = std::fs::read(sample()).unwrap();
    body.extend_from_slice(b"{\"_id\": \"x1\", \"text\": \n");
    body.extend_from_slice(b"{\"_id\": \"doc03\", \"text\": \"a duplicate id\"}\n");
    body.extend_from_slice(b"{\"text\": \"no id\"}\n");
    body.extend_from_slice(b"{\"_id\": \"x2\", \"title\": \"\", \"text\": \"  \"}\n");
    body.extend_from_slice(b"{\"_id\": \"x3\", \"text\": \"caf\xe9\"}\n");
    body.extend_from_slice(b"{\"_id\": \"x4\", \"text\": \"the last good one\"}\n");
    std::fs::write(&input, &body).unwrap();
    let idx = dir.path().join("d.idx");
    let e = err(&build(&input.to_string_lossy(), &idx, &[], &[], None));
    assert!(e.contains("dump.jsonl:41: malformed JSON"), "{e}");
    assert!(!idx.exists(), "no index after a failed build");
    // What was encoded is kept for --resume, and the user is told where.
    assert!(
        e.contains(".d.idx.encoding") && e.contains("--resume") && e.contains("MiB"),
        "{e}"
    );

    std::fs::remove_dir_all(dir.path().join(".d.idx.encoding")).unwrap();
    let o = build(
        &input.to_string_lossy(),
        &idx,
        &["--skip-invalid"],
        &[],
        None,
    );
    ok(&o);
    let summary = String::from_utf8_lossy(&o.stderr);
    // x2 (empty title and text) is a document: indexed, and counted.
    assert!(summary.contains("indexed 42 documents"), "{summary}");
    for kind in [
        "1 malformed JSON",
        "1 duplicate id",
        "1 missing id",
        "1 empty document",
        "1 invalid UTF-8",
    ] {
        assert!(summary.contains(kind), "{kind}: {summary}");
    }
    let v = search_json(
        &idx,
        "the last good one",
        &["--retriever", "bm25", "-k", "1"],
    );
    assert_eq!(ids(&v), vec!["x4"]);
    // The duplicate did not replace the first doc03.
    let v = search_json(&idx, "duplicate", &["--retriever", "bm25"]);
    assert!(ids(&v).is_empty());
}

#[test]
fn an_interrupted_build_resumes_to_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref.idx");
    ok(&build(
        &sample(),
        &reference,
        &["--checkpoint-every", "8"],
        &[],
        None,
    ));

    let idx = dir.path().join("r.idx");
    let o = build(
        &sample(),
        &idx,
        &["--checkpoint-every", "8"],
        &[("TESSERA_FAULT_ABORT_AFTER_CHECKPOINTS", "2")],
        None,
    );
    assert!(!o.status.success(), "the fault hook aborts the process");
    assert!(!idx.exists(), "no index from the killed build");
    let work = dir.path().join(".r.idx.encoding");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("encode.json")).unwrap()).unwrap();
    assert_eq!(state["docs"], 16);
    assert_eq!(state["complete"], false);

    let e = err(&build(
        &sample(),
        &idx,
        &["--checkpoint-every", "8"],
        &[],
        None,
    ));
    assert!(e.contains("--resume"), "{e}");
    ok(&build(
        &sample(),
        &idx,
        &["--checkpoint-every", "8", "--resume"],
        &[],
        None,
    ));
    assert!(!work.exists());
    let (a, b) = (vector_files(&reference), vector_files(&idx));
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs after resuming");
    }
}

#[test]
fn precomputed_vectors_build_the_same_index_and_dims_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = dir.path().join("vecs");
    let tiny = tiny();
    ok(&run(
        &[
            "encode-corpus",
            "--input",
            &sample(),
            "--out",
            &vecs.to_string_lossy(),
            "--model",
            &tiny,
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
        &[],
        None,
    ));
    for f in [
        "embeddings.npy",
        "doclens.npy",
        "ids.txt",
        "docs.jsonl",
        "encode.json",
    ] {
        assert!(vecs.join(f).exists(), "{f}");
    }
    // `index build --embeddings vecs` into `name`, with `extra` options;
    // the index's vector files.
    let from_embeddings = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let (vecs, out_arg) = (vecs.to_string_lossy(), out.to_string_lossy());
        let mut args = vec!["index", "build", "--embeddings", &vecs, "--out", &out_arg];
        args.extend_from_slice(extra);
        ok(&run(&args, &[], None));
        vector_files(&out)
    };
    let from_vecs = from_embeddings("v.idx", &[]);
    let from_dump = dir.path().join("d.idx");
    ok(&build(&sample(), &from_dump, &[], &[], None));
    assert!(from_vecs == vector_files(&from_dump));
    // The k-means seed: the default spelled out gives the same index,
    // another seed other centroids (and codes) for the same vectors.
    assert!(from_embeddings("s42.idx", &["--kmeans-seed", "42"]) == from_vecs);
    let other_seed = from_embeddings("s7.idx", &["--kmeans-seed", "7"]);
    assert!(other_seed != from_vecs);
    assert_eq!(
        other_seed.iter().map(|(f, _)| f).collect::<Vec<_>>(),
        from_vecs.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );

    // Another engine's vectors: 8-dim, JSON doclens, no texts.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8), }";
    let pad = 128 - 10 - header.len() - 1;
    npy.extend_from_slice(&((128 - 10) as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend(std::iter::repeat_n(b' ', pad));
    npy.push(b'\n');
    for i in 0..40 {
        npy.extend_from_slice(&((i % 7) as f32 - 3.0).to_le_bytes());
    }
    std::fs::write(other.join("embeddings.npy"), npy).unwrap();
    std::fs::write(other.join("doclens.json"), "[2, 3]").unwrap();
    std::fs::write(other.join("ids.txt"), "a\nb\n").unwrap();
    let o_idx = dir.path().join("o.idx");
    ok(&run(
        &[
            "index",
            "build",
            "--embeddings",
            &other.to_string_lossy(),
            "--out",
            &o_idx.to_string_lossy(),
            "--codec",
            "f32",
        ],
        &[],
        None,
    ));
    let e = err(&run(
        &[
            "search",
            "--index",
            &o_idx.to_string_lossy(),
            "--model",
            &tiny,
            "--device",
            "cpu",
            "x",
        ],
        &[],
        None,
    ));
    assert!(e.contains("32-dim") && e.contains("8-dim"), "{e}");
}

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

#[test]
fn every_new_command_has_help_with_an_example() {
    for cmd in [
        &["index", "build"][..],
        &["index"][..],
        &["index", "info"][..],
        &["index", "verify"][..],
        &["index", "add"][..],
        &["index", "delete"][..],
        &["index", "compact"][..],
        &["search"][..],
        &["eval"][..],
        &["encode-corpus"][..],
        &["train"][..],
        &["train", "heads"][..],
        &["export"][..],
    ] {
        let mut a = cmd.to_vec();
        a.push("--help");
        let out = ok(&run(&a, &[], None));
        assert!(out.contains("Example"), "{cmd:?}: {out}");
    }
    // info and verify each say what they do.
    let info = ok(&run(&["index", "info", "--help"], &[], None));
    let verify = ok(&run(&["index", "verify", "--help"], &[], None));
    assert_ne!(info.lines().next(), verify.lines().next());
    assert!(
        info.contains("summary") && verify.contains("CRC32"),
        "{info}\n{verify}"
    );
}

/// `tessera … | head` ends quietly; a filter on a field no document has
/// says so.
#[test]
fn closed_stdout_is_quiet_and_unknown_filter_fields_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("s.idx");
    ok(&build(&sample(), &idx, &[], &[], None));
    // Far more output than a pipe buffers, so the writer meets the closed end.
    let texts = dir.path().join("texts.txt");
    std::fs::write(
        &texts,
        "what causes the ocean tides on earth?\n".repeat(400),
    )
    .unwrap();
    let mut c = common::tessera_command();
    c.args([
        "encode",
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
        "--queries",
        texts.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out); // like `head -c 10`
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.is_empty(),
        "{:?} {stderr}",
        o.status
    );

    let o = run(
        &[
            "search",
            "--index",
            &idx.to_string_lossy(),
            "--retriever",
            "bm25",
            "--filter",
            r#"{"eq": {"field": "colour", "value": "red"}}"#,
            "tides",
        ],
        &[],
        None,
    );
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("\"colour\" that no document has")
            && stderr.contains("fields in this index: n"),
        "{stderr}"
    );
}

#[test]
fn bf16_builds_record_their_precision_and_rank_like_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("fp32"), dir.path().join("bf16"));
    ok(&build(
        &sample(),
        &a,
        &["--precision", "fp32", "--codec", "f32"],
        &[],
        None,
    ));
    ok(&build(
        &sample(),
        &b,
        &["--precision", "bf16", "--codec", "f32"],
        &[],
        None,
    ));
    let precision = |d: &Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
        m["info"]["model"]["precision"].as_str().unwrap().to_owned()
    };
    assert_eq!(precision(&a), "fp32");
    assert_eq!(precision(&b), "bf16");
    // Queries are encoded with the index's precision by default; the
    // exhaustive rankings of the two builds agree at the top.
    let exhaustive = ["--candidates", "exhaustive", "-k", "3"];
    for q in ["what causes tides", "how do vaccines work", "the moon"] {
        let (x, y) = (
            search_json(&a, q, &exhaustive),
            search_json(&b, q, &exhaustive),
        );
        assert_eq!(ids(&x).first(), ids(&y).first(), "{q}");
    }
    // A bad value names the choices.
    let e = err(&build(
        &sample(),
        &dir.path().join("x"),
        &["--precision", "fp8"],
        &[],
        None,
    ));
    assert!(e.contains("fp32, bf16 or auto"), "{e}");
    // Resuming an interrupted build in another precision is refused.
    let idx = dir.path().join("r.idx");
    let o = build(
        &sample(),
        &idx,
        &["--checkpoint-every", "8", "--precision", "bf16"],
        &[("TESSERA_FAULT_ABORT_AFTER_CHECKPOINTS", "1")],
        None,
    );
    assert!(!o.status.success(), "the fault hook aborts the process");
    let e = err(&build(
        &sample(),
        &idx,
        &["--checkpoint-every", "8", "--resume", "--precision", "fp32"],
        &[],
        None,
    ));
    assert!(e.contains("resume with --precision bf16"), "{e}");
}

#[test]
fn index_add_delete_and_compact_update_a_built_index_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("u.idx");
    ok(&build(&sample(), &idx, &[], &[], None));
    let dump = dir.path().join("more.jsonl");
    std::fs::write(
        &dump,
        concat!(
            r#"{"_id": "new1", "title": "Quasars", "text": "Quasars are luminous galactic nuclei fed by supermassive black holes."}"#,
            "\n",
            r#"{"_id": "new2", "title": "Lichens", "text": "Lichens are symbioses of fungi with algae or cyanobacteria."}"#,
            "\n",
            r#"{"_id": "new3", "title": "", "text": ""}"#,
            "\n"
        ),
    )
    .unwrap();
    let (idx_s, dump_s) = (idx.to_string_lossy(), dump.to_string_lossy());
    let tiny = tiny();
    let add = |extra: &[&str]| {
        let mut a = vec![
            "index",
            "add",
            "--index",
            &idx_s,
            "--input",
            &dump_s,
            "--model",
            &tiny,
            "--device",
            "cpu",
            "--threads",
            "1",
        ];
        a.extend_from_slice(extra);
        run(&a, &[], None)
    };
    let docs = || {
        let v = index_info(&idx, &[]);
        (
            v["documents"].as_u64().unwrap(),
            v["segments"].as_u64().unwrap(),
        )
    };
    let before = docs();
    let out = add(&[]);
    ok(&out);
    assert!(
        err_text(&out).contains("added 3 documents"),
        "{}",
        err_text(&out)
    );
    assert_eq!(docs(), (before.0 + 3, before.1 + 1));
    // Searchable at once, with BM25 and with ColBERT (no rebuild).
    let v = search_json(
        &idx,
        "quasars black holes",
        &["--retriever", "bm25", "-k", "1"],
    );
    assert_eq!(ids(&v), ["new1"]);
    let v = search_json(&idx, "quasars black holes", &["--candidates", "exhaustive"]);
    assert!(ids(&v).contains(&"new1".to_owned()));

    // The same ids again: refused, nothing committed; --skip-invalid skips them.
    let e = err(&add(&[]));
    assert!(e.contains("new1"), "{e}");
    assert_eq!(docs(), (before.0 + 3, before.1 + 1));
    let out = add(&["--skip-invalid"]);
    ok(&out);
    assert!(
        err_text(&out).contains("3 already in the index, skipped"),
        "{}",
        err_text(&out)
    );
    assert_eq!(docs(), (before.0 + 3, before.1 + 1));

    // Delete: unknown ids are a warning; the rest go in one commit.
    let out = run(
        &[
            "index", "delete", "--index", &idx_s, "--ids", "new1", "nope", "new1",
        ],
        &[],
        None,
    );
    ok(&out);
    let e = err_text(&out);
    assert!(
        e.contains("1 id is not in the index") && e.contains("nope"),
        "{e}"
    );
    assert!(e.contains("deleted 1 documents"), "{e}");
    let v = search_json(&idx, "quasars black holes", &["--retriever", "bm25"]);
    assert!(!ids(&v).contains(&"new1".to_owned()));
    let ids_file = dir.path().join("ids.txt");
    std::fs::write(&ids_file, "new2\n\n").unwrap();
    ok(&run(
        &[
            "index",
            "delete",
            "--index",
            &idx_s,
            "--ids-file",
            &ids_file.to_string_lossy(),
        ],
        &[],
        None,
    ));
    assert_eq!(docs().0, before.0 + 1);

    // Compact folds the segments; the index verifies and still answers.
    ok(&run(&["index", "compact", &idx_s], &[], None));
    assert_eq!(docs(), (before.0 + 1, 1));
    ok(&run(&["index", "verify", &idx_s], &[], None));
    let v = search_json(&idx, "tides moon", &["--retriever", "bm25", "-k", "1"]);
    assert_eq!(ids(&v), ["doc01"]);
}

fn err_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
