//! Dimension reductions applied at build and search time: which one a
//! command asked for, its checks against the model and the index, and what
//! an index records of it.

use std::path::{Path, PathBuf};

use tessera_index::{BuildOptions, Index};
use tessera_model::reduction::Reduction;

use crate::error::{ensure, Context, Result};
use crate::model::absolute;

/// A reduction to apply (`--reduction DIR --dim R` of the commands that
/// build or search indexes): none when either is unset.
#[derive(Debug, Clone, Default)]
pub struct ReductionChoice {
    /// A reduction folder (`tessera train reduce`).
    pub reduction: Option<PathBuf>,
    /// Its output size: one of its nested set (any size up to the model's
    /// for pca and truncate).
    pub reduced_dim: Option<usize>,
}

impl ReductionChoice {
    /// The reduction and `r`, checked against vectors of `model_dim` dims.
    pub fn load(&self, model_dim: Option<usize>) -> Result<Option<(Reduction, usize)>> {
        let (Some(dir), Some(r)) = (&self.reduction, self.reduced_dim) else {
            return Ok(None);
        };
        let red = Reduction::load(dir).with_context(|| format!("--reduction {}", dir.display()))?;
        if let Some(k) = model_dim {
            ensure!(
                red.in_dim() == k,
                "--reduction {}: it reduces {}-dim vectors, the model makes {k}-dim ones",
                dir.display(),
                red.in_dim()
            );
        }
        red.check_r(r)?;
        Ok(Some((red, r)))
    }

    /// Checks that `index` was built with this reduction (when one is given).
    pub fn check_index(&self, index: &Index, index_dir: &Path) -> Result<()> {
        let Some(dir) = &self.reduction else {
            return Ok(());
        };
        let Some((red, r)) = self.load(Some(index.query_dim()))? else {
            return Ok(());
        };
        let recorded = &index.manifest().info["reduction"];
        ensure!(
            !recorded.is_null(),
            "--reduction {}: index {} was built without a reduction ({}-dim vectors)",
            dir.display(),
            index_dir.display(),
            index.dim()
        );
        let same = recorded["fingerprint"].as_str() == Some(red.fingerprint().as_str())
            && recorded["dim"].as_u64() == Some(r as u64);
        ensure!(
            same,
            "--reduction {} --dim {r}: index {} was built with another reduction ({} {} at dim {}, \
             from {}); search it without --reduction (it applies its own) or rebuild it",
            dir.display(),
            index_dir.display(),
            recorded["method"].as_str().unwrap_or("?"),
            recorded["fingerprint"].as_str().unwrap_or("?"),
            recorded["dim"],
            recorded["dir"].as_str().unwrap_or("?"),
        );
        Ok(())
    }
}

/// What an index manifest records of its reduction.
pub fn reduction_info(red: &Reduction, r: usize) -> serde_json::Value {
    serde_json::json!({
        "dir": red.dir.as_deref().map(absolute),
        "method": red.meta.method,
        "in_dim": red.in_dim(),
        "dim": r,
        "dims": red.meta.dims,
        "fingerprint": red.fingerprint(),
        "centring": red.meta.centring,
    })
}

/// Build options reducing to `r` with `red`.
pub fn apply_to_options(opts: &mut BuildOptions, red: &Reduction, r: usize) -> Result<()> {
    opts.reduction = Some(red.to_index(r)?);
    let mut info = match std::mem::take(&mut opts.info) {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    info.insert("reduction".into(), reduction_info(red, r));
    opts.info = serde_json::Value::Object(info);
    Ok(())
}
