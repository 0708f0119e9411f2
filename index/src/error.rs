//! The one error type of the `index` crate.

/// Errors of the index crate.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A vector buffer whose length is not a multiple of its dimension.
    #[error("vector data of {len} floats is not a whole number of {dim}-dim vectors")]
    Ragged { len: usize, dim: usize },
    /// Two vector sets of different widths were combined.
    #[error("dimension mismatch: {left} vs {right}")]
    DimMismatch { left: usize, right: usize },
    /// A zero dimension.
    #[error("vector dimension must be at least 1")]
    ZeroDim,
}
