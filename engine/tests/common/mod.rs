//! Helpers shared by the engine's end-to-end tests: paths of the fixtures,
//! running the `tessera` binary, and reading its results.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// The package folder as `cargo test` gives it at run time (the compile-time
// path is a fallback): a test binary reused from another checkout that shares
// the target folder must read this checkout's files.
pub fn root() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
}

pub fn tiny() -> String {
    root()
        .join("training/tests/fixtures/tiny-bert")
        .to_string_lossy()
        .into_owned()
}

pub fn sample() -> String {
    root()
        .join("docs/sample/corpus.jsonl")
        .to_string_lossy()
        .into_owned()
}

/// The `tessera` binary under test. `--precision auto` is pinned to fp32
/// (`TESSERA_NO_BF16`): on a CPU with native bf16 (AVX-512 BF16, AMX) it
/// would pick bf16, and the tiny random model's rankings — which these
/// tests compare — would then depend on the machine. Tests of bf16 ask for
/// it with `--precision bf16`.
pub fn tessera_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env("TESSERA_NO_BF16", "1");
    c
}

pub fn run(args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut c = tessera_command();
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in envs {
        c.env(k, v);
    }
    match stdin {
        None => c.output().expect("tessera runs"),
        Some(data) => {
            use std::io::Write;
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().expect("tessera runs");
            child.stdin.take().unwrap().write_all(data).unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "tessera failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    assert!(!o.status.success(), "tessera should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `tessera search --json` on `index`: MaxSim alone (`--retriever colbert`)
/// unless `extra` names a retriever.
pub fn search_json(index: &Path, query: &str, extra: &[&str]) -> serde_json::Value {
    let idx = index.to_string_lossy();
    let mut a = vec![
        "search",
        "--index",
        &idx,
        "--json",
        "--device",
        "cpu",
        "--threads",
        "1",
    ];
    if !extra.contains(&"--retriever") {
        a.extend_from_slice(&["--retriever", "colbert"]);
    }
    a.extend_from_slice(extra);
    a.push(query);
    serde_json::from_str(ok(&run(&a, &[], None)).trim()).unwrap()
}

/// `tessera index info INDEX` as JSON.
pub fn index_info(index: &Path, envs: &[(&str, &str)]) -> serde_json::Value {
    let out = ok(&run(
        &["index", "info", &index.to_string_lossy()],
        envs,
        None,
    ));
    serde_json::from_str(&out).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

pub const TOPICS: [&str; 8] = [
    "moon tides ocean",
    "volcano lava magma",
    "piano music chords",
    "bread flour yeast",
    "river delta water",
    "comet orbit sun",
    "violin strings bow",
    "cheese milk cows",
];

/// A BEIR folder: one document and one query per topic; queries 0–5 train,
/// 6–7 dev.
pub fn toy_dataset(dir: &Path, train_qrels: Option<&str>) -> PathBuf {
    let ds = dir.join("toy");
    std::fs::create_dir_all(ds.join("qrels")).unwrap();
    let corpus: String = TOPICS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"_id": format!("d{i}"), "title": t, "text": format!("all about {t} and {t}")})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(ds.join("corpus.jsonl"), corpus).unwrap();
    let queries: String = TOPICS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"_id": format!("q{i}"), "text": format!("what about {t}")})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(ds.join("queries.jsonl"), queries).unwrap();
    let mut train = String::from("query-id\tcorpus-id\tscore\n");
    for i in 0..6 {
        train += &format!("q{i}\td{i}\t1\n");
    }
    std::fs::write(ds.join("qrels/train.tsv"), train_qrels.unwrap_or(&train)).unwrap();
    std::fs::write(
        ds.join("qrels/dev.tsv"),
        "query-id\tcorpus-id\tscore\nq6\td6\t1\nq7\td7\t1\n",
    )
    .unwrap();
    ds
}

/// Training options of the fixtures: one CPU thread, small mining (4) and
/// dev pools (8).
pub const SMALL_TRAINING: &[&str] = &[
    "--device",
    "cpu",
    "--threads",
    "1",
    "--mine-depth",
    "4",
    "--pool-depth",
    "8",
];

/// `train reduce`'s settings for the toy data where a test names none
/// (its defaults are the recipe for real corpora: 5,000 pseudo-queries per
/// dataset, 16 negatives per query).
const SMALL_REDUCTION: &[(&str, &str)] = &[("--pseudo-queries", "0"), ("--negatives", "2")];

/// `tessera train reduce` of `ds` with `model` into `out` with
/// [`SMALL_TRAINING`], then `extra`, and [`SMALL_REDUCTION`] for what
/// `extra` leaves out.
pub fn train_reduce(
    ds: &Path,
    model: &Path,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    let mut a = vec![
        "train",
        "reduce",
        "--dataset",
        ds.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(SMALL_TRAINING);
    a.extend_from_slice(extra);
    for (flag, value) in SMALL_REDUCTION {
        if !extra.contains(flag) {
            a.extend([*flag, *value]);
        }
    }
    run(&a, envs, None)
}

/// The toy dataset and a 64-dim model of it: the tiny BERT with an
/// untrained linear head, as `train heads --steps 0` writes it.
pub fn model64_fixture(dir: &Path, envs: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let ds = toy_dataset(dir, None);
    let model = dir.join("model64");
    let t = tiny();
    let mut heads = vec![
        "train",
        "heads",
        "--dataset",
        ds.to_str().unwrap(),
        "--model",
        &t,
        "--head",
        "linear",
        "--dim",
        "64",
        "--steps",
        "0",
        "--out",
        model.to_str().unwrap(),
    ];
    heads.extend_from_slice(SMALL_TRAINING);
    ok(&run(&heads, envs, None));
    (ds, model)
}

/// The reduction fixture: [`model64_fixture`] and an orthogonal reduction
/// of its vectors to {16, 32} trained a few steps.
pub fn reduced_fixture(dir: &Path, envs: &[(&str, &str)]) -> (PathBuf, PathBuf, PathBuf) {
    let (ds, model) = model64_fixture(dir, envs);
    let red = dir.join("reduction");
    ok(&train_reduce(
        &ds,
        &model,
        &red,
        &[
            "--dims",
            "16,32",
            "--steps",
            "8",
            "--batch-queries",
            "4",
            "--eval-every",
            "4",
            "--checkpoint-every",
            "4",
            // Distillation alone, so the reduced index keeps the full
            // one's ranking (the toy labels would pull it elsewhere).
            "--contrastive-weight",
            "0",
            "--distill-temperature",
            "1",
            "--lr",
            "1e-3",
        ],
        envs,
    ));
    (ds, model, red)
}
