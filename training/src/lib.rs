//! # tessera-training
//!
//! Training for Tessera's model (the [`tessera_model`] crate): the cache of
//! backbone states frozen-mode training reads ([`states`]), the head
//! trainer ([`train`]: batches, losses, AdamW, schedules, validation by
//! exact MaxSim, checkpoint selection, plots) and dimension reductions
//! ([`reduce`]: PCA, truncation and orthogonal Matryoshka rotations).
//!
//! It does not know about gRPC, indexes or datasets: the `engine` crate
//! composes it with those.

pub mod error;
pub mod reduce;
pub mod states;
pub mod train;

pub use error::{Result, TrainingError};
