//! What a training run reports and writes: dev-pool metrics, the model
//! folder, the loss and dev curves, peak memory.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tessera_eval::{evaluate, Measure, Qrels, Run};
use tessera_model::{ColbertSettings, ProjectionHead};
use tessera_training::train::{self, plot, Trainee};

use super::data::DatasetData;

use tessera_model::tch as tch_tensor;

/// nDCG@10 and Recall@100 of scored dev pools (positions of dataset
/// `name`'s queries and documents) against `qrels`.
pub fn pool_metrics(
    data: &[DatasetData],
    name: &str,
    items: &[(usize, Vec<usize>)],
    scored: Vec<Vec<(usize, f32)>>,
    qrels: &Qrels,
) -> (f64, f64) {
    let ids = doc_ids_of(data, name);
    let qids = query_ids_of(data, name);
    let mut run = Run::default();
    for ((q, _), hits) in items.iter().zip(scored) {
        run.results.insert(
            qids[*q].clone(),
            hits.into_iter()
                .map(|(d, s)| (ids[d].clone(), f64::from(s)))
                .collect(),
        );
    }
    let e = evaluate(
        qrels,
        &run,
        &[Measure::Ndcg(10), Measure::Recall(100)],
        true,
    );
    (e.mean[0], e.mean[1])
}

pub fn doc_ids_of<'a>(data: &'a [DatasetData], name: &str) -> &'a [String] {
    &data
        .iter()
        .find(|d| d.name == name)
        .expect("dev sets come from datasets")
        .doc_ids
}

pub fn query_ids_of(data: &[DatasetData], name: &str) -> Vec<String> {
    data.iter()
        .find(|d| d.name == name)
        .expect("dev sets come from datasets")
        .queries
        .iter()
        .map(|q| q.id.clone())
        .collect()
}

/// Writes the model folder: head files, tessera.json (settings and the
/// backbone: a reference in frozen mode, the fine-tuned weights in full
/// mode, with config.json and tokenizer.json copied beside them).
pub fn write_model(
    out: &Path,
    t: &Trainee<'_>,
    settings: &ColbertSettings,
    backbone: &Path,
    hidden: i64,
) -> tessera_training::Result<()> {
    use tessera_model::ModelError as TrainingError;
    let io = |p: &Path, e| TrainingError::Io {
        path: p.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let params: HashMap<String, tch_tensor::Tensor> = t.head_tensors().into_iter().collect();
    let head = ProjectionHead::from_spec(t.spec.clone(), params, out)?;
    head.save_tessera(out, hidden)?;
    let mut own = serde_json::json!({ "colbert": settings });
    match &t.backbone {
        None => own["backbone"] = serde_json::json!(backbone),
        Some(bb) => {
            let named: Vec<(String, tch_tensor::Tensor)> = bb
                .variables
                .iter()
                .map(|(n, v)| (n.clone(), v.detach().to_device(tch_tensor::Device::Cpu)))
                .collect();
            tch_tensor::Tensor::write_safetensors(&named, out.join("model.safetensors"))?;
            for f in ["config.json", "tokenizer.json"] {
                std::fs::copy(backbone.join(f), out.join(f)).map_err(|e| io(&out.join(f), e))?;
            }
        }
    }
    let p = out.join("tessera.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&own).expect("json")).map_err(|e| io(&p, e))
}

pub fn draw_curves(out: &Path, s: &train::Summary) {
    let loss: Vec<(f64, f64)> = s.steps.iter().map(|l| (l.step as f64, l.loss)).collect();
    let mut curves = vec![(
        "loss",
        "training loss",
        "loss",
        vec![
            plot::Series {
                name: "loss".into(),
                points: loss.clone(),
            },
            plot::Series {
                name: "smoothed (EMA 0.1)".into(),
                points: plot::smooth(&loss, 0.1),
            },
        ],
    )];
    if !s.dev.is_empty() {
        let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for d in &s.dev {
            by.entry("mean".into())
                .or_default()
                .push((d.step as f64, d.ndcg10));
            for (n, v, _) in &d.per_source {
                by.entry(n.clone()).or_default().push((d.step as f64, *v));
            }
        }
        curves.push((
            "dev",
            "dev nDCG@10 (exact MaxSim over the candidate pools)",
            "nDCG@10",
            by.into_iter()
                .map(|(name, points)| plot::Series { name, points })
                .collect(),
        ));
    }
    for (stem, title, y, series) in curves {
        if let Err(e) = plot::line_chart(&out.join(stem), title, "step", y, &series) {
            eprintln!("warning: curves not drawn: {e}");
            return;
        }
    }
}

/// Peak resident memory of this process (Linux), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
