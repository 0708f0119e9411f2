//! The robust side of `train heads`: collections validated on but never
//! trained on (zero-shot dev sets scored exactly over their whole corpus),
//! the general starting head (the backbone's principal directions), and
//! the kept copies of validated heads that `--select robust` chooses from.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{bail, ensure, Context, Result};
use tessera_eval::Qrels;
use tessera_model::tch::{Device, Tensor};
use tessera_model::{Encoder, TextKind};
use tessera_training::reduce::Covariance;
use tessera_training::states::StateCache;
use tessera_training::train::score::DevSet;

use super::data::{read_splits, side, DatasetData, DevSets};
use crate::model::absolute;

/// Reads each `--zero-shot` collection and makes its dev set: every query
/// its `dev_split` judges, against every document of its corpus. Refuses a
/// collection that is also trained on, one without that split, and two
/// collections (trained on or not) of one name.
pub fn zero_shot_devs(
    encoder: &Encoder,
    dirs: &[PathBuf],
    dev_split: &str,
    full: bool,
    trained: &[DatasetData],
) -> Result<(Vec<DatasetData>, DevSets)> {
    let mut names: HashSet<String> = trained.iter().map(|d| d.name.clone()).collect();
    let trained_dirs: HashSet<PathBuf> = trained.iter().map(|d| d.dir.clone()).collect();
    let mut data = Vec::new();
    let mut devs = Vec::new();
    for dir in dirs {
        ensure!(
            !trained_dirs.contains(&absolute(dir)),
            "--zero-shot {}: also given as --dataset; a zero-shot set is never trained on",
            dir.display()
        );
        let d = read_splits(dir, None, dev_split, false)
            .with_context(|| format!("--zero-shot {}", dir.display()))?;
        let Some(qrels) = d.dev.clone() else {
            bail!(
                "--zero-shot {}: no qrels/{dev_split}.tsv to validate on",
                dir.display()
            );
        };
        ensure!(
            names.insert(d.name.clone()),
            "--zero-shot {}: another collection is named {:?} too (rename a folder)",
            dir.display(),
            d.name
        );
        let judged: Vec<usize> = (0..d.queries.len())
            .filter(|&i| qrels.judgements.contains_key(&d.queries[i].id))
            .collect();
        let qids: Vec<String> = judged.iter().map(|&i| d.queries[i].id.clone()).collect();
        let qtexts: Vec<String> = judged.iter().map(|&i| d.queries[i].text.clone()).collect();
        let label = format!("{}-zero-shot-{dev_split}", d.name);
        let queries = side(encoder, full, &label, &qids, &qtexts, TextKind::Query)?;
        let docs = side(
            encoder,
            full,
            &d.name,
            &d.doc_ids,
            &d.doc_texts,
            TextKind::Document,
        )?;
        let all: Vec<usize> = (0..d.doc_ids.len()).collect();
        // Query positions are those of the dev queries' own side; the
        // metrics look queries up by id, so the dataset keeps that order.
        let items = (0..qids.len()).map(|q| (q, all.clone())).collect();
        let mut d = d;
        d.queries = judged.iter().map(|&i| d.queries[i].clone()).collect();
        devs.push((
            DevSet {
                name: d.name.clone(),
                queries,
                docs,
                items,
            },
            Qrels {
                judgements: qrels.judgements,
            },
        ));
        data.push(d);
    }
    Ok((data, devs))
}

/// Documents per source whose states the principal directions are fitted on.
const PCA_DOCS: usize = 2000;

/// The `k` principal directions (uncentred) of the cached document states
/// `sides` — up to 2,000 documents each, spread evenly — as a
/// `[k, d]` projection ([`tessera_model::heads::start`]).
pub fn principal_projection(sides: &[&StateCache], k: i64) -> Result<Tensor> {
    let dim = sides.first().map_or(0, |c| c.dim());
    let mut moments = Covariance::new(dim);
    for cache in sides {
        let n = cache.len();
        let take = n.min(PCA_DOCS);
        let picks: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
        for group in picks.chunks(64) {
            let (states, mask) = cache.batch(group, Device::Cpu);
            moments.push(&states.index(&[Some(mask.gt(0.0))]));
        }
    }
    let tokens = moments.count();
    ensure!(
        tokens >= k as u64,
        "--start pca: the training documents have {tokens} tokens, fewer than the {k} directions asked"
    );
    tessera_model::heads::start::principal_directions(&moments.second_moment(), k)
        .map_err(crate::error::EngineError::msg)
}

/// Where a validated head is kept for `--select robust` (beside the
/// checkpoint, which each save replaces whole).
pub fn validated_dir(out: &Path, step: usize) -> PathBuf {
    out.join("validated").join(format!("step-{step}"))
}

/// Files of a model folder a kept head consists of (frozen mode).
const MODEL_FILES: [&str; 3] = ["head.json", "head.safetensors", "tessera.json"];

/// Copies the head kept after `step` into the model folder `out`.
pub fn restore_validated(out: &Path, step: usize) -> Result<()> {
    let from = validated_dir(out, step);
    for f in MODEL_FILES {
        let (src, dst) = (from.join(f), out.join(f));
        let tmp = out.join(format!(".{f}.tmp"));
        std::fs::copy(&src, &tmp).with_context(|| src.display().to_string())?;
        std::fs::rename(&tmp, &dst).with_context(|| dst.display().to_string())?;
    }
    Ok(())
}
