//! Stopping a search that nobody waits for any more: a [`Stop`] carries a
//! deadline and a flag the caller can raise (a client that went away).
//! Searches check it between blocks of work — after the centroid pass,
//! per segment of candidate generation, before each document scored
//! exactly, per segment of BM25 — so a stopped search ends within one
//! block, not at its natural end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{IndexError, Result};

/// When a search must give up. The default never stops.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    deadline: Option<Instant>,
    cancelled: AtomicBool,
}

impl Stop {
    /// Never stops.
    pub fn never() -> Self {
        Self::default()
    }

    /// Stops at `deadline` (if any) or when [`Stop::cancel`] is called on
    /// this value or a clone of it.
    pub fn new(deadline: Option<Instant>) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                deadline,
                cancelled: AtomicBool::new(false),
            })),
        }
    }

    /// Stops every search holding this value (or a clone).
    pub fn cancel(&self) {
        if let Some(i) = &self.inner {
            i.cancelled.store(true, Ordering::Release);
        }
    }

    /// `Err(IndexError::Stopped)` once cancelled or past the deadline.
    pub fn check(&self) -> Result<()> {
        let Some(i) = &self.inner else { return Ok(()) };
        if i.cancelled.load(Ordering::Acquire) {
            return Err(IndexError::Stopped { deadline: false });
        }
        if i.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(IndexError::Stopped { deadline: true });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_on_cancel_or_deadline() {
        assert!(Stop::never().check().is_ok());
        let s = Stop::new(None);
        let c = s.clone();
        assert!(s.check().is_ok());
        c.cancel();
        assert!(matches!(
            s.check(),
            Err(IndexError::Stopped { deadline: false })
        ));
        let past = Stop::new(Some(Instant::now()));
        assert!(matches!(
            past.check(),
            Err(IndexError::Stopped { deadline: true })
        ));
    }
}
