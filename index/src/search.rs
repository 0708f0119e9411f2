//! Search: candidate generation, then exact MaxSim on the best candidates.
//!
//! * [`Candidates::Exhaustive`] scores every live document exactly — the
//!   correctness reference.
//! * [`Candidates::Plaid`]: query-token × centroid scores (one SGEMM), the
//!   `n_probe` best cells per query token, their IVF lists as candidates, an
//!   approximate score from centroid codes alone (centroids whose best query
//!   score is under `centroid_threshold` contribute nothing), then exact
//!   MaxSim on the `n_candidates` best after decoding.
//! * [`Candidates::Hnsw`]: like PLAID, but the cells come from an HNSW graph
//!   over the centroids (`hnsw_rs`), built on first use.
//!
//! Filters are applied before ranking: when few documents pass, they are
//! scored exactly; otherwise candidates are restricted to them, and if that
//! leaves fewer than `k`, the passing documents are scored exhaustively.

use hnsw_rs::prelude::{DistL2, Hnsw};
use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::filter::{FieldValue, Filter};
use crate::index::{Index, StoredDoc};
use crate::linalg::{dot_rows, dot_rows2};
use crate::maxsim::Scratch;
use crate::vectors::TokenVectors;

/// How candidates are generated before exact re-ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidates {
    Exhaustive,
    Plaid,
    Hnsw,
}

impl std::str::FromStr for Candidates {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exhaustive" | "exact" => Ok(Self::Exhaustive),
            "plaid" | "ivf" => Ok(Self::Plaid),
            "hnsw" => Ok(Self::Hnsw),
            o => Err(IndexError::InvalidParameter(format!(
                "unknown candidate generator {o:?} (exhaustive, plaid, hnsw)"
            ))),
        }
    }
}

/// Search settings. Defaults were chosen by measurement (docs/BENCHMARKS.md)
/// for recall@10 ≥ 0.99 against exhaustive search: `n_probe` on the
/// synthetic benchmark (`scripts/bench-index`), `n_candidates` on real
/// 384-dim MiniLM vectors of SciFact with the default residual2 codec (64
/// suffices on the synthetic data, 128 is needed on the real vectors).
#[derive(Debug, Clone)]
pub struct SearchParams {
    pub k: usize,
    pub candidates: Candidates,
    /// Cells probed per query token.
    pub n_probe: usize,
    /// Centroids whose best query-token score is below this are ignored in
    /// approximate scoring.
    pub centroid_threshold: f32,
    /// Documents re-ranked exactly (at least `4·k`).
    pub n_candidates: usize,
    /// HNSW search breadth.
    pub hnsw_ef: usize,
    pub filter: Option<Filter>,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            k: 10,
            candidates: Candidates::Plaid,
            n_probe: 32,
            centroid_threshold: 0.4,
            n_candidates: 128,
            hnsw_ef: 64,
            filter: None,
        }
    }
}

/// One ranked document.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub segment: usize,
    pub doc: u32,
}

/// HNSW graph over the index's centroids.
pub struct CentroidGraph {
    graph: Hnsw<'static, f32, DistL2>,
}

type Allowed = Vec<Vec<bool>>;

impl Index {
    /// Top-`k` documents for `query` (before the index's reduction).
    pub fn search(&self, query: &TokenVectors, p: &SearchParams) -> Result<Vec<Hit>> {
        self.check_query(query, p)?;
        let q = self.prepare(query.as_slice());
        let allowed = self.allowed(p.filter.as_ref());
        let hits = match p.candidates {
            Candidates::Exhaustive => self.rank_exact(&q, self.all_docs(allowed.as_ref()), p.k),
            Candidates::Plaid | Candidates::Hnsw => self.search_ivf(&q, p, allowed.as_ref()),
        };
        Ok(hits)
    }

    /// [`Index::search`] for many queries, in parallel.
    pub fn search_batch(
        &self,
        queries: &[TokenVectors],
        p: &SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        queries.par_iter().map(|q| self.search(q, p)).collect()
    }

    /// Stored fields of a hit's document.
    pub fn hit_document(&self, hit: &Hit) -> Option<StoredDoc> {
        self.stored(hit.segment, hit.doc)
    }

    fn check_query(&self, query: &TokenVectors, p: &SearchParams) -> Result<()> {
        if query.dim() != self.query_dim() {
            return Err(IndexError::DimMismatch {
                left: query.dim(),
                right: self.query_dim(),
            });
        }
        if query.is_empty() {
            return Err(IndexError::InvalidParameter("query has no vectors".into()));
        }
        if query.as_slice().iter().any(|x| !x.is_finite()) {
            return Err(IndexError::InvalidParameter(
                "query has non-finite values".into(),
            ));
        }
        if p.k == 0 || p.n_probe == 0 {
            return Err(IndexError::InvalidParameter(
                "k and n_probe must be at least 1".into(),
            ));
        }
        if let Some(f) = &p.filter {
            f.validate()?;
        }
        Ok(())
    }

    /// Per segment, which documents are live and pass `filter`; `None`
    /// without a filter (then liveness alone decides).
    fn allowed(&self, filter: Option<&Filter>) -> Option<Allowed> {
        let filter = filter?;
        let mut fields = Vec::new();
        filter.fields(&mut fields);
        fields.sort();
        fields.dedup();
        static MISSING: FieldValue = FieldValue::Missing;
        Some(
            self.segments()
                .iter()
                .enumerate()
                .map(|(si, seg)| {
                    let cols: Vec<_> = fields
                        .iter()
                        .map(|f| (f.as_str(), self.column(si, f)))
                        .collect();
                    (0..seg.num_docs())
                        .map(|d| {
                            seg.is_live(d as u32)
                                && filter.matches(&|name| {
                                    cols.iter()
                                        .find(|(n, _)| *n == name)
                                        .map_or(&MISSING, |(_, c)| &c[d])
                                })
                        })
                        .collect()
                })
                .collect(),
        )
    }

    fn passes(&self, allowed: Option<&Allowed>, seg: usize, doc: u32) -> bool {
        match allowed {
            Some(a) => a[seg][doc as usize],
            None => self.segments()[seg].is_live(doc),
        }
    }

    fn all_docs(&self, allowed: Option<&Allowed>) -> Vec<(usize, u32)> {
        self.segments()
            .iter()
            .enumerate()
            .flat_map(|(si, seg)| (0..seg.num_docs() as u32).map(move |d| (si, d)))
            .filter(|&(s, d)| self.passes(allowed, s, d))
            .collect()
    }

    /// Decodes document `doc` of segment `seg` into `out`.
    pub fn decode_doc(&self, seg: usize, doc: u32, out: &mut Vec<f32>) {
        let s = &self.segments()[seg];
        let r = s.token_range(doc);
        let dim = self.dim();
        let bpt = self.codec().bytes_per_token();
        let codes = &s.codes()[r.clone()];
        let bytes = s.vector_bytes(r);
        let cents = self.centroids();
        out.resize(codes.len() * dim, 0.0);
        for (t, &c) in codes.iter().enumerate() {
            let c = c as usize;
            self.codec().decode(
                &bytes[t * bpt..(t + 1) * bpt],
                &cents[c * dim..(c + 1) * dim],
                &mut out[t * dim..(t + 1) * dim],
            );
        }
    }

    /// Exact MaxSim of `q` over `docs`, top `k`.
    fn rank_exact(&self, q: &[f32], docs: Vec<(usize, u32)>, k: usize) -> Vec<Hit> {
        let dim = self.dim();
        let mut scored: Vec<(f32, usize, u32)> = docs
            .into_par_iter()
            .map_init(Scratch::default, |scratch, (s, d)| {
                let mut buf = std::mem::take(&mut scratch.doc);
                self.decode_doc(s, d, &mut buf);
                scratch.doc = buf;
                (scratch.score_decoded(q, dim), s, d)
            })
            .collect();
        top_k(&mut scored, k);
        self.hits(scored)
    }

    fn search_ivf(&self, q: &[f32], p: &SearchParams, allowed: Option<&Allowed>) -> Vec<Hit> {
        let n_candidates = p.n_candidates.max(4 * p.k);
        if let Some(a) = allowed {
            let passing: usize = a.iter().map(|s| s.iter().filter(|&&x| x).count()).sum();
            if passing <= n_candidates {
                return self.rank_exact(q, self.all_docs(allowed), p.k);
            }
        }
        let dim = self.dim();
        let nq = q.len() / dim;
        let k = self.manifest().num_centroids;
        // Centroid-major scores: one row of `nq` per centroid.
        let qct = centroid_scores(q, self.centroids(), dim);

        // Cells to probe.
        let mut probe = vec![false; k];
        match p.candidates {
            Candidates::Hnsw => {
                let g = self
                    .hnsw
                    .get_or_init(|| CentroidGraph::build(self.centroids(), dim));
                for qi in q.chunks_exact(dim) {
                    for n in g
                        .graph
                        .search(qi, p.n_probe.min(k), p.hnsw_ef.max(p.n_probe))
                    {
                        probe[n.d_id] = true;
                    }
                }
            }
            _ => {
                // Per query token, its n_probe best centroids in one pass
                // (a small sorted list each; insertions are rare).
                let n = p.n_probe.min(k);
                let mut tops: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(n + 1); nq];
                for (c, row) in qct.chunks_exact(nq).enumerate() {
                    for (top, &v) in tops.iter_mut().zip(row) {
                        if top.len() < n || v > top[top.len() - 1].0 {
                            let at = top.partition_point(|&(x, _)| x >= v);
                            top.insert(at, (v, c as u32));
                            top.truncate(n);
                        }
                    }
                }
                for &(_, c) in tops.iter().flatten() {
                    probe[c as usize] = true;
                }
            }
        }

        // Candidate documents: union of the probed IVF lists.
        let mut cands = Vec::new();
        for (si, seg) in self.segments().iter().enumerate() {
            let mut seen = vec![false; seg.num_docs()];
            for (c, _) in probe.iter().enumerate().filter(|(_, &p)| p) {
                for &d in seg.ivf_list(c) {
                    if !seen[d as usize] {
                        seen[d as usize] = true;
                        if self.passes(allowed, si, d) {
                            cands.push((si, d));
                        }
                    }
                }
            }
        }
        if allowed.is_some() && cands.len() < p.k {
            return self.rank_exact(q, self.all_docs(allowed), p.k);
        }

        // Approximate scores from centroid codes, pruned centroids (best
        // score under the threshold) contributing 0. The table is quantised
        // to i8 (one 32-byte row per centroid for up to 32 query tokens):
        // the per-token gathers are the cost here, and a quarter of the
        // bytes keeps the table in L2. Approximate scores only choose which
        // documents get the exact re-rank.
        let blocks = nq.div_ceil(I8_LANES);
        let max_abs = qct
            .iter()
            .fold(0.0f32, |m, &x| m.max(x.abs()))
            .max(f32::MIN_POSITIVE);
        let scale = 127.0 / max_abs;
        let mut table = vec![[0i8; I8_LANES]; k * blocks];
        for (row, out) in qct.chunks_exact(nq).zip(table.chunks_exact_mut(blocks)) {
            let best = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            if best >= p.centroid_threshold {
                for (i, &x) in row.iter().enumerate() {
                    out[i / I8_LANES][i % I8_LANES] =
                        (x * scale).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
        let table = &table;
        let mut approx: Vec<(f32, usize, u32)> = cands
            .into_par_iter()
            .map_init(
                || vec![[0i8; I8_LANES]; blocks],
                |acc, (s, d)| {
                    acc.fill([i8::MIN; I8_LANES]);
                    let seg = &self.segments()[s];
                    for &c in &seg.codes()[seg.token_range(d)] {
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
        self.rank_exact(q, approx.into_iter().map(|(_, s, d)| (s, d)).collect(), p.k)
    }
}

impl Index {
    /// BM25 top `k` for free text `query` over titles and texts (tantivy),
    /// filtered before ranking.
    pub fn search_text(&self, query: &str, k: usize, filter: Option<&Filter>) -> Result<Vec<Hit>> {
        if k == 0 {
            return Err(IndexError::InvalidParameter("k must be at least 1".into()));
        }
        if let Some(f) = filter {
            f.validate()?;
        }
        let allowed = self.allowed(filter);
        let mut all: Vec<(f32, usize, u32)> = Vec::new();
        for (si, seg) in self.segments().iter().enumerate() {
            let mask = match &allowed {
                Some(a) => Some(std::sync::Arc::new(a[si].clone())),
                None if !seg.entry.deleted.is_empty() => Some(std::sync::Arc::new(
                    (0..seg.num_docs() as u32).map(|d| seg.is_live(d)).collect(),
                )),
                None => None,
            };
            for (doc, score) in seg.text().search(query, k, mask)? {
                if (doc as usize) < seg.num_docs() && seg.is_live(doc) {
                    all.push((score, si, doc));
                }
            }
        }
        top_k(&mut all, k);
        Ok(self.hits(all))
    }

    /// Reciprocal-rank fusion of MaxSim (`p.candidates`) and BM25 rankings,
    /// each taken to depth `max(k, 100)`.
    pub fn search_hybrid(
        &self,
        query: &TokenVectors,
        text: &str,
        p: &SearchParams,
    ) -> Result<Vec<Hit>> {
        let depth = p.k.max(100);
        let dense = self.search(
            query,
            &SearchParams {
                k: depth,
                ..p.clone()
            },
        )?;
        let sparse = self.search_text(text, depth, p.filter.as_ref())?;
        Ok(rrf(&[dense, sparse], p.k, RRF_K))
    }

    fn hits(&self, scored: Vec<(f32, usize, u32)>) -> Vec<Hit> {
        scored
            .into_iter()
            .map(|(score, segment, doc)| Hit {
                id: self.segments()[segment].external_id(doc).to_owned(),
                score,
                segment,
                doc,
            })
            .collect()
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

/// `out[c][i] = ⟨centroid c, query token i⟩` for the query's `nq` tokens,
/// centroid-major (`k × nq`). One pass over the centroids (read once, in
/// parallel blocks) instead of an SGEMM that would first copy ("pack") the
/// whole centroid matrix for a skinny query.
fn centroid_scores(q: &[f32], centroids: &[f32], dim: usize) -> Vec<f32> {
    let (k, nq) = (centroids.len() / dim, q.len() / dim);
    let q = &q[..nq * dim];
    let mut out = vec![0.0f32; k * nq];
    const BLOCK: usize = 256;
    out.par_chunks_mut(BLOCK * nq)
        .zip(centroids.par_chunks(BLOCK * dim))
        .for_each(|(o, cs)| {
            let mut pairs = cs.chunks_exact(2 * dim).zip(o.chunks_exact_mut(2 * nq));
            for (c, out) in &mut pairs {
                let (c0, c1) = c.split_at(dim);
                let (o0, o1) = out.split_at_mut(nq);
                dot_rows2(c0, c1, q, o0, o1);
            }
            if !cs.len().is_multiple_of(2 * dim) {
                let c = &cs[cs.len() - dim..];
                let last = o.len() - nq;
                dot_rows(c, q, &mut o[last..]);
            }
        });
    out
}

/// The usual RRF constant (Cormack et al., 2009).
pub const RRF_K: f32 = 60.0;

/// Reciprocal-rank fusion: each document scores `Σ 1 / (c + rank)` over the
/// lists it appears in (rank from 1). Ties keep the first list's order.
pub fn rrf(lists: &[Vec<Hit>], k: usize, c: f32) -> Vec<Hit> {
    let mut fused: Vec<Hit> = Vec::new();
    let mut pos: std::collections::HashMap<(usize, u32), usize> = std::collections::HashMap::new();
    for list in lists {
        for (rank, h) in list.iter().enumerate() {
            let add = 1.0 / (c + rank as f32 + 1.0);
            match pos.get(&(h.segment, h.doc)) {
                Some(&i) => fused[i].score += add,
                None => {
                    pos.insert((h.segment, h.doc), fused.len());
                    fused.push(Hit {
                        score: add,
                        ..h.clone()
                    });
                }
            }
        }
    }
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(k);
    fused
}

impl CentroidGraph {
    fn build(centroids: &[f32], dim: usize) -> Self {
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

/// Keeps the `k` best `(score, seg, doc)` in descending score order (ties:
/// segment, then document, ascending — deterministic).
fn top_k(v: &mut Vec<(f32, usize, u32)>, k: usize) {
    let cmp = |a: &(f32, usize, u32), b: &(f32, usize, u32)| {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    };
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, cmp);
        v.truncate(k);
    }
    v.sort_by(cmp);
}
