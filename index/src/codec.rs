//! Vector codecs: how each token vector is stored.
//!
//! | codec | bytes per token (dim d) | decode |
//! |---|---|---|
//! | `f32` | 4d | exact |
//! | `f16` | 2d | IEEE half |
//! | `int8` | d + 4 | per-vector scale `max|x|/127` |
//! | `residual{1,2,4}` | d·nbits/8 | centroid + per-dimension bucket weight (PLAID) |
//!
//! Every codec also stores the token's centroid id (4 bytes, `codes.u32`),
//! which candidate generation uses; those bytes are counted separately.
//! The residual codec learns its buckets from data: cutoffs at the
//! `i/2^nbits` quantiles of all residual coordinates, and each bucket's value
//! at the `(i+½)/2^nbits` quantile, as ColBERTv2 does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::linalg::inv_norm;

/// Which codec an index uses; recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CodecKind {
    F32,
    F16,
    Int8,
    Residual { nbits: u8 },
}

impl FromStr for CodecKind {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "int8" => Self::Int8,
            "residual1" => Self::Residual { nbits: 1 },
            "residual2" => Self::Residual { nbits: 2 },
            "residual4" => Self::Residual { nbits: 4 },
            other => {
                return Err(IndexError::InvalidParameter(format!(
                    "unknown codec {other:?} (f32, f16, int8, residual1, residual2, residual4)"
                )))
            }
        })
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::F32 => f.write_str("f32"),
            Self::F16 => f.write_str("f16"),
            Self::Int8 => f.write_str("int8"),
            Self::Residual { nbits } => write!(f, "residual{nbits}"),
        }
    }
}

impl CodecKind {
    /// Bytes of `vectors.bin` per token.
    pub fn bytes_per_token(self, dim: usize) -> usize {
        match self {
            Self::F32 => 4 * dim,
            Self::F16 => 2 * dim,
            Self::Int8 => dim + 4,
            Self::Residual { nbits } => (dim * nbits as usize).div_ceil(8),
        }
    }

    pub fn validate(self, dim: usize) -> Result<()> {
        if let Self::Residual { nbits } = self {
            if !matches!(nbits, 1 | 2 | 4) {
                return Err(IndexError::InvalidParameter(format!(
                    "residual codec needs nbits 1, 2 or 4, got {nbits}"
                )));
            }
            if !(dim * nbits as usize).is_multiple_of(8) {
                return Err(IndexError::InvalidParameter(format!(
                    "residual{nbits} needs dim·nbits to be a multiple of 8 (dim {dim})"
                )));
            }
        }
        Ok(())
    }
}

/// Learnt bucket cutoffs and values of the residual codec.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    /// `2^nbits − 1` increasing cutoffs.
    pub cutoffs: Vec<f32>,
    /// `2^nbits` reconstruction values.
    pub weights: Vec<f32>,
}

impl Buckets {
    /// Learns buckets from residual coordinates (any order): equal-mass
    /// quantile cutoffs with each bucket's middle quantile as its value
    /// (ColBERTv2's rule), then `lloyd_iters` Lloyd–Max steps (values move
    /// to their bucket's mean, cutoffs to the midpoints between values),
    /// which lower the squared reconstruction error.
    pub fn train_lloyd(nbits: u8, values: Vec<f32>, lloyd_iters: usize) -> Self {
        let mut b = Self::train(nbits, values.clone());
        let n = b.weights.len();
        for _ in 0..lloyd_iters {
            let mut sum = vec![0f64; n];
            let mut count = vec![0u64; n];
            for &x in values.iter().filter(|x| x.is_finite()) {
                let i = b.bucket(x) as usize;
                sum[i] += f64::from(x);
                count[i] += 1;
            }
            for i in 0..n {
                if count[i] > 0 {
                    b.weights[i] = (sum[i] / count[i] as f64) as f32;
                }
            }
            for i in 0..n - 1 {
                b.cutoffs[i] = 0.5 * (b.weights[i] + b.weights[i + 1]);
            }
        }
        b
    }

    /// Learns buckets from residual coordinates (any order).
    pub fn train(nbits: u8, mut values: Vec<f32>) -> Self {
        let n = 1usize << nbits;
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Self {
                cutoffs: vec![0.0; n - 1],
                weights: vec![0.0; n],
            };
        }
        values.sort_by(f32::total_cmp);
        let q = |p: f64| values[((p * values.len() as f64) as usize).min(values.len() - 1)];
        Self {
            cutoffs: (1..n).map(|i| q(i as f64 / n as f64)).collect(),
            weights: (0..n).map(|i| q((i as f64 + 0.5) / n as f64)).collect(),
        }
    }

    fn bucket(&self, x: f32) -> u8 {
        // Cutoffs increase, so counting those ≤ x is the bucket; branch-free.
        self.cutoffs.iter().map(|&c| u8::from(x >= c)).sum()
    }
}

/// A codec with everything it needs to encode and decode.
#[derive(Debug, Clone)]
pub struct Codec {
    pub kind: CodecKind,
    pub dim: usize,
    pub buckets: Option<Buckets>,
    /// Renormalise decoded residual vectors (the input vectors were unit
    /// length).
    pub renormalise: bool,
    /// For residual decoding: per byte value, the `8/nbits` weights it holds.
    lut: Vec<f32>,
    /// The bucket weights in one 16-lane register's worth (AVX-512 decode).
    weights16: [f32; 16],
}

impl Codec {
    pub fn new(
        kind: CodecKind,
        dim: usize,
        buckets: Option<Buckets>,
        renormalise: bool,
    ) -> Result<Self> {
        kind.validate(dim)?;
        let lut = match (kind, &buckets) {
            (CodecKind::Residual { nbits }, Some(b)) => {
                let per = 8 / nbits as usize;
                let mask = (1u16 << nbits) - 1;
                let mut lut = Vec::with_capacity(256 * per);
                for byte in 0..256u16 {
                    for j in 0..per {
                        let bucket = (byte >> (j * nbits as usize)) & mask;
                        lut.push(b.weights[bucket as usize]);
                    }
                }
                lut
            }
            (CodecKind::Residual { .. }, None) => {
                return Err(IndexError::InvalidParameter(
                    "residual codec without buckets".into(),
                ))
            }
            _ => Vec::new(),
        };
        let mut weights16 = [0.0f32; 16];
        if let Some(b) = &buckets {
            for (w, &x) in weights16.iter_mut().zip(&b.weights) {
                *w = x;
            }
        }
        Ok(Self {
            kind,
            dim,
            buckets,
            renormalise,
            lut,
            weights16,
        })
    }

    pub fn bytes_per_token(&self) -> usize {
        self.kind.bytes_per_token(self.dim)
    }

    /// Appends the encoding of `v` (nearest centroid `centroid`) to `out`.
    pub fn encode(&self, v: &[f32], centroid: &[f32], out: &mut Vec<u8>) {
        match self.kind {
            CodecKind::F32 => out.extend_from_slice(bytemuck::cast_slice(v)),
            CodecKind::F16 => {
                // Slice conversion (F16C when available) through a stack
                // buffer: no allocation per token.
                use half::slice::HalfFloatSliceExt;
                let mut h = [half::f16::ZERO; 64];
                for c in v.chunks(h.len()) {
                    let h = &mut h[..c.len()];
                    h.convert_from_f32_slice(c);
                    for x in h.iter() {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
            CodecKind::Int8 => {
                let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                out.extend_from_slice(&scale.to_le_bytes());
                out.extend(
                    v.iter()
                        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
            CodecKind::Residual { nbits } => {
                let b = self.buckets.as_ref().expect("checked in Codec::new");
                let per = 8 / nbits as usize;
                for (xs, cs) in v.chunks(per).zip(centroid.chunks(per)) {
                    let mut byte = 0u8;
                    for (j, (x, c)) in xs.iter().zip(cs).enumerate() {
                        byte |= b.bucket(x - c) << (j * nbits as usize);
                    }
                    out.push(byte);
                }
            }
        }
    }

    /// Decodes one token's bytes into `out` (`dim` floats).
    pub fn decode(&self, bytes: &[u8], centroid: &[f32], out: &mut [f32]) {
        let s = self.decode_unscaled(bytes, centroid, out);
        if s != 1.0 {
            out.iter_mut().for_each(|x| *x *= s);
        }
    }

    /// Decodes one token's bytes into `out` (`dim` floats) but leaves the
    /// renormalisation to the caller: returns the factor (`1/|out|` for
    /// renormalised residual codecs, else 1) to multiply the vector — or
    /// its dot products, which is cheaper — by.
    pub fn decode_unscaled(&self, bytes: &[u8], centroid: &[f32], out: &mut [f32]) -> f32 {
        match self.kind {
            CodecKind::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                1.0
            }
            CodecKind::F16 => {
                match bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
                    // Aligned (the mapped file always is on little-endian
                    // hosts): `half` converts with F16C instructions when
                    // the CPU has them.
                    Ok(h) if cfg!(target_endian = "little") => {
                        use half::slice::HalfFloatSliceExt;
                        h.convert_to_f32_slice(&mut out[..h.len()]);
                    }
                    _ => {
                        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                            *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                        }
                    }
                }
                1.0
            }
            CodecKind::Int8 => {
                let scale = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                for (o, &q) in out.iter_mut().zip(&bytes[4..]) {
                    *o = q as i8 as f32 * scale;
                }
                1.0
            }
            CodecKind::Residual { nbits } => {
                let n2 = self.decode_residual(nbits, bytes, centroid, out);
                if self.renormalise {
                    inv_norm(n2)
                } else {
                    1.0
                }
            }
        }
    }

    /// Exact MaxSim of `query` (`nq × dim`) against one document's
    /// tokens (`codes`, their code bytes `bytes`) folded into `best`
    /// (`best[i] = max(best[i], max_j q_i · token_j)`, tokens renormalised
    /// as [`Codec::decode_unscaled`] says) in one pass that never writes
    /// the decoded vectors out: residual and f16 codes with AVX-512, `dim`
    /// a multiple of 16 (at most 256). Returns `false` (and leaves `best`
    /// alone) where that path does not apply; the caller then decodes
    /// tiles itself.
    pub fn maxsim_fused(
        &self,
        query: &[f32],
        bytes: &[u8],
        codes: &[u32],
        centroids: &[f32],
        best: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::linalg::avx512;
            let dim = self.dim;
            let bpt = self.bytes_per_token();
            let shapes_fit = crate::linalg::avx512_enabled()
                && dim.is_multiple_of(16)
                && dim <= avx512::TILE_MAX_DIM
                && bytes.len() >= codes.len() * bpt
                && query.len().is_multiple_of(dim)
                && best.len() >= query.len() / dim;
            match self.kind {
                CodecKind::Residual { .. } if shapes_fit => {
                    let Some(nbits) = self.avx512_residual(codes, centroids) else {
                        return false;
                    };
                    // SAFETY: AVX-512F was detected at run time; the width,
                    // lengths and codes were checked above, and `weights16`
                    // holds the 2^nbits ≤ 16 weights.
                    unsafe {
                        avx512::maxsim_residual(
                            nbits,
                            &self.weights16,
                            self.renormalise,
                            bytes,
                            bpt,
                            codes,
                            centroids,
                            dim,
                            query,
                            best,
                        );
                    }
                    return true;
                }
                CodecKind::F16 if shapes_fit => {
                    // SAFETY: as above; `bpt` is 2·dim, so the document is
                    // whole rows of halves.
                    unsafe {
                        avx512::maxsim_f16(&bytes[..codes.len() * bpt], dim, query, best);
                    }
                    return true;
                }
                _ => {}
            }
        }
        let _ = (query, bytes, codes, centroids, best);
        false
    }

    /// The bit width of a residual codec whose tokens `codes` the AVX-512
    /// residual kernels can read: AVX-512F present, `dim` a multiple of 16,
    /// a token's bytes holding all its codes, and every code a row of
    /// `centroids`. `None` otherwise (other codecs, or the portable path).
    #[cfg(target_arch = "x86_64")]
    fn avx512_residual(&self, codes: &[u32], centroids: &[f32]) -> Option<u32> {
        let CodecKind::Residual { nbits } = self.kind else {
            return None;
        };
        let dim = self.dim;
        let rows = centroids.len() / dim.max(1);
        (crate::linalg::avx512_enabled()
            && dim.is_multiple_of(16)
            && self.bytes_per_token() * 8 >= dim * nbits as usize
            && codes.iter().all(|&c| (c as usize) < rows))
        .then_some(u32::from(nbits))
    }

    /// Decodes the consecutive tokens of a tile: token `t` has code bytes
    /// `bytes[t·bpt..]`, centroid `codes[t]` (a row of `centroids`), and
    /// goes to `out[t·dim..(t + 1)·dim]`, its renormalisation factor (as
    /// [`Codec::decode_unscaled`] returns) to `scales[t]`. The same result
    /// as a call per token, with the per-token dispatch and set-up done
    /// once per tile (AVX-512 residual decoding).
    pub fn decode_tokens_unscaled(
        &self,
        bytes: &[u8],
        codes: &[u32],
        centroids: &[f32],
        out: &mut [f32],
        scales: &mut [f32],
    ) {
        let dim = self.dim;
        let bpt = self.bytes_per_token();
        let n = codes.len();
        assert!(bytes.len() >= n * bpt && out.len() >= n * dim && scales.len() >= n);
        #[cfg(target_arch = "x86_64")]
        if let Some(nbits) = self.avx512_residual(codes, centroids) {
            // SAFETY: `avx512_residual` checked the CPU, the width and every
            // code; the lengths were asserted above, and `weights16` holds
            // the 2^nbits ≤ 16 weights.
            unsafe {
                crate::linalg::avx512::decode_residual_tokens(
                    nbits,
                    &self.weights16,
                    bytes,
                    bpt,
                    codes,
                    centroids,
                    dim,
                    out,
                    scales,
                );
            }
            for s in &mut scales[..n] {
                *s = if self.renormalise { inv_norm(*s) } else { 1.0 };
            }
            return;
        }
        let reads_centroid = matches!(self.kind, CodecKind::Residual { .. });
        for (t, &c) in codes.iter().enumerate() {
            let c = c as usize;
            if let Some(&next) = codes.get(t + 1).filter(|_| reads_centroid) {
                crate::linalg::prefetch(&centroids[next as usize * dim..(next as usize + 1) * dim]);
            }
            scales[t] = self.decode_unscaled(
                &bytes[t * bpt..(t + 1) * bpt],
                &centroids[c * dim..(c + 1) * dim],
                &mut out[t * dim..(t + 1) * dim],
            );
        }
    }

    /// `out = centroid + residual`; returns `|out|²`.
    fn decode_residual(&self, nbits: u8, bytes: &[u8], centroid: &[f32], out: &mut [f32]) -> f32 {
        let dim = out.len();
        #[cfg(target_arch = "x86_64")]
        if crate::linalg::avx512_enabled()
            && dim.is_multiple_of(16)
            && centroid.len() == dim
            && bytes.len() >= dim * nbits as usize / 8
        {
            // SAFETY: AVX-512F was detected at run time; the lengths were
            // checked above and `weights16` holds the 2^nbits ≤ 16 weights.
            return unsafe {
                crate::linalg::avx512::decode_residual(
                    u32::from(nbits),
                    &self.weights16,
                    bytes,
                    centroid,
                    out,
                )
            };
        }
        self.decode_residual_table(nbits, bytes, centroid, out);
        crate::linalg::norm2(out)
    }

    /// `out = centroid + residual` through the per-byte weight table (the
    /// portable decoder).
    fn decode_residual_table(&self, nbits: u8, bytes: &[u8], centroid: &[f32], out: &mut [f32]) {
        match nbits {
            1 => decode_residual::<8>(&self.lut, bytes, centroid, out),
            2 => decode_residual::<4>(&self.lut, bytes, centroid, out),
            _ => decode_residual::<2>(&self.lut, bytes, centroid, out),
        }
    }
}

/// Residual decoding with `PER` values per code byte: `out = centroid +
/// lut[byte]`, in fixed-size groups so the compiler vectorises it.
#[inline]
fn decode_residual<const PER: usize>(lut: &[f32], bytes: &[u8], centroid: &[f32], out: &mut [f32]) {
    for ((o, c), &byte) in out
        .chunks_exact_mut(PER)
        .zip(centroid.chunks_exact(PER))
        .zip(bytes)
    {
        let w = &lut[byte as usize * PER..(byte as usize + 1) * PER];
        for j in 0..PER {
            o[j] = c[j] + w[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{dot, normalise};

    fn unit(seed: u32, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|i| ((i as u32 * 7919 + seed * 104729) as f32 * 0.001).sin())
            .collect();
        normalise(&mut v);
        v
    }

    #[test]
    fn parses_and_sizes() {
        assert_eq!(
            "residual2".parse::<CodecKind>().unwrap(),
            CodecKind::Residual { nbits: 2 }
        );
        assert!("residual3".parse::<CodecKind>().is_err());
        assert_eq!(CodecKind::Residual { nbits: 2 }.bytes_per_token(128), 32);
        assert_eq!(CodecKind::Int8.bytes_per_token(128), 132);
        assert!(CodecKind::Residual { nbits: 4 }.validate(3).is_err());
    }

    #[test]
    fn round_trips_within_codec_precision() {
        let dim = 64;
        let v = unit(1, dim);
        let mut centroid = unit(2, dim);
        for (c, x) in centroid.iter_mut().zip(&v) {
            *c = 0.8 * x + 0.2 * *c;
        }
        let residuals: Vec<f32> = (0..200)
            .flat_map(|s| {
                let u = unit(s + 10, dim);
                u.iter()
                    .zip(&centroid)
                    .map(|(a, b)| (a - b) * 0.3)
                    .collect::<Vec<_>>()
            })
            .collect();
        for (kind, tol) in [
            (CodecKind::F32, 0.0),
            (CodecKind::F16, 1e-3),
            (CodecKind::Int8, 1e-2),
            (CodecKind::Residual { nbits: 4 }, 0.15),
            (CodecKind::Residual { nbits: 2 }, 0.3),
            (CodecKind::Residual { nbits: 1 }, 0.5),
        ] {
            let buckets = match kind {
                CodecKind::Residual { nbits } => Some(Buckets::train(nbits, residuals.clone())),
                _ => None,
            };
            let codec = Codec::new(kind, dim, buckets, true).unwrap();
            let mut bytes = Vec::new();
            codec.encode(&v, &centroid, &mut bytes);
            assert_eq!(bytes.len(), codec.bytes_per_token(), "{kind}");
            let mut out = vec![0.0; dim];
            codec.decode(&bytes, &centroid, &mut out);
            let err = out
                .iter()
                .zip(&v)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= tol, "{kind}: max error {err}");
            assert!(dot(&out, &v) > 0.9, "{kind}");
        }
    }

    #[test]
    fn residual_decoders_agree() {
        // The vector decoder this CPU runs (AVX-512 when present) against
        // the per-byte table, for every width, on codes covering all
        // buckets in every position.
        for nbits in [1u8, 2, 4] {
            for dim in [16, 48, 384] {
                let values: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.618).sin()).collect();
                let kind = CodecKind::Residual { nbits };
                let codec =
                    Codec::new(kind, dim, Some(Buckets::train(nbits, values)), true).unwrap();
                let centroid: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.3).cos() * 0.1).collect();
                let bytes: Vec<u8> = (0..codec.bytes_per_token())
                    .map(|i| (i * 37 + 11) as u8)
                    .collect();
                let mut fast = vec![0.0; dim];
                let s = codec.decode_unscaled(&bytes, &centroid, &mut fast);
                let mut table = vec![0.0; dim];
                codec.decode_residual_table(nbits, &bytes, &centroid, &mut table);
                assert_eq!(fast, table, "{kind} dim {dim}");
                assert!((s - 1.0 / dot(&table, &table).sqrt()).abs() < 1e-5 * s);
            }
        }
    }

    /// `n` centroid rows of `dim` and a codec of `kind` whose residual
    /// buckets (if any) are trained on small sines.
    fn test_codec(kind: CodecKind, dim: usize, renormalise: bool, n: usize) -> (Codec, Vec<f32>) {
        let centroids: Vec<f32> = (0..n * dim)
            .map(|i| (i as f32 * 0.37).sin() * 0.2)
            .collect();
        let values: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.618).sin() * 0.1).collect();
        let buckets = match kind {
            CodecKind::Residual { nbits } => Some(Buckets::train(nbits, values)),
            _ => None,
        };
        (
            Codec::new(kind, dim, buckets, renormalise).unwrap(),
            centroids,
        )
    }

    /// A document of `codes.len()` tokens (token `t`'s vector: cosines
    /// of `t·dim + d`), each coded against centroid row `codes[t]`.
    fn encode_doc(codec: &Codec, codes: &[u32], centroids: &[f32]) -> Vec<u8> {
        let dim = codec.dim;
        let mut bytes = Vec::new();
        for (t, &c) in codes.iter().enumerate() {
            let v: Vec<f32> = (0..dim).map(|d| ((t * dim + d) as f32).cos()).collect();
            let c = c as usize;
            codec.encode(&v, &centroids[c * dim..(c + 1) * dim], &mut bytes);
        }
        bytes
    }

    #[test]
    fn fused_maxsim_matches_decoding_then_scoring() {
        // `maxsim_fused` (residual and f16 codes decoded straight into
        // transposed tiles, where AVX-512 is present; int8 never) against
        // decoding every token and scoring with `maxsim_rows`: documents of
        // 1, 15, 16, 17 and 40 tokens (short last tiles), queries of 1, 7
        // and 9 tokens, every bit width, with and without renormalisation.
        let dim = 48;
        let n_cent = 11;
        let kinds = [
            CodecKind::F16,
            CodecKind::Residual { nbits: 1 },
            CodecKind::Residual { nbits: 2 },
            CodecKind::Residual { nbits: 4 },
            CodecKind::Int8,
        ];
        for kind in kinds {
            for renormalise in [true, false] {
                let (codec, centroids) = test_codec(kind, dim, renormalise, n_cent);
                for nd in [1usize, 15, 16, 17, 40] {
                    let codes: Vec<u32> = (0..nd).map(|t| (t * 7 % n_cent) as u32).collect();
                    let bytes = encode_doc(&codec, &codes, &centroids);
                    let mut doc = vec![0.0; nd * dim];
                    let mut scales = vec![0.0; nd];
                    codec.decode_tokens_unscaled(&bytes, &codes, &centroids, &mut doc, &mut scales);
                    for nq in [1usize, 7, 9] {
                        let q: Vec<f32> = (0..nq * dim).map(|i| (i as f32 * 0.23).sin()).collect();
                        let mut want = vec![f32::NEG_INFINITY; nq];
                        crate::linalg::maxsim_rows(&q, &doc, dim, &scales, &mut want);
                        let mut got = vec![f32::NEG_INFINITY; nq];
                        if codec.maxsim_fused(&q, &bytes, &codes, &centroids, &mut got) {
                            for (g, w) in got.iter().zip(&want) {
                                assert!(
                                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                    "{kind}, renormalise {renormalise}, {nd}×{nq}: {g} vs {w}"
                                );
                            }
                        } else {
                            assert!(got.iter().all(|x| *x == f32::NEG_INFINITY));
                            assert!(
                                !crate::linalg::avx512_enabled() || kind == CodecKind::Int8,
                                "{kind}: no fused path"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tile_decoding_matches_token_decoding() {
        // `decode_tokens_unscaled` (one call per tile; AVX-512 for residual
        // codes when present) against a `decode_unscaled` call per token,
        // for every codec, tokens pointing at scattered centroids.
        let dim = 48;
        let n_cent = 7;
        let codes: Vec<u32> = (0..13).map(|t| (t * 5 % n_cent) as u32).collect();
        for kind in [
            CodecKind::F32,
            CodecKind::F16,
            CodecKind::Int8,
            CodecKind::Residual { nbits: 1 },
            CodecKind::Residual { nbits: 2 },
            CodecKind::Residual { nbits: 4 },
        ] {
            for renormalise in [true, false] {
                let (codec, centroids) = test_codec(kind, dim, renormalise, n_cent);
                let bytes = encode_doc(&codec, &codes, &centroids);
                let bpt = codec.bytes_per_token();
                let mut tile = vec![0.0; codes.len() * dim];
                let mut scales = vec![0.0; codes.len()];
                codec.decode_tokens_unscaled(&bytes, &codes, &centroids, &mut tile, &mut scales);
                for (t, &c) in codes.iter().enumerate() {
                    let c = c as usize;
                    let mut one = vec![0.0; dim];
                    let s = codec.decode_unscaled(
                        &bytes[t * bpt..(t + 1) * bpt],
                        &centroids[c * dim..(c + 1) * dim],
                        &mut one,
                    );
                    assert_eq!(&tile[t * dim..(t + 1) * dim], &one[..], "{kind} token {t}");
                    assert!(
                        (scales[t] - s).abs() <= 1e-6 * s.abs().max(1.0),
                        "{kind} token {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn buckets_are_quantiles() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let b = Buckets::train(2, values);
        assert_eq!(b.cutoffs, vec![250.0, 500.0, 750.0]);
        assert_eq!(b.weights, vec![125.0, 375.0, 625.0, 875.0]);
        assert_eq!(b.bucket(-1.0), 0);
        assert_eq!(b.bucket(500.0), 2);
        assert_eq!(b.bucket(1e9), 3);
    }
}
