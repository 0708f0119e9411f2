//! The caches `eval`, `train heads`, `train reduce` and `reduce plan`
//! share under `$TESSERA_HOME/cache`: a dataset's corpus encoded by a model
//! (`encodings/`, keyed by the corpus's bytes, the model's fingerprint, its
//! precision and how records are read) and indexes built from those
//! encodings (`indexes/`, keyed by the encoding, codec, analyzer, build
//! recipe and reduction). An interrupted encoding continues from its last
//! checkpoint the next time it is asked for.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera_eval::beir::Dataset;
use tessera_index::{Analyzer, BuildOptions};
use tessera_model::reduction::Reduction;
use tessera_model::Precision;

use crate::embeddings::load_state;
use crate::error::{Context, Result};
use crate::ingest::{encode_to_dir, skipped_note, Input, RecordOptions, Rerun};
use crate::model::{absolute, ModelOptions};
use crate::progress;

/// A dataset folder's name (of its canonical path: `.` names its folder).
pub fn dataset_name(canonical: &Path) -> String {
    canonical
        .file_name()
        .map_or("dataset".into(), |n| n.to_string_lossy().into_owned())
}

/// What makes a cached encoding of a dataset's corpus: the corpus's bytes,
/// the model (its folder's path and [`crate::model::model_fingerprint`]), its precision
/// and how records are read. Contents, not sizes and times: a dataset or a
/// model checked out again or re-provisioned at the same path keeps its
/// encodings, and a head retrained in the same folder does not reuse old
/// vectors.
pub fn encoding_key(
    dataset: &Dataset,
    canonical: &Path,
    model: &Path,
    records: &RecordOptions,
    precision: Precision,
) -> Result<u64> {
    let corpus = dataset.corpus_path();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical.hash(&mut h);
    crate::model::hash_file(&corpus, &mut h, true)?;
    absolute(model).hash(&mut h);
    crate::model::model_fingerprint(model).ok().hash(&mut h);
    records_key(records).hash(&mut h);
    // fp32 encodings keep the key they had before precision was a choice.
    if precision != Precision::Fp32 {
        precision.as_str().hash(&mut h);
    }
    Ok(h.finish())
}

/// The cache key of how records are read: the text it has always been, so
/// that encodings made by earlier versions stay valid.
pub fn records_key(records: &RecordOptions) -> String {
    format!(
        "RecordArgs {{ format: {:?}, id_field: {:?}, text_fields: {:?}, skip_invalid: {:?} }}",
        records.format, records.id_field, records.text_fields, records.skip_invalid
    )
}

/// `$TESSERA_HOME/cache`.
pub fn cache_root() -> Result<PathBuf> {
    Ok(tessera_model::tessera_home()
        .context("cannot locate the cache: set TESSERA_HOME")?
        .join("cache"))
}

/// The cached encoding of a dataset's corpus (made if missing; an
/// interrupted one continues from its last checkpoint).
pub fn cached_encoding(
    model_args: &ModelOptions,
    records: &RecordOptions,
    dataset: &Dataset,
    name: &str,
    key: u64,
    model_dir: &Path,
    preloaded: Option<&tessera_model::Encoder>,
) -> Result<PathBuf> {
    let dir = cache_root()?
        .join("encodings")
        .join(format!("{name}-{key:016x}"));
    if load_state(&dir)?.is_some_and(|s| s.complete) {
        return Ok(dir);
    }
    progress::note(format!(
        "encoding {} into {} (cached for later runs)",
        dataset.corpus_path().display(),
        dir.display()
    ));
    let loaded;
    let encoder = match preloaded {
        Some(e) => e,
        None => {
            loaded = model_args.load_dir(model_dir)?;
            &loaded
        }
    };
    let input = Input {
        input: dataset.corpus_path(),
        records: records.clone(),
    };
    let t = Instant::now();
    let st = encode_to_dir(encoder, &input, &dir, true, 1024, Rerun::Automatically)?;
    progress::note(format!(
        "encoded {} documents, {} tokens in {:.1} s{}",
        st.docs,
        st.tokens,
        t.elapsed().as_secs_f64(),
        skipped_note(&st.skipped)
    ));
    Ok(dir)
}

/// The cached index of an encoding with `codec` (built if missing); the
/// build time when it was built now.
pub fn cached_index(
    encoding: &Path,
    name: &str,
    key: u64,
    codec: &str,
    analyzer: Analyzer,
    reduction: Option<&(Reduction, usize)>,
) -> Result<(PathBuf, Option<f64>)> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    codec.hash(&mut h);
    analyzer.hash(&mut h);
    tessera_index::BUILD_RECIPE.hash(&mut h);
    let mut label = format!("{name}-{codec}");
    if let Some((red, r)) = reduction {
        red.fingerprint().hash(&mut h);
        r.hash(&mut h);
        label += &format!("-{}{r}", red.meta.method);
    }
    let dir = cache_root()?
        .join("indexes")
        .join(format!("{label}-{:016x}", h.finish()));
    if dir.join(tessera_index::manifest::MANIFEST).exists() {
        progress::note(format!("using cached index {}", dir.display()));
        return Ok((dir, None));
    }
    progress::note(format!(
        "indexing into {} (cached for later runs)",
        dir.display()
    ));
    let t = Instant::now();
    let mut opts = BuildOptions {
        codec: codec.parse()?,
        analyzer,
        ..BuildOptions::default()
    };
    if let Some((red, r)) = reduction {
        crate::reduction::apply_to_options(&mut opts, red, *r)?;
    }
    let (stats, note) = crate::ingest::build_from_vectors(encoding, &dir, opts)?;
    let secs = t.elapsed().as_secs_f64();
    progress::note(format!(
        "indexed {} documents, {} tokens ({}, {} centroids) in {secs:.1} s{note}",
        stats.docs, stats.tokens, stats.codec, stats.num_centroids
    ));
    Ok((dir, Some(secs)))
}

/// The name and encoding key of a dataset's corpus encoded by the model in
/// `model_dir`.
pub fn dataset_key(
    dataset: &Dataset,
    model_args: &ModelOptions,
    model_dir: &Path,
    records: &RecordOptions,
) -> Result<(String, u64)> {
    let canonical = dataset
        .dir
        .canonicalize()
        .with_context(|| dataset.dir.display().to_string())?;
    let key = encoding_key(
        dataset,
        &canonical,
        model_dir,
        records,
        model_args.resolved_precision()?,
    )?;
    Ok((dataset_name(&canonical), key))
}

/// The cached residual2 index (BM25 analyzer `en`) of a dataset's corpus
/// encoded by the model in `model_dir`, as `tessera eval` builds it.
pub fn cached_dataset_index(
    dataset: &Dataset,
    model_args: &ModelOptions,
    model_dir: &Path,
    records: &RecordOptions,
) -> Result<PathBuf> {
    let (dname, key) = dataset_key(dataset, model_args, model_dir, records)?;
    let enc = cached_encoding(model_args, records, dataset, &dname, key, model_dir, None)?;
    Ok(cached_index(&enc, &dname, key, "residual2", Analyzer::En, None)?.0)
}

/// The cached encoding (the model's vectors) of a dataset's corpus, as
/// `tessera eval` makes it.
pub fn cached_dataset_encoding(
    dataset: &Dataset,
    model_args: &ModelOptions,
    model_dir: &Path,
    records: &RecordOptions,
) -> Result<PathBuf> {
    let (dname, key) = dataset_key(dataset, model_args, model_dir, records)?;
    cached_encoding(model_args, records, dataset, &dname, key, model_dir, None)
}
