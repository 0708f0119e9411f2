//! `tessera encode`: text in, ColBERT token vectors out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tessera_model::{device, EncodedText, Encoder, TextKind};

use crate::cli::args::ModelArgs;
use tessera_engine::input::{check_text, read_lines};

/// Encode queries or documents into L2-normalised token vectors.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["query", "doc", "queries", "docs"])))]
#[command(after_help = "Examples:\n  \
    tessera encode --query \"what causes tides?\"\n  \
    tessera encode --doc \"The Moon's gravity pulls the oceans.\" --json\n  \
    tessera encode --model ./colbert-model --docs abstracts.txt --json > vectors.jsonl\n  \
    tessera encode --queries queries.txt --batch-size 1 --latency   # per-call latency, JSON\n\n\
    --latency encodes the texts --batch-size at a time, one call per batch after one\n\
    warm-up batch, and prints the calls' latency (p50, p99, mean) and texts/s instead\n\
    of the vectors: --batch-size 1 is a search's query encoding, larger batches a\n\
    server's batched queries.")]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Encode TEXT as a query.
    #[arg(long, value_name = "TEXT")]
    pub query: Option<String>,
    /// Encode TEXT as a document.
    #[arg(long, value_name = "TEXT")]
    pub doc: Option<String>,
    /// Encode each line of FILE as a query (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub queries: Option<PathBuf>,
    /// Encode each line of FILE as a document (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub docs: Option<PathBuf>,
    /// Print JSON (one object per text, one per line for files).
    #[arg(long)]
    pub json: bool,
    /// Time the encoder instead of printing vectors: one call per
    /// --batch-size texts (after a warm-up call); prints JSON.
    #[arg(long, conflicts_with = "json")]
    pub latency: bool,
}

/// What `--latency` prints.
#[derive(Serialize)]
struct Latency {
    kind: &'static str,
    device: String,
    precision: String,
    texts: usize,
    batch_size: usize,
    calls: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    texts_per_s: f64,
}

/// Times `encoder` over `texts`, `batch` at a time after one warm-up call.
fn latency(encoder: &Encoder, texts: &[&str], kind: TextKind, batch: usize) -> Result<Latency> {
    let batch = batch.max(1);
    if let Some(first) = texts.chunks(batch).next() {
        encoder.encode(first, kind, &mut |_| {})?;
    }
    let mut ms = Vec::new();
    for chunk in texts.chunks(batch) {
        let t = std::time::Instant::now();
        encoder.encode(chunk, kind, &mut |_| {})?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (p50_ms, p99_ms) = tessera_eval::stats::p50_p99(&ms);
    let total: f64 = ms.iter().sum();
    Ok(Latency {
        kind: kind_name(kind),
        device: device::describe(encoder.device()),
        precision: encoder.precision().as_str().to_owned(),
        texts: texts.len(),
        batch_size: batch,
        calls: ms.len(),
        p50_ms,
        p99_ms,
        mean_ms: total / ms.len().max(1) as f64,
        texts_per_s: texts.len() as f64 / (total / 1e3).max(1e-12),
    })
}

#[derive(Serialize)]
struct TokenOut<'a> {
    token: String,
    id: u32,
    vector: &'a [f32],
}

#[derive(Serialize)]
struct TextOut<'a> {
    kind: &'static str,
    text: &'a str,
    dim: usize,
    truncated: bool,
    tokens: Vec<TokenOut<'a>>,
}

pub fn run(args: EncodeArgs) -> Result<()> {
    let (kind, texts, from_file) = match (&args.query, &args.doc, &args.queries, &args.docs) {
        (Some(t), ..) => (TextKind::Query, vec![t.clone()], false),
        (_, Some(t), ..) => (TextKind::Document, vec![t.clone()], false),
        (_, _, Some(f), _) => (TextKind::Query, read_lines(f)?, true),
        (_, _, _, Some(f)) => (TextKind::Document, read_lines(f)?, true),
        _ => unreachable!("clap requires one input"),
    };
    if !from_file {
        check_text(&texts[0], "TEXT")?;
    }
    let encoder = args.model.options().load()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    if args.latency {
        let l = latency(&encoder, &refs, kind, args.model.batch_size as usize)?;
        println!("{}", serde_json::to_string(&l)?);
        return Ok(());
    }

    let bar = if from_file {
        ProgressBar::new(refs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} encoding [{bar:30}] {pos}/{len} texts, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let out = encoder.encode(&refs, kind, &mut |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    if out.truncated > 0 {
        let (what, max) = match kind {
            TextKind::Query => ("query_maxlen", encoder.settings().query_maxlen),
            TextKind::Document => ("doc_maxlen", encoder.settings().doc_maxlen),
        };
        eprintln!(
            "note: {} of {} texts were longer than {what}={max} tokens and were truncated",
            out.truncated,
            refs.len()
        );
    }

    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if args.json {
        for (text, item) in refs.iter().zip(&out.items) {
            serde_json::to_writer(&mut w, &json_item(&encoder, kind, text, item))?;
            writeln!(w)?;
        }
    } else {
        print_header(&mut w, &encoder)?;
        for (text, item) in refs.iter().zip(&out.items) {
            print_item(&mut w, &encoder, kind, text, item, !from_file)?;
        }
    }
    w.flush()?;
    Ok(())
}

fn kind_name(kind: TextKind) -> &'static str {
    match kind {
        TextKind::Query => "query",
        TextKind::Document => "doc",
    }
}

fn json_item<'a>(
    enc: &Encoder,
    kind: TextKind,
    text: &'a str,
    item: &'a EncodedText,
) -> TextOut<'a> {
    TextOut {
        kind: kind_name(kind),
        text,
        dim: item.vectors.dim(),
        truncated: item.truncated,
        tokens: item
            .token_ids
            .iter()
            .zip(item.vectors.rows())
            .map(|(&id, vector)| TokenOut {
                token: enc.tokenizer().token(id),
                id,
                vector,
            })
            .collect(),
    }
}

fn print_header(w: &mut impl Write, enc: &Encoder) -> Result<()> {
    let s = enc.settings();
    let marker = |m: &Option<String>| m.clone().unwrap_or_else(|| "none".into());
    writeln!(
        w,
        "model: {} ({}, {} head, {} dims, {}, {})",
        enc.model().dir.display(),
        enc.layout(),
        enc.model().head.kind(),
        enc.dim(),
        device::describe(enc.device()),
        enc.precision(),
    )?;
    writeln!(
        w,
        "colbert: query marker {}, doc marker {}, query augmentation {}, query_maxlen {}, doc_maxlen {}",
        marker(&s.query_marker),
        marker(&s.doc_marker),
        if s.query_augmentation { "on" } else { "off" },
        s.query_maxlen,
        s.doc_maxlen,
    )?;
    Ok(())
}

fn print_item(
    w: &mut impl Write,
    enc: &Encoder,
    kind: TextKind,
    text: &str,
    item: &EncodedText,
    vectors: bool,
) -> Result<()> {
    let shown: String = text.chars().take(70).collect();
    let ellipsis = if shown.len() < text.len() { "…" } else { "" };
    writeln!(
        w,
        "{} {:?}{ellipsis}: {} vectors × {} dims{}",
        kind_name(kind),
        shown,
        item.vectors.len(),
        item.vectors.dim(),
        if item.truncated { " (truncated)" } else { "" }
    )?;
    if vectors {
        for (i, (&id, v)) in item.token_ids.iter().zip(item.vectors.rows()).enumerate() {
            let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
            writeln!(
                w,
                "  {i:>3}  {:<14} [{} …]",
                enc.tokenizer().token(id),
                head.join(" ")
            )?;
        }
    }
    Ok(())
}
