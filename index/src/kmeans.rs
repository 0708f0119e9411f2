//! k-means for the index's centroids, and the quantizer that assigns every
//! token vector to its nearest centroid.
//!
//! Training runs Lloyd's algorithm on a sample (BLAS-style blocked
//! assignment, `rayon` across blocks). Assignment of all tokens is exact
//! nearest-centroid by L2 distance (`argmax ⟨x, c⟩ − ½‖c‖²`), computed a
//! block of tokens at a time with one SGEMM per block.

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::linalg::{gemm_abt, norm2, normalise};

/// Default number of centroids for `tokens` vectors:
/// `2^floor(log2(16·√tokens))`, at least 1 and at most `tokens`.
pub fn default_num_centroids(tokens: usize) -> usize {
    if tokens <= 1 {
        return 1;
    }
    let target = 16.0 * (tokens as f64).sqrt();
    let k = 1usize << (target.log2().floor() as u32);
    k.clamp(1, tokens)
}

/// Rows per assignment block: one block's score matrix stays in cache-ish
/// memory (`BLOCK × K` floats).
const BLOCK: usize = 256;

/// Nearest centroids for `points` (row-major, `dim` wide).
pub fn assign(points: &[f32], centroids: &[f32], dim: usize) -> Vec<u32> {
    let k = centroids.len() / dim;
    let half_norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|c| 0.5 * norm2(c))
        .collect();
    let mut codes = vec![0u32; points.len() / dim];
    codes
        .par_chunks_mut(BLOCK)
        .zip(points.par_chunks(BLOCK * dim))
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (codes, block)| {
            let m = block.len() / dim;
            scores.resize(m * k, 0.0);
            gemm_abt(block, m, centroids, k, dim, scores);
            for (i, code) in codes.iter_mut().enumerate() {
                let row = &scores[i * k..(i + 1) * k];
                let mut best = (f32::NEG_INFINITY, 0u32);
                for (j, (&s, &h)) in row.iter().zip(&half_norms).enumerate() {
                    let v = s - h;
                    if v > best.0 {
                        best = (v, j as u32);
                    }
                }
                *code = best.1;
            }
        });
    codes
}

/// Trains `k` centroids on `sample` (row-major, `dim` wide) with `iters`
/// Lloyd iterations. With `spherical`, centroids are renormalised to unit
/// length after each update (for unit-norm data such as ColBERT vectors).
pub fn train(
    sample: &[f32],
    dim: usize,
    k: usize,
    iters: usize,
    seed: u64,
    spherical: bool,
) -> Vec<f32> {
    let n = sample.len() / dim;
    assert!(n > 0 && k > 0, "k-means needs points and centroids");
    let k = k.min(n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut centroids: Vec<f32> = sample_rows(sample, dim, k, &mut rng);
    for _ in 0..iters {
        let codes = assign(sample, &centroids, dim);
        // Per-thread partial sums, then reduce.
        let (sums, counts) = codes
            .par_chunks(BLOCK)
            .zip(sample.par_chunks(BLOCK * dim))
            .fold(
                || (vec![0.0f32; k * dim], vec![0u32; k]),
                |(mut sums, mut counts), (codes, block)| {
                    for (c, x) in codes.iter().zip(block.chunks_exact(dim)) {
                        let c = *c as usize;
                        counts[c] += 1;
                        for (s, v) in sums[c * dim..(c + 1) * dim].iter_mut().zip(x) {
                            *s += v;
                        }
                    }
                    (sums, counts)
                },
            )
            .reduce(
                || (vec![0.0f32; k * dim], vec![0u32; k]),
                |(mut s1, mut c1), (s2, c2)| {
                    s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                    c1.iter_mut().zip(&c2).for_each(|(a, b)| *a += b);
                    (s1, c1)
                },
            );
        for c in 0..k {
            let row = &mut centroids[c * dim..(c + 1) * dim];
            if counts[c] == 0 {
                // Empty cluster: restart it on a random sample point.
                let r = rng.gen_range(0..n);
                row.copy_from_slice(&sample[r * dim..(r + 1) * dim]);
            } else {
                let inv = 1.0 / counts[c] as f32;
                for (x, s) in row.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                    *x = s * inv;
                }
            }
            if spherical {
                normalise(row);
            }
        }
    }
    centroids
}

fn sample_rows(data: &[f32], dim: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
    let n = data.len() / dim;
    let mut out = Vec::with_capacity(k * dim);
    for i in sample(rng, n, k).into_iter() {
        out.extend_from_slice(&data[i * dim..(i + 1) * dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_k_follows_the_formula() {
        assert_eq!(default_num_centroids(1_000_000), 8192); // 16·1000 = 16000 → 2^13
        assert_eq!(default_num_centroids(10_000), 1024); // 1600 → 2^10
        assert_eq!(default_num_centroids(3), 3);
        assert_eq!(default_num_centroids(0), 1);
    }

    #[test]
    fn recovers_separated_clusters() {
        let dim = 4;
        let centers = [
            [5.0f32, 0.0, 0.0, 0.0],
            [0.0, 5.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, -5.0],
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut data = Vec::new();
        for i in 0..300 {
            for &c in &centers[i % 3] {
                data.push(c + rng.gen_range(-0.1..0.1));
            }
        }
        let cents = train(&data, dim, 3, 10, 1, false);
        let codes = assign(&data, &cents, dim);
        // Points of the same true cluster share a code, different ones don't.
        for i in 0..300 {
            assert_eq!(codes[i], codes[i % 3]);
        }
        assert_ne!(codes[0], codes[1]);
        assert_ne!(codes[1], codes[2]);
    }
}
