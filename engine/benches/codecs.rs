//! Codec quality and candidate-generation recall on real ColBERT vectors:
//! encode the first `--docs` SciFact documents and `--queries` queries with
//! the default model (raw MiniLM token vectors), build one index per codec,
//! and report bytes per token and recall@10 of each codec's exhaustive
//! ranking against f32's, plus PLAID's recall@10 against exhaustive search
//! on the same index.
//!
//! ```text
//! cargo bench -p tessera-engine --bench codecs -- \
//!     [--dataset ../shared/datasets/scifact] [--docs 1000] [--queries 200] [--model DIR]
//! ```

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use tessera_index::*;
use tessera_model::{DeviceChoice, Encoder, EncoderOptions, TextKind};

fn read_jsonl(path: &PathBuf, n: usize) -> Vec<serde_json::Value> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(f)
        .lines()
        .take(n)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn main() {
    let mut dataset = PathBuf::from("../shared/datasets/scifact");
    let (mut docs, mut queries, mut model) = (1000usize, 200usize, None::<PathBuf>);
    let mut plaid = SearchParams {
        k: 10,
        ..SearchParams::default()
    };
    let mut codecs: Vec<String> = ["f32", "f16", "int8", "residual4", "residual2", "residual1"]
        .map(String::from)
        .to_vec();
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        match f.as_str() {
            "--dataset" => dataset = it.next().unwrap().into(),
            "--docs" => docs = it.next().unwrap().parse().unwrap(),
            "--queries" => queries = it.next().unwrap().parse().unwrap(),
            "--model" => model = Some(it.next().unwrap().into()),
            "--codecs" => codecs = it.next().unwrap().split(',').map(String::from).collect(),
            "--n-probe" => plaid.n_probe = it.next().unwrap().parse().unwrap(),
            "--n-candidates" => plaid.n_candidates = it.next().unwrap().parse().unwrap(),
            "--threshold" => plaid.centroid_threshold = it.next().unwrap().parse().unwrap(),
            "--bench" => {}
            o => panic!("unknown argument {o}"),
        }
    }
    let model = model
        .or_else(tessera_model::default_model_dir)
        .expect("run scripts/setup");
    let enc = Encoder::load(
        &model,
        EncoderOptions {
            device: DeviceChoice::Auto,
            batch_size: 32,
            precision: Default::default(),
        },
    )
    .unwrap();
    let corpus = read_jsonl(&dataset.join("corpus.jsonl"), docs);
    let qs = read_jsonl(&dataset.join("queries.jsonl"), queries);
    let texts: Vec<String> = corpus
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["title"].as_str().unwrap_or(""),
                d["text"].as_str().unwrap_or("")
            )
            .trim()
            .to_owned()
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t = Instant::now();
    let dv = enc.encode(&refs, TextKind::Document, &mut |_| {}).unwrap();
    let qrefs: Vec<&str> = qs
        .iter()
        .map(|q| q["text"].as_str().unwrap_or(""))
        .collect();
    let qv = enc.encode(&qrefs, TextKind::Query, &mut |_| {}).unwrap();
    eprintln!(
        "encoded {} docs ({} tokens) and {} queries in {:.1}s",
        docs,
        dv.tokens_processed,
        qrefs.len(),
        t.elapsed().as_secs_f64()
    );
    let qvecs: Vec<TokenVectors> = qv.items.into_iter().map(|e| e.vectors).collect();

    let dir = tempfile::tempdir().unwrap();
    let exact = SearchParams {
        k: 10,
        candidates: Candidates::Exhaustive,
        ..SearchParams::default()
    };
    let mut reference: Option<Vec<Vec<Hit>>> = None;
    println!("| codec | B/token (codes+vectors+offsets) | tokens | recall@10 vs f32 (exhaustive) | PLAID recall@10 vs exhaustive | PLAID p50 ms |");
    println!("|---|---|---|---|---|---|");
    eprintln!(
        "PLAID: n_probe {}, n_candidates {}, threshold {}",
        plaid.n_probe, plaid.n_candidates, plaid.centroid_threshold
    );
    for codec in codecs.iter().map(String::as_str) {
        let path = dir.path().join(codec);
        let mut b = IndexBuilder::create(
            &path,
            BuildOptions {
                codec: codec.parse().unwrap(),
                ..BuildOptions::default()
            },
        )
        .unwrap();
        for (d, e) in corpus.iter().zip(&dv.items) {
            b.add(Document {
                id: d["_id"].as_str().unwrap().to_owned(),
                vectors: e.vectors.clone(),
                title: d["title"].as_str().unwrap_or("").to_owned(),
                text: d["text"].as_str().unwrap_or("").to_owned(),
                metadata: d["metadata"].clone(),
            })
            .unwrap();
        }
        let stats = b.finish(&mut |_| {}).unwrap();
        let index = Index::open(&path).unwrap();
        let ex: Vec<Vec<Hit>> = qvecs
            .iter()
            .map(|q| index.search(q, &exact).unwrap())
            .collect();
        let mut lat = Vec::new();
        let pl: Vec<Vec<Hit>> = qvecs
            .iter()
            .map(|q| {
                let t = Instant::now();
                let h = index.search(q, &plaid).unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                h
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let recall = |a: &[Vec<Hit>], b: &[Vec<Hit>]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| {
                    let s: std::collections::HashSet<&str> =
                        x.iter().map(|h| h.id.as_str()).collect();
                    y.iter().filter(|h| s.contains(h.id.as_str())).count() as f64
                        / x.len().max(1) as f64
                })
                .sum::<f64>()
                / a.len() as f64
        };
        if codec == "f32" {
            reference = Some(ex.clone());
        }
        let vs_f32 = reference.as_ref().map_or(f64::NAN, |r| recall(r, &ex));
        println!(
            "| {codec} | {:.1} | {} | {:.3} | {:.3} | {:.2} |",
            stats.bytes_per_token,
            stats.tokens,
            vs_f32,
            recall(&ex, &pl),
            lat[lat.len() / 2]
        );
    }
}
