//! BM25 ranking (tantivy) and hybrid fusion of MaxSim with BM25: linear
//! (min-max normalised scores) or reciprocal-rank.

use std::time::Instant;

use crate::error::{IndexError, Result};
use crate::filter::Filter;
use crate::index::Index;
use crate::vectors::TokenVectors;

use super::{ms, top_k, Hit, SearchParams, SearchStats};

impl Index {
    /// BM25 top `k` for free text `query` over titles and texts (tantivy),
    /// filtered before ranking.
    pub fn search_text(&self, query: &str, k: usize, filter: Option<&Filter>) -> Result<Vec<Hit>> {
        self.search_text_until(query, k, filter, &crate::Stop::never())
    }

    /// [`Index::search_text`] that gives up when `stop` says so (checked
    /// per segment).
    pub fn search_text_until(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
        stop: &crate::Stop,
    ) -> Result<Vec<Hit>> {
        self.search_text_with(query, k, filter, stop, None)
    }

    /// This index's BM25 statistics for `query`'s terms, summed over its
    /// segments (see [`crate::text::TermStats`]).
    pub fn term_stats(&self, query: &str) -> Result<crate::text::TermStats> {
        let mut all = crate::text::TermStats::default();
        for seg in self.segments() {
            all.add(&seg.text().term_stats(query)?);
        }
        Ok(all)
    }

    /// [`Index::search_text_until`] scoring with `stats` — the statistics of
    /// a whole collection this index is one shard of — instead of its own.
    pub fn search_text_with(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
        stop: &crate::Stop,
        stats: Option<&crate::text::TermStats>,
    ) -> Result<Vec<Hit>> {
        stop.check()?;
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
        let own = (stats.is_none() && self.segments().len() > 1)
            .then(|| crate::text::CorpusStats::new(self.segments().iter().map(|s| s.text())));
        let stats: Option<&dyn tantivy::query::Bm25StatisticsProvider> = match (stats, &own) {
            (Some(s), _) => Some(s),
            (None, Some(o)) => Some(o),
            (None, None) => None,
        };
        for (si, seg) in self.segments().iter().enumerate() {
            stop.check()?;
            let mask = match &allowed {
                Some(a) => Some(std::sync::Arc::new(a[si].clone())),
                None if !seg.entry.deleted.is_empty() => Some(std::sync::Arc::new(
                    (0..seg.num_docs() as u32).map(|d| seg.is_live(d)).collect(),
                )),
                None => None,
            };
            for (doc, score) in seg.text().search(query, k, mask, stats)? {
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
        let sparse = self.search_text_with(
            text,
            depth,
            p.filter.as_ref(),
            &p.stop,
            p.bm25_stats.as_deref(),
        )?;
        stats.text_ms = ms(t);
        let hits = match p.fusion {
            Fusion::Rrf { c } => rrf(&[dense, sparse], p.k, c),
            Fusion::Linear { bm25_weight } => linear_fusion(&dense, &sparse, p.k, bm25_weight),
        };
        Ok((hits, stats))
    }

    pub(crate) fn hits(&self, scored: Vec<(f32, usize, u32)>) -> Vec<Hit> {
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
