//! What the service shares across calls: its limits ([`Limits`]), the
//! faults tests inject ([`Faults`]), the loaded index and model
//! ([`Ready`]) and the shared [`State`] (admission, metrics, readiness,
//! draining).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tessera_index::{Index, IndexError, SearchParams};
use tonic::Status;

use crate::server::admission::Admission;
use crate::server::batcher::Batcher;
use crate::server::lanes::*;
use crate::server::metrics::{Gauges, Metrics};
use crate::server::status::*;

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
    /// Tokens of one pre-encoded query, at most.
    pub max_query_tokens: usize,
    /// Tokens of all pre-encoded queries of one Search call, at most.
    pub max_call_tokens: usize,
    /// Bytes of one added document's title and text together, at most.
    pub max_document_bytes: usize,
    /// Encoded size of one request message, at most (bytes).
    pub max_message_bytes: usize,
    /// Encoded size of all the documents of one AddDocuments call, at most
    /// (bytes): what the call holds in memory until it commits.
    pub max_add_bytes: usize,
    /// Encoded size of one response, at most (bytes): a Search asking for
    /// the texts of many hits, or a GetDocuments of many large documents,
    /// is refused once its answer passes it.
    pub max_response_bytes: usize,
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

/// What exists once the index and model are loaded.
pub struct Ready {
    pub dir: PathBuf,
    pub model_dir: Option<PathBuf>,
    pub(crate) index: RwLock<Arc<Index>>,
    pub batcher: Option<Batcher>,
    pub lanes: SearchLanes,
    /// Serialises updates (the index's file lock guards other processes).
    pub(crate) writer: tokio::sync::Mutex<()>,
    /// The manifest file as the current snapshot saw it.
    stamp: std::sync::Mutex<Option<ManifestStamp>>,
}

/// What tells one manifest file from the next: its modification time and
/// length (a writer replaces the file whole, by a rename).
type ManifestStamp = (std::time::SystemTime, u64);

fn manifest_stamp(dir: &std::path::Path) -> Option<ManifestStamp> {
    let m = std::fs::metadata(dir.join(tessera_index::manifest::MANIFEST)).ok()?;
    Some((m.modified().ok()?, m.len()))
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
            stamp: std::sync::Mutex::new(manifest_stamp(&dir)),
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

    /// Notices a change another writer (the CLI, a second server) committed
    /// since the current snapshot: one `stat` of the manifest per call; when
    /// the file changed, the index is reopened (off the async threads, with
    /// no update of ours in flight) and a newer generation published, so
    /// the call answers from what is on disk.
    pub(crate) async fn refresh(&self) -> Result<(), Status> {
        let seen = |s: &Self| s.stamp.lock().map(|g| *g).unwrap_or(None);
        let now = manifest_stamp(&self.dir);
        if now.is_none() || now == seen(self) {
            return Ok(());
        }
        let _w = self.writer.lock().await;
        let now = manifest_stamp(&self.dir);
        if now.is_none() || now == seen(self) {
            return Ok(());
        }
        let dir = self.dir.clone();
        let fresh =
            blocking(move || Index::open(&dir).map_err(|e| index_status(e, "reopening the index")))
                .await?;
        if fresh.manifest().generation > self.snapshot().manifest().generation {
            tracing::info!(
                generation = fresh.manifest().generation,
                "another writer changed the index; serving its new generation"
            );
            let fresh = Arc::new(fresh);
            match self.index.write() {
                Ok(mut g) => *g = fresh,
                Err(p) => *p.into_inner() = fresh,
            }
        }
        if let Ok(mut g) = self.stamp.lock() {
            *g = now;
        }
        Ok(())
    }

    /// Runs one change of the index (`change` gets its folder) off the
    /// async threads, one change at a time, then reopens the index and
    /// publishes the new snapshot: a search that starts after this returns
    /// sees the change. Once begun, the change runs to its end even if the
    /// caller goes away. Returns the change's result and the new snapshot.
    pub(crate) async fn update<T: Send + 'static>(
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
        if let Ok(mut g) = self.stamp.lock() {
            *g = manifest_stamp(&self.dir);
        }
        Ok((out, fresh))
    }
}

/// Shared by every call.
pub struct State {
    /// API keys every call but health must present (`None`: open).
    pub keys: Option<crate::server::auth::AccessKeys>,
    pub ready: OnceLock<Ready>,
    /// Why the index or the model could not be loaded (then health stays
    /// NOT_SERVING and every call is `UNAVAILABLE` with this reason).
    pub failed: OnceLock<String>,
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
        keys: Option<crate::server::auth::AccessKeys>,
    ) -> Self {
        Self {
            keys,
            ready: OnceLock::new(),
            failed: OnceLock::new(),
            draining: AtomicBool::new(false),
            admission,
            metrics,
            limits,
            faults,
        }
    }

    /// The loaded index and model; `UNAVAILABLE` while they load, or with
    /// the reason when they could not be loaded.
    pub fn ready(&self) -> Result<&Ready, Status> {
        self.ready.get().ok_or_else(|| match self.failed.get() {
            Some(why) => Status::unavailable(format!("the index cannot be served: {why}")),
            None => Status::unavailable("the index is still loading; retry shortly"),
        })
    }

    /// Refuses more ids in one call than `--max-ids` allows.
    pub(crate) fn check_ids(&self, n: usize) -> Result<(), Status> {
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
