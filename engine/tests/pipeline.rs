//! End-to-end tests of the product's journeys with the tiny test model:
//! index a dump, search it, evaluate runs; bad input, resuming, and
//! precomputed vectors.

mod common;

use std::path::Path;
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
