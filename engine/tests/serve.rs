//! `tessera serve` end to end: a real server on 127.0.0.1 at a random
//! port, started and stopped by each test, driven by the generated tonic
//! client, the `tessera query` CLI and the Python scripts. The tiny test
//! model keeps every server start under a second.

mod common;
mod serve_harness;

use std::path::Path;
use std::process::Command;

use tessera_proto::v1 as pb;
use tonic::Code;

use common::{ids as result_ids, ok, root, run};
use serve_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_built_at_r_32_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let (ds, model, red) = common::reduced_fixture(dir.path(), &envs);
    let index = dir.path().join("r32.idx");
    ok(&run(
        &[
            "index",
            "build",
            "--input",
            ds.join("corpus.jsonl").to_str().unwrap(),
            "--out",
            index.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--reduction",
            red.to_str().unwrap(),
            "--dim",
            "32",
            "--device",
            "cpu",
        ],
        &envs,
        None,
    ));
    // Started with the reduction named: accepted (it is the index's own).
    let rs = red.to_str().unwrap();
    let server = Server::start(&index, &["--reduction", rs, "--dim", "32"], "");
    server.wait_serving().await;
    let mut c = server.client().await;
    serves_topics_like_the_cli(&mut c, &index, &[]).await;
    // Search settings given to serve (as `reduce plan` recommends them)
    // apply to every query: the same hits as `tessera search` with them.
    let narrow = [
        "--n-probe",
        "1",
        "--probe-budget",
        "0",
        "--n-approx",
        "4",
        "--rerank-budget",
        "1",
    ];
    {
        let server = Server::start(&index, &narrow, "");
        server.wait_serving().await;
        serves_topics_like_the_cli(&mut server.client().await, &index, &narrow).await;
    }
    // Query vectors come at the model's width (64) and are reduced by the
    // server like documents were; 32-dim ones are refused.
    let (flat, n) = query_vectors(model.to_str().unwrap(), "what about moon tides ocean");
    assert_eq!(flat.len(), n * 64);
    let by_vectors = pb::Query {
        vectors: Some(tessera_proto::pack_vectors(&flat, n)),
        ..text_query("", 3)
    };
    let r = c
        .search(search_req(vec![by_vectors]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&r.results[0]),
        cli_ids(&index, "what about moon tides ocean", &["-k", "3"])
    );
    let half: Vec<f32> = flat.chunks(64).flat_map(|c| c[..32].to_vec()).collect();
    let wrong = pb::Query {
        vectors: Some(tessera_proto::pack_vectors(&half, n)),
        ..text_query("", 3)
    };
    let e = c.search(search_req(vec![wrong])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("64"), "{}", e.message());
    drop(server);
    // Started with another reduction: refused before listening.
    let o = run(
        &[
            "serve",
            "--index",
            index.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--reduction",
            rs,
            "--dim",
            "16",
        ],
        &envs,
        None,
    );
    let e = common::err(&o);
    assert!(e.contains("another reduction"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_works_end_to_end_and_matches_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = Server::start(&index, &["--metrics-addr", "127.0.0.1:0"], "");
    server.wait_serving().await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(server.health("tessera.v1.Tessera").await.unwrap(), serving);
    let mut c = server.client().await;

    // Text and vector queries give the hits `tessera search` gives.
    let q = "planets orbiting the sun";
    let want = cli_ids(&index, q, &["-k", "5"]);
    let r = c
        .search(search_req(vec![text_query(q, 5)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.results[0]), want);
    assert_eq!(r.generation, 1);
    // A query that names no retriever gets the CLI's default, hybrid.
    let default_query = pb::Query {
        retriever: pb::Retriever::Unspecified as i32,
        ..text_query(q, 5)
    };
    let r = c
        .search(search_req(vec![default_query]))
        .await
        .unwrap()
        .into_inner();
    let hybrid = cli_ids(&index, q, &["-k", "5", "--retriever", "hybrid"]);
    assert_eq!(ids(&r.results[0]), hybrid);
    let r = c
        .search(search_req(vec![text_query(q, 5)]))
        .await
        .unwrap()
        .into_inner();
    let t = r.results[0].timings.unwrap();
    assert!(t.encode_ms > 0.0 && t.total_ms >= t.encode_ms, "{t:?}");
    let by_vectors = pb::Query {
        text: String::new(),
        vectors: Some(encoded_query(q)),
        ..text_query(q, 5)
    };
    let r = c
        .search(search_req(vec![by_vectors]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.results[0]), want);
    assert_eq!(r.results[0].timings.as_ref().unwrap().encode_ms, 0.0);

    // A batch of three retrievers, answered in order, with stored fields.
    let batch = vec![
        pb::Query {
            id: "a".into(),
            ..text_query("ocean tides and the moon", 3)
        },
        pb::Query {
            id: "b".into(),
            retriever: pb::Retriever::Bm25 as i32,
            ..text_query("ocean tides and the moon", 3)
        },
        pb::Query {
            id: "c".into(),
            retriever: pb::Retriever::Hybrid as i32,
            fields: Some(pb::Fields {
                title: true,
                text: true,
                metadata: true,
            }),
            ..text_query("ocean tides and the moon", 3)
        },
    ];
    let r = c.search(search_req(batch)).await.unwrap().into_inner();
    assert_eq!(
        r.results.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(
        ids(&r.results[1]),
        cli_ids(
            &index,
            "ocean tides and the moon",
            &["-k", "3", "--retriever", "bm25"]
        )
    );
    assert_eq!(
        ids(&r.results[2]),
        cli_ids(
            &index,
            "ocean tides and the moon",
            &["-k", "3", "--retriever", "hybrid"]
        )
    );
    let top = &r.results[2].hits[0];
    let stored = c
        .get_documents(pb::GetDocumentsRequest {
            ids: vec![top.id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0)
        .document
        .unwrap();
    assert_eq!(top.title.as_deref(), Some(stored.title.as_str()));
    assert_eq!(top.text.as_deref(), Some(stored.text.as_str()));
    assert!(top.metadata_json.as_deref().unwrap().contains("\"topic\""));
    assert!(
        r.results[0].hits[0].title.is_none(),
        "fields not asked for are not sent"
    );

    // A metadata filter.
    let filtered = pb::Query {
        filter: r#"{"eq": {"field": "topic", "value": "science"}}"#.into(),
        fields: Some(pb::Fields {
            metadata: true,
            ..Default::default()
        }),
        ..text_query("energy", 10)
    };
    let r = c
        .search(search_req(vec![filtered]))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.results[0].hits.is_empty());
    for h in &r.results[0].hits {
        assert!(
            h.metadata_json.as_deref().unwrap().contains("\"science\""),
            "{h:?}"
        );
    }

    // GetDocuments reports unknown ids per id.
    let r = c
        .get_documents(pb::GetDocumentsRequest {
            ids: vec!["doc01".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].found);
    assert_eq!(r.results[0].document.as_ref().unwrap().title, "Tides");
    assert_eq!(
        (r.results[1].id.as_str(), r.results[1].found),
        ("nope", false)
    );

    // IndexInfo.
    let info = c
        .index_info(pb::IndexInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.num_docs, info.dim, info.codec.as_str()),
        (40, 32, "residual2")
    );
    assert_eq!(info.model.as_ref().unwrap().dim, 32);
    assert!(info.metadata_fields.contains(&"topic".to_owned()));
    assert!(info.bytes_on_disk > 0 && info.segments.len() == 1);
    assert!(
        info.built_unix_s > 1_700_000_000 && info.build_seconds > 0.0,
        "{info:?}"
    );

    // AddDocuments: text and vectors over one stream, visible together.
    let vecdoc = encoded_query("a comet with an icy tail");
    let stream = tokio_stream::iter(vec![
        pb::AddDocumentsRequest {
            documents: vec![
                pb::NewDocument {
                    id: "new1".into(),
                    title: "Quasars".into(),
                    text: "Quasars are luminous galactic nuclei powered by accretion.".into(),
                    metadata_json: r#"{"topic": "space"}"#.into(),
                    vectors: None,
                },
                pb::NewDocument {
                    id: "new2".into(),
                    title: "Sourdough".into(),
                    text: "Sourdough bread rises with wild yeast and lactobacilli.".into(),
                    ..Default::default()
                },
            ],
            skip_existing: false,
        },
        pb::AddDocumentsRequest {
            documents: vec![pb::NewDocument {
                id: "new3".into(),
                title: "Comets".into(),
                text: "icy tail".into(),
                vectors: Some(vecdoc),
                ..Default::default()
            }],
            skip_existing: false,
        },
    ]);
    let r = c.add_documents(stream).await.unwrap().into_inner();
    assert_eq!((r.added, r.generation), (3, 2));
    let r = c
        .search(search_req(vec![pb::Query {
            retriever: pb::Retriever::Bm25 as i32,
            ..text_query("quasars accretion", 1)
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.results[0]), ["new1"]);
    assert_eq!(r.generation, 2);
    // An id already there fails the call (nothing added) unless skipped.
    let dup = || {
        vec![pb::AddDocumentsRequest {
            documents: vec![
                pb::NewDocument {
                    id: "doc01".into(),
                    text: "again".into(),
                    ..Default::default()
                },
                pb::NewDocument {
                    id: "new4".into(),
                    text: "fresh".into(),
                    ..Default::default()
                },
            ],
            skip_existing: false,
        }]
    };
    let e = c
        .add_documents(tokio_stream::iter(dup()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("documents[0].id") && e.message().contains("already in the index"),
        "{}",
        e.message()
    );
    let mut skipping = dup();
    skipping[0].skip_existing = true;
    let r = c
        .add_documents(tokio_stream::iter(skipping))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.added, r.skipped_ids.clone()),
        (1, vec!["doc01".to_owned()])
    );

    // DeleteDocuments reports unknown ids; Compact folds the segments.
    let r = c
        .delete_documents(pb::DeleteDocumentsRequest {
            ids: vec!["new2".into(), "ghost".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.deleted, r.unknown_ids.clone()),
        (1, vec!["ghost".to_owned()])
    );
    let r = c
        .get_documents(pb::GetDocumentsRequest {
            ids: vec!["new2".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.results[0].found);
    let r = c.compact(pb::CompactRequest {}).await.unwrap().into_inner();
    assert_eq!((r.segments_before, r.segments_after), (3, 1));
    let info = c
        .index_info(pb::IndexInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.num_docs, info.segments.len()), (43, 1));

    // Metrics.
    // The second stdout line names the metrics address.
    let metrics_line = server.lines.lock().unwrap()[1].clone();
    let maddr = metrics_line
        .trim()
        .strip_prefix("metrics on http://")
        .unwrap()
        .trim_end_matches("/metrics")
        .to_owned();
    let m = http_get(&maddr, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("tessera_requests_total{method=\"Search\",code=\"Ok\"}"),
        "{m}"
    );
    assert!(
        m.contains("tessera_requests_total{method=\"AddDocuments\",code=\"InvalidArgument\"} 1")
    );
    assert!(m.contains("tessera_index_documents 43"));
    assert!(m.contains("tessera_encode_batch_texts_count"));
    // One log line per call.
    assert!(
        server.log_text().contains("method=\"Compact\""),
        "{}",
        server.log_text()
    );

    // `tessera query`, single and batch, against `tessera search`.
    let qv: serde_json::Value = serde_json::from_str(&ok(&tessera(&[
        "query",
        "--addr",
        &server.addr,
        "--json",
        "-k",
        "4",
        "sourdough bread yeast",
    ])))
    .unwrap();
    assert_eq!(
        result_ids(&qv),
        cli_ids(&index, "sourdough bread yeast", &["-k", "4"])
    );
    let qfile = dir.path().join("q.jsonl");
    std::fs::write(
        &qfile,
        "{\"_id\": \"q1\", \"text\": \"tides\"}\n{\"_id\": \"q2\", \"text\": \"nuclear energy\"}\n",
    )
    .unwrap();
    let (grpc_run, cli_run) = (dir.path().join("grpc.trec"), dir.path().join("cli.trec"));
    ok(&tessera(&[
        "query",
        "--addr",
        &server.addr,
        "--queries",
        qfile.to_str().unwrap(),
        "--run-out",
        grpc_run.to_str().unwrap(),
        "-k",
        "5",
    ]));
    ok(&tessera(&[
        "search",
        "--index",
        index.to_str().unwrap(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--queries",
        qfile.to_str().unwrap(),
        "--run-out",
        cli_run.to_str().unwrap(),
        "-k",
        "5",
    ]));
    let docs_of = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(docs_of(&grpc_run), docs_of(&cli_run));
    let qrels = dir.path().join("qrels.tsv");
    std::fs::write(
        &qrels,
        "query-id\tcorpus-id\tscore\nq1\tdoc01\t1\nq2\tdoc36\t1\n",
    )
    .unwrap();
    let e = ok(&tessera(&[
        "eval",
        "--run",
        grpc_run.to_str().unwrap(),
        "--qrels",
        qrels.to_str().unwrap(),
    ]));
    assert!(e.contains("ndcg") || e.contains("nDCG"), "{e}");

    // Python: the example script (generated stubs) and a reflection-only client.
    let py = python();
    let out = Command::new(&py)
        .args([
            root().join("scripts/grpc-example.py").to_str().unwrap(),
            "--addr",
            &server.addr,
            "--json",
            "-k",
            "3",
            "quasars accretion",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpc-example.py failed ({}): {}",
        py.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = cli_ids(&index, "quasars accretion", &["-k", "3"]);
    let got: Vec<_> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, want);
    let reflect = |args: &[&str]| {
        let out = Command::new(&py)
            .arg(root().join("scripts/grpc-reflect.py"))
            .args(["--addr", &server.addr])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpc-reflect.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = reflect(&["list"]);
    assert!(
        listed.contains("tessera.v1.Tessera") && listed.contains("grpc.health.v1.Health"),
        "{listed}"
    );
    assert!(reflect(&["describe", "tessera.v1.Tessera"])
        .contains("rpc AddDocuments(stream tessera.v1.AddDocumentsRequest)"));
    let called = reflect(&[
        "call",
        "tessera.v1.Tessera/Search",
        r#"{"queries": [{"text": "quasars accretion", "k": 3}]}"#,
    ]);
    let v: serde_json::Value = serde_json::from_str(&called).unwrap();
    let got: Vec<_> = v["results"][0]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, want);

    drop(server);
    ok(&tessera(&["index", "verify", index.to_str().unwrap()]));
}

/// A folder that is not an index stops `serve` before it listens: no
/// "listening on" line, an error naming the manifest, exit status 1.
#[test]
fn serve_refuses_a_folder_that_is_not_an_index_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let o = tessera(&[
        "serve",
        "--index",
        dir.path().to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--no-model",
    ]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!out.contains("listening on"), "{out}");
    assert!(
        err.contains("manifest.json") && err.contains("not a Tessera index"),
        "{err}"
    );
}

/// A front end over four shard servers ranks as one server over the whole
/// collection: `Prepare` encodes the query once and reports each shard's
/// BM25 statistics; summed and sent back in `Query.bm25_stats`, they make
/// every shard score BM25 as the whole index does; the merged top-k
/// (by score, ties by id) equals the single server's — exhaustive MaxSim
/// within 1e-4, BM25 within 1e-5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_behind_a_front_end_rank_as_one_server() {
    use tessera_engine::shard::shard_of;
    let dir = tempfile::tempdir().unwrap();
    let sample = root().join("docs/sample/corpus.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let build = |input: &Path, out: &Path| {
        ok(&tessera(&[
            "index",
            "build",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            &common::tiny(),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--codec",
            "f32",
        ]))
    };
    let whole = dir.path().join("whole.idx");
    build(&sample, &whole);
    let mut shards = Vec::new();
    for s in 0..4u32 {
        let part: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                shard_of(v["_id"].as_str().unwrap(), 4) == s
            })
            .collect();
        let input = dir.path().join(format!("part-{s}.jsonl"));
        std::fs::write(
            &input,
            part.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        let out = dir.path().join(format!("shard-{s}.idx"));
        build(&input, &out);
        shards.push(Server::start(&out, &[], ""));
    }
    let one = Server::start(&whole, &[], "");
    one.wait_serving().await;
    let mut clients = Vec::new();
    for s in &shards {
        s.wait_serving().await;
        clients.push(s.client().await);
    }
    let mut single = one.client().await;

    for text in [
        "ocean tides and the moon",
        "volcano eruptions and lava",
        "plants and light",
    ] {
        // Prepare: vectors from one shard, statistics from every shard.
        let mut stats = pb::Bm25Stats::default();
        let mut vectors = None;
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c
                .prepare(pb::PrepareRequest {
                    texts: vec![text.into()],
                    vectors: i == 0,
                    bm25_stats: true,
                })
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0);
            if i == 0 {
                vectors = r.vectors;
            }
            let s = r.bm25_stats.unwrap();
            stats.docs += s.docs;
            stats.tokens += s.tokens;
            for (t, n) in s.doc_freq {
                *stats.doc_freq.entry(t).or_default() += n;
            }
        }
        assert_eq!(stats.docs, 40);
        for (retriever, tol) in [
            (pb::Retriever::Colbert, 1e-4f32),
            (pb::Retriever::Bm25, 1e-5),
        ] {
            let query = pb::Query {
                text: text.into(),
                vectors: vectors.clone(),
                k: 10,
                retriever: retriever as i32,
                candidates: Some(pb::CandidateParams {
                    generator: pb::CandidateGenerator::Exhaustive as i32,
                    ..Default::default()
                }),
                bm25_stats: Some(stats.clone()),
                ..Default::default()
            };
            let mut merged: Vec<(String, f32)> = Vec::new();
            for c in clients.iter_mut() {
                let r = c.search(search_req(vec![query.clone()])).await.unwrap();
                merged.extend(
                    r.into_inner().results[0]
                        .hits
                        .iter()
                        .map(|h| (h.id.clone(), h.score)),
                );
            }
            merged.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            merged.truncate(10);
            let want_q = pb::Query {
                text: text.into(),
                bm25_stats: None,
                vectors: None,
                ..query.clone()
            };
            let r = single.search(search_req(vec![want_q])).await.unwrap();
            let mut want: Vec<(String, f32)> = r.into_inner().results[0]
                .hits
                .iter()
                .map(|h| (h.id.clone(), h.score))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            assert!(!want.is_empty());
            assert_eq!(merged.len(), want.len(), "{retriever:?} {text}");
            for (g, w) in merged.iter().zip(&want) {
                assert!(
                    g.0 == w.0 && (g.1 - w.1).abs() <= tol,
                    "{retriever:?} {text}: {merged:?} vs {want:?}"
                );
            }
        }
    }
}
