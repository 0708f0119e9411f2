//! gRPC load benchmark (`scripts/bench-grpc`): starts `tessera serve` on
//! 127.0.0.1 at a random port, drives it with a bounded closed-loop load
//! (N clients, each sending one single-query Search at a time, until a
//! request count or a time limit), and reports queries/s and latency
//! percentiles for text queries (server-side encoding) and pre-encoded
//! vectors (search only), with the library's own in-process times and the
//! server's RSS at rest and under load. Results: docs/BENCHMARKS.md.
//!
//!   grpc --bin target/release/tessera --index DIR --dataset DIR [--split dev]
//!        [--clients 1,4,16] [--requests 400] [--max-seconds 60] [--k 10]
//!        [--modes text,vectors] [--json OUT] [-- extra serve args…]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_eval::stats::{p50_p99, percentile, percentiles};
use tessera_index::{Index, SearchParams};
use tessera_model::{DeviceChoice, Encoder, EncoderOptions};
use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;

use common::{rss_mib, RssSampler};

struct Args {
    bin: PathBuf,
    index: PathBuf,
    dataset: PathBuf,
    split: String,
    clients: Vec<usize>,
    requests: usize,
    max_seconds: f64,
    k: u32,
    json: Option<PathBuf>,
    modes: Vec<String>,
    serve_args: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        bin: PathBuf::from("target/release/tessera"),
        index: PathBuf::new(),
        dataset: PathBuf::new(),
        split: "dev".into(),
        clients: vec![1, 4, 16],
        requests: 400,
        max_seconds: 60.0,
        k: 10,
        json: None,
        modes: vec!["text".into(), "vectors".into()],
        serve_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{x} needs a value"));
        match x.as_str() {
            "--bin" => a.bin = v().into(),
            "--index" => a.index = v().into(),
            "--dataset" => a.dataset = v().into(),
            "--split" => a.split = v(),
            "--clients" => {
                a.clients = v()
                    .split(',')
                    .map(|c| c.parse().expect("--clients"))
                    .collect()
            }
            "--requests" => a.requests = v().parse().expect("--requests"),
            "--max-seconds" => a.max_seconds = v().parse().expect("--max-seconds"),
            "--k" => a.k = v().parse().expect("--k"),
            "--json" => a.json = Some(v().into()),
            "--modes" => a.modes = v().split(',').map(str::to_owned).collect(),
            "--bench" => {}
            "--" => {
                a.serve_args = it.by_ref().collect();
            }
            o => panic!("unknown argument {o}"),
        }
    }
    assert!(!a.index.as_os_str().is_empty(), "--index is required");
    assert!(!a.dataset.as_os_str().is_empty(), "--dataset is required");
    a
}

#[derive(Debug, serde::Serialize)]
struct Row {
    mode: &'static str,
    clients: usize,
    requests: usize,
    refused: usize,
    errors: usize,
    qps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// The server's own total (receipt to answer), p50.
    server_p50_ms: f64,
    /// The server's ranking time (candidate generation + re-rank), p50.
    search_p50_ms: f64,
    mean_batch_texts: f64,
    rss_max_mib: f64,
}

fn main() {
    let a = args();
    let ds = tessera_eval::beir::Dataset::open(&a.dataset).expect("dataset");
    let qrels = ds.qrels(&a.split).expect("qrels");
    let queries = ds.queries(&qrels).expect("queries");
    eprintln!("{} {} queries", queries.len(), a.split);

    // In-process reference: the library, as `tessera search` runs it.
    let index = Index::open(&a.index).expect("index");
    let model = PathBuf::from(
        index.manifest().info["model"]["path"]
            .as_str()
            .expect("index records its model"),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tessera_model::device::set_threads(threads);
    let encoder = Encoder::load(
        &model,
        EncoderOptions {
            device: DeviceChoice::Cpu,
            batch_size: 32,
            precision: Default::default(),
        },
    )
    .expect("model");
    let p = SearchParams {
        k: a.k as usize,
        ..SearchParams::default()
    };
    let (mut enc_ms, mut lib_ms, mut cli_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut vectors = Vec::new();
    for q in &queries {
        let t = Instant::now();
        let v = encoder
            .encode_queries(&[q.text.as_str()])
            .unwrap()
            .items
            .remove(0)
            .vectors;
        let e = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        index.search(&v, &p).unwrap();
        let s = t.elapsed().as_secs_f64() * 1e3;
        enc_ms.push(e);
        lib_ms.push(s);
        cli_ms.push(e + s);
        vectors.push(tessera_proto::pack_vectors(v.as_slice(), v.len()));
    }
    // A second pass of the search alone, warm.
    lib_ms.clear();
    for q in &vectors {
        let v = tessera_index::TokenVectors::new(
            index.query_dim(),
            tessera_proto::unpack_f32(&q.data).unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        index.search(&v, &p).unwrap();
        lib_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let lib_qps = 1e3 * lib_ms.len() as f64 / lib_ms.iter().sum::<f64>();
    let cli_qps = 1e3 * cli_ms.len() as f64 / cli_ms.iter().sum::<f64>();
    let enc_p50 = percentile(&enc_ms, 0.5);
    let (lib_p50, lib_p99) = p50_p99(&lib_ms);
    let cli_p50 = percentile(&cli_ms, 0.5);
    eprintln!(
        "in process: encode p50 {enc_p50:.2} ms, search p50 {lib_p50:.2} ms, text p50 {cli_p50:.2} ms"
    );
    drop(encoder);
    drop(index);

    // The server.
    let mut child = Command::new(&a.bin)
        .args([
            "serve",
            "--index",
            a.index.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(&a.serve_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tessera serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .next()
        .unwrap()
        .unwrap()
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let maddr = lines
        .next()
        .unwrap()
        .unwrap()
        .trim()
        .strip_prefix("metrics on http://")
        .unwrap()
        .trim_end_matches("/metrics")
        .to_owned();
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{addr}");
    rt.block_on(async {
        let t = Instant::now();
        loop {
            if let Ok(mut c) = TesseraClient::connect(url.clone()).await {
                if c.index_info(pb::IndexInfoRequest {}).await.is_ok() {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let rss_rest = rss_mib(pid, "VmRSS:");
    eprintln!("server on {addr}, RSS at rest {rss_rest:.0} MiB");

    let texts: Arc<Vec<String>> = Arc::new(queries.iter().map(|q| q.text.clone()).collect());
    let vectors = Arc::new(vectors);
    let mut rows = Vec::new();
    for mode in ["text", "vectors"] {
        if !a.modes.iter().any(|m| m == mode) {
            continue;
        }
        // Warm-up.
        rt.block_on(load(
            &url,
            mode,
            2,
            20,
            30.0,
            a.k,
            texts.clone(),
            vectors.clone(),
        ));
        for &clients in &a.clients {
            let before = batch_stats(&maddr);
            let sampler = RssSampler::start(pid, Duration::from_millis(50));
            let Load {
                lat,
                server,
                search,
                refused,
                errors,
                secs,
            } = rt.block_on(load(
                &url,
                mode,
                clients,
                a.requests,
                a.max_seconds,
                a.k,
                texts.clone(),
                vectors.clone(),
            ));
            let rss_max = sampler.peak();
            let after = batch_stats(&maddr);
            let batches = after.1 - before.1;
            let p = percentiles(&lat, &[0.5, 0.95, 0.99]);
            let row = Row {
                mode,
                clients,
                requests: lat.len(),
                refused,
                errors,
                qps: lat.len() as f64 / secs,
                p50_ms: p[0],
                p95_ms: p[1],
                p99_ms: p[2],
                server_p50_ms: percentile(&server, 0.5),
                search_p50_ms: percentile(&search, 0.5),
                mean_batch_texts: if batches > 0.0 {
                    (after.0 - before.0) / batches
                } else {
                    0.0
                },
                rss_max_mib: rss_max,
            };
            eprintln!("{row:?}");
            rows.push(row);
        }
    }
    let hwm = rss_mib(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    println!("| mode | clients | requests | refused | errors | queries/s | p50 ms | p95 ms | p99 ms | p99/p50 | server-side p50 ms | server ranking p50 ms | texts per encoder batch | server RSS max MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            r.mode, r.clients, r.requests, r.refused, r.errors, r.qps, r.p50_ms, r.p95_ms, r.p99_ms,
            r.p99_ms / r.p50_ms, r.server_p50_ms, r.search_p50_ms, r.mean_batch_texts, r.rss_max_mib
        );
    }
    println!();
    println!(
        "In process (one query at a time, {threads} threads): encode p50 {:.2} ms; search p50 {:.2} / p99 {:.2} ms ({lib_qps:.1} q/s); text query end to end p50 {:.2} ms ({cli_qps:.1} q/s).",
        enc_p50, lib_p50, lib_p99, cli_p50
    );
    println!("Server RSS at rest {rss_rest:.0} MiB; peak (VmHWM) {hwm:.0} MiB.");
    let by = |m: &str, c: usize| rows.iter().find(|r| r.mode == m && r.clients == c);
    if let (Some(t1), Some(t16), Some(v1), Some(v16)) = (
        by("text", 1),
        by("text", 16),
        by("vectors", 1),
        by("vectors", 16),
    ) {
        println!(
            "Targets: text 16 clients p99/p50 {:.2} (≤ 3), vectors 16 clients p99/p50 {:.2} (≤ 3); text throughput 16 vs 1 client {:.2}× (≥ 2); vectors p50 over the server's own ranking p50 {:+.2} ms, over the in-process library search p50 {:+.2} ms (≤ 1).",
            t16.p99_ms / t16.p50_ms,
            v16.p99_ms / v16.p50_ms,
            t16.qps / t1.qps,
            v1.p50_ms - v1.search_p50_ms,
            v1.p50_ms - lib_p50
        );
    }
    if let Some(path) = a.json {
        let v = serde_json::json!({
            "rows": rows,
            "in_process": {"encode_p50_ms": enc_p50, "search_p50_ms": lib_p50,
                "search_p99_ms": lib_p99, "text_p50_ms": cli_p50,
                "search_qps": lib_qps, "text_qps": cli_qps, "threads": threads},
            "rss_rest_mib": rss_rest, "rss_hwm_mib": hwm, "queries": queries.len(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

/// (sum, count) of the server's encoder batch-size histogram.
fn batch_stats(maddr: &str) -> (f64, f64) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(maddr) else {
        return (0.0, 0.0);
    };
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let get = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (
        get("tessera_encode_batch_texts_sum "),
        get("tessera_encode_batch_texts_count "),
    )
}

/// What one load run measured.
struct Load {
    /// Client-side latencies of successful calls, ms, sorted.
    lat: Vec<f64>,
    /// The server's own totals, ms, sorted.
    server: Vec<f64>,
    /// The server's ranking time (candidates + re-rank), ms, sorted.
    search: Vec<f64>,
    refused: usize,
    errors: usize,
    secs: f64,
}

/// Closed-loop load: `clients` tasks, each on its own connection, sending
/// one query per call until `requests` calls are done in all or
/// `max_seconds` pass. Returns sorted latencies (ms) of successful calls,
/// refusals, other errors and the elapsed seconds.
#[allow(clippy::too_many_arguments)]
async fn load(
    url: &str,
    mode: &'static str,
    clients: usize,
    requests: usize,
    max_seconds: f64,
    k: u32,
    texts: Arc<Vec<String>>,
    vectors: Arc<Vec<pb::TokenVectors>>,
) -> Load {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(max_seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = TesseraClient::connect(url.to_owned())
            .await
            .expect("connects");
        let (next, texts, vectors) = (next.clone(), texts.clone(), vectors.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut server, mut search, mut refused, mut errors) =
                (Vec::new(), Vec::new(), Vec::new(), 0, 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests || Instant::now() >= stop_at {
                    break;
                }
                let j = i % texts.len();
                let q = if mode == "text" {
                    pb::Query {
                        text: texts[j].clone(),
                        k,
                        ..Default::default()
                    }
                } else {
                    pb::Query {
                        vectors: Some(vectors[j].clone()),
                        k,
                        ..Default::default()
                    }
                };
                let t = Instant::now();
                match c
                    .search(pb::SearchRequest {
                        queries: vec![q],
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        let t = r.into_inner().results.remove(0).timings.unwrap_or_default();
                        server.push(t.total_ms);
                        search.push(t.candidates_ms + t.rerank_ms);
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
                    Err(_) => errors += 1,
                }
            }
            (lat, server, search, refused, errors)
        }));
    }
    let (mut lat, mut server, mut search, mut refused, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), 0, 0);
    for t in tasks {
        let (l, s, q, r, e) = t.await.unwrap();
        lat.extend(l);
        server.extend(s);
        search.extend(q);
        refused += r;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Load {
        lat,
        server,
        search,
        refused,
        errors,
        secs,
    }
}
