//! # tessera-model
//!
//! Tessera's model on libtorch (through `tch`): everything that turns text
//! into ColBERT token vectors — all that indexing, search and serving need,
//! none of the training.
//!
//! * [`config`]: the BERT `config.json` and per-model ColBERT settings.
//! * [`weights`]: reading checkpoint tensors (safetensors, PyTorch zip).
//! * [`bert`]: the BERT backbone, Hugging Face-compatible by construction.
//! * [`heads`]: projection heads (identity, linear, FFN, GLU, any with a
//!   residual path): spec, build, load and save, and how a fresh one starts.
//! * [`checkpoint`]: recognising and loading Hugging Face, Stanford ColBERT,
//!   PyLate and Tessera model directories.
//! * [`tokenize`]: ColBERT tokenisation (markers by id, `[MASK]` augmentation).
//! * [`encoder`]: the batched encoder used by indexing and search.
//! * [`device`] and [`precision`]: where and in what precision it runs.
//! * [`builtin`]: the default model (a committed head over the installed
//!   backbone); [`export`]: the PyLate layout.
//!
//! Errors are one type, [`ModelError`]. The `training` crate trains the
//! pieces; the `engine` crate composes the model with indexes and gRPC.

pub mod bert;
pub mod builtin;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod encoder;
pub mod error;
pub mod export;
pub mod heads;
pub mod precision;
pub mod reduction;
pub mod tokenize;
pub mod weights;

pub use checkpoint::{CheckpointLayout, ColbertModel};
pub use config::{BertConfig, ColbertSettings};
pub use device::DeviceChoice;
pub use encoder::{EncodeOutput, EncodedText, Encoder, EncoderOptions};
pub use error::{ModelError, Result};
pub use heads::{HeadKind, ProjectionHead};
pub use precision::{Precision, PrecisionChoice};
pub use tokenize::TextKind;

/// The libtorch binding this crate is built on, for callers that need it.
pub use tch;

/// Tessera's data folder: `$TESSERA_HOME`, else `$XDG_DATA_HOME/tessera`
/// (`~/.local/share/tessera`).
pub fn tessera_home() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("TESSERA_HOME").or_else(|| {
        env("XDG_DATA_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".local/share")))
            .map(|d| d.join("tessera"))
    })
}

/// Where `scripts/setup` installs the backbone (all-MiniLM-L6-v2, the raw
/// model): `$TESSERA_MODEL` if set, else `$TESSERA_HOME/models/default`
/// (see [`tessera_home`]). The engine's default model is the trained head
/// of [`builtin`] over it.
pub fn default_model_dir() -> Option<std::path::PathBuf> {
    if let Some(m) = std::env::var_os("TESSERA_MODEL").filter(|v| !v.is_empty()) {
        return Some(m.into());
    }
    Some(tessera_home()?.join("models/default"))
}
