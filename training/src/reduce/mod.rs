//! Dimension reductions of token vectors: `k`-dim model vectors become
//! `r`-dim index vectors, `y = normalise((x − μ) · U[:, :r])`, for every `r`
//! of a nested set with one stored `U`.
//!
//! * `truncate`: `U = I`, `μ = 0` — keep the first `r` coordinates (the
//!   baseline; meaningful for Matryoshka-trained vectors).
//! * `pca`: `μ` the corpus mean, `U`'s columns the principal directions by
//!   decreasing variance, from a covariance streamed over the corpus
//!   ([`Covariance`]: `k × k` sums, bounded memory).
//! * `orthogonal` (MatryoshkaKV): `U` the Cayley transform of a free matrix,
//!   initialised from PCA, trained with a Matryoshka strategy (each step one
//!   `r` of the nested set, all prefixes sharing `U`) to keep the
//!   full-dimension MaxSim distribution ([`train`]).
//! * `linear`: the same training with `U` a free matrix (no orthogonality
//!   constraint), started at the PCA basis — a diagnostic: how much a
//!   learned linear map of this form could add over the rotation.
//!
//! The reduction itself — its folder, loading with checks, centring and
//! the projection an index applies — is [`tessera_model::reduction`]; this
//! module fits and trains one.

pub mod train;

use tch::{Device, Kind, Tensor};
use tessera_model::reduction::{Method, Reduction, ReductionMeta};

use crate::error::{Result, TrainingError};

/// The Cayley transform of a free square matrix `x`: with `A = X − Xᵀ`
/// (skew-symmetric), `U = (I − A/2)⁻¹ (I + A/2)` — orthogonal with
/// determinant +1 — computed by a linear solve, not an inverse.
pub fn cayley(x: &Tensor) -> Tensor {
    let k = x.size()[0];
    let eye = Tensor::eye(k, (x.kind(), x.device()));
    let half = (x - x.transpose(0, 1)) * 0.5;
    Tensor::linalg_solve(&(&eye - &half), &(&eye + &half), true)
}

/// A free matrix whose [`cayley`] transform is the orthogonal `u` (det +1,
/// no eigenvalue −1): `X = (U − I)(U + I)⁻¹` (skew-symmetric, so
/// `X − Xᵀ = 2X = A`), by a solve. `None` when `U + I` is too close to
/// singular for the round trip to hold to 1e-6.
pub fn inverse_cayley(u: &Tensor) -> Option<Tensor> {
    let u = u.to_kind(Kind::Double);
    let k = u.size()[0];
    let eye = Tensor::eye(k, (Kind::Double, u.device()));
    // X (U + I) = U − I  ⇔  (U + I)ᵀ Xᵀ = (U − I)ᵀ.
    let xt = Tensor::f_linalg_solve(
        &(&u + &eye).transpose(0, 1),
        &(&u - &eye).transpose(0, 1),
        true,
    )
    .ok()?;
    let x = xt.transpose(0, 1).contiguous();
    let back = cayley(&x);
    let err = f64::try_from((back - &u).abs().max()).unwrap_or(f64::INFINITY);
    (err <= 1e-6).then_some(x)
}

/// Streams token vectors into their mean and covariance: `k × k` sums in
/// f64, so memory stays bounded however many vectors pass.
pub struct Covariance {
    dim: usize,
    n: u64,
    sum: Tensor,
    outer: Tensor,
}

impl Covariance {
    pub fn new(dim: usize) -> Self {
        let k = dim as i64;
        Self {
            dim,
            n: 0,
            sum: Tensor::zeros([k], (Kind::Double, Device::Cpu)),
            outer: Tensor::zeros([k, k], (Kind::Double, Device::Cpu)),
        }
    }

    /// Adds the rows of `x` (`[n, dim]`, any float kind and device).
    pub fn push(&mut self, x: &Tensor) {
        let _g = tch::no_grad_guard();
        let x = x.to_kind(Kind::Double).to_device(Device::Cpu);
        self.n += x.size()[0] as u64;
        self.sum += x.sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
        self.outer += x.transpose(0, 1).matmul(&x);
    }

    /// Adds row-major f32 vectors.
    pub fn push_slice(&mut self, v: &[f32]) {
        if v.is_empty() {
            return;
        }
        self.push(&Tensor::from_slice(v).view([-1, self.dim as i64]));
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// The uncentred second moment `E[x xᵀ]` of the vectors pushed
    /// (`[dim, dim]`, f64; zeros before any).
    pub fn second_moment(&self) -> Tensor {
        &self.outer / (self.n.max(1) as f64)
    }

    /// The mean and the principal directions as the columns of an
    /// orthogonal basis, by decreasing variance; each column's sign makes
    /// its largest-magnitude entry positive, and the last column is flipped
    /// if that is what makes the determinant +1 (a rotation, which the
    /// Cayley transform can reach). Also the variances.
    pub fn principal(&self) -> Result<(Vec<f32>, Vec<f32>, Vec<f64>)> {
        if self.n < 2 {
            return Err(TrainingError::InvalidInput(format!(
                "PCA needs at least 2 vectors, {} given",
                self.n
            )));
        }
        let n = self.n as f64;
        let mean = &self.sum / n;
        let cov = &self.outer / n - mean.unsqueeze(1).matmul(&mean.unsqueeze(0));
        let cov = (&cov + cov.transpose(0, 1)) * 0.5;
        let (values, vectors) = cov.linalg_eigh("L");
        // Ascending → descending.
        let values = values.flip([0]);
        let mut u = vectors.flip([1]);
        let k = self.dim as i64;
        let idx = u.abs().argmax(0, false);
        let lead = u.gather(0, &idx.unsqueeze(0), false); // [1, k]
        u = &u * lead.sign().where_scalarother(&lead.ne(0.0), 1.0);
        let det = f64::try_from(Tensor::linalg_det(&u)).unwrap_or(1.0);
        if det < 0.0 {
            let flip = Tensor::ones([k], (Kind::Double, Device::Cpu)).index_fill(
                0,
                &Tensor::from_slice(&[k - 1]),
                -1.0,
            );
            u = &u * flip;
        }
        let to_f32 = |t: &Tensor| -> Vec<f32> {
            Vec::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap_or_default()
        };
        let variances: Vec<f64> = Vec::try_from(values.clamp_min(0.0)).unwrap_or_default();
        Ok((to_f32(&mean), to_f32(&u), variances))
    }
}

/// PCA of the vectors pushed into `cov`, as a reduction with nested `dims`.
pub fn pca(cov: &Covariance, dims: Vec<usize>) -> Result<Reduction> {
    let (mean, basis, variances) = cov.principal()?;
    let total: f64 = variances.iter().sum::<f64>().max(1e-30);
    let mut meta = ReductionMeta::new(Method::Pca, cov.dim, dims);
    let explained: Vec<serde_json::Value> = meta
        .dims
        .iter()
        .map(|&r| {
            serde_json::json!({
                "dim": r,
                "explained_variance": variances.iter().take(r).sum::<f64>() / total,
            })
        })
        .collect();
    meta.training = serde_json::json!({"vectors": cov.n, "explained": explained});
    Reduction::new(meta, mean, basis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::reduction::{
        check_dims, orthogonality_error, Centring, Side, META, WEIGHTS,
    };

    fn random(n: i64, k: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([n, k], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn cayley_is_orthogonal_and_inverts() {
        let x = random(6, 6, 1).to_kind(Kind::Double);
        let u = cayley(&x);
        assert!(orthogonality_error(&u) < 1e-12);
        let det = f64::try_from(Tensor::linalg_det(&u)).unwrap();
        assert!((det - 1.0).abs() < 1e-9, "{det}");
        let back = inverse_cayley(&u).expect("invertible");
        let again = cayley(&back);
        let err = f64::try_from((again - &u).abs().max()).unwrap();
        assert!(err < 1e-9, "{err}");
    }

    #[test]
    fn pca_finds_the_directions_of_variance_and_is_a_rotation() {
        // Variance 9 along e1, 1 along e0, 0.01 elsewhere; mean (1, 2, 0, 0).
        let z = random(4000, 4, 2);
        let scale = Tensor::from_slice(&[1.0f32, 3.0, 0.1, 0.1]);
        let shift = Tensor::from_slice(&[1.0f32, 2.0, 0.0, 0.0]);
        let x = z * scale + shift;
        let mut cov = Covariance::new(4);
        // Streamed in two parts: same as at once.
        cov.push(&x.narrow(0, 0, 1500));
        cov.push(&x.narrow(0, 1500, 2500));
        let r = pca(&cov, vec![1, 2, 4]).unwrap();
        assert!((r.mean[0] - 1.0).abs() < 0.1 && (r.mean[1] - 2.0).abs() < 0.2);
        // First direction ±e1 (sign: largest entry positive), then e0.
        assert!(r.basis[4] > 0.99, "{:?}", r.basis); // U[1][0]
        assert!(r.basis[1].abs() > 0.99, "{:?}", r.basis); // U[0][1]
        assert!(r.orthogonality_error() < 1e-5);
        let k = 4;
        let det = f64::try_from(Tensor::linalg_det(
            &Tensor::from_slice(&r.basis)
                .view([k, k])
                .to_kind(Kind::Double),
        ))
        .unwrap();
        assert!((det - 1.0).abs() < 1e-5, "{det}");
        let init = inverse_cayley(&Tensor::from_slice(&r.basis).view([k, k]));
        assert!(init.is_some());
    }

    #[test]
    fn prefixes_are_nested_and_match_the_index_matrix() {
        let x = random(50, 8, 3);
        let mut cov = Covariance::new(8);
        cov.push(&x);
        let r = pca(&cov, vec![2, 4, 8]).unwrap();
        let v = random(3, 8, 4);
        let y4 = r.apply(&v, 4, Side::Document);
        let y2 = r.apply(&v, 2, Side::Document);
        // The 2-dim output is the renormalised first half of the
        // unnormalised 4-dim one: same directions, nested.
        let mean = Tensor::from_slice(&r.mean);
        let u = Tensor::from_slice(&r.basis).view([8, 8]);
        let raw4 = (&v - &mean).matmul(&u.narrow(1, 0, 4));
        let lead = crate::train::loss::normalise(&raw4.narrow(1, 0, 2));
        assert!(f64::try_from((&y2 - lead).abs().max()).unwrap() < 1e-6);
        assert_eq!(y4.size(), vec![3, 4]);
        // The index's matrix gives the same vectors.
        let idx = r.to_index(2).unwrap();
        let vs: Vec<f32> = Vec::try_from(v.contiguous().view([-1])).unwrap();
        let got = idx.apply(&vs);
        let want: Vec<f32> = Vec::try_from(y2.contiguous().view([-1])).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // With the default centring queries are reduced the same way.
        assert_eq!(idx.query_mean, None);
        let yq = r.apply(&v, 2, Side::Query);
        assert!(f64::try_from((&yq - &y2).abs().max()).unwrap() == 0.0);
    }

    #[test]
    fn queries_and_documents_can_be_centred_differently() {
        let dir = tempfile::tempdir().unwrap();
        let x = random(50, 8, 3) + 0.5;
        let mut cov = Covariance::new(8);
        cov.push(&x);
        let plain = pca(&cov, vec![2, 4, 8]).unwrap();
        let mut r = plain.clone();
        r.meta.centring = Centring {
            queries: 0.0,
            documents: 0.5,
        };
        let v = random(3, 8, 4) + 0.5;
        let u = Tensor::from_slice(&r.basis).view([8, 8]).narrow(1, 0, 4);
        let mean = Tensor::from_slice(&r.mean);
        let norm = crate::train::loss::normalise;
        let close = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap() < 1e-5;
        // Queries keep their mean, documents lose half of it.
        assert!(close(&r.apply(&v, 4, Side::Query), &norm(&v.matmul(&u))));
        let half = norm(&(&v - &mean * 0.5).matmul(&u));
        assert!(close(&r.apply(&v, 4, Side::Document), &half));
        // The index keeps the queries' own mean and reduces both the same way.
        let idx = r.to_index(4).unwrap();
        let vs: Vec<f32> = Vec::try_from(v.contiguous().view([-1])).unwrap();
        let as_tensor = |y: Vec<f32>| Tensor::from_slice(&y).view([3, 4]);
        assert!(close(
            &as_tensor(idx.apply_query(&vs)),
            &norm(&v.matmul(&u))
        ));
        assert!(close(&as_tensor(idx.apply(&vs)), &half));
        // Saved and loaded with it; the fingerprint tells it from the default.
        r.save(dir.path()).unwrap();
        let back = Reduction::load(dir.path()).unwrap();
        assert_eq!(back.meta.centring, r.meta.centring);
        assert_eq!(back.fingerprint(), r.fingerprint());
        assert_ne!(r.fingerprint(), plain.fingerprint());
        // A fraction outside 0..=1 is refused, naming the file.
        let mut bad = r.clone();
        bad.meta.centring.documents = 1.5;
        bad.save(dir.path()).unwrap();
        let e = Reduction::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("centring") && e.contains(META), "{e}");
    }

    #[test]
    fn save_load_round_trips_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let x = random(40, 6, 5);
        let mut cov = Covariance::new(6);
        cov.push(&x);
        let r = pca(&cov, vec![2, 3]).unwrap();
        r.save(dir.path()).unwrap();
        let back = Reduction::load(dir.path()).unwrap();
        assert_eq!(back.mean, r.mean);
        assert_eq!(back.basis, r.basis);
        assert_eq!(back.fingerprint(), r.fingerprint());
        assert_eq!(back.meta.dims, vec![2, 3]);
        // r outside the set of an orthogonal reduction.
        let mut o = back.clone();
        o.meta.method = Method::Orthogonal;
        let e = o.check_r(4).unwrap_err().to_string();
        assert!(e.contains("--dim 4") && e.contains("2,3"), "{e}");
        assert!(back.check_r(7).is_err());
        // A non-orthogonal basis.
        let mut bad = r.clone();
        bad.basis[0] += 0.1;
        bad.save(dir.path()).unwrap();
        let e = Reduction::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not orthogonal") && e.contains(WEIGHTS), "{e}");
        // NaN.
        let mut bad = r.clone();
        bad.mean[1] = f32::NAN;
        bad.save(dir.path()).unwrap();
        let e = Reduction::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
        // Not a reduction folder.
        let e = Reduction::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(META), "{e}");
        // Bad nested sets.
        assert!(check_dims(&[4, 2], 6).is_err());
        assert!(check_dims(&[0], 6).is_err());
        assert!(check_dims(&[7], 6).is_err());
        assert!(Reduction::truncate(4, vec![2, 4]).is_ok());
    }
}
