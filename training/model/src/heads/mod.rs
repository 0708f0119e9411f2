//! Projection heads: the map from backbone token states to ColBERT vectors.
//!
//! Kinds: [`HeadKind::Identity`] (raw backbone states), [`HeadKind::Linear`]
//! (`d → k`, no bias by default, as in ColBERT), and the architectures of
//! [`blocks`]: [`HeadKind::Ffn`], [`HeadKind::Glu`], each optionally with a
//! residual path. A checkpoint's head is a stack of linear layers so that
//! several Dense modules (PyLate) load as they are. A head saved by Tessera
//! lives beside the backbone as `head.json` (its [`HeadSpec`]) +
//! `head.safetensors`; the spec alone says how to build it.

pub mod blocks;
pub mod start;

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{json_message, read_text};
use crate::error::{ModelError, Result};
use crate::weights::WeightFile;

/// What a head does to each token state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Passes backbone states through unchanged.
    Identity,
    /// A linear map `x · Wᵀ (+ b)`.
    Linear,
    /// A feed-forward stack `d → m → … → k` ([`blocks`]).
    Ffn,
    /// A gated linear unit `(act(x·W_g) ⊙ x·W_v)·W_o` ([`blocks`]).
    Glu,
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Identity => "identity",
            Self::Linear => "linear",
            Self::Ffn => "ffn",
            Self::Glu => "glu",
        })
    }
}

/// `head.json`: describes `head.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    pub kind: HeadKind,
    pub in_dim: i64,
    pub out_dim: i64,
    /// Biases on every linear layer.
    #[serde(default)]
    pub bias: bool,
    /// FFN: linear layers (default 2).
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// FFN and GLU: hidden width as a multiple of `in_dim` (default 2).
    #[serde(default = "default_width_factor")]
    pub width_factor: f64,
    /// FFN: between layers (default gelu); GLU: the gate (default silu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<blocks::Activation>,
    /// FFN: LayerNorm after each hidden activation.
    #[serde(default)]
    pub layer_norm: bool,
    /// Add a skip path: identity when `in_dim == out_dim`, else a learned
    /// bias-free linear shortcut.
    #[serde(default)]
    pub residual: bool,
}

fn default_depth() -> usize {
    2
}

fn default_width_factor() -> f64 {
    2.0
}

impl HeadSpec {
    /// A spec of `kind` with every option at its default.
    pub fn new(kind: HeadKind, in_dim: i64, out_dim: i64) -> Self {
        Self {
            kind,
            in_dim,
            out_dim,
            bias: false,
            depth: default_depth(),
            width_factor: default_width_factor(),
            activation: None,
            layer_norm: false,
            residual: false,
        }
    }
}

/// A head built from a spec with named parameters ([`blocks`]).
#[derive(Debug)]
pub struct BlockHead {
    pub spec: HeadSpec,
    pub params: HashMap<String, Tensor>,
}

/// One linear layer of a head.
#[derive(Debug)]
pub struct LinearLayer {
    /// `[out, in]`, as `torch.nn.Linear` stores it.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// Applied after the linear map (a PyLate `Dense` module's
    /// `activation_function`); `None` is the identity.
    pub activation: Option<blocks::Activation>,
    /// PyLate's `Dense(use_residual=True)`: the layer's input is added to
    /// its output — through this bias-free `[out, in]` map when the widths
    /// differ (`Some(Some(w))`), as is when they match (`Some(None)`).
    pub residual: Option<Option<Tensor>>,
}

impl LinearLayer {
    /// A plain linear layer: no activation, no residual.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            activation: None,
            residual: None,
        }
    }

    fn apply(&self, x: &Tensor) -> Tensor {
        let mut y = x.linear(&self.weight, self.bias.as_ref());
        if let Some(a) = self.activation {
            y = a.apply(&y);
        }
        match &self.residual {
            None => y,
            Some(None) => y + x,
            Some(Some(w)) => y + x.linear::<&Tensor>(w, None),
        }
    }

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
    /// An FFN, GLU or residual head (then `layers` is empty).
    block: Option<BlockHead>,
}

impl ProjectionHead {
    pub fn identity() -> Self {
        Self::default()
    }

    /// A head from a spec and its parameters, checking both.
    pub fn from_spec(
        spec: HeadSpec,
        params: HashMap<String, Tensor>,
        origin: &Path,
    ) -> Result<Self> {
        spec.validate().map_err(|m| ModelError::config(origin, m))?;
        Self::with_params(spec, params, origin)
    }

    /// [`ProjectionHead::from_spec`] for a spec already validated: checks
    /// that `params` holds every tensor it needs, at its shape (errors name
    /// `origin`).
    fn with_params(
        spec: HeadSpec,
        mut params: HashMap<String, Tensor>,
        origin: &Path,
    ) -> Result<Self> {
        let mut kept = HashMap::new();
        for (name, shape) in blocks::parameter_shapes(&spec) {
            let t = params
                .remove(&name)
                .ok_or_else(|| ModelError::MissingTensor {
                    path: origin.to_owned(),
                    name: name.clone(),
                })?;
            if t.size() != shape {
                return Err(ModelError::TensorShape {
                    path: origin.to_owned(),
                    name,
                    expected: shape,
                    actual: t.size(),
                });
            }
            kept.insert(name, t.to_kind(Kind::Float));
        }
        Ok(Self {
            layers: Vec::new(),
            block: Some(BlockHead { spec, params: kept }),
        })
    }

    /// The linear layers of a head loaded as a layer stack (plain linear,
    /// Stanford, PyLate Dense modules); empty for block heads.
    pub fn layers(&self) -> &[LinearLayer] {
        &self.layers
    }

    /// The spec and parameters of an FFN, GLU or residual head.
    pub fn block(&self) -> Option<&BlockHead> {
        self.block.as_ref()
    }

    /// A head from explicit layers, checking that their shapes chain.
    pub fn from_layers(layers: Vec<LinearLayer>, input_dim: i64, origin: &Path) -> Result<Self> {
        let mut dim = input_dim;
        for (i, l) in layers.iter().enumerate() {
            if l.in_dim() != dim {
                return Err(ModelError::config(
                    origin,
                    format!(
                        "head layer {i} expects {}-dim input but receives {dim}-dim vectors",
                        l.in_dim()
                    ),
                ));
            }
            if let Some(b) = &l.bias {
                if b.size() != [l.out_dim()] {
                    return Err(ModelError::config(
                        origin,
                        format!("head layer {i} bias has shape {:?}", b.size()),
                    ));
                }
            }
            dim = l.out_dim();
        }
        Ok(Self {
            layers,
            block: None,
        })
    }

    pub fn kind(&self) -> HeadKind {
        if let Some(b) = &self.block {
            return b.spec.kind;
        }
        if self.layers.is_empty() {
            HeadKind::Identity
        } else {
            HeadKind::Linear
        }
    }

    /// Output dimension for a given backbone width.
    pub fn output_dim(&self, input_dim: i64) -> i64 {
        if let Some(b) = &self.block {
            return b.spec.out_dim;
        }
        self.layers.last().map_or(input_dim, LinearLayer::out_dim)
    }

    pub fn to_device(self, device: Device) -> Self {
        let layers = self
            .layers
            .into_iter()
            .map(|l| LinearLayer {
                weight: l.weight.to_device(device),
                bias: l.bias.map(|b| b.to_device(device)),
                activation: l.activation,
                residual: l.residual.map(|r| r.map(|w| w.to_device(device))),
            })
            .collect();
        let block = self.block.map(|b| BlockHead {
            spec: b.spec,
            params: b
                .params
                .into_iter()
                .map(|(n, t)| (n, t.to_device(device)))
                .collect(),
        });
        Self { layers, block }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(b) = &self.block {
            return blocks::forward(&b.spec, &b.params, x);
        }
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = l.apply(&y);
        }
        y
    }

    /// Loads `head.json` + `head.safetensors` from `dir`.
    pub fn load_tessera(dir: &Path, input_dim: i64) -> Result<Self> {
        let spec_path = dir.join("head.json");
        let spec: HeadSpec = serde_json::from_str(&read_text(&spec_path)?)
            .map_err(|e| ModelError::config(&spec_path, json_message(&e)))?;
        if spec.in_dim != input_dim {
            return Err(ModelError::config(
                &spec_path,
                format!(
                    "field in_dim is {} but the backbone produces {input_dim}-dim states",
                    spec.in_dim
                ),
            ));
        }
        spec.validate()
            .map_err(|m| ModelError::config(&spec_path, m))?;
        if spec.is_block() {
            let w = WeightFile::read(&dir.join("head.safetensors"))?;
            return Self::with_params(spec, w.tensors, &w.path);
        }
        match spec.kind {
            HeadKind::Identity => {
                if spec.out_dim != spec.in_dim {
                    return Err(ModelError::config(
                        &spec_path,
                        "an identity head needs out_dim == in_dim",
                    ));
                }
                Ok(Self::identity())
            }
            HeadKind::Ffn | HeadKind::Glu => unreachable!("block heads load above"),
            HeadKind::Linear => {
                let mut w = WeightFile::read(&dir.join("head.safetensors"))?;
                let weight = w.take("linear.weight", &[spec.out_dim, spec.in_dim])?;
                let bias = if spec.bias {
                    Some(w.take("linear.bias", &[spec.out_dim])?)
                } else {
                    None
                };
                Self::from_layers(vec![LinearLayer::new(weight, bias)], input_dim, &spec_path)
            }
        }
    }

    /// Writes this head as `head.json` + `head.safetensors` into `dir`.
    pub fn save_tessera(&self, dir: &Path, input_dim: i64) -> Result<()> {
        if let Some(b) = &self.block {
            let shapes = blocks::parameter_shapes(&b.spec);
            let named: Vec<(&str, Tensor)> = shapes
                .iter()
                .map(|(n, _)| {
                    let t = b.params[n.as_str()]
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Float);
                    (n.as_str(), t)
                })
                .collect();
            if !named.is_empty() {
                Tensor::write_safetensors(&named, dir.join("head.safetensors"))?;
            }
            let json = serde_json::to_string_pretty(&b.spec).expect("HeadSpec serialises");
            let path = dir.join("head.json");
            return std::fs::write(&path, json).map_err(|e| ModelError::io(&path, e));
        }
        let (kind, bias) = match self.layers.as_slice() {
            [] => (HeadKind::Identity, false),
            [l] if l.activation.is_none() && l.residual.is_none() => {
                (HeadKind::Linear, l.bias.is_some())
            }
            _ => {
                return Err(ModelError::InvalidInput(
                    "a head of several Dense layers (or one with an activation or a residual) \
                     cannot be saved as head.json"
                        .into(),
                ))
            }
        };
        let spec = HeadSpec {
            bias,
            ..HeadSpec::new(kind, input_dim, self.output_dim(input_dim))
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
        std::fs::write(&path, json).map_err(|e| ModelError::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_head_round_trips_and_projects() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 2.0]).view([2, 3]);
        let head = ProjectionHead::from_layers(vec![LinearLayer::new(w, None)], 3, Path::new("x"))
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
    fn block_heads_round_trip_through_head_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = HeadSpec::new(HeadKind::Glu, 6, 4);
        spec.residual = true;
        spec.bias = true;
        let params = blocks::init(&spec, Device::Cpu, 3);
        let head = ProjectionHead::from_spec(spec.clone(), params, Path::new("x")).unwrap();
        head.save_tessera(dir.path(), 6).unwrap();
        let loaded = ProjectionHead::load_tessera(dir.path(), 6).unwrap();
        assert_eq!((loaded.kind(), loaded.output_dim(6)), (HeadKind::Glu, 4));
        assert_eq!(loaded.block().unwrap().spec, spec);
        let x = Tensor::randn([2, 3, 6], (Kind::Float, Device::Cpu));
        assert!(head
            .forward(&x)
            .allclose(&loaded.forward(&x), 1e-6, 1e-6, false));
        // A missing tensor names the file and the tensor.
        let mut broken = blocks::init(&spec, Device::Cpu, 3);
        broken.remove("glu.value.weight");
        let e = ProjectionHead::from_spec(spec, broken, Path::new("h.safetensors")).unwrap_err();
        assert!(e.to_string().contains("glu.value.weight"), "{e}");
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
