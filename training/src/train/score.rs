//! Exact MaxSim of queries over fixed candidate pools, with a trainee's
//! current head (and backbone): the fast dev validation of training, and
//! the evaluation of any head over cached backbone states without running
//! the backbone again.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::{loss, Texts, Trainee};
use tessera_model::tokenize::TextKind;

/// Texts with the head applied: all their kept token vectors in one
/// `[tokens + 1, k]` tensor (the last row zeros, for padding) and each
/// text's (start, len) in it.
pub struct Projected {
    pub vectors: Tensor,
    pub spans: HashMap<usize, (i64, i64)>,
}

/// Projects `items` of `texts` through the trainee, `chunk` texts at a time.
pub fn project(
    trainee: &Trainee<'_>,
    texts: &Texts,
    items: &[usize],
    kind: TextKind,
    chunk: usize,
) -> Projected {
    project_by(
        items,
        chunk,
        trainee.device,
        &|group| trainee.states(texts, group, kind),
        &|states| trainee.project(states),
    )
}

/// [`project`] with any source of `(states, keep-mask)` batches and any
/// head (`[n, L, d]` → `[n, L, k]`, normalised).
pub fn project_by(
    items: &[usize],
    chunk: usize,
    device: Device,
    states: &dyn Fn(&[usize]) -> (Tensor, Tensor),
    head: &dyn Fn(&Tensor) -> Tensor,
) -> Projected {
    let _ng = tch::no_grad_guard();
    let mut parts = Vec::new();
    let mut spans = HashMap::with_capacity(items.len());
    let mut at = 0i64;
    let mut k = None;
    for group in items.chunks(chunk.max(1)) {
        let (states, mask) = states(group);
        let y = head(&states);
        k = Some(y.size()[2]);
        let keep = mask.gt(0.0);
        let counts: Vec<i64> = Vec::try_from(
            keep.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)
                .to_device(Device::Cpu),
        )
        .expect("counts");
        let flat = y.index(&[Some(keep)]);
        for (&i, &c) in group.iter().zip(&counts) {
            spans.insert(i, (at, c));
            at += c;
        }
        parts.push(flat);
    }
    parts.push(Tensor::zeros([1, k.unwrap_or(1)], (Kind::Float, device)));
    Projected {
        vectors: Tensor::cat(&parts, 0),
        spans,
    }
}

impl Projected {
    /// Items as a padded batch: `[n, L, k]` vectors (zeros at padding) and
    /// the `[n, L]` mask of real tokens.
    pub fn batch(&self, items: &[usize]) -> (Tensor, Tensor) {
        let pad = self.vectors.size()[0] - 1;
        let width = items
            .iter()
            .map(|d| self.spans[d].1)
            .max()
            .unwrap_or(1)
            .max(1) as usize;
        let mut idx = vec![pad; items.len() * width];
        let mut mask = vec![0f32; items.len() * width];
        for (r, d) in items.iter().enumerate() {
            let (s, l) = self.spans[d];
            for j in 0..l as usize {
                idx[r * width + j] = s + j as i64;
                mask[r * width + j] = 1.0;
            }
        }
        let device = self.vectors.device();
        let idx = Tensor::from_slice(&idx).to_device(device);
        let k = self.vectors.size()[1];
        let n = items.len() as i64;
        let v = self
            .vectors
            .index_select(0, &idx)
            .view([n, width as i64, k]);
        let m = Tensor::from_slice(&mask)
            .view([n, width as i64])
            .to_device(device);
        (v, m)
    }

    /// The same texts with `f` applied to every vector (the padding row
    /// too; it stays masked).
    pub fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        let _ng = tch::no_grad_guard();
        Self {
            vectors: f(&self.vectors),
            spans: self.spans.clone(),
        }
    }
}

/// MaxSim of query `q` (projected) against `pool` (projected docs).
pub fn score_pool(queries: &Projected, q: usize, docs: &Projected, pool: &[usize]) -> Vec<f32> {
    let _ng = tch::no_grad_guard();
    if pool.is_empty() {
        return Vec::new();
    }
    let (qv, qm) = queries.batch(&[q]);
    // Documents a block at a time: a whole corpus as the pool (zero-shot
    // validation) stays within a few hundred MB.
    let mut out = Vec::with_capacity(pool.len());
    for block in pool.chunks(POOL_BLOCK) {
        let (dv, dm) = docs.batch(block);
        let s = loss::maxsim(&qv, &qm, &dv, &dm);
        out.extend(Vec::<f32>::try_from(s.view([-1]).to_device(Device::Cpu)).expect("scores"));
    }
    out
}

/// Documents scored together by [`score_pool`].
const POOL_BLOCK: usize = 512;

/// Scores every `(query, pool)` item over projected texts: per item,
/// (document position, score).
pub fn score_items(
    queries: &Projected,
    docs: &Projected,
    items: &[(usize, Vec<usize>)],
) -> Vec<Vec<(usize, f32)>> {
    // One pool for every query (a whole corpus): each block of documents
    // is gathered once for all queries instead of once per query.
    if let Some((_, first)) = items.first() {
        if items.len() > 1 && items.iter().all(|(_, p)| p == first) {
            let qs: Vec<usize> = items.iter().map(|(q, _)| *q).collect();
            return score_shared_pool(queries, &qs, docs, first)
                .into_iter()
                .map(|s| first.iter().copied().zip(s).collect())
                .collect();
        }
    }
    items
        .iter()
        .map(|(q, pool)| {
            let s = score_pool(queries, *q, docs, pool);
            pool.iter().copied().zip(s).collect()
        })
        .collect()
}

/// Queries scored together against a block of documents by
/// [`score_shared_pool`].
const QUERY_BLOCK: usize = 32;
/// Documents per block of [`score_shared_pool`].
const SHARED_DOC_BLOCK: usize = 64;

/// MaxSim of every query of `qs` against every document of `pool`: per
/// query, the scores in `pool`'s order.
pub fn score_shared_pool(
    queries: &Projected,
    qs: &[usize],
    docs: &Projected,
    pool: &[usize],
) -> Vec<Vec<f32>> {
    let _ng = tch::no_grad_guard();
    let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(pool.len()); qs.len()];
    let qbatches: Vec<(Tensor, Tensor)> =
        qs.chunks(QUERY_BLOCK).map(|c| queries.batch(c)).collect();
    for block in pool.chunks(SHARED_DOC_BLOCK) {
        let (dv, dm) = docs.batch(block);
        for (bi, (qv, qm)) in qbatches.iter().enumerate() {
            let s = loss::maxsim(qv, qm, &dv, &dm).to_device(Device::Cpu);
            let n = block.len();
            let flat: Vec<f32> = Vec::try_from(s.view([-1])).expect("scores");
            for (r, row) in flat.chunks(n).enumerate() {
                out[bi * QUERY_BLOCK + r].extend_from_slice(row);
            }
        }
    }
    out
}

/// A dev split for validation: queries with their fixed candidate pools.
pub struct DevSet {
    pub name: String,
    pub queries: Texts,
    pub docs: Texts,
    /// (query position, candidate document positions).
    pub items: Vec<(usize, Vec<usize>)>,
}

/// Scores every pool of `dev`: per item, (document position, score).
pub fn score_dev(trainee: &Trainee<'_>, dev: &DevSet) -> Vec<Vec<(usize, f32)>> {
    let mut docs: Vec<usize> = dev
        .items
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    docs.sort_unstable();
    docs.dedup();
    let queries: Vec<usize> = dev.items.iter().map(|(q, _)| *q).collect();
    let pd = project(trainee, &dev.docs, &docs, TextKind::Document, 64);
    let pq = project(trainee, &dev.queries, &queries, TextKind::Query, 256);
    score_items(&pq, &pd, &dev.items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Random texts of 1–5 tokens, projected (normalised rows).
    fn texts(n: usize, seed: i64) -> Projected {
        tch::manual_seed(seed);
        let lens: Vec<i64> = (0..n).map(|i| 1 + (i as i64 * 7 + seed) % 5).collect();
        let total: i64 = lens.iter().sum();
        let v = loss::normalise(&Tensor::randn([total, 8], (Kind::Float, Device::Cpu)));
        let mut spans = HashMap::new();
        let mut at = 0;
        for (i, l) in lens.iter().enumerate() {
            spans.insert(i, (at, *l));
            at += l;
        }
        Projected {
            vectors: Tensor::cat(&[v, Tensor::zeros([1, 8], (Kind::Float, Device::Cpu))], 0),
            spans,
        }
    }

    #[test]
    fn a_shared_pool_scores_as_each_query_alone() {
        let (q, d) = (texts(40, 1), texts(150, 2));
        let pool: Vec<usize> = (0..150).rev().collect();
        let items: Vec<(usize, Vec<usize>)> = (0..40).map(|i| (i, pool.clone())).collect();
        let shared = score_items(&q, &d, &items);
        for (i, row) in shared.iter().enumerate() {
            let alone = score_pool(&q, i, &d, &pool);
            assert_eq!(row.len(), pool.len());
            for ((doc, s), (want_doc, a)) in row.iter().zip(pool.iter().zip(&alone)) {
                assert_eq!(doc, want_doc);
                assert!((s - a).abs() < 1e-5, "query {i}: {s} vs {a}");
            }
        }
    }
}
