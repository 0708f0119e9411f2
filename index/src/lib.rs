//! # tessera-index
//!
//! The retrieval side of Tessera, free of any torch dependency: token vectors
//! in, ranked documents out.
//!
//! * [`builder`]: stream documents into a new index with bounded memory
//!   (spill, k-means, encode, atomic commit).
//! * [`index`]: open a validated, memory-mapped snapshot; [`index::Index::verify`]
//!   recomputes checksums.
//! * [`search`]: exhaustive, PLAID-style and HNSW candidate generation with
//!   exact MaxSim re-ranking on `rayon`; metadata [`filter`]s; [`stop`]
//!   (deadlines and cancellation).
//! * [`writer`]: append, delete (tombstones), compact — each an atomic
//!   manifest swap.
//! * [`codec`]: f32, f16, int8 and PLAID residual codecs; [`kmeans`];
//!   [`projection`] (a reduction applied before coding); [`maxsim`](mod@maxsim) kernels.
//! * [`text`]: the per-segment tantivy index (stored fields, BM25);
//!   [`search::rrf`] fuses rankings.
//! * [`manifest`], [`segment`], [`io`]: the on-disk format (`index/FORMAT.md`).

pub mod builder;
mod chunk;
pub mod codec;
pub mod document;
pub mod error;
pub mod filter;
pub mod hnsw;
pub mod index;
pub mod io;
pub mod kmeans;
pub mod linalg;
pub mod lock;
pub mod manifest;
pub mod maxsim;
pub mod projection;
pub mod search;
pub mod segment;
pub mod stop;
pub mod synthetic;
pub mod text;
pub mod vectors;
pub mod writer;

/// Version of the build recipe (k-means sampling and assignment, codec
/// training, text analysis defaults): caches of built indexes key on it, so
/// a change in how an index is built invalidates them.
pub const BUILD_RECIPE: u32 = 4;

pub use builder::{BuildOptions, BuildStats, IndexBuilder, Phase, Progress, Trained};
pub use codec::CodecKind;
pub use document::{check_id, Document};
pub use error::{IndexError, Result};
pub use filter::Filter;
pub use index::{Index, StoredDoc, VerifyReport};
pub use maxsim::maxsim;
pub use projection::Projection;
pub use search::{recall_at, Candidates, Fusion, Hit, SearchParams, SearchStats};
pub use stop::Stop;
pub use text::Analyzer;
pub use vectors::TokenVectors;
pub use writer::{append, compact, delete};
