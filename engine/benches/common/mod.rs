//! What the server benchmarks share: reading a process's memory from
//! /proc and sampling its peak while a load runs.
#![allow(dead_code)] // each bench uses its own subset

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A `/proc/PID/status` memory field (`VmRSS:`, `VmHWM:`) in MiB; NaN when
/// it cannot be read.
pub fn rss_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Samples a process's RSS on a thread every `every` until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid, "VmRSS:"));
                std::thread::sleep(every);
            }
            peak
        });
        Self { stop, thread }
    }

    /// Stops sampling; the highest RSS seen, MiB.
    pub fn peak(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(f64::NAN)
    }
}
