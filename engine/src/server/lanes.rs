//! The search pools ("lanes") calls run on, and running work off the
//! async threads with panics turned into `INTERNAL`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tonic::Status;

use crate::server::panic::panic_message;

/// The search pools ("lanes"). One call's queries run on one lane at a
/// time, using all its threads; calls wait for a free lane in arrival
/// order. Several searches sharing one rayon pool would interleave: a
/// thread waiting inside one search's parallel loop picks up another
/// search, so the first finishes only after the second (last in, first
/// out), which is what made the tail latency explode under load.
pub struct SearchLanes {
    pub(crate) free: std::sync::Mutex<Vec<Arc<rayon::ThreadPool>>>,
    /// With adaptive lanes: a pool of all the search threads, taken by a
    /// call that finds no other search running (a lone query gets every
    /// thread; under load queries run one per thread, which wastes less
    /// on parallel overhead).
    pub(crate) wide: Option<Arc<rayon::ThreadPool>>,
    /// Searches running now.
    pub(crate) running: std::sync::atomic::AtomicUsize,
    pub(crate) gate: tokio::sync::Semaphore,
    /// Calls with their queries encoded, waiting for a lane.
    pub(crate) backlog: Arc<std::sync::atomic::AtomicUsize>,
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
    pub(crate) async fn run<T: Send + 'static>(
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
pub(crate) struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
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
pub(crate) struct Lane<'a> {
    pub(crate) lanes: &'a SearchLanes,
    pub(crate) pool: Option<Arc<rayon::ThreadPool>>,
    /// A one-lane pool (back to the free list), not the wide one.
    pub(crate) narrow: bool,
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

/// Runs `f` on the search pool; a panic in it becomes `INTERNAL`.
pub(crate) async fn on_pool<T: Send + 'static>(
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
pub(crate) async fn blocking<T: Send + 'static>(
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
