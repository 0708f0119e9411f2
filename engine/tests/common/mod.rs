//! Helpers shared by the engine's end-to-end tests: paths of the fixtures,
//! running the `tessera` binary, and reading its results.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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

pub fn run(args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
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
    a.extend_from_slice(extra);
    a.push(query);
    serde_json::from_str(ok(&run(&a, &[], None)).trim()).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}
