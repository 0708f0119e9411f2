//! The projection an index applies before coding: `y = R · (x − mean)`,
//! renormalised to unit length. A *reduction* (a nested set of output
//! sizes, trained or fitted: `tessera_training::reduce::Reduction`) gives
//! one projection per size; the index only applies the one it was built
//! with and records it, so queries are projected the same way — with the
//! same mean, or with a mean of their own where the reduction centres
//! queries and documents differently.

use crate::error::{IndexError, Result};
use crate::linalg::{gemm_abt, normalise};

/// An `out_dim × in_dim` projection and the mean subtracted first.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub in_dim: usize,
    pub out_dim: usize,
    /// Row-major `out_dim × in_dim`.
    pub matrix: Vec<f32>,
    /// `in_dim` values subtracted from document vectors (and from query
    /// vectors unless `query_mean` is given).
    pub mean: Vec<f32>,
    /// `in_dim` values subtracted from query vectors instead of `mean`.
    pub query_mean: Option<Vec<f32>>,
}

impl Projection {
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        matrix: Vec<f32>,
        mean: Option<Vec<f32>>,
    ) -> Result<Self> {
        let r = Self {
            mean: mean.unwrap_or_else(|| vec![0.0; in_dim]),
            in_dim,
            out_dim,
            matrix,
            query_mean: None,
        };
        r.check()?;
        Ok(r)
    }

    /// The same reduction with queries centred on `query_mean`.
    pub fn with_query_mean(mut self, query_mean: Vec<f32>) -> Result<Self> {
        self.query_mean = Some(query_mean);
        self.check()?;
        Ok(self)
    }

    /// Checks shapes and values: an `out_dim × in_dim` matrix, `in_dim`
    /// means (and query means), all finite.
    pub fn check(&self) -> Result<()> {
        let (in_dim, out_dim) = (self.in_dim, self.out_dim);
        let (matrix, mean) = (&self.matrix, &self.mean);
        if in_dim == 0 || out_dim == 0 || matrix.len() != in_dim * out_dim || mean.len() != in_dim {
            return Err(IndexError::InvalidParameter(format!(
                "reduction {in_dim}→{out_dim} needs a {out_dim}×{in_dim} matrix ({} floats given) and {in_dim} means ({} given)",
                matrix.len(),
                mean.len()
            )));
        }
        if matrix.iter().chain(mean).any(|x| !x.is_finite()) {
            return Err(IndexError::InvalidParameter(
                "reduction has non-finite values".into(),
            ));
        }
        if let Some(q) = &self.query_mean {
            if q.len() != in_dim || q.iter().any(|x| !x.is_finite()) {
                return Err(IndexError::InvalidParameter(format!(
                    "a reduction's query mean needs {in_dim} finite values ({} given)",
                    q.len()
                )));
            }
        }
        Ok(())
    }

    /// Reduces row-major `in_dim`-wide document vectors.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.reduce(x, &self.mean)
    }

    /// Reduces row-major `in_dim`-wide query vectors.
    pub fn apply_query(&self, x: &[f32]) -> Vec<f32> {
        self.reduce(x, self.query_mean.as_deref().unwrap_or(&self.mean))
    }

    fn reduce(&self, x: &[f32], mean: &[f32]) -> Vec<f32> {
        let n = x.len() / self.in_dim;
        let centred: Vec<f32> = x
            .chunks_exact(self.in_dim)
            .flat_map(|row| row.iter().zip(mean).map(|(a, m)| a - m))
            .collect();
        let mut out = vec![0.0; n * self.out_dim];
        gemm_abt(
            &centred,
            n,
            &self.matrix,
            self.out_dim,
            self.in_dim,
            &mut out,
        );
        out.chunks_exact_mut(self.out_dim).for_each(normalise);
        out
    }

    /// The file layout: matrix, mean, then the query mean if there is one.
    pub fn to_floats(&self) -> Vec<f32> {
        let mut v = self.matrix.clone();
        v.extend_from_slice(&self.mean);
        if let Some(q) = &self.query_mean {
            v.extend_from_slice(q);
        }
        v
    }

    /// Reads [`Self::to_floats`]'s layout; `query_mean` says whether the
    /// file holds a query mean.
    pub fn from_floats(in_dim: usize, out_dim: usize, v: &[f32], query_mean: bool) -> Result<Self> {
        let means = if query_mean { 2 } else { 1 };
        if v.len() != in_dim * out_dim + means * in_dim {
            return Err(IndexError::InvalidParameter(
                "reduction file has the wrong length".into(),
            ));
        }
        let (m, rest) = v.split_at(in_dim * out_dim);
        let (mean, q) = rest.split_at(in_dim);
        let r = Self::new(in_dim, out_dim, m.to_vec(), Some(mean.to_vec()))?;
        if query_mean {
            r.with_query_mean(q.to_vec())
        } else {
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_and_normalises() {
        // Keep the first two of three coordinates.
        let r = Projection::new(3, 2, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], None).unwrap();
        let y = r.apply(&[3.0, 4.0, 100.0]);
        assert!((y[0] - 0.6).abs() < 1e-6 && (y[1] - 0.8).abs() < 1e-6);
        assert!(Projection::new(3, 2, vec![0.0; 5], None).is_err());
        let back = Projection::from_floats(3, 2, &r.to_floats(), false).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn queries_can_have_their_own_mean() {
        let mean = vec![1.0, 1.0, 0.0];
        let r = Projection::new(3, 2, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], Some(mean))
            .unwrap()
            .with_query_mean(vec![0.0; 3])
            .unwrap();
        // Documents are centred on the mean, queries on theirs (zero).
        let d = r.apply(&[4.0, 5.0, 0.0]);
        assert!((d[0] - 0.6).abs() < 1e-6 && (d[1] - 0.8).abs() < 1e-6);
        let q = r.apply_query(&[4.0, 3.0, 7.0]);
        assert!((q[0] - 0.8).abs() < 1e-6 && (q[1] - 0.6).abs() < 1e-6);
        let back = Projection::from_floats(3, 2, &r.to_floats(), true).unwrap();
        assert_eq!(back, r);
        // The layout says how many means it holds.
        assert!(Projection::from_floats(3, 2, &r.to_floats(), false).is_err());
        assert!(r.clone().with_query_mean(vec![f32::NAN; 3]).is_err());
    }
}
