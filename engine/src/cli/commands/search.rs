//! `tessera search`: query an index from the command line, one query or a
//! file of them (writing a TREC run).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use tessera_engine::progress;
use tessera_engine::retrieve::Engine;

use crate::cli::args::{ModelArgs, QueryInput, RankArgs, ReductionArgs};
use crate::cli::print::write_hit;

/// Search an index: ColBERT MaxSim, BM25 or hybrid.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera search --index scifact.idx \"coffee reduces the risk of diabetes\"\n  \
    tessera search --index scifact.idx --retriever hybrid -k 5 --json \"vitamin D and bone density\"\n  \
    tessera search --index scifact.idx --queries queries.jsonl --run-out run.trec -k 1000\n  \
    tessera search --index set/ \"coffee and diabetes\"   # a shard set: every shard, merged\n\n\
    The model that built the index is used unless --model names another. --index may name a \
    shard set (a folder with shards.json, see `tessera shards --help`).")]
pub struct SearchArgs {
    /// The index folder (or a shard set's folder).
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    #[command(flatten)]
    pub input: QueryInput,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reduce: ReductionArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: SearchArgs) -> Result<()> {
    if tessera_engine::shard::ShardSet::is_shard_set(&args.index) {
        return run_shards(args);
    }
    let retriever = args.rank.retriever();
    let engine = Engine::open(&args.index, &args.model.options(), retriever)?;
    args.reduce
        .choice()
        .check_index(&engine.index, &args.index)?;
    let params = args.rank.params(args.input.k as usize)?;
    if let Some(f) = &params.filter {
        warn_unknown_fields(&engine.index, f);
    }
    if let Some(queries) = args.input.batch()? {
        let t = Instant::now();
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix("searching");
        let (run, _) = engine.run_queries(&queries, retriever, &params, &pb)?;
        pb.finish_and_clear();
        let name = format!("tessera-{}", retriever);
        return args.input.write_run(&run, &name, queries.len(), t);
    }
    let query = args.input.text()?;
    let t = Instant::now();
    let vecs = engine.encode_queries(&[query])?;
    let hits = engine.rank(retriever, query, vecs.first(), &params)?;
    let took = t.elapsed().as_secs_f64() * 1e3;
    let docs: Vec<_> = hits
        .iter()
        .map(|h| engine.index.hit_document(h).unwrap_or_default())
        .collect();
    print_hits(&args, query, &hits, &docs, took)
}

/// `--index` names a shard set (a folder with shards.json): every shard is
/// searched and the answers merged (see `tessera shards --help`).
fn run_shards(args: SearchArgs) -> Result<()> {
    let retriever = args.rank.retriever();
    let set =
        tessera_engine::shard::ShardSearch::open(&args.index, &args.model.options(), retriever)?;
    let params = args.rank.params(args.input.k as usize)?;
    if let Some(queries) = args.input.batch()? {
        let t = Instant::now();
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix("searching");
        let (run, _) = set.run_queries(&queries, retriever, &params, &pb)?;
        pb.finish_and_clear();
        let name = format!("tessera-{}", retriever);
        return args.input.write_run(&run, &name, queries.len(), t);
    }
    let query = args.input.text()?;
    let t = Instant::now();
    let vecs = set.encode_queries(&[query])?;
    let found = set.shards.rank(retriever, query, vecs.first(), &params)?;
    let took = t.elapsed().as_secs_f64() * 1e3;
    let docs: Vec<_> = found.iter().map(|h| set.document(h)).collect();
    let hits: Vec<_> = found.into_iter().map(|h| h.hit).collect();
    print_hits(&args, query, &hits, &docs, took)
}

/// Prints one query's hits, as text or JSON.
fn print_hits(
    args: &SearchArgs,
    query: &str,
    hits: &[tessera_index::Hit],
    docs: &[tessera_index::StoredDoc],
    took: f64,
) -> Result<()> {
    let retriever = args.rank.retriever();
    let mut w = std::io::stdout().lock();
    if args.json {
        let rows: Vec<_> = hits
            .iter()
            .zip(docs)
            .enumerate()
            .map(|(i, (h, d))| {
                serde_json::json!({"rank": i + 1, "score": h.score, "id": h.id,
                    "title": d.title, "text": d.text, "metadata": d.metadata})
            })
            .collect();
        serde_json::to_writer(
            &mut w,
            &serde_json::json!({"query": query, "retriever": retriever,
                "took_ms": took, "results": rows}),
        )?;
        writeln!(w)?;
        return Ok(());
    }
    if hits.is_empty() {
        writeln!(w, "no results")?;
    }
    for (i, (h, d)) in hits.iter().zip(docs).enumerate() {
        write_hit(&mut w, i + 1, h.score, &h.id, &d.title, &d.text)?;
    }
    writeln!(
        w,
        "({} results, {} retriever, {took:.1} ms)",
        hits.len(),
        retriever
    )?;
    Ok(())
}

/// A filter on a field no document has matches nothing: say so (on
/// stderr), with the fields there are.
pub fn warn_unknown_fields(index: &tessera_index::Index, f: &tessera_index::Filter) {
    if let Some(u) = tessera_engine::retrieve::unknown_fields(index, f) {
        eprintln!(
            "warning: --filter names {} that no document has (a condition on it never \
             matches); metadata fields in this index: {}",
            u.listed, u.present
        );
    }
}
