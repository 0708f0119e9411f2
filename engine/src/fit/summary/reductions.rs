//! Tables of reduction runs (dev nDCG@10 on the fixed pools, mean ± std
//! over seeds) and of `reduce plan` files (whole indexes: nDCG@10, p50,
//! size and build time per method, dim and codec, over the runs given),
//! nDCG@10 against bytes per token and the planner's speed/quality
//! frontiers drawn to PNG and SVG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_eval::stats::mean_std;
use tessera_training::train::plot;

use crate::error::{bail, ensure, Context, Result};
use crate::progress;

/// Appends a line made with `format!` to `$out`.
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        $out.push_str(&format!($($t)*));
        $out.push('\n');
    }};
}

/// What `tessera reduce summarize` tabulates and draws.
#[derive(Debug, Clone)]
pub struct ReductionSummaryOptions {
    /// Reduction folders, head model folders and plan JSON files.
    pub runs: Vec<PathBuf>,
    /// Draw nDCG@10 (dev mean) against bytes per token of the plans to
    /// FILE.png and FILE.svg.
    pub plot: Option<PathBuf>,
    /// Draw each plan's speed/quality frontier to FILE.png and FILE.svg:
    /// share of the reference's nDCG@10 against the speed-up over it, the
    /// best configurations within the budget beside the full-width f16
    /// index's (plans run with --centroids or --probes).
    pub frontier: Option<PathBuf>,
}

/// The configurations no other one beats on both speed-up and share (the
/// points are (speed-up, share)), by increasing speed-up.
pub fn frontier(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    // Fastest first; keep a point when it scores above every faster one.
    points.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for p in points {
        if out.last().is_none_or(|l| p.1 > l.1) {
            out.push(p);
        }
    }
    out.reverse();
    out
}

/// `--frontier`: per plan JSON, the frontier of its fitting rows and of its
/// full-width f16 rows, relative to its reference.
fn draw_frontiers(stem: &Path, files: &[&PathBuf]) -> Result<()> {
    let mut series = Vec::new();
    for f in files {
        let v = read_json(f)?;
        let Some(reference) = v["reference"].as_object() else {
            continue;
        };
        let (rn, rp) = (
            reference["ndcg10"].as_f64().unwrap_or(f64::NAN),
            reference["search_p50_ms"].as_f64().unwrap_or(f64::NAN),
        );
        let dataset = last_name(v["dataset"].as_str().unwrap_or("?"));
        let k = reference["dim"].as_u64();
        let budget = v["budget"].as_f64().unwrap_or(f64::NAN);
        let mut fit = Vec::new();
        let mut full = Vec::new();
        for r in v["rows"].as_array().into_iter().flatten() {
            let p = (
                rp / r["search_p50_ms"].as_f64().unwrap_or(f64::NAN),
                100.0 * r["ndcg10"].as_f64().unwrap_or(f64::NAN) / rn,
            );
            if !(p.0.is_finite() && p.1.is_finite()) {
                continue;
            }
            if r["fits"] == true {
                fit.push(p);
            } else if r["dim"].as_u64() == k && r["codec"] == "f16" {
                full.push(p);
            }
        }
        series.push(plot::Series {
            name: format!("{dataset}: within {budget} B/token"),
            points: frontier(fit),
        });
        series.push(plot::Series {
            name: format!("{dataset}: full-width f16"),
            points: frontier(full),
        });
    }
    ensure!(
        !series.is_empty(),
        "--frontier: none of the plan files has a reference row"
    );
    plot::line_chart(
        stem,
        "Best share of the reference's nDCG@10 at each speed-up",
        "search speed-up over the reference (full-width f16, default build and search)",
        "% of the reference's nDCG@10",
        &series,
    )?;
    progress::note(format!(
        "frontier: {}.png, {}.svg",
        stem.display(),
        stem.display()
    ));
    Ok(())
}

fn read_json(p: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).with_context(|| p.display().to_string())?)
        .with_context(|| p.display().to_string())
}

/// The last component of a path a plan file records (a dataset's or a
/// model's folder), `?` where it has none.
fn last_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy().into_owned())
}

/// The distinct names among `names`, sorted (a table's dataset columns).
fn sorted_names<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect()
}

/// A small head's row name, from its model's `training.json`.
fn head_label(training_json: &serde_json::Value) -> String {
    format!("head ({})", training_json["head"].as_str().unwrap_or("?"))
}

/// The seeds column: the seeds joined by commas, "–" for none.
fn seeds_cell(seeds: impl Iterator<Item = u64>) -> String {
    let seeds: Vec<String> = seeds.map(|s| s.to_string()).collect();
    if seeds.is_empty() {
        "–".to_owned()
    } else {
        seeds.join(",")
    }
}

/// A table's header and rule lines: the leading columns, then `cols` (each
/// a suffix of the dataset's name) for every dataset, then `last`.
fn table_header(lead: &[(&str, &str)], datasets: &[String], cols: &[&str], last: &str) -> String {
    let mut head = String::from("|");
    let mut rule = String::from("|");
    for (name, align) in lead {
        head += &format!(" {name} |");
        rule += &format!("{align}|");
    }
    for d in datasets {
        for c in cols {
            head += &format!(" {d}{c} |");
            rule += "---:|";
        }
    }
    format!("{head} {last} |\n{rule}---:|")
}

/// A reduction's name in summaries: its method, and its centring where it
/// is not the default (`pca, centred q 0 / d 0.5`), so that two PCAs
/// centred differently form two rows.
fn method_label(reduction_json: &serde_json::Value) -> String {
    let method = reduction_json["method"].as_str().unwrap_or("?");
    match reduction_json["centring"].as_object() {
        Some(c) => format!(
            "{method}, centred q {} / d {}",
            c.get("queries").and_then(|x| x.as_f64()).unwrap_or(1.0),
            c.get("documents").and_then(|x| x.as_f64()).unwrap_or(1.0)
        ),
        None => method.to_owned(),
    }
}

/// Pools: (method, dim) → dataset → nDCG@10 per seed; the dev mean per
/// seed; the seeds.
type Pool = (BTreeMap<String, Vec<f64>>, Vec<f64>, Vec<u64>);

/// The plans of one (method, dim, codec): run (the reduction's or model's
/// folder; "" for the full width, which every plan of a model shares) →
/// its seed and dataset → row. Runs of one method form a row, like the
/// pools' seeds.
type PlanRuns = BTreeMap<String, (Option<u64>, BTreeMap<String, serde_json::Value>)>;

/// What `summarize` reads from its runs.
#[derive(Default)]
struct Tables {
    pools: BTreeMap<(String, usize), Pool>,
    /// The full width's pool scores (the first run that has them).
    full: Option<(usize, serde_json::Value)>,
    plans: BTreeMap<(String, usize, String), PlanRuns>,
}

impl Tables {
    /// One run's pool scores at `dim`: `per` is its `[dataset, nDCG@10]`
    /// pairs.
    fn add_pool(&mut self, method: String, dim: usize, seed: u64, per: &serde_json::Value) {
        let e = self.pools.entry((method, dim)).or_default();
        let mut sum = 0.0;
        let mut n = 0.0;
        for ps in per.as_array().into_iter().flatten() {
            let v = ps[1].as_f64().unwrap_or(f64::NAN);
            e.0.entry(ps[0].as_str().unwrap_or("?").to_owned())
                .or_default()
                .push(v);
            sum += v;
            n += 1.0;
        }
        e.1.push(sum / f64::max(n, 1.0));
        e.2.push(seed);
    }

    /// Reads reduction folders, head model folders and plan JSON files.
    fn read(runs: &[PathBuf]) -> Result<Self> {
        let mut tables = Tables::default();
        for r in runs {
            if r.join("reduction.json").is_file() {
                let v = read_json(&r.join("reduction.json"))?;
                let t = &v["training"];
                let best = &t["best"];
                ensure!(
                    best.is_object(),
                    "{}: the run has no dev score",
                    r.display()
                );
                let method = method_label(&v);
                let seed = t["config"]["seed"].as_u64().unwrap_or(0);
                for d in best["per_dim"].as_array().into_iter().flatten() {
                    let dim = d["dim"].as_u64().unwrap_or(0) as usize;
                    tables.add_pool(method.clone(), dim, seed, &d["per_source"]);
                }
                if tables.full.is_none() && t["full"].is_object() {
                    tables.full = Some((
                        t["full"]["dim"].as_u64().unwrap_or(0) as usize,
                        t["full"].clone(),
                    ));
                }
            } else if r.join("training.json").is_file() {
                let v = read_json(&r.join("training.json"))?;
                let best = &v["best"];
                ensure!(
                    best.is_object(),
                    "{}: the run has no dev score",
                    r.display()
                );
                let dim = v["config"]["spec"]["out_dim"].as_u64().unwrap_or(0) as usize;
                let method = head_label(&v);
                tables.add_pool(
                    method,
                    dim,
                    v["config"]["seed"].as_u64().unwrap_or(0),
                    &best["per_source"],
                );
            } else if r.is_file() {
                let v = read_json(r)?;
                ensure!(
                    v["rows"].is_array(),
                    "{}: not a `reduce plan --json` file",
                    r.display()
                );
                let reduction = v["reduction"]
                    .as_str()
                    .map(|d| read_json(&Path::new(d).join("reduction.json")));
                // A plan of a reduction is named by it; one of a model alone
                // (a small head) by the head its training.json names.
                let model = v["model"].as_str().unwrap_or("?");
                let (method, run, seed) = match (&reduction, v["reduction"].as_str()) {
                    (Some(Ok(j)), Some(d)) => (
                        method_label(j),
                        d.to_owned(),
                        j["training"]["config"]["seed"].as_u64(),
                    ),
                    (Some(_), d) => ("?".into(), d.unwrap_or("?").to_owned(), None),
                    (None, _) => match read_json(&Path::new(model).join("training.json")) {
                        Ok(t) => (
                            head_label(&t),
                            model.to_owned(),
                            t["config"]["seed"].as_u64(),
                        ),
                        Err(_) => (format!("head {}", last_name(model)), model.to_owned(), None),
                    },
                };
                // The model's width: the reduction's input (a plan run with
                // --no-reference has no full-width row), else the widest row.
                let in_dim = match &reduction {
                    Some(Ok(j)) => j["in_dim"].as_u64(),
                    _ => None,
                };
                let dataset = last_name(v["dataset"].as_str().unwrap_or("?"));
                let model_dim = in_dim.unwrap_or_else(|| {
                    v["rows"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| x["dim"].as_u64().unwrap_or(0))
                        .max()
                        .unwrap_or(0)
                });
                // Rows built or searched with other centroid counts or probe
                // settings than the defaults are the planner's, not the
                // reduction comparison's.
                for row in v["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["default_settings"].as_bool().unwrap_or(true))
                {
                    let dim = row["dim"].as_u64().unwrap_or(0);
                    // A head plan's rows are all the head's own width.
                    let full = reduction.is_some() && dim == model_dim;
                    let (m, run, seed) = if full {
                        ("full".to_owned(), String::new(), None)
                    } else {
                        (method.clone(), run.clone(), seed)
                    };
                    let rows = &mut tables
                        .plans
                        .entry((
                            m,
                            dim as usize,
                            row["codec"].as_str().unwrap_or("?").to_owned(),
                        ))
                        .or_default()
                        .entry(run)
                        .or_insert_with(|| (seed, BTreeMap::new()))
                        .1;
                    // The full width is the same index in every plan: the first.
                    if !(full && rows.contains_key(&dataset)) {
                        rows.insert(dataset.clone(), row.clone());
                    }
                }
            } else {
                bail!(
                    "{}: neither a reduction folder, a head model folder nor a plan JSON file",
                    r.display()
                );
            }
        }
        Ok(tables)
    }
}

/// `mean ± std` over several values, the value alone for one.
fn mean_pm(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{m:.4} ± {s:.4}")
    } else {
        format!("{m:.4}")
    }
}

/// The pools' table: a row per method and dim, mean ± std over its seeds.
fn print_pools(t: &Tables, out: &mut String) {
    let datasets = sorted_names(t.pools.values().flat_map(|p| p.0.keys()));
    say!(
        out,
        "Dev nDCG@10 on the fixed pools (exact MaxSim, f32 vectors):\n"
    );
    say!(
        out,
        "{}",
        table_header(
            &[("method", "---"), ("dim", "---:"), ("seeds", "---")],
            &datasets,
            &[""],
            "mean"
        )
    );
    let mut keys: Vec<&(String, usize)> = t.pools.keys().collect();
    keys.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    for k in keys {
        let p = &t.pools[k];
        let mut line = format!(
            "| {} | {} | {} |",
            k.0,
            k.1,
            seeds_cell(p.2.iter().copied())
        );
        for d in &datasets {
            line += &format!(" {} |", p.0.get(d).map_or("–".into(), |v| mean_pm(v)));
        }
        say!(out, "{line} {} |", mean_pm(&p.1));
    }
    if let Some((dim, f)) = &t.full {
        let mut line = format!("| full (no reduction) | {dim} | – |");
        for d in &datasets {
            let v = f["per_source"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p[0].as_str() == Some(d.as_str()))
                .and_then(|p| p[1].as_f64());
            line += &format!(" {} |", v.map_or("–".into(), |x| format!("{x:.4}")));
        }
        say!(
            out,
            "{line} {:.4} |",
            f["ndcg10"].as_f64().unwrap_or(f64::NAN)
        );
    }
    out.push('\n');
}

/// The full indexes' table: a row per method, dim and codec over its runs;
/// returns the plot's series (name → (bytes per token, dev mean)).
fn print_plans(t: &Tables, out: &mut String) -> BTreeMap<String, Vec<(f64, f64)>> {
    let datasets = sorted_names(
        t.plans
            .values()
            .flat_map(|runs| runs.values().flat_map(|r| r.1.keys())),
    );
    say!(out, "Full indexes (PLAID search, k = 10):\n");
    say!(
        out,
        "{}",
        table_header(
            &[
                ("method", "---"),
                ("dim", "---:"),
                ("codec", "---"),
                ("seeds", "---"),
                ("bytes/token", "---:"),
            ],
            &datasets,
            &[" nDCG@10", " p50 ms", " MiB", " build s"],
            "mean nDCG@10"
        )
    );
    let mut keys: Vec<&(String, usize, String)> = t.plans.keys().collect();
    keys.sort_by(|a, b| a.2.cmp(&b.2).then(a.1.cmp(&b.1)).then(a.0.cmp(&b.0)));
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let avg = |v: &[f64]| mean_std(v).0;
    for k in keys {
        let runs = &t.plans[k];
        let any = runs
            .values()
            .flat_map(|r| r.1.values())
            .next()
            .expect("a row");
        let bytes = any["bytes_per_token"].as_f64().unwrap_or(0.0);
        let seeds = seeds_cell(runs.values().filter_map(|r| r.0));
        let mut line = format!("| {} | {} | {} | {seeds} | {bytes:.0} |", k.0, k.1, k.2);
        for d in &datasets {
            let rows: Vec<&serde_json::Value> = runs.values().filter_map(|r| r.1.get(d)).collect();
            if rows.is_empty() {
                line += " – | – | – | – |";
                continue;
            }
            let field = |name: &str, scale: f64| -> Vec<f64> {
                rows.iter()
                    .map(|r| r[name].as_f64().unwrap_or(f64::NAN) / scale)
                    .collect()
            };
            line += &format!(
                " {} | {:.1} | {:.1} | {:.1} |",
                mean_pm(&field("ndcg10", 1.0)),
                avg(&field("search_p50_ms", 1.0)),
                avg(&field("index_bytes", (1 << 20) as f64)),
                avg(&field("build_s", 1.0))
            );
        }
        // The dev mean of each run that has every dataset.
        let means: Vec<f64> = runs
            .values()
            .filter(|r| datasets.iter().all(|d| r.1.contains_key(d)))
            .map(|r| {
                avg(&r
                    .1
                    .values()
                    .map(|x| x["ndcg10"].as_f64().unwrap_or(f64::NAN))
                    .collect::<Vec<_>>())
            })
            .collect();
        let mean = if means.is_empty() {
            say!(out, "{line} – |");
            f64::NAN
        } else {
            say!(out, "{line} {} |", mean_pm(&means));
            avg(&means)
        };
        if mean.is_finite() {
            let label = if k.0 == "full" || k.0.starts_with("head") {
                format!("{} ({})", if k.0 == "full" { "full" } else { "heads" }, k.2)
            } else {
                format!("{} ({})", k.0, k.2)
            };
            series.entry(label).or_default().push((bytes, mean));
        }
    }
    series
}

/// The tables (Markdown) of the reduction runs and plans in `args.runs`,
/// drawing the plots `args` asks for.
pub fn summarize_reductions(args: &ReductionSummaryOptions) -> Result<String> {
    let mut out = String::new();
    let t = Tables::read(&args.runs)?;
    if !t.pools.is_empty() {
        print_pools(&t, &mut out);
    }
    if !t.plans.is_empty() {
        let series = print_plans(&t, &mut out);
        if let Some(stem) = &args.plot {
            let series: Vec<plot::Series> = series
                .into_iter()
                .map(|(name, mut points)| {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    plot::Series { name, points }
                })
                .collect();
            plot::line_chart(
                stem,
                "nDCG@10 (dev mean) against index bytes per token",
                "bytes per token (codec + 4-byte centroid id)",
                "nDCG@10",
                &series,
            )?;
            progress::note(format!(
                "plot: {}.png, {}.svg",
                stem.display(),
                stem.display()
            ));
        }
    }
    if let Some(stem) = &args.frontier {
        let files: Vec<&PathBuf> = args.runs.iter().filter(|r| r.is_file()).collect();
        draw_frontiers(stem, &files)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_keeps_what_nothing_beats_on_both_axes() {
        let pts = vec![
            (1.0, 100.0),
            (1.5, 99.0),
            (1.4, 98.0),
            (2.0, 96.0),
            (2.0, 95.0),
            (2.5, 90.0),
        ];
        // (1.4, 98) is beaten by (1.5, 99); (2.0, 95) by (2.0, 96).
        assert_eq!(
            frontier(pts),
            vec![(1.0, 100.0), (1.5, 99.0), (2.0, 96.0), (2.5, 90.0)]
        );
        assert!(frontier(Vec::new()).is_empty());
    }
}
