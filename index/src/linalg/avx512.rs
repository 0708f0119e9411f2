//! AVX-512 kernels, used when the CPU has AVX-512F at run time (the
//! workspace itself targets x86-64-v3, so these are compiled with
//! `#[target_feature]` and reached only through [`super::avx512_enabled`]).
//!
//! * [`dot_block`]: a 4×4 register-blocked product of row blocks (4×1–4×3
//!   for a short last block), 16 lanes
//!   per step, any width (the tail is a masked load), horizontal sums
//!   folded four at a time.
//! * [`maxsim_rows`]: the same product, scaled per document row and folded
//!   into running per-query maxima.
//! * [`decode_residual`]: PLAID residual codes to `centroid + weight`, 16
//!   dimensions per step with a lane permute instead of a table per byte,
//!   returning the squared norm; [`decode_residual_tokens`] does a tile of
//!   tokens per call (the exact re-rank's path).
//! * [`quantize_scores`]: a row of query-token scores to the i8 table of
//!   the approximate pass, read in place with masked loads.

use std::arch::x86_64::*;

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
    // SAFETY: forwarded.
    unsafe {
        match nbits {
            1 => decode_tokens_n::<1, 2>(weights, bytes, bpt, codes, centroids, dim, out, norms),
            2 => decode_tokens_n::<2, 4>(weights, bytes, bpt, codes, centroids, dim, out, norms),
            _ => decode_tokens_n::<4, 8>(weights, bytes, bpt, codes, centroids, dim, out, norms),
        }
    }
}

/// [`decode_residual_tokens`] for `NB`-bit codes (`STEP = 2·NB` bytes per
/// 16 dimensions).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn decode_tokens_n<const NB: i32, const STEP: usize>(
    weights: &[f32; 16],
    bytes: &[u8],
    bpt: usize,
    codes: &[u32],
    centroids: &[f32],
    dim: usize,
    out: &mut [f32],
    norms: &mut [f32],
) {
    // SAFETY: `weights` is exactly 16 floats.
    let w = unsafe { _mm512_loadu_ps(weights.as_ptr()) };
    let lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let mask = _mm512_set1_epi32((1 << NB) - 1);
    // Per lane: the shift of its code within the 32-bit half of the chunk
    // that holds it (only 4-bit codes reach the upper half).
    let bit = _mm512_mullo_epi32(lane, _mm512_set1_epi32(NB));
    let shift = _mm512_and_si512(bit, _mm512_set1_epi32(31));
    let upper = _mm512_cmpge_epi32_mask(bit, _mm512_set1_epi32(32));
    let chunks = dim / 16;
    for (t, &code) in codes.iter().enumerate() {
        if let Some(&next) = codes.get(t + 1) {
            let row = &centroids[next as usize * dim..(next as usize + 1) * dim];
            for line in row.chunks(16) {
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
            }
        }
        let cent = &centroids[code as usize * dim..(code as usize + 1) * dim];
        let tb = &bytes[t * bpt..t * bpt + chunks * STEP];
        let o = &mut out[t * dim..(t + 1) * dim];
        // Two accumulators for the norm: one chain of 24 dependent FMAs per
        // token would cost more than the decoding itself.
        let mut norm = [_mm512_setzero_ps(); 2];
        for c in 0..chunks {
            // SAFETY: `tb` holds `chunks·STEP` bytes; the read takes STEP
            // of them at c·STEP.
            let x: u64 = unsafe {
                let p = tb.as_ptr().add(c * STEP);
                match STEP {
                    2 => u64::from(p.cast::<u16>().read_unaligned()),
                    4 => u64::from(p.cast::<u32>().read_unaligned()),
                    _ => p.cast::<u64>().read_unaligned(),
                }
            }
            .to_le();
            let lo = _mm512_set1_epi32(x as u32 as i32);
            let words = if STEP == 8 {
                _mm512_mask_set1_epi32(lo, upper, (x >> 32) as u32 as i32)
            } else {
                lo
            };
            let idx = _mm512_and_si512(_mm512_srlv_epi32(words, shift), mask);
            let r = _mm512_permutexvar_ps(idx, w);
            // SAFETY: c·16 + 16 <= dim = cent.len() = o.len().
            unsafe {
                let v = _mm512_add_ps(_mm512_loadu_ps(cent.as_ptr().add(c * 16)), r);
                norm[c & 1] = _mm512_fmadd_ps(v, v, norm[c & 1]);
                _mm512_storeu_ps(o.as_mut_ptr().add(c * 16), v);
            }
        }
        norms[t] = _mm512_reduce_add_ps(_mm512_add_ps(norm[0], norm[1]));
    }
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
