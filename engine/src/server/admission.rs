//! Admission control: at most `max_in_flight` calls run, at most
//! `max_queue` wait; past that a call is refused at once with
//! `RESOURCE_EXHAUSTED` and a retry hint, so overload shows up as fast
//! refusals instead of unbounded latency. (A concurrency limit alone queues
//! without bound.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::Status;

/// Metadata key of the retry hint on `RESOURCE_EXHAUSTED`, milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The in-flight and queue bounds.
#[derive(Debug)]
pub struct Admission {
    slots: Semaphore,
    max_in_flight: usize,
    max_queue: usize,
    waiting: AtomicUsize,
    /// Mean latency of admitted calls, µs (exponentially weighted), for the
    /// retry hint.
    mean_us: AtomicU64,
}

/// A running call's slot; released on drop.
#[derive(Debug)]
pub struct Ticket<'a> {
    _permit: SemaphorePermit<'a>,
    admission: &'a Admission,
    since: Instant,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let us = self.since.elapsed().as_micros().min(u64::MAX as u128) as u64;
        let old = self.admission.mean_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.admission.mean_us.store(new, Ordering::Relaxed);
    }
}

/// A place in the queue, left when dropped.
struct Queued<'a> {
    waiting: &'a AtomicUsize,
    /// Calls that were queued before this one.
    ahead: usize,
}

impl<'a> Queued<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        let ahead = waiting.fetch_add(1, Ordering::AcqRel);
        Self { waiting, ahead }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_in_flight: usize, max_queue: usize) -> Self {
        Self {
            slots: Semaphore::new(max_in_flight),
            max_in_flight,
            max_queue,
            waiting: AtomicUsize::new(0),
            mean_us: AtomicU64::new(0),
        }
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.slots.available_permits()
    }

    /// Calls waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot now, or after waiting in the queue until `deadline`; refused
    /// at once when the queue is full.
    pub async fn enter(&self, deadline: Instant) -> Result<Ticket<'_>, Status> {
        let since = Instant::now();
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(self.ticket(permit, since));
        }
        // Counted in the queue until this scope ends, also when the call
        // is dropped while it waits (client gone, transport timeout).
        let queued = Queued::new(&self.waiting);
        if queued.ahead >= self.max_queue {
            return Err(self.refusal());
        }
        let acquired = tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await;
        drop(queued);
        match acquired {
            Ok(Ok(permit)) => Ok(self.ticket(permit, since)),
            Ok(Err(_)) => Err(Status::unavailable("the server is shutting down")),
            Err(_) => Err(Status::deadline_exceeded(
                "deadline passed while waiting for a free slot",
            )),
        }
    }

    fn ticket<'a>(&'a self, permit: SemaphorePermit<'a>, since: Instant) -> Ticket<'a> {
        Ticket {
            _permit: permit,
            admission: self,
            since,
        }
    }

    /// Suggested wait before a retry: the queue ahead drained at the
    /// recent mean latency per slot (at least 1 ms).
    pub fn retry_after(&self) -> Duration {
        let mean = self.mean_us.load(Ordering::Relaxed).max(1_000);
        let rounds = 1 + (self.max_queue / self.max_in_flight.max(1)) as u64;
        Duration::from_micros(mean * rounds)
    }

    fn refusal(&self) -> Status {
        let hint = self.retry_after().as_millis().max(1);
        let mut s = Status::resource_exhausted(format!(
            "server overloaded: {} calls in flight and {} queued (the limits); retry in about {hint} ms",
            self.max_in_flight, self.max_queue
        ));
        if let Ok(v) = hint.to_string().parse() {
            s.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_in_flight_and_queue_calls_are_refused_with_a_hint() {
        let a = std::sync::Arc::new(Admission::new(1, 1));
        let far = Instant::now() + Duration::from_secs(10);
        let first = a.enter(far).await.unwrap();
        assert_eq!(a.in_flight(), 1);
        // The second waits in the queue...
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.enter(far).await.map(|_| ()) });
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // ...the third is refused at once.
        let refused = a.enter(far).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let hint: u64 = refused
            .metadata()
            .get(RETRY_AFTER_MS)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(hint >= 1);
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!((a.in_flight(), a.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_queued_call_gives_up_at_its_deadline() {
        let a = Admission::new(1, 4);
        let _held = a
            .enter(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        let e = a
            .enter(Instant::now() + Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_call_dropped_while_queued_leaves_the_queue() {
        let a = Admission::new(1, 1);
        let _held = a
            .enter(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        {
            let waiting = a.enter(Instant::now() + Duration::from_secs(10));
            tokio::pin!(waiting);
            // Poll once: it queues; then drop it (a client that went away).
            assert!(futures_util::poll!(waiting.as_mut()).is_pending());
            assert_eq!(a.queued(), 1);
        }
        assert_eq!(a.queued(), 0);
        // The queue is usable again.
        let e = a
            .enter(Instant::now() + Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
    }
}
