//! The one error type of the `model` crate (the `training` crate uses it
//! too).

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Every variant that comes from a file names that file, so a user reading the
/// message knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read at all.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A required file of a model directory is absent.
    #[error("{}: missing ({what})", path.display())]
    MissingFile { path: PathBuf, what: &'static str },
    /// A JSON file parsed but one of its fields is missing or wrong.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// A weight file lacks a tensor the model needs.
    #[error("{}: missing tensor {name}", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A weight tensor exists but has the wrong shape for the config.
    #[error("{}: tensor {name} has shape {actual:?}, expected {expected:?}", path.display())]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    /// A weight file could not be decoded.
    #[error("{}: cannot read weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    /// tokenizer.json could not be loaded or used.
    #[error("{}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// Input text that the encoder cannot accept.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The requested device is not usable in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    #[doc(hidden)]
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    #[doc(hidden)]
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
