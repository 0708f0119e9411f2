//! The error type of the `training` crate: the model's ([`ModelError`]).
//! Training fails for the reasons loading and running a model does — a
//! file, a config, a tensor, the input, the device, libtorch — so the two
//! crates share one error type rather than wrap one in another.

pub use tessera_model::error::{ModelError, ModelError as TrainingError, Result};
