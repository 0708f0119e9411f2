//! `tessera serve --tls-cert/--tls-key [--tls-client-ca]`: with a CA and
//! certificates the test makes itself, on 127.0.0.1 — TLS with the right
//! client certificate and key works for each role, plaintext to the TLS
//! port and a client without a certificate fail, metrics speak TLS, the
//! clients (`tessera query`, the Python scripts) take a CA file; and a
//! non-loopback address without TLS and keys is refused before binding
//! (`--insecure` lifting it is a unit test: nothing here binds elsewhere).

mod common;
mod serve_harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

use common::run;
use serve_harness::*;

const READ: &str = "read-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// signed by the CA, written as PEM under `dir`.
fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tessera test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["client.test".into()],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn tls_channel(addr: &str, pki: &Pki, client_cert: bool) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .domain_name("127.0.0.1");
    if client_cert {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&pki.client_cert).unwrap(),
            std::fs::read(&pki.client_key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let pki = pki(dir.path());
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, format!("read {READ}\nadmin {ADMIN}\n")).unwrap();
    let server = Server::start(
        &index,
        &[
            "--api-keys",
            s(&keys),
            "--tls-cert",
            s(&pki.server_cert),
            "--tls-key",
            s(&pki.server_key),
            "--tls-client-ca",
            s(&pki.ca),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        "",
    );
    let addr = server.addr.clone();

    // Health over TLS needs no key; wait until the index is loaded.
    let channel = tls_channel(&addr, &pki, true).await.unwrap();
    let t = Instant::now();
    loop {
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let st = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if st == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each role over TLS: read searches but may not compact; admin may.
    let mut c = TesseraClient::new(channel.clone());
    let search = || search_req(vec![text_query("ocean tides and the moon", 3)]);
    let r = c.search(with_key(search(), Some(READ))).await.unwrap();
    assert_eq!(r.into_inner().results[0].hits.len(), 3);
    let e = c
        .compact(with_key(pb::CompactRequest {}, Some(READ)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    c.compact(with_key(pb::CompactRequest {}, Some(ADMIN)))
        .await
        .unwrap();
    // No key and a wrong key: UNAUTHENTICATED, TLS or not.
    for key in [None, Some("read-key-0123456780")] {
        let e = c.search(with_key(search(), key)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{key:?}: {e:?}");
    }

    // A client without a certificate is refused by the handshake (or the
    // first call on the connection).
    let refused = match tls_channel(&addr, &pki, false).await {
        Err(_) => true,
        Ok(ch) => TesseraClient::new(ch)
            .search(with_key(search(), Some(READ)))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate got through");

    // Plaintext to the TLS port gets nowhere.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        TesseraClient::new(ch)
            .search(with_key(search(), Some(READ)))
            .await
            .map_err(|e| format!("{e:?}"))
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain).await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "plaintext was answered over a TLS port"
    );

    // Metrics speak TLS on their own port: the URL says https.
    let mline = server.lines.lock().unwrap()[1].clone();
    assert!(mline.starts_with("metrics on https://"), "{mline}");
    let murl = mline.trim().strip_prefix("metrics on ").unwrap().to_owned();
    let fetch = format!(
        "import ssl, urllib.request\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         ctx.load_cert_chain({cert:?}, {key:?})\n\
         req = urllib.request.Request({murl:?}, headers={{'Authorization': 'Bearer {READ}'}})\n\
         print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())\n",
        ca = s(&pki.ca),
        cert = s(&pki.client_cert),
        key = s(&pki.client_key),
    );
    let m = std::process::Command::new(python())
        .args(["-c", &fetch])
        .output()
        .unwrap();
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    assert!(String::from_utf8_lossy(&m.stdout).contains("tessera_requests_total"));

    // `tessera query` with the CA, the client certificate and a key.
    let base = [
        "query",
        "--addr",
        &addr,
        "-k",
        "2",
        "--tls-ca",
        s(&pki.ca),
        "--tls-cert",
        s(&pki.client_cert),
        "--tls-key",
        s(&pki.client_key),
        "ocean tides",
    ];
    let o = run(&base, &[("TESSERA_API_KEY", READ)], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    // Without the CA the server's certificate is not trusted.
    let untrusted = [
        "query",
        "--addr",
        &format!("https://{addr}"),
        "--tls-cert",
        s(&pki.client_cert),
        "--tls-key",
        s(&pki.client_key),
        "ocean tides",
    ];
    let o = run(&untrusted, &[("TESSERA_API_KEY", READ)], None);
    assert!(!o.status.success());

    // The Python example and the reflection client take the CA and the
    // client certificate.
    let py = python();
    let script = |name: &str, args: &[&str]| {
        std::process::Command::new(&py)
            .arg(common::root().join("scripts").join(name))
            .args(["--addr", &addr])
            .args(["--tls-ca", s(&pki.ca)])
            .args(["--tls-cert", s(&pki.client_cert)])
            .args(["--tls-key", s(&pki.client_key)])
            .args(args)
            .env("TESSERA_API_KEY", READ)
            .output()
            .unwrap()
    };
    let found = script("grpc-example.py", &["-k", "2", "ocean tides"]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let listed = script("grpc-reflect.py", &["list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("tessera.v1.Tessera"));
    drop(server);
}

#[test]
fn a_public_address_without_tls_and_keys_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    // 192.0.2.1 is TEST-NET-1: nothing here could bind it anyway, and the
    // refusal must come first, saying why.
    let o = run(
        &["serve", "--index", s(&index), "--addr", "192.0.2.1:50051"],
        &[],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing to listen on 192.0.2.1:50051")
            && err.contains("--tls-cert")
            && err.contains("--insecure"),
        "{err}"
    );
    // A certificate file that is not PEM is named before anything binds.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let o = run(
        &[
            "serve",
            "--index",
            s(&index),
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            s(&junk),
            "--tls-key",
            s(&junk),
        ],
        &[],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--tls-cert") && err.contains("junk.pem"),
        "{err}"
    );
}
