//! BEIR-style evaluation as a library: rank every judged query of a
//! dataset split with a retriever over the dataset's (cached) index, score
//! the run the way trec_eval does, and write the run and a JSON report
//! ([`Report`]); several datasets give a [`CombinedReport`] with their mean
//! (and in-domain and zero-shot means). [`fidelity`] measures what the
//! approximate search loses against exact MaxSim.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tessera_eval::beir::{Dataset, Query};
use tessera_eval::{evaluate, stats, Measure, Qrels};
use tessera_index::{Analyzer, CodecKind, Index, SearchParams};

use crate::cache::{cached_encoding, cached_index, dataset_name, encoding_key};
use crate::error::{ensure, Context, Result};
use crate::ingest::RecordOptions;
use crate::model::ModelOptions;
use crate::progress;
use crate::reduction::ReductionChoice;
use crate::retrieve::{Engine, Retriever};

pub mod fidelity;

/// What an evaluation runs: the retriever and its search settings, the
/// index (or how to build the cached one), the model and the measures.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The dataset's index (default: build or reuse a cached one).
    pub index: Option<PathBuf>,
    /// With `index` and `against_exact`: an f32 index of the same vectors.
    pub exact_index: Option<PathBuf>,
    /// Codec of the cached index.
    pub codec: String,
    /// BM25 analyzer of the cached index.
    pub analyzer: Analyzer,
    /// The retriever.
    pub retriever: Retriever,
    /// Search settings; `params.k` is the run's depth.
    pub params: SearchParams,
    /// Also measure the search against exact MaxSim ([`fidelity`]).
    pub against_exact: bool,
    /// Measures reported.
    pub measures: Vec<Measure>,
    /// How the corpus is read when it is indexed.
    pub records: RecordOptions,
    /// The cached index is built with this reduction; a given index must
    /// carry it.
    pub reduction: ReductionChoice,
    /// The model.
    pub model: ModelOptions,
}

/// One dataset split to evaluate.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// The BEIR folder.
    pub dir: PathBuf,
    /// The qrels split.
    pub split: String,
    /// A collection the model was not trained on (averaged apart).
    pub zero_shot: bool,
}

/// Reports of several datasets and their combination.
#[derive(Debug)]
pub struct Evaluated {
    /// Each dataset's report, in the order given.
    pub reports: Vec<Report>,
    /// With several datasets: the combined report and where it was written.
    pub combined: Option<(CombinedReport, PathBuf)>,
}

/// Evaluates each dataset of `specs` ([`evaluate_dataset`]). With one, its
/// report goes to `out`; with several, `out` (default
/// `eval-runs/combined-RETRIEVER.json`) is the combined report and each
/// dataset's report goes beside it.
pub fn evaluate_datasets(
    opts: &EvalOptions,
    specs: &[DatasetSpec],
    out: Option<PathBuf>,
) -> Result<Evaluated> {
    ensure!(
        specs.len() <= 1 || opts.index.is_none(),
        "--index names one dataset's index: give a single --dataset with it"
    );
    if let [one] = specs {
        let report = evaluate_dataset(opts, &one.dir, &one.split, out, one.zero_shot)?;
        return Ok(Evaluated {
            reports: vec![report],
            combined: None,
        });
    }
    let given = out.is_some();
    let combined_out = out.unwrap_or_else(|| {
        PathBuf::from("eval-runs").join(format!("combined-{}.json", opts.retriever))
    });
    let stem = combined_out
        .file_stem()
        .map_or("combined".into(), |s| s.to_string_lossy().into_owned());
    let mut reports = Vec::new();
    for spec in specs {
        let name = dataset_name(
            &spec
                .dir
                .canonicalize()
                .with_context(|| spec.dir.display().to_string())?,
        );
        let out = given
            .then(|| combined_out.with_file_name(format!("{stem}-{name}-{}.json", spec.split)));
        reports.push(evaluate_dataset(
            opts,
            &spec.dir,
            &spec.split,
            out,
            spec.zero_shot,
        )?);
    }
    let combined = combine(&reports, &combined_out, opts.retriever);
    write_json(&combined_out, &combined)?;
    Ok(Evaluated {
        reports,
        combined: Some((combined, combined_out)),
    })
}

/// A JSON evaluation report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The Tessera version that made it.
    pub tessera: String,
    /// `DATASET-SPLIT-RETRIEVER[-CANDIDATES]`, or the run file's path.
    pub name: String,
    /// The dataset folder.
    pub dataset: Option<String>,
    /// The qrels split.
    pub split: Option<String>,
    /// colbert, bm25 or hybrid.
    pub retriever: Option<String>,
    /// MaxSim candidate generation (not for BM25).
    pub candidates: Option<String>,
    /// The index searched.
    pub index: Option<String>,
    /// The model that encoded the queries.
    pub model: Option<String>,
    /// The TREC run file written.
    pub run: Option<String>,
    /// Results per query.
    pub k: Option<usize>,
    /// Queries evaluated.
    pub queries: usize,
    /// Measure → mean, in the order measured.
    pub measures: Vec<(String, f64)>,
    /// Query → measure → value.
    pub per_query: BTreeMap<String, BTreeMap<String, f64>>,
    pub timing: Option<Timing>,
    /// Recall@10 against exhaustive MaxSim over the same (compressed) index.
    pub recall10_vs_exact: Option<f64>,
    /// Recall@10 against exact MaxSim over the unquantised f32 vectors.
    #[serde(default)]
    pub recall10_vs_f32: Option<f64>,
    /// Given as --zero-shot: a collection the model was not trained on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_shot: bool,
    /// With --against-exact: nDCG@10 of exact MaxSim and what each stage
    /// of the search loses against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<fidelity::Fidelity>,
}

/// Several datasets' reports and their mean (`tessera eval --dataset A
/// --dataset B`).
#[derive(Debug, Serialize, Deserialize)]
pub struct CombinedReport {
    /// The Tessera version that made it.
    pub tessera: String,
    /// The report file's stem.
    pub name: String,
    /// colbert, bm25 or hybrid.
    pub retriever: Option<String>,
    /// Measure → mean over datasets (each dataset weighs the same, as BEIR
    /// papers average).
    pub mean: Vec<(String, f64)>,
    /// With --zero-shot collections: the mean over the --dataset ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_domain_mean: Option<Vec<(String, f64)>>,
    /// With --zero-shot collections: the mean over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_shot_mean: Option<Vec<(String, f64)>>,
    /// Each dataset's report.
    pub reports: Vec<Report>,
}

/// Where an evaluation's time went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    /// Query encoding, seconds.
    pub encode_s: f64,
    /// Ranking, seconds.
    pub search_s: f64,
    /// The whole evaluation, seconds.
    pub total_s: f64,
    /// Queries per second of encoding and ranking.
    pub queries_per_s: f64,
    /// Per-query search latency (query encoding excluded), milliseconds.
    #[serde(default)]
    pub search_p50_ms: f64,
    /// The 99th percentile of the same, milliseconds.
    #[serde(default)]
    pub search_p99_ms: f64,
    /// Index build time when this evaluation built it.
    pub index_build_s: Option<f64>,
}

/// The mean over `reports` of each measure the first report has.
pub fn mean_of(reports: &[&Report]) -> Vec<(String, f64)> {
    reports[0]
        .measures
        .iter()
        .map(|(m, _)| {
            let vals: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.measures.iter().find(|(n, _)| n == m).map(|(_, v)| *v))
                .collect();
            (
                m.clone(),
                vals.iter().sum::<f64>() / vals.len().max(1) as f64,
            )
        })
        .collect()
}

/// The reports of one side (zero-shot or not).
pub fn group<'a>(reports: &[&'a Report], zero_shot: bool) -> Vec<&'a Report> {
    reports
        .iter()
        .copied()
        .filter(|r| r.zero_shot == zero_shot)
        .collect()
}

/// The mean over datasets of each measure the first report has and, when
/// some are zero-shot and some not, each side's mean.
pub fn combine(reports: &[Report], out: &Path, retriever: Retriever) -> CombinedReport {
    let all: Vec<&Report> = reports.iter().collect();
    let mean = mean_of(&all);
    let (ind, zs) = (group(&all, false), group(&all, true));
    let split = !ind.is_empty() && !zs.is_empty();
    CombinedReport {
        tessera: env!("CARGO_PKG_VERSION").into(),
        name: out
            .file_stem()
            .map_or("combined".into(), |s| s.to_string_lossy().into_owned()),
        retriever: Some(retriever.to_string()),
        mean,
        in_domain_mean: split.then(|| mean_of(&ind)),
        zero_shot_mean: split.then(|| mean_of(&zs)),
        reports: reports.to_vec(),
    }
}

/// A report of an evaluation (no dataset, index or timing yet).
pub fn report_of(e: &tessera_eval::Evaluation, name: String) -> Report {
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
        recall10_vs_f32: None,
        zero_shot: false,
        fidelity: None,
    }
}

/// Judged documents missing from the index and judged queries missing from
/// queries.jsonl are counted and reported, not silently dropped: such a
/// document stays relevant (it lowers recall, as trec_eval counts it);
/// such a query cannot be searched and is left out of the averages.
pub fn warn_missing(
    dir: &Path,
    split: &str,
    qrels: &Qrels,
    queries: &[Query],
    in_index: &dyn Fn(&str) -> bool,
) {
    let have: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let missing_q: Vec<&str> = qrels
        .judgements
        .keys()
        .map(String::as_str)
        .filter(|q| !have.contains(q))
        .collect();
    if !missing_q.is_empty() {
        progress::note(format!(
            "warning: {}: qrels/{split}.tsv judges {} queries that queries.jsonl lacks (e.g. {}); they are not evaluated",
            dir.display(),
            missing_q.len(),
            missing_q.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut docs: Vec<&str> = qrels
        .judgements
        .values()
        .flat_map(|j| j.keys().map(String::as_str))
        .filter(|d| !in_index(d))
        .collect();
    docs.sort_unstable();
    docs.dedup();
    if !docs.is_empty() {
        progress::note(format!(
            "warning: {}: qrels/{split}.tsv names {} documents that are not in the index (e.g. {}); \
             they count as judged but can never be retrieved",
            dir.display(),
            docs.len(),
            docs.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// Evaluates the options' retriever on split `split` of the BEIR dataset
/// in `dir`: encodes and indexes its corpus (cached) unless an index is
/// given — for BM25 alone, indexes only its text ([`crate::bm25`]) — ranks every judged query, scores the run, and writes the run and
/// the JSON report (to `out`, default `eval-runs/NAME.json`).
pub fn evaluate_dataset(
    opts: &EvalOptions,
    dir: &Path,
    split: &str,
    out: Option<PathBuf>,
    zero_shot: bool,
) -> Result<Report> {
    let measures = &opts.measures[..];
    let t_all = Instant::now();
    let dataset = Dataset::open(dir)?;
    let canonical = dir
        .canonicalize()
        .with_context(|| dir.display().to_string())?;
    let dname = dataset_name(&canonical);
    let mut qrels = dataset.qrels(split)?;
    let queries = dataset.queries(&qrels)?;
    ensure!(
        !queries.is_empty(),
        "{}: no queries of split {split:?} in queries.jsonl",
        dir.display(),
    );
    let retriever = opts.retriever;
    let mut index_build_s = None;
    let mut exact_index = opts.exact_index.clone();
    // BM25 alone over no given index needs no vectors: a text-only index
    // of the corpus, no model, no encoding.
    let text_only = retriever == Retriever::Bm25 && opts.index.is_none();
    let index_dir = match &opts.index {
        None if text_only => {
            let (dir, built) =
                crate::bm25::cached_text_index(&dataset, &opts.records, opts.analyzer)?;
            index_build_s = built;
            dir
        }
        Some(i) => i.clone(),
        None => {
            let model_dir = opts.model.model_dir()?;
            let key = encoding_key(
                &dataset,
                &canonical,
                &model_dir,
                &opts.records,
                opts.model.resolved_precision()?,
            )?;
            // A reduction is checked against the model's width before the
            // corpus is encoded (and the model loaded for it encodes).
            let encoder = match &opts.reduction.reduction {
                Some(_) => Some(opts.model.load_dir(&model_dir)?),
                None => None,
            };
            let reduction = opts.reduction.load(encoder.as_ref().map(|e| e.dim()))?;
            let enc = cached_encoding(
                &opts.model,
                &opts.records,
                &dataset,
                &dname,
                key,
                &model_dir,
                encoder.as_ref(),
            )?;
            drop(encoder);
            let (idx, built) = cached_index(
                &enc,
                &dname,
                key,
                &opts.codec,
                opts.analyzer,
                reduction.as_ref(),
            )?;
            index_build_s = built;
            if opts.against_exact && retriever != Retriever::Bm25 {
                exact_index = Some(if opts.codec == "f32" {
                    idx.clone()
                } else {
                    cached_index(&enc, &dname, key, "f32", opts.analyzer, reduction.as_ref())?.0
                });
            }
            idx
        }
    };
    let (mut engine, text) = if text_only {
        let t = crate::bm25::TextOnly::open(&index_dir, opts.analyzer)?;
        (None, Some(t))
    } else {
        let engine = Engine::open(&index_dir, &opts.model, retriever)?;
        if opts.index.is_some() {
            opts.reduction.check_index(&engine.index, &index_dir)?;
        }
        (Some(engine), None)
    };
    let contains = |id: &str| match (&engine, &text) {
        (Some(e), _) => e.index.contains(id),
        (None, Some(t)) => t.contains(id),
        (None, None) => false,
    };
    warn_missing(dir, split, &qrels, &queries, &contains);
    let have: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    qrels.judgements.retain(|q, _| have.contains(q.as_str()));
    let params = opts.params.clone();

    // Encode every query, then search every query (timed apart).
    let pb = progress::bar(Some(queries.len() as u64), "queries");
    pb.set_prefix(format!("searching {dname}"));
    let (run, timing) = match (&engine, &text) {
        (Some(e), _) => e.run_queries(&queries, retriever, &params, &pb)?,
        (None, Some(t)) => t.run_queries(&queries, params.k, &pb)?,
        (None, None) => unreachable!("an engine or a text index is open"),
    };
    pb.finish_and_clear();
    let (encode_s, search_s) = (timing.encode_s, timing.search_s);
    let (p50, p99) = stats::p50_p99(&timing.latencies_ms);

    let mut fid = None;
    if opts.against_exact && retriever != Retriever::Bm25 {
        let f32_index = match &exact_index {
            Some(f32_dir) => {
                let i = Index::open(f32_dir)
                    .with_context(|| format!("opening index {}", f32_dir.display()))?;
                ensure!(
                    i.codec().kind == CodecKind::F32,
                    "{}: --exact-index must be an f32 index (it is {})",
                    f32_dir.display(),
                    i.codec().kind
                );
                Some(i)
            }
            None => {
                progress::note(
                    "note: exact f32 MaxSim needs the unquantised vectors: \
                     pass --exact-index F32_INDEX with --index",
                );
                None
            }
        };
        let engine = engine
            .as_mut()
            .context("exact MaxSim needs the index's vectors")?;
        let f = fidelity::measure(
            engine,
            f32_index,
            &queries,
            &qrels,
            retriever,
            &params,
            (&run, &timing.latencies_ms),
        )?;
        fid = Some(f);
    }

    let e = evaluate(&qrels, &run, measures, true);
    let cand = match retriever {
        Retriever::Bm25 => None,
        _ => Some(format!("{:?}", opts.params.candidates).to_lowercase()),
    };
    let name = match &cand {
        Some(c) if c != "plaid" => format!("{dname}-{split}-{retriever}-{c}"),
        _ => format!("{dname}-{split}-{retriever}"),
    };
    let out = out.unwrap_or_else(|| PathBuf::from("eval-runs").join(format!("{name}.json")));
    let run_path = out.with_extension("trec");
    if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).with_context(|| p.display().to_string())?;
    }
    run.write(&run_path, &format!("tessera-{retriever}"))?;
    let mut report = report_of(&e, name);
    report.dataset = Some(dir.display().to_string());
    report.split = Some(split.to_owned());
    report.retriever = Some(retriever.to_string());
    report.candidates = cand;
    report.index = Some(index_dir.display().to_string());
    report.model = engine
        .as_ref()
        .and_then(|e| e.model_dir.as_ref())
        .map(|p| p.display().to_string());
    report.run = Some(run_path.display().to_string());
    report.k = Some(opts.params.k);
    report.timing = Some(Timing {
        encode_s,
        search_s,
        total_s: t_all.elapsed().as_secs_f64(),
        queries_per_s: queries.len() as f64 / (encode_s + search_s).max(1e-9),
        search_p50_ms: p50,
        search_p99_ms: p99,
        index_build_s,
    });
    if let Some(at) = fid.as_ref().and_then(|f| f.at.last()) {
        report.recall10_vs_exact = Some(at.recall10_vs_exhaustive);
        report.recall10_vs_f32 = at.recall10_vs_f32;
    }
    report.fidelity = fid;
    report.zero_shot = zero_shot;
    write_json(&out, &report)?;
    progress::note(format!(
        "report: {}  run: {}",
        out.display(),
        run_path.display()
    ));
    Ok(report)
}

/// Writes `r` as pretty JSON to `path`, through a temporary file.
pub fn write_json<T: Serialize>(path: &Path, r: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)
        .with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}
