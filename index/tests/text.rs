//! End-to-end tests of the index's text side: BM25, hybrid and
//! reciprocal-rank fusion, the English analyzer, empty documents.

mod common;

use common::*;
use tessera_index::*;

#[test]
fn bm25_and_hybrid_search() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let mut docs = small().documents(0, 60);
    docs[17].title = "Tidal forces of the Moon".into();
    docs[17].text = "The Moon's gravity raises ocean tides twice a day.".into();
    docs[33].text = "Volcanoes erupt molten rock.".into();
    build(&path, docs.clone(), opts("residual2"));
    let index = Index::open(&path).unwrap();
    let hits = index.search_text("ocean tides moon", 5, None).unwrap();
    assert_eq!(hits[0].id, "doc17");
    assert!(hits[0].score > 0.0);
    // Query syntax errors are forgiven.
    assert!(index.search_text("tides AND (", 5, None).is_ok());
    // A repeated word counts as often as it occurs, from one term: the
    // scores are those of the words spelled out.
    let once = index.search_text("ocean tides", 5, None).unwrap();
    let ocean = index.search_text("ocean", 5, None).unwrap();
    let twice = index.search_text("ocean ocean tides", 5, None).unwrap();
    assert_eq!(
        (once[0].id.as_str(), twice[0].id.as_str()),
        ("doc17", "doc17")
    );
    let want = once[0].score + ocean[0].score;
    assert!(
        (twice[0].score - want).abs() < 1e-4 * want,
        "{twice:?} {once:?} {ocean:?}"
    );
    assert_eq!(
        tessera_index::text::query_terms(Analyzer::En, "Ocean ocean TIDES of the tides").unwrap(),
        [("ocean".to_owned(), 2), ("tide".to_owned(), 2)]
    );
    // A text with more distinct terms than a query may have is refused, by
    // name, before any posting list is read; repeats of few words are not.
    let huge: String = (0..2000).map(|i| format!("w{i} ")).collect();
    let e = index.search_text(&huge, 5, None).unwrap_err();
    assert!(e.to_string().contains("distinct BM25 terms"), "{e}");
    assert!(index
        .search_text(&"tides ".repeat(100_000), 5, None)
        .is_ok());
    // Filters run before ranking: doc17 is odd.
    let even = Filter::Eq {
        field: "parity".into(),
        value: serde_json::json!("even"),
    };
    let hits = index
        .search_text("ocean tides moon", 5, Some(&even))
        .unwrap();
    assert!(hits.iter().all(|h| h.id != "doc17"));
    // Deleted documents disappear from BM25 too.
    delete(&path, &["doc17"]).unwrap();
    let index = Index::open(&path).unwrap();
    assert!(index
        .search_text("ocean tides moon", 5, None)
        .unwrap()
        .iter()
        .all(|h| h.id != "doc17"));

    // Hybrid: a document strong in one ranking and present in both wins.
    let q = TokenVectors::new(32, docs[33].vectors.as_slice()[..32 * 4].to_vec()).unwrap();
    let p = SearchParams {
        k: 5,
        candidates: Candidates::Exhaustive,
        ..SearchParams::default()
    };
    let fused = index
        .search_hybrid(&q, "volcanoes molten rock", &p)
        .unwrap();
    assert_eq!(fused[0].id, "doc33");
    assert!(fused.len() == 5);
}

#[test]
fn rrf_fuses_by_rank() {
    let h = |id: &str, doc: u32| Hit {
        id: id.into(),
        score: 0.0,
        segment: 0,
        doc,
    };
    let a = vec![h("a", 0), h("b", 1), h("c", 2)];
    let b = vec![h("c", 2), h("b", 1), h("d", 3)];
    let f = search::rrf(&[a, b], 3, 60.0);
    let ids: Vec<&str> = f.iter().map(|h| h.id.as_str()).collect();
    // c: 1/63 + 1/61 = 0.032266; b: 2/62 = 0.032258; a: 1/61; d: 1/63.
    assert_eq!(ids, ["c", "b", "a"]);
    assert!((f[0].score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-6);
}

#[test]
fn linear_fusion_combines_normalised_scores() {
    let h = |id: &str, doc: u32, score: f32| Hit {
        id: id.into(),
        score,
        segment: 0,
        doc,
    };
    // MaxSim scores span 10..20, BM25 2..12: each list is scaled to [0, 1].
    let dense = vec![h("a", 0, 20.0), h("b", 1, 15.0), h("c", 2, 10.0)];
    let sparse = vec![h("c", 2, 12.0), h("d", 3, 7.0), h("b", 1, 2.0)];
    let f = search::linear_fusion(&dense, &sparse, 4, 0.3);
    let got: Vec<(&str, f32)> = f.iter().map(|h| (h.id.as_str(), h.score)).collect();
    // a: 0.7·1; b: 0.7·0.5 + 0.3·0; c: 0.7·0 + 0.3·1; d: 0.3·0.5.
    let want = [("a", 0.7), ("b", 0.35), ("c", 0.3), ("d", 0.15)];
    for ((gi, gs), (wi, ws)) in got.iter().zip(want) {
        assert_eq!(*gi, wi);
        assert!((gs - ws).abs() < 1e-6, "{got:?}");
    }
    // Weight 0 is MaxSim alone, weight 1 BM25 alone.
    let ids = |f: Vec<Hit>| f.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(
        ids(search::linear_fusion(&dense, &sparse, 3, 0.0)),
        ["a", "b", "c"]
    );
    assert_eq!(ids(search::linear_fusion(&dense, &sparse, 1, 1.0)), ["c"]);
}

#[test]
fn english_analyzer_stems_folds_and_drops_stop_words_and_is_recorded() {
    let terms = Analyzer::En.terms("The Moon's tides are RISING over Café beaches");
    assert_eq!(terms, ["moon", "tide", "rise", "over", "cafe", "beach"]);
    assert_eq!(
        Analyzer::Simple.terms("The Moon's tides"),
        ["the", "moon", "s", "tides"]
    );
    let dir = tempfile::tempdir().unwrap();
    let mut docs = small().documents(0, 30);
    docs[7].title = "Tidal forces".into();
    docs[7].text = "The Moon raises ocean tides.".into();
    for analyzer in [Analyzer::En, Analyzer::Simple] {
        let path = dir.path().join(analyzer.to_string());
        build(
            &path,
            docs.clone(),
            BuildOptions {
                analyzer,
                ..opts("f32")
            },
        );
        let index = Index::open(&path).unwrap();
        assert_eq!(index.manifest().analyzer, analyzer);
        // "tide" (a stem) matches "tides" only through the English analyzer;
        // query syntax characters are plain text.
        let hits = index.search_text("tide: (moon", 3, None).unwrap();
        match analyzer {
            Analyzer::En => assert_eq!(hits[0].id, "doc7"),
            _ => assert!(hits.iter().all(|h| h.id == "doc7")),
        }
        // Compaction keeps the analyzer.
        append(&path, small().documents(30, 2)).unwrap();
        compact(&path).unwrap();
        assert_eq!(Index::open(&path).unwrap().manifest().analyzer, analyzer);
    }
    assert!("klingon".parse::<Analyzer>().is_err());
}

#[test]
fn empty_documents_are_indexed_and_never_outrank_a_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let syn = small();
    let mut docs = syn.documents(0, 80);
    for i in [0usize, 41, 79] {
        docs[i].vectors = TokenVectors::new(32, vec![]).unwrap();
        docs[i].title.clear();
        docs[i].text.clear();
    }
    let stats = build(&path, docs.clone(), opts("residual2"));
    assert_eq!(stats.docs, 80);
    let index = Index::open(&path).unwrap();
    assert_eq!(index.num_docs(), 80);
    assert!(index.contains("doc41"));
    assert!(index.verify().is_ok());
    let q = &syn.queries(80, 1)[0];
    // Exhaustive search ranks every document; the empty ones score 0, at
    // the bottom.
    let all = index.search(q, &exact(80)).unwrap();
    assert_eq!(all.len(), 80);
    let bottom: Vec<&str> = all[77..].iter().map(|h| h.id.as_str()).collect();
    for id in ["doc0", "doc41", "doc79"] {
        assert!(bottom.contains(&id), "{bottom:?}");
    }
    assert!(all[76].score > 0.0 && all[77].score == 0.0);
    // PLAID never proposes them (they are in no IVF list).
    let plaid = index
        .search(
            q,
            &SearchParams {
                k: 80,
                ..SearchParams::default()
            },
        )
        .unwrap();
    assert!(plaid.iter().all(|h| h.score > 0.0));
    // Stored fields and filters still see them.
    let hit = all.iter().find(|h| h.id == "doc41").unwrap();
    let stored = index.hit_document(hit).unwrap();
    assert_eq!((stored.title.as_str(), stored.text.as_str()), ("", ""));
    // Updates keep them: append another empty one, compact, search again.
    let mut more = syn.documents(80, 2);
    more[0].vectors = TokenVectors::new(32, vec![]).unwrap();
    append(&path, more).unwrap();
    compact(&path).unwrap();
    let index = Index::open(&path).unwrap();
    assert_eq!(index.num_docs(), 82);
    assert!(index.contains("doc80") && index.verify().is_ok());
    assert_eq!(index.search(q, &exact(82)).unwrap().len(), 82);

    // An index of nothing but empty documents has nothing to train on.
    let mut b = IndexBuilder::create(&dir.path().join("none"), opts("residual2")).unwrap();
    let mut d = syn.documents(0, 1).remove(0);
    d.vectors = TokenVectors::new(32, vec![]).unwrap();
    b.add(d).unwrap();
    let e = b.finish(&mut |_| {}).unwrap_err();
    assert!(
        e.to_string().contains("no document has token vectors"),
        "{e}"
    );
}
