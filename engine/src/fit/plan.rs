//! The budget planner (`tessera reduce plan`): build every index that fits
//! a budget in bytes per token from one encoding of the corpus — every
//! (dim, codec) pair, optionally × centroid counts — time each search
//! setting on the dev split, and recommend a configuration: the best
//! nDCG@10, or with a floor, the fastest above it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use tessera_eval::beir::Dataset;
use tessera_eval::stats::percentile;
use tessera_eval::{evaluate, Measure, Run};
use tessera_index::{BuildOptions, CodecKind, Index, SearchParams};
use tessera_model::reduction::Reduction;

use crate::error::{bail, ensure, Context, Result};
use crate::model::ModelOptions;
use crate::progress;
use crate::retrieve::Retriever;

/// What `tessera reduce plan` measures: the dataset and split, the budget
/// in bytes per token, the dims, codecs, centroid counts and search
/// settings tried (each field is the flag of the same name).
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// A BEIR dataset folder.
    pub dataset: PathBuf,
    /// The qrels split measured on.
    pub split: String,
    /// Bytes per token the index may spend.
    pub budget: f64,
    /// The reduction giving the smaller dims (none: full width only).
    pub reduction: Option<PathBuf>,
    /// Dims considered (default: the reduction's set and the model's width).
    pub dims: Vec<usize>,
    /// Codecs considered.
    pub codecs: Vec<String>,
    /// Centroid counts each pair is built with (`index build --centroids`);
    /// auto: the build default, 2^round(log2(16·√tokens)).
    pub centroids: Vec<CentroidCount>,
    /// Search settings timed on every index, as N_PROBE/PROBE_BUDGET, with
    /// optionally /N_APPROX and /RERANK_BUDGET (`search --n-probe N
    /// --probe-budget B --n-approx A --rerank-budget R`; A and R default to
    /// the search defaults, 1024 and 4096; A = 1 skips the second
    /// approximate pass).
    pub probes: Vec<Probe>,
    /// Recommend the fastest fitting configuration that keeps at least
    /// this share of the reference's nDCG@10 (e.g. 0.95), instead of the
    /// best nDCG@10.
    pub min_share: Option<f64>,
    /// Timing rounds over every index and probe setting, interleaved
    /// (search p50 is over all of them; nDCG@10 is from the first).
    pub rounds: u32,
    /// Results per query when timing search (nDCG@10 needs 10).
    pub k: usize,
    /// Skip the full-width f16 reference.
    pub no_reference: bool,
    /// Write the whole table as JSON here.
    pub json: Option<PathBuf>,
    /// Keep the indexes in this folder (default: a temporary folder).
    pub keep_indexes: Option<PathBuf>,
    /// The model and how it runs.
    pub model: ModelOptions,
}

/// `--centroids` value: a count, or `None` for the build default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]

pub struct CentroidCount(pub Option<usize>);

/// One PLAID search setting: cells per query token (at 8,192 cells), the
/// probe budget in query tokens × cells, the documents the first
/// approximate pass keeps for the second, and the exact re-rank budget in
/// query tokens × documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]

pub struct Probe {
    pub n_probe: usize,
    pub probe_budget: usize,
    pub n_approx: usize,
    pub rerank_budget: usize,
}

impl Probe {
    /// The search defaults of the index crate.
    pub fn default_search() -> Self {
        let p = SearchParams::default();
        Self {
            n_probe: p.n_probe,
            probe_budget: p.probe_budget,
            n_approx: p.n_approx,
            rerank_budget: p.rerank_budget,
        }
    }

    /// The `search` (and `serve`, `eval`) options that select it.
    pub fn options(&self) -> String {
        format!(
            "--n-probe {} --probe-budget {} --n-approx {} --rerank-budget {}",
            self.n_probe, self.probe_budget, self.n_approx, self.rerank_budget
        )
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = SearchParams::default();
        write!(f, "{}/{}", self.n_probe, self.probe_budget)?;
        if self.n_approx != d.n_approx || self.rerank_budget != d.rerank_budget {
            write!(f, "/{}", self.n_approx)?;
        }
        if self.rerank_budget != d.rerank_budget {
            write!(f, "/{}", self.rerank_budget)?;
        }
        Ok(())
    }
}

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]

pub struct PlanRow {
    pub dim: usize,
    pub codec: String,
    /// Centroids of the built index.
    pub centroids: usize,
    /// Built with the default centroid count and searched with the default
    /// probe setting.
    pub default_settings: bool,
    /// The search setting the row was timed with (its four fields at the
    /// row's top level in JSON).
    #[serde(flatten)]
    pub probe: Probe,
    /// Codec bytes + the 4-byte centroid id.
    pub bytes_per_token: f64,
    /// What the built index spends per token (codes, vectors, offsets).
    pub measured_bytes_per_token: f64,
    pub fits: bool,
    /// A full-width f16 row (measured for comparison, not recommended
    /// unless it fits).
    pub reference: bool,
    pub ndcg10: f64,
    /// Of the top k (k = 10 by default: Recall@10).
    pub recall: f64,
    pub search_p50_ms: f64,
    pub index_bytes: u64,
    pub build_s: f64,
}

impl std::str::FromStr for CentroidCount {
    type Err = String;

    /// `auto` or a positive count.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(CentroidCount(None));
        }
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(CentroidCount(Some(n))),
            _ => Err(format!(
                "{s:?}: a centroid count is a positive integer or auto"
            )),
        }
    }
}

impl std::str::FromStr for Probe {
    type Err = String;

    /// `N_PROBE/PROBE_BUDGET[/N_APPROX[/RERANK_BUDGET]]`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
            "{s:?}: a search setting is N_PROBE/PROBE_BUDGET[/N_APPROX[/RERANK_BUDGET]], e.g. 32/512 or 16/256/512/768"
        )
        };
        let parts: Vec<usize> = s
            .trim()
            .split('/')
            .map(|x| x.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<std::result::Result<_, _>>()?;
        let d = SearchParams::default();
        let (n_probe, probe_budget, n_approx, rerank_budget) = match parts[..] {
            [a, b] => (a, b, d.n_approx, d.rerank_budget),
            [a, b, c] => (a, b, c, d.rerank_budget),
            [a, b, c, e] => (a, b, c, e),
            _ => return Err(bad()),
        };
        if n_probe == 0 || n_approx == 0 {
            return Err(format!("{s:?}: N_PROBE and N_APPROX must be at least 1"));
        }
        Ok(Probe {
            n_probe,
            probe_budget,
            n_approx,
            rerank_budget,
        })
    }
}

/// What [`plan_budget`] measured and recommends.
#[derive(Debug)]
pub struct Planned {
    /// The model's folder.
    pub model_dir: PathBuf,
    /// The model's width (the full-width reference's dim).
    pub model_dim: usize,
    /// Every configuration measured.
    pub rows: Vec<PlanRow>,
    /// The recommended row.
    pub pick: Option<usize>,
    /// The full-width reference row.
    pub reference: Option<usize>,
    /// The full-width f16 row at the pick's centroids and search setting.
    pub matched: Option<usize>,
    /// Why there is no pick, or what the pick gave up.
    pub note: Option<String>,
    /// Seconds the plan took.
    pub seconds: f64,
}

/// Nominal bytes per token of `codec` at `dim`, centroid id included.
pub fn bytes_per_token(codec: CodecKind, dim: usize) -> f64 {
    (codec.bytes_per_token(dim) + 4) as f64
}

/// One index the planner builds, and the probe settings it is timed with.
struct PlanBuild {
    dim: usize,
    codec: CodecKind,
    centroids: CentroidCount,
    reference: bool,
    probes: Vec<Probe>,
}

/// Measures every configuration of `args` that fits the budget (and the
/// full-width reference), recommends one, and writes the JSON record when
/// `args.json` is set (see the module docs).
pub fn plan_budget(args: &PlanOptions) -> Result<Planned> {
    let t_all = Instant::now();
    ensure!(
        args.budget.is_finite() && args.budget > 0.0,
        "--budget must be a positive number of bytes per token, not {}",
        args.budget
    );
    if let Some(s) = args.min_share {
        ensure!(
            s.is_finite() && s > 0.0 && s <= 1.0,
            "--min-share must be in (0, 1], not {s}"
        );
        ensure!(
            !args.no_reference,
            "--min-share is a share of the reference's nDCG@10: it needs the reference (drop --no-reference)"
        );
    }
    let codecs: Vec<CodecKind> = args
        .codecs
        .iter()
        .map(|c| {
            c.parse::<CodecKind>()
                .with_context(|| format!("--codecs {c}"))
        })
        .collect::<Result<_>>()?;
    let centroid_counts = first_of_each(&args.centroids);
    let probes = first_of_each(&args.probes);
    let model_dir = args.model.model_dir()?;
    let encoder = args.model.load_dir(&model_dir)?;
    let k = encoder.dim();
    let red = match &args.reduction {
        Some(d) => {
            let r = Reduction::load(d).with_context(|| format!("--reduction {}", d.display()))?;
            ensure!(
                r.in_dim() == k,
                "--reduction {}: it reduces {}-dim vectors, the model makes {k}-dim ones",
                d.display(),
                r.in_dim()
            );
            Some(r)
        }
        None => None,
    };
    let mut dims: Vec<usize> = if args.dims.is_empty() {
        let mut d = red
            .as_ref()
            .map(|r| r.meta.dims.clone())
            .unwrap_or_default();
        d.push(k);
        d
    } else {
        args.dims.clone()
    };
    dims.sort_unstable();
    dims.dedup();
    for &r in &dims {
        if r == k {
            continue;
        }
        match &red {
            Some(red) => red.check_r(r)?,
            None => bail!("--dims {r}: dims below the model's {k} need --reduction"),
        }
    }
    // The walk: per codec, up the dims while the pair fits.
    let mut pairs: Vec<(usize, CodecKind)> = Vec::new();
    for &c in &codecs {
        for &r in &dims {
            if c.validate(r).is_err() {
                continue;
            }
            if bytes_per_token(c, r) > args.budget {
                break;
            }
            pairs.push((r, c));
        }
    }
    if pairs.is_empty() {
        let smallest = codecs
            .iter()
            .flat_map(|&c| dims.iter().map(move |&r| (bytes_per_token(c, r), c, r)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match smallest {
            Some((b, c, r)) => bail!(
                "no (dim, codec) pair fits {} bytes per token: the smallest is {b} ({c} at dim {r})",
                args.budget
            ),
            None => bail!("no (dim, codec) pair to measure"),
        }
    }
    let mut builds: Vec<PlanBuild> = Vec::new();
    for &(dim, codec) in &pairs {
        for &centroids in &centroid_counts {
            builds.push(PlanBuild {
                dim,
                codec,
                centroids,
                reference: false,
                probes: probes.clone(),
            });
        }
    }
    if !args.no_reference {
        // The full-width f16 index at every centroid count and probe
        // setting, and always with the defaults (the reference).
        let mut counts = centroid_counts.clone();
        if !counts.contains(&CentroidCount(None)) {
            counts.insert(0, CentroidCount(None));
        }
        for centroids in counts {
            if builds
                .iter()
                .any(|b| b.dim == k && b.codec == CodecKind::F16 && b.centroids == centroids)
            {
                continue;
            }
            let mut p = probes.clone();
            if centroids.0.is_none() && !p.contains(&Probe::default_search()) {
                p.insert(0, Probe::default_search());
            }
            builds.push(PlanBuild {
                dim: k,
                codec: CodecKind::F16,
                centroids,
                reference: true,
                probes: p,
            });
        }
    }
    progress::note(format!(
        "planning {} pairs within {} bytes/token × {} centroid count(s) × {} probe setting(s){}",
        pairs.len(),
        args.budget,
        centroid_counts.len(),
        probes.len(),
        if args.no_reference {
            ""
        } else {
            " (+ the full-width f16 reference)"
        }
    ));

    // One encoding of the corpus, one of the queries.
    let dataset = Dataset::open(&args.dataset)?;
    let enc = crate::cache::cached_dataset_encoding(
        &dataset,
        &args.model,
        &model_dir,
        &crate::ingest::RecordOptions::default(),
    )?;
    let mut qrels = dataset.qrels(&args.split)?;
    let queries = dataset.queries(&qrels)?;
    ensure!(
        !queries.is_empty(),
        "{}: no queries of split {:?}",
        args.dataset.display(),
        args.split
    );
    let have: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    qrels.judgements.retain(|q, _| have.contains(q.as_str()));
    let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
    let qvecs: Vec<tessera_index::TokenVectors> = encoder
        .encode_queries(&texts)?
        .items
        .into_iter()
        .map(|i| i.vectors)
        .collect();

    let tmp;
    let work = match &args.keep_indexes {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("a temporary folder for the indexes")?;
            tmp.path().to_owned()
        }
    };
    let search_params = |p: Probe| SearchParams {
        k: args.k.max(10),
        n_probe: p.n_probe,
        probe_budget: p.probe_budget,
        n_approx: p.n_approx,
        rerank_budget: p.rerank_budget,
        ..SearchParams::default()
    };
    // Build every index; search each with every probe setting once (the
    // first timing round, and the nDCG@10).
    let mut rows: Vec<PlanRow> = Vec::new();
    let mut indexes: Vec<Index> = Vec::new();
    // Per row: its index, its probe, and its latencies over the rounds.
    let mut timed: Vec<(usize, Probe, Vec<f64>)> = Vec::new();
    for b in &builds {
        let dir = work.join(format!(
            "r{}-{}-c{}",
            b.dim,
            b.codec,
            b.centroids.0.map_or("auto".into(), |n| n.to_string())
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
        let mut opts = BuildOptions {
            codec: b.codec,
            num_centroids: b.centroids.0,
            ..BuildOptions::default()
        };
        if b.dim < k {
            let red = red
                .as_ref()
                .expect("checked: dims below k need a reduction");
            crate::reduction::apply_to_options(&mut opts, red, b.dim)?;
        }
        let t = Instant::now();
        let (stats, _) = crate::ingest::build_from_vectors(&enc, &dir, opts)?;
        let build_s = t.elapsed().as_secs_f64();
        let index = Index::open(&dir)?;
        for &probe in &b.probes {
            let params = search_params(probe);
            let mut run = Run::default();
            let mut lat = Vec::with_capacity(queries.len() * args.rounds as usize);
            for (q, v) in queries.iter().zip(&qvecs) {
                let t = Instant::now();
                let hits =
                    crate::retrieve::rank(&index, Retriever::Colbert, &q.text, Some(v), &params)?
                        .hits;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                run.results.insert(
                    q.id.clone(),
                    hits.into_iter()
                        .map(|h| (h.id, f64::from(h.score)))
                        .collect(),
                );
            }
            let e = evaluate(
                &qrels,
                &run,
                &[Measure::Ndcg(10), Measure::Recall(args.k.max(10))],
                true,
            );
            let row = PlanRow {
                dim: b.dim,
                codec: b.codec.to_string(),
                centroids: stats.num_centroids,
                default_settings: b.centroids.0.is_none() && probe == Probe::default_search(),
                probe,
                bytes_per_token: bytes_per_token(b.codec, b.dim),
                measured_bytes_per_token: stats.bytes_per_token,
                fits: bytes_per_token(b.codec, b.dim) <= args.budget,
                reference: b.reference,
                ndcg10: e.mean[0],
                recall: e.mean[1],
                search_p50_ms: percentile(&lat, 0.5),
                index_bytes: stats.index_bytes,
                build_s,
            };
            progress::note(format!(
                "r {:>4} {:<10} {:>6} centroids  probe {:<8} {:>6.1} B/token  nDCG@10 {:.4}  p50 {:.2} ms  {:.1} MiB  built in {:.1} s",
                row.dim,
                row.codec,
                row.centroids,
                probe.to_string(),
                row.bytes_per_token,
                row.ndcg10,
                row.search_p50_ms,
                row.index_bytes as f64 / (1 << 20) as f64,
                row.build_s
            ));
            rows.push(row);
            timed.push((indexes.len(), probe, lat));
        }
        indexes.push(index);
    }
    // The other timing rounds, interleaved over every index and setting so
    // that drift of the machine falls on all of them alike.
    for round in 1..args.rounds {
        progress::note(format!("timing round {} of {}", round + 1, args.rounds));
        for (i, probe, lat) in timed.iter_mut() {
            let params = search_params(*probe);
            for (q, v) in queries.iter().zip(&qvecs) {
                let t = Instant::now();
                crate::retrieve::rank(&indexes[*i], Retriever::Colbert, &q.text, Some(v), &params)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (row, (_, _, lat)) in rows.iter_mut().zip(&timed) {
        row.search_p50_ms = percentile(lat, 0.5);
    }
    drop(indexes);

    let reference = rows
        .iter()
        .position(|r| r.dim == k && r.codec == "f16" && r.default_settings);
    let ref_ndcg = reference.map(|i| rows[i].ndcg10);
    let mut note = None;
    let pick = match (args.min_share, ref_ndcg) {
        (Some(s), Some(f)) => match recommend_fastest(&rows, s * f) {
            Some(i) => Some(i),
            None => {
                note = Some(format!(
                    "no configuration within the budget keeps {:.1} % of the reference's nDCG@10 ({:.4}); the best one instead",
                    100.0 * s,
                    s * f
                ));
                recommend(&rows)
            }
        },
        _ => recommend(&rows),
    };
    // The full-width f16 index at the pick's centroids and probe.
    let matched = pick.and_then(|p| {
        rows.iter().position(|r| {
            r.dim == k
                && r.codec == "f16"
                && r.centroids == rows[p].centroids
                && r.probe == rows[p].probe
        })
    });
    let secs = t_all.elapsed().as_secs_f64();
    if let Some(p) = &args.json {
        let v = serde_json::json!({
            "dataset": args.dataset, "split": args.split, "budget": args.budget,
            "model": model_dir, "reduction": args.reduction, "rows": rows,
            "min_share": args.min_share, "rounds": args.rounds,
            "recommended": pick.map(|i| &rows[i]),
            "reference": reference.map(|i| &rows[i]),
            "reference_at_recommended_settings": matched.map(|i| &rows[i]),
            "note": note, "seconds": secs,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| p.display().to_string())?;
    }
    Ok(Planned {
        model_dir,
        model_dim: k,
        rows,
        pick,
        reference,
        matched,
        note,
        seconds: secs,
    })
}

/// Each value of `xs` once, in the order given (a value repeated anywhere
/// in an option's list is built or timed once).
fn first_of_each<T: PartialEq + Copy>(xs: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(xs.len());
    for &x in xs {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Index of the best fitting row: highest nDCG@10; within 0.002 of it, the
/// fastest.
pub fn recommend(rows: &[PlanRow]) -> Option<usize> {
    let best = rows
        .iter()
        .filter(|r| r.fits)
        .map(|r| r.ndcg10)
        .fold(f64::NEG_INFINITY, f64::max);
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.fits && r.ndcg10 >= best - 0.002)
        .min_by(|a, b| a.1.search_p50_ms.total_cmp(&b.1.search_p50_ms))
        .map(|(i, _)| i)
}

/// Index of the fastest fitting row whose nDCG@10 is at least `floor`.
pub fn recommend_fastest(rows: &[PlanRow], floor: f64) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.fits && r.ndcg10 >= floor)
        .min_by(|a, b| a.1.search_p50_ms.total_cmp(&b.1.search_p50_ms))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(dim: usize, codec: &str, ndcg10: f64, p50: f64, fits: bool) -> PlanRow {
        PlanRow {
            dim,
            codec: codec.into(),
            centroids: 4096,
            default_settings: true,
            probe: Probe::default_search(),
            bytes_per_token: 0.0,
            measured_bytes_per_token: 0.0,
            fits,
            reference: !fits,
            ndcg10,
            recall: 0.0,
            search_p50_ms: p50,
            index_bytes: 0,
            build_s: 0.0,
        }
    }

    #[test]
    fn bytes_count_the_codec_and_the_centroid_id() {
        assert_eq!(bytes_per_token(CodecKind::F16, 128), 260.0);
        assert_eq!(
            bytes_per_token(CodecKind::Residual { nbits: 2 }, 384),
            100.0
        );
        assert_eq!(bytes_per_token(CodecKind::Residual { nbits: 1 }, 96), 16.0);
        assert_eq!(bytes_per_token(CodecKind::Int8, 8), 16.0);
    }

    #[test]
    fn the_recommendation_is_the_best_fitting_pair_and_the_faster_of_near_ties() {
        let rows = vec![
            row(32, "residual2", 0.700, 5.0, true),
            row(48, "residual2", 0.7015, 7.0, true),
            row(96, "residual1", 0.690, 4.0, true),
            row(128, "f16", 0.800, 20.0, false),
        ];
        // 0.7015 is best; 0.700 is within 0.002 and faster; the reference
        // does not fit.
        assert_eq!(recommend(&rows), Some(0));
        assert_eq!(recommend(&rows[3..]), None);
    }

    #[test]
    fn with_a_floor_the_recommendation_is_the_fastest_fitting_row_above_it() {
        let rows = vec![
            row(48, "residual2", 0.790, 3.0, true),
            row(64, "residual1", 0.780, 2.0, true),
            row(32, "residual2", 0.700, 1.5, true),
            row(128, "f16", 0.810, 1.0, false),
        ];
        // 95 % of 0.81 = 0.7695: rows 0 and 1 qualify, row 1 is faster; the
        // reference is faster still but over budget.
        assert_eq!(recommend_fastest(&rows, 0.95 * 0.81), Some(1));
        assert_eq!(recommend_fastest(&rows, 0.785), Some(0));
        assert_eq!(recommend_fastest(&rows, 0.80), None);
    }

    #[test]
    fn repeated_option_values_are_measured_once_in_the_order_given() {
        let c = [
            CentroidCount(None),
            CentroidCount(Some(4096)),
            CentroidCount(None),
        ];
        assert_eq!(
            first_of_each(&c),
            vec![CentroidCount(None), CentroidCount(Some(4096))]
        );
        assert_eq!(first_of_each(&[3, 1, 3, 2, 1]), vec![3, 1, 2]);
    }

    #[test]
    fn probe_and_centroid_options_parse_and_name_bad_values() {
        assert_eq!(
            str::parse::<Probe>("16/256"),
            Ok(Probe {
                n_probe: 16,
                probe_budget: 256,
                n_approx: 1024,
                rerank_budget: 4096
            })
        );
        assert_eq!(
            str::parse::<Probe>("16/256/512"),
            Ok(Probe {
                n_probe: 16,
                probe_budget: 256,
                n_approx: 512,
                rerank_budget: 4096
            })
        );
        let p = str::parse::<Probe>("16/256/1024/768").unwrap();
        assert_eq!((p.n_approx, p.rerank_budget), (1024, 768));
        assert_eq!(p.to_string(), "16/256/1024/768");
        assert_eq!(
            str::parse::<Probe>("16/256/512").unwrap().to_string(),
            "16/256/512"
        );
        // The option's default string is the search defaults.
        assert_eq!(str::parse::<Probe>("32/512"), Ok(Probe::default_search()));
        assert_eq!(Probe::default_search().to_string(), "32/512");
        for bad in [
            "16",
            "16/",
            "a/256",
            "0/256",
            "16/-1",
            "16/256/0",
            "1/2/3/4/5",
            "1/2/3/x",
        ] {
            let e = str::parse::<Probe>(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(str::parse::<CentroidCount>("auto"), Ok(CentroidCount(None)));
        assert_eq!(
            str::parse::<CentroidCount>("4096"),
            Ok(CentroidCount(Some(4096)))
        );
        for bad in ["0", "-4", "many"] {
            assert!(str::parse::<CentroidCount>(bad).unwrap_err().contains(bad));
        }
    }
}
