//! End-to-end tests of the index: build, open, search, update, crash safety
//! and damaged files (BM25 and fusion: `text.rs`).

mod common;

use common::*;
use tessera_index::*;

#[test]
fn f32_exhaustive_search_equals_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let docs = small().documents(0, 300);
    let stats = build(&path, docs.clone(), opts("f32"));
    assert_eq!((stats.docs, stats.dim), (300, 32));
    let index = Index::open(&path).unwrap();
    assert_eq!(index.num_docs(), 300);
    for q in small().queries(300, 10) {
        let want = brute(&docs, &q, 10);
        let got = index.search(&q, &exact(10)).unwrap();
        let got: Vec<(String, f32)> = got.into_iter().map(|h| (h.id, h.score)).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-4, "{g:?} vs {w:?}");
        }
        assert_eq!(
            got.iter().map(|g| &g.0).collect::<Vec<_>>(),
            want.iter().map(|w| &w.0).collect::<Vec<_>>()
        );
    }
    let d = index.document("doc7").unwrap();
    assert_eq!(d.title, "Document 7");
    assert_eq!(d.metadata["n"], 7);
}

#[test]
fn every_codec_ranks_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let docs = small().documents(0, 400);
    let queries = small().queries(400, 20);
    let f32_path = dir.path().join("f32");
    build(&f32_path, docs.clone(), opts("f32"));
    let reference = Index::open(&f32_path).unwrap();
    for (codec, min_recall, max_bpt) in [
        ("f16", 0.99, 4.0 + 64.0 + 1.0),
        ("int8", 0.95, 4.0 + 36.0 + 1.0),
        ("residual4", 0.85, 4.0 + 16.0 + 1.0),
        ("residual2", 0.7, 4.0 + 8.0 + 1.0),
        ("residual1", 0.5, 4.0 + 4.0 + 1.0),
    ] {
        let path = dir.path().join(codec);
        let stats = build(&path, docs.clone(), opts(codec));
        assert!(
            stats.bytes_per_token <= max_bpt,
            "{codec}: {} bytes/token",
            stats.bytes_per_token
        );
        let index = Index::open(&path).unwrap();
        let mut r = 0.0;
        for q in &queries {
            r += recall_at(
                &reference.search(q, &exact(10)).unwrap(),
                &index.search(q, &exact(10)).unwrap(),
                10,
            );
        }
        r /= queries.len() as f64;
        assert!(r >= min_recall, "{codec}: recall@10 {r}");
    }
}

#[test]
fn plaid_and_hnsw_find_what_exhaustive_finds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    build(&path, small().documents(0, 600), opts("residual2"));
    let index = Index::open(&path).unwrap();
    // With the second approximate pass (the default) and without it
    // (n_approx 1: the first pass's best are re-ranked exactly).
    for (cand, n_approx, floor) in [
        (Candidates::Plaid, 1024, 0.95),
        (Candidates::Hnsw, 1024, 0.95),
        (Candidates::Plaid, 1, 0.9),
        (Candidates::Hnsw, 1, 0.9),
    ] {
        let p = SearchParams {
            k: 10,
            candidates: cand,
            n_approx,
            ..SearchParams::default()
        };
        let mut r = 0.0;
        let qs = small().queries(600, 20);
        for q in &qs {
            r += recall_at(
                &index.search(q, &exact(10)).unwrap(),
                &index.search(q, &p).unwrap(),
                10,
            );
        }
        r /= qs.len() as f64;
        assert!(r >= floor, "{cand:?}, n_approx {n_approx}: recall@10 {r}");
    }
    let batch = index
        .search_batch(&small().queries(600, 4), &SearchParams::default())
        .unwrap();
    assert_eq!(batch.len(), 4);
    assert!(batch.iter().all(|h| h.len() == 10));
}

#[test]
fn plaid_stages_narrow_the_candidates_and_keep_recall() {
    // 600 documents; the first (IVF-list) pass keeps 60, the second
    // (full centroid) pass 40, and only those are scored exactly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    build(&path, small().documents(0, 600), opts("residual2"));
    let index = Index::open(&path).unwrap();
    let p = SearchParams {
        k: 10,
        n_approx: 60,
        n_candidates: 40,
        rerank_budget: 0,
        ..SearchParams::default()
    };
    // The budgets scale with the query: 32-token queries re-rank
    // max(4096 / 32, 64) = 128 documents, 8-token ones 512; cells per
    // token grow with the centroid count and for short queries.
    let d = SearchParams::default();
    assert_eq!((d.exact_candidates(32), d.exact_candidates(8)), (128, 512));
    assert_eq!(d.exact_candidates(1), d.max_candidates);
    assert_eq!(
        SearchParams {
            k: 100,
            ..d.clone()
        }
        .exact_candidates(32),
        400
    );
    assert_eq!(d.cells_per_token(32, 8192), 32);
    assert_eq!(d.cells_per_token(32, 32768), 128);
    assert_eq!(d.cells_per_token(4, 8192), 128);
    assert_eq!(d.cells_per_token(1, 1 << 20), d.max_probe);
    let qs = small().queries(600, 20);
    let mut r = 0.0;
    for q in &qs {
        let (hits, st) = index.search_with_stats(q, &p).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(st.cells > 0 && st.candidates > 60, "{st:?}");
        assert_eq!(st.exact_docs, 40, "{st:?}");
        assert_eq!(st.approx_docs, 60, "{st:?}");
        let (truth, ex) = index.search_with_stats(q, &exact(10)).unwrap();
        assert_eq!(ex.exact_docs, 600);
        r += recall_at(&truth, &hits, 10);
    }
    r /= qs.len() as f64;
    assert!(r >= 0.9, "recall@10 {r}");

    // An n_approx no larger than the exact candidates: no second pass;
    // the first pass's 40 best are scored exactly, each hit's score is
    // its exact MaxSim, and recall stays close.
    let (mut r1, mut scores) = (0.0, Vec::new());
    for n_approx in [1, 40] {
        let p = SearchParams {
            n_approx,
            ..p.clone()
        };
        let mut r = 0.0;
        let mut s = Vec::new();
        for q in &qs {
            let (hits, st) = index.search_with_stats(q, &p).unwrap();
            assert_eq!(
                (st.approx_docs, st.exact_docs, hits.len()),
                (0, 40, 10),
                "{st:?}"
            );
            let (truth, _) = index.search_with_stats(q, &exact(600)).unwrap();
            for h in &hits {
                let t = truth.iter().find(|t| t.id == h.id).unwrap();
                assert!((t.score - h.score).abs() <= 1e-5 * t.score.abs().max(1.0));
            }
            r += recall_at(&truth, &hits, 10);
            s.extend(hits.iter().map(|h| (h.id.clone(), h.score)));
        }
        r1 = r / qs.len() as f64;
        scores.push(s);
    }
    assert_eq!(scores[0], scores[1], "n_approx 1 and 40 both skip the pass");
    assert!(r1 >= 0.85, "recall@10 without the second pass {r1}");
}

#[test]
fn spilling_chunks_gives_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let docs = small().documents(0, 200);
    let a = build(&dir.path().join("a"), docs.clone(), opts("residual2"));
    let tiny_budget = BuildOptions {
        memory_budget: 64 * 1024,
        ..opts("residual2")
    };
    let b = build(&dir.path().join("b"), docs, tiny_budget);
    assert_eq!(a.spilled_chunks, 0);
    assert!(b.spilled_chunks > 3, "{}", b.spilled_chunks);
    let (ia, ib) = (
        Index::open(&dir.path().join("a")).unwrap(),
        Index::open(&dir.path().join("b")).unwrap(),
    );
    // Vector-side files are byte-identical (tantivy's own files carry ids
    // and timestamps).
    let vector_files = |ix: &Index| -> Vec<(String, tessera_index::io::FileEntry)> {
        ix.manifest().segments[0]
            .files
            .iter()
            .filter(|(k, _)| !k.starts_with("text/"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(vector_files(&ia), vector_files(&ib));
}

#[test]
fn metadata_filters_apply_before_ranking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    build(&path, small().documents(0, 300), opts("f16"));
    let index = Index::open(&path).unwrap();
    let q = &small().queries(300, 1)[0];
    let even = Filter::Eq {
        field: "parity".into(),
        value: serde_json::json!("even"),
    };
    for cand in [Candidates::Exhaustive, Candidates::Plaid] {
        let p = SearchParams {
            k: 10,
            candidates: cand,
            filter: Some(even.clone()),
            ..SearchParams::default()
        };
        let hits = index.search(q, &p).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits
            .iter()
            .all(|h| h.id[3..].parse::<u32>().unwrap() % 2 == 0));
        // Very selective: only 3 documents pass; all three come back.
        let f = Filter::Range {
            field: "n".into(),
            gte: Some(10.0),
            lt: Some(13.0),
            gt: None,
            lte: None,
        };
        let p = SearchParams {
            filter: Some(f),
            ..p
        };
        let mut ids: Vec<String> = index
            .search(q, &p)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["doc10", "doc11", "doc12"]);
    }
}

#[test]
fn reduction_is_recorded_and_applied_to_queries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    // Keep the first 16 of 32 dimensions.
    let mut m = vec![0.0f32; 16 * 32];
    for i in 0..16 {
        m[i * 32 + i] = 1.0;
    }
    let r = Projection::new(32, 16, m, None).unwrap();
    let o = BuildOptions {
        reduction: Some(r),
        ..opts("f32")
    };
    let stats = build(&path, small().documents(0, 100), o);
    assert_eq!(stats.dim, 16);
    let index = Index::open(&path).unwrap();
    assert_eq!((index.dim(), index.query_dim()), (16, 32));
    assert!(index.manifest().reduction.is_some());
    let q = &small().queries(100, 1)[0];
    assert_eq!(index.search(q, &exact(5)).unwrap().len(), 5);
    let wrong = TokenVectors::new(16, vec![0.1; 16]).unwrap();
    assert!(matches!(
        index.search(&wrong, &exact(5)),
        Err(IndexError::DimMismatch { .. })
    ));
}

#[test]
fn bad_documents_are_rejected_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = IndexBuilder::create(&dir.path().join("idx"), opts("f32")).unwrap();
    let docs = small().documents(0, 2);
    b.add(docs[0].clone()).unwrap();
    let e = b.add(docs[0].clone()).unwrap_err();
    assert!(e.to_string().contains("duplicate id"), "{e}");
    let mut d = small().documents(5, 1).remove(0);
    d.vectors = TokenVectors::new(16, vec![0.5; 32]).unwrap();
    assert!(b.add(d).unwrap_err().to_string().contains("16-dim"));
    let mut d = small().documents(6, 1).remove(0);
    d.vectors = TokenVectors::new(32, vec![f32::NAN; 32]).unwrap();
    assert!(b.add(d).unwrap_err().to_string().contains("non-finite"));
    // Ids follow one rule on every write path: a run file must name them.
    for (id, why) in [
        ("", "empty"),
        ("two words", "whitespace"),
        ("tab\there", "whitespace"),
        ("nul\0id", "control character"),
    ] {
        let mut d = small().documents(7, 1).remove(0);
        d.id = id.into();
        let e = b.add(d).unwrap_err().to_string();
        assert!(e.contains(why), "{id:?}: {e}");
    }
    assert_eq!(b.docs(), 1);
    let stats = b.finish(&mut |_| {}).unwrap();
    assert_eq!(stats.docs, 1);
}

#[test]
fn a_segment_of_documents_without_tokens_commits_opens_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let syn = small();
    build(&path, syn.documents(0, 100), opts("residual2"));
    let after = Index::open(&path).unwrap();
    // A segment of documents without tokens (empty texts) commits, opens
    // and searches: its vector files are empty arrays.
    let dim = after.dim();
    let empty: Vec<Document> = (0..2)
        .map(|i| Document {
            id: format!("empty{i}"),
            vectors: TokenVectors::new(dim, Vec::new()).unwrap(),
            title: String::new(),
            text: String::new(),
            metadata: serde_json::Value::Null,
        })
        .collect();
    assert_eq!(append(&path, empty).unwrap(), 2);
    let with_empty = Index::open(&path).unwrap();
    assert!(with_empty.contains("empty1"));
    let q = &syn.queries(150, 1)[0];
    assert!(!with_empty
        .search(q, &exact(5))
        .unwrap()
        .iter()
        .any(|h| h.id.starts_with("empty")));
    assert_eq!(
        delete(&path, &["empty0", "empty1"]).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn append_delete_compact_with_snapshot_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let syn = small();
    build(&path, syn.documents(0, 100), opts("residual2"));
    let before = Index::open(&path).unwrap();

    let g = append(&path, syn.documents(100, 50)).unwrap();
    assert_eq!(g, 2);
    let missing = delete(&path, &["doc3", "doc120", "nope"]).unwrap();
    assert_eq!(missing, ["nope"]);
    let after = Index::open(&path).unwrap();
    assert_eq!(after.num_docs(), 148);
    assert!(!after.contains("doc3") && after.contains("doc149"));
    // The old snapshot is untouched.
    assert_eq!(before.num_docs(), 100);
    assert!(before.contains("doc3"));

    // Duplicate ids are refused, nothing is committed.
    let e = append(&path, syn.documents(10, 1)).unwrap_err();
    assert!(e.to_string().contains("duplicate id"), "{e}");
    assert_eq!(Index::open(&path).unwrap().manifest().generation, 3);

    // Deleted documents never come back from search.
    let q = &syn.queries(150, 1)[0];
    let all = SearchParams {
        k: 200,
        candidates: Candidates::Exhaustive,
        ..SearchParams::default()
    };
    let hits = after.search(q, &all).unwrap();
    assert_eq!(hits.len(), 148);
    assert!(hits.iter().all(|h| h.id != "doc3" && h.id != "doc120"));

    let scores_before: Vec<(String, f32)> = hits.iter().map(|h| (h.id.clone(), h.score)).collect();
    compact(&path).unwrap();
    let compacted = Index::open(&path).unwrap();
    assert_eq!(compacted.segments().len(), 1);
    assert_eq!(compacted.manifest().segments[0].deleted.len(), 0);
    let scores_after: Vec<(String, f32)> = compacted
        .search(q, &all)
        .unwrap()
        .into_iter()
        .map(|h| (h.id, h.score))
        .collect();
    assert_eq!(
        scores_before, scores_after,
        "compaction copies codes losslessly"
    );
    // Old segment folders are gone; the earlier snapshot still reads (its
    // files stay mapped).
    let names: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("seg-")).count(),
        1,
        "{names:?}"
    );
    assert_eq!(before.search(q, &exact(3)).unwrap().len(), 3);
    assert!(compacted.verify().is_ok());
}

#[test]
fn rebuild_over_an_existing_index_needs_overwrite_and_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    build(&path, small().documents(0, 50), opts("f32"));
    let old = Index::open(&path).unwrap();
    let e = IndexBuilder::create(&path, opts("f32")).unwrap_err();
    assert!(e.to_string().contains("exists already"), "{e}");
    build(
        &path,
        small().documents(1000, 20),
        BuildOptions {
            overwrite: true,
            ..opts("int8")
        },
    );
    let new = Index::open(&path).unwrap();
    assert_eq!(new.num_docs(), 20);
    assert_eq!(new.manifest().codec, CodecKind::Int8);
    assert_eq!(old.num_docs(), 50);
    assert!(new.verify().is_ok());
    // A folder that is not an index is never overwritten.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "x").unwrap();
    assert!(IndexBuilder::create(
        &other,
        BuildOptions {
            overwrite: true,
            ..opts("f32")
        }
    )
    .is_err());
    assert!(other.join("keep.txt").exists());
}

#[test]
fn abandoned_build_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    {
        let mut b = IndexBuilder::create(&path, opts("f32")).unwrap();
        for d in small().documents(0, 10) {
            b.add(d).unwrap();
        }
    } // dropped without finish
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "staging folder removed"
    );
}

#[test]
fn damaged_files_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    build(&path, small().documents(0, 50), opts("residual2"));
    let seg = Index::open(&path).unwrap().manifest().segments[0]
        .name
        .clone();
    let codes = path.join(&seg).join("codes.u32");
    let orig = std::fs::read(&codes).unwrap();

    // Truncated.
    std::fs::write(&codes, &orig[..orig.len() - 4]).unwrap();
    let e = Index::open(&path).unwrap_err().to_string();
    assert!(e.contains("codes.u32") && e.contains("size"), "{e}");

    // Same size, out-of-range centroid id, or a valid one flipped: open
    // refuses with the file's checksum, before anything reads it.
    let mut bad = orig.clone();
    bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut flipped = orig.clone();
    flipped[0..4]
        .copy_from_slice(&(u32::from_le_bytes(orig[0..4].try_into().unwrap()) ^ 1).to_le_bytes());
    for damaged in [bad, flipped] {
        std::fs::write(&codes, &damaged).unwrap();
        let e = Index::open(&path).unwrap_err();
        assert!(matches!(e, IndexError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("codes.u32"), "{e}");
    }
    std::fs::write(&codes, &orig).unwrap();

    // Missing file, foreign manifest, future version.
    std::fs::rename(path.join(&seg).join("ids.bin"), dir.path().join("ids.bin")).unwrap();
    assert!(Index::open(&path)
        .unwrap_err()
        .to_string()
        .contains("ids.bin: missing file"));
    std::fs::rename(dir.path().join("ids.bin"), path.join(&seg).join("ids.bin")).unwrap();
    let manifest = std::fs::read_to_string(path.join("manifest.json")).unwrap();
    std::fs::write(
        path.join("manifest.json"),
        manifest.replace("\"version\": 1", "\"version\": 99"),
    )
    .unwrap();
    assert!(Index::open(&path)
        .unwrap_err()
        .to_string()
        .contains("version 99 is not supported"));
    std::fs::write(path.join("manifest.json"), "{\"hello\": 1}").unwrap();
    assert!(Index::open(&path)
        .unwrap_err()
        .to_string()
        .contains("manifest.json: invalid manifest"));
    assert!(Index::open(dir.path())
        .unwrap_err()
        .to_string()
        .contains("not a Tessera index"));
}

#[test]
fn indexes_sharing_a_trained_codec_score_a_document_alike() {
    let dir = tempfile::tempdir().unwrap();
    let docs = small().documents(0, 300);
    let queries = small().queries(300, 5);
    let whole = dir.path().join("whole");
    build(&whole, docs.clone(), opts("residual2"));
    let source = Index::open(&whole).unwrap();
    // Half the documents, coded with the whole index's codec: each keeps
    // the exact score it has in the whole index.
    let half = dir.path().join("half");
    let shared = BuildOptions {
        trained: Some(Trained::of(&source)),
        ..opts("residual2")
    };
    build(&half, docs[..150].to_vec(), shared);
    let part = Index::open(&half).unwrap();
    assert_eq!(part.centroids(), source.centroids());
    for q in &queries {
        let all: std::collections::HashMap<String, f32> = source
            .search(q, &exact(300))
            .unwrap()
            .into_iter()
            .map(|h| (h.id, h.score))
            .collect();
        for h in part.search(q, &exact(150)).unwrap() {
            assert_eq!(h.score, all[&h.id], "{}", h.id);
        }
    }
    // A codec of another kind or width is refused before anything is written.
    for (codec, trained) in [
        ("residual4", Trained::of(&source)),
        ("f32", Trained::of(&source)),
        (
            "residual2",
            Trained {
                dim: 16,
                ..Trained::of(&source)
            },
        ),
    ] {
        let path = dir.path().join(format!("bad-{codec}"));
        let mut b = IndexBuilder::create(
            &path,
            BuildOptions {
                trained: Some(trained),
                ..opts(codec)
            },
        )
        .unwrap();
        for d in docs[..20].iter().cloned() {
            b.add(d).unwrap();
        }
        let e = b.finish(&mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("trained codec"), "{codec}: {e}");
        assert!(!path.exists(), "{codec}: a refused build left {path:?}");
    }
}
