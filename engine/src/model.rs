//! Loading the model: which one ([`ModelOptions`], the default model and
//! the built-in names), the one that built an index (checked by its
//! fingerprint and width), and what an index records of it.

use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use tessera_model::{device, DeviceChoice, Encoder, EncoderOptions, Precision, PrecisionChoice};

/// How to load and run the model: which one, where, in what precision,
/// with how many threads (the `--model`, `--device`, `--precision`,
/// `--threads` and `--batch-size` options of the commands that encode).
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Model directory (Hugging Face BERT, Stanford ColBERT, PyLate or
    /// Tessera layout) or a built-in name (`tessera-minilm`, `raw`);
    /// `None`: `$TESSERA_MODEL`, else the default model.
    pub model: Option<PathBuf>,
    /// Where the model runs.
    pub device: DeviceChoice,
    /// Threads for the model and for parallel work (`None`:
    /// `$RAYON_NUM_THREADS`, else the number of CPUs).
    pub threads: Option<u16>,
    /// Texts per forward pass.
    pub batch_size: u32,
    /// Precision of the backbone (`None`: auto, or what an index records).
    pub precision: Option<PrecisionChoice>,
}

impl Default for ModelOptions {
    /// The default model, on CUDA when available, 32 texts per pass.
    fn default() -> Self {
        Self {
            model: None,
            device: DeviceChoice::Auto,
            threads: None,
            batch_size: 32,
            precision: None,
        }
    }
}

impl ModelOptions {
    /// `--model`, else the default model.
    pub fn model_dir(&self) -> Result<PathBuf> {
        match &self.model {
            Some(d) => resolve_model(d),
            None => default_model(),
        }
    }

    /// The precision a model loaded with these options runs in.
    pub fn resolved_precision(&self) -> Result<Precision> {
        let device = self.device.resolve()?;
        Ok(self.precision.unwrap_or_default().resolve(device))
    }

    /// These options with `--precision` defaulting to the one recorded in
    /// an index or embeddings folder's model info (`info["precision"]`;
    /// fp32 for folders made before precision was recorded).
    pub fn with_recorded_precision(&self, info: &serde_json::Value) -> Self {
        let recorded = info["precision"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or(PrecisionChoice::Fp32);
        Self {
            precision: Some(self.precision.unwrap_or(recorded)),
            ..self.clone()
        }
    }

    /// Loads the model that built `index` (at `dir`): `--model`, else the
    /// one its manifest records, in the recorded precision unless
    /// `--precision` says otherwise. Refuses a model whose vectors have
    /// another width than the index takes. Returns it and its folder.
    pub fn load_for_index(
        &self,
        index: &tessera_index::Index,
        dir: &Path,
    ) -> Result<(Encoder, PathBuf)> {
        let info = &index.manifest().info["model"];
        let model_dir = match (&self.model, info["path"].as_str().map(PathBuf::from)) {
            (Some(d), _) => resolve_model(d)?,
            (None, Some(p)) if p.exists() => p,
            (None, Some(p)) => bail!(
                "the index was built with model {}, which is no longer there; pass --model",
                p.display()
            ),
            (None, None) => self.model_dir()?,
        };
        // The folder may hold another model than the one that built the
        // index (indexes from before fingerprints record none).
        if let Some(recorded) = info["fingerprint"].as_str() {
            let now = model_fingerprint(&model_dir)?;
            if now != recorded {
                let msg = format!(
                    "index {} was built with the model in {} (fingerprint {recorded}),                      but that folder now holds other files (fingerprint {now})",
                    dir.display(),
                    model_dir.display()
                );
                if self.model.is_none() {
                    bail!(
                        "{msg}: queries would be encoded by a model its documents never saw;                          rebuild the index, restore the model, or pass --model to override"
                    );
                }
                tracing::warn!("{msg}; searching with it as --model asks");
            }
        }
        let encoder = self.with_recorded_precision(info).load_dir(&model_dir)?;
        let want = index.query_dim();
        if encoder.dim() != want {
            bail!(
                "model {} makes {}-dim vectors, but index {} expects {want}-dim queries: \
                 use the model that built it",
                model_dir.display(),
                encoder.dim(),
                dir.display()
            );
        }
        Ok((encoder, model_dir))
    }

    /// Applies `--threads` and loads the encoder (`--model` or the default).
    pub fn load(&self) -> Result<Encoder> {
        let dir = self.model_dir()?;
        self.load_dir(&dir)
    }

    /// Applies `--threads` and loads the encoder in `dir`.
    pub fn load_dir(&self, dir: &std::path::Path) -> Result<Encoder> {
        let threads = self
            .threads
            .map(usize::from)
            .or_else(|| {
                std::env::var("RAYON_NUM_THREADS")
                    .ok()
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        device::set_threads(threads);
        // The global pool may already exist (only in tests); that is fine.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();

        let options = EncoderOptions {
            device: self.device,
            batch_size: self.batch_size as usize,
            precision: self.precision.unwrap_or_default(),
        };
        let encoder = Encoder::load(dir, options)
            .with_context(|| format!("loading model {}", dir.display()))?;
        tracing::info!(
            model = %dir.display(),
            layout = %encoder.layout(),
            dim = encoder.dim(),
            device = %device::describe(encoder.device()),
            precision = %encoder.precision(),
            threads,
            "encoder ready"
        );
        Ok(encoder)
    }
}

/// The installed backbone (all-MiniLM-L6-v2, `$TESSERA_HOME/models/default`).
fn backbone() -> Result<PathBuf> {
    tessera_model::tessera_home()
        .map(|h| h.join("models/default"))
        .filter(|d| d.exists())
        .context(
            "the default model's backbone is not installed: run scripts/setup \
             (or pass --model DIR, or set TESSERA_MODEL)",
        )
}

/// The default model: `$TESSERA_MODEL`, else the built-in trained head
/// over the installed backbone (written beside it on first use).
pub fn default_model() -> Result<PathBuf> {
    if let Some(m) = std::env::var_os("TESSERA_MODEL").filter(|v| !v.is_empty()) {
        return Ok(m.into());
    }
    let bb = backbone()?;
    tessera_model::builtin::install(&bb)
        .with_context(|| format!("installing the default model beside {}", bb.display()))
}

/// `p` made absolute (links resolved) where it exists, else as given: the
/// form paths take in fingerprints, records and checkpoints, so that they
/// compare equal whatever directory a command runs from.
pub fn absolute(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_owned())
}

/// A `--model` value: a folder, or one of the names `tessera-minilm` and
/// `raw` when no folder of that name exists.
pub fn resolve_model(p: &Path) -> Result<PathBuf> {
    if p.exists() {
        return Ok(p.to_owned());
    }
    match p.to_str() {
        Some(tessera_model::builtin::RAW) => backbone(),
        Some(tessera_model::builtin::NAME) => {
            let bb = backbone()?;
            Ok(tessera_model::builtin::install(&bb)?)
        }
        _ => Ok(p.to_owned()),
    }
}

/// Files of a model folder hashed whole up to this size; a larger one (a
/// backbone's weights) by its size and its first and last 4 MiB, so opening
/// an index stays cheap.
const FULL_HASH_BYTES: u64 = 64 << 20;

/// A fingerprint of the files in model folder `dir` (names and bytes,
/// links followed, subfolders such as `checkpoint/` left out) and, for a
/// head that names its backbone, of the backbone's folder: 16 hex digits
/// per folder. An index records it, so a folder that now holds another model
/// (a head retrained in place) is noticed instead of encoding queries with
/// weights its documents never saw.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let own = files_fingerprint(dir)?;
    // A Tessera head names its backbone's folder: that folder's files count
    // too (one level: a backbone is a plain model folder).
    Ok(match tessera_model::checkpoint::backbone_dir(dir) {
        Ok(b) if b != dir => format!("{own}-{}", files_fingerprint(&b)?),
        _ => own,
    })
}

/// [`model_fingerprint`] of one folder's own files.
fn files_fingerprint(dir: &Path) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.file_name().hash(&mut h);
        let len = std::fs::metadata(&f)
            .with_context(|| f.display().to_string())?
            .len();
        len.hash(&mut h);
        hash_file(&f, &mut h, false)?;
    }
    Ok(format!("{:016x}", h.finish()))
}

/// Feeds the bytes of the file at `path` to `h`: all of them, or — unless
/// `whole`, for a file over 64 MiB — its first and last 4 MiB.
pub fn hash_file(path: &Path, h: &mut impl std::hash::Hasher, whole: bool) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let ctx = || path.display().to_string();
    let mut file = std::fs::File::open(path).with_context(ctx)?;
    let len = file.metadata().with_context(ctx)?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |file: &mut std::fs::File, n: u64| -> Result<()> {
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..k]).with_context(ctx)?;
            h.write(&buf[..k]);
            left -= k as u64;
        }
        Ok(())
    };
    if whole || len <= FULL_HASH_BYTES {
        feed(&mut file, len)
    } else {
        let edge = 4u64 << 20;
        feed(&mut file, edge)?;
        file.seek(SeekFrom::Start(len - edge)).with_context(ctx)?;
        feed(&mut file, edge)
    }
}

/// What an index or embeddings folder records about the model that made its
/// vectors, so search can load the same one.
pub fn model_info(encoder: &Encoder) -> serde_json::Value {
    let m = encoder.model();
    let s = encoder.settings();
    let path = absolute(&m.dir);
    serde_json::json!({
        "path": path,
        "fingerprint": model_fingerprint(&m.dir).ok(),
        "layout": encoder.layout().to_string(),
        "head": format!("{:?}", m.head.kind()).to_lowercase(),
        "dim": encoder.dim(),
        "query_maxlen": s.query_maxlen,
        "doc_maxlen": s.doc_maxlen,
        "query_augmentation": s.query_augmentation,
        "precision": encoder.precision().as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_follows_the_files_of_a_head_and_of_its_backbone() {
        let dir = tempfile::tempdir().unwrap();
        let backbone = dir.path().join("backbone");
        let head = dir.path().join("head");
        std::fs::create_dir_all(&backbone).unwrap();
        std::fs::create_dir_all(head.join("checkpoint")).unwrap();
        std::fs::write(backbone.join("config.json"), "{}").unwrap();
        std::fs::write(backbone.join("model.safetensors"), [1u8; 100]).unwrap();
        std::fs::write(head.join("tessera.json"), r#"{"backbone": "../backbone"}"#).unwrap();
        std::fs::write(head.join("head.safetensors"), [2u8; 100]).unwrap();
        let first = model_fingerprint(&head).unwrap();
        // Same bytes written again, and a checkpoint's files: no change.
        std::fs::write(head.join("head.safetensors"), [2u8; 100]).unwrap();
        std::fs::write(head.join("checkpoint/state.json"), "{}").unwrap();
        assert_eq!(model_fingerprint(&head).unwrap(), first);
        // The head's weights or the backbone's: another fingerprint.
        std::fs::write(head.join("head.safetensors"), [3u8; 100]).unwrap();
        let second = model_fingerprint(&head).unwrap();
        assert_ne!(second, first);
        std::fs::write(backbone.join("model.safetensors"), [4u8; 100]).unwrap();
        assert_ne!(model_fingerprint(&head).unwrap(), second);
    }
}
