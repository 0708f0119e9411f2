//! # tessera-proto
//!
//! The wire contract of Tessera's search service: the `tessera.v1` protobuf
//! package and the tonic/prost code generated from it. It holds no logic.
//! The service definition arrives with the serving milestone; until then this
//! crate is an empty leaf of the workspace so that its place in the
//! dependency graph (`proto` → `engine`) is fixed.
