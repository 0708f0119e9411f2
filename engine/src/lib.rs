//! Tessera's engine as a library: everything the `tessera` binary does,
//! callable from another program (a test, a Ray worker, a service of your
//! own) without going through the command line.
//!
//! - [`model`]: which model encodes ([`model::ModelOptions`]), the default
//!   model, the one that built an index.
//! - [`retrieve`]: an [`Engine`] (index + encoder) and the one retriever
//!   dispatch ([`retrieve::rank`]) over ColBERT, BM25 and hybrid.
//! - [`ingest`]: dump readers' options, resumable encoding, index builds
//!   from a dump or from vectors; [`corpus`] reads the dumps, [`embeddings`]
//!   is the on-disk vectors folder, [`reduction`] the dimension reductions
//!   applied at build and search time.
//! - [`cache`]: the dataset encodings and indexes `eval` and the trainers
//!   share; [`bm25`]: text-only indexes for runs that rank by BM25 alone.
//! - [`evaluate`]: BEIR evaluation and its reports; [`fit`]: training
//!   heads and reductions, and the budget planner.
//! - [`server`]: the gRPC service; [`shard`]: document-partitioned shard
//!   sets (routing, the shard-set manifest, the exact merge).
//!
//! Errors are one type, [`EngineError`]; long jobs draw progress bars on
//! stderr ([`progress`]).
//!
//! ```no_run
//! use tessera_engine::model::ModelOptions;
//! use tessera_engine::retrieve::{Engine, Retriever};
//!
//! # fn main() -> tessera_engine::Result<()> {
//! let engine = Engine::open("my.idx".as_ref(), &ModelOptions::default(), Retriever::Hybrid)?;
//! let queries = engine.encode_queries(&["what causes tides?"])?;
//! let params = tessera_index::SearchParams { k: 10, ..Default::default() };
//! for hit in engine.rank(Retriever::Hybrid, "what causes tides?", queries.first(), &params)? {
//!     println!("{}\t{:.3}", hit.id, hit.score);
//! }
//! # Ok(())
//! # }
//! ```

pub mod bm25;
pub mod cache;
pub mod corpus;
pub mod disk;
pub mod embeddings;
pub mod error;
pub mod evaluate;
pub mod fit;
pub mod ingest;
pub mod input;
pub mod model;
pub mod progress;
pub mod reduction;
pub mod retrieve;
pub mod server;
pub mod shard;

pub use error::{EngineError, Result};
pub use retrieve::{Engine, Retriever};
