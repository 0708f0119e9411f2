//! The one error type of the `index` crate.

use std::path::PathBuf;

/// Errors of the index crate. Errors about files name the file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A vector buffer whose length is not a multiple of its dimension.
    #[error("vector data of {len} floats is not a whole number of {dim}-dim vectors")]
    Ragged { len: usize, dim: usize },
    /// Two vector sets of different widths were combined.
    #[error("dimension mismatch: {left} vs {right}")]
    DimMismatch { left: usize, right: usize },
    /// A zero dimension.
    #[error("vector dimension must be at least 1")]
    ZeroDim,
    /// An I/O error on a file.
    // The I/O error is part of the message, not a `source()`, so that
    // `{:#}` chains (anyhow) do not print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file of the index is missing, truncated, foreign or inconsistent.
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// A checksum did not match the manifest.
    #[error("{}: checksum mismatch (manifest {expected:08x}, file {actual:08x})", path.display())]
    Checksum {
        path: PathBuf,
        expected: u32,
        actual: u32,
    },
    /// A document handed to the builder is unusable.
    #[error("document {id:?}: {message}")]
    InvalidDocument { id: String, message: String },
    /// Bad parameters (search, build or codec settings).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// Another writer holds the index.
    #[error("{}: {message}", path.display())]
    Locked { path: PathBuf, message: String },
    /// A search was stopped (its [`crate::Stop`]): past its deadline, or
    /// cancelled.
    #[error("{}", if *deadline { "search stopped: deadline passed" } else { "search stopped: cancelled" })]
    Stopped { deadline: bool },
}

/// Result alias for this crate.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;

impl IndexError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            message: message.into(),
        }
    }
}
