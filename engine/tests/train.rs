//! `tessera train heads` and `tessera export` end to end on the tiny BERT:
//! a head trains on a BEIR folder, writes a model folder that indexing and
//! search accept, resumes, trains from an unlabelled dump, exports to the
//! PyLate layout; bad input is refused before training with a message
//! naming the file or option.

mod common;

use std::path::{Path, PathBuf};

use common::{err, ok, run, search_json, tiny, toy_dataset, TOPICS};

fn dataset(dir: &Path, train_qrels: Option<&str>) -> PathBuf {
    toy_dataset(dir, train_qrels)
}

fn train_args<'a>(ds: &'a str, out: &'a str, home_tiny: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "heads",
        "--dataset",
        ds,
        "--out",
        out,
        "--model",
        home_tiny,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--batch-queries",
        "4",
        "--mine-depth",
        "4",
        "--pool-depth",
        "8",
    ];
    a.extend_from_slice(rest);
    if !rest.contains(&"--dim") {
        a.extend_from_slice(&["--dim", "16"]);
    }
    a
}

#[test]
fn a_head_trains_writes_a_model_folder_and_serves_index_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let ds = dataset(dir.path(), None);
    let ds = ds.to_str().unwrap();
    let out = dir.path().join("head");
    let out_s = out.to_str().unwrap();
    let t = tiny();
    let o = run(
        &train_args(
            ds,
            out_s,
            &t,
            &[
                "--head",
                "ffn",
                "--residual",
                "--steps",
                "12",
                "--eval-every",
                "6",
                "--checkpoint-every",
                "6",
            ],
        ),
        &envs,
        None,
    );
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("best dev nDCG@10"), "{stderr}");
    for f in [
        "head.json",
        "head.safetensors",
        "tessera.json",
        "training.json",
        "metrics.jsonl",
        "loss.png",
        "loss.svg",
        "dev.png",
        "dev.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing: {stderr}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"type\":\"step\""))
            .count(),
        12
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"type\":\"dev\""))
            .count(),
        2
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    assert_eq!(record["config"]["spec"]["kind"], "ffn");
    assert!(record["best"]["ndcg10"].as_f64().is_some(), "{record}");
    assert!(record["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--residual"));
    // The folder is a model: index and search with it (16-dim vectors).
    let idx = dir.path().join("idx");
    let corpus = format!("{ds}/corpus.jsonl");
    ok(&run(
        &[
            "index",
            "build",
            "--input",
            &corpus,
            "--out",
            idx.to_str().unwrap(),
            "--model",
            out_s,
            "--device",
            "cpu",
            "--codec",
            "f32",
        ],
        &envs,
        None,
    ));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(idx.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(info["dim"], 16, "{info}");
    let hits = search_json(&idx, "what about comet orbit sun", &[]);
    assert_eq!(hits["results"].as_array().unwrap().len(), 8);
    // A finished run cannot be restarted into the same folder by accident.
    let e = err(&run(
        &train_args(
            ds,
            out_s,
            &t,
            &["--head", "ffn", "--residual", "--steps", "12"],
        ),
        &envs,
        None,
    ));
    assert!(e.contains("--resume"), "{e}");
    // Resuming with more steps continues from the checkpoint at 12: no, the
    // schedule is part of the run; resuming at its end is a no-op run.
    let e = err(&run(
        &train_args(
            ds,
            out_s,
            &t,
            &["--head", "glu", "--steps", "12", "--resume"],
        ),
        &envs,
        None,
    ));
    assert!(e.contains("state.json") && e.contains("glu"), "{e}");
    ok(&run(
        &train_args(
            ds,
            out_s,
            &t,
            &["--head", "ffn", "--residual", "--steps", "12", "--resume"],
        ),
        &envs,
        None,
    ));
}

#[test]
fn unlabelled_dumps_train_and_linear_and_ffn_heads_export_to_pylate() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let dump = dir.path().join("dump.jsonl");
    let text: String = (0..20)
        .map(|i| {
            let t = TOPICS[i % 8];
            serde_json::json!({"_id": format!("x{i}"), "text": format!("{t} {t} is a topic with many words about {t} here")}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&dump, text).unwrap();
    let out = dir.path().join("unsup");
    let t = tiny();
    let o = ok(&run(
        &[
            "train",
            "heads",
            "--unsupervised-corpus",
            dump.to_str().unwrap(),
            "--head",
            "ffn",
            "--dim",
            "16",
            "--steps",
            "6",
            "--batch-queries",
            "4",
            "--model",
            &t,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        &envs,
        None,
    ));
    let _ = o;
    assert!(out.join("head.safetensors").is_file());
    // Export → the PyLate loader reads it back to the same vectors.
    let py = dir.path().join("pylate");
    ok(&run(
        &[
            "export",
            "--pylate",
            "--model",
            out.to_str().unwrap(),
            "--out",
            py.to_str().unwrap(),
        ],
        &envs,
        None,
    ));
    assert!(py.join("modules.json").is_file() && py.join("2_Dense/model.safetensors").is_file());
    let enc = |m: &Path| {
        let o = ok(&run(
            &[
                "encode",
                "--model",
                m.to_str().unwrap(),
                "--device",
                "cpu",
                "--query",
                "what about moon tides",
                "--json",
            ],
            &envs,
            None,
        ));
        let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
        v["tokens"].clone()
    };
    let (a, b) = (enc(&out), enc(&py));
    let floats = |t: &serde_json::Value| -> Vec<f64> {
        t.as_array()
            .unwrap()
            .iter()
            .flat_map(|tok| {
                tok["vector"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
            })
            .collect()
    };
    let (fa, fb) = (floats(&a), floats(&b));
    assert!(fa.len() >= 3 * 16, "{a}");
    assert_eq!(fa.len(), fb.len());
    let diff = fa
        .iter()
        .zip(&fb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-6, "PyLate export differs by {diff}");
    // A GLU head has no Dense form.
    let glu = dir.path().join("glu");
    ok(&run(
        &[
            "train",
            "heads",
            "--unsupervised-corpus",
            dump.to_str().unwrap(),
            "--head",
            "glu",
            "--dim",
            "16",
            "--steps",
            "2",
            "--batch-queries",
            "4",
            "--model",
            &t,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--markers",
            "--query-augmentation",
            "--out",
            glu.to_str().unwrap(),
        ],
        &envs,
        None,
    ));
    // The query-side choice is recorded, and encoding follows it: markers
    // and [MASK] padding to the query length (32 vectors).
    let own: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(glu.join("tessera.json")).unwrap()).unwrap();
    assert_eq!(own["colbert"]["query_marker"], "[unused0]", "{own}");
    assert_eq!(own["colbert"]["query_augmentation"], true, "{own}");
    let o = ok(&run(
        &[
            "encode",
            "--model",
            glu.to_str().unwrap(),
            "--device",
            "cpu",
            "--query",
            "moon tides",
            "--json",
        ],
        &envs,
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 32, "{v}");
    let e = err(&run(
        &[
            "export",
            "--pylate",
            "--model",
            glu.to_str().unwrap(),
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        &envs,
        None,
    ));
    assert!(e.contains("head.json") && e.contains("GLU"), "{e}");
}

#[test]
fn bad_training_input_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let t = tiny();
    let out = dir.path().join("o");
    let out_s = out.to_str().unwrap();
    let good = dataset(&dir.path().join("good"), None);
    let good = good.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--head", "mlp"], "unknown head"),
        (vec!["--head", "residual"], "add --residual"),
        (
            vec!["--head", "ffn", "--activation", "tanh"],
            "unknown activation",
        ),
        (vec!["--dim", "0"], "--dim must be at least 1"),
        (vec!["--positives", "0"], "--positives must be at least 1"),
        (vec!["--head", "identity", "--dim", "16"], "--dim 32"),
        (vec!["--head", "ffn", "--depth", "0"], "depth"),
        (vec!["--head", "glu", "--width-factor", "0"], "width"),
    ];
    for (extra, want) in cases {
        let a = train_args(good, out_s, &t, &extra);
        let e = err(&run(&a, &envs, None));
        assert!(e.contains(want), "{extra:?}: {e}");
        assert!(!out.join("checkpoint").exists());
    }
    // A dataset without a train split; with an empty one; with qrels naming
    // an unknown document or query.
    let no_train = dataset(&dir.path().join("nt"), None);
    std::fs::remove_file(no_train.join("qrels/train.tsv")).unwrap();
    let empty = dataset(&dir.path().join("em"), Some("query-id\tcorpus-id\tscore\n"));
    let bad_doc = dataset(
        &dir.path().join("bd"),
        Some("query-id\tcorpus-id\tscore\nq0\tnope\t1\n"),
    );
    let bad_q = dataset(
        &dir.path().join("bq"),
        Some("query-id\tcorpus-id\tscore\nqq\td0\t1\n"),
    );
    for (ds, want) in [
        (&no_train, "train"),
        (&empty, "judges no queries"),
        (&bad_doc, "\"nope\""),
        (&bad_q, "\"qq\""),
    ] {
        let e = err(&run(
            &train_args(ds.to_str().unwrap(), out_s, &t, &[]),
            &envs,
            None,
        ));
        assert!(e.contains(want), "{}: {e}", ds.display());
        if want.starts_with('"') {
            assert!(e.contains("train.tsv"), "{e}");
        }
    }
}

#[test]
fn zero_shot_validation_robust_selection_pca_start_and_wise_ft() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let ds = dataset(dir.path(), None);
    let ds = ds.to_str().unwrap();
    // A second collection, never trained on: the toy folder under another name.
    let same_name = toy_dataset(&dir.path().join("zs"), None);
    let other = dir.path().join("other");
    std::fs::rename(&same_name, &other).unwrap();
    let other = other.to_str().unwrap();
    let t = tiny();
    let head = [
        "--head",
        "glu",
        "--residual",
        "--dim",
        "16",
        "--start",
        "pca",
    ];
    let start = dir.path().join("start");
    let start_s = start.to_str().unwrap();
    let mut a = train_args(ds, start_s, &t, &head);
    a.extend_from_slice(&["--steps", "0", "--zero-shot", other]);
    ok(&run(&a, &envs, None));
    let record = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("training.json")).unwrap()).unwrap()
    };
    let r0 = record(&start);
    let best = &r0["best"];
    assert!(
        best["in_domain"].as_f64().is_some() && best["zero_shot"].as_f64().is_some(),
        "{r0}"
    );
    let names: Vec<&str> = best["per_source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["toy", "other"]);
    // The zero-shot set is scored over its whole corpus (8 documents, each
    // query's own document judged): recall@100 is 1.
    assert_eq!(best["per_source"][1][2].as_f64(), Some(1.0), "{r0}");

    // Trained from the PCA start with both anchors, kept by the robust rule.
    let tuned = dir.path().join("tuned");
    let tuned_s = tuned.to_str().unwrap();
    let mut a = train_args(ds, tuned_s, &t, &head);
    a.extend_from_slice(&[
        "--steps",
        "8",
        "--eval-every",
        "2",
        "--zero-shot",
        other,
        "--select",
        "robust",
        "--select-margin",
        "0.5",
        "--l2-sp",
        "0.1",
        "--raw-kl",
        "0.5",
    ]);
    let o = run(&a, &envs, None);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("kept by the robust rule"), "{stderr}");
    let r1 = record(&tuned);
    assert_eq!(r1["selection"]["rule"], "robust", "{r1}");
    assert_eq!(r1["config"]["l2_sp"], 0.1);
    let kept_step = r1["best"]["step"].as_u64().unwrap() as usize;
    // The kept head is the validated copy of that step, byte for byte.
    let copy = tuned.join(format!("validated/step-{kept_step}/head.safetensors"));
    assert_eq!(
        std::fs::read(copy).unwrap(),
        std::fs::read(tuned.join("head.safetensors")).unwrap()
    );

    // WiSE-FT: α = 0 is the start, α = 1 the tuned head; shapes must match.
    let encode = |m: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&run(
            &[
                "encode",
                "--model",
                m.to_str().unwrap(),
                "--device",
                "cpu",
                "--doc",
                "comet orbit sun",
                "--json",
            ],
            &envs,
            None,
        )))
        .unwrap()
    };
    for (alpha, same_as) in [("0", &start), ("1", &tuned)] {
        let w = dir.path().join(format!("wise-{alpha}"));
        ok(&run(
            &[
                "train",
                "interpolate",
                "--from",
                start_s,
                "--to",
                tuned_s,
                "--alpha",
                alpha,
                "--out",
                w.to_str().unwrap(),
            ],
            &envs,
            None,
        ));
        assert_eq!(
            encode(&w)["tokens"],
            encode(same_as)["tokens"],
            "alpha {alpha}"
        );
    }
    let plain = dir.path().join("plain");
    let mut a = train_args(
        ds,
        plain.to_str().unwrap(),
        &t,
        &["--head", "glu", "--dim", "16"],
    );
    a.extend_from_slice(&["--steps", "0"]);
    ok(&run(&a, &envs, None));
    let e = err(&run(
        &[
            "train",
            "interpolate",
            "--from",
            start_s,
            "--to",
            plain.to_str().unwrap(),
            "--alpha",
            "0.5",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        &envs,
        None,
    ));
    assert!(e.contains("different specs"), "{e}");

    // Refusals: a zero-shot set that is trained on, or shares a name; the
    // robust rule without zero-shot sets; pca on a head with no shortcut.
    for (extra, want) in [
        (vec!["--zero-shot", ds], "never trained on"),
        (vec!["--select", "robust"], "--zero-shot"),
        (
            vec!["--start", "pca", "--head", "glu"],
            "cannot start at a projection",
        ),
    ] {
        let out = dir.path().join("refused");
        let mut a = train_args(ds, out.to_str().unwrap(), &t, &extra);
        a.extend_from_slice(&["--steps", "1"]);
        let e = err(&run(&a, &envs, None));
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let clash = toy_dataset(&dir.path().join("clash"), None);
    let refused = dir.path().join("refused");
    let mut a = train_args(ds, refused.to_str().unwrap(), &t, &[]);
    a.extend_from_slice(&["--steps", "1", "--zero-shot", clash.to_str().unwrap()]);
    let e = err(&run(&a, &envs, None));
    assert!(e.contains("named \"toy\""), "{e}");
}
