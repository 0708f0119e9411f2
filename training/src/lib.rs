//! # tessera-training
//!
//! Tessera's model on libtorch (through `tch`) and its training: everything
//! that turns text into ColBERT token vectors, and the trainers that shape
//! them.
//!
//! The model: [`config`] (BERT `config.json`, ColBERT settings), [`weights`]
//! (safetensors, PyTorch zip), [`bert`] (the backbone, Hugging
//! Face-compatible by construction), [`heads`] (identity, linear, FFN, GLU,
//! any with a residual path), [`checkpoint`] (Hugging Face, Stanford
//! ColBERT, PyLate and Tessera model folders), [`tokenize`] (ColBERT
//! markers, `[MASK]` augmentation), [`encoder`] (the batched encoder of
//! indexing and search), [`device`], [`precision`] (fp32, bf16),
//! [`builtin`] (the default model) and [`export`] (the PyLate layout).
//!
//! Training: [`states`] (the cache of backbone states frozen-mode training
//! reads), [`train`] (batches, losses, AdamW, schedules, validation by
//! exact MaxSim, checkpoint selection, plots) and [`reduce`] (PCA and
//! orthogonal Matryoshka reductions).
//!
//! It does not know about gRPC, indexes or datasets: the `engine` crate
//! composes it with those.

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
pub mod reduce;
pub mod states;
pub mod tokenize;
pub mod train;
pub mod weights;

pub use checkpoint::{CheckpointLayout, ColbertModel};
pub use config::{BertConfig, ColbertSettings};
pub use device::DeviceChoice;
pub use encoder::{EncodeOutput, EncodedText, Encoder, EncoderOptions};
pub use error::{Result, TrainingError};
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
