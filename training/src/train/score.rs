//! Exact MaxSim of queries over fixed candidate pools, with a trainee's
//! current head (and backbone): the fast dev validation of training, and
//! the evaluation of any head over cached backbone states without running
//! the backbone again.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::{loss, Texts, Trainee};
use crate::tokenize::TextKind;

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
    let _ng = tch::no_grad_guard();
    let mut parts = Vec::new();
    let mut spans = HashMap::with_capacity(items.len());
    let mut at = 0i64;
    let mut k = trainee.spec.out_dim;
    for group in items.chunks(chunk.max(1)) {
        let (states, mask) = trainee.states(texts, group, kind);
        let y = trainee.project(&states);
        k = y.size()[2];
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
    parts.push(Tensor::zeros([1, k], (Kind::Float, trainee.device)));
    Projected {
        vectors: Tensor::cat(&parts, 0),
        spans,
    }
}

/// MaxSim of query `q` (projected) against `pool` (projected docs).
pub fn score_pool(queries: &Projected, q: usize, docs: &Projected, pool: &[usize]) -> Vec<f32> {
    let _ng = tch::no_grad_guard();
    if pool.is_empty() {
        return Vec::new();
    }
    let (qs, ql) = queries.spans[&q];
    let qv = queries.vectors.narrow(0, qs, ql.max(0)).unsqueeze(0);
    let qm = Tensor::ones([1, ql], (Kind::Float, qv.device()));
    let pad = docs.vectors.size()[0] - 1;
    let width = pool
        .iter()
        .map(|d| docs.spans[d].1)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut idx = vec![pad; pool.len() * width as usize];
    let mut mask = vec![0f32; pool.len() * width as usize];
    for (r, d) in pool.iter().enumerate() {
        let (s, l) = docs.spans[d];
        for j in 0..l {
            idx[r * width as usize + j as usize] = s + j;
            mask[r * width as usize + j as usize] = 1.0;
        }
    }
    let device = qv.device();
    let idx = Tensor::from_slice(&idx).to_device(device);
    let k = docs.vectors.size()[1];
    let dv = docs
        .vectors
        .index_select(0, &idx)
        .view([pool.len() as i64, width, k]);
    let dm = Tensor::from_slice(&mask)
        .view([pool.len() as i64, width])
        .to_device(device);
    let s = loss::maxsim(&qv, &qm, &dv, &dm);
    Vec::try_from(s.view([-1]).to_device(Device::Cpu)).expect("scores")
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
    dev.items
        .iter()
        .map(|(q, pool)| {
            let s = score_pool(&pq, *q, &pd, pool);
            pool.iter().copied().zip(s).collect()
        })
        .collect()
}
