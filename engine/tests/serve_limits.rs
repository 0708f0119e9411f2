//! `tessera serve` under bad input and pressure: every malformed request is
//! INVALID_ARGUMENT naming its field and leaves the server healthy;
//! deadlines, overload, loading and graceful shutdown answer as documented.

mod common;
mod serve_harness;

use std::time::{Duration, Instant};

use prost::Message;
use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;
use tonic::Code;

use serve_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field_and_never_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = Server::start(
        &index,
        &[
            "--max-k",
            "50",
            "--max-message-mb",
            "1",
            "--max-document-bytes",
            "1000",
        ],
        "panic-text=boom",
    );
    server.wait_serving().await;
    let mut c = server.client().await;
    let one = |q: pb::Query| search_req(vec![q]);
    let vq = |data: Vec<u8>, n: u32| pb::Query {
        vectors: Some(pb::TokenVectors {
            data,
            num_tokens: n,
        }),
        ..text_query("", 5)
    };
    expect_invalid(c.search(search_req(vec![])).await, "queries: at least one");
    expect_invalid(
        c.search(one(text_query("   ", 5))).await,
        "queries[0].text: empty query text",
    );
    // Caps are checked before any work, naming the field and the cap.
    expect_invalid(
        c.search(one(text_query(&"tides ".repeat(3000), 5))).await,
        "queries[0].text: 18000 bytes is above the server's --max-query-bytes 16384",
    );
    expect_invalid(
        c.search(one(text_query("tides", 0))).await,
        "queries[0].k: must be at least 1",
    );
    expect_invalid(
        c.search(search_req(vec![
            text_query("tides", 5),
            text_query("tides", 51),
        ]))
        .await,
        "queries[1].k: 51 is above the server's --max-k 50",
    );
    expect_invalid(
        c.search(one(vq(vec![0; 4 * 31], 1))).await,
        "queries[0].vectors.data: 124 bytes is not a multiple of 4 × dim = 128",
    );
    expect_invalid(
        c.search(one(vq(vec![0; 4 * 64], 3))).await,
        "queries[0].vectors.num_tokens: says 3 but data holds 2 tokens",
    );
    let mut nan = vec![0.1f32; 64];
    nan[40] = f32::NAN;
    expect_invalid(
        c.search(one(pb::Query {
            vectors: Some(tessera_proto::pack_vectors(&nan, 2)),
            ..text_query("", 5)
        }))
        .await,
        "token 1, dim 8 is not finite",
    );
    let mut inf = vec![0.1f32; 32];
    inf[0] = f32::INFINITY;
    expect_invalid(
        c.search(one(pb::Query {
            vectors: Some(tessera_proto::pack_vectors(&inf, 1)),
            ..text_query("", 5)
        }))
        .await,
        "is not finite",
    );
    expect_invalid(
        c.search(one(pb::Query {
            retriever: 9,
            ..text_query("tides", 5)
        }))
        .await,
        "queries[0].retriever: unknown value 9",
    );
    expect_invalid(
        c.search(one(pb::Query {
            retriever: pb::Retriever::Bm25 as i32,
            ..text_query("", 5)
        }))
        .await,
        "BM25 and hybrid need words",
    );
    expect_invalid(
        c.search(one(pb::Query {
            candidates: Some(pb::CandidateParams {
                generator: 7,
                ..Default::default()
            }),
            ..text_query("tides", 5)
        }))
        .await,
        "queries[0].candidates.generator: unknown value 7",
    );
    expect_invalid(
        c.search(one(pb::Query {
            candidates: Some(pb::CandidateParams {
                n_probe: Some(0),
                ..Default::default()
            }),
            ..text_query("tides", 5)
        }))
        .await,
        "queries[0].candidates.n_probe: must be at least 1",
    );
    expect_invalid(
        c.search(one(pb::Query {
            filter: "{\"eq\": ".into(),
            ..text_query("tides", 5)
        }))
        .await,
        "queries[0].filter: malformed filter",
    );
    expect_invalid(
        c.search(one(pb::Query {
            filter: r#"{"eq": {"field": "colour", "value": "red"}}"#.into(),
            ..text_query("tides", 5)
        }))
        .await,
        "no document has the field \"colour\"; metadata fields in this index: n, topic",
    );
    let big = "tides ".repeat(300_000);
    expect_invalid(
        c.search(one(text_query(&big, 5))).await,
        "exceeds the server's --max-message-mb limit of 1048576 bytes",
    );
    // Updates validate too, and fail whole.
    let bad_meta = vec![pb::AddDocumentsRequest {
        documents: vec![
            pb::NewDocument {
                id: "ok1".into(),
                text: "fine".into(),
                ..Default::default()
            },
            pb::NewDocument {
                id: "bad".into(),
                text: "x".into(),
                metadata_json: "[1, 2]".into(),
                ..Default::default()
            },
        ],
        skip_existing: false,
    }];
    let e = c
        .add_documents(tokio_stream::iter(bad_meta))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("documents[1].metadata_json")
            && e.message().contains("nothing was added"),
        "{}",
        e.message()
    );
    let e = c
        .add_documents(tokio_stream::iter(vec![pb::AddDocumentsRequest {
            documents: vec![pb::NewDocument {
                id: "v".into(),
                vectors: Some(pb::TokenVectors {
                    data: vec![0; 8],
                    num_tokens: 1,
                }),
                ..Default::default()
            }],
            skip_existing: false,
        }]))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("documents[0].vectors.data"),
        "{}",
        e.message()
    );
    // A document past --max-document-bytes, and ids against the dump
    // reader's rule (no whitespace, no control characters: a run file
    // could not name them), are refused naming the field.
    let long = "word ".repeat(300);
    for (id, text, needles) in [
        (
            "long",
            long.as_str(),
            &["documents[0].text: title and text are 1500 bytes, above the server's --max-document-bytes 1000"][..],
        ),
        ("two words", "x", &["documents[0].id", "whitespace"][..]),
        ("nul\0id", "x", &["documents[0].id", "control character"][..]),
    ] {
        let e = c
            .add_documents(tokio_stream::iter(vec![pb::AddDocumentsRequest {
                documents: vec![pb::NewDocument {
                    id: id.into(),
                    text: text.into(),
                    ..Default::default()
                }],
                skip_existing: false,
            }]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            needles.iter().all(|n| e.message().contains(n)),
            "{id:?}: {}",
            e.message()
        );
    }
    let r = c
        .get_documents(pb::GetDocumentsRequest {
            ids: vec!["ok1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.results[0].found, "a failed add left a document behind");

    // A panic inside a handler is INTERNAL, and the server carries on.
    let e = c.search(one(text_query("boom", 5))).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("injected fault"), "{}", e.message());
    let r = c
        .search(one(text_query("tides", 3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].hits.len(), 3);
    assert!(server.log_text().contains("a search panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_overload_loading_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    // Health is NOT_SERVING while the index loads, and calls are refused.
    let server = Server::start(
        &index,
        &["--max-in-flight", "1", "--max-queue", "1", "--grace-s", "5"],
        "search-delay-ms=300,load-delay-ms=1500",
    );
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let t = Instant::now();
    loop {
        match server.health("").await {
            Ok(s) => {
                assert_eq!(s, not_serving);
                break;
            }
            Err(_) => assert!(
                t.elapsed() < Duration::from_secs(10),
                "health never answered"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = server.client().await;
    let e = c
        .search(search_req(vec![text_query("tides", 3)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("loading"));
    server.wait_serving().await;

    // A deadline shorter than the work: DEADLINE_EXCEEDED.
    let mut req = tonic::Request::new(search_req(vec![text_query("tides", 3)]));
    req.set_timeout(Duration::from_millis(100));
    let e = c.search(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // More concurrent calls than in-flight + queue: some RESOURCE_EXHAUSTED
    // at once (with a retry hint), the rest served, nothing else.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.search(search_req(vec![text_query("tides", 3)])).await;
            (r.map(|_| ()), t.elapsed())
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (Ok(()), _) => served += 1,
            (Err(e), took) if e.code() == Code::ResourceExhausted => {
                assert!(e.metadata().get("retry-after-ms").is_some());
                assert!(
                    took < Duration::from_millis(250),
                    "a refusal must be immediate, took {took:?}"
                );
                refused += 1;
            }
            (Err(e), _) => panic!("unexpected error under overload: {e:?}"),
        }
    }
    assert!(
        served >= 1 && refused >= 1,
        "served {served}, refused {refused}"
    );
    assert_eq!(served + refused, 6);

    // SIGTERM: the call in flight finishes; new calls are refused.
    let mut c2 = c.clone();
    let inflight =
        tokio::spawn(async move { c2.search(search_req(vec![text_query("tides", 3)])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.terminate();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = async {
        let mut fresh = TesseraClient::connect(server.url())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        fresh.search(search_req(vec![text_query("tides", 3)])).await
    }
    .await;
    assert_eq!(late.unwrap_err().code(), Code::Unavailable);
    let r = inflight
        .await
        .unwrap()
        .expect("the call in flight finishes");
    assert_eq!(r.into_inner().results[0].hits.len(), 3);
    let mut server = server;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "server did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}: {}", server.log_text());
}

/// Bytes that are not the method's protobuf message are INVALID_ARGUMENT
/// (the caller's fault), unary and streaming, and the server stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = Server::start(&index, &[], "");
    server.wait_serving().await;
    let code = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
calls = [
    lambda: ch.unary_unary("/tessera.v1.Tessera/Search", **raw)(b"\xff\xff\xff\xff", timeout=20),
    lambda: ch.stream_unary("/tessera.v1.Tessera/AddDocuments", **raw)(iter([b"\x0a\xff\xff"]), timeout=20),
]
for call in calls:
    try:
        call()
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
"#;
    let out = std::process::Command::new(python())
        .args(["-c", code, &server.addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in lines {
        assert!(l.starts_with("INVALID_ARGUMENT"), "{l}");
        assert!(l.contains("decode"), "{l}");
    }
    // Still serving, still answering.
    let mut c = server.client().await;
    let r = c
        .search(search_req(vec![text_query("ocean tides", 2)]))
        .await
        .unwrap();
    assert_eq!(r.into_inner().results[0].hits.len(), 2);
    assert_eq!(server.health("").await.unwrap(), 1);
}

/// Pre-encoded queries are capped in tokens, per query and per call,
/// before any vector is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_encoded_queries_are_capped_in_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let one = encoded_query("ocean tides and the moon");
    let n = one.num_tokens;
    let server = Server::start(
        &index,
        &[
            "--max-query-tokens",
            &(n + 1).to_string(),
            "--max-call-tokens",
            &(2 * n + 1).to_string(),
        ],
        "",
    );
    server.wait_serving().await;
    let mut c = server.client().await;
    let vq = |v: pb::TokenVectors| pb::Query {
        vectors: Some(v),
        k: 3,
        retriever: pb::Retriever::Colbert as i32,
        ..Default::default()
    };
    // One query within both caps: answered.
    let r = c.search(search_req(vec![vq(one.clone())])).await.unwrap();
    assert_eq!(r.into_inner().results[0].hits.len(), 3);
    // A query of twice the tokens: over the per-query cap, named.
    let mut long = one.clone();
    long.data.extend_from_slice(&one.data);
    long.num_tokens = 2 * n;
    expect_invalid(
        c.search(search_req(vec![vq(long)])).await,
        "queries[0].vectors.num_tokens",
    );
    // Three queries within the per-query cap, over the per-call one.
    let e = c
        .search(search_req(vec![
            vq(one.clone()),
            vq(one.clone()),
            vq(one.clone()),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("--max-call-tokens"), "{e:?}");
    // The server still answers.
    c.search(search_req(vec![vq(one)])).await.unwrap();
}

/// CPU seconds (user + system) the process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// A search that runs past its deadline, or whose client goes away, stops
/// at its next block of work: the server's CPU use stops within 100 ms.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_stops_burning_cpu_at_its_deadline_or_when_its_client_leaves() {
    use tessera_index::synthetic::Synthetic;
    // Seconds of exact MaxSim: 4,000 documents of 60 tokens against a
    // query of 2,048 tokens, exhaustively.
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("big.idx");
    let syn = Synthetic {
        dim: 64,
        topics: 16,
        min_len: 60,
        max_len: 60,
        noise: 0.5,
        seed: 7,
    };
    let mut b = tessera_index::IndexBuilder::create(
        &index,
        tessera_index::BuildOptions {
            num_centroids: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    for d in syn.documents(0, 4000) {
        b.add(d).unwrap();
    }
    b.finish(&mut |_| {}).unwrap();
    let server = Server::start(
        &index,
        &[
            "--no-model",
            "--max-query-tokens",
            "4096",
            "--max-timeout-ms",
            "600000",
        ],
        "",
    );
    server.wait_serving().await;
    let pid = server.child.id();
    let q = syn.queries(4000, 1).remove(0);
    let mut flat = Vec::new();
    for _ in 0..64 {
        flat.extend_from_slice(q.as_slice());
    }
    let tokens = flat.len() / 64;
    let query = pb::Query {
        vectors: Some(tessera_proto::pack_vectors(&flat, tokens)),
        candidates: Some(pb::CandidateParams {
            generator: pb::CandidateGenerator::Exhaustive as i32,
            ..Default::default()
        }),
        ..text_query("", 10)
    };
    let idle = |label: &'static str| async move {
        // CPU used from 100 ms after the end to 800 ms after it: nothing
        // but an idle runtime (10 ms is one clock tick).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let used = cpu_seconds(pid) - a;
        assert!(
            used <= 0.03,
            "{label}: the server used {used:.2} CPU seconds after the search should have stopped"
        );
    };

    // The deadline: 300 ms for seconds of work.
    let mut c = server.client().await;
    let before = cpu_seconds(pid);
    let mut req = tonic::Request::new(search_req(vec![query.clone()]));
    req.set_timeout(Duration::from_millis(300));
    let e = c.search(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    idle("deadline").await;
    // It did run (at least two clock ticks, even on a busy machine).
    assert!(cpu_seconds(pid) - before >= 0.02, "the search did not run");

    // The client goes away: the call is dropped 300 ms in, with a long
    // deadline left.
    let mut c2 = c.clone();
    let q2 = query.clone();
    let call = tokio::spawn(async move {
        let mut req = tonic::Request::new(search_req(vec![q2]));
        req.set_timeout(Duration::from_secs(120));
        c2.search(req).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let _ = call.await;
    idle("client gone").await;

    // The lanes are free again: a small search answers.
    let small = pb::Query {
        vectors: Some(tessera_proto::pack_vectors(
            q.as_slice(),
            q.as_slice().len() / 64,
        )),
        ..text_query("", 3)
    };
    let r = c.search(search_req(vec![small])).await.unwrap();
    assert_eq!(r.into_inner().results[0].hits.len(), 3);
}

/// What one call may hold: the documents of an AddDocuments call together
/// (--max-add-mb) and the answer of a Search or GetDocuments
/// (--max-response-mb) are capped, INVALID_ARGUMENT naming the field and
/// the flag, nothing added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cannot_hold_more_than_its_caps() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = Server::start(&index, &["--max-add-mb", "1", "--max-response-mb", "1"], "");
    server.wait_serving().await;
    let mut c = server.client().await;

    // Two documents of 600 KB each, in two stream messages: each under
    // --max-document-bytes, together over --max-add-mb.
    let doc = |id: &str| pb::AddDocumentsRequest {
        documents: vec![pb::NewDocument {
            id: id.into(),
            text: "tides ".repeat(100_000),
            ..Default::default()
        }],
        skip_existing: false,
    };
    let e = c
        .add_documents(tokio_stream::iter(vec![doc("big1"), doc("big2")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("documents:") && e.message().contains("--max-add-mb"),
        "{e:?}"
    );
    let info = c.index_info(pb::IndexInfoRequest {}).await.unwrap();
    assert_eq!(info.into_inner().num_docs, 40, "nothing was added");

    // GetDocuments of one document 20,000 times: a ~10 MB answer.
    let e = c
        .get_documents(pb::GetDocumentsRequest {
            ids: vec!["doc01".to_owned(); 20_000],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("ids:") && e.message().contains("--max-response-mb"),
        "{e:?}"
    );

    // Search: 200 queries asking for every hit's text.
    let q = pb::Query {
        fields: Some(pb::Fields {
            title: true,
            text: true,
            metadata: true,
        }),
        ..text_query("ocean tides moon", 40)
    };
    let e = match c.search(search_req(vec![q.clone(); 200])).await {
        Ok(r) => panic!("answered {} bytes", r.into_inner().encoded_len()),
        Err(e) => e,
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("--max-response-mb"), "{e:?}");
    // A few such queries are fine.
    let r = c.search(search_req(vec![q; 2])).await.unwrap();
    assert_eq!(r.into_inner().results[1].hits.len(), 40);
}
