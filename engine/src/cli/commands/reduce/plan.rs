//! `tessera reduce plan`: flags → [`PlanOptions`] →
//! [`tessera_engine::fit::plan::plan_budget`], then the table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tessera_engine::fit::plan::{plan_budget, CentroidCount, PlanOptions, PlanRow, Probe};

use crate::cli::args::ModelArgs;

fn parse_centroids(s: &str) -> Result<CentroidCount, String> {
    s.parse()
}

fn parse_probe(s: &str) -> Result<Probe, String> {
    s.parse()
}

fn print_plan(
    rows: &[PlanRow],
    pick: Option<usize>,
    reference: Option<&PlanRow>,
    matched: Option<&PlanRow>,
    budget: f64,
) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(
        o,
        "| dim | codec | centroids | search | bytes/token | nDCG@10 | % of reference | Recall@k | search p50 ms | speed-up | index MiB | build s |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, r) in rows.iter().enumerate() {
        let pct = reference.map_or("-".into(), |f| {
            format!("{:.1} %", 100.0 * r.ndcg10 / f.ndcg10.max(1e-12))
        });
        let speed = reference.map_or("-".into(), |f| {
            format!("{:.2}×", f.search_p50_ms / r.search_p50_ms.max(1e-9))
        });
        let mark = if Some(i) == pick {
            " **recommended**"
        } else if r.reference && r.default_settings {
            " (reference)"
        } else if !r.fits {
            " (over budget)"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "| {} | {}{mark} | {} | {} | {:.1} | {:.4} | {pct} | {:.4} | {:.2} | {speed} | {:.1} | {:.1} |",
            r.dim,
            r.codec,
            r.centroids,
            r.probe,
            r.bytes_per_token,
            r.ndcg10,
            r.recall,
            r.search_p50_ms,
            r.index_bytes as f64 / (1 << 20) as f64,
            r.build_s
        );
    }
    match pick {
        Some(i) => {
            let r = &rows[i];
            let vs = reference.map_or(String::new(), |f| {
                format!(
                    ": {:.1} % of the reference's nDCG@10 (full-width f16, default build and search), {:.2}× its search speed",
                    100.0 * r.ndcg10 / f.ndcg10.max(1e-12),
                    f.search_p50_ms / r.search_p50_ms.max(1e-9)
                )
            });
            let _ = writeln!(
                o,
                "\nrecommended within {budget} bytes/token: dim {} with {} ({:.1} bytes/token), {} centroids, search {}{vs}",
                r.dim, r.codec, r.bytes_per_token, r.centroids, r.probe
            );
            if let (Some(f), Some(m)) = (reference, matched) {
                let pick_is_full = m.dim == r.dim && m.codec == r.codec;
                if !r.default_settings && !pick_is_full {
                    let _ = writeln!(
                        o,
                        "the full-width f16 index with the same centroids and search settings: {:.1} % of the reference's nDCG@10, {:.2}× its speed — the reduction itself is {:.2}× faster than it",
                        100.0 * m.ndcg10 / f.ndcg10.max(1e-12),
                        f.search_p50_ms / m.search_p50_ms.max(1e-9),
                        m.search_p50_ms / r.search_p50_ms.max(1e-9)
                    );
                }
            }
        }
        None => {
            let _ = writeln!(o, "\nno pair fits {budget} bytes/token");
        }
    }
}

/// Measure dev nDCG@10 and search p50 of every configuration — dim, codec,
/// centroid count, search setting — that fits a budget in bytes per token,
/// from one encoding of the corpus, and recommend one.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera reduce plan --dataset path/to/beir/scifact --budget 16 --reduction reductions/orthogonal\n  \
    tessera reduce plan --dataset path/to/beir/scifact --budget 16 --reduction reductions/orthogonal \\\n    \
      --centroids auto,4096 --probes 32/512,16/256/256,16/256/1/1280 --min-share 0.95\n  \
    tessera reduce plan --dataset path/to/beir/nfcorpus --budget 40 --codecs f16,residual2 --json plan.json\n\n\
    Bytes per token = the codec's bytes at dim r plus the 4-byte centroid id every index stores\n\
    (f16 2r, int8 r + 4, residual-b r·b/8). For each codec the walk goes up the dims (the\n\
    reduction's nested set, and the model's full width) while the pair fits; each pair is built\n\
    once per --centroids value (an index from the one cached encoding: the corpus is encoded once\n\
    per model) and searched with every dev query at each --probes setting (cells per query token,\n\
    probe budget, and optionally the approximate pass's survivors and the exact re-rank budget).\n\
    The full-width f16 index is measured too, at every centroid count and setting: the one built\n\
    and searched with the defaults is the reference. Search p50 is over --rounds interleaved rounds.\n\
    The recommendation is the best nDCG@10 within the budget (ties within 0.002: the faster\n\
    one), or with --min-share S the fastest configuration that keeps S of the reference's\n\
    nDCG@10. The report also gives the full-width index's own speed at the recommendation's\n\
    centroids and search setting, so what the reduction buys is told apart from what a coarser\n\
    quantiser or a narrower search buys; it ends with the build and search options to use.")]
pub struct PlanArgs {
    /// A BEIR dataset folder.
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,
    /// The qrels split measured on.
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Bytes per token the index may spend.
    #[arg(long, value_name = "BYTES")]
    pub budget: f64,
    /// The reduction giving the smaller dims (none: full width only).
    #[arg(long, value_name = "DIR")]
    pub reduction: Option<PathBuf>,
    /// Dims considered (default: the reduction's set and the model's width).
    #[arg(long, value_delimiter = ',', value_name = "R,..")]
    pub dims: Vec<usize>,
    /// Codecs considered.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f16,int8,residual1,residual2,residual4"
    )]
    pub codecs: Vec<String>,
    /// Centroid counts each pair is built with (`index build --centroids`);
    /// auto: the build default, 2^round(log2(16·√tokens)).
    #[arg(long, value_delimiter = ',', default_value = "auto", value_parser = parse_centroids, value_name = "K,..")]
    pub centroids: Vec<CentroidCount>,
    /// Search settings timed on every index, as N_PROBE/PROBE_BUDGET, with
    /// optionally /N_APPROX and /RERANK_BUDGET (`search --n-probe N
    /// --probe-budget B --n-approx A --rerank-budget R`; A and R default to
    /// the search defaults, 1024 and 4096; A = 1 skips the second
    /// approximate pass).
    #[arg(long, value_delimiter = ',', default_value = "32/512", value_parser = parse_probe, value_name = "N/B[/A[/R]],..")]
    pub probes: Vec<Probe>,
    /// Recommend the fastest fitting configuration that keeps at least
    /// this share of the reference's nDCG@10 (e.g. 0.95), instead of the
    /// best nDCG@10.
    #[arg(long, value_name = "SHARE")]
    pub min_share: Option<f64>,
    /// Timing rounds over every index and probe setting, interleaved
    /// (search p50 is over all of them; nDCG@10 is from the first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Results per query when timing search (nDCG@10 needs 10).
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Skip the full-width f16 reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Write the whole table as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the indexes in this folder (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    pub keep_indexes: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl PlanArgs {
    /// The library's options for these flags.
    pub fn options(self) -> PlanOptions {
        PlanOptions {
            dataset: self.dataset,
            split: self.split,
            budget: self.budget,
            reduction: self.reduction,
            dims: self.dims,
            codecs: self.codecs,
            centroids: self.centroids,
            probes: self.probes,
            min_share: self.min_share,
            rounds: self.rounds,
            k: self.k,
            no_reference: self.no_reference,
            json: self.json,
            keep_indexes: self.keep_indexes,
            model: self.model.options(),
        }
    }
}

pub fn plan(args: PlanArgs) -> Result<()> {
    let budget = args.budget;
    let reduction = args.reduction.clone();
    let p = plan_budget(&args.options())?;
    let row = |i: Option<usize>| i.map(|i| &p.rows[i]);
    print_plan(&p.rows, p.pick, row(p.reference), row(p.matched), budget);
    if let Some(n) = &p.note {
        println!("({n})");
    }
    if let Some(r) = row(p.pick) {
        let red_opt = match (&reduction, r.dim < p.model_dim) {
            (Some(d), true) => format!(" --reduction {} --dim {}", d.display(), r.dim),
            _ => String::new(),
        };
        println!(
            "build it:  tessera index build --input CORPUS --out INDEX --codec {} --centroids {}{red_opt}",
            r.codec, r.centroids
        );
        println!(
            "search it: tessera search --index INDEX{red_opt} {} (the same options for eval and serve)",
            r.probe.options()
        );
    }
    eprintln!("planned in {:.1} s", p.seconds);
    Ok(())
}
