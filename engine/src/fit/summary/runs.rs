//! Tables of head-training runs (mean ± std over seeds per head and
//! dataset) and their dev curves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_eval::stats::mean_std;
use tessera_training::train::plot;

use crate::error::{ensure, Context, Result};
use crate::model::absolute;
use crate::progress;

/// Appends a line made with `format!` to `$out`.
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        $out.push_str(&format!($($t)*));
        $out.push('\n');
    }};
}

/// What `tessera train summarize` tabulates and draws.
#[derive(Debug, Clone)]
pub struct RunSummaryOptions {
    /// Output folders of `tessera train heads`.
    pub runs: Vec<PathBuf>,
    /// Also draw the mean dev nDCG@10 curve per row to FILE.png and FILE.svg.
    pub plot: Option<PathBuf>,
    /// One row per run folder name with its seed (a `-sN` part) left out
    /// — `plain-s1`, `plain-s2` → `plain` — instead of per head, dim and mode.
    pub by_folder: bool,
}

/// A run folder's name without its seed part (`-s` and digits).
fn name_without_seed(dir: &Path) -> String {
    let name = absolute(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('-')
        .filter(|part| {
            !(part.len() > 1
                && part.starts_with('s')
                && part[1..].bytes().all(|b| b.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The table (Markdown) of the training runs in `args.runs`, drawing the
/// curves `args` asks for.
pub fn summarize_runs(args: &RunSummaryOptions) -> Result<String> {
    let mut out = String::new();
    struct Row {
        seeds: Vec<u64>,
        /// dataset → (nDCG@10s, R@100s)
        per: BTreeMap<String, (Vec<f64>, Vec<f64>)>,
        mean: Vec<f64>,
        /// In-domain and zero-shot means, where the runs validated on both.
        in_domain: Vec<f64>,
        zero_shot: Vec<f64>,
        secs: Vec<f64>,
        params: i64,
        curves: Vec<Vec<(f64, f64)>>,
    }
    let mut rows: BTreeMap<(String, i64, String), Row> = BTreeMap::new();
    for r in &args.runs {
        let p = r.join("training.json");
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
        )
        .with_context(|| p.display().to_string())?;
        let best = &v["best"];
        ensure!(
            best.is_object(),
            "{}: the run has no dev score",
            p.display()
        );
        let head = if args.by_folder {
            name_without_seed(r)
        } else {
            v["head"].as_str().unwrap_or("?").to_owned()
        };
        let key = (
            head,
            v["config"]["spec"]["out_dim"].as_i64().unwrap_or(0),
            v["config"]["mode"].as_str().unwrap_or("?").to_owned(),
        );
        let row = rows.entry(key).or_insert_with(|| Row {
            seeds: Vec::new(),
            per: BTreeMap::new(),
            mean: Vec::new(),
            in_domain: Vec::new(),
            zero_shot: Vec::new(),
            secs: Vec::new(),
            params: v["parameters"].as_i64().unwrap_or(0),
            curves: Vec::new(),
        });
        row.seeds.push(v["config"]["seed"].as_u64().unwrap_or(0));
        row.mean.push(best["ndcg10"].as_f64().unwrap_or(f64::NAN));
        if let (Some(i), Some(z)) = (best["in_domain"].as_f64(), best["zero_shot"].as_f64()) {
            row.in_domain.push(i);
            row.zero_shot.push(z);
        }
        row.secs.push(v["train_seconds"].as_f64().unwrap_or(0.0));
        for ps in best["per_source"].as_array().into_iter().flatten() {
            let e = row
                .per
                .entry(ps[0].as_str().unwrap_or("?").to_owned())
                .or_default();
            e.0.push(ps[1].as_f64().unwrap_or(f64::NAN));
            e.1.push(ps[2].as_f64().unwrap_or(f64::NAN));
        }
        let metrics = std::fs::read_to_string(r.join("metrics.jsonl")).unwrap_or_default();
        let curve: Vec<(f64, f64)> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["type"] == "dev")
            .map(|m| {
                (
                    m["dev"]["step"].as_f64().unwrap_or(0.0),
                    m["dev"]["ndcg10"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        row.curves.push(curve);
    }
    let datasets: Vec<String> = rows
        .values()
        .flat_map(|r| r.per.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let pm = |v: &[f64]| {
        let (m, s) = mean_std(v);
        format!("{m:.4} ± {s:.4}")
    };
    let split = rows.values().any(|r| !r.zero_shot.is_empty());
    let mut head = format!(
        "| {} | dim | mode | seeds |",
        if args.by_folder { "run" } else { "head" }
    );
    let mut rule = String::from("|---|---|---|---|");
    for d in &datasets {
        head += &format!(" {d} nDCG@10 | {d} R@100 |");
        rule += "---|---|";
    }
    if split {
        head += " in-domain nDCG@10 | zero-shot nDCG@10 |";
        rule += "---|---|";
    } else {
        head += " mean nDCG@10 |";
        rule += "---|";
    }
    head += " train s | parameters |";
    rule += "---|---|";
    say!(out, "{head}\n{rule}");
    for ((name, dim, mode), r) in &rows {
        let mut line = format!("| {name} | {dim} | {mode} | {} |", r.seeds.len());
        for d in &datasets {
            match r.per.get(d) {
                Some((n, rc)) => line += &format!(" {} | {} |", pm(n), pm(rc)),
                None => line += " – | – |",
            }
        }
        if split {
            let cell = |v: &[f64]| {
                if v.is_empty() {
                    "–".to_owned()
                } else {
                    pm(v)
                }
            };
            line += &format!(" {} | {} |", cell(&r.in_domain), cell(&r.zero_shot));
        } else {
            line += &format!(" {} |", pm(&r.mean));
        }
        line += &format!(" {:.0} | {} |", mean_std(&r.secs).0, r.params);
        say!(out, "{line}");
    }
    if let Some(stem) = &args.plot {
        let series: Vec<plot::Series> = rows
            .iter()
            .filter(|(_, r)| r.curves.iter().all(|c| c.len() > 1))
            .map(|((name, dim, mode), r)| {
                let n = r.curves.iter().map(Vec::len).min().unwrap_or(0);
                let points = (0..n)
                    .map(|i| {
                        let ys: Vec<f64> = r.curves.iter().map(|c| c[i].1).collect();
                        (r.curves[0][i].0, mean_std(&ys).0)
                    })
                    .collect();
                let m = if mode == "full" { " full" } else { "" };
                plot::Series {
                    name: format!("{name} @{dim}{m}"),
                    points,
                }
            })
            .collect();
        plot::line_chart(
            stem,
            "dev nDCG@10 (mean of datasets, mean over seeds)",
            "step",
            "nDCG@10",
            &series,
        )?;
        progress::note(format!(
            "curves: {}.png, {}.svg",
            stem.display(),
            stem.display()
        ));
    }
    Ok(out)
}
