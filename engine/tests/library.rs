//! The engine as a library, in-process: build an index from a dump and from
//! documents held in memory, search it with each retriever, add to it —
//! and the binary, run on the same index, answers the same.

mod common;

use std::path::{Path, PathBuf};

use common::{ids, sample, search_json, tiny};
use tessera_engine::ingest::{
    add_from_input, build_from_documents, build_from_input, Input, RecordOptions, TextDocument,
};
use tessera_engine::model::ModelOptions;
use tessera_engine::retrieve::{Engine, Retriever};
use tessera_index::{Analyzer, BuildOptions, Filter, SearchParams};
use tessera_model::{DeviceChoice, PrecisionChoice};

/// The tiny test model on one CPU thread, in fp32 (as the CLI tests run it).
fn model() -> ModelOptions {
    ModelOptions {
        model: Some(PathBuf::from(tiny())),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        precision: Some(PrecisionChoice::Fp32),
        ..ModelOptions::default()
    }
}

fn params(k: usize) -> SearchParams {
    SearchParams {
        k,
        ..SearchParams::default()
    }
}

fn search(engine: &Engine, r: Retriever, query: &str, p: &SearchParams) -> Vec<String> {
    let vectors = engine.encode_queries(&[query]).unwrap();
    engine
        .rank(r, query, vectors.first(), p)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
}

#[test]
fn a_dump_built_and_searched_in_process_ranks_as_the_binary_does() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("s.idx");
    let input = Input {
        input: PathBuf::from(sample()),
        records: RecordOptions::default(),
    };
    let built = build_from_input(
        &model(),
        &input,
        &idx,
        BuildOptions::default(),
        false,
        1024,
        None,
    )
    .unwrap();
    assert_eq!(built.stats.docs, 40);
    assert!(!dir.path().join(".s.idx.encoding").exists());

    // The model recorded in the index is the one loaded (no model given).
    let recorded = ModelOptions {
        model: None,
        ..model()
    };
    let engine = Engine::open(&idx, &recorded, Retriever::Colbert).unwrap();
    assert!(engine.model_dir.as_ref().unwrap().ends_with("tiny-bert"));
    let q = "ocean tides and the moon";
    let p = params(5);
    let vectors = engine.encode_queries(&[q]).unwrap();
    let hits = engine
        .rank(Retriever::Colbert, q, vectors.first(), &p)
        .unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // The binary over the same index: the same ranking.
    let cli = search_json(&idx, q, &["-k", "5"]);
    assert_eq!(
        ids(&cli),
        hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>()
    );

    // BM25 finds the one document about tides first; hybrid fills k.
    assert_eq!(
        search(&engine, Retriever::Bm25, "tides moon", &p)[0],
        "doc01"
    );
    assert_eq!(
        search(&engine, Retriever::Hybrid, "tides moon", &params(3)).len(),
        3
    );
    // Filters apply before ranking.
    let filter: Filter = serde_json::from_str(r#"{"range": {"field": "n", "gte": 30}}"#).unwrap();
    let filtered = SearchParams {
        filter: Some(filter),
        ..params(10)
    };
    let vectors = engine.encode_queries(&["tides moon"]).unwrap();
    let hits = engine
        .rank(Retriever::Hybrid, "tides moon", vectors.first(), &filtered)
        .unwrap();
    assert!(!hits.is_empty());
    for h in &hits {
        let d = engine.index.hit_document(h).unwrap();
        assert!(d.metadata["n"].as_i64().unwrap() >= 30, "{}", h.id);
    }
}

fn write_jsonl(path: &Path, docs: &[(&str, &str)]) {
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, text)| serde_json::json!({"_id": id, "title": "", "text": text}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn documents_from_an_iterator_build_an_index_that_takes_additions() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("mem.idx");
    let opts = model();
    let encoder = opts.load().unwrap();
    let texts = [
        (
            "tides",
            "The Moon's gravity pulls the oceans and raises the tides.",
        ),
        ("seasons", "The tilt of the Earth's axis makes the seasons."),
        (
            "eclipse",
            "A solar eclipse happens when the Moon hides the Sun.",
        ),
        ("empty", ""),
    ];
    let docs = texts.iter().map(|(id, text)| TextDocument {
        id: id.to_string(),
        text: text.to_string(),
        metadata: serde_json::json!({"len": text.len()}),
        ..TextDocument::default()
    });
    let stats = build_from_documents(&encoder, docs, &idx, BuildOptions::default()).unwrap();
    assert_eq!(stats.docs, 4);
    drop(encoder);

    let engine = Engine::open(&idx, &opts, Retriever::Hybrid).unwrap();
    assert_eq!(engine.index.num_docs(), 4);
    let hits = search(&engine, Retriever::Bm25, "seasons axis tilt", &params(2));
    assert_eq!(hits[0], "seasons");
    drop(engine);

    // An addition from a dump is encoded with the index's own model and
    // appended whole; an id the index holds already is refused, nothing added.
    let more = dir.path().join("more.jsonl");
    write_jsonl(&more, &[("comets", "Comets grow tails near the Sun.")]);
    let input = Input {
        input: more.clone(),
        records: RecordOptions::default(),
    };
    let added = add_from_input(&idx, &opts, &input).unwrap();
    assert_eq!(added.state.docs, 1);
    assert_eq!(added.already_there, 0);
    write_jsonl(&more, &[("tides", "A second document with an old id.")]);
    let e = add_from_input(&idx, &opts, &input).unwrap_err();
    assert!(e.chain().contains("tides"), "{}", e.chain());
    let engine = Engine::open(&idx, &opts, Retriever::Bm25).unwrap();
    assert_eq!(engine.index.num_docs(), 5);
    assert_eq!(
        search(&engine, Retriever::Bm25, "comets tails", &params(1)),
        ["comets"]
    );
}

#[test]
fn bm25_over_a_text_only_index_ranks_as_over_the_full_index() {
    let dir = tempfile::tempdir().unwrap();
    let input = Input {
        input: PathBuf::from(sample()),
        records: RecordOptions::default(),
    };
    let full = dir.path().join("full.idx");
    build_from_input(
        &model(),
        &input,
        &full,
        BuildOptions::default(),
        false,
        1024,
        None,
    )
    .unwrap();
    let text = dir.path().join("text");
    let built = tessera_engine::bm25::build_text_index(&input, &text, Analyzer::En).unwrap();
    assert_eq!(built.docs, 40);
    let engine = Engine::open(&full, &model(), Retriever::Bm25).unwrap();
    let only = tessera_engine::bm25::TextOnly::open(&text, Analyzer::En).unwrap();
    assert_eq!(only.len(), engine.index.num_docs());
    for q in [
        "tides moon",
        "volcanoes and lava",
        "the",
        "honey bees pollinate flowers",
    ] {
        let want: Vec<(String, f32)> = engine
            .rank(Retriever::Bm25, q, None, &params(10))
            .unwrap()
            .into_iter()
            .map(|h| (h.id, h.score))
            .collect();
        assert_eq!(only.search(q, 10).unwrap(), want, "{q}");
    }
}

/// The sample corpus as documents held in memory.
fn sample_documents() -> Vec<TextDocument> {
    std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            TextDocument {
                id: v["_id"].as_str().unwrap().into(),
                title: v["title"].as_str().unwrap_or("").into(),
                text: v["text"].as_str().unwrap_or("").into(),
                metadata: v["metadata"].clone(),
            }
        })
        .collect()
}

/// `(id, score)` best first, ties by id (a shard set and one index break
/// ties between equal scores differently).
fn ranked(hits: impl IntoIterator<Item = tessera_index::Hit>) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = hits.into_iter().map(|h| (h.id, h.score)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn close(a: &[(String, f32)], b: &[(String, f32)], tol: f32) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= tol)
}

/// A collection split into four shards by document id ranks as one index
/// over the same documents: exhaustive MaxSim top-k equal (f32 vectors),
/// BM25 scores equal (the shards share the collection's statistics),
/// hybrid fused after the merge equal. Shards that disagree are refused.
#[test]
fn four_shards_rank_as_one_index() {
    use tessera_engine::shard::{shard_of, ShardSet, Shards};
    let dir = tempfile::tempdir().unwrap();
    let docs = sample_documents();
    let encoder = model().load().unwrap();
    let f32_opts = || BuildOptions {
        codec: tessera_index::CodecKind::F32,
        ..BuildOptions::default()
    };
    let one = dir.path().join("one.idx");
    build_from_documents(&encoder, docs.clone(), &one, f32_opts()).unwrap();
    let set = dir.path().join("set");
    let names: Vec<String> = (0..4).map(|s| format!("shard-{s}")).collect();
    let part = |s: usize| -> Vec<TextDocument> {
        docs.iter()
            .filter(|d| shard_of(&d.id, 4) == s as u32)
            .cloned()
            .collect()
    };
    for (s, name) in names.iter().enumerate() {
        assert!(!part(s).is_empty(), "shard {s} is empty");
        build_from_documents(&encoder, part(s), &set.join(name), f32_opts()).unwrap();
    }
    let written = ShardSet::write(&set, &names).unwrap();
    assert_eq!(written.shards.iter().map(|s| s.docs).sum::<u64>(), 40);
    let shards = Shards::open(&set).unwrap();

    let recorded = ModelOptions {
        model: None,
        ..model()
    };
    let engine = Engine::open(&one, &recorded, Retriever::Colbert).unwrap();
    let index = tessera_index::Index::open(&one).unwrap();
    let exhaustive = |k| SearchParams {
        k,
        candidates: tessera_index::Candidates::Exhaustive,
        ..SearchParams::default()
    };
    let sharded =
        |r: Retriever, q: &str, v: Option<&tessera_index::TokenVectors>, p: &SearchParams| {
            ranked(shards.rank(r, q, v, p).unwrap().into_iter().map(|h| h.hit))
        };
    for q in [
        "ocean tides and the moon",
        "how do plants make sugar",
        "volcano eruptions",
    ] {
        let v = engine.encode_queries(&[q]).unwrap();
        let p = exhaustive(20);
        let want = ranked(index.search(&v[0], &p).unwrap());
        let got = sharded(Retriever::Colbert, q, v.first(), &p);
        assert!(close(&got, &want, 1e-4), "{q}: {got:?} vs {want:?}");

        let want = ranked(index.search_text(q, 20, None).unwrap());
        let got = sharded(Retriever::Bm25, q, None, &p);
        assert!(!want.is_empty());
        assert!(close(&got, &want, 1e-5), "BM25 {q}: {got:?} vs {want:?}");

        let p = exhaustive(10);
        let want = ranked(index.search_hybrid(&v[0], q, &p).unwrap());
        let got = sharded(Retriever::Hybrid, q, v.first(), &p);
        // The same documents in the same order; the fused scores agree to
        // 1e-3 only because the test model's MaxSim scores all lie within
        // about 0.001 of each other, and min-max normalisation magnifies
        // their f32 rounding a thousandfold.
        assert!(close(&got, &want, 1e-3), "hybrid {q}: {got:?} vs {want:?}");
    }

    // A shard built with another codec is refused, naming it.
    let odd = dir.path().join("odd");
    for (s, name) in names.iter().enumerate() {
        let opts = if s == 2 {
            BuildOptions::default()
        } else {
            f32_opts()
        };
        build_from_documents(&encoder, part(s), &odd.join(name), opts).unwrap();
    }
    let e = ShardSet::write(&odd, &names).unwrap_err().to_string();
    assert!(e.contains("shard 2") && e.contains("does not match"), "{e}");
}
