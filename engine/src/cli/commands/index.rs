//! `tessera index build | add | delete | compact | info | verify`.
//!
//! A build from a dump runs in two steps: encode the documents into a work
//! folder next to the index (`.NAME.encoding/`, the `encode-corpus` layout,
//! checkpointed), then stream those vectors into the index builder. A build
//! that is interrupted resumes with `--resume` from the last checkpoint and
//! gives the same index as an uninterrupted one; the work folder goes away
//! once the index is in place.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tessera_index::{Analyzer, BuildOptions, CodecKind};

use crate::cli::args::ModelArgs;
use crate::cli::args::{parse_analyzer, RecordArgs, ReductionArgs};
use tessera_engine::ingest::{
    add_from_input, build_from_input, build_from_vectors, skipped_note, Built, Input,
};
use tessera_engine::reduction::apply_to_options;

/// Build, update and inspect indexes.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera index build --input corpus.jsonl --out scifact.idx\n  \
    tessera index build --embeddings vectors/ --out scifact.idx --codec f16\n  \
    tessera index add --index scifact.idx --input more.jsonl\n  \
    tessera index delete --index scifact.idx --ids 4983\n  \
    tessera index compact scifact.idx\n  \
    tessera index info scifact.idx")]
pub struct IndexArgs {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    Build(Box<BuildArgs>),
    Add(Box<AddArgs>),
    Delete(DeleteArgs),
    Compact(CompactArgs),
    Info(InfoArgs),
    Verify(VerifyArgs),
}

/// Build an index from a document dump (encoding it) or from precomputed
/// vectors.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera index build --input path/to/beir/scifact/corpus.jsonl --out scifact.idx\n  \
    zcat dump.jsonl.gz | tessera index build --input - --out dump.idx --skip-invalid\n  \
    tessera index build --input collection.tsv.zst --out msmarco.idx --codec residual2\n  \
    tessera index build --embeddings vectors/ --out other.idx\n  \
    tessera index build --input corpus.jsonl --out small.idx --reduction my-reduction --dim 32\n  \
    tessera index build --input part-001.jsonl --out shard-001 --codec-from shard-000\n\n\
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
    /// Code with the centroids, buckets and codec of this index instead of
    /// training new ones (the shards of one collection share a codec, so
    /// their scores agree).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["codec", "centroids"])]
    pub codec_from: Option<PathBuf>,
    /// BM25 text analysis, recorded in the manifest: en (English:
    /// stemming, stop words, ASCII folding) or simple (lower-cased words,
    /// for any language).
    #[arg(long, default_value = "en", value_parser = parse_analyzer)]
    pub analyzer: Analyzer,
    /// Number of centroids (default 2^round(log2(16·√tokens))).
    #[arg(long, value_name = "K")]
    pub centroids: Option<usize>,
    /// k-means: Lloyd iterations on the training sample.
    #[arg(long, value_name = "N", default_value_t = BuildOptions::default().kmeans_iters)]
    pub kmeans_iters: usize,
    /// k-means: training-sample tokens per centroid.
    #[arg(long, value_name = "N", default_value_t = BuildOptions::default().sample_per_centroid)]
    pub kmeans_sample: usize,
    /// k-means: Lloyd iterations over every token after the sample.
    #[arg(long, value_name = "N", default_value_t = BuildOptions::default().refine_passes)]
    pub refine_passes: usize,
    /// Nearest-centroid search: groups probed per token past 2,048
    /// centroids (0: compare with every centroid; slower, exact).
    #[arg(long, value_name = "N", default_value_t = BuildOptions::default().assign_probe)]
    pub assign_probe: usize,
    /// Residual codecs: Lloyd–Max iterations refining the buckets.
    #[arg(long, value_name = "N", default_value_t = BuildOptions::default().bucket_iters)]
    pub bucket_iters: usize,
    /// k-means: seed of the training sample and the starting centroids.
    /// The same vectors and seed give the same index, byte for byte;
    /// another seed builds another index of the same vectors (how much a
    /// score moves between builds).
    #[arg(long, value_name = "N", default_value_t = BuildOptions::default().seed)]
    pub kmeans_seed: u64,
    /// Centroids of unit-length vectors: mean (each at its tokens' mean;
    /// smaller residuals) or unit (renormalised, as PLAID does).
    #[arg(long, value_enum, default_value_t = CentroidArg::Mean)]
    pub centroids_at: CentroidArg,
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
    pub reduce: ReductionArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Add the documents of a dump to an existing index, atomically: encoded
/// with the model and precision that built it, coded with its centroids,
/// and committed as one new segment — searches see all of them or none.
/// An id already in the index (or twice in the dump) stops it before
/// anything is committed, unless --skip-invalid skips such documents.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera index add --index scifact.idx --input new-abstracts.jsonl\n  \
    zcat more.jsonl.gz | tessera index add --index scifact.idx --input - --skip-invalid")]
pub struct AddArgs {
    /// The index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// The dump, in any format `index build` reads (`-`: standard input).
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    #[command(flatten)]
    pub records: RecordArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Delete documents by id, atomically (one commit tombstones them all);
/// ids not in the index are listed on stderr, not an error.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera index delete --index scifact.idx --ids 4983 5836\n  \
    tessera index delete --index scifact.idx --ids-file retracted.txt")]
pub struct DeleteArgs {
    /// The index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Ids to delete.
    #[arg(long, value_name = "ID", num_args = 1.., required_unless_present = "ids_file")]
    pub ids: Vec<String>,
    /// A file with one id per line (blank lines ignored; `-`: stdin).
    #[arg(long, value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
}

/// Fold an index's segments into one and drop deleted documents (codes are
/// copied, not re-encoded: no loss); atomic like every update.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  tessera index compact scifact.idx")]
pub struct CompactArgs {
    /// The index folder.
    #[arg(value_name = "DIR")]
    pub index: PathBuf,
}

/// Print an index's summary as JSON: documents, tokens, dimension, codec,
/// centroids, BM25 analyzer, segments and the model that built it.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  tessera index info scifact.idx")]
pub struct InfoArgs {
    /// The index folder.
    #[arg(value_name = "DIR")]
    pub index: PathBuf,
}

/// Check an index end to end: reread every file and compare its size and
/// CRC32 with the manifest's; exits non-zero naming the first damaged file.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  tessera index verify scifact.idx")]
pub struct VerifyArgs {
    /// The index folder.
    #[arg(value_name = "DIR")]
    pub index: PathBuf,
}

pub fn run(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(b) => build(*b),
        IndexCommand::Add(a) => add(*a),
        IndexCommand::Delete(d) => delete(d),
        IndexCommand::Compact(c) => {
            let t = Instant::now();
            let generation = tessera_index::compact(&c.index)
                .with_context(|| format!("compacting {}", c.index.display()))?;
            let index = tessera_index::Index::open(&c.index)?;
            eprintln!(
                "compacted {} into 1 segment ({} documents, generation {generation}) in {:.1} s",
                c.index.display(),
                index.manifest().live_docs(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        IndexCommand::Info(i) => {
            let index = tessera_index::Index::open(&i.index)?;
            let m = index.manifest();
            let v = serde_json::json!({
                "path": i.index, "documents": m.live_docs(), "tokens": m.tokens(),
                "dim": m.dim, "codec": m.codec.to_string(), "centroids": m.num_centroids,
                "analyzer": m.analyzer.to_string(), "segments": m.segments.len(),
                "generation": m.generation, "info": m.info,
            });
            writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&v)?)?;
            Ok(())
        }
        IndexCommand::Verify(i) => {
            let index = tessera_index::Index::open(&i.index)?;
            let r = index.verify()?;
            writeln!(
                std::io::stdout(),
                "{}: OK ({} files, {} bytes checked)",
                i.index.display(),
                r.files,
                r.bytes
            )?;
            Ok(())
        }
    }
}

/// The hidden work folder for encoding `out`'s documents.
/// `--centroids-at` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CentroidArg {
    Mean,
    Unit,
}

fn build(args: BuildArgs) -> Result<()> {
    let codec: CodecKind = args.codec.parse()?;
    let mut opts = BuildOptions {
        codec,
        num_centroids: args.centroids,
        memory_budget: args.memory_mb.max(16) << 20,
        overwrite: args.overwrite,
        analyzer: args.analyzer,
        kmeans_iters: args.kmeans_iters.max(1),
        sample_per_centroid: args.kmeans_sample.max(1),
        refine_passes: args.refine_passes,
        assign_probe: args.assign_probe,
        bucket_iters: args.bucket_iters,
        mean_centroids: args.centroids_at == CentroidArg::Mean,
        seed: args.kmeans_seed,
        ..BuildOptions::default()
    };
    if let Some(source) = &args.codec_from {
        tessera_engine::ingest::share_codec(&mut opts, source)?;
    }
    if args.out.join(tessera_index::manifest::MANIFEST).exists() && !args.overwrite {
        bail!(
            "{}: an index exists already (pass --overwrite to replace it)",
            args.out.display()
        );
    }
    // A reduction is checked against the model's width before anything is
    // encoded (and the model loaded for it encodes).
    let mut encoder = None;
    if args.reduce.reduction.is_some() {
        if args.input.is_some() {
            encoder = Some(args.model.options().load()?);
        }
        if let Some((red, r)) = args
            .reduce
            .choice()
            .load(encoder.as_ref().map(|e| e.dim()))?
        {
            apply_to_options(&mut opts, &red, r)?;
        }
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
            let input = Input {
                input: input.clone(),
                records: args.records.options(),
            };
            build_from_input(
                &args.model.options(),
                &input,
                &args.out,
                opts,
                args.resume,
                args.checkpoint_every as usize,
                encoder,
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

/// `index add`: encode the dump and append it as one segment.
fn add(args: AddArgs) -> Result<()> {
    let t = Instant::now();
    let input = Input {
        input: args.input.clone(),
        records: args.records.options(),
    };
    let added = add_from_input(&args.index, &args.model.options(), &input)?;
    let mut skipped = skipped_note(&added.state.skipped);
    if added.already_there > 0 {
        skipped.push_str(&format!(
            "; {} already in the index, skipped",
            added.already_there
        ));
    }
    eprintln!(
        "added {} documents, {} tokens to {} (generation {}) in {:.1} s{skipped}",
        added.state.docs - added.already_there,
        added.state.tokens,
        args.index.display(),
        added.generation,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `index delete`: tombstone the ids in one commit.
fn delete(args: DeleteArgs) -> Result<()> {
    let mut ids = args.ids.clone();
    if let Some(f) = &args.ids_file {
        let text = if f == Path::new("-") {
            std::io::read_to_string(std::io::stdin()).context("reading ids from stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?
        };
        ids.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    if ids.is_empty() {
        bail!("no ids to delete (give --ids or a non-empty --ids-file)");
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let missing = tessera_index::delete(&args.index, &refs)
        .with_context(|| format!("deleting from {}", args.index.display()))?;
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        eprintln!(
            "warning: {} id{} not in the index (or deleted already): {}{}",
            missing.len(),
            if missing.len() == 1 { " is" } else { "s are" },
            shown.join(", "),
            if missing.len() > 10 { ", …" } else { "" }
        );
    }
    eprintln!(
        "deleted {} documents from {}",
        ids.len() - missing.len(),
        args.index.display()
    );
    Ok(())
}
