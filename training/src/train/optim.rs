//! AdamW with decoupled weight decay, a warm-up + decay learning-rate
//! schedule and global-norm gradient clipping, over plain tensors (the
//! backbone's variables and a head's named parameters alike). Its state
//! (moments, step) saves and loads with a checkpoint, so `--resume`
//! continues bit-exactly.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Linear,
    Cosine,
    Constant,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            "constant" => Ok(Self::Constant),
            _ => Err(format!(
                "unknown schedule {s:?} (linear, cosine or constant)"
            )),
        }
    }
}

/// The learning-rate multiplier at `step` (0-based) of `total`: linear
/// warm-up over `warmup` steps, then the decay towards 0 at `total`.
pub fn lr_factor(step: usize, warmup: usize, total: usize, decay: Decay) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let p = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    match decay {
        Decay::Constant => 1.0,
        Decay::Linear => 1.0 - p,
        Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    }
}

/// One group of parameters sharing a learning rate.
pub struct Group {
    pub params: Vec<(String, Tensor)>,
    pub lr: f64,
    pub weight_decay: f64,
}

/// AdamW (Loshchilov & Hutter), as `torch.optim.AdamW` computes it.
pub struct AdamW {
    pub groups: Vec<Group>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: i64,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl AdamW {
    pub fn new(groups: Vec<Group>) -> Self {
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for g in &groups {
            for (n, p) in &g.params {
                m.insert(n.clone(), p.zeros_like());
                v.insert(n.clone(), p.zeros_like());
            }
        }
        Self {
            groups,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m,
            v,
        }
    }

    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            for (_, p) in &mut g.params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.detach_().zero_();
                }
            }
        }
    }

    /// Scales gradients so their global L2 norm is at most `max`; returns
    /// the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let mut sq = 0.0;
        for g in &self.groups {
            for (_, p) in &g.params {
                let grad = p.grad();
                if grad.defined() {
                    sq += f64::try_from(grad.square().sum(tch::Kind::Double)).unwrap_or(0.0);
                }
            }
        }
        let norm = sq.sqrt();
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for g in &self.groups {
                for (_, p) in &g.params {
                    let mut grad = p.grad();
                    if grad.defined() {
                        let _ = grad.g_mul_scalar_(scale);
                    }
                }
            }
        }
        norm
    }

    /// One update with every group's rate scaled by `factor`.
    pub fn step(&mut self, factor: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for g in &mut self.groups {
            let lr = g.lr * factor;
            for (name, p) in &mut g.params {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let m = self.m.get_mut(name).expect("moment per parameter");
                let v = self.v.get_mut(name).expect("moment per parameter");
                let _ = m
                    .g_mul_scalar_(self.beta1)
                    .g_add_(&(&grad * (1.0 - self.beta1)));
                let _ = v
                    .g_mul_scalar_(self.beta2)
                    .g_add_(&(grad.square() * (1.0 - self.beta2)));
                if g.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * g.weight_decay);
                }
                let denom = (&*v / bc2).sqrt() + self.eps;
                let update = (&*m / bc1) / denom * lr;
                let _ = p.g_sub_(&update);
            }
        }
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for (n, t) in &self.m {
            out.push((format!("m.{n}"), t.shallow_clone()));
        }
        for (n, t) in &self.v {
            out.push((format!("v.{n}"), t.shallow_clone()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores moments saved by [`AdamW::state`]; `Err` names a missing one.
    pub fn load_state(
        &mut self,
        mut saved: HashMap<String, Tensor>,
        step: i64,
    ) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (prefix, map) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (n, t) in map.iter_mut() {
                let key = format!("{prefix}.{n}");
                let s = saved
                    .remove(&key)
                    .ok_or_else(|| format!("missing optimiser tensor {key}"))?;
                if s.size() != t.size() {
                    return Err(format!(
                        "optimiser tensor {key} has shape {:?}, expected {:?}",
                        s.size(),
                        t.size()
                    ));
                }
                t.copy_(&s.to_device(t.device()));
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_factor(0, 4, 10, Decay::Linear) - 0.25).abs() < 1e-12);
        assert!((lr_factor(3, 4, 10, Decay::Linear) - 1.0).abs() < 1e-12);
        assert!((lr_factor(7, 4, 10, Decay::Linear) - 0.5).abs() < 1e-12);
        assert!((lr_factor(7, 4, 10, Decay::Cosine) - 0.5).abs() < 1e-12);
        assert!(lr_factor(10, 4, 10, Decay::Cosine).abs() < 1e-12);
        assert_eq!(lr_factor(9, 0, 10, Decay::Constant), 1.0);
    }

    #[test]
    fn adamw_matches_the_closed_form_first_step_and_minimises() {
        // First Adam step moves each coordinate by lr·sign(grad) (bias-corrected).
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![Group {
            params: vec![("p".into(), p.shallow_clone())],
            lr: 0.1,
            weight_decay: 0.0,
        }]);
        (&p * &p).sum(Kind::Float).backward();
        opt.step(1.0);
        let got: Vec<f32> = p.detach().try_into().unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-5 && (got[1] + 1.9).abs() < 1e-5,
            "{got:?}"
        );
        for _ in 0..300 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.clip_grad_norm(1.0);
            opt.step(1.0);
        }
        let got: Vec<f32> = p.detach().try_into().unwrap();
        assert!(got.iter().all(|x| x.abs() < 0.05), "{got:?}");
        // State round-trips.
        let saved: HashMap<String, Tensor> = opt.state().into_iter().collect();
        let mut other = AdamW::new(vec![Group {
            params: vec![("p".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))],
            lr: 0.1,
            weight_decay: 0.0,
        }]);
        other.load_state(saved, opt.step).unwrap();
        assert!(other.m["p"].equal(&opt.m["p"]));
        assert!(other
            .load_state(HashMap::new(), 1)
            .unwrap_err()
            .contains("m.p"));
    }
}
