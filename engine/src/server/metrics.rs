//! Prometheus metrics of the service, in the text exposition format, and
//! the small HTTP endpoint (`--metrics-addr`, `GET /metrics`) that serves
//! them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bounds of the latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch-size buckets, texts.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations × 1e6 (µs for latencies).
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Gauges read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub in_flight: usize,
    pub queued: usize,
    pub encoder_queue: usize,
    pub index_docs: u64,
    pub index_tokens: u64,
    pub index_bytes: u64,
    pub index_segments: usize,
    pub index_generation: u64,
    pub ready: bool,
}

/// Every metric the service keeps.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    total: Mutex<BTreeMap<&'static str, Histogram>>,
    pub encode: Histogram,
    pub search: Histogram,
    pub batch_texts: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            total: Mutex::default(),
            encode: Histogram::new(&LATENCY_BUCKETS),
            search: Histogram::new(&LATENCY_BUCKETS),
            batch_texts: Histogram::new(&BATCH_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts one finished call and its latency.
    pub fn finish(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        let code = format!("{code:?}");
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method, code)).or_default() += 1;
        }
        if let Ok(mut t) = self.total.lock() {
            t.entry(method)
                .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
                .observe(seconds);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP tessera_requests_total gRPC calls by method and status code.\n");
        out.push_str("# TYPE tessera_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((method, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "tessera_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP tessera_request_seconds Call latency by method, seconds.\n");
        out.push_str("# TYPE tessera_request_seconds histogram\n");
        if let Ok(t) = self.total.lock() {
            for (method, h) in t.iter() {
                h.render(
                    &mut out,
                    "tessera_request_seconds",
                    &format!("method=\"{method}\""),
                );
            }
        }
        for (name, help, h) in [
            (
                "tessera_encode_seconds",
                "Query-encoding batch latency, seconds.",
                &self.encode,
            ),
            (
                "tessera_search_seconds",
                "Per-query ranking latency, seconds.",
                &self.search,
            ),
            (
                "tessera_encode_batch_texts",
                "Texts per encoder batch.",
                &self.batch_texts,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        for (name, help, v) in [
            ("tessera_in_flight", "Calls running.", g.in_flight as u64),
            (
                "tessera_queue_depth",
                "Calls waiting for admission.",
                g.queued as u64,
            ),
            (
                "tessera_encoder_queue_depth",
                "Encoding jobs waiting.",
                g.encoder_queue as u64,
            ),
            ("tessera_index_documents", "Live documents.", g.index_docs),
            (
                "tessera_index_tokens",
                "Token vectors stored.",
                g.index_tokens,
            ),
            (
                "tessera_index_bytes",
                "Bytes of the index's files.",
                g.index_bytes,
            ),
            (
                "tessera_index_segments",
                "Segments.",
                g.index_segments as u64,
            ),
            (
                "tessera_index_generation",
                "Committed generation.",
                g.index_generation,
            ),
            (
                "tessera_ready",
                "1 when the index is loaded and serving.",
                g.ready as u64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `render`
/// makes the body. With `tls`, connections are TLS (the gRPC port's
/// certificate, and its client-certificate rule).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    keys: Option<super::auth::AccessKeys>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    render: impl Fn() -> String + Send + Sync + 'static,
) {
    let render = std::sync::Arc::new(render);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        let keys = keys.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let limit = std::time::Duration::from_secs(5);
            match tls {
                None => answer(sock, keys, render).await,
                Some(acceptor) => {
                    if let Ok(Ok(sock)) = tokio::time::timeout(limit, acceptor.accept(sock)).await {
                        answer(sock, keys, render).await;
                    }
                }
            }
        });
    }
}

/// Reads one request head (bounded in size and time), answers, closes.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut sock: S,
    keys: Option<super::auth::AccessKeys>,
    render: std::sync::Arc<impl Fn() -> String>,
) {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf[n..]))
            .await
        {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(m)) => n += m,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next().unwrap_or("");
    // With API keys, metrics follow the read role.
    let allowed = keys.as_ref().is_none_or(|k| {
        let bearer = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| value.trim().strip_prefix("Bearer ").map(str::trim))
                .flatten()
        });
        bearer.and_then(|b| k.role_of(b.as_bytes())).is_some()
    });
    let (status, ctype, body) = if !allowed {
        (
            "401 Unauthorized",
            "text/plain",
            "a valid API key is required\n".to_owned(),
        )
    } else if line.starts_with("GET /metrics ") {
        ("200 OK", "text/plain; version=0.0.4", render())
    } else {
        (
            "404 Not Found",
            "text/plain",
            "try GET /metrics\n".to_owned(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_are_labelled() {
        let m = Metrics::default();
        m.finish("Search", tonic::Code::Ok, 0.003);
        m.finish("Search", tonic::Code::Ok, 0.2);
        m.finish("Search", tonic::Code::InvalidArgument, 0.0001);
        m.batch_texts.observe(3.0);
        let text = m.render(&Gauges {
            in_flight: 2,
            index_docs: 7,
            ..Gauges::default()
        });
        assert!(text.contains("tessera_requests_total{method=\"Search\",code=\"Ok\"} 2"));
        assert!(
            text.contains("tessera_requests_total{method=\"Search\",code=\"InvalidArgument\"} 1")
        );
        assert!(text.contains("tessera_request_seconds_bucket{method=\"Search\",le=\"0.005\"} 2"));
        assert!(text.contains("tessera_request_seconds_bucket{method=\"Search\",le=\"+Inf\"} 3"));
        assert!(text.contains("tessera_request_seconds_count{method=\"Search\"} 3"));
        assert!(text.contains("tessera_encode_batch_texts_bucket{le=\"4\"} 1"));
        assert!(text.contains("tessera_in_flight 2"));
        assert!(text.contains("tessera_index_documents 7"));
    }
}
