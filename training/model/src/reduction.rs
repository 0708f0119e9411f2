//! Dimension reductions of token vectors: `k`-dim model vectors become
//! `r`-dim index vectors, `y = normalise((x − μ) · U[:, :r])`, for every `r`
//! of a nested set with one stored `U`. This module is the reduction as a
//! model part — its methods, centring, the folder it is stored in, loading
//! with checks, applying it, and the [`Projection`](tessera_index::Projection)
//! an index applies; fitting and training reductions is the `training`
//! crate's.
//!
//! Centring: documents subtract `d·μ` and queries `q·μ` ([`Centring`]); the
//! default is `d = q = 1`. A reduction may centre the two sides differently
//! — at search the index then keeps the queries' own mean.
//!
//! A reduction is a folder: `reduction.json` (method, input dim, nested
//! set, how it was made) and `reduction.safetensors` (`mean` `[k]`, `basis`
//! `[k, k]`). Loading checks shapes, finiteness and orthogonality (all but
//! `linear`) and names the file. [`Reduction::to_index`] gives the `r × k`
//! matrix the index applies before coding (and to queries).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

pub const FORMAT: &str = "tessera-reduction";
pub const META: &str = "reduction.json";
pub const WEIGHTS: &str = "reduction.safetensors";
/// Largest |UᵀU − I| entry a stored basis may have (f32 storage).
pub const ORTHOGONALITY_TOLERANCE: f64 = 1e-4;

/// How a reduction was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Truncate,
    Pca,
    Orthogonal,
    Linear,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "truncate" => Ok(Self::Truncate),
            "pca" => Ok(Self::Pca),
            "orthogonal" => Ok(Self::Orthogonal),
            "linear" => Ok(Self::Linear),
            _ => Err(format!(
                "unknown reduction method {s:?} (truncate, pca, orthogonal or linear; \
                 a small trained head is `tessera train heads --dim R`)"
            )),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Truncate => "truncate",
            Self::Pca => "pca",
            Self::Orthogonal => "orthogonal",
            Self::Linear => "linear",
        })
    }
}

/// How much of the mean `μ` each side subtracts before projecting:
/// documents `x − documents·μ`, queries `x − queries·μ`. Both 1 by default
/// (`(x − μ)·U`, the same for both sides).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Centring {
    pub queries: f32,
    pub documents: f32,
}

impl Default for Centring {
    fn default() -> Self {
        Self {
            queries: 1.0,
            documents: 1.0,
        }
    }
}

/// The centring's fields as `reduction.json` names them.
const FILE_CENTRING: [&str; 2] = ["centring.queries", "centring.documents"];

/// Which vectors a reduction is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Query,
    Document,
}

impl Centring {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Each fraction must lie in `0..=1`; `names` are what the error calls
    /// the queries' and the documents' (a file's fields or the options).
    pub fn check(&self, names: [&str; 2]) -> std::result::Result<(), String> {
        for (name, v) in names.into_iter().zip([self.queries, self.documents]) {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "{name} is {v}: the fraction of the mean subtracted must lie in 0..=1"
                ));
            }
        }
        Ok(())
    }

    /// The fraction of `μ` that `side` subtracts.
    pub fn of(&self, side: Side) -> f32 {
        match side {
            Side::Query => self.queries,
            Side::Document => self.documents,
        }
    }
}

/// `reduction.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReductionMeta {
    pub format: String,
    pub version: u32,
    pub method: Method,
    /// `k`: the model's vector width.
    pub in_dim: usize,
    /// The nested output sizes, increasing; every `r` an index may use.
    pub dims: Vec<usize>,
    /// How much of `μ` queries and documents subtract (absent: all of it).
    #[serde(default, skip_serializing_if = "Centring::is_default")]
    pub centring: Centring,
    /// How it was made: command, data, training summary.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// A loaded (or fitted) reduction.
#[derive(Debug, Clone)]
pub struct Reduction {
    pub meta: ReductionMeta,
    /// `μ`, `in_dim` values.
    pub mean: Vec<f32>,
    /// `U`, row-major `in_dim × in_dim`; column `j` is output coordinate `j`.
    pub basis: Vec<f32>,
    /// The folder it was read from.
    pub dir: Option<PathBuf>,
}

/// Checks a nested set: increasing, within `1..=in_dim`, not empty.
pub fn check_dims(dims: &[usize], in_dim: usize) -> std::result::Result<(), String> {
    if dims.is_empty() {
        return Err("the nested set of dims is empty".into());
    }
    if let Some(&r) = dims.iter().find(|&&r| r == 0 || r > in_dim) {
        return Err(format!(
            "dim {r} is outside 1..={in_dim} (the vectors have {in_dim} dims)"
        ));
    }
    if dims.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("dims {dims:?} must be strictly increasing"));
    }
    Ok(())
}

impl Reduction {
    /// A reduction from its parts, checked (shapes, values, orthogonality).
    pub fn new(meta: ReductionMeta, mean: Vec<f32>, basis: Vec<f32>) -> Result<Self> {
        let r = Self {
            meta,
            mean,
            basis,
            dir: None,
        };
        r.check().map_err(ModelError::InvalidInput)?;
        Ok(r)
    }

    /// `truncate` for `in_dim`-wide vectors.
    pub fn truncate(in_dim: usize, dims: Vec<usize>) -> Result<Self> {
        let mut basis = vec![0.0; in_dim * in_dim];
        for i in 0..in_dim {
            basis[i * in_dim + i] = 1.0;
        }
        Self::new(
            ReductionMeta::new(Method::Truncate, in_dim, dims),
            vec![0.0; in_dim],
            basis,
        )
    }

    fn check(&self) -> std::result::Result<(), String> {
        let k = self.meta.in_dim;
        if self.meta.format != FORMAT {
            return Err(format!("format is {:?}, not {FORMAT:?}", self.meta.format));
        }
        if k == 0 {
            return Err("in_dim is 0".into());
        }
        check_dims(&self.meta.dims, k)?;
        self.meta.centring.check(FILE_CENTRING)?;
        if self.mean.len() != k || self.basis.len() != k * k {
            return Err(format!(
                "a {k}-dim reduction needs mean [{k}] and basis [{k}, {k}] ({} and {} values given)",
                self.mean.len(),
                self.basis.len()
            ));
        }
        if self.mean.iter().chain(&self.basis).any(|x| !x.is_finite()) {
            return Err("mean or basis holds NaN or infinite values".into());
        }
        if self.meta.method == Method::Linear {
            // A free matrix: orthogonal only by accident.
            return Ok(());
        }
        let e = self.orthogonality_error();
        if e.is_nan() || e > ORTHOGONALITY_TOLERANCE {
            return Err(format!(
                "the basis is not orthogonal: max |UᵀU − I| = {e:.2e} (tolerance {ORTHOGONALITY_TOLERANCE:.0e})"
            ));
        }
        Ok(())
    }

    /// Largest entry of `|UᵀU − I|`.
    pub fn orthogonality_error(&self) -> f64 {
        let k = self.meta.in_dim as i64;
        let u = Tensor::from_slice(&self.basis)
            .view([k, k])
            .to_kind(Kind::Double);
        orthogonality_error(&u)
    }

    pub fn in_dim(&self) -> usize {
        self.meta.in_dim
    }

    /// Refuses an `r` outside the nested set (orthogonal reductions are
    /// trained for exactly those) or past the input width.
    pub fn check_r(&self, r: usize) -> Result<()> {
        let ok = match self.meta.method {
            Method::Orthogonal | Method::Linear => self.meta.dims.contains(&r),
            Method::Truncate | Method::Pca => (1..=self.meta.in_dim).contains(&r),
        };
        if ok {
            return Ok(());
        }
        let msg = format!(
            "--dim {r} is not in the {} reduction's set {} (of {}-dim vectors)",
            self.meta.method,
            self.dims_text(),
            self.meta.in_dim
        );
        Err(match &self.dir {
            Some(d) => ModelError::config(d.join(META), msg),
            None => ModelError::InvalidInput(msg),
        })
    }

    /// `16,32,64`.
    pub fn dims_text(&self) -> String {
        self.meta
            .dims
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `r × in_dim` row-major projection (row `j` = column `j` of `U`).
    pub fn matrix(&self, r: usize) -> Vec<f32> {
        let k = self.meta.in_dim;
        let mut m = vec![0.0; r * k];
        for j in 0..r {
            for i in 0..k {
                m[j * k + i] = self.basis[i * k + j];
            }
        }
        m
    }

    /// The mean `side` subtracts: `μ` scaled by its centring.
    pub fn mean_of(&self, side: Side) -> Vec<f32> {
        let c = self.meta.centring.of(side);
        self.mean.iter().map(|m| m * c).collect()
    }

    /// What the index applies at `r` (checked against the nested set).
    pub fn to_index(&self, r: usize) -> Result<tessera_index::Projection> {
        self.check_r(r)?;
        let c = self.meta.centring;
        let red = tessera_index::Projection::new(
            self.meta.in_dim,
            r,
            self.matrix(r),
            Some(self.mean_of(Side::Document)),
        );
        let red = if c.queries == c.documents {
            red
        } else {
            red.and_then(|red| red.with_query_mean(self.mean_of(Side::Query)))
        };
        red.map_err(|e| ModelError::InvalidInput(e.to_string()))
    }

    /// Reduces `side`'s `x` (`[…, in_dim]`) to `[…, r]`, normalised.
    pub fn apply(&self, x: &Tensor, r: usize, side: Side) -> Tensor {
        let k = self.meta.in_dim as i64;
        let device = x.device();
        let mean = Tensor::from_slice(&self.mean_of(side)).to_device(device);
        let u = Tensor::from_slice(&self.basis)
            .view([k, k])
            .narrow(1, 0, r as i64)
            .to_device(device);
        reduce(x, &mean, &u)
    }

    /// A stable fingerprint of the numbers (hex), recorded in index
    /// manifests so a search can tell whether it is given the same one.
    pub fn fingerprint(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.meta.in_dim.hash(&mut h);
        self.meta.method.to_string().hash(&mut h);
        for x in self.mean.iter().chain(&self.basis) {
            x.to_bits().hash(&mut h);
        }
        // Only where it is not the default: older indexes keep their prints.
        let c = self.meta.centring;
        if !c.is_default() {
            c.queries.to_bits().hash(&mut h);
            c.documents.to_bits().hash(&mut h);
        }
        format!("{:016x}", h.finish())
    }

    /// Writes `dir/reduction.json` and `dir/reduction.safetensors`
    /// (weights first, the JSON last, each replaced atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let k = self.meta.in_dim as i64;
        let tmp = dir.join(format!("{WEIGHTS}.tmp"));
        Tensor::write_safetensors(
            &[
                ("mean", Tensor::from_slice(&self.mean)),
                ("basis", Tensor::from_slice(&self.basis).view([k, k])),
            ],
            &tmp,
        )?;
        let w = dir.join(WEIGHTS);
        std::fs::rename(&tmp, &w).map_err(|e| ModelError::io(&w, e))?;
        let j = dir.join(META);
        let tmp = dir.join(format!("{META}.tmp"));
        let text = serde_json::to_vec_pretty(&self.meta).expect("meta serialises");
        std::fs::write(&tmp, text).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, &j).map_err(|e| ModelError::io(&j, e))
    }

    /// Reads and checks a reduction folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let j = dir.join(META);
        if !j.is_file() {
            return Err(ModelError::MissingFile {
                path: j,
                what: "not a reduction folder (tessera train reduce writes one)",
            });
        }
        let text = crate::config::read_text(&j)?;
        let meta: ReductionMeta = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(&j, crate::config::json_message(&e)))?;
        meta.centring
            .check(FILE_CENTRING)
            .map_err(|m| ModelError::config(&j, m))?;
        let w = dir.join(WEIGHTS);
        let mut file = crate::weights::WeightFile::read(&w)?;
        let k = meta.in_dim as i64;
        let mean = file.take("mean", &[k])?;
        let basis = file.take("basis", &[k, k])?;
        let to_vec = |t: Tensor| -> Vec<f32> {
            Vec::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap_or_default()
        };
        let r = Self {
            meta,
            mean: to_vec(mean),
            basis: to_vec(basis),
            dir: Some(dir.to_owned()),
        };
        r.check().map_err(|m| ModelError::config(&w, m))?;
        Ok(r)
    }
}

impl ReductionMeta {
    pub fn new(method: Method, in_dim: usize, dims: Vec<usize>) -> Self {
        Self {
            format: FORMAT.into(),
            version: 1,
            method,
            in_dim,
            dims,
            centring: Centring::default(),
            training: serde_json::Value::Null,
        }
    }
}

/// `normalise((x − mean) · u)` for `x` `[…, k]`, `u` `[k, r]`.
pub fn reduce(x: &Tensor, mean: &Tensor, u: &Tensor) -> Tensor {
    let y = (x - mean).matmul(u);
    let norm = y
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    y / norm
}

/// Largest entry of `|UᵀU − I|` (any float kind).
pub fn orthogonality_error(u: &Tensor) -> f64 {
    let u = u.to_kind(Kind::Double);
    let k = u.size()[0];
    let e = u.transpose(0, 1).matmul(&u) - Tensor::eye(k, (Kind::Double, u.device()));
    f64::try_from(e.abs().max()).unwrap_or(f64::INFINITY)
}
