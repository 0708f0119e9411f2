//! `tessera encode-corpus`: encode a document dump into an embeddings folder
//! (see [`tessera_engine::embeddings`]), resumably. `tessera index build
//! --input` runs the same job into a work folder first.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use tessera_engine::ingest::{encode_to_dir, skipped_note, Input, Rerun};

use crate::cli::args::{ModelArgs, RecordArgs};

/// Encode a document dump to token vectors on disk (embeddings.npy,
/// doclens.npy, ids.txt, docs.jsonl), for `tessera index build --embeddings`
/// or other engines.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera encode-corpus --input corpus.jsonl --out scifact-vectors\n  \
    tessera index build --embeddings scifact-vectors --out scifact.idx\n\n\
    An interrupted run continues from its last checkpoint with --resume.")]
pub struct EncodeCorpusArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dump: BEIR corpus.jsonl, any JSONL, or TSV (`id<TAB>text`),
    /// optionally .gz or .zst; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    #[command(flatten)]
    pub records: RecordArgs,
    /// Output folder (created; must be empty unless resuming).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Documents per checkpoint (and per encoding group).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_every: u32,
}

pub fn run(args: EncodeCorpusArgs) -> Result<()> {
    let encoder = args.model.options().load()?;
    let t = Instant::now();
    let input = Input {
        input: args.input.clone(),
        records: args.records.options(),
    };
    let state = encode_to_dir(
        &encoder,
        &input,
        &args.out,
        args.resume,
        args.checkpoint_every as usize,
        Rerun::WithResume,
    )?;
    eprintln!(
        "encoded {} documents, {} tokens ({}-dim) into {} in {:.1} s{}",
        state.docs,
        state.tokens,
        state.dim,
        args.out.display(),
        t.elapsed().as_secs_f64(),
        skipped_note(&state.skipped)
    );
    Ok(())
}
