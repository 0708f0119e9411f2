//! The HNSW candidate generator's graph over the index's centroids
//! (`hnsw_rs`), built on first use; PLAID's passes then run on the cells it
//! finds.

use hnsw_rs::prelude::{DistL2, Hnsw};

/// HNSW graph over the index's centroids.
pub struct CentroidGraph {
    pub(crate) graph: Hnsw<'static, f32, DistL2>,
}

impl CentroidGraph {
    pub(crate) fn build(centroids: &[f32], dim: usize) -> Self {
        let k = centroids.len() / dim;
        let graph = Hnsw::<f32, DistL2>::new(24, k, 16, 200, DistL2 {});
        let rows: Vec<(&[f32], usize)> = centroids
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, c)| (c, i))
            .collect();
        graph.parallel_insert_slice(&rows);
        Self { graph }
    }
}
