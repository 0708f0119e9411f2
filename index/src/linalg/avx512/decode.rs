//! AVX-512 decoding of residual and f16 codes: one vector at a time
//! ([`decode_residual`]), a tile of tokens per call
//! ([`decode_residual_tokens`]), and straight into the transposed tiles of
//! the exact re-rank ([`maxsim_residual`], [`maxsim_f16`]).

use std::arch::x86_64::*;

use super::*;

/// Residual decoding, `nbits` ∈ {1, 2, 4} and `dim` a multiple of 16:
/// `out[d] = centroid[d] + weights[code d]` where code `d` sits at bit
/// `d·nbits` of the little-endian byte string `bytes`. Returns `|out|²`.
///
/// # Safety
/// AVX-512F must be available; `out.len() == centroid.len() == dim`,
/// `dim % 16 == 0`, `bytes.len() >= dim·nbits/8`, `weights` has the
/// `2^nbits` bucket values in its first lanes.
#[target_feature(enable = "avx512f")]
pub unsafe fn decode_residual(
    nbits: u32,
    weights: &[f32; 16],
    bytes: &[u8],
    centroid: &[f32],
    out: &mut [f32],
) -> f32 {
    // One token is a tile of one whose code 0 names `centroid`.
    let mut norm = [0.0f32];
    let dim = out.len();
    // SAFETY: forwarded; `centroid` is one row of `dim` floats and code 0
    // is in range.
    unsafe {
        decode_residual_tokens(
            nbits,
            weights,
            bytes,
            bytes.len(),
            &[0],
            centroid,
            dim,
            out,
            &mut norm,
        );
    }
    norm[0]
}

/// [`decode_residual`] for the consecutive tokens of a tile: token `t`'s
/// `bpt` code bytes start at `bytes[t·bpt]`, its centroid is row
/// `codes[t]` of `centroids` (`dim` floats each), and its decoded vector
/// goes to `out[t·dim..]`, its squared norm to `norms[t]`. One call per
/// tile instead of per token: the lane constants are set up once, and the
/// next token's centroid is prefetched while this one is decoded.
///
/// # Safety
/// AVX-512F must be available; `dim` a multiple of 16; `nbits` 1, 2 or
/// 4 with `bpt ≥ dim·nbits/8`; `bytes.len() ≥ codes.len()·bpt`;
/// `out.len() ≥ codes.len()·dim`; `norms.len() ≥ codes.len()`; every code
/// `< centroids.len() / dim`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn decode_residual_tokens(
    nbits: u32,
    weights: &[f32; 16],
    bytes: &[u8],
    bpt: usize,
    codes: &[u32],
    centroids: &[f32],
    dim: usize,
    out: &mut [f32],
    norms: &mut [f32],
) {
    let a = (weights, bytes, bpt, codes, centroids, dim);
    // SAFETY: forwarded.
    unsafe {
        match nbits {
            1 => decode_tokens_n::<1, 2>(a, out, norms),
            2 => decode_tokens_n::<2, 4>(a, out, norms),
            _ => decode_tokens_n::<4, 8>(a, out, norms),
        }
    }
}

/// The read-only arguments of the residual decoders: weights, code bytes,
/// bytes per token, centroid codes, centroids, dim.
type DecodeArgs<'a> = (&'a [f32; 16], &'a [u8], usize, &'a [u32], &'a [f32], usize);

/// The lane constants of `NB`-bit residual decoding (`STEP = 2·NB` code
/// bytes per 16 dimensions): the bucket weights, and per lane the shift
/// of its code within the 32-bit half of the chunk that holds it (only
/// 4-bit codes reach the upper half).
#[derive(Clone, Copy)]
struct ResidualLanes<const NB: i32, const STEP: usize> {
    w: __m512,
    mask: __m512i,
    shift: __m512i,
    upper: __mmask16,
}

impl<const NB: i32, const STEP: usize> ResidualLanes<NB, STEP> {
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn new(weights: &[f32; 16]) -> Self {
        // SAFETY: `weights` is exactly 16 floats.
        let w = unsafe { _mm512_loadu_ps(weights.as_ptr()) };
        let lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let bit = _mm512_mullo_epi32(lane, _mm512_set1_epi32(NB));
        Self {
            w,
            mask: _mm512_set1_epi32((1 << NB) - 1),
            shift: _mm512_and_si512(bit, _mm512_set1_epi32(31)),
            upper: _mm512_cmpge_epi32_mask(bit, _mm512_set1_epi32(32)),
        }
    }

    /// The bucket weights of the 16 codes in the `STEP` bytes at `p`: a
    /// lane permute of the weight register, no table per byte.
    ///
    /// # Safety
    /// AVX-512F must be available; `p` is valid for reading `STEP` bytes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn residual(&self, p: *const u8) -> __m512 {
        // SAFETY: the caller's `STEP` readable bytes.
        let x: u64 = unsafe {
            match STEP {
                2 => u64::from(p.cast::<u16>().read_unaligned()),
                4 => u64::from(p.cast::<u32>().read_unaligned()),
                _ => p.cast::<u64>().read_unaligned(),
            }
        }
        .to_le();
        let lo = _mm512_set1_epi32(x as u32 as i32);
        let words = if STEP == 8 {
            _mm512_mask_set1_epi32(lo, self.upper, (x >> 32) as u32 as i32)
        } else {
            lo
        };
        let idx = _mm512_and_si512(_mm512_srlv_epi32(words, self.shift), self.mask);
        _mm512_permutexvar_ps(idx, self.w)
    }
}

/// Prefetches centroid row `codes[t]` (if there is a token `t`).
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch_row(codes: &[u32], t: usize, centroids: &[f32], dim: usize) {
    if let Some(&c) = codes.get(t) {
        let row = &centroids[c as usize * dim..(c as usize + 1) * dim];
        for line in row.chunks(16) {
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
}

/// [`decode_residual_tokens`] for `NB`-bit codes (`STEP = 2·NB` bytes per
/// 16 dimensions).
#[target_feature(enable = "avx512f")]
unsafe fn decode_tokens_n<const NB: i32, const STEP: usize>(
    (weights, bytes, bpt, codes, centroids, dim): DecodeArgs,
    out: &mut [f32],
    norms: &mut [f32],
) {
    let lanes = ResidualLanes::<NB, STEP>::new(weights);
    let chunks = dim / 16;
    for (t, &code) in codes.iter().enumerate() {
        prefetch_row(codes, t + 1, centroids, dim);
        let cent = &centroids[code as usize * dim..(code as usize + 1) * dim];
        let tb = &bytes[t * bpt..t * bpt + chunks * STEP];
        let o = &mut out[t * dim..(t + 1) * dim];
        // Two accumulators for the norm: one chain of 24 dependent FMAs per
        // token would cost more than the decoding itself.
        let mut norm = [_mm512_setzero_ps(); 2];
        for c in 0..chunks {
            // SAFETY: `tb` holds `chunks·STEP` bytes, the read takes STEP
            // of them at c·STEP; c·16 + 16 <= dim = cent.len() = o.len().
            unsafe {
                let r = lanes.residual(tb.as_ptr().add(c * STEP));
                let v = _mm512_add_ps(_mm512_loadu_ps(cent.as_ptr().add(c * 16)), r);
                norm[c & 1] = _mm512_fmadd_ps(v, v, norm[c & 1]);
                _mm512_storeu_ps(o.as_mut_ptr().add(c * 16), v);
            }
        }
        norms[t] = _mm512_reduce_add_ps(_mm512_add_ps(norm[0], norm[1]));
    }
}

/// Exact MaxSim of `query` (`nq × dim`) against one document stored as
/// residual codes, without a row-major copy: 16 tokens at a time, each
/// 16-dimension chunk of their vectors is decoded into registers
/// (`centroid + weights[code]`), transposed and kept dimension-major, the
/// tile's squared norms summed lane-wise from the transposed columns (no
/// horizontal sum per token), and the tile folded into `best` as in
/// [`maxsim_rows`]: `best[i] = max(best[i], max_j (q_i · v_j) · s_j)` with
/// `s_j = 1/|v_j|` when `renormalise` (1 for a zero vector), else 1. The
/// next tile's centroid rows are prefetched while this one is scored.
///
/// # Safety
/// AVX-512F must be available; `dim` a multiple of 16 and at most
/// [`TILE_MAX_DIM`]; `nbits` 1, 2 or 4 with `bpt ≥ dim·nbits/8`;
/// `bytes.len() ≥ codes.len()·bpt`; every code `< centroids.len() / dim`;
/// `query` holds whole rows of `dim` floats and `best` one entry per row.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn maxsim_residual(
    nbits: u32,
    weights: &[f32; 16],
    renormalise: bool,
    bytes: &[u8],
    bpt: usize,
    codes: &[u32],
    centroids: &[f32],
    dim: usize,
    query: &[f32],
    best: &mut [f32],
) {
    let a = (weights, bytes, bpt, codes, centroids, dim);
    // SAFETY: forwarded.
    unsafe {
        match nbits {
            1 => maxsim_residual_n::<1, 2>(a, renormalise, query, best),
            2 => maxsim_residual_n::<2, 4>(a, renormalise, query, best),
            _ => maxsim_residual_n::<4, 8>(a, renormalise, query, best),
        }
    }
}

/// [`maxsim_residual`] for `NB`-bit codes.
#[target_feature(enable = "avx512f")]
unsafe fn maxsim_residual_n<const NB: i32, const STEP: usize>(
    (weights, bytes, bpt, codes, centroids, dim): DecodeArgs,
    renormalise: bool,
    query: &[f32],
    best: &mut [f32],
) {
    let lanes = ResidualLanes::<NB, STEP>::new(weights);
    let nd = codes.len();
    (0..16.min(nd)).for_each(|t| prefetch_row(codes, t, centroids, dim));
    // While a tile is scored, the next one's centroid rows are fetched.
    let before =
        |j0: usize| (j0 + 16..j0 + 32).for_each(|t| prefetch_row(codes, t, centroids, dim));
    let row = |t: usize, c: usize| {
        let cent = &centroids[codes[t] as usize * dim + c * 16..][..16];
        let code = &bytes[t * bpt + c * STEP..][..STEP];
        // SAFETY: `code` is STEP bytes, `cent` 16 floats.
        unsafe {
            _mm512_add_ps(
                _mm512_loadu_ps(cent.as_ptr()),
                lanes.residual(code.as_ptr()),
            )
        }
    };
    let scale = if renormalise {
        TileScale::InverseNorm
    } else {
        TileScale::One
    };
    // SAFETY: forwarded; every code indexes a whole centroid row.
    unsafe { maxsim_tiles(nd, dim, scale, query, best, before, row) };
}

/// Exact MaxSim of `query` (`nq × dim`) against one document of `f16`
/// vectors (`bytes`: `nd × dim` little-endian halves) folded into `best`
/// as in [`maxsim_rows`] with unit scales, without an `f32` copy: each
/// 16-half chunk is widened in a register (`vcvtph2ps`) and transposed
/// into the dimension-major tile.
///
/// # Safety
/// AVX-512F must be available; `dim` a multiple of 16 and at most
/// [`TILE_MAX_DIM`]; `bytes.len()` a multiple of `2·dim`; `query` holds
/// whole rows of `dim` floats and `best` one entry per row.
#[target_feature(enable = "avx512f")]
pub unsafe fn maxsim_f16(bytes: &[u8], dim: usize, query: &[f32], best: &mut [f32]) {
    let nd = bytes.len() / (2 * dim);
    let row = |t: usize, c: usize| {
        let h = &bytes[(t * dim + c * 16) * 2..][..32];
        // SAFETY: `h` is 32 bytes: 16 halves, one unaligned 256-bit load.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast())) }
    };
    // SAFETY: forwarded.
    unsafe { maxsim_tiles(nd, dim, TileScale::One, query, best, |_| {}, row) };
}
