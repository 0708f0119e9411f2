//! The gRPC search service behind `tessera serve`, laid out by concern:
//! [`run`] (binding, loading, draining: [`serve`]); [`auth`] (API keys and
//! their roles); [`service`] (the thin
//! `tessera.v1.Tessera` impl and the frame of every call: deadline,
//! admission, metrics, log line); [`handlers`] (search, documents, admin);
//! [`validate`] (requests → plans, field-named `INVALID_ARGUMENT`);
//! [`convert`] (library types → protobuf); [`status`] (the one mapping from
//! errors to gRPC statuses); [`state`] (limits, readiness, shared state);
//! [`lanes`] (the search pools); [`panic`](mod@panic) (a caught panic's text); [`batcher`] (the encoder thread and its
//! micro-batching); [`admission`] (in-flight and queue bounds); [`receiving`] (a bound on
//! calls read at once); [`metrics`]
//! (Prometheus text on `--metrics-addr`); [`tls`] (certificates, and who
//! may listen where).

pub mod admission;
pub mod auth;
pub mod batcher;
pub mod convert;
pub mod handlers;
pub mod lanes;
pub mod metrics;
pub mod panic;
pub mod receiving;
pub mod run;
pub mod service;
pub mod state;
pub mod status;
pub mod tls;
pub mod validate;

pub use auth::AccessKeys;
pub use batcher::BatchConfig;
pub use run::{serve, Listening, ServeOptions};
pub use state::Limits;
pub use tls::TlsFiles;
