//! Loading a model directory: backbone, head and ColBERT settings, whatever
//! the checkpoint's layout.
//!
//! | layout | recognised by | head |
//! |---|---|---|
//! | Tessera | `head.json` | `head.safetensors` |
//! | PyLate | `modules.json` listing `Dense` modules | each `N_Dense/` folder, in order |
//! | Stanford ColBERT | `linear.weight` beside the `bert.*` weights | that matrix, no bias |
//! | Hugging Face BERT | none of the above | identity |
//!
//! Every layout needs `config.json`, `tokenizer.json` and `model.safetensors`
//! (or `pytorch_model.bin`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{nn, Device};

use crate::bert::BertModel;
use crate::config::{json_message, read_text, BertConfig, ColbertSettings};
use crate::error::{ModelError, Result};
use crate::heads::blocks::Activation;
use crate::heads::{LinearLayer, ProjectionHead};
use crate::weights::WeightFile;

/// Where a checkpoint came from, as recognised on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    HuggingFace,
    Stanford,
    PyLate,
    Tessera,
}

impl std::fmt::Display for CheckpointLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HuggingFace => "huggingface-bert",
            Self::Stanford => "stanford-colbert",
            Self::PyLate => "pylate",
            Self::Tessera => "tessera",
        })
    }
}

/// A loaded backbone and head, on one device, with frozen weights.
pub struct ColbertModel {
    pub vs: nn::VarStore,
    pub bert: BertModel,
    pub head: ProjectionHead,
    pub settings: ColbertSettings,
    pub layout: CheckpointLayout,
    pub dir: PathBuf,
    /// Where the backbone (config, weights, tokenizer) lives: `dir` itself,
    /// or the folder `tessera.json` names in `"backbone"`.
    pub backbone_dir: PathBuf,
}

impl ColbertModel {
    /// Loads the model in `dir` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                path: dir.to_owned(),
                what: "model directory not found",
            });
        }
        let backbone_dir = backbone_dir(dir)?;
        let config = BertConfig::from_file(&backbone_dir.join("config.json"))?;
        let weights_path = weights_file(&backbone_dir)?;
        let mut weights = WeightFile::read(&weights_path)?.normalised_bert_names();

        let mut vs = nn::VarStore::new(device);
        let bert = BertModel::new(&vs.root(), &config);
        weights.load_into(&vs)?;
        vs.freeze();

        let hidden = config.hidden_size;
        let (head, layout) = if dir.join("head.json").is_file() {
            (
                ProjectionHead::load_tessera(dir, hidden)?,
                CheckpointLayout::Tessera,
            )
        } else if let Some(layers) = pylate_dense_layers(dir)? {
            let head = ProjectionHead::from_layers(layers, hidden, &dir.join("modules.json"))?;
            (head, CheckpointLayout::PyLate)
        } else if let Some(w) = weights.tensors.remove("linear.weight") {
            let w = w.to_kind(tch::Kind::Float);
            let layer = LinearLayer::new(w, None);
            let head = ProjectionHead::from_layers(vec![layer], hidden, &weights_path)?;
            (head, CheckpointLayout::Stanford)
        } else {
            (ProjectionHead::identity(), CheckpointLayout::HuggingFace)
        };
        let (mut settings, source) = ColbertSettings::resolve(dir)?;
        if layout == CheckpointLayout::Stanford && source == "default" {
            // A Stanford checkpoint without artifact.metadata still follows
            // the Stanford conventions.
            settings = ColbertSettings::stanford();
        }
        tracing::debug!(dir = %dir.display(), %layout, settings_from = source, "model loaded");
        Ok(Self {
            vs,
            bert,
            head: head.to_device(device),
            settings,
            layout,
            dir: dir.to_owned(),
            backbone_dir,
        })
    }

    /// Dimension of the output vectors.
    pub fn dim(&self) -> i64 {
        self.head.output_dim(self.bert.config().hidden_size)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// The backbone folder of the model in `dir`: the `"backbone"` field of
/// its `tessera.json` (relative to `dir`, or absolute) when there is one —
/// a trained head stored without a copy of the weights it sits on — else
/// `dir`.
pub fn backbone_dir(dir: &Path) -> Result<PathBuf> {
    let own = dir.join("tessera.json");
    if !own.is_file() {
        return Ok(dir.to_owned());
    }
    let v: serde_json::Value = serde_json::from_str(&read_text(&own)?)
        .map_err(|e| ModelError::config(&own, json_message(&e)))?;
    match v.get("backbone") {
        None | Some(serde_json::Value::Null) => Ok(dir.to_owned()),
        Some(serde_json::Value::String(p)) => {
            let path = dir.join(p);
            if !path.join("config.json").is_file() {
                return Err(ModelError::config(
                    &own,
                    format!(
                        "field backbone names {}, which holds no config.json",
                        path.display()
                    ),
                ));
            }
            Ok(path)
        }
        Some(_) => Err(ModelError::config(&own, "field backbone must be a path")),
    }
}

/// `model.safetensors`, else `pytorch_model.bin`, in `dir`.
fn weights_file(dir: &Path) -> Result<PathBuf> {
    let st = dir.join("model.safetensors");
    if st.is_file() {
        return Ok(st);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(bin);
    }
    Err(ModelError::MissingFile {
        path: st,
        what: "no model.safetensors or pytorch_model.bin",
    })
}

#[derive(Deserialize)]
struct StModule {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: i64,
    out_features: i64,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default)]
    activation_function: Option<String>,
    #[serde(default)]
    use_residual: bool,
}

fn yes() -> bool {
    true
}

/// The Dense layers of a sentence-transformers / PyLate checkpoint, in order,
/// or `None` when `modules.json` is absent or lists no Dense module.
fn pylate_dense_layers(dir: &Path) -> Result<Option<Vec<LinearLayer>>> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(None);
    }
    let modules: Vec<StModule> = serde_json::from_str(&read_text(&modules_path)?)
        .map_err(|e| ModelError::config(&modules_path, json_message(&e)))?;
    let mut layers = Vec::new();
    for m in modules.iter().filter(|m| m.kind.ends_with(".Dense")) {
        let sub = dir.join(&m.path);
        let cfg_path = sub.join("config.json");
        let cfg: DenseConfig = serde_json::from_str(&read_text(&cfg_path)?)
            .map_err(|e| ModelError::config(&cfg_path, json_message(&e)))?;
        let activation = match cfg.activation_function.as_deref() {
            None => None,
            Some(a) => match a.rsplit('.').next().unwrap_or(a) {
                "Identity" => None,
                "GELU" => Some(Activation::Gelu),
                "ReLU" => Some(Activation::Relu),
                "SiLU" => Some(Activation::Silu),
                _ => {
                    return Err(ModelError::config(
                        &cfg_path,
                        format!(
                            "field activation_function {a:?} is not supported \
                             (Identity, GELU, ReLU or SiLU)"
                        ),
                    ))
                }
            },
        };
        let mut w = WeightFile::read(&weights_file(&sub)?)?;
        let weight = w.take("linear.weight", &[cfg.out_features, cfg.in_features])?;
        let bias = if cfg.bias {
            Some(w.take("linear.bias", &[cfg.out_features])?)
        } else {
            None
        };
        let residual = if !cfg.use_residual {
            None
        } else if cfg.in_features == cfg.out_features {
            Some(None)
        } else {
            Some(Some(w.take(
                "residual.weight",
                &[cfg.out_features, cfg.in_features],
            )?))
        };
        layers.push(LinearLayer {
            weight,
            bias,
            activation,
            residual,
        });
    }
    Ok((!layers.is_empty()).then_some(layers))
}
