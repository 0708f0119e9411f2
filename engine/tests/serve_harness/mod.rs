//! The `tessera serve` test harness shared by the serve test files: a
//! real server on 127.0.0.1 at a random port, started and stopped by each
//! test (and killed on drop), with helpers to build the index and make
//! requests.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{ids as result_ids, ok, root, run, search_json, tiny};

pub fn tessera(args: &[&str]) -> Output {
    run(args, &[], None)
}

/// The sample corpus indexed with the tiny model.
pub fn build_index(dir: &Path) -> PathBuf {
    let out = dir.join("sample.idx");
    let sample = root().join("docs/sample/corpus.jsonl");
    ok(&tessera(&[
        "index",
        "build",
        "--input",
        sample.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]));
    out
}

/// A running `tessera serve`; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(index: &Path, extra: &[&str], faults: &str) -> Server {
        let log = index.with_extension(format!(
            "serve-{}.log",
            std::process::id() as u64 * 1000 + rand_suffix()
        ));
        let mut c = crate::common::tessera_command();
        c.args([
            "serve",
            "--index",
            index.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .args(["--device", "cpu", "--threads", "1", "--search-threads", "2"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("TESSERA_FAULTS", faults)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
        let mut child = c.spawn().expect("tessera serve starts");
        // Stdout lines, read on a thread: `listening on ADDR`, then
        // `metrics on URL` with --metrics-addr.
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
                let _ = tx.send(());
            }
        });
        let _ = rx.recv_timeout(Duration::from_secs(30));
        let line = lines.lock().unwrap().first().cloned().unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Server {
            child,
            addr,
            log,
            lines,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> TesseraClient<Channel> {
        TesseraClient::connect(self.url()).await.expect("connects")
    }

    pub async fn health(&self, service: &str) -> Result<i32, tonic::Status> {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?;
        Ok(r.into_inner().status)
    }

    pub async fn wait_serving(&self) {
        let t = Instant::now();
        loop {
            if self.health("").await.ok()
                == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "server never became SERVING; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn terminate(&self) {
        let s = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `msg` sending `authorization: Bearer KEY` (none without a key), with a
/// 20 s deadline.
pub fn with_key<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r.set_timeout(Duration::from_secs(20));
    r
}

/// A ColBERT (MaxSim alone) query for `text`.
pub fn text_query(text: &str, k: u32) -> pb::Query {
    pb::Query {
        text: text.into(),
        k,
        retriever: pb::Retriever::Colbert as i32,
        ..Default::default()
    }
}

pub fn search_req(queries: Vec<pb::Query>) -> pb::SearchRequest {
    pb::SearchRequest {
        queries,
        ..Default::default()
    }
}

pub fn ids(r: &pb::QueryResult) -> Vec<String> {
    r.hits.iter().map(|h| h.id.clone()).collect()
}

/// `tessera search --json` ids, the reference the server must match.
pub fn cli_ids(index: &Path, query: &str, extra: &[&str]) -> Vec<String> {
    result_ids(&search_json(index, query, extra))
}

/// For every fixture topic, the server's top 3 equal `tessera search -k 3`
/// with `flags` on `index`.
pub async fn serves_topics_like_the_cli(
    c: &mut TesseraClient<Channel>,
    index: &Path,
    flags: &[&str],
) {
    for t in crate::common::TOPICS {
        let q = format!("what about {t}");
        let mut cli = vec!["-k", "3"];
        cli.extend_from_slice(flags);
        let want = cli_ids(index, &q, &cli);
        let r = c
            .search(search_req(vec![text_query(&q, 3)]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&r.results[0]), want, "{q} with {flags:?}");
    }
}

/// The tiny model's vectors of `text` as a query, packed for the wire.
pub fn encoded_query(text: &str) -> pb::TokenVectors {
    let (flat, n) = query_vectors(&tiny(), text);
    tessera_proto::pack_vectors(&flat, n)
}

/// A model's query vectors of `text` (row-major) and their count.
pub fn query_vectors(model: &str, text: &str) -> (Vec<f32>, usize) {
    let v: serde_json::Value = serde_json::from_str(&ok(&tessera(&[
        "encode", "--model", model, "--device", "cpu", "--query", text, "--json",
    ])))
    .unwrap();
    let toks = v["tokens"].as_array().unwrap();
    let flat: Vec<f32> = toks
        .iter()
        .flat_map(|t| {
            t["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    (flat, toks.len())
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("TESSERA_VENV").map_or_else(|| root().join(".venv"), PathBuf::from);
    venv.join("bin/python")
}

pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn expect_invalid(r: Result<tonic::Response<pb::SearchResponse>, tonic::Status>, needle: &str) {
    let e = r.expect_err(needle);
    assert_eq!(e.code(), Code::InvalidArgument, "{needle}: {e:?}");
    assert!(
        e.message().contains(needle),
        "{:?} lacks {needle:?}",
        e.message()
    );
}

/// Ids of add call `call` in round `round`.
pub fn batch_ids(round: usize, call: usize, n: usize) -> Vec<String> {
    (0..n).map(|d| format!("r{round}-c{call}-d{d}")).collect()
}
