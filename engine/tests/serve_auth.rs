//! `tessera serve --api-keys`: every call but health needs a key of the
//! right role, refusals say nothing about the keys, metrics and reflection
//! follow the read role, and `tessera query` sends its key.

mod common;
mod serve_harness;

use std::io::{Read, Write};

use tessera_proto::v1 as pb;
use tonic::Code;

use common::run;
use serve_harness::*;

const READ: &str = "read-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

fn metrics_get(addr: &str, key: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_allowed_and_refused_where_it_should_be() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, format!("# operators\nread {READ}\nadmin {ADMIN}\n")).unwrap();
    let server = Server::start(
        &index,
        &[
            "--api-keys",
            keys.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        "",
    );
    // Health stays open: a load balancer needs no key.
    server.wait_serving().await;
    let mut c = server.client().await;
    let search = || search_req(vec![text_query("ocean tides and the moon", 3)]);

    // No key, a wrong key, a key without "Bearer": UNAUTHENTICATED, with
    // nothing about the keys in the message.
    for key in [None, Some("read-key-0123456780"), Some("")] {
        let e = c.search(with_key(search(), key)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{key:?}: {e:?}");
        assert!(!e.message().contains(READ) && !e.message().contains(ADMIN));
    }
    let mut bare = tonic::Request::new(search());
    bare.metadata_mut()
        .insert("authorization", READ.parse().unwrap());
    assert_eq!(
        c.search(bare).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The read role: search, documents, index info; not changes.
    let r = c.search(with_key(search(), Some(READ))).await.unwrap();
    assert_eq!(r.into_inner().results[0].hits.len(), 3);
    let info = c
        .index_info(with_key(pb::IndexInfoRequest {}, Some(READ)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.num_docs, 40);
    let e = c
        .compact(with_key(pb::CompactRequest {}, Some(READ)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .delete_documents(with_key(
            pb::DeleteDocumentsRequest {
                ids: vec!["doc01".into()],
            },
            Some(READ),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The admin role: changes too.
    let r = c
        .delete_documents(with_key(
            pb::DeleteDocumentsRequest {
                ids: vec!["doc01".into()],
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 1);
    c.compact(with_key(pb::CompactRequest {}, Some(ADMIN)))
        .await
        .unwrap();
    c.search(with_key(search(), Some(ADMIN))).await.unwrap();

    // Metrics follow the read role.
    let maddr = server.lines.lock().unwrap()[1]
        .trim()
        .strip_prefix("metrics on http://")
        .unwrap()
        .trim_end_matches("/metrics")
        .to_owned();
    assert!(metrics_get(&maddr, None).starts_with("HTTP/1.1 401"));
    assert!(metrics_get(&maddr, Some("nope-nope-nope-nope")).starts_with("HTTP/1.1 401"));
    let m = metrics_get(&maddr, Some(READ));
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("code=\"Unauthenticated\""), "{m}");

    // `tessera query` sends the key from $TESSERA_API_KEY or a file.
    let addr = server.addr.clone();
    let q = ["query", "--addr", &addr, "-k", "2", "ocean tides"];
    let o = run(&q, &[], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("valid API key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&q, &[("TESSERA_API_KEY", READ)], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{ADMIN}\n")).unwrap();
    let mut with_file = q.to_vec();
    let kf = key_file.to_string_lossy().into_owned();
    with_file.extend(["--api-key-file", &kf]);
    assert!(run(&with_file, &[], None).status.success());

    // The Python example and the reflection-only client send a key too;
    // reflection follows the read role.
    let py = python();
    let script = |name: &str, args: &[&str], key: Option<&str>| {
        let mut c = std::process::Command::new(&py);
        c.arg(common::root().join("scripts").join(name))
            .args(["--addr", &addr])
            .args(args)
            .env_remove("TESSERA_API_KEY");
        if let Some(k) = key {
            c.env("TESSERA_API_KEY", k);
        }
        c.output().unwrap()
    };
    let listed = script("grpc-reflect.py", &["list"], Some(READ));
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("tessera.v1.Tessera"));
    assert!(!script("grpc-reflect.py", &["list"], None).status.success());
    let found = script("grpc-example.py", &["-k", "2", "ocean tides"], Some(READ));
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let refused = script("grpc-example.py", &["-k", "2", "ocean tides"], None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"));
    drop(server);
}

#[test]
fn a_bad_keys_file_stops_serve_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "read short\n").unwrap();
    let o = run(
        &[
            "serve",
            "--index",
            index.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--api-keys",
            keys.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("keys.txt: entry 1") && e.contains("16 characters"),
        "{e}"
    );
    assert!(!e.contains("short"), "{e}");
    assert!(o.stdout.is_empty(), "it never listened");
}
