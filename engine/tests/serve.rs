//! `tessera serve` end to end: a real server on 127.0.0.1 at a random
//! port, started and stopped by each test, driven by the generated tonic
//! client, the `tessera query` CLI and the Python scripts. The tiny test
//! model keeps every server start under a second.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::{ids as result_ids, ok, root, run, search_json, tiny};

fn tessera(args: &[&str]) -> Output {
    run(args, &[], None)
}

/// The sample corpus indexed with the tiny model.
fn build_index(dir: &Path) -> PathBuf {
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
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(index: &Path, extra: &[&str], faults: &str) -> Server {
        let log = index.with_extension(format!(
            "serve-{}.log",
            std::process::id() as u64 * 1000 + rand_suffix()
        ));
        let mut c = common::tessera_command();
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

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> TesseraClient<Channel> {
        TesseraClient::connect(self.url()).await.expect("connects")
    }

    async fn health(&self, service: &str) -> Result<i32, tonic::Status> {
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

    async fn wait_serving(&self) {
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&self) {
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

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A ColBERT (MaxSim alone) query for `text`.
fn text_query(text: &str, k: u32) -> pb::Query {
    pb::Query {
        text: text.into(),
        k,
        retriever: pb::Retriever::Colbert as i32,
        ..Default::default()
    }
}

fn search_req(queries: Vec<pb::Query>) -> pb::SearchRequest {
    pb::SearchRequest { queries }
}

fn ids(r: &pb::QueryResult) -> Vec<String> {
    r.hits.iter().map(|h| h.id.clone()).collect()
}

/// `tessera search --json` ids, the reference the server must match.
fn cli_ids(index: &Path, query: &str, extra: &[&str]) -> Vec<String> {
    result_ids(&search_json(index, query, extra))
}

/// For every fixture topic, the server's top 3 equal `tessera search -k 3`
/// with `flags` on `index`.
async fn serves_topics_like_the_cli(c: &mut TesseraClient<Channel>, index: &Path, flags: &[&str]) {
    for t in common::TOPICS {
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
fn encoded_query(text: &str) -> pb::TokenVectors {
    let (flat, n) = query_vectors(&tiny(), text);
    tessera_proto::pack_vectors(&flat, n)
}

/// A model's query vectors of `text` (row-major) and their count.
fn query_vectors(model: &str, text: &str) -> (Vec<f32>, usize) {
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

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("TESSERA_VENV").map_or_else(|| root().join(".venv"), PathBuf::from);
    venv.join("bin/python")
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
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

fn expect_invalid(r: Result<tonic::Response<pb::SearchResponse>, tonic::Status>, needle: &str) {
    let e = r.expect_err(needle);
    assert_eq!(e.code(), Code::InvalidArgument, "{needle}: {e:?}");
    assert!(
        e.message().contains(needle),
        "{:?} lacks {needle:?}",
        e.message()
    );
}

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

/// Ids of add call `call` in round `round`.
fn batch_ids(round: usize, call: usize, n: usize) -> Vec<String> {
    (0..n).map(|d| format!("r{round}-c{call}-d{d}")).collect()
}

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
