//! A general starting point for a head, and the weight-space path back to it.
//!
//! A head trained on a few collections specialises: it gains on them and
//! can lose on text it never saw. Robust fine-tuning keeps a *general*
//! head in view — one that only compresses what the backbone already
//! knows, learnt from no labels:
//!
//! * [`principal_directions`]: the top-`k` directions of the backbone's
//!   token states (uncentred PCA: the eigenvectors of `E[x xᵀ]`, the best
//!   rank-`k` linear map of the states in the least-squares sense, with no
//!   bias to learn).
//! * [`start_at_projection`]: a head that *is* that projection at step 0 —
//!   a linear head's weight, or the learned shortcut of a residual head
//!   whose branch starts at zero — so training moves away from the general
//!   head and every point on the way has the same shape.
//! * [`interpolate`]: WiSE-FT (Wortsman et al., 2022): the weights
//!   `(1 − α)·θ₀ + α·θ₁` of two heads of one spec — α = 0 the starting
//!   head, α = 1 the fine-tuned one.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::{HeadKind, HeadSpec};

/// The `k` leading eigenvectors of `second_moment` (`[d, d]`, the sum or
/// mean of `x xᵀ` over token states), as the rows of a `[k, d]` f32
/// tensor, by decreasing eigenvalue; each row's largest entry is positive
/// (a fixed sign, so the same states give the same head).
pub fn principal_directions(second_moment: &Tensor, k: i64) -> Result<Tensor, String> {
    let size = second_moment.size();
    if size.len() != 2 || size[0] != size[1] {
        return Err(format!("the second moment must be square, not {size:?}"));
    }
    if !(1..=size[0]).contains(&k) {
        return Err(format!(
            "{k} directions asked of {}-dim states (1 to {})",
            size[0], size[0]
        ));
    }
    let _ng = tch::no_grad_guard();
    let m = second_moment.to_kind(Kind::Double);
    let m = (&m + m.transpose(0, 1)) * 0.5;
    let (_values, vectors) = m.linalg_eigh("L");
    // Ascending → the last k columns, largest first, as rows.
    let top = vectors.flip([1]).narrow(1, 0, k).transpose(0, 1);
    let idx = top.abs().argmax(1, true);
    let lead = top.gather(1, &idx, false);
    let sign = lead.sign().where_scalarother(&lead.ne(0.0), 1.0);
    Ok((top * sign).to_kind(Kind::Float).contiguous())
}

/// Sets fresh parameters `head` of `spec` so that the head maps a state
/// `x` to `p · x` (`p`: `[out_dim, in_dim]`): a linear head's weight (bias
/// zero), or — for an FFN or GLU head with a learned shortcut (`residual`
/// and `out_dim ≠ in_dim`) — the shortcut, with the branch's output layer
/// zeroed (its other layers keep their random start, so gradients reach
/// them from the first step). Other specs cannot start at a projection.
pub fn start_at_projection(
    spec: &HeadSpec,
    head: &mut HashMap<String, Tensor>,
    p: &Tensor,
) -> Result<(), String> {
    let want = [spec.out_dim, spec.in_dim];
    if p.size() != want {
        return Err(format!(
            "the projection is {:?}, the head needs {want:?}",
            p.size()
        ));
    }
    let _ng = tch::no_grad_guard();
    let device = head.values().next().map(|t| t.device());
    let p = match device {
        Some(d) => p.to_device(d),
        None => p.shallow_clone(),
    };
    let zero = |head: &mut HashMap<String, Tensor>, name: &str| {
        for n in [format!("{name}.weight"), format!("{name}.bias")] {
            if let Some(t) = head.get_mut(&n) {
                *t = t.zeros_like();
            }
        }
    };
    match spec.kind {
        HeadKind::Linear if !spec.residual => {
            zero(head, "linear");
            head.insert("linear.weight".into(), p.copy());
            Ok(())
        }
        kind if spec.residual && spec.in_dim != spec.out_dim && kind != HeadKind::Identity => {
            head.insert("skip.weight".into(), p.copy());
            let last = match kind {
                HeadKind::Linear => "linear".to_owned(),
                HeadKind::Glu => "glu.out".to_owned(),
                HeadKind::Ffn => format!("ffn.{}", spec.depth.saturating_sub(1)),
                HeadKind::Identity => unreachable!("excluded by the guard"),
            };
            zero(head, &last);
            Ok(())
        }
        _ => Err(format!(
            "a {} head{} cannot start at a projection: use --head linear, or --residual \
             with a --dim below the backbone's width",
            spec.kind,
            if spec.residual {
                " with an identity skip"
            } else {
                ""
            }
        )),
    }
}

/// WiSE-FT: `(1 − alpha)·from + alpha·to`, tensor by tensor. Both heads
/// must hold the same names and shapes (one spec).
pub fn interpolate(
    from: &HashMap<String, Tensor>,
    to: &HashMap<String, Tensor>,
    alpha: f64,
) -> Result<HashMap<String, Tensor>, String> {
    if !alpha.is_finite() {
        return Err(format!("alpha must be a number, not {alpha}"));
    }
    if from.len() != to.len() {
        return Err(format!(
            "the heads hold {} and {} tensors: not one spec",
            from.len(),
            to.len()
        ));
    }
    let _ng = tch::no_grad_guard();
    let mut out = HashMap::with_capacity(from.len());
    for (name, a) in from {
        let b = to
            .get(name)
            .ok_or_else(|| format!("tensor {name} is in the first head only"))?;
        if a.size() != b.size() {
            return Err(format!(
                "tensor {name} is {:?} in one head and {:?} in the other",
                a.size(),
                b.size()
            ));
        }
        let a = a.to_kind(Kind::Float);
        let b = b.to_kind(Kind::Float).to_device(a.device());
        out.insert(name.clone(), &a * (1.0 - alpha) + b * alpha);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::blocks;
    use tch::Device;

    fn spec(kind: HeadKind, residual: bool, d: i64, k: i64) -> HeadSpec {
        let mut s = HeadSpec::new(kind, d, k);
        s.residual = residual;
        s
    }

    #[test]
    fn principal_directions_are_the_states_leading_axes() {
        // States along e0 (large) and e2 (smaller): the second moment's
        // leading directions are ±e0 then ±e2, signed positive.
        let x = Tensor::from_slice(&[
            -3.0f32, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0,
        ])
        .view([4, 4]);
        let m = x.transpose(0, 1).matmul(&x);
        let p = principal_directions(&m, 2).unwrap();
        let v: Vec<f32> = Vec::try_from(p.view([-1])).unwrap();
        let want = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{v:?}");
        }
        assert!(principal_directions(&m, 5).is_err());
        assert!(
            principal_directions(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)), 1).is_err()
        );
    }

    #[test]
    fn a_started_head_is_the_projection() {
        let p = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
        let want = x.matmul(&p.transpose(0, 1));
        for s in [
            spec(HeadKind::Linear, false, 6, 3),
            spec(HeadKind::Glu, true, 6, 3),
            spec(HeadKind::Ffn, true, 6, 3),
            spec(HeadKind::Linear, true, 6, 3),
        ] {
            let mut head = blocks::init(&s, Device::Cpu, 7);
            start_at_projection(&s, &mut head, &p).unwrap();
            let y = blocks::forward(&s, &head, &x);
            let err = f64::try_from((y - &want).abs().max()).unwrap();
            assert!(err < 1e-5, "{:?}: {err}", s.kind);
        }
        // No learned shortcut to put it in.
        let glu = spec(HeadKind::Glu, false, 6, 3);
        let mut head = blocks::init(&glu, Device::Cpu, 7);
        assert!(start_at_projection(&glu, &mut head, &p).is_err());
        let lin = spec(HeadKind::Linear, false, 6, 3);
        let mut head = blocks::init(&lin, Device::Cpu, 7);
        assert!(start_at_projection(&lin, &mut head, &p.transpose(0, 1)).is_err());
    }

    #[test]
    fn interpolation_runs_from_one_head_to_the_other() {
        let s = spec(HeadKind::Glu, true, 6, 3);
        let a = blocks::init(&s, Device::Cpu, 1);
        let b = blocks::init(&s, Device::Cpu, 2);
        for (alpha, want) in [(0.0, &a), (1.0, &b)] {
            let m = interpolate(&a, &b, alpha).unwrap();
            for (n, t) in &m {
                assert!(t.allclose(&want[n], 1e-6, 1e-6, false), "{n} at {alpha}");
            }
        }
        let mid = interpolate(&a, &b, 0.25).unwrap();
        let n = "glu.out.weight";
        let expect = &a[n] * 0.75 + &b[n] * 0.25;
        assert!(mid[n].allclose(&expect, 1e-6, 1e-6, false));
        let other = blocks::init(&spec(HeadKind::Glu, false, 6, 3), Device::Cpu, 1);
        assert!(interpolate(&a, &other, 0.5).is_err());
        assert!(interpolate(&a, &b, f64::NAN).is_err());
    }
}
