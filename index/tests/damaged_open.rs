//! Property test of the open path: whatever happens to an index's files —
//! truncation, appended junk, flipped bytes, a damaged manifest — `open`,
//! `verify` and `search` return errors or results, never panic or read out
//! of bounds. (The cargo-fuzz target in `index/fuzz/` drives the same code
//! with coverage guidance.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use tessera_index::synthetic::small_index;
use tessera_index::*;

use common::copy_dir;

fn pristine() -> &'static (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    static P: OnceLock<(tempfile::TempDir, PathBuf, Vec<PathBuf>)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx");
        let files = small_index(&path, 40).unwrap();
        (dir, path, files)
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(f64),
    Append(Vec<u8>),
    Overwrite { at: f64, bytes: Vec<u8> },
    ManifestEdit { at: f64, text: String },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
        (0.0..1.0f64, "[0-9\\-\"{}\\[\\],:a-z ]{1,12}")
            .prop_map(|(at, text)| Damage::ManifestEdit { at, text }),
    ]
}

fn apply(path: &Path, d: &Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match d {
        Damage::Truncate(f) => bytes.truncate((bytes.len() as f64 * f) as usize),
        Damage::Append(extra) => bytes.extend_from_slice(extra),
        Damage::Overwrite { at, bytes: b } => {
            let start = ((bytes.len() as f64) * at) as usize;
            for (i, x) in b.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(start + i) {
                    *slot = *x;
                }
            }
        }
        Damage::ManifestEdit { at, text } => {
            let mut s = String::from_utf8_lossy(&bytes).into_owned();
            let mut i = ((s.len() as f64) * at) as usize;
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            let end = (i + text.len()).min(s.len());
            let mut end = end;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.replace_range(i..end, text);
            bytes = s.into_bytes();
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn exercise(path: &Path) {
    let Ok(index) = Index::open(path) else { return };
    let _ = index.verify();
    let q = TokenVectors::new(index.query_dim(), vec![0.25; index.query_dim() * 3]).unwrap();
    for c in [Candidates::Exhaustive, Candidates::Plaid] {
        let p = SearchParams {
            k: 5,
            candidates: c,
            ..SearchParams::default()
        };
        let _ = index.search(&q, &p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn damaged_index_never_panics(file in 0usize..64, d in damage(), manifest in any::<bool>()) {
        let (_keep, src, files) = pristine();
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("idx");
        copy_dir(src, &dst);
        let target = if manifest { PathBuf::from("manifest.json") } else { files[file % files.len()].clone() };
        apply(&dst.join(&target), &d);
        exercise(&dst);
    }
}

#[test]
fn pristine_index_opens_and_verifies() {
    let (_keep, src, files) = pristine();
    assert!(files.len() >= 11, "{files:?}");
    let index = Index::open(src).unwrap();
    index.verify().unwrap();
}
