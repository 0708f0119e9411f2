//! PLAID's candidate generation: query-token × centroid scores in 8-bit
//! products, the best cells per query token (from the centroid scores or
//! the HNSW graph), a first approximate score from the IVF lists, a second
//! from every token's centroid, then the exact re-rank of the best.

use std::time::Instant;

use rayon::prelude::*;

use crate::error::Result;
use crate::index::Index;
use crate::linalg::{
    dot, dot_block, dot_block_i8, int8_kernel_enabled, norm2, prefetch_line, quantize_scores,
    signed_levels, QuantRows,
};

use super::{ms, top_k, Allowed, Candidates, CentroidGraph, Hit, SearchParams, SearchStats};

impl Index {
    pub(crate) fn search_ivf(
        &self,
        q: &[f32],
        p: &SearchParams,
        allowed: Option<&Allowed>,
        stats: &mut SearchStats,
    ) -> Result<Vec<Hit>> {
        let stop = &p.stop;
        let n_candidates = p.exact_candidates(q.len() / self.dim());
        if let Some(a) = allowed {
            let passing: usize = a.iter().map(|s| s.iter().filter(|&&x| x).count()).sum();
            if passing <= n_candidates {
                return self.rank_exact(q, self.all_docs(allowed), p.k, stop, stats);
            }
        }
        let dim = self.dim();
        let nq = q.len() / dim;
        let k = self.manifest().num_centroids;
        // Centroid-major scores, their i8 table and (PLAID) each query
        // token's best cells, in one parallel pass over the centroids.
        let t = Instant::now();
        let n = p.cells_per_token(nq, k).min(k);
        let plaid = p.candidates == Candidates::Plaid;
        // The second approximate pass only narrows the first pass's
        // survivors to the exact candidates: with `n_approx` no larger
        // there is nothing to narrow, so neither that pass nor the i8
        // table it reads is computed.
        let second_pass = p.n_approx > n_candidates;
        let mut pass = self.centroid_pass(q, plaid.then_some(n), p.centroid_threshold, second_pass);
        stats.centroid_ms = ms(t);
        stop.check()?;
        let t = Instant::now();
        let tops: Vec<Vec<(f32, u32)>> = if plaid {
            std::mem::take(&mut pass.tops)
        } else {
            let g = self
                .hnsw
                .get_or_init(|| CentroidGraph::build(self.centroids(), dim));
            q.chunks_exact(dim)
                .map(|qi| {
                    let mut top: Vec<(f32, u32)> = g
                        .graph
                        .search(qi, n, p.hnsw_ef.max(n))
                        .into_iter()
                        .map(|c| {
                            let cent = &self.centroids()[c.d_id * dim..(c.d_id + 1) * dim];
                            (dot(qi, cent), c.d_id as u32)
                        })
                        .collect();
                    top.sort_by(best_first);
                    top
                })
                .collect()
        };

        // First approximate pass (PLAID's pruned centroid interaction):
        // a document scores, per query token, the best of that token's
        // probed cells it has a token in, read off the IVF lists alone.
        // Cells come best first, so a document's first sighting for a
        // token is its maximum.
        let mut cells = vec![false; k];
        let mut cands: Vec<(f32, usize, u32)> = Vec::new();
        for (si, seg) in self.segments().iter().enumerate() {
            stop.check()?;
            let mut score = vec![0.0f32; seg.num_docs()];
            let mut last = vec![u32::MAX; seg.num_docs()];
            for (i, top) in tops.iter().enumerate() {
                for &(v, c) in top {
                    cells[c as usize] = true;
                    for &d in seg.ivf_list(c as usize) {
                        let d = d as usize;
                        if last[d] != i as u32 {
                            if last[d] == u32::MAX && !self.passes(allowed, si, d as u32) {
                                continue;
                            }
                            last[d] = i as u32;
                            score[d] += v;
                        }
                    }
                }
            }
            cands.extend(
                last.iter()
                    .enumerate()
                    .filter(|(_, &l)| l != u32::MAX)
                    .map(|(d, _)| (score[d], si, d as u32)),
            );
        }
        stats.cells = cells.iter().filter(|&&x| x).count();
        stats.candidates = cands.len();
        if allowed.is_some() && cands.len() < p.k {
            stats.probe_ms = ms(t);
            return self.rank_exact(q, self.all_docs(allowed), p.k, stop, stats);
        }
        top_k(&mut cands, p.n_approx.max(n_candidates));
        stats.probe_ms = ms(t);
        if !second_pass {
            TABLE.with(|t| *t.borrow_mut() = std::mem::take(&mut pass.table));
            let best = cands.into_iter().map(|(_, s, d)| (s, d)).collect();
            return self.rank_exact(q, best, p.k, stop, stats);
        }

        // Second approximate pass over the survivors: every token's
        // centroid counts (PLAID's full centroid interaction), read from
        // the i8 table (pruned centroids — best score under the threshold
        // — contribute 0). The per-token gathers are the cost here, and
        // i8 rows keep the table in L2. Approximate scores only choose
        // which documents get the exact re-rank.
        stop.check()?;
        let t = Instant::now();
        let blocks = nq.div_ceil(I8_LANES);
        let scale = pass.scale;
        let table = &pass.table;
        stats.approx_docs = cands.len();
        let mut approx: Vec<(f32, usize, u32)> = cands
            .into_par_iter()
            .map(|(_, s, d)| (s, d))
            .map_init(
                || vec![[0i8; I8_LANES]; blocks],
                |acc, (s, d)| {
                    acc.fill([i8::MIN; I8_LANES]);
                    let seg = &self.segments()[s];
                    let codes = &seg.codes()[seg.token_range(d)];
                    for (t, &c) in codes.iter().enumerate() {
                        // The rows are read in code order, far apart in a
                        // table larger than L1: ask for one a few tokens
                        // ahead while this one is folded in.
                        if let Some(&n) = codes.get(t + PREFETCH_AHEAD) {
                            prefetch_line(&table[n as usize * blocks]);
                        }
                        let rows = &table[c as usize * blocks..(c as usize + 1) * blocks];
                        for (a, r) in acc.iter_mut().zip(rows) {
                            max_i8x32(a, r);
                        }
                    }
                    let sum: i32 = acc.iter().flatten().take(nq).map(|&x| i32::from(x)).sum();
                    (sum as f32 / scale, s, d)
                },
            )
            .collect();
        top_k(&mut approx, n_candidates);
        TABLE.with(|t| *t.borrow_mut() = std::mem::take(&mut pass.table));
        stats.approx_ms = ms(t);
        let best = approx.into_iter().map(|(_, s, d)| (s, d)).collect();
        self.rank_exact(q, best, p.k, stop, stats)
    }
}

/// Lanes of the quantised approximate-score table (one AVX2 register).
const I8_LANES: usize = 32;

/// `a = max(a, r)` lane by lane (one `vpmaxsb` with AVX2).
#[inline]
fn max_i8x32(a: &mut [i8; I8_LANES], r: &[i8; I8_LANES]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 is enabled at compile time (cfg above); both arrays
        // are exactly 32 bytes, the width of one unaligned 256-bit
        // load/store, and `a` is a unique borrow.
        unsafe {
            let x = _mm256_loadu_si256(a.as_ptr().cast());
            let y = _mm256_loadu_si256(r.as_ptr().cast());
            _mm256_storeu_si256(a.as_mut_ptr().cast(), _mm256_max_epi8(x, y));
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    for (x, &y) in a.iter_mut().zip(r) {
        *x = (*x).max(y);
    }
}

/// What one parallel pass over the centroids gives a query
/// ([`Index::centroid_pass`]).
struct CentroidPass {
    /// The scores as i8 (× `scale`), `⌈nq/32⌉` rows of 32 per centroid;
    /// all zero for centroids whose best score is under the threshold.
    table: Vec<[i8; I8_LANES]>,
    scale: f32,
    /// Per query token, its best cells, best first (ties: lower id).
    tops: Vec<Vec<(f32, u32)>>,
}

impl Index {
    /// Query-token × centroid scores as an i8 table for approximate
    /// scoring and, when `n_probe` is given, each token's `n_probe` best
    /// cells — all in one pass over parallel blocks of centroids, each
    /// block read once and finished while in cache (an SGEMM would first
    /// copy — "pack" — the whole centroid matrix for a skinny query).
    ///
    /// The products are taken on 8-bit copies of both sides (a quarter of
    /// the bytes; 64 products per VNNI instruction, 32 per AVX2
    /// `vpmaddubsw` + `vpmaddwd` pair, the query side at ±64 there): these
    /// scores only choose cells and approximate ranks; the exact re-rank
    /// does not use them. Without `with_table` (no second approximate pass
    /// to read it) the table is left empty.
    fn centroid_pass(
        &self,
        q: &[f32],
        n_probe: Option<usize>,
        threshold: f32,
        with_table: bool,
    ) -> CentroidPass {
        let dim = self.dim();
        let centroids = self.centroids();
        let (k, nq) = (centroids.len() / dim, q.len() / dim);
        if n_probe.is_none() && !with_table {
            // Nothing to compute (HNSW cells, no second pass).
            return CentroidPass {
                table: Vec::new(),
                scale: 1.0,
                tops: Vec::new(),
            };
        }
        // Rows per parallel block: one block per thread (at least 2,048
        // rows). Each block starts its best-cell lists from nothing, and
        // filling them — every row beats the bar at first — costs more
        // than the scan itself in small blocks: 8 blocks of 2,048 where 2
        // of 8,192 would do made the whole search 1.4× slower on 16,384
        // centroids (docs/BENCHMARKS.md).
        let block = k.div_ceil(rayon::current_num_threads()).max(2048);
        let q = &q[..nq * dim];
        let blocks = nq.div_ceil(I8_LANES);
        // |score| ≤ max |q_i| · max |c|: a scale fixed before any score is
        // known, so each block can quantise its own rows.
        let q_norm = q
            .chunks_exact(dim)
            .map(|r| norm2(r).sqrt())
            .fold(0.0f32, f32::max);
        let bound = (q_norm * self.max_centroid_norm()).max(f32::MIN_POSITIVE);
        let scale = 127.0 / bound;
        let quant = int8_kernel_enabled().then(|| {
            let cq = self
                .centroids_i8
                .get_or_init(|| QuantRows::new(centroids, dim, true));
            (cq, QuantRows::with_levels(q, dim, false, signed_levels()))
        });
        // The table is reused from this thread's last query (every row is
        // rewritten below): a fresh half-megabyte buffer per query costs
        // page faults.
        let mut table = TABLE.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let n_blocks = k.div_ceil(block);
        let tabs: Vec<Option<&mut [[i8; I8_LANES]]>> = if with_table {
            table.resize(k * blocks, [0; I8_LANES]);
            table.chunks_mut(block * blocks).map(Some).collect()
        } else {
            table.clear();
            (0..n_blocks).map(|_| None).collect()
        };
        let tops = tabs
            .into_par_iter()
            .enumerate()
            .map_init(Vec::new, |out, (b, tab)| {
                let first = b * block;
                let n_rows = block.min(k - first);
                let rows = first..first + n_rows;
                out.resize(n_rows * nq, 0.0);
                match &quant {
                    Some((cq, qq)) => dot_block_i8(cq, rows, qq, out),
                    None => dot_block(&centroids[rows.start * dim..rows.end * dim], q, dim, out),
                }
                // One walk down the rows: each row becomes its i8 table
                // row and (PLAID) is offered to the tokens' best-cell lists.
                let mut lists = n_probe.map(|n| CellLists::new(nq, n));
                let mut tab_rows = tab.map(|t| t.chunks_exact_mut(blocks));
                for (c, row) in out.chunks_exact(nq).enumerate() {
                    if let Some(t) = tab_rows.as_mut().and_then(Iterator::next) {
                        quantize_scores(row, scale, threshold, t.as_flattened_mut());
                    }
                    if let Some(l) = &mut lists {
                        l.offer(row, (first + c) as u32);
                    }
                }
                lists.map_or_else(Vec::new, CellLists::finish)
            })
            .reduce(Vec::new, |a, b| merge_tops(a, b, n_probe.unwrap_or(0)))
            .into_iter()
            .map(|mut t| {
                t.sort_unstable_by(best_first);
                t
            })
            .collect();
        CentroidPass { table, scale, tops }
    }
}

thread_local! {
    /// The last [`CentroidPass::table`] this thread made, for reuse.
    static TABLE: std::cell::RefCell<Vec<[i8; I8_LANES]>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Each query token's best cells while the centroid rows stream by: per
/// token an unsorted buffer of at most 2n entries and the bar an entry
/// must beat (the n-th best so far); a full buffer is cut back to its n
/// best. Rows are offered whole, so the common case — no token's bar
/// beaten — is a vector compare per 8 tokens.
struct CellLists {
    n: usize,
    bars: Vec<f32>,
    tops: Vec<Vec<(f32, u32)>>,
}

impl CellLists {
    fn new(nq: usize, n: usize) -> Self {
        Self {
            n,
            bars: vec![f32::NEG_INFINITY; nq],
            tops: (0..nq).map(|_| Vec::with_capacity(2 * n)).collect(),
        }
    }

    /// Offers cell `cell`, whose score against token i is `row[i]`.
    fn offer(&mut self, row: &[f32], cell: u32) {
        if !any_above(row, &self.bars) {
            return;
        }
        let n = self.n;
        for ((top, bar), &v) in self.tops.iter_mut().zip(&mut self.bars).zip(row) {
            if v > *bar {
                top.push((v, cell));
                if top.len() == 2 * n {
                    cut_to_best(top, n);
                    *bar = top[n - 1].0;
                }
            }
        }
    }

    /// Per token, its n best cells (unsorted; fewer if fewer were offered).
    fn finish(mut self) -> Vec<Vec<(f32, u32)>> {
        for t in &mut self.tops {
            cut_to_best(t, self.n);
        }
        self.tops
    }
}

/// How many tokens ahead the approximate pass prefetches table rows.
const PREFETCH_AHEAD: usize = 4;

/// Whether any `row[i] > bars[i]` (no early exit, so it vectorises).
fn any_above(row: &[f32], bars: &[f32]) -> bool {
    row.iter()
        .zip(bars)
        .fold(false, |hit, (v, b)| hit | (v > b))
}

/// Best first; ties: lower id.
fn best_first(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Cuts `top` to its `n` best entries (unsorted, except that the worst of
/// them is last).
fn cut_to_best(top: &mut Vec<(f32, u32)>, n: usize) {
    if top.len() > n {
        top.select_nth_unstable_by(n - 1, best_first);
        top.truncate(n);
    }
}

/// Merges two sets of per-token best-cell lists, keeping `n` per token.
fn merge_tops(a: Vec<Vec<(f32, u32)>>, b: Vec<Vec<(f32, u32)>>, n: usize) -> Vec<Vec<(f32, u32)>> {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    a.into_iter()
        .zip(b)
        .map(|(mut x, y)| {
            x.extend(y);
            cut_to_best(&mut x, n);
            x
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The best-cell lists hold exactly each token's n best cells (ties:
    /// lower id), whatever the rows' order of arrival and however the rows
    /// are split into blocks and merged.
    #[test]
    fn cell_lists_keep_each_tokens_best_cells() {
        let (rows, nq, n) = (3000usize, 5usize, 7usize);
        // Scores on a coarse grid, so ties happen.
        let scores: Vec<f32> = (0..rows * nq)
            .map(|i| ((i * 2_654_435_761) % 97) as f32 / 8.0)
            .collect();
        let want: Vec<Vec<(f32, u32)>> = (0..nq)
            .map(|t| {
                let mut col: Vec<(f32, u32)> =
                    (0..rows).map(|c| (scores[c * nq + t], c as u32)).collect();
                col.sort_by(best_first);
                col.truncate(n);
                col
            })
            .collect();
        for block in [rows, 1000, 64, 7] {
            let mut merged = Vec::new();
            for (b, chunk) in scores.chunks(block * nq).enumerate() {
                let mut l = CellLists::new(nq, n);
                for (c, row) in chunk.chunks_exact(nq).enumerate() {
                    l.offer(row, (b * block + c) as u32);
                }
                merged = merge_tops(merged, l.finish(), n);
            }
            for t in &mut merged {
                t.sort_by(best_first);
            }
            assert_eq!(merged, want, "blocks of {block}");
        }
    }
}
