//! `tessera serve` while documents change: acknowledged additions survive a
//! SIGKILL, and searches never fail or see half an update.

mod common;
mod serve_harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::v1 as pb;

use common::ok;
use serve_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_adds_survive_sigkill_and_nothing_is_half_visible() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    const DOCS: usize = 6;
    // Kill points from early in the first stream to well into the run.
    for (round, kill_ms) in [40u64, 160, 350, 700].into_iter().enumerate() {
        let server = Server::start(&index, &[], "");
        server.wait_serving().await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let attempted = Arc::new(Mutex::new(0usize));
        let writer = {
            let (acked, attempted) = (acked.clone(), attempted.clone());
            let mut c = server.client().await;
            tokio::spawn(async move {
                for call in 0.. {
                    *attempted.lock().unwrap() = call + 1;
                    let docs: Vec<pb::NewDocument> = batch_ids(round, call, DOCS)
                        .into_iter()
                        .map(|id| pb::NewDocument {
                            text: format!("round {round} call {call}: {id} about kill points"),
                            id,
                            ..Default::default()
                        })
                        .collect();
                    // Two stream messages, a pause between them.
                    let (a, b) = docs.split_at(DOCS / 2);
                    let msgs = vec![
                        pb::AddDocumentsRequest {
                            documents: a.to_vec(),
                            skip_existing: false,
                        },
                        pb::AddDocumentsRequest {
                            documents: b.to_vec(),
                            skip_existing: false,
                        },
                    ];
                    let stream = tokio_stream::StreamExt::throttle(
                        tokio_stream::iter(msgs),
                        Duration::from_millis(15),
                    );
                    match c.add_documents(stream).await {
                        Ok(_) => acked.lock().unwrap().push(call),
                        Err(_) => return,
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(kill_ms)).await;
        drop(server); // SIGKILL
        let _ = writer.await;
        let acked = acked.lock().unwrap().clone();
        let attempted = *attempted.lock().unwrap();
        eprintln!(
            "round {round}: SIGKILL at {kill_ms} ms, {} of {attempted} calls acknowledged",
            acked.len()
        );
        ok(&tessera(&["index", "verify", index.to_str().unwrap()]));
        let server = Server::start(&index, &[], "");
        server.wait_serving().await;
        let mut c = server.client().await;
        for call in 0..attempted {
            let r = c
                .get_documents(pb::GetDocumentsRequest {
                    ids: batch_ids(round, call, DOCS),
                })
                .await
                .unwrap()
                .into_inner();
            let found = r.results.iter().filter(|d| d.found).count();
            if acked.contains(&call) {
                assert_eq!(
                    found, DOCS,
                    "round {round}: acknowledged call {call} lost documents"
                );
            } else {
                assert!(
                    found == 0 || found == DOCS,
                    "round {round}: call {call} is half visible ({found}/{DOCS})"
                );
            }
        }
        drop(server);
    }
    ok(&tessera(&["index", "verify", index.to_str().unwrap()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn searches_never_fail_or_see_half_an_update_while_documents_change() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = Server::start(&index, &["--max-in-flight", "16", "--max-queue", "64"], "");
    server.wait_serving().await;
    const BATCHES: usize = 8;
    const DOCS: usize = 5;
    let tag = |b: usize| format!("zqxmarker{b}");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2 {
        let mut c = server.client().await;
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut checks = 0usize;
            let mut i = r;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || checks < 10 {
                let b = i % BATCHES;
                i += 1;
                let g = c
                    .get_documents(pb::GetDocumentsRequest {
                        ids: batch_ids(99, b, DOCS),
                    })
                    .await
                    .expect("GetDocuments never fails")
                    .into_inner();
                let found = g.results.iter().filter(|d| d.found).count();
                assert!(
                    found == 0 || found == DOCS,
                    "batch {b}: {found}/{DOCS} documents visible"
                );
                let s = c
                    .search(search_req(vec![
                        pb::Query {
                            retriever: pb::Retriever::Bm25 as i32,
                            ..text_query(&tag(b), 20)
                        },
                        text_query("kill points and markers", 10),
                    ]))
                    .await
                    .expect("Search never fails")
                    .into_inner();
                let n = s.results[0].hits.len();
                assert!(
                    n == 0 || n == DOCS,
                    "batch {b}: a search saw {n}/{DOCS} of it"
                );
                checks += 1;
            }
            checks
        }));
    }
    let mut c = server.client().await;
    for b in 0..BATCHES {
        let docs = batch_ids(99, b, DOCS)
            .into_iter()
            .map(|id| pb::NewDocument {
                text: format!("{} {id} markers", tag(b)),
                id,
                ..Default::default()
            })
            .collect();
        c.add_documents(tokio_stream::iter(vec![pb::AddDocumentsRequest {
            documents: docs,
            skip_existing: false,
        }]))
        .await
        .unwrap();
        if b % 3 == 2 {
            let r = c
                .delete_documents(pb::DeleteDocumentsRequest {
                    ids: batch_ids(99, b - 1, DOCS),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.deleted as usize, DOCS);
        }
        if b == 5 {
            c.compact(pb::CompactRequest {}).await.unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() >= 10);
    }
    drop(server);
    ok(&tessera(&["index", "verify", index.to_str().unwrap()]));
}

/// A change another writer commits (here the CLI, while the server runs)
/// is what the server's next call answers from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_by_another_writer_is_seen_by_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = Server::start(&index, &[], "");
    server.wait_serving().await;
    let mut c = server.client().await;
    let get = |c: &mut tessera_proto::TesseraClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.get_documents(pb::GetDocumentsRequest {
                ids: vec!["doc01".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .results[0]
                .found
        }
    };
    assert!(get(&mut c).await);
    let before = c
        .index_info(pb::IndexInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    ok(&tessera(&[
        "index",
        "delete",
        "--index",
        index.to_str().unwrap(),
        "--ids",
        "doc01",
    ]));
    assert!(!get(&mut c).await, "the deleted document is gone");
    let after = c
        .index_info(pb::IndexInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.num_docs, before.num_docs - 1);
    assert!(after.generation > before.generation);
    let hits = c
        .search(search_req(vec![text_query("tides moon", 40)]))
        .await
        .unwrap()
        .into_inner();
    assert!(hits.results[0].hits.iter().all(|h| h.id != "doc01"));
    drop(server);
}

/// A damaged file is an error naming it, everywhere: `tessera search`
/// fails; `serve` stays up with health NOT_SERVING and answers every call
/// UNAVAILABLE with the file's name; a damaged manifest is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_is_named_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let seg = std::fs::read_dir(&index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let docs = seg.join("docs.bin");
    let mut bytes = std::fs::read(&docs).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&docs, &bytes).unwrap();

    let o = tessera(&["search", "--index", index.to_str().unwrap(), "tides"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("docs.bin") && err.contains("checksum"),
        "{err}"
    );

    let server = Server::start(&index, &[], "");
    let t = std::time::Instant::now();
    let status = loop {
        let mut c = server.client().await;
        match c.search(search_req(vec![text_query("tides", 3)])).await {
            Err(s) if s.message().contains("still loading") => {}
            other => break other,
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let e = status.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("docs.bin"), "{e:?}");
    assert_eq!(
        server.health("").await.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert!(server.log_text().contains("docs.bin"));
    drop(server);

    // The manifest's own checksum: a tombstone slipped in is refused.
    bytes[mid] ^= 0x20;
    std::fs::write(&docs, &bytes).unwrap();
    let manifest = index.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"deleted\": []", "\"deleted\": [0]"),
    )
    .unwrap();
    let o = tessera(&["index", "verify", index.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("manifest.json") && err.contains("checksum mismatch"),
        "{err}"
    );
}
