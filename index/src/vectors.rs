//! [`TokenVectors`]: one text's bag of token vectors, row-major.

use crate::error::IndexError;

/// The token vectors of one query or document: `len()` rows of `dim()` floats,
/// stored contiguously (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenVectors {
    dim: usize,
    data: Vec<f32>,
}

impl TokenVectors {
    /// Wraps `data` as rows of `dim` floats.
    pub fn new(dim: usize, data: Vec<f32>) -> Result<Self, IndexError> {
        if dim == 0 {
            return Err(IndexError::ZeroDim);
        }
        if !data.len().is_multiple_of(dim) {
            return Err(IndexError::Ragged {
                len: data.len(),
                dim,
            });
        }
        Ok(Self { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of token vectors.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim)
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked() {
        assert!(matches!(
            TokenVectors::new(0, vec![]),
            Err(IndexError::ZeroDim)
        ));
        assert!(matches!(
            TokenVectors::new(3, vec![0.0; 4]),
            Err(IndexError::Ragged { len: 4, dim: 3 })
        ));
        let v = TokenVectors::new(2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((v.len(), v.dim()), (2, 2));
        assert_eq!(v.row(1), &[3.0, 4.0]);
        assert_eq!(v.rows().count(), 2);
    }
}
