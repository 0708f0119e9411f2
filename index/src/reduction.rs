//! Linear dimension reduction applied before coding: `y = R · (x − mean)`,
//! renormalised to unit length. The trained reductions come from the
//! `training` crate; the index only applies a given matrix and records it so
//! queries are reduced the same way.

use crate::error::{IndexError, Result};
use crate::linalg::{gemm_abt, normalise};

/// An `out_dim × in_dim` projection and the mean subtracted first.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduction {
    pub in_dim: usize,
    pub out_dim: usize,
    /// Row-major `out_dim × in_dim`.
    pub matrix: Vec<f32>,
    /// `in_dim` values.
    pub mean: Vec<f32>,
}

impl Reduction {
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        matrix: Vec<f32>,
        mean: Option<Vec<f32>>,
    ) -> Result<Self> {
        let mean = mean.unwrap_or_else(|| vec![0.0; in_dim]);
        if in_dim == 0 || out_dim == 0 || matrix.len() != in_dim * out_dim || mean.len() != in_dim {
            return Err(IndexError::InvalidParameter(format!(
                "reduction {in_dim}→{out_dim} needs a {out_dim}×{in_dim} matrix ({} floats given) and {in_dim} means ({} given)",
                matrix.len(),
                mean.len()
            )));
        }
        if matrix.iter().chain(&mean).any(|x| !x.is_finite()) {
            return Err(IndexError::InvalidParameter(
                "reduction has non-finite values".into(),
            ));
        }
        Ok(Self {
            in_dim,
            out_dim,
            matrix,
            mean,
        })
    }

    /// Reduces row-major `in_dim`-wide vectors.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.in_dim;
        let centred: Vec<f32> = x
            .chunks_exact(self.in_dim)
            .flat_map(|row| row.iter().zip(&self.mean).map(|(a, m)| a - m))
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

    /// The file layout: matrix then mean.
    pub fn to_floats(&self) -> Vec<f32> {
        let mut v = self.matrix.clone();
        v.extend_from_slice(&self.mean);
        v
    }

    pub fn from_floats(in_dim: usize, out_dim: usize, v: &[f32]) -> Result<Self> {
        if v.len() != in_dim * out_dim + in_dim {
            return Err(IndexError::InvalidParameter(
                "reduction file has the wrong length".into(),
            ));
        }
        let (m, mean) = v.split_at(in_dim * out_dim);
        Self::new(in_dim, out_dim, m.to_vec(), Some(mean.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_and_normalises() {
        // Keep the first two of three coordinates.
        let r = Reduction::new(3, 2, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], None).unwrap();
        let y = r.apply(&[3.0, 4.0, 100.0]);
        assert!((y[0] - 0.6).abs() < 1e-6 && (y[1] - 0.8).abs() < 1e-6);
        assert!(Reduction::new(3, 2, vec![0.0; 5], None).is_err());
        let back = Reduction::from_floats(3, 2, &r.to_floats()).unwrap();
        assert_eq!(back, r);
    }
}
