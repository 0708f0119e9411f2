//! Index builds from a dump or from an embeddings folder.
//!
//! A build from a dump runs in two steps: encode the documents into a work
//! folder next to the index (`.NAME.encoding/`, the embeddings layout,
//! checkpointed), then stream those vectors into the index builder. A build
//! that is interrupted resumes from the last checkpoint and gives the same
//! index as an uninterrupted one; the work folder goes away once the index
//! is in place, and a failed build keeps it (and says where).

use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera_index::{BuildOptions, BuildStats, Document, IndexBuilder, Phase, TokenVectors};

use super::encode::{encode_to_dir, skipped_note, Input, Rerun};
use crate::embeddings::{load_state, EmbeddingsReader};
use crate::error::{bail, Context, EngineError, Result};
use crate::model::ModelOptions;
use crate::progress;

/// The work folder of a build of the index at `out`: `.NAME.encoding`
/// beside it.
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

/// What a build did.
pub struct Built {
    /// The index's counts and sizes.
    pub stats: BuildStats,
    /// `"; skipped …"` or empty.
    pub skipped: String,
    /// Seconds spent encoding.
    pub encode_s: f64,
    /// Seconds spent building the index.
    pub index_s: f64,
}

/// Encodes `input` (resumably, in the work folder next to `out`) and builds
/// the index at `out`; the work folder is removed once the index is in place.
/// `preloaded`: the model, when the caller has loaded it already.
pub fn build_from_input(
    model: &ModelOptions,
    input: &Input,
    out: &Path,
    opts: BuildOptions,
    resume: bool,
    checkpoint_every: usize,
    preloaded: Option<tessera_model::Encoder>,
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
    let kept = |e: EngineError| {
        if work.exists() {
            tracing::warn!(
                "the documents encoded so far are kept in {} ({:.1} MiB): \
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

/// Makes `opts` code vectors with the centroids and buckets of the index at
/// `source` (and its codec) instead of training its own: the indexes built
/// so score every vector alike — the shards of one collection. The vectors'
/// dimension is checked when the build trains.
pub fn share_codec(opts: &mut BuildOptions, source: &Path) -> Result<()> {
    let index = tessera_index::Index::open(source)
        .with_context(|| format!("--codec-from {}", source.display()))?;
    opts.codec = index.codec().kind;
    opts.trained = Some(tessera_index::Trained::of(&index));
    Ok(())
}
