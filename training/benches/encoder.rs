//! Encoder throughput: documents of a BEIR `corpus.jsonl` through the
//! Tessera encoder (tokenise, sort by length, batch, backbone, normalise,
//! drop punctuation), timed end to end. Prints one JSON line.
//!
//! ```text
//! cargo bench -p tessera-training --bench encoder -- \
//!     --corpus ../shared/datasets/scifact/corpus.jsonl --docs 512 --batch-size 32 \
//!     [--model DIR] [--threads N] [--repeat R] [--precision fp32|bf16|auto]
//! ```
//! `scripts/bench-encoder` runs it beside the PyTorch baseline.
//!
//! With `--queries FILE` (one query per line, the first `--docs` of them)
//! it times instead each query encoded alone — the latency a search
//! service pays per text query — and prints p50/p99 in milliseconds.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use tessera_model::{device, DeviceChoice, Encoder, EncoderOptions, PrecisionChoice, TextKind};

struct Args {
    corpus: PathBuf,
    model: Option<PathBuf>,
    docs: usize,
    batch_size: usize,
    threads: usize,
    repeat: usize,
    device: DeviceChoice,
    precision: PrecisionChoice,
    queries: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        corpus: PathBuf::from("../shared/datasets/scifact/corpus.jsonl"),
        model: None,
        docs: 512,
        batch_size: 32,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        repeat: 1,
        device: DeviceChoice::Cpu,
        precision: PrecisionChoice::Fp32,
        queries: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--corpus" => a.corpus = value().into(),
            "--model" => a.model = Some(value().into()),
            "--docs" => a.docs = value().parse().expect("--docs N"),
            "--batch-size" => a.batch_size = value().parse().expect("--batch-size N"),
            "--threads" => a.threads = value().parse().expect("--threads N"),
            "--repeat" => a.repeat = value().parse().expect("--repeat N"),
            "--device" => a.device = value().parse().expect("--device cpu|cuda|auto"),
            "--precision" => a.precision = value().parse().expect("--precision fp32|bf16|auto"),
            "--queries" => a.queries = Some(value().into()),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// `title + " " + text` of the first `n` documents.
fn read_corpus(path: &PathBuf, n: usize) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(f)
        .lines()
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let title = v["title"].as_str().unwrap_or("");
            let text = v["text"].as_str().unwrap_or("");
            format!("{title} {text}").trim().to_owned()
        })
        .collect()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args = parse_args();
    device::set_threads(args.threads);
    let model = args
        .model
        .clone()
        .or_else(tessera_model::default_model_dir)
        .expect("no model: pass --model or run scripts/setup");
    let options = EncoderOptions {
        device: args.device,
        batch_size: args.batch_size,
        precision: args.precision,
    };
    let encoder = Encoder::load(&model, options).expect("load model");
    if let Some(path) = &args.queries {
        return single_queries(&encoder, path, &args);
    }
    let texts = read_corpus(&args.corpus, args.docs);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    // Warm-up: one batch of the longest documents.
    encoder
        .encode(
            &refs[..args.batch_size.min(refs.len())],
            TextKind::Document,
            &mut |_| {},
        )
        .expect("warm-up");

    let mut best = f64::INFINITY;
    let mut tokens = 0;
    let mut truncated = 0;
    for _ in 0..args.repeat.max(1) {
        let start = Instant::now();
        let out = encoder
            .encode(&refs, TextKind::Document, &mut |_| {})
            .expect("encode");
        let secs = start.elapsed().as_secs_f64();
        best = best.min(secs);
        tokens = out.tokens_processed;
        truncated = out.truncated;
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "tessera",
            "device": device::describe(encoder.device()),
            "precision": encoder.precision().as_str(),
            "docs": refs.len(),
            "batch_size": args.batch_size,
            "threads": args.threads,
            "tokens": tokens,
            "truncated": truncated,
            "seconds": best,
            "tokens_per_s": tokens as f64 / best,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
}

/// Each query of `path` encoded alone, after a warm-up: p50/p99 latency.
fn single_queries(encoder: &Encoder, path: &PathBuf, args: &Args) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let queries: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(args.docs)
        .collect();
    assert!(!queries.is_empty(), "{}: no queries", path.display());
    for q in queries.iter().take(8) {
        encoder.encode_queries(&[q]).expect("warm-up");
    }
    let mut ms = Vec::new();
    for _ in 0..args.repeat.max(1) {
        for q in &queries {
            let start = Instant::now();
            encoder.encode_queries(&[q]).expect("encode");
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "{}",
        serde_json::json!({
            "impl": "tessera",
            "mode": "single queries",
            "device": device::describe(encoder.device()),
            "precision": encoder.precision().as_str(),
            "threads": args.threads,
            "queries": queries.len(),
            "runs": ms.len(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "mean_ms": ms.iter().sum::<f64>() / ms.len() as f64,
        })
    );
}
