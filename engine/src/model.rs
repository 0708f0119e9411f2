//! Options shared by every command that runs the model, and loading it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tessera_training::{device, DeviceChoice, Encoder, EncoderOptions};

/// `--model`, `--device`, `--threads`, `--batch-size`.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (Hugging Face BERT, Stanford ColBERT, PyLate or
    /// Tessera layout). Default: the all-MiniLM-L6-v2 weights that
    /// scripts/setup installs ($TESSERA_MODEL or $TESSERA_HOME/models/default).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu, cuda or auto (CUDA when available).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Threads for the model and for parallel work. Default:
    /// $RAYON_NUM_THREADS, else the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

impl ModelArgs {
    /// `--model`, else the default model.
    pub fn model_dir(&self) -> Result<PathBuf> {
        match &self.model {
            Some(d) => Ok(d.clone()),
            None => tessera_training::default_model_dir()
                .filter(|d| d.exists())
                .context(
                    "no --model given and the default model is not installed: \
                     run scripts/setup, or set TESSERA_MODEL",
                ),
        }
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
        };
        let encoder = Encoder::load(dir, options)
            .with_context(|| format!("loading model {}", dir.display()))?;
        tracing::info!(
            model = %dir.display(),
            layout = %encoder.layout(),
            dim = encoder.dim(),
            device = %device::describe(encoder.device()),
            threads,
            "encoder ready"
        );
        Ok(encoder)
    }
}

/// What an index or embeddings folder records about the model that made its
/// vectors, so search can load the same one.
pub fn model_info(encoder: &Encoder) -> serde_json::Value {
    let m = encoder.model();
    let s = encoder.settings();
    let path = m.dir.canonicalize().unwrap_or_else(|_| m.dir.clone());
    serde_json::json!({
        "path": path,
        "layout": encoder.layout().to_string(),
        "head": format!("{:?}", m.head.kind()).to_lowercase(),
        "dim": encoder.dim(),
        "query_maxlen": s.query_maxlen,
        "doc_maxlen": s.doc_maxlen,
        "query_augmentation": s.query_augmentation,
    })
}
