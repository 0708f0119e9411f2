//! AVX-512 kernels, used when the CPU has AVX-512F at run time (the
//! workspace itself targets x86-64-v3, so these are compiled with
//! `#[target_feature]` and reached only through [`super::avx512_enabled`]).
//!
//! * [`dot_block`]: a 4×4 register-blocked product of row blocks (4×1–4×3
//!   for a short last block), 16 lanes
//!   per step, any width (the tail is a masked load), horizontal sums
//!   folded four at a time.
//! * [`maxsim_rows`]: the same product, scaled per document row and folded
//!   into running per-query maxima — for widths that are a multiple of 16,
//!   dimension-major instead: 16 document rows transposed in registers, a
//!   query token's 16 scores one chain of broadcast FMAs, nothing to sum
//!   across lanes.
//! * [`maxsim_residual`], [`maxsim_f16`] (in `decode`, with the decoders
//!   below): the exact re-rank's path for
//!   residual and f16 codes, decoding each 16-dimension chunk of 16 tokens
//!   straight into that transposed tile (no row-major copy; residual norms
//!   summed lane-wise).
//! * [`decode_residual`]: PLAID residual codes to `centroid + weight`, 16
//!   dimensions per step with a lane permute instead of a table per byte,
//!   returning the squared norm; [`decode_residual_tokens`] does a tile of
//!   tokens per call (the exact re-rank's path at widths the transposed
//!   tiles do not take, over 256).
//! * [`quantize_scores`]: a row of query-token scores to the i8 table of
//!   the approximate pass, read in place with masked loads.

use std::arch::x86_64::*;

mod decode;

pub use decode::{decode_residual, decode_residual_tokens, maxsim_f16, maxsim_residual};

/// Sums of the 4×N dot products `a[t] · b[l]` over `dim` floats, one
/// `__m128` per `t` (lanes `l < N`; the others 0). `N < 4` serves a short
/// last block without computing duplicate rows.
///
/// # Safety
/// AVX-512F must be available, and each pointer must be valid for reading
/// `dim` floats.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn kernel4xn<const N: usize>(
    a: [*const f32; 4],
    b: [*const f32; N],
    dim: usize,
) -> [__m128; 4] {
    let mut acc = [[_mm512_setzero_ps(); N]; 4];
    let full = dim / 16;
    for c in 0..full {
        let off = c * 16;
        // SAFETY (all loads): off + 16 <= dim, within each row.
        let bv: [__m512; N] = std::array::from_fn(|l| unsafe { _mm512_loadu_ps(b[l].add(off)) });
        for t in 0..4 {
            let av = unsafe { _mm512_loadu_ps(a[t].add(off)) };
            for l in 0..N {
                acc[t][l] = _mm512_fmadd_ps(av, bv[l], acc[t][l]);
            }
        }
    }
    let rem = dim % 16;
    if rem > 0 {
        let off = full * 16;
        let m: __mmask16 = (1u16 << rem) - 1;
        // SAFETY (masked loads): lanes past `rem` are not read.
        let bv: [__m512; N] =
            std::array::from_fn(|l| unsafe { _mm512_maskz_loadu_ps(m, b[l].add(off)) });
        for t in 0..4 {
            let av = unsafe { _mm512_maskz_loadu_ps(m, a[t].add(off)) };
            for l in 0..N {
                acc[t][l] = _mm512_fmadd_ps(av, bv[l], acc[t][l]);
            }
        }
    }
    let z = _mm512_setzero_ps();
    acc.map(|r| {
        let g = |l: usize| if l < N { r[l] } else { z };
        hsum4(g(0), g(1), g(2), g(3))
    })
}

/// [`kernel4xn`] for a block of `n` ∈ 1..=4 rows of `b`.
///
/// # Safety
/// As [`kernel4xn`]; the first `n` pointers of `b` must be valid.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn kernel4(a: [*const f32; 4], b: [*const f32; 4], n: usize, dim: usize) -> [__m128; 4] {
    // SAFETY: forwarded.
    unsafe {
        match n {
            1 => kernel4xn::<1>(a, [b[0]], dim),
            2 => kernel4xn::<2>(a, [b[0], b[1]], dim),
            3 => kernel4xn::<3>(a, [b[0], b[1], b[2]], dim),
            _ => kernel4xn::<4>(a, b, dim),
        }
    }
}

/// `[Σ x0, Σ x1, Σ x2, Σ x3]` of four 16-lane vectors.
#[target_feature(enable = "avx512f")]
#[inline]
fn hsum4(x0: __m512, x1: __m512, x2: __m512, x3: __m512) -> __m128 {
    let fold = |x: __m512| {
        let lo = _mm512_castps512_ps256(x);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
        _mm256_add_ps(lo, hi)
    };
    let h01 = _mm256_hadd_ps(fold(x0), fold(x1));
    let h23 = _mm256_hadd_ps(fold(x2), fold(x3));
    let h = _mm256_hadd_ps(h01, h23);
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// Row pointers of a block of up to four rows starting at `first`; a short
/// block repeats its last row (the duplicates' results are discarded or,
/// for maxima, harmless).
#[inline]
fn rows4(m: &[f32], dim: usize, first: usize, n: usize) -> [*const f32; 4] {
    let last = n - 1;
    [0, 1, 2, 3].map(|i| m[(first + i.min(last)) * dim..].as_ptr())
}

/// `out[i·nb + j] = a_i · b_j` for the `na` rows of `a` and `nb` rows of `b`
/// (row-major, `dim` wide).
///
/// # Safety
/// AVX-512F must be available; `a.len() >= na·dim`, `b.len() >= nb·dim`,
/// `out.len() >= na·nb`, `dim > 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_block(a: &[f32], b: &[f32], dim: usize, out: &mut [f32]) {
    let (na, nb) = (a.len() / dim, b.len() / dim);
    for i0 in (0..na).step_by(4) {
        let ni = (na - i0).min(4);
        let ap = rows4(a, dim, i0, ni);
        for j0 in (0..nb).step_by(4) {
            let nj = (nb - j0).min(4);
            let bp = rows4(b, dim, j0, nj);
            // SAFETY: every pointer starts a full row of `dim` floats.
            let sums = unsafe { kernel4(ap, bp, nj, dim) };
            for (t, s) in sums.iter().enumerate().take(ni) {
                let mut v = [0.0f32; 4];
                // SAFETY: `v` is 4 floats, one unaligned 128-bit store.
                unsafe { _mm_storeu_ps(v.as_mut_ptr(), *s) };
                let row = (i0 + t) * nb + j0;
                out[row..row + nj].copy_from_slice(&v[..nj]);
            }
        }
    }
}

/// `best[i] = max(best[i], max_j (q_i · d_j) · scale[j])` over the rows
/// `d_j` of `doc` and `q_i` of `query` (`dim` wide).
///
/// # Safety
/// AVX-512F must be available; `dim > 0`, `scale.len() >= doc rows`,
/// `best.len() >= query rows`, and both matrices hold whole rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn maxsim_rows(query: &[f32], doc: &[f32], dim: usize, scale: &[f32], best: &mut [f32]) {
    let (nq, nd) = (query.len() / dim, doc.len() / dim);
    if nd == 0 {
        return;
    }
    if dim.is_multiple_of(16) && dim <= TILE_MAX_DIM {
        // SAFETY: forwarded; the width condition was checked.
        unsafe { maxsim_rows_transposed(query, doc, dim, scale, best) };
        return;
    }
    for j0 in (0..nd).step_by(4) {
        let nj = (nd - j0).min(4);
        let dp = rows4(doc, dim, j0, nj);
        let sc = [0, 1, 2, 3].map(|t| _mm_set1_ps(scale[j0 + t.min(nj - 1)]));
        for i0 in (0..nq).step_by(4) {
            let ni = (nq - i0).min(4);
            let qp = rows4(query, dim, i0, ni);
            // SAFETY: every pointer starts a full row of `dim` floats.
            let s = unsafe { kernel4(dp, qp, ni, dim) };
            let m = _mm_max_ps(
                _mm_max_ps(_mm_mul_ps(s[0], sc[0]), _mm_mul_ps(s[1], sc[1])),
                _mm_max_ps(_mm_mul_ps(s[2], sc[2]), _mm_mul_ps(s[3], sc[3])),
            );
            let mut v = [0.0f32; 4];
            // SAFETY: `v` is 4 floats, one unaligned 128-bit store.
            unsafe { _mm_storeu_ps(v.as_mut_ptr(), m) };
            for (b, &x) in best[i0..i0 + ni].iter_mut().zip(&v) {
                if x > *b {
                    *b = x;
                }
            }
        }
    }
}

/// The widest rows [`maxsim_rows_transposed`] takes (its transposed tile
/// lives on the stack: 16 KiB at this width).
pub const TILE_MAX_DIM: usize = 256;

/// [`maxsim_rows`] for `dim` a multiple of 16 (at most [`TILE_MAX_DIM`]),
/// dimension-major: each tile of 16 document rows is transposed in
/// registers, so one 16-lane vector holds one dimension of 16 tokens, and
/// a query token's 16 scores are `Σ_d q[d] · tile[d]` — broadcast FMAs
/// with nothing to sum across lanes. The row-major kernel spends about as
/// many instructions folding its 16-lane sums as multiplying at the
/// widths of reduced vectors (48, 64), and pads a query of 7 tokens to 8.
///
/// # Safety
/// As [`maxsim_rows`]; also `dim % 16 == 0` and `dim <= TILE_MAX_DIM`.
#[target_feature(enable = "avx512f")]
unsafe fn maxsim_rows_transposed(
    query: &[f32],
    doc: &[f32],
    dim: usize,
    scale: &[f32],
    best: &mut [f32],
) {
    let nd = doc.len() / dim;
    // SAFETY: row t < nd of `doc` is whole: 16 floats at c·16 < dim.
    let row = |t: usize, c: usize| unsafe { _mm512_loadu_ps(doc.as_ptr().add(t * dim + c * 16)) };
    // SAFETY: forwarded; `scale` has a factor per row.
    unsafe { maxsim_tiles(nd, dim, TileScale::Rows(scale), query, best, |_| {}, row) };
}

/// How [`maxsim_tiles`] scales a token's dot products.
#[derive(Clone, Copy)]
enum TileScale<'a> {
    /// Not at all.
    One,
    /// By the token's inverse norm (1 for a zero vector), as residual
    /// codes of unit vectors are renormalised.
    InverseNorm,
    /// By the given factor per token.
    Rows(&'a [f32]),
}

/// The tile loop of every dimension-major MaxSim: for each tile of 16 of
/// the `nd` document tokens, each 16-dimension chunk of their vectors —
/// `row(t, c)`, chunk `c` of token `t` — is loaded or decoded into
/// registers, transposed ([`transpose16`]) and kept dimension-major;
/// squared norms (for [`TileScale::InverseNorm`]) are summed lane-wise
/// from the columns, with no horizontal sum per token; and the tile is
/// folded into `best` ([`score_tile`]). `before(j0)` runs as the tile at
/// token `j0` starts (e.g. to prefetch the next one's data).
///
/// # Safety
/// AVX-512F must be available; `dim` a multiple of 16 and at most
/// [`TILE_MAX_DIM`]; `row` may be called with any `t < nd`, `c < dim/16`;
/// `query` holds whole rows of `dim` floats, `best` one entry per row, a
/// [`TileScale::Rows`] at least `nd` factors.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn maxsim_tiles(
    nd: usize,
    dim: usize,
    scale: TileScale,
    query: &[f32],
    best: &mut [f32],
    mut before: impl FnMut(usize),
    row: impl Fn(usize, usize) -> __m512,
) {
    let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
    // Left uninitialised (zeroing 16 KiB per call showed in profiles):
    // the first `dim` entries are written before each tile is read.
    let mut tile = [const { std::mem::MaybeUninit::<__m512>::uninit() }; TILE_MAX_DIM];
    let with_norm = matches!(scale, TileScale::InverseNorm);
    for j0 in (0..nd).step_by(16) {
        before(j0);
        let n = (nd - j0).min(16);
        let valid: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
        let mut norm = [zero; 2];
        for c in 0..dim / 16 {
            // Rows past `n` are zeros (their lanes are masked below).
            let rows: [__m512; 16] =
                std::array::from_fn(|r| if r < n { row(j0 + r, c) } else { zero });
            let cols = transpose16(rows);
            for (k, (slot, col)) in tile[c * 16..c * 16 + 16].iter_mut().zip(cols).enumerate() {
                slot.write(col);
                if with_norm {
                    norm[k & 1] = _mm512_fmadd_ps(col, col, norm[k & 1]);
                }
            }
        }
        let sc = match scale {
            TileScale::One => one,
            TileScale::InverseNorm => {
                let n2 = _mm512_add_ps(norm[0], norm[1]);
                let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(n2, zero);
                _mm512_mask_div_ps(one, positive, one, _mm512_sqrt_ps(n2))
            }
            // SAFETY: the mask covers the `n` factors of this tile.
            TileScale::Rows(s) => unsafe { _mm512_maskz_loadu_ps(valid, s.as_ptr().add(j0)) },
        };
        // SAFETY: entries 0..dim were written above (MaybeUninit<T> has
        // T's layout); the query holds whole rows.
        unsafe {
            let tile = std::slice::from_raw_parts(tile.as_ptr().cast(), dim);
            score_tile(query, tile, sc, valid, best);
        }
    }
}

/// Folds one dimension-major tile (`tile[d]` = dimension `d` of up to 16
/// document tokens, lanes outside `valid` ignored) into the running
/// maxima: `best[i] = max(best[i], max_j (q_i · token_j) · sc[j])`.
///
/// # Safety
/// AVX-512F must be available; `query` holds whole rows of `tile.len()`
/// floats, `best` at least one entry per row.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_tile(
    query: &[f32],
    tile: &[__m512],
    sc: __m512,
    valid: __mmask16,
    best: &mut [f32],
) {
    let dim = tile.len();
    let nq = query.len() / dim;
    let mut i0 = 0;
    while i0 < nq {
        let ni = (nq - i0).min(4);
        let q = |i: usize| query[(i0 + i.min(ni - 1)) * dim..].as_ptr();
        // SAFETY: each pointer starts a whole query row of `dim` floats.
        let s: [__m512; 4] = unsafe {
            match ni {
                1 => pad4(tile_dots::<1>([q(0)], tile)),
                2 => pad4(tile_dots::<2>([q(0), q(1)], tile)),
                3 => pad4(tile_dots::<3>([q(0), q(1), q(2)], tile)),
                _ => tile_dots::<4>([q(0), q(1), q(2), q(3)], tile),
            }
        };
        for (b, v) in best[i0..i0 + ni].iter_mut().zip(s) {
            let m = _mm512_mask_reduce_max_ps(valid, _mm512_mul_ps(v, sc));
            if m > *b {
                *b = m;
            }
        }
        i0 += ni;
    }
}

/// `[x, zero…]`: a short block's results in the four-wide shape.
#[target_feature(enable = "avx512f")]
#[inline]
fn pad4<const N: usize>(x: [__m512; N]) -> [__m512; 4] {
    std::array::from_fn(|i| if i < N { x[i] } else { _mm512_setzero_ps() })
}

/// The 16 scores `q_i · token_j` of each of `N` query rows against a
/// dimension-major tile (`tile[d]` = dimension `d` of 16 tokens). Two
/// accumulators per row: 2·N independent FMA chains.
///
/// # Safety
/// AVX-512F must be available; each `q` points at `tile.len()` floats.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_dots<const N: usize>(q: [*const f32; N], tile: &[__m512]) -> [__m512; N] {
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    for (d, pair) in tile.chunks_exact(2).enumerate() {
        for i in 0..N {
            // SAFETY: 2·d + 1 < tile.len(), within row i.
            let (a, b) = unsafe { (*q[i].add(2 * d), *q[i].add(2 * d + 1)) };
            acc[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(a), pair[0], acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(_mm512_set1_ps(b), pair[1], acc[i][1]);
        }
    }
    acc.map(|[a, b]| _mm512_add_ps(a, b))
}

/// Transposes a 16×16 block held as 16 row vectors: output `j` holds
/// column `j`. Three rounds of in-lane unpacks and 128-bit lane shuffles,
/// 64 instructions.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // a[2p], a[2p+1]: rows 2p and 2p+1 interleaved, per 128-bit lane.
    let mut a = [_mm512_setzero_ps(); 16];
    for p in 0..8 {
        a[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        a[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    // b[4k+m], 128-bit lane L: rows 4k..4k+3 at column 4L+m.
    let mut b = [_mm512_setzero_ps(); 16];
    let pd = _mm512_castps_pd;
    let ps = _mm512_castpd_ps;
    for k in 0..4 {
        let (x0, x1, x2, x3) = (a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3]);
        b[4 * k] = ps(_mm512_unpacklo_pd(pd(x0), pd(x2)));
        b[4 * k + 1] = ps(_mm512_unpackhi_pd(pd(x0), pd(x2)));
        b[4 * k + 2] = ps(_mm512_unpacklo_pd(pd(x1), pd(x3)));
        b[4 * k + 3] = ps(_mm512_unpackhi_pd(pd(x1), pd(x3)));
    }
    // Column 4L+m: lane L of b[m], b[4+m], b[8+m], b[12+m], in that order.
    let mut out = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let c0 = _mm512_shuffle_f32x4::<0x44>(b[m], b[4 + m]);
        let c1 = _mm512_shuffle_f32x4::<0xEE>(b[m], b[4 + m]);
        let c2 = _mm512_shuffle_f32x4::<0x44>(b[8 + m], b[12 + m]);
        let c3 = _mm512_shuffle_f32x4::<0xEE>(b[8 + m], b[12 + m]);
        out[m] = _mm512_shuffle_f32x4::<0x88>(c0, c2);
        out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(c0, c2);
        out[8 + m] = _mm512_shuffle_f32x4::<0x88>(c1, c3);
        out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(c1, c3);
    }
    out
}

/// [`super::quantize_scores`] with AVX-512 masked loads: a row of any
/// length is read in place (no copy of a short tail into a padded
/// buffer), 16 lanes per step, and each step stores 16 bytes.
///
/// # Safety
/// AVX-512F must be available; `out.len()` is a multiple of 16 and at
/// least `row.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn quantize_scores(row: &[f32], scale: f32, threshold: f32, out: &mut [i8]) -> f32 {
    let n = row.len();
    let mask = |rem: usize| -> __mmask16 {
        if rem >= 16 {
            0xFFFF
        } else {
            (1u16 << rem) - 1
        }
    };
    let neg = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut m = neg;
    for c in 0..n.div_ceil(16) {
        // SAFETY: the mask covers only lanes below n − c·16; masked-off
        // lanes are not read.
        let v = unsafe { _mm512_mask_loadu_ps(neg, mask(n - c * 16), row.as_ptr().add(c * 16)) };
        m = _mm512_max_ps(m, v);
    }
    let best = _mm512_reduce_max_ps(m);
    // The scalar reference's test: a NaN best zeroes the row as well.
    let keep = best >= threshold;
    if !keep {
        out.fill(0);
        return best;
    }
    let s = _mm512_set1_ps(scale);
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for c in 0..out.len() / 16 {
        let k = mask(n.saturating_sub(c * 16));
        // SAFETY: as above (zeros where masked off); c·16 + 16 ≤ out.len().
        unsafe {
            let v = _mm512_maskz_loadu_ps(k, row.as_ptr().add(c * 16));
            let v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, s), lo), hi);
            // The default rounding (MXCSR): to nearest, ties to even.
            let b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
            _mm_storeu_si128(out.as_mut_ptr().add(c * 16).cast(), b);
        }
    }
    best
}

/// Integer dot products for `a` (`na × dim` bytes read as unsigned, i.e.
/// i8 values offset by 128) against `b` (`nb × dim` signed bytes):
/// `out[i·nb + j] = (Σ a_i·b_j − corr[j]) · a_scale[i] · b_scale[j]`, where
/// `corr[j] = 128 · Σ b_j` undoes the offset. Four `vpdpbusd` lanes of four
/// byte products each: 64 products per instruction.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512 VNNI must be available; `dim > 0`;
/// `a.len() == na·dim`, `b.len() == nb·dim`, `a_scale.len() >= na`,
/// `b_scale.len() >= nb`, `corr.len() >= nb`, `out.len() >= na·nb`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_block_u8i8(
    a: &[u8],
    a_scale: &[f32],
    b: &[i8],
    b_scale: &[f32],
    corr: &[f32],
    dim: usize,
    out: &mut [f32],
) {
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let row = |m: *const u8, first: usize, n: usize| -> [*const u8; 4] {
        // SAFETY (pointer arithmetic): `first + i.min(n - 1) < rows`, so
        // each offset starts a whole row inside the slice.
        [0, 1, 2, 3].map(|i| unsafe { m.add((first + i.min(n - 1)) * dim) })
    };
    let full = dim / 64;
    let rem = dim % 64;
    let tail: __mmask64 = if rem == 0 { 0 } else { (1u64 << rem) - 1 };
    for i0 in (0..na).step_by(4) {
        let ni = (na - i0).min(4);
        let ap = row(a.as_ptr(), i0, ni);
        // Streaming through the rows of `a` (megabytes of centroids): ask
        // for the next block while this one is multiplied.
        for line in a[(i0 + 4).min(na) * dim..(i0 + 8).min(na) * dim].chunks(64) {
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
        let sa = [0, 1, 2, 3].map(|t| _mm_set1_ps(a_scale[i0 + t.min(ni - 1)]));
        for j0 in (0..nb).step_by(4) {
            let nj = (nb - j0).min(4);
            let bp = row(b.as_ptr().cast(), j0, nj);
            let mut acc = [_mm512_setzero_si512(); 16];
            for c in 0..full {
                // SAFETY: c·64 + 64 <= dim, within each row.
                unsafe { vnni4x4(ap, bp, c * 64, !0, &mut acc) };
            }
            if rem > 0 {
                // SAFETY: the masked loads read only each row's last `rem` bytes.
                unsafe { vnni4x4(ap, bp, full * 64, tail, &mut acc) };
            }
            let f = |x: __m512i| _mm512_cvtepi32_ps(x);
            let mut sb = [0.0f32; 4];
            let mut cb = [0.0f32; 4];
            for l in 0..4 {
                sb[l] = b_scale[j0 + l.min(nj - 1)];
                cb[l] = corr[j0 + l.min(nj - 1)];
            }
            // SAFETY: both arrays are 4 floats, one unaligned 128-bit load.
            let (sb, cb) = unsafe { (_mm_loadu_ps(sb.as_ptr()), _mm_loadu_ps(cb.as_ptr())) };
            for t in 0..ni {
                let s = hsum4(
                    f(acc[t * 4]),
                    f(acc[t * 4 + 1]),
                    f(acc[t * 4 + 2]),
                    f(acc[t * 4 + 3]),
                );
                let s = _mm_mul_ps(_mm_mul_ps(_mm_sub_ps(s, cb), sb), sa[t]);
                let mut v = [0.0f32; 4];
                // SAFETY: `v` is 4 floats, one unaligned 128-bit store.
                unsafe { _mm_storeu_ps(v.as_mut_ptr(), s) };
                let o = (i0 + t) * nb + j0;
                out[o..o + nj].copy_from_slice(&v[..nj]);
            }
        }
    }
}

/// One 64-byte step of the 4×4 `vpdpbusd` block: `acc[t·4 + l] += a[t] ·
/// b[l]` over bytes `off..off + 64`, masked by `m`.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; each pointer plus `off` must be
/// valid for the bytes `m` selects.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn vnni4x4(
    a: [*const u8; 4],
    b: [*const u8; 4],
    off: usize,
    m: __mmask64,
    acc: &mut [__m512i; 16],
) {
    // SAFETY: forwarded to the caller (masked loads read only selected bytes).
    unsafe {
        let load = |p: *const u8| _mm512_maskz_loadu_epi8(m, p.add(off).cast());
        let bv = [load(b[0]), load(b[1]), load(b[2]), load(b[3])];
        for t in 0..4 {
            let av = load(a[t]);
            for l in 0..4 {
                acc[t * 4 + l] = _mm512_dpbusd_epi32(acc[t * 4 + l], av, bv[l]);
            }
        }
    }
}
