//! `tessera serve`: the gRPC search service over one index (see
//! [`tessera_engine::server`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tessera_engine::server::{serve, AccessKeys, BatchConfig, Limits, ServeOptions, TlsFiles};
use tessera_index::SearchParams;

use crate::cli::args::{ModelArgs, PlaidArgs, ReductionArgs};

/// Serve an index over gRPC (tessera.v1.Tessera, grpc.health.v1, reflection).
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera serve --index scifact.idx\n  \
    TESSERA_API_KEYS='read r-0123456789abcdef,admin a-0123456789abcdef' \\\n    \
    tessera serve --index scifact.idx --addr 0.0.0.0:50051 --tls-cert server.pem --tls-key server.key\n  \
    tessera serve --index scifact.idx --addr 127.0.0.1:50051 --metrics-addr 127.0.0.1:9100\n  \
    tessera serve --index small.idx --n-probe 16 --probe-budget 256 --n-approx 256 --rerank-budget 768\n  \
    tessera query --addr 127.0.0.1:50051 \"coffee and diabetes\"\n  \
    grpcurl -plaintext 127.0.0.1:50051 list\n\n\
    The first stdout line is `listening on ADDR` (with the real port when --addr \
    ends in :0); health reports NOT_SERVING until the index and model are loaded. \
    SIGINT/SIGTERM drain: health goes NOT_SERVING, new calls get UNAVAILABLE, calls in \
    flight get --grace-s seconds to finish. --n-probe, --probe-budget, --n-approx and \
    --rerank-budget are the search settings of every call that sets none of its own.\n\n\
    Run it securely: on any address but loopback, serve refuses to start without TLS \
    (--tls-cert/--tls-key, optionally --tls-client-ca to require client certificates) \
    and API keys (--api-keys or $TESSERA_API_KEYS: a read and an admin role; without keys \
    anyone who reaches the port can add and delete documents). --insecure lifts the \
    refusal when a proxy in front terminates TLS and checks callers.")]
pub struct ServeArgs {
    /// The index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Address to listen on (port 0: any free port). A non-loopback address
    /// needs TLS and API keys, or --insecure.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (https with TLS).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Calls running at once, at most.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Calls waiting for a slot, at most; past it calls get RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_queue: u32,
    /// Query texts encoded together in one forward pass, at most.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,
    /// How long the first query of a batch waits for others, ms.
    #[arg(long, default_value_t = 2, value_name = "MS")]
    pub batch_wait_ms: u64,
    /// While encoded calls wait for a search lane, the encoder holds new
    /// queries back up to this long to encode them together (0: off).
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub batch_hold_ms: u64,
    /// Hits per query, at most.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_k: u32,
    /// Queries per Search call, at most.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queries: u32,
    /// Documents per AddDocuments call, at most.
    #[arg(long, default_value_t = 100_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_add_docs: u32,
    /// Bytes of one query's text, at most (longer: INVALID_ARGUMENT naming
    /// the query, before any work; a query keeps only its first 32 tokens
    /// for MaxSim, and BM25 at most 1,024 distinct terms).
    #[arg(long, default_value_t = 16_384, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_query_bytes: u32,
    /// Tokens of one pre-encoded query, at most (more: INVALID_ARGUMENT
    /// naming the query; a text query keeps its first 32 tokens anyway).
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_query_tokens: u32,
    /// Tokens of all pre-encoded queries of one Search call together, at
    /// most (more: INVALID_ARGUMENT, before any is read).
    #[arg(long, default_value_t = 32_768, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_call_tokens: u32,
    /// Bytes of one added document's title and text, at most (larger:
    /// INVALID_ARGUMENT naming the document, nothing added).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_document_bytes: u32,
    /// Size of one request message, at most, MiB (larger: INVALID_ARGUMENT;
    /// past twice this the transport refuses with OUT_OF_RANGE unread).
    #[arg(long, default_value_t = 16, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_message_mb: u32,
    /// All the documents of one AddDocuments call together, at most, MiB
    /// (more: INVALID_ARGUMENT, nothing added): what a call holds in
    /// memory until it commits.
    #[arg(long, default_value_t = 64, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_add_mb: u32,
    /// One response, at most, MiB: a Search or GetDocuments whose answer
    /// (hits with their texts, documents) passes it is refused with
    /// INVALID_ARGUMENT.
    #[arg(long, default_value_t = 64, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_response_mb: u32,
    /// Deadline of calls whose client sets none, ms.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub default_timeout_ms: u64,
    /// Longest client deadline honoured, ms.
    #[arg(long, default_value_t = 600_000, value_name = "MS")]
    pub max_timeout_ms: u64,
    /// Documents re-ranked exactly per query, at most (caps the request's
    /// candidate parameters).
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_candidates: u32,
    // The search settings of every call that sets none of its own (e.g.
    // the setting `tessera reduce plan` recommends).
    #[command(flatten)]
    pub plaid: PlaidArgs,
    /// Threads of the search pool. Default: the number of CPUs. (The
    /// model's threads are --threads, default half the CPUs.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub search_threads: Option<u16>,
    /// Search pools ("lanes") the search threads are split into; a call
    /// runs on one lane with all its threads, calls queue for lanes in
    /// arrival order. Default (adaptive): one lane per search thread, and
    /// a call that finds no other search running gets all the threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub search_lanes: Option<u16>,
    /// Seconds calls in flight get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub grace_s: u64,
    /// Serve without a model: queries must bring vectors or use BM25.
    #[arg(long)]
    pub no_model: bool,
    /// A file of API keys, one `read KEY` or `admin KEY` per line (keys of
    /// 16 characters or more): every call but health then needs
    /// `authorization: Bearer KEY` — read for Search, GetDocuments,
    /// IndexInfo, reflection and metrics; admin also for AddDocuments,
    /// DeleteDocuments and Compact. Default: $TESSERA_API_KEYS (the same
    /// entries, comma- or newline-separated), else no keys.
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// The server's TLS certificate chain (PEM, leaf first); with
    /// --tls-key, both ports speak TLS only.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM bundle).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS or API keys: only
    /// behind a proxy that terminates TLS and checks callers.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub reduce: ReductionArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--api-keys FILE`, else `$TESSERA_API_KEYS`, else none.
fn api_keys(file: Option<&std::path::Path>) -> Result<Option<AccessKeys>> {
    if let Some(f) = file {
        return Ok(Some(AccessKeys::from_file(f)?));
    }
    match std::env::var("TESSERA_API_KEYS") {
        Ok(v) if !v.trim().is_empty() => Ok(Some(AccessKeys::parse(&v, "$TESSERA_API_KEYS")?)),
        _ => Ok(None),
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    let opts = ServeOptions {
        limits: Limits {
            max_k: args.max_k as usize,
            max_queries: args.max_queries as usize,
            max_ids: 100_000,
            max_add_docs: args.max_add_docs as usize,
            max_query_bytes: args.max_query_bytes as usize,
            max_query_tokens: args.max_query_tokens as usize,
            max_call_tokens: args.max_call_tokens as usize,
            max_document_bytes: args.max_document_bytes as usize,
            max_message_bytes: args.max_message_mb as usize * (1 << 20),
            max_add_bytes: args.max_add_mb as usize * (1 << 20),
            max_response_bytes: args.max_response_mb as usize * (1 << 20),
            default_timeout: Duration::from_millis(args.default_timeout_ms.max(1)),
            max_timeout: Duration::from_millis(args.max_timeout_ms.max(1)),
            max_candidates: args.max_candidates.max(1) as usize,
            max_probe: 256,
            search: {
                let mut p = SearchParams::default();
                args.plaid.apply(&mut p);
                p
            },
        },
        batch: BatchConfig {
            max_batch: args.max_batch as usize,
            wait: Duration::from_millis(args.batch_wait_ms),
            search_backlog: None,
            max_hold: Duration::from_millis(args.batch_hold_ms),
        },
        max_in_flight: args.max_in_flight as usize,
        max_queue: args.max_queue as usize,
        search_threads: args.search_threads.map(usize::from),
        search_lanes: args.search_lanes.map(usize::from),
        grace: Duration::from_secs(args.grace_s),
        no_model: args.no_model,
        reduction: args.reduce.choice(),
        model: args.model.options(),
        keys: api_keys(args.api_keys.as_deref())?,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
        insecure: args.insecure,
        metrics_addr: args.metrics_addr,
        addr: args.addr,
        index: args.index,
    };
    let tls = opts.tls.is_some();
    serve(opts, |at| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", at.addr)?;
        if let Some(m) = at.metrics {
            let scheme = if tls { "https" } else { "http" };
            writeln!(out, "metrics on {scheme}://{m}/metrics")?;
        }
        out.flush()?;
        Ok(())
    })?;
    Ok(())
}
