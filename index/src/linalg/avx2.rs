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
/// |b| ≤ 64): the same contract as the AVX-512 VNNI kernel.
///
/// # Safety
/// AVX2 must be available; `a.len() = na·dim`, `b.len() = nb·dim`, the
/// scales and `corr` hold one entry per row, `out.len() ≥ na·nb`, and
/// every signed byte is within ±64.
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
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let full = dim / 32;
    let ones = _mm256_set1_epi16(1);
    let mut i0 = 0;
    while i0 < na {
        let ni = (na - i0).min(2);
        // Rows of a short last block repeat the last row (results unused).
        let ap = [0, 1].map(|t| a[(i0 + t.min(ni - 1)) * dim..].as_ptr());
        let mut j0 = 0;
        while j0 < nb {
            let nj = (nb - j0).min(4);
            let bp = [0, 1, 2, 3].map(|l| b[(j0 + l.min(nj - 1)) * dim..].as_ptr());
            let mut acc = [_mm256_setzero_si256(); 8];
            for c in 0..full {
                // SAFETY: c·32 + 32 ≤ dim, inside each row (the caller's
                // lengths); unaligned loads.
                unsafe {
                    let av = ap.map(|p| _mm256_loadu_si256(p.add(c * 32).cast()));
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
                for (l, &sum) in s.iter().enumerate().take(nj) {
                    let j = j0 + l;
                    let mut dotv = sum;
                    // The width's tail (dim not a multiple of 32).
                    for d in full * 32..dim {
                        dotv += i32::from(a[i * dim + d]) * i32::from(b[j * dim + d]);
                    }
                    out[i * nb + j] = (dotv as f32 - corr[j]) * a_scale[i] * b_scale[j];
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
fn hsum4(x: &[__m256i]) -> [i32; 4] {
    let h01 = _mm256_hadd_epi32(x[0], x[1]);
    let h23 = _mm256_hadd_epi32(x[2], x[3]);
    let h = _mm256_hadd_epi32(h01, h23);
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let mut v = [0i32; 4];
    // SAFETY: `v` is 16 bytes, one unaligned 128-bit store.
    unsafe { _mm_storeu_si128(v.as_mut_ptr().cast(), s) };
    v
}
