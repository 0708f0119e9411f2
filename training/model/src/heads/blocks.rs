//! The trainable head architectures of "Simple Projection Variants Improve
//! ColBERT Performance": a deep FFN (`d → m → … → k`, `m = ρ·d`), a gated
//! linear unit (`(act(x·W_g) ⊙ x·W_v)·W_o`, SwiGLU or GeGLU), and either
//! with a residual path (identity when the widths match, a bias-free linear
//! shortcut otherwise, as PyLate's `Dense(use_residual=True)`); a linear
//! head may take the residual path too.
//!
//! A head is its [`HeadSpec`] (`head.json`) plus named parameters
//! (`head.safetensors`); [`parameter_shapes`] lists the names and shapes a
//! spec needs, [`forward`] applies a spec with any map of those tensors
//! (loaded for inference, or a trainer's variables), [`init`] draws fresh
//! ones the way `torch.nn.Linear` does.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{HeadKind, HeadSpec};

/// The non-linearity of an FFN or the gate of a GLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Gelu,
    Relu,
    Silu,
}

impl Activation {
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

impl HeadSpec {
    /// The activation in effect: the spec's, else GELU for an FFN and SiLU
    /// (SwiGLU) for a GLU.
    pub fn activation(&self) -> Activation {
        self.activation.unwrap_or(match self.kind {
            HeadKind::Glu => Activation::Silu,
            _ => Activation::Gelu,
        })
    }

    /// Hidden width `m = round(width_factor · in_dim)`.
    pub fn hidden_dim(&self) -> i64 {
        (self.width_factor * self.in_dim as f64).round() as i64
    }

    /// Whether this spec needs the general (block) implementation rather
    /// than a plain stack of linear layers.
    pub fn is_block(&self) -> bool {
        matches!(self.kind, HeadKind::Ffn | HeadKind::Glu) || self.residual
    }

    /// Checks the numbers of the spec; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.in_dim < 1 {
            return Err(format!(
                "field in_dim must be at least 1, not {}",
                self.in_dim
            ));
        }
        if self.out_dim < 1 {
            return Err(format!(
                "field out_dim must be at least 1, not {}",
                self.out_dim
            ));
        }
        match self.kind {
            HeadKind::Identity if self.residual => {
                return Err(
                    "field residual: an identity head has no branch to add a skip path to".into(),
                )
            }
            HeadKind::Identity if self.out_dim != self.in_dim => {
                return Err("an identity head needs out_dim == in_dim".into())
            }
            HeadKind::Ffn | HeadKind::Glu => {
                if !(self.width_factor.is_finite() && self.width_factor > 0.0)
                    || self.hidden_dim() < 1
                {
                    return Err(format!(
                        "field width_factor {} gives no hidden units for in_dim {}",
                        self.width_factor, self.in_dim
                    ));
                }
                if self.kind == HeadKind::Ffn && self.depth < 1 {
                    return Err("field depth must be at least 1".into());
                }
            }
            _ => {}
        }
        if self.layer_norm && self.kind != HeadKind::Ffn {
            return Err("field layer_norm applies to ffn heads only".into());
        }
        Ok(())
    }
}

/// Names and shapes of the parameters `spec` needs, in a fixed order.
pub fn parameter_shapes(spec: &HeadSpec) -> Vec<(String, Vec<i64>)> {
    let (d, k, m) = (spec.in_dim, spec.out_dim, spec.hidden_dim());
    let mut out = Vec::new();
    let linear = |name: &str, o: i64, i: i64, out: &mut Vec<(String, Vec<i64>)>| {
        out.push((format!("{name}.weight"), vec![o, i]));
        if spec.bias {
            out.push((format!("{name}.bias"), vec![o]));
        }
    };
    match spec.kind {
        HeadKind::Identity => {}
        HeadKind::Linear => linear("linear", k, d, &mut out),
        HeadKind::Ffn => {
            let mut i_dim = d;
            for i in 0..spec.depth {
                let o_dim = if i + 1 == spec.depth { k } else { m };
                linear(&format!("ffn.{i}"), o_dim, i_dim, &mut out);
                if spec.layer_norm && i + 1 < spec.depth {
                    out.push((format!("ffn.{i}.norm.weight"), vec![m]));
                    out.push((format!("ffn.{i}.norm.bias"), vec![m]));
                }
                i_dim = o_dim;
            }
        }
        HeadKind::Glu => {
            linear("glu.gate", m, d, &mut out);
            linear("glu.value", m, d, &mut out);
            linear("glu.out", k, m, &mut out);
        }
    }
    if spec.residual && d != k {
        out.push(("skip.weight".into(), vec![k, d]));
    }
    out
}

fn get<'a>(p: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    p.get(name)
        .unwrap_or_else(|| panic!("head parameter {name} missing (checked at load)"))
}

fn lin(p: &HashMap<String, Tensor>, name: &str, x: &Tensor) -> Tensor {
    x.linear(
        get(p, &format!("{name}.weight")),
        p.get(&format!("{name}.bias")),
    )
}

/// How many numbers the head of `spec` learns.
pub fn parameter_count(spec: &HeadSpec) -> i64 {
    parameter_shapes(spec)
        .iter()
        .map(|(_, s)| s.iter().product::<i64>())
        .sum()
}

/// Applies `spec` with parameters `p` (every name of [`parameter_shapes`])
/// to `x` (`[…, in_dim]`).
pub fn forward(spec: &HeadSpec, p: &HashMap<String, Tensor>, x: &Tensor) -> Tensor {
    let act = spec.activation();
    let y = match spec.kind {
        HeadKind::Identity => x.shallow_clone(),
        HeadKind::Linear => lin(p, "linear", x),
        HeadKind::Ffn => {
            let mut h = x.shallow_clone();
            for i in 0..spec.depth {
                h = lin(p, &format!("ffn.{i}"), &h);
                if i + 1 < spec.depth {
                    h = act.apply(&h);
                    if spec.layer_norm {
                        h = h.layer_norm(
                            [spec.hidden_dim()],
                            Some(get(p, &format!("ffn.{i}.norm.weight"))),
                            Some(get(p, &format!("ffn.{i}.norm.bias"))),
                            1e-5,
                            false,
                        );
                    }
                }
            }
            h
        }
        HeadKind::Glu => {
            let g = act.apply(&lin(p, "glu.gate", x));
            lin(p, "glu.out", &(g * lin(p, "glu.value", x)))
        }
    };
    if !spec.residual {
        return y;
    }
    match p.get("skip.weight") {
        Some(s) => y + x.linear::<&Tensor>(s, None),
        None => y + x,
    }
}

/// Fresh parameters for `spec` on `device`, drawn from the distribution
/// `torch.nn.Linear` initialises with (uniform in ±1/√fan_in for weights
/// and biases), LayerNorm at weight 1, bias 0. The values come from a
/// private RNG seeded by `seed`, not libtorch's global generator, so the
/// same seed gives the same tensors whatever else the process draws
/// concurrently.
pub fn init(spec: &HeadSpec, device: Device, seed: i64) -> HashMap<String, Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed as u64);
    let shapes = parameter_shapes(spec);
    // A weight's fan-in is its second dim; a bias takes its weight's.
    let fan_in = |name: &str| {
        let weight = name.replace(".bias", ".weight");
        shapes
            .iter()
            .find(|(n, _)| *n == weight)
            .map_or(spec.in_dim, |(_, s)| s[1])
    };
    shapes
        .iter()
        .map(|(name, shape)| {
            let t = if name.ends_with(".norm.weight") {
                Tensor::ones(shape.as_slice(), (Kind::Float, device))
            } else if name.ends_with(".norm.bias") {
                Tensor::zeros(shape.as_slice(), (Kind::Float, device))
            } else {
                let bound = 1.0 / (fan_in(name).max(1) as f32).sqrt();
                let n: i64 = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
                Tensor::from_slice(&v)
                    .view(shape.as_slice())
                    .to_device(device)
            };
            (name.clone(), t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> HeadSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn shapes_follow_the_architectures() {
        let ffn = spec(
            r#"{"kind": "ffn", "in_dim": 8, "out_dim": 4, "depth": 3, "width_factor": 1.5, "layer_norm": true}"#,
        );
        ffn.validate().unwrap();
        let names: Vec<_> = parameter_shapes(&ffn)
            .into_iter()
            .map(|(n, s)| format!("{n}{s:?}"))
            .collect();
        assert_eq!(
            names,
            [
                "ffn.0.weight[12, 8]",
                "ffn.0.norm.weight[12]",
                "ffn.0.norm.bias[12]",
                "ffn.1.weight[12, 12]",
                "ffn.1.norm.weight[12]",
                "ffn.1.norm.bias[12]",
                "ffn.2.weight[4, 12]"
            ]
        );
        let glu = spec(
            r#"{"kind": "glu", "in_dim": 8, "out_dim": 8, "width_factor": 2, "residual": true, "bias": true}"#,
        );
        let names: Vec<_> = parameter_shapes(&glu).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "glu.gate.weight",
                "glu.gate.bias",
                "glu.value.weight",
                "glu.value.bias",
                "glu.out.weight",
                "glu.out.bias"
            ]
        );
        assert_eq!(glu.activation(), Activation::Silu);
        let lin = spec(r#"{"kind": "linear", "in_dim": 8, "out_dim": 4, "residual": true}"#);
        assert_eq!(parameter_shapes(&lin).last().unwrap().0, "skip.weight");
    }

    #[test]
    fn forward_computes_each_architecture() {
        let x = Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]);
        let t = |v: &[f32], s: &[i64]| Tensor::from_slice(v).view(s);
        // FFN depth 2, ReLU: relu(x·W0ᵀ)·W1ᵀ.
        let ffn = spec(
            r#"{"kind": "ffn", "in_dim": 2, "out_dim": 1, "width_factor": 1, "activation": "relu"}"#,
        );
        let p: HashMap<String, Tensor> = [
            ("ffn.0.weight".to_owned(), t(&[1.0, 0.0, 0.0, 1.0], &[2, 2])),
            ("ffn.1.weight".to_owned(), t(&[3.0, 5.0], &[1, 2])),
        ]
        .into();
        let y: Vec<f32> = forward(&ffn, &p, &x).view([-1]).try_into().unwrap();
        assert_eq!(y, [3.0]); // relu([1, -2]) = [1, 0]; 3·1 + 5·0
                              // GLU with ReLU gate plus an identity skip: relu(g)⊙v·Wo + x.
        let glu = spec(
            r#"{"kind": "glu", "in_dim": 2, "out_dim": 2, "width_factor": 1, "activation": "relu", "residual": true}"#,
        );
        let p: HashMap<String, Tensor> = [
            (
                "glu.gate.weight".to_owned(),
                t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]),
            ),
            (
                "glu.value.weight".to_owned(),
                t(&[2.0, 0.0, 0.0, 2.0], &[2, 2]),
            ),
            (
                "glu.out.weight".to_owned(),
                t(&[1.0, 1.0, 0.0, 1.0], &[2, 2]),
            ),
        ]
        .into();
        let y: Vec<f32> = forward(&glu, &p, &x).view([-1]).try_into().unwrap();
        // gate relu([1, -2]) = [1, 0]; value [2, -4]; product [2, 0];
        // out [2 + 0, 0] = [2, 0]; plus x: [3, -2].
        assert_eq!(y, [3.0, -2.0]);
        // A width change takes the learned shortcut.
        let lin = spec(r#"{"kind": "linear", "in_dim": 2, "out_dim": 1, "residual": true}"#);
        let p: HashMap<String, Tensor> = [
            ("linear.weight".to_owned(), t(&[1.0, 1.0], &[1, 2])),
            ("skip.weight".to_owned(), t(&[10.0, 0.0], &[1, 2])),
        ]
        .into();
        let y: Vec<f32> = forward(&lin, &p, &x).view([-1]).try_into().unwrap();
        assert_eq!(y, [-1.0 + 10.0]);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        // The trainer drives this same forward with its variables.
        for json in [
            r#"{"kind": "ffn", "in_dim": 6, "out_dim": 4, "depth": 3, "layer_norm": true, "bias": true, "residual": true}"#,
            r#"{"kind": "glu", "in_dim": 6, "out_dim": 6, "activation": "gelu", "residual": true}"#,
            r#"{"kind": "linear", "in_dim": 6, "out_dim": 3, "residual": true}"#,
        ] {
            let s = spec(json);
            let p: HashMap<String, Tensor> = init(&s, Device::Cpu, 1)
                .into_iter()
                .map(|(n, t)| (n, t.set_requires_grad(true)))
                .collect();
            let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
            forward(&s, &p, &x)
                .pow_tensor_scalar(2)
                .sum(Kind::Float)
                .backward();
            for (name, t) in &p {
                let g = t.grad();
                assert!(
                    g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                    "{json}: no gradient for {name}"
                );
            }
        }
    }

    #[test]
    fn init_is_seeded_and_bounded_and_bad_specs_name_the_field() {
        let s = spec(r#"{"kind": "ffn", "in_dim": 16, "out_dim": 8}"#);
        let a = init(&s, Device::Cpu, 7);
        let b = init(&s, Device::Cpu, 7);
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name} differs for the same seed");
        }
        let w0 = &a["ffn.0.weight"];
        assert_eq!(w0.size(), [32, 16]);
        assert!(w0.abs().max().double_value(&[]) <= 0.25 + 1e-6);
        let x = Tensor::randn([3, 5, 16], (Kind::Float, Device::Cpu));
        assert_eq!(forward(&s, &a, &x).size(), [3, 5, 8]);
        for (json, needle) in [
            (
                r#"{"kind": "ffn", "in_dim": 16, "out_dim": 0}"#,
                "out_dim must be at least 1",
            ),
            (
                r#"{"kind": "ffn", "in_dim": 16, "out_dim": 8, "depth": 0}"#,
                "depth must be at least 1",
            ),
            (
                r#"{"kind": "glu", "in_dim": 16, "out_dim": 8, "width_factor": 0.01}"#,
                "width_factor",
            ),
            (
                r#"{"kind": "identity", "in_dim": 16, "out_dim": 16, "residual": true}"#,
                "field residual",
            ),
            (
                r#"{"kind": "glu", "in_dim": 16, "out_dim": 8, "layer_norm": true}"#,
                "layer_norm applies to ffn",
            ),
        ] {
            let e = spec(json).validate().unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let e = serde_json::from_str::<HeadSpec>(r#"{"kind": "mlp", "in_dim": 1, "out_dim": 1}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant `mlp`"), "{e}");
        let e = serde_json::from_str::<HeadSpec>(
            r#"{"kind": "ffn", "in_dim": 1, "out_dim": 1, "activation": "tanh"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `tanh`"), "{e}");
    }
}
