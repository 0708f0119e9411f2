//! # tessera-index
//!
//! The retrieval side of Tessera, free of any torch dependency: it takes
//! token vectors in and gives ranked documents out.
//!
//! Today it holds the vocabulary every other crate shares — [`TokenVectors`],
//! a bag of equal-width vectors — and the exact late-interaction score,
//! [`maxsim::maxsim`]. The on-disk index (manifest, codecs, k-means
//! centroids, IVF/HNSW candidates, tantivy text store) grows here next; see
//! `docs/` and `../shared/DESIGN.md` for the plan.

pub mod error;
pub mod maxsim;
pub mod vectors;

pub use error::IndexError;
pub use maxsim::maxsim;
pub use vectors::TokenVectors;
