//! `tessera score`: MaxSim of one query against a few documents.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use tessera_index::maxsim;

use crate::cli::args::ModelArgs;
use tessera_engine::input::check_text;

/// Score documents against a query with exact MaxSim (late interaction).
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera score --query \"what causes tides?\" \\\n    \
    --doc \"The Moon's gravity pulls the oceans.\" --doc \"Volcanoes erupt magma.\"")]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The query.
    #[arg(long, value_name = "TEXT")]
    pub query: String,
    /// A document to score; repeat for several.
    #[arg(long = "doc", value_name = "TEXT", required = true)]
    pub docs: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    check_text(&args.query, "--query")?;
    for (i, d) in args.docs.iter().enumerate() {
        check_text(d, &format!("--doc #{}", i + 1))?;
    }
    let encoder = args.model.options().load()?;
    let q = encoder.encode_queries(&[args.query.as_str()])?;
    let refs: Vec<&str> = args.docs.iter().map(String::as_str).collect();
    let docs = encoder.encode_documents(&refs)?;
    let query = &q.items[0].vectors;
    let mut scored = Vec::with_capacity(refs.len());
    for (i, d) in docs.items.iter().enumerate() {
        scored.push((i, maxsim(query, &d.vectors)?));
    }
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));

    let mut w = std::io::stdout().lock();
    if args.json {
        let rows: Vec<_> = scored
            .iter()
            .map(|&(i, s)| serde_json::json!({"doc": i + 1, "score": s, "text": refs[i]}))
            .collect();
        serde_json::to_writer(
            &mut w,
            &serde_json::json!({"query": args.query, "results": rows}),
        )?;
        writeln!(w)?;
    } else {
        writeln!(
            w,
            "query {:?}: {} vectors; MaxSim (max {} = one per query token)",
            args.query,
            query.len(),
            query.len()
        )?;
        for (rank, &(i, s)) in scored.iter().enumerate() {
            let shown: String = refs[i].chars().take(70).collect();
            writeln!(w, "  {}. {s:>8.4}  doc #{}  {shown:?}", rank + 1, i + 1)?;
        }
    }
    Ok(())
}
