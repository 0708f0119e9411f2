//! Helpers shared by the index's end-to-end tests: a small synthetic
//! corpus, builds, options and a brute-force MaxSim reference.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

use tessera_index::synthetic::Synthetic;
use tessera_index::*;

/// Copies an index folder (recursively), for tests that damage a copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

pub fn small() -> Synthetic {
    Synthetic {
        dim: 32,
        topics: 64,
        min_len: 5,
        max_len: 40,
        noise: 0.5,
        seed: 3,
    }
}

pub fn build(dir: &Path, docs: Vec<Document>, opts: BuildOptions) -> BuildStats {
    let mut b = IndexBuilder::create(dir, opts).unwrap();
    for d in docs {
        b.add(d).unwrap();
    }
    b.finish(&mut |_| {}).unwrap()
}

pub fn opts(codec: &str) -> BuildOptions {
    BuildOptions {
        codec: codec.parse().unwrap(),
        ..BuildOptions::default()
    }
}

pub fn exact(k: usize) -> SearchParams {
    SearchParams {
        k,
        candidates: Candidates::Exhaustive,
        ..SearchParams::default()
    }
}

/// Brute-force MaxSim over the original vectors.
pub fn brute(docs: &[Document], q: &TokenVectors, k: usize) -> Vec<(String, f32)> {
    let mut s: Vec<(String, f32)> = docs
        .iter()
        .map(|d| (d.id.clone(), maxsim(q, &d.vectors).unwrap()))
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1));
    s.truncate(k);
    s
}
