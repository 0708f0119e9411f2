//! End-to-end tests of the `tessera` binary: arguments, output formats and
//! the errors a user sees.

mod common;

use std::process::Output;

fn tessera<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    common::tessera_command()
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tessera runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `COMMAND --model <tiny> --device cpu --threads 1 REST…`
fn tiny_args(command: &str, rest: &[&str]) -> Vec<String> {
    let mut v = vec![command.to_owned(), "--model".into(), common::tiny()];
    v.extend(["--device", "cpu", "--threads", "1"].map(String::from));
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

#[test]
fn help_lists_commands_with_examples() {
    let o = tessera(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("encode") && out.contains("score") && out.contains("Examples"),
        "{out}"
    );
    for cmd in ["encode", "score"] {
        let o = tessera(&[cmd, "--help"]);
        assert!(o.status.success());
        let out = stdout(&o);
        assert!(
            out.contains("Example") && out.contains("--device"),
            "{cmd}: {out}"
        );
    }
}

/// Every script in scripts/ answers `--help` with its usage and an example
/// (before it prepares, builds or runs anything).
#[test]
fn every_script_has_help_with_an_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Python helpers are called by the scripts; lib.sh is sourced.
        if name.ends_with(".py") || name == "lib.sh" {
            continue;
        }
        let o = std::process::Command::new("bash")
            .arg(&path)
            .arg("--help")
            .output()
            .unwrap();
        let out = stdout(&o);
        assert!(o.status.success(), "{name} --help: {}", stderr(&o));
        assert!(
            out.contains("Example") && out.contains(&format!("scripts/{name}")),
            "{name} --help shows no example: {out}"
        );
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} scripts found in {}", dir.display());
}

#[test]
fn encode_json_gives_normalised_vectors_with_tokens() {
    let o = tessera(&tiny_args(
        "encode",
        &["--query", "what causes tides", "--json"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["kind"], "query");
    assert_eq!(v["dim"], 32);
    let tokens = v["tokens"].as_array().unwrap();
    let names: Vec<&str> = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"[CLS]"));
    assert_eq!(names.last(), Some(&"[SEP]"));
    assert!(names.contains(&"what"));
    for t in tokens {
        let norm: f64 = t["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
}

#[test]
fn encode_text_output_shows_a_summary() {
    let o = tessera(&tiny_args("encode", &["--doc", "the sea, the sea."]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("huggingface-bert, identity head, 32 dims, cpu, "),
        "{out}"
    );
    assert!(
        out.contains("doc \"the sea, the sea.\": 6 vectors × 32 dims"),
        "{out}"
    );
}

#[test]
fn encode_file_reads_lines_and_reports_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docs.txt");
    let long = "the sea rises ".repeat(200);
    std::fs::write(&f, format!("the moon\r\n{long}\nthe sun\n")).unwrap();
    let o = tessera(&tiny_args(
        "encode",
        &["--docs", f.to_str().unwrap(), "--json"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["text"], "the moon");
    assert_eq!(lines[1]["truncated"], true);
    assert_eq!(lines[2]["truncated"], false);
    assert!(
        stderr(&o).contains("1 of 3 texts were longer than doc_maxlen=300"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn invalid_utf8_and_empty_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.txt");
    std::fs::write(&f, b"fine line\nbad \xff\xfe byte\n").unwrap();
    let o = tessera(&tiny_args("encode", &["--docs", f.to_str().unwrap()]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("bad.txt:2: invalid UTF-8 at byte 5"), "{err}");
    assert!(
        stdout(&o).is_empty(),
        "nothing is printed for a partly bad file"
    );

    std::fs::write(&f, "one\n   \nthree\n").unwrap();
    let o = tessera(&tiny_args("encode", &["--queries", f.to_str().unwrap()]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.txt:2: line is empty"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn empty_text_argument_is_rejected() {
    for text in ["", "  \t "] {
        let o = tessera(&tiny_args("encode", &["--query", text]));
        assert!(!o.status.success());
        assert!(stderr(&o).contains("TEXT is empty"), "{}", stderr(&o));
    }
}

#[test]
fn missing_model_and_unavailable_device_are_clear_errors() {
    let o = tessera(&["encode", "--model", "/nonexistent/model", "--query", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/model"), "{}", stderr(&o));

    let o = tessera(&["encode", "--device", "tpu", "--query", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown device \"tpu\""),
        "{}",
        stderr(&o)
    );

    if std::env::var_os("TESSERA_EXPECT_CUDA").is_none() {
        let mut args = tiny_args("encode", &["--query", "x"]);
        let i = args.iter().position(|a| a == "cpu").unwrap();
        args[i] = "cuda".into();
        let o = tessera(&args);
        if !o.status.success() {
            assert!(stderr(&o).contains("CUDA was requested"), "{}", stderr(&o));
        }
    }
}

#[test]
fn score_ranks_the_relevant_document_first_with_the_default_model() {
    let o = tessera(&[
        "score",
        "--device",
        "cpu",
        "--query",
        "What causes ocean tides?",
        "--doc",
        "Volcanoes erupt molten rock from the mantle.",
        "--doc",
        "Tides are caused by the Moon's gravity pulling on the oceans.",
        "--json",
    ]);
    assert!(
        o.status.success(),
        "the default model must be installed (scripts/setup): {}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["doc"], 2);
    assert!(results[0]["score"].as_f64().unwrap() > results[1]["score"].as_f64().unwrap());
}

#[test]
fn precision_is_chosen_reported_and_checked() {
    let o = tessera(&tiny_args(
        "encode",
        &["--doc", "the sea, the sea.", "--precision", "bf16"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("32 dims, cpu, bf16)"), "{}", stdout(&o));
    let o = tessera(&tiny_args("encode", &["--doc", "x", "--precision", "fp32"]));
    assert!(stdout(&o).contains("32 dims, cpu, fp32)"), "{}", stdout(&o));
    let o = tessera(&tiny_args("encode", &["--doc", "x", "--precision", "half"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("fp32, bf16 or auto"), "{}", stderr(&o));
}

#[test]
fn the_default_model_is_the_committed_head_and_raw_selects_the_backbone() {
    let dim = |extra: &[&str]| {
        let mut a = vec![
            "encode",
            "--device",
            "cpu",
            "--query",
            "what causes tides?",
            "--json",
        ];
        a.extend_from_slice(extra);
        let o = tessera(&a);
        assert!(
            o.status.success(),
            "the default model must be installed (scripts/setup): {}",
            stderr(&o)
        );
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        v["dim"].as_u64().unwrap()
    };
    assert_eq!(dim(&[]), 128);
    assert_eq!(dim(&["--model", "tessera-minilm"]), 128);
    assert_eq!(dim(&["--model", "raw"]), 384);
    // Installed beside the backbone, naming it.
    let home = tessera_model::tessera_home().unwrap();
    let own: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.join("models/tessera-minilm-v4/tessera.json")).unwrap(),
    )
    .unwrap();
    assert!(
        own["backbone"]
            .as_str()
            .unwrap()
            .ends_with("models/default"),
        "{own}"
    );
    let record = tessera_model::builtin::training_record();
    assert_eq!(record["config"]["spec"]["kind"], "glu");
}

#[test]
fn search_settings_have_one_set_of_bounds_in_search_eval_and_serve() {
    // The same options, refused the same way before anything is opened.
    let commands: [&[&str]; 3] = [
        &["search", "--index", "no.idx", "q"],
        &["eval", "--index", "no.idx", "--dataset", "no-dataset"],
        &["serve", "--index", "no.idx"],
    ];
    for cmd in commands {
        for (opt, bad) in [
            ("--n-probe", "0"),
            ("--n-probe", "257"),
            ("--n-approx", "0"),
        ] {
            let mut args: Vec<&str> = cmd.to_vec();
            args.extend([opt, bad]);
            let o = tessera(&args);
            let e = stderr(&o);
            assert!(
                !o.status.success() && e.contains(opt) && e.contains(bad),
                "{args:?}: {e}"
            );
        }
        // Every command documents them alike.
        let o = tessera(&[cmd[0], "--help"]);
        let help = stdout(&o);
        for opt in [
            "--n-probe",
            "--probe-budget",
            "--n-approx",
            "--rerank-budget",
        ] {
            assert!(help.contains(opt), "{} --help lacks {opt}", cmd[0]);
        }
        assert!(help.contains("1 to 256"), "{}: {help}", cmd[0]);
    }
}

/// The GPU check's CPU dry run: every step of `scripts/gpu-check run` runs
/// on the tiny model and toy data with tiny budgets and writes its JSON, so
/// the script cannot rot between GPU runs.
#[test]
fn gpu_check_dry_run_runs_every_step_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::toy_dataset(dir.path(), None);
    let out = dir.path().join("out");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu-check");
    let t = common::tiny();
    let o = std::process::Command::new("bash")
        .arg(&script)
        .args(["dry-run", "--bin", env!("CARGO_BIN_EXE_tessera")])
        .args([
            "--model",
            &t,
            "--backbone",
            &t,
            "--dataset",
            ds.to_str().unwrap(),
        ])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--work",
            dir.path().to_str().unwrap(),
        ])
        .args([
            "--dim",
            "16",
            "--batch-queries",
            "4",
            "--reduce-dims",
            "8,16",
        ])
        .args(["--reduce-steps", "2", "--latency-queries", "8"])
        .arg("--train-extra=--mine-depth 4 --pool-depth 8 --threads 1")
        .arg("--reduce-extra=--negatives 2 --mine-depth 4 --pool-depth 8 --threads 1")
        .env("TESSERA_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    let log = format!("{}{}", stdout(&o), stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("no summary.json ({e}): {log}"));
    let steps = &summary["steps"];
    for name in [
        "environment",
        "parity",
        "index_build",
        "eval",
        "train_frozen",
        "train_full",
        "train_reduce",
        "latency",
    ] {
        assert!(steps[name].is_object(), "{name} missing: {log}");
        assert!(
            steps[name].get("error").is_none(),
            "{name} failed: {}\n{log}",
            steps[name]
        );
        assert!(out.join(format!("{name}.json")).is_file(), "{name}.json");
    }
    // The CPU against itself: fp32 is exact, the builds report throughput,
    // training steps and encoding latency are timed.
    assert_eq!(
        steps["parity"]["fp32"]["max_abs"].as_f64(),
        Some(0.0),
        "{log}"
    );
    let build = &steps["index_build"]["fp32"];
    assert_eq!(build["documents"], 8, "{build}");
    assert!(build["docs_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        steps["eval"]["idx-cpu-fp32"]["delta_vs_cpu"].as_f64(),
        Some(0.0),
        "{log}"
    );
    assert!(steps["train_frozen"]["steps_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(steps["train_full"]["mode"], "full");
    assert!(steps["latency"]["batch_32"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(steps["latency"]["batch_1"]["calls"], 8);
    // Without CUDA, asking for it is a clear error; auto falls back.
    let t = common::tiny();
    let cuda = common::run(
        &["encode", "--model", &t, "--device", "cuda", "--query", "x"],
        &[],
        None,
    );
    if !cuda.status.success() {
        assert!(
            stderr(&cuda).contains("CUDA was requested but is not available"),
            "{}",
            stderr(&cuda)
        );
        common::ok(&common::run(
            &["encode", "--model", &t, "--device", "auto", "--query", "x"],
            &[],
            None,
        ));
    }
}

/// `tessera shards split` routes every document of a dump to the part its
/// id hashes to; parts built as indexes make a shard set whose manifest
/// counts every document, and a shard built differently is refused.
#[test]
fn a_dump_splits_into_shards_that_make_a_shard_set() {
    use tessera_engine::shard::{shard_of, ShardSet};
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    let sample = common::sample();
    let o = tessera(&[
        "shards",
        "split",
        "--input",
        sample.as_str(),
        "--shards",
        "3",
        "--out",
        parts.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("split 40 documents into 3 parts"),
        "{}",
        stdout(&o)
    );
    let set = dir.path().join("set");
    // `index build` of part `s` into shard `s` (with extra flags).
    let build = |s: u32, extra: &[&str]| -> Output {
        let part = parts.join(format!("part-{s:03}.jsonl"));
        let out = set.join(format!("shard-{s:03}"));
        let mut args = tiny_args(
            "index",
            &[
                "--input",
                part.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        args.insert(1, "build".into());
        args.extend(extra.iter().map(|a| a.to_string()));
        tessera(&args)
    };
    let mut names = Vec::new();
    for s in 0..3u32 {
        let part = parts.join(format!("part-{s:03}.jsonl"));
        for line in std::fs::read_to_string(&part).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(shard_of(v["_id"].as_str().unwrap(), 3), s);
        }
        let extra: &[&str] = if s == 2 { &["--codec", "f32"] } else { &[] };
        let o = build(s, extra);
        assert!(o.status.success(), "{}", stderr(&o));
        names.push(format!("shard-{s:03}"));
    }
    let mut manifest: Vec<String> = vec!["shards".into(), "manifest".into(), "--dir".into()];
    manifest.push(set.to_str().unwrap().into());
    manifest.extend(names.iter().cloned());
    // Shard 2 has another codec: refused, named.
    let o = tessera(&manifest);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("shard 2") && stderr(&o).contains("does not match"),
        "{}",
        stderr(&o)
    );
    // Rebuilt with shard 0's codec, the set is written; a codec source
    // that is not an index is refused, named.
    std::fs::remove_dir_all(set.join("shard-002")).unwrap();
    let o = build(2, &["--codec-from", "no-such.idx"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--codec-from no-such.idx"),
        "{}",
        stderr(&o)
    );
    let shard0 = set.join("shard-000");
    let o = build(2, &["--codec-from", shard0.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let centroids = |s: &str| std::fs::read(set.join(s).join("centroids.g1.f32")).unwrap();
    assert_eq!(centroids("shard-002"), centroids("shard-000"));
    let o = tessera(&manifest);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("3 shards, 40 documents"),
        "{}",
        stdout(&o)
    );
    assert_eq!(ShardSet::load(&set).unwrap().shards.len(), 3);
}
