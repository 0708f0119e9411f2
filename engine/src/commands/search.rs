//! `tessera search`: query an index from the command line, one query or a
//! file of them (writing a TREC run).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::input::check_text;
use crate::model::ModelArgs;
use crate::progress;
use crate::searcher::{Engine, RankArgs};

/// Search an index: ColBERT MaxSim, BM25 or hybrid.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera search --index scifact.idx \"coffee reduces the risk of diabetes\"\n  \
    tessera search --index scifact.idx --retriever hybrid -k 5 --json \"vitamin D and bone density\"\n  \
    tessera search --index scifact.idx --queries queries.jsonl --run-out run.trec -k 1000\n\n\
    The model that built the index is used unless --model names another.")]
pub struct SearchArgs {
    /// The index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// The query text.
    #[arg(value_name = "QUERY", required_unless_present = "queries")]
    pub query: Option<String>,
    /// Queries file: JSONL (`{"_id", "text"}`) or TSV (`id<TAB>text`).
    #[arg(
        long,
        value_name = "FILE",
        requires = "run_out",
        conflicts_with = "query"
    )]
    pub queries: Option<PathBuf>,
    /// With --queries: the TREC run file to write.
    #[arg(long, value_name = "FILE")]
    pub run_out: Option<PathBuf>,
    /// Results per query.
    #[arg(short = 'k', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub k: u32,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: SearchArgs) -> Result<()> {
    let engine = Engine::open(&args.index, &args.model, args.rank.retriever)?;
    let params = args.rank.params(args.k as usize)?;
    if let Some(f) = &params.filter {
        warn_unknown_fields(&engine.index, f);
    }
    if let Some(qpath) = &args.queries {
        let queries = tessera_eval::beir::read_queries(qpath)?;
        if queries.is_empty() {
            bail!("{}: no queries", qpath.display());
        }
        let t = Instant::now();
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix("searching");
        let (run, _) = engine.run_queries(&queries, args.rank.retriever, &params, &pb)?;
        pb.finish_and_clear();
        let out = args.run_out.as_ref().expect("clap requires --run-out");
        run.write(out, &format!("tessera-{}", args.rank.retriever))?;
        eprintln!(
            "{} queries in {:.2} s; run written to {}",
            queries.len(),
            t.elapsed().as_secs_f64(),
            out.display()
        );
        return Ok(());
    }
    let query = args.query.as_deref().expect("clap requires a query");
    check_text(query, "the query")?;
    let t = Instant::now();
    let vecs = engine.encode_queries(&[query])?;
    let hits = engine.rank(args.rank.retriever, query, vecs.first(), &params)?;
    let took = t.elapsed().as_secs_f64() * 1e3;
    let mut w = std::io::stdout().lock();
    let docs: Vec<_> = hits
        .iter()
        .map(|h| engine.index.hit_document(h).unwrap_or_default())
        .collect();
    if args.json {
        let rows: Vec<_> = hits
            .iter()
            .zip(&docs)
            .enumerate()
            .map(|(i, (h, d))| {
                serde_json::json!({"rank": i + 1, "score": h.score, "id": h.id,
                    "title": d.title, "text": d.text, "metadata": d.metadata})
            })
            .collect();
        serde_json::to_writer(
            &mut w,
            &serde_json::json!({"query": query, "retriever": args.rank.retriever,
                "took_ms": took, "results": rows}),
        )?;
        writeln!(w)?;
        return Ok(());
    }
    if hits.is_empty() {
        writeln!(w, "no results")?;
    }
    for (i, (h, d)) in hits.iter().zip(&docs).enumerate() {
        let title = if d.title.is_empty() {
            "(no title)"
        } else {
            &d.title
        };
        writeln!(
            w,
            "{:>3}. {:>9.4}  {}  {}",
            i + 1,
            h.score,
            h.id,
            snippet(title, 90)
        )?;
        if !d.text.is_empty() {
            writeln!(w, "                {}", snippet(&d.text, 160))?;
        }
    }
    writeln!(
        w,
        "({} results, {} retriever, {took:.1} ms)",
        hits.len(),
        args.rank.retriever
    )?;
    Ok(())
}

/// A filter on a field no document has matches nothing: say so (on
/// stderr), with the fields there are.
pub fn warn_unknown_fields(index: &tessera_index::Index, f: &tessera_index::Filter) {
    let unknown = index.unknown_filter_fields(f);
    if unknown.is_empty() {
        return;
    }
    let have = index.metadata_fields();
    eprintln!(
        "warning: --filter names {} that no document has (a condition on it never matches); \
         metadata fields in this index: {}",
        unknown
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        if have.is_empty() {
            "none".to_owned()
        } else {
            have.join(", ")
        }
    );
}

/// The first `max` characters of `s` on one line, with "…" when cut.
pub fn snippet(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{}…", cut.trim_end())
}
