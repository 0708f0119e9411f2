//! The gRPC search service behind `tessera serve`: [`run`] (binding,
//! loading, draining: [`serve`]), [`service`] (the `tessera.v1.Tessera`
//! handlers), [`batcher`] (the encoder thread and its micro-batching),
//! [`admission`] (in-flight and queue bounds) and [`metrics`] (Prometheus
//! text on `--metrics-addr`).

pub mod admission;
pub mod batcher;
pub mod metrics;
pub mod run;
pub mod service;

pub use batcher::BatchConfig;
pub use run::{serve, Listening, ServeOptions};
pub use service::Limits;
