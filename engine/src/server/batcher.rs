//! The encoder's worker thread and its dynamic micro-batching.
//!
//! The model runs on one dedicated OS thread (never on the async
//! runtime's threads), with its own libtorch thread count. Query-encoding
//! jobs from concurrent calls are merged: the worker takes the first job,
//! then whatever else arrives within `--batch-wait-ms` of it (or is
//! already waiting), up to `--max-batch` texts, and encodes them in one
//! forward pass. When searching is the bottleneck (encoded calls are
//! waiting for a search lane), encoding a query now would not make it
//! answered sooner, so the worker keeps collecting until that backlog
//! clears (at most `max_hold`): under load, texts are encoded in real
//! batches instead of one by one, which saves CPU for the searches.
//! Jobs whose deadline has passed are dropped unencoded.
//! Document-encoding jobs (AddDocuments) run alone, in chunks, so queries
//! interleave with a large add.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_index::TokenVectors;
use tessera_model::Encoder;
use tokio::sync::oneshot;

use crate::server::metrics::Metrics;

/// What to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queries,
    Documents,
}

/// Why a job gave no vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodeError {
    /// The job's deadline passed before its batch ran.
    Expired,
    /// The encoder failed or panicked (the cause).
    Failed(String),
    /// The worker is gone (server shutting down).
    Closed,
}

/// A job's result.
#[derive(Debug)]
pub struct Encoded {
    pub vectors: Vec<TokenVectors>,
    /// From submission to the start of the batch, ms.
    pub queue_ms: f64,
    /// The batch's forward pass, ms.
    pub encode_ms: f64,
}

struct Job {
    kind: Kind,
    texts: Vec<String>,
    deadline: Instant,
    submitted: Instant,
    reply: oneshot::Sender<Result<Encoded, EncodeError>>,
}

/// Batching settings.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Texts per merged query batch, at most (a single larger job still
    /// runs whole).
    pub max_batch: usize,
    /// How long the first job of a batch waits for company.
    pub wait: Duration,
    /// Calls waiting for a search lane (see the module docs); `None`:
    /// batch by `wait` alone.
    pub search_backlog: Option<Arc<AtomicUsize>>,
    /// The longest the first job is held while the backlog lasts.
    pub max_hold: Duration,
}

/// The handle calls submit jobs through; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts the worker thread, which loads the encoder with `load` (on
    /// that thread) and then serves jobs. Returns once the encoder is
    /// ready, or with the load's error.
    pub fn start(
        load: impl FnOnce() -> crate::error::Result<Encoder> + Send + 'static,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> crate::error::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<crate::error::Result<()>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let pend = pending.clone();
        std::thread::Builder::new()
            .name("tessera-encoder".into())
            .spawn(move || {
                let encoder = match load() {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker(&encoder, &rx, config, &metrics, &pend);
            })?;
        ready_rx
            .recv()
            .map_err(|_| crate::error::err!("the encoder thread died while loading the model"))??;
        Ok(Self { tx, pending })
    }

    /// Jobs submitted and not yet taken by the worker.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Encodes `texts`, merged with other calls' queries; gives up at
    /// `deadline`.
    pub async fn encode(
        &self,
        kind: Kind,
        texts: Vec<String>,
        deadline: Instant,
    ) -> Result<Encoded, EncodeError> {
        let (reply, rx) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            kind,
            texts,
            deadline,
            submitted: Instant::now(),
            reply,
        };
        if self.tx.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(EncodeError::Closed);
        }
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(EncodeError::Closed),
            Err(_) => Err(EncodeError::Expired),
        }
    }
}

fn worker(
    encoder: &Encoder,
    rx: &mpsc::Receiver<Job>,
    config: BatchConfig,
    metrics: &Metrics,
    pending: &AtomicUsize,
) {
    let take = |j: Job| {
        pending.fetch_sub(1, Ordering::Relaxed);
        j
    };
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => take(j),
                Err(_) => return,
            },
        };
        if first.kind == Kind::Documents {
            run_batch(encoder, Kind::Documents, vec![first], metrics);
            continue;
        }
        let mut batch = vec![first];
        let mut texts = batch[0].texts.len();
        let submitted = batch[0].submitted;
        let until = submitted + config.wait;
        let hold_until = submitted + config.max_hold;
        let backlogged = || {
            config
                .search_backlog
                .as_ref()
                .is_some_and(|b| b.load(Ordering::Acquire) > 0)
        };
        while texts < config.max_batch {
            let now = Instant::now();
            let wait_more = now < until || (backlogged() && now < hold_until);
            let next = if !wait_more {
                rx.try_recv()
                    .map_err(|e| e == mpsc::TryRecvError::Disconnected)
            } else {
                // Short steps, so a backlog that clears is seen at once.
                let step = until
                    .saturating_duration_since(now)
                    .clamp(Duration::from_micros(100), Duration::from_millis(1));
                rx.recv_timeout(step)
                    .map_err(|e| e == mpsc::RecvTimeoutError::Disconnected)
            };
            match next {
                Ok(j) => {
                    let j = take(j);
                    if j.kind == Kind::Documents {
                        carried = Some(j);
                        break;
                    }
                    texts += j.texts.len();
                    batch.push(j);
                }
                Err(true) => break,
                Err(false) if !wait_more => break,
                Err(false) => {}
            }
        }
        run_batch(encoder, Kind::Queries, batch, metrics);
    }
}

/// Encodes the live jobs of `batch` together and answers each.
fn run_batch(encoder: &Encoder, kind: Kind, batch: Vec<Job>, metrics: &Metrics) {
    let start = Instant::now();
    let (live, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.deadline > start);
    for j in expired {
        let _ = j.reply.send(Err(EncodeError::Expired));
    }
    if live.is_empty() {
        return;
    }
    let texts: Vec<&str> = live
        .iter()
        .flat_map(|j| j.texts.iter().map(String::as_str))
        .collect();
    let n = texts.len();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
        Kind::Queries => encoder.encode_queries(&texts),
        Kind::Documents => encoder.encode_documents(&texts),
    }));
    let encode_ms = start.elapsed().as_secs_f64() * 1e3;
    if kind == Kind::Queries {
        metrics.encode.observe(encode_ms / 1e3);
        metrics.batch_texts.observe(n as f64);
    }
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            tracing::error!(error = %e, texts = n, "encoding failed");
            let msg = crate::error::EngineError::from(e).chain();
            for j in live {
                let _ = j.reply.send(Err(EncodeError::Failed(msg.clone())));
            }
            return;
        }
        Err(panic) => {
            let msg = super::panic::panic_message(&panic);
            tracing::error!(panic = %msg, texts = n, "the encoder panicked");
            for j in live {
                let _ = j
                    .reply
                    .send(Err(EncodeError::Failed(format!("encoder panic: {msg}"))));
            }
            return;
        }
    };
    let mut items = out.items.into_iter().map(|i| i.vectors);
    for j in live {
        let vectors: Vec<TokenVectors> = items.by_ref().take(j.texts.len()).collect();
        let _ = j.reply.send(Ok(Encoded {
            vectors,
            queue_ms: (start - j.submitted).as_secs_f64() * 1e3,
            encode_ms,
        }));
    }
}
