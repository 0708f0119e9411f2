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

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use tessera_index::{
    Analyzer, BuildOptions, BuildStats, CodecKind, Document, IndexBuilder, Phase, TokenVectors,
};

use crate::commands::encode_corpus::{encode_to_dir, skipped_note, InputArgs, RecordArgs, Rerun};
use crate::commands::reduce::{apply_to_options, ReductionArgs};
use crate::embeddings::{load_state, EmbeddingsReader};
use crate::model::ModelArgs;
use crate::progress;

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
    tessera index build --input corpus.jsonl --out small.idx --reduction my-reduction --dim 32\n\n\
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

/// `--analyzer` values.
pub fn parse_analyzer(s: &str) -> Result<Analyzer, String> {
    match s.parse::<Analyzer>() {
        Ok(Analyzer::Legacy) => Err("legacy is only read, not built (en, simple)".into()),
        Ok(a) => Ok(a),
        Err(e) => Err(e.to_string()),
    }
}

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
            encoder = Some(args.model.load()?);
        }
        if let Some((red, r)) = args.reduce.load(encoder.as_ref().map(|e| e.dim()))? {
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
/// `preloaded`: the model, when the caller has loaded it already.
pub fn build_from_input(
    model: &ModelArgs,
    input: &InputArgs,
    out: &Path,
    opts: BuildOptions,
    resume: bool,
    checkpoint_every: usize,
    preloaded: Option<tessera_training::Encoder>,
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
    // A failed build keeps what it encoded (for --resume): say where, and
    // how much disk it holds, rather than leave it unmentioned.
    let kept = |e: anyhow::Error| {
        if work.exists() {
            eprintln!(
                "note: the documents encoded so far are kept in {} ({:.1} MiB): \
                 fix the input and rerun with --resume to continue, or delete that folder",
                work.display(),
                crate::disk::dir_bytes(&work) as f64 / (1 << 20) as f64
            );
        }
        e
    };
    if !state.as_ref().is_some_and(|s| s.complete) {
        let encoder = match preloaded {
            Some(e) => e,
            None => model.load()?,
        };
        encode_to_dir(
            &encoder,
            input,
            &work,
            resume,
            checkpoint_every,
            Rerun::WithResume,
        )
        .map_err(kept)?;
    }
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (stats, skipped) = build_from_vectors(&work, out, opts).map_err(kept)?;
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
    let mut note = reader
        .state
        .as_ref()
        .map(|s| skipped_note(&s.skipped))
        .unwrap_or_default();
    let empty = reader.doclens.iter().filter(|&&l| l == 0).count();
    let recorded = std::mem::take(&mut opts.info);
    opts.info = serde_json::json!({
        "built_by": format!("tessera {}", env!("CARGO_PKG_VERSION")),
        "model": reader.state.as_ref().map(|s| s.model.clone()),
        "input": reader.state.as_ref().map(|s| s.input.clone()),
        "skipped": reader.state.as_ref().map(|s| s.skipped.clone()),
        "truncated": reader.state.as_ref().map(|s| s.truncated),
        "empty_documents": empty,
    });
    // What the caller recorded (e.g. the reduction) is kept.
    if let (serde_json::Value::Object(into), serde_json::Value::Object(from)) =
        (&mut opts.info, recorded)
    {
        into.extend(from);
    }
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
    if empty > 0 {
        note.push_str(&format!(
            "; {empty} empty document{} (no text to encode) indexed with no tokens",
            if empty == 1 { "" } else { "s" }
        ));
    }
    Ok((stats, note))
}

/// `index add`: encode the dump into a private work folder next to the
/// index, then append it as one segment (the library's atomic append).
fn add(args: AddArgs) -> Result<()> {
    let t = Instant::now();
    let index = tessera_index::Index::open(&args.index)
        .with_context(|| format!("opening index {}", args.index.display()))?;
    let (encoder, _) = args.model.load_for_index(&index, &args.index)?;
    let name = args
        .index
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a usable index path", args.index.display()))?;
    let parent = args
        .index
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = parent.join(format!(".{name}.adding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let input = InputArgs {
        input: args.input.clone(),
        records: args.records.clone(),
    };
    let result = (|| {
        let state = encode_to_dir(&encoder, &input, &work, false, 1024, Rerun::FromScratch)?;
        let mut reader = EmbeddingsReader::open(&work)?;
        // With --skip-invalid, documents whose id the index holds already
        // are skipped and counted; otherwise the append refuses them.
        // A read error must not leave a partial append committed: the
        // stream then ends with a document the append always refuses (an
        // empty id), so it writes nothing, and the error is reported.
        let mut taken = 0u64;
        let mut failed = None;
        let dim = reader.dim;
        let poison = move || {
            Some(Document {
                id: String::new(),
                vectors: TokenVectors::new(dim, Vec::new()).ok()?,
                title: String::new(),
                text: String::new(),
                metadata: serde_json::Value::Null,
            })
        };
        let mut done = false;
        let docs = std::iter::from_fn(|| loop {
            if done {
                return None;
            }
            match reader.next_doc() {
                Ok(Some(d)) if args.records.skip_invalid && index.contains(&d.id) => taken += 1,
                Ok(Some(d)) => {
                    let vectors = match TokenVectors::new(reader.dim, d.vectors) {
                        Ok(v) => v,
                        Err(e) => {
                            failed = Some(anyhow::Error::from(e));
                            done = true;
                            return poison();
                        }
                    };
                    return Some(Document {
                        id: d.id,
                        vectors,
                        title: d.title,
                        text: d.text,
                        metadata: d.metadata,
                    });
                }
                Ok(None) => return None,
                Err(e) => {
                    failed = Some(e);
                    done = true;
                    return poison();
                }
            }
        });
        let generation = tessera_index::append(&args.index, docs);
        if let Some(e) = failed {
            ensure!(
                generation.is_err(),
                "internal: an append went on past a read error"
            );
            return Err(e.context(format!(
                "reading the encoded documents back from {}; nothing was added",
                work.display()
            )));
        }
        let generation =
            generation.with_context(|| format!("adding to {}", args.index.display()))?;
        Ok::<_, anyhow::Error>((state, taken, generation))
    })();
    let _ = std::fs::remove_dir_all(&work);
    let (state, taken, generation) = result?;
    let mut skipped = skipped_note(&state.skipped);
    if taken > 0 {
        skipped.push_str(&format!("; {taken} already in the index, skipped"));
    }
    eprintln!(
        "added {} documents, {} tokens to {} (generation {generation}) in {:.1} s{skipped}",
        state.docs - taken,
        state.tokens,
        args.index.display(),
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
