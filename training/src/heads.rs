//! Projection heads: the map from backbone token states to ColBERT vectors.
//!
//! This issue ships two kinds: [`HeadKind::Identity`] (raw backbone states)
//! and [`HeadKind::Linear`] (`d → k`, no bias by default, as in ColBERT). A
//! head is a stack of such layers so that checkpoints with several Dense
//! modules (PyLate) load as they are. A head saved by Tessera lives beside the
//! backbone as `head.json` + `head.safetensors`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{json_message, read_text};
use crate::error::{Result, TrainingError};
use crate::weights::WeightFile;

/// What a head does to each token state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Passes backbone states through unchanged.
    Identity,
    /// A linear map `x · Wᵀ (+ b)`.
    Linear,
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Identity => "identity",
            Self::Linear => "linear",
        })
    }
}

/// `head.json`: describes `head.safetensors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    pub kind: HeadKind,
    pub in_dim: i64,
    pub out_dim: i64,
    #[serde(default)]
    pub bias: bool,
}

/// One linear layer of a head.
#[derive(Debug)]
pub struct LinearLayer {
    /// `[out, in]`, as `torch.nn.Linear` stores it.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LinearLayer {
    fn out_dim(&self) -> i64 {
        self.weight.size()[0]
    }
    fn in_dim(&self) -> i64 {
        self.weight.size()[1]
    }
}

/// A projection head: zero layers is the identity.
#[derive(Debug, Default)]
pub struct ProjectionHead {
    layers: Vec<LinearLayer>,
}

impl ProjectionHead {
    pub fn identity() -> Self {
        Self::default()
    }

    /// A head from explicit layers, checking that their shapes chain.
    pub fn from_layers(layers: Vec<LinearLayer>, input_dim: i64, origin: &Path) -> Result<Self> {
        let mut dim = input_dim;
        for (i, l) in layers.iter().enumerate() {
            if l.in_dim() != dim {
                return Err(TrainingError::config(
                    origin,
                    format!(
                        "head layer {i} expects {}-dim input but receives {dim}-dim vectors",
                        l.in_dim()
                    ),
                ));
            }
            if let Some(b) = &l.bias {
                if b.size() != [l.out_dim()] {
                    return Err(TrainingError::config(
                        origin,
                        format!("head layer {i} bias has shape {:?}", b.size()),
                    ));
                }
            }
            dim = l.out_dim();
        }
        Ok(Self { layers })
    }

    pub fn kind(&self) -> HeadKind {
        if self.layers.is_empty() {
            HeadKind::Identity
        } else {
            HeadKind::Linear
        }
    }

    /// Output dimension for a given backbone width.
    pub fn output_dim(&self, input_dim: i64) -> i64 {
        self.layers.last().map_or(input_dim, LinearLayer::out_dim)
    }

    pub fn to_device(self, device: Device) -> Self {
        let layers = self
            .layers
            .into_iter()
            .map(|l| LinearLayer {
                weight: l.weight.to_device(device),
                bias: l.bias.map(|b| b.to_device(device)),
            })
            .collect();
        Self { layers }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = y.linear(&l.weight, l.bias.as_ref());
        }
        y
    }

    /// Loads `head.json` + `head.safetensors` from `dir`.
    pub fn load_tessera(dir: &Path, input_dim: i64) -> Result<Self> {
        let spec_path = dir.join("head.json");
        let spec: HeadSpec = serde_json::from_str(&read_text(&spec_path)?)
            .map_err(|e| TrainingError::config(&spec_path, json_message(&e)))?;
        if spec.in_dim != input_dim {
            return Err(TrainingError::config(
                &spec_path,
                format!(
                    "field in_dim is {} but the backbone produces {input_dim}-dim states",
                    spec.in_dim
                ),
            ));
        }
        match spec.kind {
            HeadKind::Identity => {
                if spec.out_dim != spec.in_dim {
                    return Err(TrainingError::config(
                        &spec_path,
                        "an identity head needs out_dim == in_dim",
                    ));
                }
                Ok(Self::identity())
            }
            HeadKind::Linear => {
                let mut w = WeightFile::read(&dir.join("head.safetensors"))?;
                let weight = w.take("linear.weight", &[spec.out_dim, spec.in_dim])?;
                let bias = if spec.bias {
                    Some(w.take("linear.bias", &[spec.out_dim])?)
                } else {
                    None
                };
                Self::from_layers(vec![LinearLayer { weight, bias }], input_dim, &spec_path)
            }
        }
    }

    /// Writes this head as `head.json` + `head.safetensors` into `dir`.
    pub fn save_tessera(&self, dir: &Path, input_dim: i64) -> Result<()> {
        let (kind, bias) = match self.layers.as_slice() {
            [] => (HeadKind::Identity, false),
            [l] => (HeadKind::Linear, l.bias.is_some()),
            _ => {
                return Err(TrainingError::InvalidInput(
                    "a head of several layers cannot be saved as head.json yet".into(),
                ))
            }
        };
        let spec = HeadSpec {
            kind,
            in_dim: input_dim,
            out_dim: self.output_dim(input_dim),
            bias,
        };
        if let [l] = self.layers.as_slice() {
            let weight = l.weight.to_device(Device::Cpu).to_kind(Kind::Float);
            let mut named = vec![("linear.weight", weight)];
            if let Some(b) = &l.bias {
                named.push(("linear.bias", b.to_device(Device::Cpu).to_kind(Kind::Float)));
            }
            Tensor::write_safetensors(&named, dir.join("head.safetensors"))?;
        }
        let json = serde_json::to_string_pretty(&spec).expect("HeadSpec serialises");
        let path = dir.join("head.json");
        std::fs::write(&path, json).map_err(|e| TrainingError::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_head_round_trips_and_projects() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 2.0]).view([2, 3]);
        let head = ProjectionHead::from_layers(
            vec![LinearLayer {
                weight: w,
                bias: None,
            }],
            3,
            Path::new("x"),
        )
        .unwrap();
        head.save_tessera(dir.path(), 3).unwrap();
        let loaded = ProjectionHead::load_tessera(dir.path(), 3).unwrap();
        assert_eq!(loaded.kind(), HeadKind::Linear);
        assert_eq!(loaded.output_dim(3), 2);
        let x = Tensor::from_slice(&[3.0f32, 5.0, 7.0]).view([1, 3]);
        let y: Vec<f32> = loaded.forward(&x).view([-1]).try_into().unwrap();
        assert_eq!(y, vec![3.0, 14.0]);
    }

    #[test]
    fn head_dim_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("head.json"),
            r#"{"kind": "linear", "in_dim": 8, "out_dim": 4}"#,
        )
        .unwrap();
        let e = ProjectionHead::load_tessera(dir.path(), 16).unwrap_err();
        assert!(
            e.to_string().contains("head.json: field in_dim is 8"),
            "{e}"
        );
        let e = ProjectionHead::load_tessera(dir.path(), 8).unwrap_err();
        assert!(e.to_string().contains("head.safetensors"), "{e}");
    }
}
