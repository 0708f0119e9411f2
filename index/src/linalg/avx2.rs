//! AVX2 integer kernel for the centroid scores on CPUs without AVX-512
//! VNNI (the workspace targets x86-64-v3, so AVX2 is there at compile
//! time).
//!
//! * [`dot_block_u8i8`]: unsigned bytes (`q + 128`) times signed bytes of
//!   at most 64 in magnitude, 32 products per `vpmaddubsw` + `vpmaddwd`
//!   pair. `vpmaddubsw` adds two `u8 · i8` products in 16 bits with
//!   saturation; `2 · 255 · 64 = 32,640 < 32,767`, so with the signed side
//!   quantised to ±64 ([`super::QuantRows::with_levels`]) nothing
//!   saturates and the sums are exact.

use std::arch::x86_64::*;

/// Largest magnitude of the signed side that [`dot_block_u8i8`] takes.
pub const SIGNED_LEVELS: f32 = 64.0;

/// `out[i·nb + j] = ((Σ a_i·b_j) − corr_j) · a_scale_i · b_scale_j` for
/// byte rows `a` (`na × dim`, unsigned) and `b` (`nb × dim`, signed,
/// |b| ≤ 64), `dim` a multiple of 32 (rows padded as
/// [`super::QuantRows`] pads them, so no scalar tail runs).
///
/// # Safety
/// AVX2 must be available; `dim` is a positive multiple of 32;
/// `a.len() = na·dim`, `b.len() = nb·dim`, the scales and `corr` hold one
/// entry per row, `out.len() ≥ na·nb`, and every signed byte is within ±64.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_block_u8i8(
    a: &[u8],
    a_scale: &[f32],
    b: &[i8],
    b_scale: &[f32],
    corr: &[f32],
    dim: usize,
    out: &mut [f32],
) {
    debug_assert!(dim > 0 && dim.is_multiple_of(32));
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let full = dim / 32;
    let ones = _mm256_set1_epi16(1);
    let mut i0 = 0;
    while i0 < na {
        let ni = (na - i0).min(2);
        // Rows of a short last block repeat the last row (results unused).
        let ap = [
            a[i0 * dim..].as_ptr(),
            a[(i0 + 1).min(na - 1) * dim..].as_ptr(),
        ];
        let mut j0 = 0;
        while j0 < nb {
            let nj = (nb - j0).min(4);
            let row = |l: usize| b[(j0 + l).min(nb - 1) * dim..].as_ptr();
            let bp = [row(0), row(1), row(2), row(3)];
            let mut acc = [_mm256_setzero_si256(); 8];
            for c in 0..full {
                // SAFETY: c·32 + 32 ≤ dim, inside each row (the caller's
                // lengths); unaligned loads.
                unsafe {
                    let av = [
                        _mm256_loadu_si256(ap[0].add(c * 32).cast()),
                        _mm256_loadu_si256(ap[1].add(c * 32).cast()),
                    ];
                    for l in 0..4 {
                        let bv = _mm256_loadu_si256(bp[l].add(c * 32).cast());
                        for t in 0..2 {
                            let p16 = _mm256_maddubs_epi16(av[t], bv);
                            let p32 = _mm256_madd_epi16(p16, ones);
                            acc[t * 4 + l] = _mm256_add_epi32(acc[t * 4 + l], p32);
                        }
                    }
                }
            }
            for t in 0..ni {
                let s = hsum4(&acc[t * 4..t * 4 + 4]);
                let i = i0 + t;
                if nj == 4 {
                    // The common case, four at once: (sum − corr) · a_scale · b_scale.
                    // SAFETY: j0 + 4 ≤ nb entries of `corr`, `b_scale` and
                    // row i of `out` (the caller's lengths).
                    unsafe {
                        // In the scalar path's order, so both round alike.
                        let f = _mm_sub_ps(_mm_cvtepi32_ps(s), _mm_loadu_ps(corr.as_ptr().add(j0)));
                        let f = _mm_mul_ps(f, _mm_set1_ps(a_scale[i]));
                        let f = _mm_mul_ps(f, _mm_loadu_ps(b_scale.as_ptr().add(j0)));
                        _mm_storeu_ps(out.as_mut_ptr().add(i * nb + j0), f);
                    }
                    continue;
                }
                let mut v = [0i32; 4];
                // SAFETY: `v` is 16 bytes, one unaligned 128-bit store.
                unsafe { _mm_storeu_si128(v.as_mut_ptr().cast(), s) };
                for (l, &sum) in v.iter().enumerate().take(nj) {
                    let j = j0 + l;
                    out[i * nb + j] = (sum as f32 - corr[j]) * a_scale[i] * b_scale[j];
                }
            }
            j0 += 4;
        }
        i0 += 2;
    }
}

/// The four horizontal sums of `x[0..4]` (8 lanes each).
#[target_feature(enable = "avx2")]
#[inline]
fn hsum4(x: &[__m256i]) -> __m128i {
    let h01 = _mm256_hadd_epi32(x[0], x[1]);
    let h23 = _mm256_hadd_epi32(x[2], x[3]);
    let h = _mm256_hadd_epi32(h01, h23);
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// [`super::quantize_scores`] on AVX2: the row's maximum, then its values
/// times `scale`, rounded half to even (`vroundps`), clamped to ±127 and
/// packed to bytes 32 at a time (a short last block through a zeroed
/// buffer: 0 codes as 0).
///
/// # Safety
/// AVX2 must be available; `out.len() == row.len().div_ceil(32) · 32`.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_scores(row: &[f32], scale: f32, threshold: f32, out: &mut [i8]) -> f32 {
    let n = row.len();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let full = n / 8;
    for c in 0..full {
        // SAFETY: c·8 + 8 ≤ n; unaligned load.
        m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(row.as_ptr().add(c * 8)) });
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 32 bytes, one unaligned store.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let best = lanes
        .iter()
        .chain(&row[full * 8..])
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    if best < threshold {
        out.fill(0);
        return best;
    }
    let blocks = n / 32;
    for b in 0..blocks {
        // SAFETY: b·32 + 32 ≤ n ≤ out.len(): 32 floats to read, 32 bytes
        // to write.
        unsafe {
            pack32(
                row.as_ptr().add(b * 32),
                scale,
                out.as_mut_ptr().add(b * 32),
            )
        };
    }
    if !n.is_multiple_of(32) {
        let mut tail = [0f32; 32];
        tail[..n % 32].copy_from_slice(&row[blocks * 32..]);
        // SAFETY: `tail` holds 32 floats; `out` has its last 32 bytes there.
        unsafe { pack32(tail.as_ptr(), scale, out.as_mut_ptr().add(blocks * 32)) };
    }
    best
}

/// 32 floats at `src` times `scale`, rounded half to even, clamped to ±127,
/// as bytes at `dst`.
///
/// # Safety
/// AVX2; 32 readable floats at `src`, 32 writable bytes at `dst`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pack32(src: *const f32, scale: f32, dst: *mut i8) {
    // SAFETY (each): o + 8 ≤ 32 floats, the caller's bound.
    let (a, b) = unsafe { (code8(src, scale), code8(src.add(8), scale)) };
    let (c, d) = unsafe { (code8(src.add(16), scale), code8(src.add(24), scale)) };
    // Packing interleaves the two 128-bit lanes; the permutation puts the
    // dwords (four bytes each) back in order.
    let w = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: 32 writable bytes at `dst` (the caller's bound).
    unsafe { _mm256_storeu_si256(dst.cast(), w) };
}

/// 8 floats at `src` times `scale`, rounded half to even, clamped to ±127,
/// as i32 lanes.
///
/// # Safety
/// AVX2; 8 readable floats at `src`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn code8(src: *const f32, scale: f32) -> __m256i {
    // SAFETY: 8 readable floats (the caller's bound); unaligned load.
    let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(src) }, _mm256_set1_ps(scale));
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    let r = _mm256_min_ps(
        _mm256_max_ps(r, _mm256_set1_ps(-127.0)),
        _mm256_set1_ps(127.0),
    );
    _mm256_cvtps_epi32(r)
}
