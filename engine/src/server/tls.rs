//! Transport security: the server's certificate and key (PEM), and
//! optionally a CA whose certificates clients must present (mutual TLS).
//! The gRPC port goes through tonic's rustls; the metrics port through the
//! same certificate with `tokio-rustls`.
//!
//! Every file is read and parsed before the server listens, and a file
//! that holds no certificate, or no private key, is an error naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::error::{bail, err, Context, Result};

/// The PEM files of `serve --tls-cert/--tls-key/--tls-client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
    /// A CA bundle: when given, a client must present a certificate it
    /// signed.
    pub client_ca: Option<PathBuf>,
}

/// The files, read and checked.
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<rustls::RootCertStore>,
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

fn certificates(pem: &[u8], path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| err!("{flag} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{flag} {}: no certificate (expected a `-----BEGIN CERTIFICATE-----` block)",
            path.display()
        );
    }
    Ok(certs)
}

impl TlsFiles {
    /// Reads and parses the files, naming the one at fault.
    pub fn load(&self) -> Result<Tls> {
        let cert_pem = read(&self.cert, "--tls-cert")?;
        let key_pem = read(&self.key, "--tls-key")?;
        let certs = certificates(&cert_pem, &self.cert, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            err!(
                "--tls-key {}: no private key in PEM (PKCS#8, PKCS#1 or SEC1): {e}",
                self.key.display()
            )
        })?;
        let (client_ca_pem, client_roots) = match &self.client_ca {
            None => (None, None),
            Some(path) => {
                let pem = read(path, "--tls-client-ca")?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certificates(&pem, path, "--tls-client-ca")? {
                    roots.add(c).map_err(|e| {
                        err!(
                            "--tls-client-ca {}: not a CA certificate: {e}",
                            path.display()
                        )
                    })?;
                }
                (Some(pem), Some(roots))
            }
        };
        let tls = Tls {
            cert_pem,
            key_pem,
            client_ca_pem,
            certs,
            key,
            client_roots,
        };
        // Build once now so a key that does not match the certificate is
        // refused before the server listens.
        tls.rustls_config(Vec::new())
            .with_context(|| format!("--tls-cert {}", self.cert.display()))?;
        Ok(tls)
    }
}

impl Tls {
    /// The gRPC port's configuration.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        config
    }

    /// An acceptor for the metrics port (HTTP/1.1 over TLS).
    pub fn metrics_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor> {
        let config = self.rustls_config(vec![b"http/1.1".to_vec()])?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    fn rustls_config(&self, alpn: Vec<Vec<u8>>) -> Result<rustls::ServerConfig> {
        // The ring provider, as tonic's gRPC port uses (aws-lc-rs would add
        // post-quantum key exchange at the price of a C/CMake build).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err!("TLS: {e}"))?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots.clone()),
                    provider,
                )
                .build()
                .map_err(|e| err!("--tls-client-ca: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| err!("the key does not fit the certificate: {e}"))?;
        config.alpn_protocols = alpn;
        Ok(config)
    }
}

/// Whether `serve` may listen on `addr`: a loopback address always; any
/// other only with TLS and API keys, unless the operator says `--insecure`
/// (a proxy in front terminates TLS and checks callers).
pub fn check_exposure(addr: SocketAddr, tls: bool, keys: bool, insecure: bool) -> Result<()> {
    if addr.ip().is_loopback() || insecure || (tls && keys) {
        return Ok(());
    }
    let missing = match (tls, keys) {
        (false, false) => "TLS (--tls-cert/--tls-key) and API keys (--api-keys)",
        (false, true) => "TLS (--tls-cert/--tls-key)",
        _ => "API keys (--api-keys or $TESSERA_API_KEYS)",
    };
    bail!(
        "refusing to listen on {addr} without {missing}: anyone who reaches a \
         non-loopback address could read the traffic or add and delete documents. \
         Give them, listen on 127.0.0.1, or pass --insecure when a proxy in front \
         terminates TLS and checks callers"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_tls_and_keys() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let lo6: SocketAddr = "[::1]:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert!(check_exposure(lo, false, false, false).is_ok());
        assert!(check_exposure(lo6, false, false, false).is_ok());
        assert!(check_exposure(any, true, true, false).is_ok());
        assert!(check_exposure(any, false, false, true).is_ok());
        for (tls, keys, says) in [
            (false, false, "TLS (--tls-cert/--tls-key) and API keys"),
            (true, false, "without API keys"),
            (false, true, "without TLS"),
        ] {
            let e = check_exposure(any, tls, keys, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("--insecure"), "{e}");
        }
    }

    #[test]
    fn files_without_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let files = TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
            client_ca: None,
        };
        let e = files.load().err().unwrap().to_string();
        assert!(e.contains("--tls-cert") && e.contains("junk.pem"), "{e}");
        let files = TlsFiles {
            cert: dir.path().join("missing.pem"),
            ..files
        };
        let e = files.load().err().unwrap().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
