//! Paths of the fixtures, shared by the training crate's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

/// `training/tests/fixtures`. The package folder is the one `cargo test`
/// gives at run time (the compile-time path is a fallback): a test binary
/// reused from another checkout that shares the target folder must read
/// this checkout's files.
pub fn fixtures() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fixtures")
}

/// The committed tiny random BERT.
pub fn tiny() -> PathBuf {
    fixtures().join("tiny-bert")
}
