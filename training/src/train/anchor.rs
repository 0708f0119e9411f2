//! Terms that keep a head near general knowledge while it learns from
//! labels — the regularisers of robust fine-tuning, beside the contrastive
//! loss:
//!
//! * [`l2_sp`]: L2-SP (Li et al., 2018), `Σ ‖θ − θ₀‖²` over the head's
//!   parameters, pulling them towards where they started (a general head
//!   such as the backbone's principal directions,
//!   [`tessera_model::heads::start`]).
//! * [`raw_scores`]: MaxSim of a batch over the backbone's own states,
//!   normalised — the untrained model's ranking. A KL term from these
//!   scores to the head's over each query's batch documents ("learning
//!   without forgetting") keeps the order the backbone knew where the
//!   labels say nothing.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::loss;

/// `Σ ‖θ − θ₀‖²` over the tensors of `head` that `start` holds too (a graph
/// through `head`).
pub fn l2_sp(head: &HashMap<String, Tensor>, start: &HashMap<String, Tensor>) -> Tensor {
    let mut names: Vec<&String> = head.keys().filter(|n| start.contains_key(*n)).collect();
    names.sort();
    let mut total: Option<Tensor> = None;
    for n in names {
        let d = (&head[n] - start[n].to_device(head[n].device()))
            .square()
            .sum(Kind::Float);
        total = Some(match total {
            Some(t) => t + d,
            None => d,
        });
    }
    total.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, tch::Device::Cpu)))
}

/// `[queries, docs]` MaxSim of backbone states `qs` (`[B, Lq, d]`, mask
/// `qm`) against `ds` (`[N, Ld, d]`, mask `dm`), each token normalised — the
/// scores of the backbone with no head. No gradient.
pub fn raw_scores(qs: &Tensor, qm: &Tensor, ds: &Tensor, dm: &Tensor) -> Tensor {
    let _ng = tch::no_grad_guard();
    let q = loss::normalise(&qs.to_kind(Kind::Float)) * qm.unsqueeze(-1);
    let d = loss::normalise(&ds.to_kind(Kind::Float)) * dm.unsqueeze(-1);
    loss::maxsim(&q, qm, &d, dm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_sp_is_the_squared_distance_to_the_start() {
        let a = HashMap::from([
            ("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("b".to_string(), Tensor::from_slice(&[0.5f32])),
        ]);
        let s = HashMap::from([
            ("w".to_string(), Tensor::from_slice(&[0.0f32, 0.0])),
            ("b".to_string(), Tensor::from_slice(&[0.5f32])),
        ]);
        assert!((f64::try_from(l2_sp(&a, &s)).unwrap() - 5.0).abs() < 1e-6);
        assert_eq!(f64::try_from(l2_sp(&a, &a)).unwrap(), 0.0);
    }

    #[test]
    fn raw_scores_ignore_state_norms_and_padding() {
        // One query token along e0; doc 0 has e0 scaled by 5 and a padded
        // e0 token; doc 1 has e1 only.
        let qs = Tensor::from_slice(&[3.0f32, 0.0]).view([1, 1, 2]);
        let qm = Tensor::from_slice(&[1.0f32]).view([1, 1]);
        let ds = Tensor::from_slice(&[5.0f32, 0.0, 0.0, 7.0, 0.0, 2.0, 9.0, 0.0]).view([2, 2, 2]);
        let dm = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([2, 2]);
        let s: Vec<f32> = Vec::try_from(raw_scores(&qs, &qm, &ds, &dm).view([-1])).unwrap();
        assert!((s[0] - 1.0).abs() < 1e-6 && s[1].abs() < 1e-6, "{s:?}");
    }
}
