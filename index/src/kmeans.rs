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

/// Default number of centroids for `tokens` vectors: the power of two
/// nearest (in log scale) to `16·√tokens`, at least 1 and at most `tokens`.
/// (PLAID rounds down, which halves K just below each power of two: 854k
/// tokens got 8,192 centroids, 2.8 % fewer tokens than the 16,384 of
/// 1.22M; rounding keeps the centroids' share of tokens within √2 of the
/// formula's.)
pub fn default_num_centroids(tokens: usize) -> usize {
    if tokens <= 1 {
        return 1;
    }
    let target = 16.0 * (tokens as f64).sqrt();
    let k = 1usize << (target.log2().round() as u32);
    k.clamp(1, tokens)
}

/// Rows per assignment block: one block's score matrix stays in cache-ish
/// memory (`BLOCK × K` floats).
const BLOCK: usize = 256;

/// Below this many centroids, assignment is brute force.
const TWO_LEVEL_MIN_K: usize = 2048;

/// Groups probed per point by the two-level assignment (the default of
/// [`assign`]; builds choose their own, see `BuildOptions::assign_probe`).
pub const PROBE_GROUPS: usize = 2;

/// Nearest centroids for `points` (row-major, `dim` wide).
///
/// Up to 2,048 centroids the search is exhaustive. Past that it is
/// two-level: the centroids are clustered into `√K` groups, each point is
/// compared with the group centres, and then exactly with the members of its
/// 2 best groups — about `√K + 2·√K` dot products instead of `K`, which is
/// what makes indexing millions of tokens affordable on a CPU. A point whose
/// true nearest centroid lies outside those groups gets the best one inside
/// them; the residual codec and exact re-ranking absorb that.
pub fn assign(points: &[f32], centroids: &[f32], dim: usize) -> Vec<u32> {
    assign_probing(points, centroids, dim, PROBE_GROUPS)
}

/// [`assign`] probing `probe` groups per point (`0`: always exhaustive).
/// More groups cost more dot products and miss the true nearest centroid
/// less often.
pub fn assign_probing(points: &[f32], centroids: &[f32], dim: usize, probe: usize) -> Vec<u32> {
    let k = centroids.len() / dim;
    if k < TWO_LEVEL_MIN_K || probe == 0 {
        return assign_exact(points, centroids, dim);
    }
    let groups = Groups::new(centroids, dim);
    if probe >= groups.centres.len() / dim {
        return assign_exact(points, centroids, dim);
    }
    groups.assign(points, dim, probe)
}

/// Brute-force nearest centroids.
pub fn assign_exact(points: &[f32], centroids: &[f32], dim: usize) -> Vec<u32> {
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
                *code = argmax_shifted(&scores[i * k..(i + 1) * k], &half_norms).1;
            }
        });
    codes
}

/// `argmax_j row[j] − shift[j]`, as `(value, j)`.
fn argmax_shifted(row: &[f32], shift: &[f32]) -> (f32, u32) {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (j, (&s, &h)) in row.iter().zip(shift).enumerate() {
        let v = s - h;
        if v > best.0 {
            best = (v, j as u32);
        }
    }
    best
}

/// The `top.len()` largest `row[j] − shift[j]`, best first, in one pass
/// (for the handful of groups a point probes; cheaper than a selection).
fn top_n(row: &[f32], shift: &[f32], top: &mut [(f32, u32)]) {
    top.fill((f32::NEG_INFINITY, 0));
    let Some(last) = top.len().checked_sub(1) else {
        return;
    };
    for (j, (&s, &h)) in row.iter().zip(shift).enumerate() {
        let v = s - h;
        if v > top[last].0 {
            let mut p = last;
            while p > 0 && v > top[p - 1].0 {
                top[p] = top[p - 1];
                p -= 1;
            }
            top[p] = (v, j as u32);
        }
    }
}

/// Scores computed at once per group in [`Groups::assign`] (4 MiB).
const SCORE_FLOATS: usize = 1 << 20;

/// Centroids clustered into groups, for two-level assignment.
struct Groups {
    /// `G × dim` group centres.
    centres: Vec<f32>,
    centre_half_norms: Vec<f32>,
    /// Per group: member centroid ids, their vectors (contiguous) and half
    /// squared norms.
    members: Vec<(Vec<u32>, Vec<f32>, Vec<f32>)>,
}

impl Groups {
    fn new(centroids: &[f32], dim: usize) -> Self {
        let k = centroids.len() / dim;
        let g = ((k as f64).sqrt().round() as usize).max(1);
        let centres = train_with(centroids, dim, g, 6, 17, false, &assign_exact);
        let codes = assign_exact(centroids, &centres, dim);
        let mut members: Vec<(Vec<u32>, Vec<f32>, Vec<f32>)> = vec![Default::default(); g];
        for (c, &grp) in codes.iter().enumerate() {
            let v = &centroids[c * dim..(c + 1) * dim];
            let m = &mut members[grp as usize];
            m.0.push(c as u32);
            m.1.extend_from_slice(v);
            m.2.push(0.5 * norm2(v));
        }
        let centre_half_norms = centres.chunks_exact(dim).map(|c| 0.5 * norm2(c)).collect();
        Self {
            centres,
            centre_half_norms,
            members,
        }
    }

    fn assign(&self, points: &[f32], dim: usize, probe: usize) -> Vec<u32> {
        let g = self.centres.len() / dim;
        let probe = probe.clamp(1, g);
        let block = 16384;
        let mut codes = vec![0u32; points.len() / dim];
        codes
            .par_chunks_mut(block)
            .zip(points.par_chunks(block * dim))
            .for_each(|(codes, pts)| {
                let m = pts.len() / dim;
                let mut coarse = vec![0.0f32; m * g];
                gemm_abt(pts, m, &self.centres, g, dim, &mut coarse);
                // Points probing each group.
                let mut by_group: Vec<Vec<u32>> = vec![Vec::new(); g];
                let mut top = vec![(f32::NEG_INFINITY, 0u32); probe];
                for i in 0..m {
                    let row = &coarse[i * g..(i + 1) * g];
                    top_n(row, &self.centre_half_norms, &mut top[..probe]);
                    for &(_, grp) in &top[..probe] {
                        by_group[grp as usize].push(i as u32);
                    }
                }
                let mut best = vec![(f32::NEG_INFINITY, 0u32); m];
                let mut gathered = Vec::new();
                let mut scores = Vec::new();
                for (grp, pts_idx) in by_group.iter().enumerate() {
                    let (ids, vecs, half) = &self.members[grp];
                    if pts_idx.is_empty() || ids.is_empty() {
                        continue;
                    }
                    // Points in slices, so that the score matrix stays
                    // within SCORE_FLOATS however large the group (groups
                    // of clustered data can hold thousands of centroids).
                    let nm = ids.len();
                    let rows = (SCORE_FLOATS / nm).max(1);
                    for slice in pts_idx.chunks(rows) {
                        gathered.clear();
                        for &i in slice {
                            gathered
                                .extend_from_slice(&pts[i as usize * dim..(i as usize + 1) * dim]);
                        }
                        let n = slice.len();
                        scores.resize(n * nm, 0.0);
                        gemm_abt(&gathered, n, vecs, nm, dim, &mut scores[..n * nm]);
                        for (r, &i) in slice.iter().enumerate() {
                            let (v, j) = argmax_shifted(&scores[r * nm..(r + 1) * nm], half);
                            if v > best[i as usize].0 {
                                best[i as usize] = (v, ids[j as usize]);
                            }
                        }
                    }
                }
                for (c, b) in codes.iter_mut().zip(best) {
                    *c = b.1;
                }
            });
        codes
    }
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
    train_probing(sample, dim, k, iters, seed, spherical, PROBE_GROUPS)
}

/// [`train`] with assignments probing `probe` groups (see
/// [`assign_probing`]).
pub fn train_probing(
    sample: &[f32],
    dim: usize,
    k: usize,
    iters: usize,
    seed: u64,
    spherical: bool,
    probe: usize,
) -> Vec<f32> {
    train_with(sample, dim, k, iters, seed, spherical, &move |p, c, d| {
        assign_probing(p, c, d, probe)
    })
}

/// Nearest-centroid codes of `(points, centroids, dim)`.
type AssignFn<'a> = dyn Fn(&[f32], &[f32], usize) -> Vec<u32> + 'a;

fn train_with(
    sample: &[f32],
    dim: usize,
    k: usize,
    iters: usize,
    seed: u64,
    spherical: bool,
    assign: &AssignFn<'_>,
) -> Vec<f32> {
    let n = sample.len() / dim;
    assert!(n > 0 && k > 0, "k-means needs points and centroids");
    let k = k.min(n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut centroids: Vec<f32> = sample_rows(sample, dim, k, &mut rng);
    for _ in 0..iters {
        let codes = assign(sample, &centroids, dim);
        // Members of each centroid in point order (a counting sort), then
        // each mean summed in that order: the result does not depend on how
        // rayon splits the work, so builds are reproducible bit for bit.
        let mut starts = vec![0usize; k + 1];
        for &c in &codes {
            starts[c as usize + 1] += 1;
        }
        for c in 0..k {
            starts[c + 1] += starts[c];
        }
        let mut fill = starts.clone();
        let mut members = vec![0u32; codes.len()];
        for (i, &c) in codes.iter().enumerate() {
            members[fill[c as usize]] = i as u32;
            fill[c as usize] += 1;
        }
        let empty: Vec<bool> = centroids
            .par_chunks_mut(dim)
            .enumerate()
            .map(|(c, row)| {
                let ids = &members[starts[c]..starts[c + 1]];
                if ids.is_empty() {
                    return true;
                }
                row.fill(0.0);
                for &i in ids {
                    let x = &sample[i as usize * dim..(i as usize + 1) * dim];
                    row.iter_mut().zip(x).for_each(|(s, v)| *s += v);
                }
                let inv = 1.0 / ids.len() as f32;
                row.iter_mut().for_each(|x| *x *= inv);
                if spherical {
                    normalise(row);
                }
                false
            })
            .collect();
        for (c, _) in empty.iter().enumerate().filter(|(_, &e)| e) {
            // Empty cluster: restart it on a random sample point.
            let r = rng.gen_range(0..n);
            let row = &mut centroids[c * dim..(c + 1) * dim];
            row.copy_from_slice(&sample[r * dim..(r + 1) * dim]);
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
        assert_eq!(default_num_centroids(1_000_000), 16384); // 16·1000 = 16000 → 2^14
        assert_eq!(default_num_centroids(853_885), 16384); // 14785 → 2^13.85 → 2^14
        assert_eq!(default_num_centroids(500_000), 8192); // 11314 → 2^13.47 → 2^13
        assert_eq!(default_num_centroids(10_000), 2048); // 1600 → 2^10.64 → 2^11
        assert_eq!(default_num_centroids(3), 3);
        assert_eq!(default_num_centroids(0), 1);
    }

    #[test]
    fn two_level_assignment_is_close_to_exact() {
        let dim = 16;
        let mut rng = StdRng::seed_from_u64(3);
        let mut cents: Vec<f32> = (0..4096 * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        cents.chunks_exact_mut(dim).for_each(normalise);
        // Clustered points (the realistic case): mostly the same answer.
        let mut pts = Vec::new();
        for _ in 0..3000 {
            let c = rng.gen_range(0..4096);
            pts.extend(
                cents[c * dim..(c + 1) * dim]
                    .iter()
                    .map(|x| x + rng.gen_range(-0.05..0.05)),
            );
        }
        let exact = assign_exact(&pts, &cents, dim);
        let fast = assign(&pts, &cents, dim);
        let same = exact.iter().zip(&fast).filter(|(a, b)| a == b).count();
        assert!(same as f64 / exact.len() as f64 > 0.95, "{same}");
        // Uniform points (worst case): the chosen centroid is still close.
        let pts: Vec<f32> = (0..3000 * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let exact = assign_exact(&pts, &cents, dim);
        let fast = assign(&pts, &cents, dim);
        let d2 = |p: &[f32], c: u32| -> f32 {
            let c = &cents[c as usize * dim..(c as usize + 1) * dim];
            p.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum()
        };
        let (mut de, mut df) = (0.0, 0.0);
        for (i, p) in pts.chunks_exact(dim).enumerate() {
            de += d2(p, exact[i]);
            df += d2(p, fast[i]);
        }
        assert!(df <= de * 1.15, "two-level {df} vs exact {de}");
        assert!(fast.iter().all(|&c| (c as usize) < 4096));
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
