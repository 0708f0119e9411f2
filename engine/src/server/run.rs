//! Running the service: bind the ports, load the index and the model off
//! the async threads (health NOT_SERVING meanwhile), serve
//! `tessera.v1.Tessera`, `grpc.health.v1` and reflection, and drain on
//! SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_index::Index;
use tessera_proto::v1::tessera_server::TesseraServer;
use tonic_health::ServingStatus;

use super::auth::{AccessKeys, Role};
use super::lanes::SearchLanes;
use super::receiving::Receiving;
use super::service::Service;
use super::state::{Faults, Limits, Ready, State};
use super::tls::{check_exposure, TlsFiles};
use crate::error::{Context, Result};
use crate::model::{absolute, ModelOptions};
use crate::reduction::ReductionChoice;
use crate::server::admission::Admission;
use crate::server::batcher::{BatchConfig, Batcher};
use crate::server::metrics::{self, Metrics};

/// How `tessera serve` runs: the index, the addresses, the limits of a
/// call, admission, batching and the search pools.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The index folder.
    pub index: PathBuf,
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// What one call may ask for, and the default search settings.
    pub limits: Limits,
    /// Calls running at once, at most.
    pub max_in_flight: usize,
    /// Calls waiting for a slot, at most.
    pub max_queue: usize,
    /// How query texts are encoded together.
    pub batch: BatchConfig,
    /// Threads of the search pool (`None`: the number of CPUs).
    pub search_threads: Option<usize>,
    /// Search lanes (`None`: adaptive, one per search thread).
    pub search_lanes: Option<usize>,
    /// Time calls in flight get to finish after SIGINT/SIGTERM.
    pub grace: Duration,
    /// Serve without a model: queries bring vectors or use BM25.
    pub no_model: bool,
    /// A reduction the index must have been built with.
    pub reduction: ReductionChoice,
    /// The model (`threads` unset: half the CPUs).
    pub model: ModelOptions,
    /// API keys every call but health must present (`None`: no
    /// authentication; keep the server on a loopback address then).
    pub keys: Option<AccessKeys>,
    /// Certificate and key for TLS on the gRPC and metrics ports.
    pub tls: Option<TlsFiles>,
    /// Listen on a non-loopback address without TLS or keys (a proxy in
    /// front provides them).
    pub insecure: bool,
}

/// Where the server listens, once it does.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// The gRPC address (with the real port when the port asked was 0).
    pub addr: SocketAddr,
    /// The metrics address, when metrics are served.
    pub metrics: Option<SocketAddr>,
}

/// Runs the gRPC service until SIGINT/SIGTERM (then drains for
/// [`ServeOptions::grace`]). `listening` is called once the ports are
/// bound, before the index has loaded (health says NOT_SERVING until it
/// has). An index or model that fails to load (a damaged file, a missing
/// model) keeps health NOT_SERVING and every call `UNAVAILABLE` with the
/// reason, until the server is stopped.
pub fn serve(opts: ServeOptions, listening: impl FnOnce(Listening) -> Result<()>) -> Result<()> {
    if opts.reduction.reduction.is_some() {
        // Refused before listening: the index must carry this reduction.
        let index = Index::open(&opts.index)
            .with_context(|| format!("opening index {}", opts.index.display()))?;
        opts.reduction.check_index(&index, &opts.index)?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let search_threads = opts.search_threads.unwrap_or(cpus);
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
    rt.block_on(run(opts, search_threads, cpus, listening))
}

async fn run(
    args: ServeOptions,
    search_threads: usize,
    cpus: usize,
    listening: impl FnOnce(Listening) -> Result<()>,
) -> Result<()> {
    // A folder that is not an index (or whose manifest is damaged) stops
    // the server before it listens; the files themselves are read by the
    // loader below while health says NOT_SERVING.
    tessera_index::manifest::Manifest::load(&args.index)
        .with_context(|| format!("opening index {}", args.index.display()))?;
    let tls = args.tls.as_ref().map(TlsFiles::load).transpose()?;
    check_exposure(args.addr, tls.is_some(), args.keys.is_some(), args.insecure)?;
    if let Some(m) = args.metrics_addr {
        check_exposure(m, tls.is_some(), args.keys.is_some(), args.insecure)
            .context("--metrics-addr")?;
    }
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && (tls.is_none() || args.keys.is_none()) {
        tracing::warn!(
            addr = %local,
            tls = tls.is_some(),
            api_keys = args.keys.is_some(),
            "--insecure: serving on a non-loopback address without TLS or API keys; \
             the proxy in front must provide what is missing"
        );
    }
    let max_message_bytes = args.limits.max_message_bytes;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(State::new(
        args.limits.clone(),
        Admission::new(args.max_in_flight, args.max_queue),
        metrics.clone(),
        Faults::from_env(),
        args.keys.clone(),
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

    let mut metrics_local = None;
    if let Some(maddr) = args.metrics_addr {
        let l = tokio::net::TcpListener::bind(maddr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {maddr}"))?;
        metrics_local = Some(l.local_addr()?);
        let st = state.clone();
        let acceptor = tls.as_ref().map(|t| t.metrics_acceptor()).transpose()?;
        tokio::spawn(metrics::serve_http(
            l,
            args.keys.clone(),
            acceptor,
            move || st.metrics.render(&st.gauges()),
        ));
    }
    listening(Listening {
        addr: local,
        metrics: metrics_local,
    })?;

    // Load the index and the model off the async threads; health says
    // NOT_SERVING meanwhile and the service answers UNAVAILABLE.
    {
        let st = state.clone();
        let reporter = reporter.clone();
        let dir = args.index.clone();
        let model = ModelOptions {
            threads: Some(args.model.threads.unwrap_or((cpus / 2).max(1) as u16)),
            ..args.model.clone()
        };
        let config = args.batch.clone();
        let no_model = args.no_model;
        let lanes = args.search_lanes;
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
                Ok(Err(e)) => fail(&st, e.chain()),
                Err(e) => fail(&st, format!("loading the index failed: {e}")),
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
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        builder = builder
            .tls_config(t.grpc())
            .context("configuring TLS for the gRPC port")?;
    }
    let server = builder
        .layer(tower::ServiceBuilder::new().map_response(decode_errors_are_invalid_argument))
        .add_service(health)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1,
            read_role(args.keys.clone()),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1alpha,
            read_role(args.keys.clone()),
        ))
        // Calls past admission's in-flight and queue bounds (with room for
        // admission to refuse some itself) are refused before their
        // messages are read.
        .add_service(Receiving::new(svc, 2 * args.max_in_flight + args.max_queue))
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
    let grace = args.grace;
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

/// The index or the model could not be loaded: the server stays up with
/// health NOT_SERVING, logs the reason, and answers every call
/// `UNAVAILABLE` with it — an orchestrator sees an unready server and why.
fn fail(st: &State, why: String) {
    tracing::error!(reason = %why, "cannot serve the index; health stays NOT_SERVING");
    eprintln!("error: {why}");
    let _ = st.failed.set(why);
}

/// Opens the index and starts the encoder thread.
fn load(
    dir: PathBuf,
    model: ModelOptions,
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

/// An interceptor that lets a call through with a key of the read role
/// (every call, without keys).
fn read_role(
    keys: Option<AccessKeys>,
) -> impl FnMut(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> + Clone
{
    move |req: tonic::Request<()>| {
        if let Some(k) = &keys {
            k.check(req.metadata(), Role::Read)?;
        }
        Ok(req)
    }
}

/// A request whose protobuf does not decode is the caller's fault:
/// `INVALID_ARGUMENT`, not the `INTERNAL` the codec answers with (the
/// message, prost's "failed to decode Protobuf message: …", is kept).
fn decode_errors_are_invalid_argument<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers();
    let internal = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"13");
    let undecodable = headers
        .get("grpc-message")
        .is_some_and(|v| v.as_bytes().starts_with(b"failed%20to%20decode%20Protobuf"));
    if internal && undecodable {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    resp
}
