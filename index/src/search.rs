//! Search: candidate generation, then exact MaxSim on the best candidates.
//!
//! * [`Candidates::Exhaustive`] scores every live document exactly — the
//!   correctness reference.
//! * [`Candidates::Plaid`], PLAID's pipeline: query-token × centroid scores
//!   (8-bit products: AVX-512 VNNI, or AVX2 `vpmaddubsw`), the `n_probe` best cells
//!   per query token; a first approximate score from the IVF lists alone
//!   (per query token, the best of its probed cells the document has a
//!   token in); for the `n_approx` best, a second one from every token's
//!   centroid (centroids whose best query score is under
//!   `centroid_threshold` contribute nothing) — skipped when `n_approx` is
//!   no more than the exact candidates; then exact MaxSim on the
//!   `n_candidates` best after decoding.
//! * [`Candidates::Hnsw`]: like PLAID, but the cells come from an HNSW graph
//!   over the centroids (`hnsw_rs`), built on first use.
//!
//! Filters are applied before ranking: when few documents pass, they are
//! scored exactly; otherwise candidates are restricted to them, and if that
//! leaves fewer than `k`, the passing documents are scored exhaustively.

use std::time::Instant;

use hnsw_rs::prelude::{DistL2, Hnsw};
use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::filter::{FieldValue, Filter};
use crate::index::{Index, StoredDoc};
use crate::linalg::{
    dot, dot_block, dot_block_i8, int8_kernel_enabled, maxsim_rows, norm2, prefetch_line,
    quantize_scores, signed_levels, QuantRows,
};
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
/// synthetic benchmark (`scripts/bench-index`), `n_approx` and
/// `n_candidates` on real 384-dim MiniLM vectors of SciFact with the
/// default residual2 codec (`scripts/bench-search`), and `rerank_budget`
/// on the default model's 128-dim vectors of the SciFact and NFCorpus dev
/// splits at k = 10 (`scripts/bench-fidelity`): the exact re-rank is the
/// stage whose cut cost the most nDCG@10 against exact MaxSim.
#[derive(Debug, Clone)]
pub struct SearchParams {
    pub k: usize,
    pub candidates: Candidates,
    /// Cells probed per query token, at least (for 8,192 cells; scaled with
    /// the cell count, see [`SearchParams::cells_per_token`]).
    pub n_probe: usize,
    /// Probe budget in query tokens × cells: a query of `nq` tokens probes
    /// `probe_budget / nq` cells per token (within `n_probe` and
    /// `max_probe`), so a short query — whose few tokens must find every
    /// relevant document — looks wider. 0: `n_probe` alone.
    pub probe_budget: usize,
    /// At most this many cells per query token.
    pub max_probe: usize,
    /// Centroids whose best query-token score is below this are ignored in
    /// approximate scoring.
    pub centroid_threshold: f32,
    /// Documents kept by the first approximate pass (probed cells only)
    /// for the second (every token's centroid); at least `n_candidates`.
    /// No more than a query's exact candidates (e.g. 1): no second pass —
    /// the first pass's best go straight to the exact re-rank.
    pub n_approx: usize,
    /// Documents re-ranked exactly, at least (and at least `4·k`).
    pub n_candidates: usize,
    /// Exact re-rank budget in query tokens × documents: a query of `nq`
    /// tokens re-ranks `rerank_budget / nq` documents (within
    /// `n_candidates` and `max_candidates`). Short queries have noisier
    /// approximate scores (fewer terms average the centroid error out) and
    /// cost less per document, so they read further; the exact work per
    /// query stays about constant. 0: `n_candidates` alone.
    pub rerank_budget: usize,
    /// At most this many documents re-ranked exactly (unless `4·k` is more).
    pub max_candidates: usize,
    /// HNSW search breadth.
    pub hnsw_ef: usize,
    pub filter: Option<Filter>,
    /// Hybrid search: how the two rankings are fused.
    pub fusion: Fusion,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            k: 10,
            candidates: Candidates::Plaid,
            n_probe: 32,
            probe_budget: 512,
            max_probe: 256,
            centroid_threshold: 0.0,
            n_approx: 1024,
            n_candidates: 64,
            rerank_budget: 4096,
            max_candidates: 1024,
            hnsw_ef: 64,
            filter: None,
            fusion: Fusion::default(),
        }
    }
}

impl SearchParams {
    /// Cells probed per token for a query of `nq` tokens in an index of
    /// `num_centroids` cells. `n_probe` is the floor for 8,192 cells and
    /// grows with the cell count (cells shrink as their number grows: the
    /// same share of the collection is probed), up to `max_probe`; a short
    /// query probes up to `probe_budget / nq`.
    pub fn cells_per_token(&self, nq: usize, num_centroids: usize) -> usize {
        let floor = (self.n_probe * num_centroids / 8192).max(self.n_probe);
        let by_budget = self.probe_budget.checked_div(nq.max(1)).unwrap_or(0);
        floor.max(by_budget).min(self.max_probe.max(self.n_probe))
    }

    /// Documents re-ranked exactly for a query of `nq` tokens.
    pub fn exact_candidates(&self, nq: usize) -> usize {
        let by_budget = self.rerank_budget.checked_div(nq.max(1)).unwrap_or(0);
        by_budget
            .min(self.max_candidates)
            .max(self.n_candidates)
            .max(4 * self.k)
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

/// Recall@k of `got` against `truth` (typically an exact search's hits for
/// the same query): the share of truth's first `k` ids that `got`'s first
/// `k` hold. 0 when `truth` is empty.
pub fn recall_at(truth: &[Hit], got: &[Hit], k: usize) -> f64 {
    let t: std::collections::HashSet<&str> = truth.iter().take(k).map(|h| h.id.as_str()).collect();
    got.iter()
        .take(k)
        .filter(|h| t.contains(h.id.as_str()))
        .count() as f64
        / t.len().max(1) as f64
}

/// Where one search spent its time and how much work each stage did
/// ([`Index::search_with_stats`]); stages a generator skips stay 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchStats {
    /// Query-token × centroid scores, milliseconds.
    pub centroid_ms: f64,
    /// Choosing the cells and collecting their documents, milliseconds.
    pub probe_ms: f64,
    /// Approximate scores of the candidates, milliseconds.
    pub approx_ms: f64,
    /// Decoding and exact MaxSim of the best candidates, milliseconds.
    pub exact_ms: f64,
    /// Cells probed.
    pub cells: usize,
    /// Documents scored approximately.
    pub candidates: usize,
    /// Of those, documents given the second approximate pass (every
    /// token's centroid); 0 where it is skipped.
    pub approx_docs: usize,
    /// Documents scored exactly.
    pub exact_docs: usize,
    /// BM25 search (hybrid only), milliseconds.
    pub text_ms: f64,
}

/// HNSW graph over the index's centroids.
pub struct CentroidGraph {
    graph: Hnsw<'static, f32, DistL2>,
}

type Allowed = Vec<Vec<bool>>;

impl Index {
    /// Top-`k` documents for `query` (before the index's reduction).
    pub fn search(&self, query: &TokenVectors, p: &SearchParams) -> Result<Vec<Hit>> {
        Ok(self.search_with_stats(query, p)?.0)
    }

    /// [`Index::search`], also reporting where the time went.
    pub fn search_with_stats(
        &self,
        query: &TokenVectors,
        p: &SearchParams,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        self.check_query(query, p)?;
        let q = self.prepare_query(query.as_slice());
        let allowed = self.allowed(p.filter.as_ref());
        let mut stats = SearchStats::default();
        let hits = match p.candidates {
            Candidates::Exhaustive => {
                self.rank_exact(&q, self.all_docs(allowed.as_ref()), p.k, &mut stats)
            }
            Candidates::Plaid | Candidates::Hnsw => {
                self.search_ivf(&q, p, allowed.as_ref(), &mut stats)
            }
        };
        Ok((hits, stats))
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

    /// Exact MaxSim of `q` (`nq × dim`) against document `doc` of segment
    /// `seg`, decoding its tokens a tile at a time into `scratch` (the tile
    /// stays in L1 while all query tokens meet it). Renormalisation of
    /// residual codes is applied to the dot products, not the vectors.
    fn score_doc(&self, q: &[f32], seg: usize, doc: u32, scratch: &mut Scratch) -> f32 {
        const TILE: usize = 16;
        let s = &self.segments()[seg];
        let range = s.token_range(doc);
        if range.is_empty() {
            return 0.0;
        }
        let dim = self.dim();
        let codec = self.codec();
        let bpt = codec.bytes_per_token();
        let codes = &s.codes()[range.clone()];
        let bytes = s.vector_bytes(range);
        let cents = self.centroids();
        let nq = q.len() / dim;
        scratch.best.clear();
        scratch.best.resize(nq, f32::NEG_INFINITY);
        // Residual and f16 codes (AVX-512): decoded and scored in one pass.
        if codec.maxsim_fused(q, bytes, codes, cents, &mut scratch.best) {
            return scratch.best.iter().sum();
        }
        scratch.doc.resize(TILE * dim, 0.0);
        scratch.scale.resize(TILE, 1.0);
        for (i, tile) in codes.chunks(TILE).enumerate() {
            let n = tile.len();
            // One call decodes the tile (residual codes read their
            // centroids, the next one prefetched while this one decodes).
            codec.decode_tokens_unscaled(
                &bytes[i * TILE * bpt..(i * TILE + n) * bpt],
                tile,
                cents,
                &mut scratch.doc[..n * dim],
                &mut scratch.scale[..n],
            );
            maxsim_rows(
                q,
                &scratch.doc[..n * dim],
                dim,
                &scratch.scale,
                &mut scratch.best,
            );
        }
        scratch.best.iter().sum()
    }

    /// Exact MaxSim of `q` over `docs`, top `k`.
    fn rank_exact(
        &self,
        q: &[f32],
        docs: Vec<(usize, u32)>,
        k: usize,
        stats: &mut SearchStats,
    ) -> Vec<Hit> {
        let t = Instant::now();
        stats.exact_docs = docs.len();
        let mut scored = self.score_exact(q, &docs);
        top_k(&mut scored, k);
        stats.exact_ms = ms(t);
        self.hits(scored)
    }

    /// Exact MaxSim of each of `docs`, in parallel.
    fn score_exact(&self, q: &[f32], docs: &[(usize, u32)]) -> Vec<(f32, usize, u32)> {
        docs.par_iter()
            .map_init(Scratch::default, |scratch, &(s, d)| {
                (self.score_doc(q, s, d, scratch), s, d)
            })
            .collect()
    }

    fn search_ivf(
        &self,
        q: &[f32],
        p: &SearchParams,
        allowed: Option<&Allowed>,
        stats: &mut SearchStats,
    ) -> Vec<Hit> {
        let n_candidates = p.exact_candidates(q.len() / self.dim());
        if let Some(a) = allowed {
            let passing: usize = a.iter().map(|s| s.iter().filter(|&&x| x).count()).sum();
            if passing <= n_candidates {
                return self.rank_exact(q, self.all_docs(allowed), p.k, stats);
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
            return self.rank_exact(q, self.all_docs(allowed), p.k, stats);
        }
        top_k(&mut cands, p.n_approx.max(n_candidates));
        stats.probe_ms = ms(t);
        if !second_pass {
            TABLE.with(|t| *t.borrow_mut() = std::mem::take(&mut pass.table));
            let best = cands.into_iter().map(|(_, s, d)| (s, d)).collect();
            return self.rank_exact(q, best, p.k, stats);
        }

        // Second approximate pass over the survivors: every token's
        // centroid counts (PLAID's full centroid interaction), read from
        // the i8 table (pruned centroids — best score under the threshold
        // — contribute 0). The per-token gathers are the cost here, and
        // i8 rows keep the table in L2. Approximate scores only choose
        // which documents get the exact re-rank.
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
        self.rank_exact(q, best, p.k, stats)
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
        // One set of BM25 statistics for all segments, so their scores
        // compare (an appended segment's own would be tiny).
        let stats = (self.segments().len() > 1)
            .then(|| crate::text::CorpusStats::new(self.segments().iter().map(|s| s.text())));
        for (si, seg) in self.segments().iter().enumerate() {
            let mask = match &allowed {
                Some(a) => Some(std::sync::Arc::new(a[si].clone())),
                None if !seg.entry.deleted.is_empty() => Some(std::sync::Arc::new(
                    (0..seg.num_docs() as u32).map(|d| seg.is_live(d)).collect(),
                )),
                None => None,
            };
            for (doc, score) in seg.text().search(query, k, mask, stats.as_ref())? {
                if (doc as usize) < seg.num_docs() && seg.is_live(doc) {
                    all.push((score, si, doc));
                }
            }
        }
        top_k(&mut all, k);
        Ok(self.hits(all))
    }

    /// Fusion (`p.fusion`: RRF or a normalised linear combination) of the
    /// MaxSim (`p.candidates`) and BM25 rankings, each taken to depth
    /// `max(k, 100)`.
    pub fn search_hybrid(
        &self,
        query: &TokenVectors,
        text: &str,
        p: &SearchParams,
    ) -> Result<Vec<Hit>> {
        Ok(self.search_hybrid_with_stats(query, text, p)?.0)
    }

    /// [`Index::search_hybrid`], also reporting where the time went (the
    /// BM25 side in [`SearchStats::text_ms`]).
    pub fn search_hybrid_with_stats(
        &self,
        query: &TokenVectors,
        text: &str,
        p: &SearchParams,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        let depth = p.k.max(100);
        let (dense, mut stats) = self.search_with_stats(
            query,
            &SearchParams {
                k: depth,
                ..p.clone()
            },
        )?;
        let t = Instant::now();
        let sparse = self.search_text(text, depth, p.filter.as_ref())?;
        stats.text_ms = ms(t);
        let hits = match p.fusion {
            Fusion::Rrf { c } => rrf(&[dense, sparse], p.k, c),
            Fusion::Linear { bm25_weight } => linear_fusion(&dense, &sparse, p.k, bm25_weight),
        };
        Ok((hits, stats))
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

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
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

/// The usual RRF constant (Cormack et al., 2009).
pub const RRF_K: f32 = 60.0;

/// How hybrid search fuses the MaxSim and BM25 rankings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal-rank fusion with constant `c` (ranks only).
    Rrf { c: f32 },
    /// Score-normalised convex combination: each list's scores min-max
    /// normalised to [0, 1] over its top `depth`, then
    /// `(1 − w)·maxsim + w·bm25` (a document absent from a list gets 0
    /// there).
    Linear { bm25_weight: f32 },
}

impl Default for Fusion {
    /// Chosen on the dev splits of SciFact and NFCorpus and of two
    /// collections the default model was not trained on, Cranfield and
    /// CISI: the best mean nDCG@10 over the four of the weights 0.1 to 0.5
    /// (docs/BENCHMARKS.md).
    fn default() -> Self {
        Self::Linear { bm25_weight: 0.4 }
    }
}

/// Convex combination of min-max normalised scores (see [`Fusion::Linear`]).
pub fn linear_fusion(dense: &[Hit], sparse: &[Hit], k: usize, bm25_weight: f32) -> Vec<Hit> {
    fn normalised(list: &[Hit]) -> impl Iterator<Item = (&Hit, f32)> {
        let hi = list
            .iter()
            .map(|h| h.score)
            .fold(f32::NEG_INFINITY, f32::max);
        let lo = list.iter().map(|h| h.score).fold(f32::INFINITY, f32::min);
        let span = hi - lo;
        list.iter().map(move |h| {
            let x = if span > 0.0 {
                (h.score - lo) / span
            } else {
                1.0
            };
            (h, x)
        })
    }
    let w = bm25_weight.clamp(0.0, 1.0);
    fuse(
        normalised(dense)
            .map(|(h, x)| (h, (1.0 - w) * x))
            .chain(normalised(sparse).map(|(h, x)| (h, w * x))),
        k,
    )
}

/// Sums each document's contributions `(hit, score)` (in order: a
/// document first seen earlier ranks first among equals), best `k` first.
fn fuse<'a>(contributions: impl Iterator<Item = (&'a Hit, f32)>, k: usize) -> Vec<Hit> {
    let mut fused: Vec<Hit> = Vec::new();
    let mut pos: std::collections::HashMap<(usize, u32), usize> = std::collections::HashMap::new();
    for (h, add) in contributions {
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
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(k);
    fused
}

/// Reciprocal-rank fusion: each document scores `Σ 1 / (c + rank)` over the
/// lists it appears in (rank from 1). Ties keep the first list's order.
pub fn rrf(lists: &[Vec<Hit>], k: usize, c: f32) -> Vec<Hit> {
    fuse(
        lists.iter().flat_map(|list| {
            list.iter()
                .enumerate()
                .map(move |(rank, h)| (h, 1.0 / (c + rank as f32 + 1.0)))
        }),
        k,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_truths_first_k_found_in_gots_first_k() {
        let hits = |ids: &[&str]| -> Vec<Hit> {
            ids.iter()
                .map(|id| Hit {
                    id: id.to_string(),
                    score: 0.0,
                    segment: 0,
                    doc: 0,
                })
                .collect()
        };
        let truth = hits(&["a", "b", "c", "d"]);
        assert_eq!(recall_at(&truth, &hits(&["b", "x", "a", "c"]), 2), 0.5);
        assert_eq!(recall_at(&truth, &hits(&["b", "x", "a", "c"]), 4), 0.75);
        assert_eq!(recall_at(&truth, &hits(&["d", "c", "b", "a"]), 10), 1.0);
        assert_eq!(recall_at(&[], &truth, 10), 0.0);
    }

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
