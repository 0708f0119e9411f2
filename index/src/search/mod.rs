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
//!
//! The candidate generators and fusion live in their own modules:
//! `plaid` (centroid scoring, probing, the approximate passes, over
//! cells from the centroids or from [`crate::hnsw`]) and `fusion` (BM25 and hybrid ranking).

use std::time::Instant;

use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::filter::{FieldValue, Filter};
use crate::index::{Index, StoredDoc};
use crate::linalg::maxsim_rows;
use crate::maxsim::Scratch;
use crate::vectors::TokenVectors;

mod fusion;
mod plaid;

pub use crate::hnsw::CentroidGraph;
pub use fusion::{linear_fusion, rrf, Fusion, RRF_K};

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
    /// When to give up (a deadline, a caller gone): checked between blocks
    /// of work; a stopped search returns [`crate::IndexError::Stopped`].
    pub stop: crate::Stop,
    /// BM25 statistics of a whole collection this index is one shard of
    /// (its own when `None`).
    pub bm25_stats: Option<std::sync::Arc<crate::text::TermStats>>,
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
            stop: crate::Stop::never(),
            bm25_stats: None,
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

/// Per segment, per document: whether it passes the filter.
pub(crate) type Allowed = Vec<Vec<bool>>;

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
        p.stop.check()?;
        let hits = match p.candidates {
            Candidates::Exhaustive => self.rank_exact(
                &q,
                self.all_docs(allowed.as_ref()),
                p.k,
                &p.stop,
                &mut stats,
            )?,
            Candidates::Plaid | Candidates::Hnsw => {
                self.search_ivf(&q, p, allowed.as_ref(), &mut stats)?
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

    pub(crate) fn check_query(&self, query: &TokenVectors, p: &SearchParams) -> Result<()> {
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
    pub(crate) fn allowed(&self, filter: Option<&Filter>) -> Option<Allowed> {
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

    pub(crate) fn passes(&self, allowed: Option<&Allowed>, seg: usize, doc: u32) -> bool {
        match allowed {
            Some(a) => a[seg][doc as usize],
            None => self.segments()[seg].is_live(doc),
        }
    }

    pub(crate) fn all_docs(&self, allowed: Option<&Allowed>) -> Vec<(usize, u32)> {
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
    pub(crate) fn score_doc(&self, q: &[f32], seg: usize, doc: u32, scratch: &mut Scratch) -> f32 {
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
    pub(crate) fn rank_exact(
        &self,
        q: &[f32],
        docs: Vec<(usize, u32)>,
        k: usize,
        stop: &crate::Stop,
        stats: &mut SearchStats,
    ) -> Result<Vec<Hit>> {
        let t = Instant::now();
        stats.exact_docs = docs.len();
        let mut scored = self.score_exact_until(q, &docs, stop)?;
        top_k(&mut scored, k);
        stats.exact_ms = ms(t);
        Ok(self.hits(scored))
    }

    /// Exact MaxSim of each of `docs`, in parallel, checking `stop` before
    /// each document (an atomic load and a clock read: nanoseconds against
    /// a document's microseconds) and giving up at the first refusal.
    fn score_exact_until(
        &self,
        q: &[f32],
        docs: &[(usize, u32)],
        stop: &crate::Stop,
    ) -> Result<Vec<(f32, usize, u32)>> {
        let scored: Option<Vec<_>> = docs
            .par_iter()
            .map_init(Scratch::default, |scratch, &(s, d)| {
                stop.check()
                    .ok()
                    .map(|()| (self.score_doc(q, s, d, scratch), s, d))
            })
            .collect();
        match scored {
            Some(v) => Ok(v),
            None => Err(stop
                .check()
                .err()
                .unwrap_or(IndexError::Stopped { deadline: false })),
        }
    }
}

pub(crate) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Keeps the `k` best `(score, seg, doc)` in descending score order (ties:
/// segment, then document, ascending — deterministic).
pub(crate) fn top_k(v: &mut Vec<(f32, usize, u32)>, k: usize) {
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
}
