//! The one error type of the engine library.
//!
//! Errors of the crates below ([`tessera_index`], [`tessera_model`] — whose
//! error type `tessera_training` shares — and [`tessera_eval`]) pass
//! through unchanged; errors the engine finds itself
//! are [`EngineError::Invalid`] (bad input or state, the message names the
//! file, line or field); [`Context`] adds what was being done, as a cause
//! chain: `{:#}` through `anyhow` or [`EngineError::chain`] prints
//! "what was done: why it failed".

use std::fmt::Display;

/// Errors of the engine library.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An index could not be opened, built, searched or changed.
    #[error(transparent)]
    Index(#[from] tessera_index::IndexError),
    /// The model could not be loaded, run or trained (the training crate
    /// shares the model's error type).
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// A dataset, run or judgement file could not be read.
    #[error(transparent)]
    Eval(#[from] tessera_eval::EvalError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] tessera_model::tch::TchError),
    /// An I/O error (the [`Context`] around it names the file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON that could not be read or written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The gRPC transport failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The gRPC reflection service could not be built.
    #[error(transparent)]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A thread pool could not be started.
    #[error(transparent)]
    Threads(#[from] rayon::ThreadPoolBuildError),
    /// Bad input or state; the message says which file, line or field.
    #[error("{0}")]
    Invalid(String),
    /// `source`, while doing what `context` says.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<EngineError>,
    },
}

/// Result alias of the engine library.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// An [`EngineError::Invalid`] with this message.
    pub fn msg(m: impl Display) -> Self {
        Self::Invalid(m.to_string())
    }

    /// The message and its causes, joined by ": " (what `{:#}` of an
    /// `anyhow::Error` prints).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }

    /// Whether this error, or one of its causes, is an I/O error of `kind`.
    pub fn is_io(&self, kind: std::io::ErrorKind) -> bool {
        let mut cur: Option<&dyn std::error::Error> = Some(self);
        while let Some(e) = cur {
            // A transparent variant forwards `source()` past the error it
            // holds: look inside the engine's own variants too.
            let io = e
                .downcast_ref::<std::io::Error>()
                .or(match e.downcast_ref::<Self>() {
                    Some(Self::Io(io)) => Some(io),
                    _ => None,
                });
            if io.is_some_and(|io| io.kind() == kind) {
                return true;
            }
            cur = match e.downcast_ref::<Self>() {
                Some(Self::Context { source, .. }) => Some(source.as_ref()),
                _ => e.source(),
            };
        }
        false
    }
}

/// Adds what was being done to an error (`anyhow::Context`, for the
/// engine's own error type).
pub trait Context<T> {
    /// Wraps the error in `context`.
    fn context(self, context: impl Display) -> Result<T>;
    /// Wraps the error in the context `f` makes (only on error).
    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<EngineError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| EngineError::Context {
            context: context.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| EngineError::Context {
            context: f().to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.ok_or_else(|| EngineError::msg(context))
    }

    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| EngineError::msg(f()))
    }
}

/// Returns an [`EngineError::Invalid`] made with `format!`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::error::EngineError::msg(format!($($t)*)))
    };
}

/// [`bail!`] unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => {
        if !$cond {
            $crate::error::bail!($($t)*);
        }
    };
}

/// An [`EngineError::Invalid`] made with `format!`.
macro_rules! err {
    ($($t:tt)*) => {
        $crate::error::EngineError::msg(format!($($t)*))
    };
}

pub(crate) use {bail, ensure, err};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chains_print_like_anyhow() {
        let e: Result<()> = Err(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"))
            .context("reading a.jsonl")
            .context("building my.idx");
        let e = e.unwrap_err();
        assert_eq!(e.to_string(), "building my.idx");
        assert_eq!(e.chain(), "building my.idx: reading a.jsonl: gone");
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e)),
            "building my.idx: reading a.jsonl: gone"
        );
    }

    #[test]
    fn io_kinds_are_found_through_the_chain() {
        let e: Result<()> = Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("x");
        let e = e.unwrap_err();
        assert!(e.is_io(std::io::ErrorKind::BrokenPipe));
        assert!(!e.is_io(std::io::ErrorKind::NotFound));
    }
}
