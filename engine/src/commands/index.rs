//! `tessera index build | info | verify`.
//!
//! A build from a dump runs in two steps: encode the documents into a work
//! folder next to the index (`.NAME.encoding/`, the `encode-corpus` layout,
//! checkpointed), then stream those vectors into the index builder. A build
//! that is interrupted resumes with `--resume` from the last checkpoint and
//! gives the same index as an uninterrupted one; the work folder goes away
//! once the index is in place.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tessera_index::{
    BuildOptions, BuildStats, CodecKind, Document, IndexBuilder, Phase, TokenVectors,
};

use crate::commands::encode_corpus::{encode_to_dir, skipped_note, InputArgs, RecordArgs};
use crate::embeddings::{load_state, EmbeddingsReader};
use crate::model::ModelArgs;
use crate::progress;

/// Build and inspect indexes.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera index build --input corpus.jsonl --out scifact.idx\n  \
    tessera index build --embeddings vectors/ --out scifact.idx --codec f16\n  \
    tessera index info scifact.idx")]
pub struct IndexArgs {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    Build(BuildArgs),
    Info(InfoArgs),
    Verify(InfoArgs),
}

/// Build an index from a document dump (encoding it) or from precomputed
/// vectors.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera index build --input ../shared/datasets/scifact/corpus.jsonl --out scifact.idx\n  \
    zcat dump.jsonl.gz | tessera index build --input - --out dump.idx --skip-invalid\n  \
    tessera index build --input collection.tsv.zst --out msmarco.idx --codec residual2\n  \
    tessera index build --embeddings vectors/ --out other.idx\n\n\
    After an interruption, rerun the same command with --resume.")]
pub struct BuildArgs {
    /// The dump: BEIR corpus.jsonl, any JSONL, or TSV (`id<TAB>text`),
    /// optionally .gz or .zst; `-` reads standard input.
    #[arg(long, value_name = "PATH", required_unless_present = "embeddings")]
    pub input: Option<PathBuf>,
    /// Precomputed vectors instead: a folder with embeddings.npy,
    /// doclens.npy or doclens.json, ids.txt (and optionally docs.jsonl).
    #[arg(long, value_name = "DIR", conflicts_with = "input")]
    pub embeddings: Option<PathBuf>,
    /// The index folder to create.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Vector codec: f32, f16, int8, residual1, residual2, residual4.
    #[arg(long, default_value = "residual2")]
    pub codec: String,
    /// Number of centroids (default 2^floor(log2(16·√tokens))).
    #[arg(long, value_name = "K")]
    pub centroids: Option<usize>,
    /// Memory budget of the index builder for buffered vectors, MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory_mb: usize,
    /// Replace an existing index at --out (atomically).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted build from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Documents per encoding checkpoint.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_every: u32,
    #[command(flatten)]
    pub records: RecordArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Show an index's manifest summary (`info`) or recompute its checksums
/// (`verify`).
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The index folder.
    #[arg(value_name = "DIR")]
    pub index: PathBuf,
}

pub fn run(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(b) => build(b),
        IndexCommand::Info(i) => {
            let index = tessera_index::Index::open(&i.index)?;
            let m = index.manifest();
            let v = serde_json::json!({
                "path": i.index, "documents": m.live_docs(), "tokens": m.tokens(),
                "dim": m.dim, "codec": m.codec.to_string(), "centroids": m.num_centroids,
                "segments": m.segments.len(), "generation": m.generation, "info": m.info,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        IndexCommand::Verify(i) => {
            let index = tessera_index::Index::open(&i.index)?;
            let r = index.verify()?;
            println!(
                "{}: OK ({} files, {} bytes checked)",
                i.index.display(),
                r.files,
                r.bytes
            );
            Ok(())
        }
    }
}

/// The hidden work folder for encoding `out`'s documents.
pub fn work_dir(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a usable index path", out.display()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.encoding")))
}

fn build(args: BuildArgs) -> Result<()> {
    let codec: CodecKind = args.codec.parse()?;
    let opts = BuildOptions {
        codec,
        num_centroids: args.centroids,
        memory_budget: args.memory_mb.max(16) << 20,
        overwrite: args.overwrite,
        ..BuildOptions::default()
    };
    if args.out.join(tessera_index::manifest::MANIFEST).exists() && !args.overwrite {
        bail!(
            "{}: an index exists already (pass --overwrite to replace it)",
            args.out.display()
        );
    }
    let t = Instant::now();
    let built = match (&args.input, &args.embeddings) {
        (_, Some(e)) => {
            let (stats, skipped) = build_from_vectors(e, &args.out, opts)?;
            Built {
                stats,
                skipped,
                encode_s: 0.0,
                index_s: t.elapsed().as_secs_f64(),
            }
        }
        (Some(input), None) => {
            let input = InputArgs {
                input: input.clone(),
                records: args.records.clone(),
            };
            build_from_input(
                &args.model,
                &input,
                &args.out,
                opts,
                args.resume,
                args.checkpoint_every as usize,
            )?
        }
        (None, None) => bail!("give --input or --embeddings"),
    };
    let Built {
        stats,
        skipped,
        encode_s,
        index_s,
    } = built;
    eprintln!(
        "indexed {} documents, {} tokens ({}-dim, {}, {} centroids) into {} in {:.1} s \
         (encoding {:.1} s, indexing {:.1} s): {:.1} bytes/token, {:.1} MiB on disk{}",
        stats.docs,
        stats.tokens,
        stats.dim,
        stats.codec,
        stats.num_centroids,
        args.out.display(),
        t.elapsed().as_secs_f64(),
        encode_s,
        index_s,
        stats.bytes_per_token,
        stats.index_bytes as f64 / (1 << 20) as f64,
        skipped
    );
    Ok(())
}

/// What a build did.
pub struct Built {
    pub stats: BuildStats,
    /// `"; skipped …"` or empty.
    pub skipped: String,
    pub encode_s: f64,
    pub index_s: f64,
}

/// Encodes `input` (resumably, in the work folder next to `out`) and builds
/// the index at `out`; the work folder is removed once the index is in place.
pub fn build_from_input(
    model: &ModelArgs,
    input: &InputArgs,
    out: &Path,
    opts: BuildOptions,
    resume: bool,
    checkpoint_every: usize,
) -> Result<Built> {
    let t = Instant::now();
    let work = work_dir(out)?;
    let state = load_state(&work)?;
    if state.is_some() && !resume {
        bail!(
            "{}: an interrupted build of {} left its encoded documents there; \
             continue it with --resume, or remove that folder",
            work.display(),
            out.display()
        );
    }
    if !state.as_ref().is_some_and(|s| s.complete) {
        let encoder = model.load()?;
        encode_to_dir(&encoder, input, &work, resume, checkpoint_every)?;
    }
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (stats, skipped) = build_from_vectors(&work, out, opts)?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(Built {
        stats,
        skipped,
        encode_s,
        index_s: t.elapsed().as_secs_f64(),
    })
}

/// Streams an embeddings folder into a new index at `out`.
pub fn build_from_vectors(
    vectors: &Path,
    out: &Path,
    mut opts: BuildOptions,
) -> Result<(BuildStats, String)> {
    let mut reader = EmbeddingsReader::open(vectors)?;
    let skipped = reader
        .state
        .as_ref()
        .map(|s| skipped_note(&s.skipped))
        .unwrap_or_default();
    opts.info = serde_json::json!({
        "built_by": format!("tessera {}", env!("CARGO_PKG_VERSION")),
        "model": reader.state.as_ref().map(|s| s.model.clone()),
        "input": reader.state.as_ref().map(|s| s.input.clone()),
        "skipped": reader.state.as_ref().map(|s| s.skipped.clone()),
        "truncated": reader.state.as_ref().map(|s| s.truncated),
    });
    let mut builder = IndexBuilder::create(out, opts)?;
    let pb = progress::bar(Some(reader.len() as u64), "docs");
    pb.set_prefix("indexing");
    while let Some(d) = reader.next_doc()? {
        let vectors = TokenVectors::new(reader.dim, d.vectors)?;
        builder.add(Document {
            id: d.id,
            vectors,
            title: d.title,
            text: d.text,
            metadata: d.metadata,
        })?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tokens = progress::bar(Some(reader.tokens), "tokens");
    let stats = builder.finish(&mut |p| match p.phase {
        Phase::Train => tokens.set_prefix("training centroids"),
        Phase::Encode => {
            tokens.set_prefix("coding tokens");
            tokens.set_position(p.done);
        }
        Phase::Commit => tokens.set_prefix("committing"),
    })?;
    tokens.finish_and_clear();
    Ok((stats, skipped))
}
