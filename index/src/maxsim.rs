//! Exact late-interaction scoring.
//!
//! `MaxSim(q, d) = Σ_i max_j ⟨q_i, d_j⟩`: for each query token its best dot
//! product over the document's tokens, summed. This is the reference scorer;
//! the blocked, SIMD-friendly kernel for the index comes with it.

use crate::error::IndexError;
use crate::vectors::TokenVectors;

/// MaxSim of `query` against `doc`. An empty document scores 0.
pub fn maxsim(query: &TokenVectors, doc: &TokenVectors) -> Result<f32, IndexError> {
    if query.dim() != doc.dim() {
        return Err(IndexError::DimMismatch {
            left: query.dim(),
            right: doc.dim(),
        });
    }
    if doc.is_empty() {
        return Ok(0.0);
    }
    Ok(query
        .rows()
        .map(|q| {
            doc.rows()
                .map(|d| dot(q, d))
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum())
}

/// Dot product of two equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_best_matches() {
        let q = TokenVectors::new(2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let d = TokenVectors::new(2, vec![0.5, 0.5, 0.9, 0.1, -1.0, 0.8]).unwrap();
        // token 0: max(0.5, 0.9, -1.0) = 0.9; token 1: max(0.5, 0.1, 0.8) = 0.8
        assert!((maxsim(&q, &d).unwrap() - 1.7).abs() < 1e-6);
        let empty = TokenVectors::new(2, vec![]).unwrap();
        assert_eq!(maxsim(&q, &empty).unwrap(), 0.0);
        let other = TokenVectors::new(3, vec![0.0; 3]).unwrap();
        assert!(maxsim(&q, &other).is_err());
    }
}
