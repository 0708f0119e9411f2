//! `tessera eval`: BEIR-style evaluation of a retriever on a dataset split,
//! of any TREC run file, and side-by-side comparison of reports.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_eval::metrics::default_measures;
use tessera_eval::{evaluate, stats, Measure, Qrels, Run};
use tessera_index::Analyzer;

use crate::cli::args::ModelArgs;
use crate::cli::args::{parse_analyzer, RankArgs, RecordArgs, ReductionArgs};
use tessera_engine::cache::dataset_name;
use tessera_engine::evaluate::{
    evaluate_datasets, fidelity, group, report_of, write_json, CombinedReport, DatasetSpec,
    EvalOptions, Report,
};
use tessera_engine::model::absolute;

/// Evaluate retrieval quality (nDCG@10, Recall@100, MAP@100, MRR@10) the
/// way trec_eval does, on one BEIR dataset or several in one run.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera eval --dataset path/to/beir/scifact --split dev\n  \
    tessera eval --dataset path/to/beir/scifact --dataset path/to/beir/nfcorpus:dev\n  \
    tessera eval --dataset path/to/beir/scifact --zero-shot path/to/beir/cranfield  \
    # in-domain and zero-shot means\n  \
    tessera eval --dataset path/to/beir/scifact --split dev --retriever bm25 --out bm25.json\n  \
    tessera eval --dataset cranfield --split test --skip-invalid\n  \
    tessera eval --run run.trec --qrels path/to/beir/scifact/qrels/dev.tsv\n  \
    tessera eval --compare bm25.json colbert.json hybrid.json\n\n\
    Without --index, each dataset's corpus is encoded once and indexed once\n\
    per codec (cached under $TESSERA_HOME/cache by dataset, model and codec)\n\
    and reused. With several datasets the table has a row per dataset and\n\
    their mean, and a combined report is written beside the per-dataset ones.")]
pub struct EvalArgs {
    /// A BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/); repeat
    /// for several. `DIR:SPLIT` picks that dataset's split.
    #[arg(long = "dataset", value_name = "DIR[:SPLIT]", conflicts_with_all = ["run", "compare"])]
    pub datasets: Vec<String>,
    /// A collection the model was not trained on (`DIR` or `DIR:SPLIT`):
    /// evaluated like --dataset, and averaged apart — the table and the
    /// combined report give an in-domain mean (the --dataset collections)
    /// and a zero-shot mean beside the overall one.
    #[arg(long = "zero-shot", value_name = "DIR[:SPLIT]", conflicts_with_all = ["run", "compare"])]
    pub zero_shot: Vec<String>,
    /// The qrels split of datasets given without `:SPLIT`.
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// An index of the dataset's corpus (one dataset only; default: build
    /// or reuse a cached one).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Codec of the cached index built when --index is not given.
    #[arg(long, default_value = "residual2")]
    pub codec: String,
    /// BM25 analyzer of the cached index: en or simple.
    #[arg(long, default_value = "en", value_parser = parse_analyzer)]
    pub analyzer: Analyzer,
    /// Results retrieved per query (the run's depth).
    #[arg(short = 'k', long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub k: u32,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Also report recall@10 against exhaustive MaxSim on the same index and
    /// against exact MaxSim over the unquantised f32 vectors (a cached f32
    /// index of the same encoding; with --index, give it as --exact-index).
    #[arg(long)]
    pub against_exact: bool,
    /// With --index and --against-exact: an f32 index of the same vectors.
    #[arg(long, value_name = "DIR", requires = "index")]
    pub exact_index: Option<PathBuf>,
    /// Measures (default nDCG@10,Recall@100,MAP@100,MRR@10).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub measures: Vec<String>,
    /// Where to write the JSON report (default
    /// eval-runs/DATASET-SPLIT-RETRIEVER.json; the run file goes next
    /// to it with .trec). With several datasets, the combined report; the
    /// per-dataset ones go beside it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Evaluate this TREC run file instead (with --qrels).
    #[arg(
        long,
        value_name = "FILE",
        requires = "qrels",
        conflicts_with = "compare"
    )]
    pub run: Option<PathBuf>,
    /// Judgements for --run: BEIR TSV or TREC qrels.
    #[arg(long, value_name = "FILE")]
    pub qrels: Option<PathBuf>,
    /// Average over every judged query, scoring queries missing from the
    /// run 0 (trec_eval -c). Dataset evaluations always do.
    #[arg(long)]
    pub complete: bool,
    /// Compare reports (single-dataset or combined) side by side with
    /// paired significance tests.
    #[arg(long, value_name = "REPORT", num_args = 2..)]
    pub compare: Vec<PathBuf>,
    /// How the corpus is read when it is indexed (BEIR defaults).
    #[command(flatten)]
    pub records: RecordArgs,
    /// Without --index: the cached index is built with this reduction.
    #[command(flatten)]
    pub reduce: ReductionArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let measures: Vec<Measure> = if args.measures.is_empty() {
        default_measures()
    } else {
        args.measures
            .iter()
            .map(|m| m.parse())
            .collect::<std::result::Result<_, _>>()?
    };
    if !args.compare.is_empty() {
        return compare(&args.compare);
    }
    if let Some(run_path) = &args.run {
        let qrels = Qrels::read(args.qrels.as_ref().expect("clap requires --qrels"))?;
        let run = Run::read(run_path)?;
        let e = evaluate(&qrels, &run, &measures, args.complete);
        let report = report_of(&e, run_path.display().to_string());
        print_table(&[&report], None);
        if !e.missing.is_empty() && !args.complete {
            eprintln!(
                "note: {} judged queries have no results and are not averaged (pass --complete to count them as 0)",
                e.missing.len()
            );
        }
        if let Some(out) = &args.out {
            write_json(out, &report)?;
        }
        return Ok(());
    }
    if args.datasets.is_empty() && args.zero_shot.is_empty() {
        bail!("give --dataset DIR, --run FILE --qrels FILE, or --compare A.json B.json");
    }
    let specs: Vec<DatasetSpec> = args
        .datasets
        .iter()
        .map(|s| (s, false))
        .chain(args.zero_shot.iter().map(|s| (s, true)))
        .map(|(s, zero_shot)| {
            let (dir, split) = dataset_spec(s, &args.split);
            DatasetSpec {
                dir,
                split,
                zero_shot,
            }
        })
        .collect();
    let opts = EvalOptions {
        index: args.index.clone(),
        exact_index: args.exact_index.clone(),
        codec: args.codec.clone(),
        analyzer: args.analyzer,
        retriever: args.rank.retriever(),
        params: args.rank.params(args.k as usize)?,
        against_exact: args.against_exact,
        measures,
        records: args.records.options(),
        reduction: args.reduce.choice(),
        model: args.model.options(),
    };
    let done = evaluate_datasets(&opts, &specs, args.out.clone())?;
    match &done.combined {
        None => print_table(&done.reports.iter().collect::<Vec<_>>(), None),
        Some((combined, path)) => {
            print_table(&done.reports.iter().collect::<Vec<_>>(), Some(combined));
            eprintln!("combined report: {}", path.display());
        }
    }
    Ok(())
}

/// `DIR` or `DIR:SPLIT` (a folder whose own name has a colon still works).
fn dataset_spec(s: &str, default_split: &str) -> (PathBuf, String) {
    if !Path::new(s).is_dir() {
        if let Some((dir, split)) = s.rsplit_once(':') {
            if !split.is_empty() && !split.contains('/') && Path::new(dir).is_dir() {
                return (PathBuf::from(dir), split.to_owned());
            }
        }
    }
    (PathBuf::from(s), default_split.to_owned())
}

/// The results table: a row per report and, for several datasets, their
/// mean. Output to a closed pipe is not an error.
fn print_table(reports: &[&Report], combined: Option<&CombinedReport>) {
    let mut w = std::io::stdout().lock();
    let names: Vec<&str> = reports[0]
        .measures
        .iter()
        .map(|(m, _)| m.as_str())
        .collect();
    let _ = write!(w, "| system | queries |");
    for n in &names {
        let _ = write!(w, " {n} |");
    }
    let timed = reports.iter().any(|r| r.timing.is_some());
    if timed {
        let _ = write!(
            w,
            " encode s | search s | search p50 ms | search p99 ms | total s | queries/s |"
        );
    }
    let exact = reports.iter().any(|r| r.recall10_vs_exact.is_some());
    let f32 = reports.iter().any(|r| r.recall10_vs_f32.is_some());
    if exact {
        let _ = write!(w, " R@10 vs exhaustive |");
    }
    if f32 {
        let _ = write!(w, " R@10 vs f32 exact |");
    }
    let _ = writeln!(w);
    let extra = if timed { 6 } else { 0 } + usize::from(exact) + usize::from(f32);
    let cols = 2 + names.len() + extra;
    let _ = writeln!(w, "|{}", "---|".repeat(cols));
    let opt = |x: Option<f64>| x.map_or("–".to_owned(), |x| format!("{x:.4}"));
    for r in reports {
        let _ = write!(w, "| {} | {} |", r.name, r.queries);
        for (_, v) in &r.measures {
            let _ = write!(w, " {v:.4} |");
        }
        if timed {
            match &r.timing {
                Some(t) => {
                    let _ = write!(
                        w,
                        " {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        t.encode_s,
                        t.search_s,
                        t.search_p50_ms,
                        t.search_p99_ms,
                        t.total_s,
                        t.queries_per_s
                    );
                }
                None => {
                    let _ = write!(w, " – | – | – | – | – | – |");
                }
            }
        }
        if exact {
            let _ = write!(w, " {} |", opt(r.recall10_vs_exact));
        }
        if f32 {
            let _ = write!(w, " {} |", opt(r.recall10_vs_f32));
        }
        let _ = writeln!(w);
    }
    if let Some(c) = combined {
        let rows = [
            ("mean", reports.to_vec(), Some(&c.mean)),
            (
                "in-domain mean",
                group(reports, false),
                c.in_domain_mean.as_ref(),
            ),
            (
                "zero-shot mean",
                group(reports, true),
                c.zero_shot_mean.as_ref(),
            ),
        ];
        for (label, group, mean) in rows {
            let Some(mean) = mean else { continue };
            let n: usize = group.iter().map(|r| r.queries).sum();
            let _ = write!(w, "| **{label} ({} datasets)** | {n} |", group.len());
            for (_, v) in mean {
                let _ = write!(w, " **{v:.4}** |");
            }
            let avg = |f: &dyn Fn(&Report) -> Option<f64>| {
                let v: Vec<f64> = group.iter().filter_map(|r| f(r)).collect();
                (v.len() == group.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            if timed {
                let _ = write!(w, " – | – | – | – | – | – |");
            }
            if exact {
                let _ = write!(w, " {} |", opt(avg(&|r| r.recall10_vs_exact)));
            }
            if f32 {
                let _ = write!(w, " {} |", opt(avg(&|r| r.recall10_vs_f32)));
            }
            let _ = writeln!(w);
        }
    }
    let fid: Vec<(String, &fidelity::Fidelity)> = reports
        .iter()
        .filter_map(|r| r.fidelity.as_ref().map(|f| (dataset_label(r), f)))
        .collect();
    let _ = fidelity::print(&mut w, &fid);
    let _ = w.flush();
}

/// A report file: one dataset's, or a combined one.
enum AnyReport {
    One(Box<Report>),
    Combined(CombinedReport),
}

/// Per query, per measure: a report's `per_query`.
type PerQuery = BTreeMap<String, BTreeMap<String, f64>>;

/// One system in a comparison: its mean per measure and its per-query
/// values.
type System<'a> = (&'a [(String, f64)], &'a PerQuery);

fn read_report(p: &Path) -> Result<AnyReport> {
    let s = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
    let v: serde_json::Value = serde_json::from_str(&s)
        .with_context(|| format!("{}: not a tessera eval report", p.display()))?;
    if v.get("reports").is_some() {
        Ok(AnyReport::Combined(
            serde_json::from_value(v)
                .with_context(|| format!("{}: not a combined tessera eval report", p.display()))?,
        ))
    } else {
        Ok(AnyReport::One(Box::new(
            serde_json::from_value(v)
                .with_context(|| format!("{}: not a tessera eval report", p.display()))?,
        )))
    }
}

/// `dataset/split`, naming a report's dataset in comparisons.
fn dataset_label(r: &Report) -> String {
    let d = r
        .dataset
        .as_deref()
        .map(|d| dataset_name(&absolute(Path::new(d))))
        .unwrap_or_else(|| r.name.clone());
    format!("{d}/{}", r.split.as_deref().unwrap_or("?"))
}

fn compare(paths: &[PathBuf]) -> Result<()> {
    let reports: Vec<AnyReport> = paths
        .iter()
        .map(|p| read_report(p))
        .collect::<Result<_>>()?;
    let mut w = std::io::stdout().lock();
    if reports.iter().all(|r| matches!(r, AnyReport::One(_))) {
        let one: Vec<&Report> = reports
            .iter()
            .map(|r| match r {
                AnyReport::One(r) => r.as_ref(),
                AnyReport::Combined(_) => unreachable!("checked above"),
            })
            .collect();
        writeln!(
            w,
            "Paired tests against {} over the queries both evaluated (t: paired t-test; rand: sign-flip randomisation, 10,000 trials).\n",
            one[0].name
        )?;
        let names: Vec<&str> = one.iter().map(|r| r.name.as_str()).collect();
        let tables: Vec<System<'_>> = one
            .iter()
            .map(|r| (r.measures.as_slice(), &r.per_query))
            .collect();
        compare_table(&mut w, &names, &tables)?;
        writeln!(w, "\n* both tests p < 0.05")?;
        return Ok(());
    }
    let combined: Vec<&CombinedReport> = reports
        .iter()
        .map(|r| match r {
            AnyReport::Combined(c) => Ok(c),
            AnyReport::One(r) => bail!(
                "{}: a single-dataset report cannot be compared with combined ones; compare like with like",
                r.name
            ),
        })
        .collect::<Result<_>>()?;
    let names: Vec<&str> = combined.iter().map(|c| c.name.as_str()).collect();
    writeln!(
        w,
        "Paired tests against {} (t: paired t-test; rand: sign-flip randomisation, 10,000 trials).",
        names[0]
    )?;
    // Per dataset: the reports of the same dataset and split.
    for base in &combined[0].reports {
        let label = dataset_label(base);
        let mut tables = vec![(base.measures.as_slice(), &base.per_query)];
        for c in &combined[1..] {
            match c.reports.iter().find(|r| dataset_label(r) == label) {
                Some(r) => tables.push((r.measures.as_slice(), &r.per_query)),
                None => bail!("{}: has no report for {label}", c.name),
            }
        }
        writeln!(w, "\n### {label}\n")?;
        compare_table(&mut w, &names, &tables)?;
    }
    // The mean over datasets; the tests pair queries over their union
    // (query ids prefixed by dataset), each query weighing the same.
    let union = |c: &CombinedReport| -> PerQuery {
        c.reports
            .iter()
            .flat_map(|r| {
                let label = dataset_label(r);
                r.per_query
                    .iter()
                    .map(move |(q, v)| (format!("{label}:{q}"), v.clone()))
            })
            .collect()
    };
    let unions: Vec<_> = combined.iter().map(|c| union(c)).collect();
    let tables: Vec<_> = combined
        .iter()
        .zip(&unions)
        .map(|(c, u)| (c.mean.as_slice(), u))
        .collect();
    writeln!(
        w,
        "\n### mean over {} datasets (tests over the union of their queries)\n",
        combined[0].reports.len()
    )?;
    compare_table(&mut w, &names, &tables)?;
    writeln!(w, "\n* both tests p < 0.05")?;
    Ok(())
}

/// One comparison table: a row per measure of the first system; per other
/// system its value, the difference and the paired tests' p-values over
/// the queries both have.
fn compare_table(w: &mut impl Write, names: &[&str], systems: &[System<'_>]) -> Result<()> {
    write!(w, "| measure | {} |", names[0])?;
    for n in &names[1..] {
        write!(w, " {n} | Δ | p (t) | p (rand) |")?;
    }
    writeln!(w)?;
    writeln!(w, "|{}", "---|".repeat(2 + 4 * (names.len() - 1)))?;
    let (base_means, base_q) = systems[0];
    for (m, bv) in base_means {
        write!(w, "| {m} | {bv:.4} |")?;
        for (means, per_query) in &systems[1..] {
            let Some((_, v)) = means.iter().find(|(n, _)| n == m) else {
                write!(w, " – | – | – | – |")?;
                continue;
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (q, vals) in base_q {
                if let (Some(x), Some(y)) = (vals.get(m), per_query.get(q).and_then(|o| o.get(m))) {
                    a.push(*x);
                    b.push(*y);
                }
            }
            let t = stats::paired(&a, &b, 10_000, 42);
            let star = if t.p_t < 0.05 && t.p_rand < 0.05 {
                "*"
            } else {
                ""
            };
            write!(
                w,
                " {v:.4} | {:+.4}{star} | {:.4} | {:.4} |",
                v - bv,
                t.p_t,
                t.p_rand
            )?;
        }
        writeln!(w)?;
    }
    Ok(())
}
