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
    #[command(flatten)]
    pub input: QueryInput,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reduce: crate::commands::reduce::ReductionArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What to search for, shared by `search` and `query`: one query, or a
/// file of them with the run file to write; and `k`.
#[derive(Args, Debug)]
pub struct QueryInput {
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
}

impl QueryInput {
    /// The queries of `--queries`, refusing an empty file; `None` for a
    /// single query.
    pub fn batch(&self) -> Result<Option<Vec<tessera_eval::beir::Query>>> {
        let Some(qpath) = &self.queries else {
            return Ok(None);
        };
        let queries = tessera_eval::beir::read_queries(qpath)?;
        if queries.is_empty() {
            bail!("{}: no queries", qpath.display());
        }
        Ok(Some(queries))
    }

    /// The single query's text, refusing an empty one.
    pub fn text(&self) -> Result<&str> {
        let query = self.query.as_deref().expect("clap requires a query");
        check_text(query, "the query")?;
        Ok(query)
    }

    /// Writes `run` (of `n` queries, started at `t`) to `--run-out` under
    /// the run name `name`, and says so on stderr.
    pub fn write_run(
        &self,
        run: &tessera_eval::Run,
        name: &str,
        n: usize,
        t: Instant,
    ) -> Result<()> {
        let out = self.run_out.as_ref().expect("clap requires --run-out");
        run.write(out, name)?;
        eprintln!(
            "{n} queries in {:.2} s; run written to {}",
            t.elapsed().as_secs_f64(),
            out.display()
        );
        Ok(())
    }
}

pub fn run(args: SearchArgs) -> Result<()> {
    let engine = Engine::open(&args.index, &args.model, args.rank.retriever)?;
    args.reduce.check_index(&engine.index, &args.index)?;
    let params = args.rank.params(args.input.k as usize)?;
    if let Some(f) = &params.filter {
        warn_unknown_fields(&engine.index, f);
    }
    if let Some(queries) = args.input.batch()? {
        let t = Instant::now();
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix("searching");
        let (run, _) = engine.run_queries(&queries, args.rank.retriever, &params, &pb)?;
        pb.finish_and_clear();
        let name = format!("tessera-{}", args.rank.retriever);
        return args.input.write_run(&run, &name, queries.len(), t);
    }
    let query = args.input.text()?;
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
        write_hit(&mut w, i + 1, h.score, &h.id, &d.title, &d.text)?;
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
    if let Some(u) = crate::searcher::unknown_fields(index, f) {
        eprintln!(
            "warning: --filter names {} that no document has (a condition on it never \
             matches); metadata fields in this index: {}",
            u.listed, u.present
        );
    }
}

/// One ranked hit as `search` and `query` print it: rank, score, id, the
/// title (or "(no title)"), then a line of text when there is any.
pub fn write_hit(
    w: &mut impl Write,
    rank: usize,
    score: f32,
    id: &str,
    title: &str,
    text: &str,
) -> std::io::Result<()> {
    let title = if title.is_empty() {
        "(no title)"
    } else {
        title
    };
    writeln!(w, "{rank:>3}. {score:>9.4}  {id}  {}", snippet(title, 90))?;
    if !text.is_empty() {
        writeln!(w, "                {}", snippet(text, 160))?;
    }
    Ok(())
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
