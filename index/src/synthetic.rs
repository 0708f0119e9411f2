//! Clustered synthetic token vectors for tests and benchmarks (fixed seed).
//!
//! Tokens are drawn around `topics` random unit centres with Gaussian-ish
//! noise, each document mixing a few topics, then normalised — a rough
//! stand-in for ColBERT vectors, whose tokens cluster by meaning. Queries are
//! built the same way from a document's topics, so they have true neighbours.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::document::Document;
use crate::linalg::normalise;
use crate::vectors::TokenVectors;

/// Parameters of a synthetic corpus.
#[derive(Debug, Clone, Copy)]
pub struct Synthetic {
    pub dim: usize,
    pub topics: usize,
    pub min_len: usize,
    pub max_len: usize,
    pub noise: f32,
    pub seed: u64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Self {
            dim: 128,
            topics: 1024,
            min_len: 30,
            max_len: 200,
            noise: 0.35,
            seed: 7,
        }
    }
}

impl Synthetic {
    /// Topic centres, in families of 16 around shared parents, so that
    /// document similarity decays gradually rather than in one step.
    fn centres(&self) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let d = self.dim;
        let parents: Vec<Vec<f32>> = (0..self.topics.div_ceil(16))
            .map(|_| {
                let mut v: Vec<f32> = (0..d).map(|_| gauss(&mut rng)).collect();
                normalise(&mut v);
                v
            })
            .collect();
        let mut c = Vec::with_capacity(self.topics * d);
        for t in 0..self.topics {
            let p = &parents[t / 16];
            let mut v: Vec<f32> = p
                .iter()
                .map(|x| x + 0.8 * gauss(&mut rng) / (d as f32).sqrt())
                .collect();
            normalise(&mut v);
            c.extend(v);
        }
        c
    }

    fn tokens(&self, rng: &mut StdRng, centres: &[f32], topics: &[usize], n: usize) -> Vec<f32> {
        let d = self.dim;
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let t = topics[rng.gen_range(0..topics.len())];
            let scale = self.noise / (d as f32).sqrt();
            let mut v: Vec<f32> = centres[t * d..(t + 1) * d]
                .iter()
                .map(|c| c + scale * gauss(rng))
                .collect();
            normalise(&mut v);
            out.extend(v);
        }
        out
    }

    /// Documents `first..first+count` (deterministic per index).
    pub fn documents(&self, first: usize, count: usize) -> Vec<Document> {
        let centres = self.centres();
        (first..first + count)
            .map(|i| {
                let mut rng = StdRng::seed_from_u64(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let topics: Vec<usize> = (0..4).map(|_| rng.gen_range(0..self.topics)).collect();
                let n = rng.gen_range(self.min_len..=self.max_len);
                let v = self.tokens(&mut rng, &centres, &topics, n);
                Document {
                    id: format!("doc{i}"),
                    vectors: TokenVectors::new(self.dim, v).expect("whole rows"),
                    title: format!("Document {i}"),
                    text: format!("synthetic document number {i} about topics {topics:?}"),
                    metadata: serde_json::json!({"n": i, "parity": if i % 2 == 0 { "even" } else { "odd" }}),
                }
            })
            .collect()
    }

    /// `count` queries of 32 tokens, each from the topics of a random
    /// document among the first `docs`.
    pub fn queries(&self, docs: usize, count: usize) -> Vec<TokenVectors> {
        let centres = self.centres();
        (0..count)
            .map(|i| {
                let mut rng =
                    StdRng::seed_from_u64(self.seed.wrapping_add(1_000_003 * (i as u64 + 1)));
                let doc = rng.gen_range(0..docs.max(1));
                let mut drng = StdRng::seed_from_u64(
                    self.seed ^ (doc as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let topics: Vec<usize> = (0..4).map(|_| drng.gen_range(0..self.topics)).collect();
                let v = self.tokens(&mut rng, &centres, &topics[..2], 32);
                TokenVectors::new(self.dim, v).expect("whole rows")
            })
            .collect()
    }
}

/// Standard normal sample (Box–Muller).
fn gauss(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Synthetic {
    /// The corpus of [`small_index`]: 16-dim, 8 topics, 2–12 tokens per
    /// document, fixed seed — documents past the first `docs` extend it.
    pub fn small_index_corpus() -> Self {
        Synthetic {
            dim: 16,
            topics: 8,
            min_len: 2,
            max_len: 12,
            noise: 0.5,
            seed: 1,
        }
    }
}

/// Builds a small valid index of `docs` documents (16-dim, fixed seed) at
/// `path` and returns its files, relative to `path` and sorted: the
/// starting point of the damaged-file property test and the fuzz target.
pub fn small_index(path: &std::path::Path, docs: usize) -> crate::Result<Vec<std::path::PathBuf>> {
    let syn = Synthetic::small_index_corpus();
    let mut b = crate::IndexBuilder::create(path, crate::BuildOptions::default())?;
    for d in syn.documents(0, docs) {
        b.add(d)?;
    }
    b.finish(&mut |_| {})?;
    let mut files = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| crate::IndexError::io(&dir, e))? {
            let p = e.map_err(|e| crate::IndexError::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(path) {
                files.push(rel.to_owned());
            }
        }
    }
    files.sort();
    Ok(files)
}
