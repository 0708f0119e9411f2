//! `tessera eval`: BEIR-style evaluation of a retriever on a dataset split,
//! of any TREC run file, and side-by-side comparison of reports.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_eval::beir::Dataset;
use tessera_eval::metrics::default_measures;
use tessera_eval::{evaluate, stats, Measure, Qrels, Run};
use tessera_index::{BuildOptions, Candidates, SearchParams};

use crate::commands::encode_corpus::{InputArgs, RecordArgs};
use crate::commands::index::build_from_input;
use crate::model::ModelArgs;
use crate::progress;
use crate::searcher::{Engine, RankArgs, Retriever};

/// Evaluate retrieval quality (nDCG@10, Recall@100, MAP@100, MRR@10) the
/// way trec_eval does.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera eval --dataset ../shared/datasets/scifact --split dev\n  \
    tessera eval --dataset ../shared/datasets/scifact --split dev --retriever bm25 --out bm25.json\n  \
    tessera eval --run run.trec --qrels ../shared/datasets/scifact/qrels/dev.tsv\n  \
    tessera eval --compare bm25.json colbert.json hybrid.json\n\n\
    Without --index, the dataset's corpus is indexed once (cached under\n\
    $TESSERA_HOME/cache/indexes by dataset, model and codec) and reused.")]
pub struct EvalArgs {
    /// A BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run", "compare"])]
    pub dataset: Option<PathBuf>,
    /// The qrels split to evaluate.
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// An index of the dataset's corpus (default: build or reuse a cached one).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Codec of the cached index built when --index is not given.
    #[arg(long, default_value = "residual2")]
    pub codec: String,
    /// Results retrieved per query (the run's depth).
    #[arg(short = 'k', long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub k: u32,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Also run exhaustive MaxSim and report the recall@10 of the chosen
    /// candidate generation against it.
    #[arg(long)]
    pub against_exact: bool,
    /// Measures (default nDCG@10,Recall@100,MAP@100,MRR@10).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub measures: Vec<String>,
    /// Where to write the JSON report (default
    /// eval-runs/<dataset>-<split>-<retriever>.json; the run file goes next
    /// to it with .trec).
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
    /// Compare reports side by side with paired significance tests.
    #[arg(long, value_name = "REPORT", num_args = 2..)]
    pub compare: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A JSON evaluation report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub tessera: String,
    pub name: String,
    pub dataset: Option<String>,
    pub split: Option<String>,
    pub retriever: Option<String>,
    pub candidates: Option<String>,
    pub index: Option<String>,
    pub model: Option<String>,
    pub run: Option<String>,
    pub k: Option<usize>,
    pub queries: usize,
    /// Measure → mean, in the order measured.
    pub measures: Vec<(String, f64)>,
    /// Query → measure → value.
    pub per_query: BTreeMap<String, BTreeMap<String, f64>>,
    pub timing: Option<Timing>,
    pub recall10_vs_exact: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Timing {
    pub encode_s: f64,
    pub search_s: f64,
    pub total_s: f64,
    pub queries_per_s: f64,
    /// Per-query search latency (query encoding excluded), milliseconds.
    #[serde(default)]
    pub search_p50_ms: f64,
    #[serde(default)]
    pub search_p99_ms: f64,
    /// Index build time when this evaluation built it.
    pub index_build_s: Option<f64>,
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
        print_table(&[&report]);
        if !e.missing.is_empty() && !args.complete {
            eprintln!(
                "note: {} judged queries have no results and are not averaged (pass --complete to count them as 0)",
                e.missing.len()
            );
        }
        if let Some(out) = &args.out {
            write_report(out, &report)?;
        }
        return Ok(());
    }
    let Some(dataset_dir) = &args.dataset else {
        bail!("give --dataset DIR, --run FILE --qrels FILE, or --compare A.json B.json");
    };
    eval_dataset(&args, dataset_dir, &measures)
}

fn report_of(e: &tessera_eval::Evaluation, name: String) -> Report {
    Report {
        tessera: env!("CARGO_PKG_VERSION").into(),
        name,
        dataset: None,
        split: None,
        retriever: None,
        candidates: None,
        index: None,
        model: None,
        run: None,
        k: None,
        queries: e.per_query.len(),
        measures: e
            .measures
            .iter()
            .zip(&e.mean)
            .map(|(m, v)| (m.to_string(), *v))
            .collect(),
        per_query: e
            .per_query
            .iter()
            .map(|(q, vals)| {
                (
                    q.clone(),
                    e.measures
                        .iter()
                        .zip(vals)
                        .map(|(m, v)| (m.to_string(), *v))
                        .collect(),
                )
            })
            .collect(),
        timing: None,
        recall10_vs_exact: None,
    }
}

/// A dataset folder's name (of its canonical path: `.` names its folder).
fn dataset_name(canonical: &Path) -> String {
    canonical
        .file_name()
        .map_or("dataset".into(), |n| n.to_string_lossy().into_owned())
}

/// The cached index for `dataset` (at its `canonical` path) + model + codec.
fn cached_index(dataset: &Dataset, canonical: &Path, model: &Path, codec: &str) -> Result<PathBuf> {
    let home =
        tessera_training::tessera_home().context("cannot locate the cache: set TESSERA_HOME")?;
    let corpus = dataset.corpus_path();
    let meta = std::fs::metadata(&corpus).with_context(|| corpus.display().to_string())?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical.hash(&mut h);
    meta.len().hash(&mut h);
    meta.modified().ok().hash(&mut h);
    model
        .canonicalize()
        .unwrap_or_else(|_| model.to_owned())
        .hash(&mut h);
    codec.hash(&mut h);
    Ok(home.join("cache/indexes").join(format!(
        "{}-{codec}-{:016x}",
        dataset_name(canonical),
        h.finish()
    )))
}

fn eval_dataset(args: &EvalArgs, dir: &Path, measures: &[Measure]) -> Result<()> {
    let t_all = Instant::now();
    let dataset = Dataset::open(dir)?;
    let canonical = dir
        .canonicalize()
        .with_context(|| dir.display().to_string())?;
    let qrels = dataset.qrels(&args.split)?;
    let queries = dataset.queries(&qrels)?;
    ensure!(
        !queries.is_empty(),
        "{}: no queries of split {:?} in queries.jsonl",
        dir.display(),
        args.split
    );
    let mut index_build_s = None;
    let index_dir = match &args.index {
        Some(i) => i.clone(),
        None => {
            let model_dir = args.model.model_dir()?;
            let cache = cached_index(&dataset, &canonical, &model_dir, &args.codec)?;
            if cache.join(tessera_index::manifest::MANIFEST).exists() {
                eprintln!("using cached index {}", cache.display());
            } else {
                eprintln!(
                    "indexing {} into {} (cached for later runs)",
                    dir.display(),
                    cache.display()
                );
                let t = Instant::now();
                let model = ModelArgs {
                    model: Some(model_dir),
                    ..args.model.clone()
                };
                let input = InputArgs {
                    input: dataset.corpus_path(),
                    records: RecordArgs::default(),
                };
                let opts = BuildOptions {
                    codec: args.codec.parse()?,
                    ..BuildOptions::default()
                };
                let built = build_from_input(&model, &input, &cache, opts, true, 1024)?;
                eprintln!(
                    "indexed {} documents, {} tokens: encoding {:.1} s, indexing {:.1} s",
                    built.stats.docs, built.stats.tokens, built.encode_s, built.index_s
                );
                index_build_s = Some(t.elapsed().as_secs_f64());
            }
            cache
        }
    };
    let retriever = args.rank.retriever;
    let engine = Engine::open(&index_dir, &args.model, retriever)?;
    let params = args.rank.params(args.k as usize)?;

    // Encode every query, then search every query (timed apart).
    let pb = progress::bar(Some(queries.len() as u64), "queries");
    pb.set_prefix("searching");
    let (run, timing) = engine.run_queries(&queries, retriever, &params, &pb)?;
    pb.finish_and_clear();
    let (encode_s, search_s) = (timing.encode_s, timing.search_s);
    let mut lat = timing.latencies_ms;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let (p50, p99) = (pct(0.5), pct(0.99));

    let recall10_vs_exact = if args.against_exact && retriever != Retriever::Bm25 {
        let exact = SearchParams {
            k: 10,
            candidates: Candidates::Exhaustive,
            ..params.clone()
        };
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix("exact search");
        let (truth, _) = engine.run_queries(&queries, retriever, &exact, &pb)?;
        pb.finish_and_clear();
        let mut hit = 0usize;
        let mut total = 0usize;
        for q in &queries {
            let truth: HashSet<&str> = truth.results[&q.id]
                .iter()
                .map(|(d, _)| d.as_str())
                .collect();
            let got = tessera_eval::metrics::trec_order(&run.results[&q.id]);
            hit += got
                .iter()
                .take(10)
                .filter(|(d, _)| truth.contains(*d))
                .count();
            total += truth.len();
        }
        Some(hit as f64 / total.max(1) as f64)
    } else {
        None
    };

    let e = evaluate(&qrels, &run, measures, true);
    let dname = dataset_name(&canonical);
    let cand = match retriever {
        Retriever::Bm25 => None,
        _ => Some(format!("{:?}", args.rank.candidates).to_lowercase()),
    };
    let name = match &cand {
        Some(c) if c != "plaid" => format!("{dname}-{}-{retriever}-{c}", args.split),
        _ => format!("{dname}-{}-{retriever}", args.split),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("eval-runs").join(format!("{name}.json")));
    let run_path = out.with_extension("trec");
    if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).with_context(|| p.display().to_string())?;
    }
    run.write(&run_path, &format!("tessera-{retriever}"))?;
    let mut report = report_of(&e, name);
    report.dataset = Some(dir.display().to_string());
    report.split = Some(args.split.clone());
    report.retriever = Some(retriever.to_string());
    report.candidates = cand;
    report.index = Some(index_dir.display().to_string());
    report.model = engine.model_dir.as_ref().map(|p| p.display().to_string());
    report.run = Some(run_path.display().to_string());
    report.k = Some(args.k as usize);
    report.timing = Some(Timing {
        encode_s,
        search_s,
        total_s: t_all.elapsed().as_secs_f64(),
        queries_per_s: queries.len() as f64 / (encode_s + search_s).max(1e-9),
        search_p50_ms: p50,
        search_p99_ms: p99,
        index_build_s,
    });
    report.recall10_vs_exact = recall10_vs_exact;
    write_report(&out, &report)?;
    print_table(&[&report]);
    eprintln!("report: {}  run: {}", out.display(), run_path.display());
    Ok(())
}

fn write_report(path: &Path, r: &Report) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)
        .with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

fn print_table(reports: &[&Report]) {
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
    if exact {
        let _ = write!(w, " R@10 vs exact |");
    }
    let _ = writeln!(w);
    let cols = 2 + names.len() + if timed { 6 } else { 0 } + usize::from(exact);
    let _ = writeln!(w, "|{}", "---|".repeat(cols));
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
            match r.recall10_vs_exact {
                Some(x) => {
                    let _ = write!(w, " {x:.4} |");
                }
                None => {
                    let _ = write!(w, " – |");
                }
            }
        }
        let _ = writeln!(w);
    }
}

fn compare(paths: &[PathBuf]) -> Result<()> {
    let reports: Vec<Report> = paths
        .iter()
        .map(|p| {
            let s = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            serde_json::from_str(&s)
                .with_context(|| format!("{}: not a tessera eval report", p.display()))
        })
        .collect::<Result<_>>()?;
    let base = &reports[0];
    let mut w = std::io::stdout().lock();
    writeln!(
        w,
        "Paired tests against {} over the queries both evaluated (t: paired t-test; rand: sign-flip randomisation, 10,000 trials).\n",
        base.name
    )?;
    write!(w, "| measure | {} |", base.name)?;
    for r in &reports[1..] {
        write!(w, " {} | Δ | p (t) | p (rand) |", r.name)?;
    }
    writeln!(w)?;
    writeln!(w, "|{}", "---|".repeat(2 + 4 * (reports.len() - 1)))?;
    for (m, bv) in &base.measures {
        write!(w, "| {m} | {bv:.4} |")?;
        for r in &reports[1..] {
            let Some((_, v)) = r.measures.iter().find(|(n, _)| n == m) else {
                write!(w, " – | – | – | – |")?;
                continue;
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (q, vals) in &base.per_query {
                if let (Some(x), Some(y)) = (vals.get(m), r.per_query.get(q).and_then(|o| o.get(m)))
                {
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
                t.mean_diff, t.p_t, t.p_rand
            )?;
        }
        writeln!(w)?;
    }
    writeln!(w, "\n* both tests p < 0.05")?;
    Ok(())
}
