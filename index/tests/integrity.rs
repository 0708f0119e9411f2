//! The corruption matrix: every file of an index of two segments with
//! tombstones — the manifest, centroids, bucket weights, every array of
//! every segment, every file of the text index — flipped, truncated and
//! deleted. Each damaged copy either fails to open with an error naming
//! the file, or (for a damage that changes nothing the index reads) answers
//! every search and document read exactly as the pristine index does.
//! Never a silent wrong answer.

mod common;

use std::path::{Path, PathBuf};

use tessera_index::synthetic::{small_index, Synthetic};
use tessera_index::*;

use common::copy_dir;

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

fn synthetic() -> Synthetic {
    Synthetic::small_index_corpus()
}

/// Everything a reader can observe: MaxSim hits (exhaustive and PLAID),
/// BM25 hits, and every document's stored fields.
fn answers(index: &Index) -> String {
    let mut out = String::new();
    for q in synthetic().queries(60, 4) {
        for c in [Candidates::Exhaustive, Candidates::Plaid] {
            let p = SearchParams {
                k: 10,
                candidates: c,
                ..SearchParams::default()
            };
            let hits = index.search(&q, &p).map(|h| {
                h.into_iter()
                    .map(|h| (h.id, h.score.to_bits()))
                    .collect::<Vec<_>>()
            });
            out += &format!("{c:?} {hits:?}\n");
        }
    }
    let bm25 = index.search_text("synthetic document topics 3", 10, None);
    out += &format!(
        "bm25 {:?}\n",
        bm25.map(|h| h.into_iter().map(|h| h.id).collect::<Vec<_>>())
    );
    for i in 0..60 {
        let d = index.document(&format!("doc{i}"));
        out += &format!(
            "doc{i} {:?}\n",
            d.map(|d| (d.title, d.text, d.metadata.to_string()))
        );
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Delete,
}

fn apply(path: &Path, d: Damage) {
    match d {
        Damage::Delete => std::fs::remove_file(path).unwrap(),
        Damage::Flip => {
            let mut b = std::fs::read(path).unwrap();
            if let Some(mid) = b.len().checked_sub(1).map(|n| n / 2) {
                b[mid] ^= 0x01;
            }
            std::fs::write(path, b).unwrap();
        }
        Damage::Truncate => {
            let b = std::fs::read(path).unwrap();
            std::fs::write(path, &b[..b.len() / 2]).unwrap();
        }
    }
}

#[test]
fn no_damaged_file_gives_a_silent_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("idx");
    small_index(&src, 40).unwrap();
    writer::append(&src, synthetic().documents(40, 20)).unwrap();
    writer::delete(&src, &["doc3", "doc41"]).unwrap();
    let pristine = Index::open(&src).unwrap();
    assert_eq!(pristine.manifest().segments.len(), 2);
    let want = answers(&pristine);
    drop(pristine);

    let files = files_under(&src);
    let (mut refused, mut harmless) = (0, Vec::new());
    for file in &files {
        for d in [Damage::Flip, Damage::Truncate, Damage::Delete] {
            let copy = tempfile::tempdir().unwrap();
            let dst = copy.path().join("idx");
            copy_dir(&src, &dst);
            apply(&dst.join(file), d);
            match Index::open(&dst) {
                Err(e) => {
                    // The error names the damaged file (a damaged text
                    // file may be named by its folder).
                    let e = e.to_string();
                    let name = file.file_name().unwrap().to_string_lossy();
                    let folder = file.parent().map(|p| p.to_string_lossy().into_owned());
                    assert!(
                        e.contains(&*name)
                            || folder.is_some_and(|f| !f.is_empty() && e.contains(&f)),
                        "{} {d:?}: the error does not name it: {e}",
                        file.display()
                    );
                    refused += 1;
                }
                Ok(ix) => {
                    assert_eq!(
                        answers(&ix),
                        want,
                        "{} {d:?}: opened and answered differently",
                        file.display()
                    );
                    harmless.push(format!("{} {d:?}", file.display()));
                }
            }
        }
    }
    eprintln!(
        "{} files × 3 damages: {refused} refused by name, {} opened with the same answers: {harmless:?}",
        files.len(),
        harmless.len()
    );
    // Every file the manifest lists is checked: only files it does not
    // list (tantivy's own bookkeeping) may be damaged without a refusal.
    let manifest = manifest::Manifest::load(&src).unwrap();
    let listed = |f: &Path| {
        let s = f.to_string_lossy();
        s == "manifest.json"
            || manifest.files.contains_key(&*s)
            || manifest.segments.iter().any(|seg| {
                s.strip_prefix(&format!("{}/", seg.name))
                    .is_some_and(|rest| seg.files.contains_key(rest))
            })
    };
    for h in &harmless {
        let f = Path::new(h.split(' ').next().unwrap());
        assert!(
            !listed(f) || h.starts_with("manifest.json Flip"),
            "{h}: a listed file was damaged and still opened"
        );
    }
    assert!(
        refused >= 52,
        "{refused} refusals over {} files",
        files.len()
    );
}
