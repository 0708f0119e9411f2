//! Fuzz the index open path: replace one file of a small valid index with
//! the fuzzer's bytes, then open, verify and search. Any panic, abort or
//! out-of-bounds read is a bug.
//!
//! ```text
//! cd index/fuzz && cargo +nightly fuzz run open_index -- -max_total_time=600
//! ```
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_index::synthetic::small_index;
use tessera_index::*;

struct Pristine {
    _dir: tempfile::TempDir,
    path: PathBuf,
    files: Vec<PathBuf>,
    scratch: tempfile::TempDir,
}

fn pristine() -> &'static Pristine {
    static P: OnceLock<Pristine> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx");
        let files = small_index(&path, 20).unwrap();
        Pristine { _dir: dir, path, files, scratch: tempfile::tempdir().unwrap() }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let p = pristine();
    let dst = p.scratch.path().join("idx");
    let _ = std::fs::remove_dir_all(&dst);
    for f in &p.files {
        let to = dst.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(p.path.join(f), &to).unwrap();
    }
    let target = &p.files[selector as usize % p.files.len()];
    std::fs::write(dst.join(target), payload).unwrap();
    if let Ok(index) = Index::open(&dst) {
        let _ = index.verify();
        let q = TokenVectors::new(index.query_dim(), vec![0.25; index.query_dim() * 2]).unwrap();
        for c in [Candidates::Exhaustive, Candidates::Plaid] {
            let params = SearchParams { k: 3, candidates: c, ..SearchParams::default() };
            let _ = index.search(&q, &params);
        }
    }
});
