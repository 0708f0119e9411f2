//! Exact late-interaction scoring.
//!
//! `MaxSim(q, d) = Σ_i max_j ⟨q_i, d_j⟩`: for each query token its best dot
//! product over the document's tokens, summed. The kernel
//! ([`crate::linalg::maxsim_rows`]: AVX-512 when the CPU has it, AVX2 + FMA
//! otherwise) reads each document token once, dots it with the query tokens
//! in register blocks and keeps running row maxima; callers keep a
//! [`Scratch`] per thread so the hot loop allocates nothing.

use crate::error::IndexError;
use crate::linalg::maxsim_rows;
use crate::vectors::TokenVectors;

/// Reusable buffers for [`maxsim_block`].
#[derive(Debug, Default)]
pub struct Scratch {
    scores: Vec<f32>,
    /// Decoded document vectors (used by callers that decode codecs).
    pub doc: Vec<f32>,
    /// Per decoded token, the factor its dot products are scaled by.
    pub scale: Vec<f32>,
    /// Running per-query-token maxima.
    pub best: Vec<f32>,
}

/// MaxSim of `query` (`nq × dim`) against `doc` (`nd × dim`), row-major.
/// An empty document scores 0.
///
/// One [`maxsim_rows`] step over the whole document with unit scales; the
/// running maxima and the scales live in `scratch`. For these skinny
/// products (tens of query tokens, a few hundred document tokens) the
/// register-blocked kernel beats an SGEMM, which would first copy both
/// operands.
pub fn maxsim_block(query: &[f32], doc: &[f32], dim: usize, scratch: &mut Vec<f32>) -> f32 {
    let nq = query.len() / dim;
    let nd = doc.len() / dim;
    if nd == 0 || nq == 0 {
        return 0.0;
    }
    scratch.clear();
    scratch.resize(nq, f32::NEG_INFINITY);
    scratch.resize(nq + nd, 1.0);
    let (best, ones) = scratch.split_at_mut(nq);
    maxsim_rows(query, doc, dim, ones, best);
    best.iter().sum()
}

impl Scratch {
    /// MaxSim of `query` against `doc` using this scratch space.
    pub fn score(&mut self, query: &[f32], doc: &[f32], dim: usize) -> f32 {
        maxsim_block(query, doc, dim, &mut self.scores)
    }
}

/// MaxSim of `query` against `doc`. An empty document scores 0.
pub fn maxsim(query: &TokenVectors, doc: &TokenVectors) -> Result<f32, IndexError> {
    if query.dim() != doc.dim() {
        return Err(IndexError::DimMismatch {
            left: query.dim(),
            right: doc.dim(),
        });
    }
    let mut scratch = Vec::new();
    Ok(maxsim_block(
        query.as_slice(),
        doc.as_slice(),
        query.dim(),
        &mut scratch,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::dot;

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

    #[test]
    fn block_kernel_matches_naive_loops() {
        let dim = 33;
        let q: Vec<f32> = (0..5 * dim).map(|i| (i as f32 * 0.3).sin()).collect();
        let d: Vec<f32> = (0..17 * dim).map(|i| (i as f32 * 0.7).cos()).collect();
        let naive: f32 = q
            .chunks(dim)
            .map(|qi| {
                d.chunks(dim)
                    .map(|dj| dot(qi, dj))
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .sum();
        let mut s = Scratch::default();
        assert!((s.score(&q, &d, dim) - naive).abs() < 1e-4);
    }
}
