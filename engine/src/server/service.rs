//! The `tessera.v1.Tessera` service: request validation, admission,
//! deadlines, encoding through the [`Batcher`], ranking on the search pool,
//! updates through the index's atomic writer, and one log line and metric
//! sample per call.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prost::Message;
use tessera_index::{
    Candidates, Document, Filter, Hit, Index, IndexError, SearchParams, TokenVectors,
};
use tessera_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use super::admission::Admission;
use super::batcher::{Batcher, EncodeError, Kind};
use super::metrics::{Gauges, Metrics};
use crate::error::EngineError;
use crate::retrieve::Retriever;

/// Server limits (`tessera serve` options).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Hits per query, at most.
    pub max_k: usize,
    /// Queries per Search call, at most.
    pub max_queries: usize,
    /// Ids per GetDocuments / DeleteDocuments call, at most.
    pub max_ids: usize,
    /// Documents per AddDocuments call, at most.
    pub max_add_docs: usize,
    /// Bytes of one query's text, at most (checked before any work).
    pub max_query_bytes: usize,
    /// Bytes of one added document's title and text together, at most.
    pub max_document_bytes: usize,
    /// Encoded size of one request message, at most (bytes).
    pub max_message_bytes: usize,
    /// Deadline of a call whose client sets none.
    pub default_timeout: Duration,
    /// Longest deadline honoured.
    pub max_timeout: Duration,
    /// Documents re-ranked exactly per query, at most.
    pub max_candidates: usize,
    /// PLAID cells probed per query token, at most.
    pub max_probe: usize,
    /// Search settings of a query that does not set its own (`serve
    /// --n-probe`, `--probe-budget`, `--n-approx`, `--rerank-budget`; the
    /// index crate's defaults otherwise).
    pub search: SearchParams,
}

/// Faults the tests inject into a debug build through `TESSERA_FAULTS`
/// (comma-separated `search-delay-ms=N`, `load-delay-ms=N`,
/// `commit-delay-ms=N`, `panic-text=TEXT`); release builds ignore it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Sleep before each query is ranked.
    pub search_delay: Duration,
    /// Sleep before the index is opened.
    pub load_delay: Duration,
    /// Sleep before an update commits.
    pub commit_delay: Duration,
    /// A query with this text panics in the search pool.
    pub panic_text: Option<String>,
}

impl Faults {
    pub fn from_env() -> Self {
        let mut f = Self::default();
        if !cfg!(debug_assertions) {
            return f;
        }
        let Ok(spec) = std::env::var("TESSERA_FAULTS") else {
            return f;
        };
        if spec.trim().is_empty() {
            return f;
        }
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let ms = || Duration::from_millis(v.parse().unwrap_or(0));
            match k {
                "search-delay-ms" => f.search_delay = ms(),
                "load-delay-ms" => f.load_delay = ms(),
                "commit-delay-ms" => f.commit_delay = ms(),
                "panic-text" => f.panic_text = Some(v.to_owned()),
                _ => tracing::warn!(fault = k, "unknown TESSERA_FAULTS entry"),
            }
        }
        tracing::warn!(?f, "fault injection on");
        f
    }
}

/// The search pools ("lanes"). One call's queries run on one lane at a
/// time, using all its threads; calls wait for a free lane in arrival
/// order. Several searches sharing one rayon pool would interleave: a
/// thread waiting inside one search's parallel loop picks up another
/// search, so the first finishes only after the second (last in, first
/// out), which is what made the tail latency explode under load.
pub struct SearchLanes {
    free: std::sync::Mutex<Vec<Arc<rayon::ThreadPool>>>,
    /// With adaptive lanes: a pool of all the search threads, taken by a
    /// call that finds no other search running (a lone query gets every
    /// thread; under load queries run one per thread, which wastes less
    /// on parallel overhead).
    wide: Option<Arc<rayon::ThreadPool>>,
    /// Searches running now.
    running: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
    /// Calls with their queries encoded, waiting for a lane.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
}

impl SearchLanes {
    /// `lanes` pools sharing `threads` threads (each at least one); with
    /// `adaptive`, `threads` one-thread lanes plus a pool of all `threads`
    /// for a call that finds nothing else running.
    pub fn new(
        lanes: usize,
        threads: usize,
        adaptive: bool,
    ) -> Result<Self, rayon::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let lanes = if adaptive {
            threads
        } else {
            lanes.clamp(1, threads)
        };
        let wide = (adaptive && threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("tessera-search-all.{i}"))
                    .build()
                    .map(Arc::new)
            })
            .transpose()?;
        let pools = (0..lanes)
            .map(|l| {
                let n = threads / lanes + usize::from(l < threads % lanes);
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(move |i| format!("tessera-search-{l}.{i}"))
                    .build()
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            gate: tokio::sync::Semaphore::new(pools.len()),
            free: std::sync::Mutex::new(pools),
            wide,
            running: Default::default(),
            backlog: Arc::default(),
        })
    }

    /// The count of calls waiting for a lane, which the encoder watches:
    /// while searches are the bottleneck it holds queries back and encodes
    /// them together.
    pub fn backlog(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.backlog.clone()
    }

    /// Runs `f` on a free lane (waiting for one until `deadline`, in
    /// arrival order); a panic in it becomes `INTERNAL`.
    async fn run<T: Send + 'static>(
        &self,
        deadline: Instant,
        f: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let acquired = {
            // Counted while waiting, also if the call is dropped meanwhile.
            let _waiting = Waiting::new(&self.backlog);
            tokio::time::timeout_at(deadline.into(), self.gate.acquire()).await
        };
        let _permit = match acquired {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Status::unavailable("the server is shutting down")),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "deadline passed while waiting for a search lane",
                ))
            }
        };
        let lane = {
            let mut free = self
                .free
                .lock()
                .map_err(|_| Status::internal("search lanes poisoned"))?;
            let alone = self.running.load(Ordering::Acquire) == 0;
            let (pool, narrow) = match &self.wide {
                Some(w) if alone => (w.clone(), false),
                _ => (
                    free.pop()
                        .ok_or_else(|| Status::internal("no free search lane"))?,
                    true,
                ),
            };
            self.running.fetch_add(1, Ordering::AcqRel);
            // Given back on drop: also when the call is cut off at its
            // deadline while the search runs (the lane finishes that job
            // first).
            Lane {
                lanes: self,
                pool: Some(pool),
                narrow,
            }
        };
        let pool = lane
            .pool
            .as_ref()
            .map(Arc::clone)
            .ok_or_else(|| Status::internal("lane"))?;
        on_pool(&pool, f).await
    }
}

/// One count in a gauge for as long as it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A lane taken from [`SearchLanes`], given back when dropped.
struct Lane<'a> {
    lanes: &'a SearchLanes,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// A one-lane pool (back to the free list), not the wide one.
    narrow: bool,
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        self.lanes.running.fetch_sub(1, Ordering::AcqRel);
        if let (Some(pool), true, Ok(mut free)) =
            (self.pool.take(), self.narrow, self.lanes.free.lock())
        {
            free.push(pool);
        }
    }
}

/// What exists once the index and model are loaded.
pub struct Ready {
    pub dir: PathBuf,
    pub model_dir: Option<PathBuf>,
    index: RwLock<Arc<Index>>,
    pub batcher: Option<Batcher>,
    pub lanes: SearchLanes,
    /// Serialises updates (the index's file lock guards other processes).
    writer: tokio::sync::Mutex<()>,
}

impl Ready {
    pub fn new(
        dir: PathBuf,
        index: Arc<Index>,
        model_dir: Option<PathBuf>,
        batcher: Option<Batcher>,
        lanes: SearchLanes,
    ) -> Self {
        Self {
            dir,
            model_dir,
            index: RwLock::new(index),
            batcher,
            lanes,
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// The current snapshot; a call keeps the one it took.
    pub fn snapshot(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Runs one change of the index (`change` gets its folder) off the
    /// async threads, one change at a time, then reopens the index and
    /// publishes the new snapshot: a search that starts after this returns
    /// sees the change. Once begun, the change runs to its end even if the
    /// caller goes away. Returns the change's result and the new snapshot.
    async fn update<T: Send + 'static>(
        &self,
        what: &'static str,
        change: impl FnOnce(&std::path::Path) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<(T, Arc<Index>), Status> {
        let _w = self.writer.lock().await;
        let dir = self.dir.clone();
        let (out, fresh) = blocking(move || {
            let out = change(&dir).map_err(|e| index_status(e, what))?;
            let fresh = Index::open(&dir).map_err(|e| index_status(e, "reopening the index"))?;
            Ok((out, fresh))
        })
        .await?;
        let fresh = Arc::new(fresh);
        match self.index.write() {
            Ok(mut g) => *g = fresh.clone(),
            Err(p) => *p.into_inner() = fresh.clone(),
        }
        Ok((out, fresh))
    }
}

/// Shared by every call.
pub struct State {
    pub ready: OnceLock<Ready>,
    pub draining: AtomicBool,
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub faults: Faults,
}

impl State {
    pub fn new(
        limits: Limits,
        admission: Admission,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Self {
        Self {
            ready: OnceLock::new(),
            draining: AtomicBool::new(false),
            admission,
            metrics,
            limits,
            faults,
        }
    }

    /// The loaded index and model; `UNAVAILABLE` while they load.
    pub fn ready(&self) -> Result<&Ready, Status> {
        self.ready
            .get()
            .ok_or_else(|| Status::unavailable("the index is still loading; retry shortly"))
    }

    /// Refuses more ids in one call than `--max-ids` allows.
    fn check_ids(&self, n: usize) -> Result<(), Status> {
        if n > self.limits.max_ids {
            return Err(invalid(
                "ids",
                format!(
                    "{n} ids is above the limit of {} per call",
                    self.limits.max_ids
                ),
            ));
        }
        Ok(())
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            in_flight: self.admission.in_flight(),
            queued: self.admission.queued(),
            ..Gauges::default()
        };
        if let Some(r) = self.ready.get() {
            let ix = r.snapshot();
            let m = ix.manifest();
            g.ready = !self.draining.load(Ordering::Relaxed);
            g.index_docs = m.live_docs();
            g.index_tokens = m.tokens();
            g.index_bytes = crate::disk::dir_bytes(ix.dir());
            g.index_segments = m.segments.len();
            g.index_generation = m.generation;
            g.encoder_queue = r.batcher.as_ref().map_or(0, Batcher::pending);
        }
        g
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// Text of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The client's `grpc-timeout`, if any and well-formed.
fn client_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn invalid(field: impl std::fmt::Display, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

/// An index error from ranking or updating: the caller's fault or ours.
fn index_status(e: IndexError, what: &str) -> Status {
    match e {
        IndexError::InvalidParameter(_)
        | IndexError::DimMismatch { .. }
        | IndexError::InvalidDocument { .. } => Status::invalid_argument(format!("{what}: {e}")),
        IndexError::Locked { .. } => Status::aborted(format!("{what}: {e}")),
        e => {
            tracing::error!(error = %e, "{what} failed");
            Status::internal(format!("{what}: {e}"))
        }
    }
}

fn encode_status(e: EncodeError) -> Status {
    match e {
        EncodeError::Expired => {
            Status::deadline_exceeded("deadline passed before the query was encoded")
        }
        EncodeError::Closed => Status::unavailable("the encoder is shutting down"),
        EncodeError::Failed(m) => Status::internal(format!("encoding failed: {m}")),
    }
}

/// Runs `f` on the search pool; a panic in it becomes `INTERNAL`.
async fn on_pool<T: Send + 'static>(
    pool: &rayon::ThreadPool,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.await {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => {
            let msg = panic_message(&*p);
            tracing::error!(panic = %msg, "a search panicked");
            Err(Status::internal(format!("internal error: {msg}")))
        }
        Err(_) => Err(Status::internal("the search pool dropped the job")),
    }
}

/// Runs blocking update work off the async threads; a panic becomes
/// `INTERNAL`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            let msg = if e.is_panic() {
                panic_message(&*e.into_panic())
            } else {
                "cancelled".to_owned()
            };
            tracing::error!(panic = %msg, "an update panicked");
            Err(Status::internal(format!("internal error: {msg}")))
        }
    }
}

/// What the log line of a call says besides method and status.
#[derive(Default, Clone, Copy)]
struct CallInfo {
    queries: usize,
    k: usize,
}

impl Service {
    /// The frame of every call: refusal while loading or draining, size
    /// check, deadline, admission, panic capture, metrics and the log line.
    /// `hard_deadline`: cut the call off at its deadline (reads); updates
    /// handle theirs themselves, since a commit in progress finishes.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        meta: &tonic::metadata::MetadataMap,
        size: usize,
        info: CallInfo,
        hard_deadline: bool,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Arc<State>, Instant, Instant) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let st = &self.state;
        let result = async {
            if st.draining.load(Ordering::Acquire) {
                return Err(Status::unavailable("the server is shutting down"));
            }
            st.ready()?;
            let limit = st.limits.max_message_bytes;
            if size > limit {
                return Err(invalid(
                    "request",
                    format!("message of {size} bytes exceeds the server's --max-message-mb limit of {limit} bytes"),
                ));
            }
            let timeout = client_timeout(meta)
                .map_or(st.limits.default_timeout, |t| t.min(st.limits.max_timeout));
            // End a little before the transport's own timer (tonic's,
            // outside every service layer, which would answer CANCELLED),
            // so the client gets DEADLINE_EXCEEDED from us: a fifth of the
            // deadline, at most 25 ms, enough for a busy runtime to send
            // the answer first.
            let margin = (timeout / 5).min(Duration::from_millis(25));
            let deadline = start + timeout - margin;
            let _ticket = st.admission.enter(deadline).await?;
            let work = std::panic::AssertUnwindSafe(f(st.clone(), deadline, start)).catch_unwind();
            let out = if hard_deadline {
                match tokio::time::timeout_at(deadline.into(), work).await {
                    Ok(r) => r,
                    Err(_) => return Err(Status::deadline_exceeded(format!(
                        "deadline of {} ms passed", timeout.as_millis()
                    ))),
                }
            } else {
                work.await
            };
            match out {
                Ok(r) => r,
                Err(p) => {
                    let msg = panic_message(&*p);
                    tracing::error!(method, panic = %msg, "a handler panicked");
                    Err(Status::internal(format!("internal error: {msg}")))
                }
            }
        }
        .await;
        let secs = start.elapsed().as_secs_f64();
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        st.metrics.finish(method, code, secs);
        match &result {
            Ok(_) => {
                tracing::info!(target: "tessera::request", method, queries = info.queries, k = info.k,
                latency_ms = format!("{:.2}", secs * 1e3), status = ?code)
            }
            Err(s) => {
                tracing::info!(target: "tessera::request", method, queries = info.queries, k = info.k,
                latency_ms = format!("{:.2}", secs * 1e3), status = ?code, message = s.message())
            }
        }
        result.map(Response::new)
    }
}

/// One validated query.
struct Plan {
    id: String,
    text: String,
    vectors: Option<TokenVectors>,
    retriever: pb::Retriever,
    params: SearchParams,
    fields: pb::Fields,
}

impl Plan {
    fn needs_encoding(&self) -> bool {
        self.vectors.is_none() && self.retriever != pb::Retriever::Bm25
    }
}

/// Reads packed vectors, checking length, count and values.
fn unpack(field: &str, v: &pb::TokenVectors, dim: usize) -> Result<TokenVectors, Status> {
    let row = 4 * dim;
    if v.data.is_empty() {
        return Err(invalid(format!("{field}.data"), "no vectors"));
    }
    if !v.data.len().is_multiple_of(row) {
        return Err(invalid(
            format!("{field}.data"),
            format!(
                "{} bytes is not a multiple of 4 × dim = {row} (the index's dimension is {dim}; values are little-endian f32)",
                v.data.len()
            ),
        ));
    }
    let n = v.data.len() / row;
    if v.num_tokens as usize != n {
        return Err(invalid(
            format!("{field}.num_tokens"),
            format!(
                "says {} but data holds {n} tokens of {dim} dims",
                v.num_tokens
            ),
        ));
    }
    let values = tessera_proto::unpack_f32(&v.data).unwrap_or_default();
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            format!("{field}.data"),
            format!(
                "value {} at token {}, dim {} is not finite",
                values[i],
                i / dim,
                i % dim
            ),
        ));
    }
    TokenVectors::new(dim, values).map_err(|e| invalid(field, e))
}

fn plan(i: usize, q: pb::Query, index: &Index, limits: &Limits) -> Result<Plan, Status> {
    let f = |name: &str| format!("queries[{i}].{name}");
    let retriever = match pb::Retriever::try_from(q.retriever) {
        // Hybrid where there are words to match; vectors alone can only
        // be ranked by MaxSim.
        Ok(pb::Retriever::Unspecified) if q.text.trim().is_empty() => pb::Retriever::Colbert,
        Ok(pb::Retriever::Unspecified) => pb::Retriever::Hybrid,
        Ok(r) => r,
        Err(_) => {
            return Err(invalid(
                f("retriever"),
                format!(
                    "unknown value {} (COLBERT = 1, BM25 = 2, HYBRID = 3)",
                    q.retriever
                ),
            ))
        }
    };
    if q.text.len() > limits.max_query_bytes {
        return Err(invalid(
            f("text"),
            format!(
                "{} bytes is above the server's --max-query-bytes {}",
                q.text.len(),
                limits.max_query_bytes
            ),
        ));
    }
    if q.k == 0 {
        return Err(invalid(f("k"), "must be at least 1"));
    }
    if q.k as usize > limits.max_k {
        return Err(invalid(
            f("k"),
            format!("{} is above the server's --max-k {}", q.k, limits.max_k),
        ));
    }
    let vectors = match &q.vectors {
        Some(v) if retriever != pb::Retriever::Bm25 => {
            Some(unpack(&f("vectors"), v, index.query_dim())?)
        }
        _ => None,
    };
    let text_needed = retriever != pb::Retriever::Colbert || vectors.is_none();
    if text_needed && q.text.trim().is_empty() {
        let why = match retriever {
            pb::Retriever::Colbert => {
                "empty query text (and no vectors): there is nothing to search"
            }
            _ => "empty query text: BM25 and hybrid need words",
        };
        return Err(invalid(f("text"), why));
    }
    let mut params = SearchParams {
        k: q.k as usize,
        ..limits.search.clone()
    };
    if let Some(c) = &q.candidates {
        params.candidates = match pb::CandidateGenerator::try_from(c.generator) {
            Ok(pb::CandidateGenerator::Unspecified | pb::CandidateGenerator::Plaid) => {
                Candidates::Plaid
            }
            Ok(pb::CandidateGenerator::Hnsw) => Candidates::Hnsw,
            Ok(pb::CandidateGenerator::Exhaustive) => Candidates::Exhaustive,
            Err(_) => {
                return Err(invalid(
                    f("candidates.generator"),
                    format!(
                        "unknown value {} (PLAID = 1, HNSW = 2, EXHAUSTIVE = 3)",
                        c.generator
                    ),
                ))
            }
        };
        let at_least_one = |name: &str, v: Option<u32>| match v {
            Some(0) => Err(invalid(
                f(&format!("candidates.{name}")),
                "must be at least 1",
            )),
            v => Ok(v.map(|v| v as usize)),
        };
        if let Some(n) = at_least_one("n_probe", c.n_probe)? {
            params.n_probe = n.min(limits.max_probe);
        }
        if let Some(n) = at_least_one("n_candidates", c.n_candidates)? {
            params.n_candidates = n.min(limits.max_candidates);
        }
        if let Some(n) = at_least_one("max_candidates", c.max_candidates)? {
            params.max_candidates = n.min(limits.max_candidates);
        }
    }
    params.max_candidates = params.max_candidates.min(limits.max_candidates);
    if !q.filter.trim().is_empty() {
        let filter: Filter = serde_json::from_str(&q.filter)
            .map_err(|e| invalid(f("filter"), format!("malformed filter: {e}")))?;
        filter.validate().map_err(|e| invalid(f("filter"), e))?;
        if let Some(u) = crate::retrieve::unknown_fields(index, &filter) {
            let plural = if u.count > 1 { "s" } else { "" };
            return Err(invalid(
                f("filter"),
                format!(
                    "no document has the field{plural} {}; metadata fields in this index: {}",
                    u.listed, u.present
                ),
            ));
        }
        params.filter = Some(filter);
    }
    Ok(Plan {
        id: q.id,
        text: q.text,
        vectors,
        retriever,
        params,
        fields: q.fields.unwrap_or_default(),
    })
}

/// Ranks one planned query on the current thread (the search pool),
/// through the engine's one retriever dispatch.
fn rank(index: &Index, p: &Plan) -> Result<(Vec<Hit>, f64, f64), Status> {
    let retriever = match p.retriever {
        pb::Retriever::Bm25 => Retriever::Bm25,
        pb::Retriever::Hybrid => Retriever::Hybrid,
        _ => Retriever::Colbert,
    };
    match crate::retrieve::rank(index, retriever, &p.text, p.vectors.as_ref(), &p.params) {
        Ok(r) => Ok((r.hits, r.candidate_ms, r.rerank_ms)),
        Err(EngineError::Index(e)) => Err(index_status(e, "searching")),
        Err(e) => {
            tracing::error!(error = %e.chain(), "searching failed");
            Err(Status::internal(format!("searching: {}", e.chain())))
        }
    }
}

fn to_hit(index: &Index, h: Hit, fields: &pb::Fields) -> pb::Hit {
    let doc = (fields.title || fields.text || fields.metadata)
        .then(|| index.hit_document(&h).unwrap_or_default());
    let doc = doc.as_ref();
    pb::Hit {
        id: h.id,
        score: h.score,
        title: doc.filter(|_| fields.title).map(|d| d.title.clone()),
        text: doc.filter(|_| fields.text).map(|d| d.text.clone()),
        metadata_json: doc
            .filter(|_| fields.metadata)
            .map(|d| metadata_json(&d.metadata)),
    }
}

fn metadata_json(v: &serde_json::Value) -> String {
    if v.is_null() {
        "{}".to_owned()
    } else {
        v.to_string()
    }
}

async fn search(
    st: Arc<State>,
    req: pb::SearchRequest,
    deadline: Instant,
    start: Instant,
) -> Result<pb::SearchResponse, Status> {
    let ready = st.ready()?;
    let limits = &st.limits;
    if req.queries.is_empty() {
        return Err(invalid("queries", "at least one query is needed"));
    }
    if req.queries.len() > limits.max_queries {
        return Err(invalid(
            "queries",
            format!(
                "{} queries is above the server's limit of {} per call",
                req.queries.len(),
                limits.max_queries
            ),
        ));
    }
    let index = ready.snapshot();
    let mut plans = req
        .queries
        .into_iter()
        .enumerate()
        .map(|(i, q)| plan(i, q, &index, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let admitted_ms = start.elapsed().as_secs_f64() * 1e3;
    let (mut queue_ms, mut encode_ms) = (admitted_ms, 0.0);
    let todo: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].needs_encoding())
        .collect();
    if !todo.is_empty() {
        let batcher = ready.batcher.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this server has no model loaded (BM25 only): send vectors or use RETRIEVER_BM25",
            )
        })?;
        let texts = todo.iter().map(|&i| plans[i].text.clone()).collect();
        let enc = batcher
            .encode(Kind::Queries, texts, deadline)
            .await
            .map_err(encode_status)?;
        queue_ms += enc.queue_ms;
        encode_ms = enc.encode_ms;
        for (&i, v) in todo.iter().zip(enc.vectors) {
            if v.is_empty() {
                return Err(invalid(format!("queries[{i}].text"), "no token to encode"));
            }
            plans[i].vectors = Some(v);
        }
    }
    let generation = index.manifest().generation;
    let metrics = st.metrics.clone();
    let faults = st.faults.clone();
    let results = ready
        .lanes
        .run(deadline, move || {
            let mut out = Vec::with_capacity(plans.len());
            for p in plans {
                std::thread::sleep(faults.search_delay);
                if faults.panic_text.as_deref() == Some(p.text.as_str()) {
                    panic!("injected fault: panic-text");
                }
                if Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(
                        "deadline passed during the search",
                    ));
                }
                let t = Instant::now();
                let (hits, candidates_ms, rerank_ms) = rank(&index, &p)?;
                metrics.search.observe(t.elapsed().as_secs_f64());
                let query_tokens = p.vectors.as_ref().map_or(0, |v| v.len()) as u32;
                out.push(pb::QueryResult {
                    hits: hits
                        .into_iter()
                        .map(|h| to_hit(&index, h, &p.fields))
                        .collect(),
                    id: p.id,
                    timings: Some(pb::Timings {
                        queue_ms,
                        encode_ms: if p.retriever == pb::Retriever::Bm25 {
                            0.0
                        } else {
                            encode_ms
                        },
                        candidates_ms,
                        rerank_ms,
                        total_ms: 0.0,
                    }),
                    query_tokens,
                });
            }
            Ok(out)
        })
        .await?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut results = results;
    for r in &mut results {
        if let Some(t) = &mut r.timings {
            t.total_ms = total_ms;
        }
    }
    Ok(pb::SearchResponse {
        results,
        generation,
    })
}

fn get_documents(
    st: Arc<State>,
    req: pb::GetDocumentsRequest,
) -> Result<pb::GetDocumentsResponse, Status> {
    let ready = st.ready()?;
    st.check_ids(req.ids.len())?;
    let index = ready.snapshot();
    let results = req
        .ids
        .into_iter()
        .map(|id| match index.document(&id) {
            Some(d) => pb::DocumentResult {
                found: true,
                document: Some(pb::Document {
                    id: id.clone(),
                    title: d.title,
                    text: d.text,
                    metadata_json: metadata_json(&d.metadata),
                }),
                id,
            },
            None => pb::DocumentResult {
                id,
                found: false,
                document: None,
            },
        })
        .collect();
    Ok(pb::GetDocumentsResponse { results })
}

/// A document received, before encoding.
struct Incoming {
    doc: Document,
    /// Text to encode (title and text) when no vectors came.
    encode: Option<String>,
}

fn incoming(pos: usize, d: pb::NewDocument, dim: usize) -> Result<Incoming, Status> {
    let field = |name: &str| format!("documents[{pos}].{name}");
    tessera_index::check_id(&d.id).map_err(|m| invalid(field("id"), m))?;
    let metadata = if d.metadata_json.trim().is_empty() {
        serde_json::Value::Null
    } else {
        let v: serde_json::Value = serde_json::from_str(&d.metadata_json).map_err(|e| {
            invalid(
                field("metadata_json"),
                format!("document {:?}: malformed JSON: {e}", d.id),
            )
        })?;
        if !v.is_object() {
            return Err(invalid(
                field("metadata_json"),
                format!("document {:?}: must be a JSON object", d.id),
            ));
        }
        v
    };
    let (vectors, encode) = match &d.vectors {
        Some(v) => (unpack(&field("vectors"), v, dim)?, None),
        None => {
            let text = match (d.title.trim().is_empty(), d.text.trim().is_empty()) {
                (true, true) => None,
                (true, false) => Some(d.text.clone()),
                (false, true) => Some(d.title.clone()),
                (false, false) => Some(format!("{} {}", d.title, d.text)),
            };
            (
                TokenVectors::new(dim, Vec::new()).map_err(|e| Status::internal(e.to_string()))?,
                text,
            )
        }
    };
    Ok(Incoming {
        doc: Document {
            id: d.id,
            vectors,
            title: d.title,
            text: d.text,
            metadata,
        },
        encode,
    })
}

/// Documents encoded per encoder job (queries interleave between jobs).
const DOC_CHUNK: usize = 32;

async fn add_documents(
    st: Arc<State>,
    mut stream: Streaming<pb::AddDocumentsRequest>,
    deadline: Instant,
) -> Result<pb::AddDocumentsResponse, Status> {
    let ready = st.ready()?;
    let index = ready.snapshot();
    let dim = index.query_dim();
    let mut docs: Vec<Incoming> = Vec::new();
    let mut seen = HashSet::new();
    let mut skipped = Vec::new();
    let mut skip_existing = None;
    let mut pos = 0usize;
    loop {
        let msg = match tokio::time::timeout_at(deadline.into(), stream.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "deadline passed while receiving documents; nothing was added",
                ))
            }
            Ok(Err(s)) => {
                return Err(Status::new(
                    s.code(),
                    format!("receiving documents: {}; nothing was added", s.message()),
                ))
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        let size = msg.encoded_len();
        if size > st.limits.max_message_bytes {
            return Err(invalid(
                "request",
                format!("stream message of {size} bytes exceeds the --max-message-mb limit of {} bytes; nothing was added", st.limits.max_message_bytes),
            ));
        }
        let skip = *skip_existing.get_or_insert(msg.skip_existing);
        for d in msg.documents {
            if docs.len() >= st.limits.max_add_docs {
                return Err(invalid(
                    "documents",
                    format!(
                        "more than {} documents in one call (--max-add-docs); nothing was added",
                        st.limits.max_add_docs
                    ),
                ));
            }
            let text_bytes = d.title.len() + d.text.len();
            if text_bytes > st.limits.max_document_bytes {
                return Err(invalid(
                    format!("documents[{pos}].text"),
                    format!(
                        "title and text are {text_bytes} bytes, above the server's \
                         --max-document-bytes {}; nothing was added",
                        st.limits.max_document_bytes
                    ),
                ));
            }
            if !seen.insert(d.id.clone()) {
                return Err(invalid(
                    format!("documents[{pos}].id"),
                    format!("{:?} appears twice in this call; nothing was added", d.id),
                ));
            }
            if index.contains(&d.id) {
                if skip {
                    skipped.push(d.id);
                    pos += 1;
                    continue;
                }
                return Err(invalid(
                    format!("documents[{pos}].id"),
                    format!("{:?} is already in the index (set skip_existing to skip such documents); nothing was added", d.id),
                ));
            }
            docs.push(incoming(pos, d, dim).map_err(|s| {
                Status::new(s.code(), format!("{}; nothing was added", s.message()))
            })?);
            pos += 1;
        }
    }
    // Encode the documents that came as text.
    let todo: Vec<usize> = (0..docs.len())
        .filter(|&i| docs[i].encode.is_some())
        .collect();
    if !todo.is_empty() {
        let batcher = ready.batcher.as_ref().ok_or_else(|| {
            Status::failed_precondition("this server has no model loaded: send document vectors")
        })?;
        for chunk in todo.chunks(DOC_CHUNK) {
            let texts = chunk
                .iter()
                .map(|&i| docs[i].encode.take().unwrap_or_default())
                .collect();
            let enc = batcher
                .encode(Kind::Documents, texts, deadline)
                .await
                .map_err(|e| match e {
                    EncodeError::Expired => Status::deadline_exceeded(
                        "deadline passed while encoding documents; nothing was added",
                    ),
                    e => encode_status(e),
                })?;
            for (&i, v) in chunk.iter().zip(enc.vectors) {
                docs[i].doc.vectors = v;
            }
        }
    }
    if Instant::now() >= deadline {
        return Err(Status::deadline_exceeded(
            "deadline passed before the commit; nothing was added",
        ));
    }
    let added = docs.len() as u32;
    if added == 0 {
        return Ok(pb::AddDocumentsResponse {
            added,
            skipped_ids: skipped,
            generation: index.manifest().generation,
        });
    }
    // From here the commit runs to its end even if the client goes away.
    let delay = st.faults.commit_delay;
    let (generation, _) = ready
        .update("adding documents", move |dir| {
            std::thread::sleep(delay);
            tessera_index::append(dir, docs.into_iter().map(|d| d.doc))
        })
        .await?;
    Ok(pb::AddDocumentsResponse {
        added,
        skipped_ids: skipped,
        generation,
    })
}

async fn delete_documents(
    st: Arc<State>,
    req: pb::DeleteDocumentsRequest,
) -> Result<pb::DeleteDocumentsResponse, Status> {
    let ready = st.ready()?;
    st.check_ids(req.ids.len())?;
    let mut ids = req.ids;
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let n = ids.len();
    let (unknown, fresh) = ready
        .update("deleting documents", move |dir| {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            tessera_index::delete(dir, &refs)
        })
        .await?;
    let generation = fresh.manifest().generation;
    Ok(pb::DeleteDocumentsResponse {
        deleted: (n - unknown.len()) as u32,
        unknown_ids: unknown,
        generation,
    })
}

async fn compact(st: Arc<State>) -> Result<pb::CompactResponse, Status> {
    let ready = st.ready()?;
    let ((generation, before), fresh) = ready
        .update("compacting", |dir| {
            // Counted under the writer lock, like the compaction itself.
            let before = tessera_index::manifest::Manifest::load(dir)?.segments.len() as u32;
            Ok((tessera_index::compact(dir)?, before))
        })
        .await?;
    let after = fresh.segments().len() as u32;
    Ok(pb::CompactResponse {
        generation,
        segments_before: before,
        segments_after: after,
    })
}

fn index_info(st: Arc<State>) -> Result<pb::IndexInfoResponse, Status> {
    let ready = st.ready()?;
    let index = ready.snapshot();
    let m = index.manifest();
    let mi = &m.info["model"];
    let s = |k: &str| mi[k].as_str().unwrap_or_default().to_owned();
    let u = |k: &str| mi[k].as_u64().unwrap_or_default() as u32;
    let model = pb::ModelInfo {
        path: ready
            .model_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| s("path")),
        layout: s("layout"),
        head: s("head"),
        dim: u("dim"),
        query_maxlen: u("query_maxlen"),
        doc_maxlen: u("doc_maxlen"),
        precision: mi["precision"].as_str().unwrap_or("fp32").to_owned(),
        query_augmentation: mi["query_augmentation"].as_bool().unwrap_or(false),
    };
    let committed = std::fs::metadata(index.dir().join(tessera_index::manifest::MANIFEST))
        .and_then(|md| md.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    Ok(pb::IndexInfoResponse {
        path: ready.dir.display().to_string(),
        generation: m.generation,
        model: Some(model),
        codec: m.codec.to_string(),
        reduction: m
            .reduction
            .as_ref()
            .map(|r| format!("{} → {}", r.in_dim, r.out_dim))
            .unwrap_or_default(),
        dim: m.dim as u32,
        query_dim: index.query_dim() as u32,
        num_docs: m.live_docs(),
        num_tokens: m.tokens(),
        bytes_on_disk: crate::disk::dir_bytes(index.dir()),
        num_centroids: m.num_centroids as u32,
        segments: m
            .segments
            .iter()
            .map(|s| pb::SegmentInfo {
                name: s.name.clone(),
                docs: s.docs,
                deleted: s.deleted.len() as u32,
                tokens: s.tokens,
            })
            .collect(),
        committed_unix_s: committed,
        analyzer: m.analyzer.to_string(),
        metadata_fields: index.metadata_fields().to_vec(),
        build_info_json: m.info.to_string(),
        built_unix_s: m.info["built_unix_s"].as_i64().unwrap_or(0),
        build_seconds: m.info["index_seconds"].as_f64().unwrap_or(0.0),
    })
}

#[tonic::async_trait]
impl pb::tessera_server::Tessera for Service {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let q = &request.get_ref().queries;
        let info = CallInfo {
            queries: q.len(),
            k: q.iter().map(|q| q.k as usize).max().unwrap_or(0),
        };
        let (meta, _, req) = request.into_parts();
        self.call("Search", &meta, size, info, true, |st, deadline, start| {
            search(st, req, deadline, start)
        })
        .await
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let (meta, _, req) = request.into_parts();
        self.call(
            "GetDocuments",
            &meta,
            size,
            CallInfo::default(),
            true,
            |st, _, _| async move { get_documents(st, req) },
        )
        .await
    }

    async fn add_documents(
        &self,
        request: Request<Streaming<pb::AddDocumentsRequest>>,
    ) -> Result<Response<pb::AddDocumentsResponse>, Status> {
        let (meta, _, stream) = request.into_parts();
        self.call(
            "AddDocuments",
            &meta,
            0,
            CallInfo::default(),
            false,
            |st, deadline, _| add_documents(st, stream, deadline),
        )
        .await
    }

    async fn delete_documents(
        &self,
        request: Request<pb::DeleteDocumentsRequest>,
    ) -> Result<Response<pb::DeleteDocumentsResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let (meta, _, req) = request.into_parts();
        self.call(
            "DeleteDocuments",
            &meta,
            size,
            CallInfo::default(),
            false,
            |st, _, _| delete_documents(st, req),
        )
        .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let (meta, _, _) = request.into_parts();
        self.call(
            "Compact",
            &meta,
            0,
            CallInfo::default(),
            false,
            |st, _, _| compact(st),
        )
        .await
    }

    async fn index_info(
        &self,
        request: Request<pb::IndexInfoRequest>,
    ) -> Result<Response<pb::IndexInfoResponse>, Status> {
        let (meta, _, _) = request.into_parts();
        self.call(
            "IndexInfo",
            &meta,
            0,
            CallInfo::default(),
            true,
            |st, _, _| async move { index_info(st) },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_in_every_unit() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (v, d) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("900u", Duration::from_micros(900)),
            ("7n", Duration::from_nanos(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(client_timeout(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(client_timeout(&m), None);
        assert_eq!(client_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn packed_vectors_are_checked_for_length_count_and_values() {
        let ok = tessera_proto::pack_vectors(&[0.5, 0.5, 1.0, 0.0], 2);
        assert_eq!(unpack("q", &ok, 2).unwrap().len(), 2);
        let ragged = pb::TokenVectors {
            data: vec![0; 12],
            num_tokens: 1,
        };
        let e = unpack("q", &ragged, 2).unwrap_err();
        assert!(
            e.message().contains("not a multiple of 4 × dim = 8"),
            "{}",
            e.message()
        );
        let miscounted = tessera_proto::pack_vectors(&[0.5, 0.5, 1.0, 0.0], 3);
        assert!(unpack("q", &miscounted, 2)
            .unwrap_err()
            .message()
            .contains("num_tokens"));
        let nan = tessera_proto::pack_vectors(&[0.5, f32::NAN], 1);
        let e = unpack("q", &nan, 2).unwrap_err();
        assert!(e.message().contains("token 0, dim 1"), "{}", e.message());
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
