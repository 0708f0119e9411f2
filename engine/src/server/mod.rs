//! The gRPC search service behind `tessera serve`: [`service`] (the
//! `tessera.v1.Tessera` handlers), [`batcher`] (the encoder thread and its
//! micro-batching), [`admission`] (in-flight and queue bounds) and
//! [`metrics`] (Prometheus text on `--metrics-addr`).

pub mod admission;
pub mod batcher;
pub mod metrics;
pub mod service;
