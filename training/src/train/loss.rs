//! Late-interaction scores and the losses that train on them.
//!
//! * [`maxsim`]: the ColBERT score of every query of a batch against every
//!   document of a batch, `Σᵢ maxⱼ qᵢ·dⱼ` over real tokens only — the
//!   gradient of each query token reaches its single best document token.
//! * [`info_nce`]: contrastive cross-entropy of each query's positive
//!   against every other document of the batch (in-batch and mined hard
//!   negatives), with a temperature; documents that are judged relevant to
//!   the query but are not its target are left out of its softmax, so a
//!   second positive is never pushed away.
//! * [`kl_distill`]: KL(teacher ‖ student) between the softmax of a
//!   teacher's scores and of the student's over each query's candidates.

use tch::{Kind, Reduction, Tensor};

/// Score used for padded tokens: far below any real cosine sum.
const NEG: f64 = -1e4;

/// L2-normalises the last dimension.
pub fn normalise(x: &Tensor) -> Tensor {
    let n = x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / n
}

/// `q`: `[B, Lq, k]` with mask `[B, Lq]`; `d`: `[N, Ld, k]` with mask
/// `[N, Ld]` (1 on real tokens). Returns `[B, N]`.
pub fn maxsim(q: &Tensor, q_mask: &Tensor, d: &Tensor, d_mask: &Tensor) -> Tensor {
    // [B, N, Lq, Ld]
    let sim = Tensor::einsum("bik,njk->bnij", &[q, d], None::<&[i64]>);
    let pad = d_mask.eq(0.0).unsqueeze(0).unsqueeze(2); // [1, N, 1, Ld]
    let best = sim.masked_fill(&pad, NEG).amax([-1i64].as_slice(), false); // [B, N, Lq]
    let s = (best * q_mask.unsqueeze(1)).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
    // A document with no tokens scores 0, not NEG per query token.
    let empty = d_mask
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .eq(0.0)
        .unsqueeze(0);
    s.masked_fill(&empty, 0.0)
}

/// Mean contrastive loss: row `b` of `scores` (`[B, N]`) should pick column
/// `targets[b]`; `allowed` (`[B, N]`, bool) says which columns take part
/// in row `b`'s softmax (its target always does).
pub fn info_nce(scores: &Tensor, targets: &Tensor, allowed: &Tensor, temperature: f64) -> Tensor {
    let logits = (scores / temperature).masked_fill(&allowed.logical_not(), NEG);
    logits.cross_entropy_for_logits(targets)
}

/// Mean KL(teacher ‖ student) over rows: `student` and `teacher` are
/// `[B, C]` scores over the same candidates; `valid` (`[B, C]`, bool)
/// marks real candidates (rows may have fewer).
pub fn kl_distill(student: &Tensor, teacher: &Tensor, valid: &Tensor, temperature: f64) -> Tensor {
    let fill = valid.logical_not();
    let s = (student / temperature)
        .masked_fill(&fill, NEG)
        .log_softmax(-1, Kind::Float);
    let t = (teacher / temperature)
        .masked_fill(&fill, NEG)
        .log_softmax(-1, Kind::Float);
    // kl_div(input = log q, target = log p, log_target) = Σ p (log p − log q)
    s.kl_div(&t, Reduction::Sum, true) / student.size()[0] as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    #[test]
    fn maxsim_matches_a_hand_computation_and_ignores_padding() {
        // One query of two tokens (second padded), two documents.
        let q = t(&[1.0, 0.0, 0.0, 1.0], &[1, 2, 2]);
        let qm = t(&[1.0, 0.0], &[1, 2]);
        let d = t(&[0.5, 0.5, 0.9, 0.1, 7.0, 7.0, 0.0, 0.0], &[2, 2, 2]);
        let dm = t(&[1.0, 1.0, 0.0, 0.0], &[2, 2]);
        let s: Vec<f32> = maxsim(&q, &qm, &d, &dm).view([-1]).try_into().unwrap();
        // doc 0: max(0.5, 0.9) = 0.9; doc 1 has no real tokens: 0.
        assert_eq!(s, vec![0.9, 0.0]);
    }

    #[test]
    fn info_nce_is_log_sum_exp_minus_target_and_respects_masks() {
        let scores = t(&[2.0, 1.0, 0.0], &[1, 3]);
        let targets = Tensor::from_slice(&[0i64]);
        let all = Tensor::ones([1, 3], (Kind::Bool, Device::Cpu));
        let l = f64::try_from(info_nce(&scores, &targets, &all, 1.0)).unwrap();
        let want = (2f64.exp() + 1f64.exp() + 1.0).ln() - 2.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        let some = Tensor::from_slice(&[true, false, true]).view([1, 3]);
        let l = f64::try_from(info_nce(&scores, &targets, &some, 0.5)).unwrap();
        let want = (4f64.exp() + 1.0).ln() - 4.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
    }

    #[test]
    fn kl_is_zero_for_equal_distributions_and_positive_otherwise() {
        let a = t(&[1.0, 2.0, 3.0], &[1, 3]);
        let valid = Tensor::ones([1, 3], (Kind::Bool, Device::Cpu));
        let z = f64::try_from(kl_distill(&a, &a, &valid, 1.0)).unwrap();
        assert!(z.abs() < 1e-6);
        let b = t(&[3.0, 2.0, 1.0], &[1, 3]);
        assert!(f64::try_from(kl_distill(&a, &b, &valid, 1.0)).unwrap() > 0.1);
    }
}
