//! `tessera serve`: the gRPC search service over one index (see
//! [`crate::server`]), with health checking, reflection, metrics and
//! graceful shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tessera_index::{Index, SearchParams};
use tessera_proto::v1::tessera_server::TesseraServer;
use tonic_health::ServingStatus;

use crate::model::{absolute, ModelArgs};
use crate::searcher::PlaidArgs;
use crate::server::admission::Admission;
use crate::server::batcher::{BatchConfig, Batcher};
use crate::server::metrics::{self, Metrics};
use crate::server::service::{Faults, Limits, Ready, SearchLanes, Service, State};

/// Serve an index over gRPC (tessera.v1.Tessera, grpc.health.v1, reflection).
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera serve --index scifact.idx\n  \
    tessera serve --index scifact.idx --addr 127.0.0.1:50051 --metrics-addr 127.0.0.1:9100\n  \
    tessera serve --index small.idx --n-probe 16 --probe-budget 256 --n-approx 256 --rerank-budget 768\n  \
    tessera query --addr 127.0.0.1:50051 \"coffee and diabetes\"\n  \
    grpcurl -plaintext 127.0.0.1:50051 list\n\n\
    The first stdout line is `listening on ADDR` (with the real port when --addr \
    ends in :0); health reports NOT_SERVING until the index and model are loaded. \
    SIGINT/SIGTERM drain: health goes NOT_SERVING, new calls get UNAVAILABLE, calls in \
    flight get --grace-s seconds to finish. --n-probe, --probe-budget, --n-approx and \
    --rerank-budget are the search settings of every call that sets none of its own.\n\n\
    The server has no TLS and no authentication: anyone who reaches the port can add and \
    delete documents. Keep it on a loopback address, or behind a proxy that provides both; \
    any other address gets a warning.")]
pub struct ServeArgs {
    /// The index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Address to listen on (port 0: any free port). The server has no TLS
    /// or authentication: a non-loopback address gets a warning.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics.
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
    /// Bytes of one added document's title and text, at most (larger:
    /// INVALID_ARGUMENT naming the document, nothing added).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_document_bytes: u32,
    /// Size of one request message, at most, MiB (larger: INVALID_ARGUMENT;
    /// past twice this the transport refuses with OUT_OF_RANGE unread).
    #[arg(long, default_value_t = 16, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_message_mb: u32,
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
    #[command(flatten)]
    pub reduce: crate::commands::reduce::ReductionArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.reduce.reduction.is_some() {
        // Refused before listening: the index must carry this reduction.
        let index = Index::open(&args.index)
            .with_context(|| format!("opening index {}", args.index.display()))?;
        args.reduce.check_index(&index, &args.index)?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let search_threads = args.search_threads.map_or(cpus, usize::from);
    // The global pool runs update work (appends, compaction).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(search_threads)
        .build_global();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.clamp(2, 4))
        .thread_name("tessera-grpc")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, search_threads, cpus))
}

async fn serve(args: ServeArgs, search_threads: usize, cpus: usize) -> Result<()> {
    // A folder that is not an index (or whose manifest is damaged) stops
    // the server before it listens; the files themselves are read by the
    // loader below while health says NOT_SERVING.
    tessera_index::manifest::Manifest::load(&args.index)
        .with_context(|| format!("opening index {}", args.index.display()))?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "serving on a non-loopback address without TLS or authentication: \
             anyone who reaches it can search, add and delete documents"
        );
    }
    let max_message_bytes = args.max_message_mb as usize * (1 << 20);
    let limits = Limits {
        max_k: args.max_k as usize,
        max_queries: args.max_queries as usize,
        max_ids: 100_000,
        max_add_docs: args.max_add_docs as usize,
        max_query_bytes: args.max_query_bytes as usize,
        max_document_bytes: args.max_document_bytes as usize,
        max_message_bytes,
        default_timeout: Duration::from_millis(args.default_timeout_ms.max(1)),
        max_timeout: Duration::from_millis(args.max_timeout_ms.max(1)),
        max_candidates: args.max_candidates.max(1) as usize,
        max_probe: 256,
        search: {
            let mut p = SearchParams::default();
            args.plaid.apply(&mut p);
            p
        },
    };
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(State::new(
        limits,
        Admission::new(args.max_in_flight as usize, args.max_queue as usize),
        metrics.clone(),
        Faults::from_env(),
    ));
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<TesseraServer<Service>>().await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Reflection in both versions: grpcurl asks v1 first, Python's
    // grpcio-reflection and older tools speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tessera_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    if let Some(maddr) = args.metrics_addr {
        let l = tokio::net::TcpListener::bind(maddr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {maddr}"))?;
        writeln!(out, "metrics on http://{}/metrics", l.local_addr()?)?;
        let st = state.clone();
        tokio::spawn(metrics::serve_http(l, move || {
            st.metrics.render(&st.gauges())
        }));
    }
    out.flush()?;
    drop(out);

    // Load the index and the model off the async threads; health says
    // NOT_SERVING meanwhile and the service answers UNAVAILABLE.
    {
        let st = state.clone();
        let reporter = reporter.clone();
        let dir = args.index.clone();
        let model = ModelArgs {
            threads: Some(args.model.threads.unwrap_or((cpus / 2).max(1) as u16)),
            ..args.model.clone()
        };
        let config = BatchConfig {
            max_batch: args.max_batch as usize,
            wait: Duration::from_millis(args.batch_wait_ms),
            search_backlog: None,
            max_hold: Duration::from_millis(args.batch_hold_ms),
        };
        let no_model = args.no_model;
        let lanes = args.search_lanes.map(usize::from);
        let delay = state.faults.load_delay;
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let loaded = tokio::task::spawn_blocking(move || {
                std::thread::sleep(delay);
                load(
                    dir,
                    model,
                    no_model,
                    config,
                    (lanes, search_threads),
                    metrics,
                )
            })
            .await;
            match loaded {
                Ok(Ok(ready)) => {
                    let docs = ready.snapshot().num_docs();
                    let _ = st.ready.set(ready);
                    if !st.draining.load(Ordering::Acquire) {
                        reporter.set_serving::<TesseraServer<Service>>().await;
                        reporter
                            .set_service_status("", ServingStatus::Serving)
                            .await;
                    }
                    tracing::info!(
                        documents = docs,
                        seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
                        "index loaded; serving"
                    );
                }
                Ok(Err(e)) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("error: loading the index failed: {e}");
                    std::process::exit(1);
                }
            }
        });
    }

    let svc = TesseraServer::new(Service::new(state.clone()))
        // Past the limit the handler answers INVALID_ARGUMENT; far past it
        // the transport refuses to read the message at all.
        .max_decoding_message_size(2 * max_message_bytes + (1 << 20))
        .max_encoding_message_size(usize::MAX);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = {
        let st = state.clone();
        let reporter = reporter.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: draining calls in flight");
            st.draining.store(true, Ordering::Release);
            reporter.set_not_serving::<TesseraServer<Service>>().await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            let _ = drained_tx.send(());
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(svc)
        .serve_with_incoming_shutdown(
            // No Nagle: a response must not wait for the client's delayed ACK.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    if let Ok(c) = &conn {
                        let _ = c.set_nodelay(true);
                    }
                    conn
                },
            ),
            shutdown,
        );
    let grace = Duration::from_secs(args.grace_s);
    tokio::select! {
        r = server => r.context("the gRPC server failed")?,
        _ = async {
            let _ = drained_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(in_flight = state.admission.in_flight(), "grace period over; stopping with calls still running");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens the index and starts the encoder thread.
fn load(
    dir: PathBuf,
    model: ModelArgs,
    no_model: bool,
    mut config: BatchConfig,
    (lanes, search_threads): (Option<usize>, usize),
    metrics: Arc<Metrics>,
) -> Result<Ready> {
    let dir = absolute(&dir);
    let index =
        Arc::new(Index::open(&dir).with_context(|| format!("opening index {}", dir.display()))?);
    let search_pool = SearchLanes::new(lanes.unwrap_or(1), search_threads, lanes.is_none())
        .context("starting the search pools")?;
    if config.max_hold > Duration::ZERO {
        config.search_backlog = Some(search_pool.backlog());
    }
    if no_model {
        return Ok(Ready::new(dir, index, None, None, search_pool));
    }
    // The encoder thread reads the index's model record.
    let probe = index.clone();
    let model_dir = Arc::new(Mutex::new(None));
    let slot = model_dir.clone();
    let d = dir.clone();
    let batcher = Batcher::start(
        move || {
            let (encoder, md) = model.load_for_index(&probe, &d)?;
            if let Ok(mut s) = slot.lock() {
                *s = Some(md);
            }
            Ok(encoder)
        },
        config,
        metrics,
    )?;
    let model_dir = model_dir.lock().ok().and_then(|mut s| s.take());
    Ok(Ready::new(
        dir,
        index,
        model_dir,
        Some(batcher),
        search_pool,
    ))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
