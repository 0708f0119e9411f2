//! The one error type of the `eval` crate.

use std::path::PathBuf;

/// Errors of the eval crate; each names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An I/O error on a file.
    // The I/O error is part of the message, not a `source()`, so that
    // `{:#}` chains (anyhow) do not print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A malformed line.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A measure name that is not understood.
    #[error("unknown measure {0:?} (nDCG@k, Recall@k, MAP@k, MRR@k, P@k)")]
    UnknownMeasure(String),
    /// Inputs that cannot be evaluated together.
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error: source,
        }
    }

    pub(crate) fn parse(path: &std::path::Path, line: usize, message: impl Into<String>) -> Self {
        Self::Parse {
            path: path.to_owned(),
            line,
            message: message.into(),
        }
    }
}

/// Result with [`EvalError`].
pub type Result<T> = std::result::Result<T, EvalError>;
