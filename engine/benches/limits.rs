//! Memory under maximal requests (`scripts/bench-limits`): starts `tessera
//! serve` on 127.0.0.1 (random port) over a copy of an index, with its
//! default limits, and drives it with a bounded load in which every call is
//! as large as those limits allow — a BM25 and a hybrid query of 1,024
//! distinct words (the most BM25 terms a query may have, 8 KiB), a Search of pre-encoded queries
//! filling `--max-call-tokens` up to the message limit with `k` =
//! `--max-k`, an AddDocuments of documents of `--max-document-bytes` up to
//! `--max-add-mb`, a GetDocuments of `--max-ids` ids with their texts —
//! while sampling the server's RSS every 20 ms. Reports RSS at rest, the
//! peak, and every call's outcome by kind.
//!
//!   limits --bin target/release/tessera --index DIR [--clients 16]
//!          [--requests 120] [--max-seconds 180] [--kinds bm25,hybrid,vectors,get,add]
//!          [-- extra serve args…]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;

use common::{rss_mib, RssSampler};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// Up to `bytes` of pseudo-words, at most `max_words` of them (each a
/// different BM25 term).
fn words(bytes: usize, max_words: usize, seed: u64) -> String {
    let mut s = String::with_capacity(bytes);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut n = 0;
    while s.len() + 9 < bytes && n < max_words {
        n += 1;
        for _ in 0..7 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push((b'a' + (x % 26) as u8) as char);
        }
        s.push(' ');
    }
    s
}

/// The calls, in turn; every tenth is an add (each writes ~63 MB), when
/// adds are among `kinds`.
fn kind(i: usize, kinds: &[String]) -> String {
    let adds = kinds.iter().any(|k| k == "add");
    let rest: Vec<&String> = kinds.iter().filter(|k| *k != "add").collect();
    if adds && (rest.is_empty() || i % 10 == 9) {
        "add".into()
    } else {
        rest[i % rest.len()].clone()
    }
}

/// A request with a deadline long enough for a maximal call under load
/// (the server's --max-timeout-ms is 10 minutes).
fn long<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(300));
    r
}

fn main() {
    let mut bin = PathBuf::from("target/release/tessera");
    let mut index = PathBuf::new();
    let (mut clients, mut requests, mut max_seconds) = (16usize, 120usize, 180.0f64);
    let mut serve_args = Vec::new();
    let mut kinds: Vec<String> = ["bm25", "hybrid", "vectors", "get", "add"]
        .map(String::from)
        .to_vec();
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{x} needs a value"));
        match x.as_str() {
            "--bin" => bin = v().into(),
            "--index" => index = v().into(),
            "--clients" => clients = v().parse().expect("--clients"),
            "--requests" => requests = v().parse().expect("--requests"),
            "--max-seconds" => max_seconds = v().parse().expect("--max-seconds"),
            "--kinds" => kinds = v().split(',').map(str::to_owned).collect(),
            "--bench" => {}
            "--" => serve_args = it.by_ref().collect(),
            o => panic!("unknown argument {o}"),
        }
    }
    assert!(!index.as_os_str().is_empty(), "--index is required");
    // Adds change the index: serve a copy.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("index");
    copy_dir(&index, &copy);

    let mut child = Command::new(&bin)
        .args(["serve", "--index", copy.to_str().unwrap()])
        .args(["--addr", "127.0.0.1:0"])
        .args(&serve_args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("serve.log")).unwrap())
        .spawn()
        .expect("tessera serve starts");
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let url = format!("http://{addr}");
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dim, ids) = rt.block_on(async {
        let t = Instant::now();
        loop {
            if let Ok(mut c) = TesseraClient::connect(url.clone()).await {
                if let Ok(info) = c.index_info(pb::IndexInfoRequest {}).await {
                    // Ids to read back: the hits of a broad query.
                    let r = c
                        .search(pb::SearchRequest {
                            queries: vec![pb::Query {
                                text: "the".into(),
                                k: 1000,
                                retriever: pb::Retriever::Bm25 as i32,
                                ..Default::default()
                            }],
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let ids: Vec<String> = r.results[0].hits.iter().map(|h| h.id.clone()).collect();
                    break (info.into_inner().query_dim as usize, ids);
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let rest = rss_mib(pid, "VmRSS:");
    eprintln!("server on {addr}, RSS at rest {rest:.0} MiB, query dim {dim}");

    // The limits are the server's defaults (tessera serve --help).
    let (max_query_bytes, max_k, max_msg) = (16_384usize, 1000u32, 16usize << 20);
    let (max_query_tokens, max_call_tokens) = (512usize, 32_768usize);
    let (max_doc_bytes, max_add) = (1usize << 20, 64usize << 20);
    let max_ids = 100_000usize;
    let per_query = max_query_tokens * dim * 4 + 64;
    let n_vec = (max_call_tokens / max_query_tokens).min((max_msg - 4096) / per_query);
    let vectors: Vec<f32> = (0..max_query_tokens * dim)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
        .collect();
    let vq = tessera_proto::pack_vectors(&vectors, max_query_tokens);
    let docs_per_add = max_add / max_doc_bytes - 1;
    let get_ids: Vec<String> = ids.iter().cycle().take(max_ids).cloned().collect();
    let (vq, get_ids) = (Arc::new(vq), Arc::new(get_ids));

    let sampler = RssSampler::start(pid, Duration::from_millis(20));
    let outcomes: Arc<Mutex<BTreeMap<(String, String), usize>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut c = TesseraClient::connect(url.clone())
                .await
                .unwrap()
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let (next, outcomes) = (next.clone(), outcomes.clone());
            let (vq, get_ids) = (vq.clone(), get_ids.clone());
            let kinds = kinds.clone();
            let deadline = t0 + Duration::from_secs_f64(max_seconds);
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests || Instant::now() >= deadline {
                        break;
                    }
                    let kind = kind(i, &kinds);
                    let kind = kind.as_str();
                    let text = |r: pb::Retriever| pb::Query {
                        text: words(
                            max_query_bytes,
                            tessera_index::text::MAX_QUERY_TERMS,
                            i as u64,
                        ),
                        k: max_k,
                        retriever: r as i32,
                        ..Default::default()
                    };
                    let code = match kind {
                        "bm25" | "hybrid" => {
                            let r = if kind == "bm25" {
                                pb::Retriever::Bm25
                            } else {
                                pb::Retriever::Hybrid
                            };
                            let q = text(r);
                            c.search(long(pb::SearchRequest {
                                queries: vec![q],
                                ..Default::default()
                            }))
                            .await
                            .map(|_| ())
                        }
                        "vectors" => {
                            let q = pb::Query {
                                vectors: Some((*vq).clone()),
                                k: max_k,
                                retriever: pb::Retriever::Colbert as i32,
                                ..Default::default()
                            };
                            c.search(long(pb::SearchRequest {
                                queries: vec![q; n_vec],
                                ..Default::default()
                            }))
                            .await
                            .map(|_| ())
                        }
                        "add" => {
                            let msgs: Vec<pb::AddDocumentsRequest> = (0..docs_per_add)
                                .map(|d| pb::AddDocumentsRequest {
                                    documents: vec![pb::NewDocument {
                                        id: format!("limits-{i}-{d}"),
                                        text: words(
                                            max_doc_bytes - 64,
                                            usize::MAX,
                                            (i * 1000 + d) as u64,
                                        ),
                                        ..Default::default()
                                    }],
                                    skip_existing: false,
                                })
                                .collect();
                            // Each add indexes ~63 MB of text: give it time.
                            let mut req = tonic::Request::new(tokio_stream::iter(msgs));
                            req.set_timeout(Duration::from_secs(300));
                            c.add_documents(req).await.map(|_| ())
                        }
                        _ => c
                            .get_documents(long(pb::GetDocumentsRequest {
                                ids: (*get_ids).clone(),
                            }))
                            .await
                            .map(|_| ()),
                    };
                    let code = match code {
                        Ok(()) => "OK".to_owned(),
                        Err(s) => format!("{:?}", s.code()),
                    };
                    *outcomes
                        .lock()
                        .unwrap()
                        .entry((kind.to_owned(), code))
                        .or_default() += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let peak = sampler.peak();
    let hwm = rss_mib(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    // Errors the server logged, for the record.
    let log = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("error"))
        .take(10)
    {
        eprintln!("server: {l}");
    }

    println!(
        "{} calls in {secs:.1} s from {clients} clients; per call: {n_vec} pre-encoded queries of \
         {max_query_tokens} tokens (k {max_k}), {docs_per_add} documents of {} KiB, {max_ids} ids, \
         query texts of {max_query_bytes} bytes",
        next.load(Ordering::Relaxed).min(requests),
        max_doc_bytes >> 10
    );
    println!("| call | outcome | count |");
    println!("|---|---|---:|");
    for ((kind, code), n) in outcomes.lock().unwrap().iter() {
        println!("| {kind} | {code} | {n} |");
    }
    println!(
        "Server RSS: at rest {rest:.0} MiB, peak sampled {peak:.0} MiB, peak (VmHWM) {hwm:.0} MiB."
    );
}
