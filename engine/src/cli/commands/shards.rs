//! `tessera shards`: split a dump into document-partitioned shards, and
//! write the shard-set manifest over shards built from the parts (see
//! [`tessera_engine::shard`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use tessera_engine::ingest::Input;
use tessera_engine::shard::{split_dump, ShardSet};

use crate::cli::args::RecordArgs;

/// Document-partitioned shard sets: split a dump by document id, build
/// each part anywhere, then write the set's manifest.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera shards split --input corpus.jsonl --shards 4 --out parts/\n  \
    tessera index build --input parts/part-000.jsonl --out set/shard-000   # and so on, on any machine\n  \
    tessera shards manifest --dir set shard-000 shard-001 shard-002 shard-003\n\n\
    A document goes to shard FNV-1a-64(id) mod S, so an update always reaches the shard \
    that holds its id. Every shard must be built with the same model, reduction, codec \
    and analyzer; the manifest refuses one that is not.")]
pub struct ShardsArgs {
    #[command(subcommand)]
    pub command: ShardsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ShardsCommand {
    Split(SplitArgs),
    Manifest(ManifestArgs),
}

/// Route a dump's documents to S part files (BEIR corpus.jsonl) by id.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera shards split --input corpus.jsonl.gz --shards 8 --out parts/")]
pub struct SplitArgs {
    /// The dump: BEIR corpus.jsonl, any JSONL, or TSV, optionally .gz or
    /// .zst; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// Number of shards.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub shards: u32,
    /// Folder for the parts (`part-000.jsonl` …).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub records: RecordArgs,
}

/// Check every shard and write the set's manifest, shards.json.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera shards manifest --dir set shard-000 shard-001 shard-002 shard-003")]
pub struct ManifestArgs {
    /// The shard set's folder (the shards' paths are relative to it).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The shards' index folders, in shard order (shard i holds the ids
    /// that route to i).
    #[arg(required = true, value_name = "SHARD")]
    pub shards: Vec<String>,
}

pub fn run(args: ShardsArgs) -> Result<()> {
    match args.command {
        ShardsCommand::Split(a) => {
            let input = Input {
                input: a.input,
                records: a.records.options(),
            };
            let split = split_dump(&input, a.shards, &a.out)?;
            let total: u64 = split.docs.iter().sum();
            println!(
                "split {total} documents into {} parts in {} (per part: {:?}){}",
                split.parts.len(),
                a.out.display(),
                split.docs,
                tessera_engine::ingest::skipped_note(&split.skipped)
            );
        }
        ShardsCommand::Manifest(a) => {
            let set = ShardSet::write(&a.dir, &a.shards)?;
            println!(
                "{}: {} shards, {} documents, generation {}",
                a.dir.join(tessera_engine::shard::SHARDS_FILE).display(),
                set.shards.len(),
                set.shards.iter().map(|s| s.docs).sum::<u64>(),
                set.generation
            );
        }
    }
    Ok(())
}
