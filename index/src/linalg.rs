//! Dense kernels: `A · Bᵀ` through `matrixmultiply`'s SGEMM, and helpers.

/// `out[m×n] = A[m×k] · B[n×k]ᵀ`, all row-major and contiguous.
///
/// # Panics
/// If a slice is shorter than its stated shape (a caller bug, never data).
pub fn gemm_abt(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the assert above guarantees every index sgemm touches is in
    // bounds: A is m×k with strides (k, 1); Bᵀ is viewed as k×n with strides
    // (1, k) over B's n×k storage; C is m×n with strides (n, 1). The three
    // slices do not overlap (`out` is a unique borrow).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Dot product of two equal-length slices, in 8 independent lanes so the
/// compiler vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}

/// Squared L2 norm.
#[inline]
pub fn norm2(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Scales `v` to unit length (left as is when zero).
pub fn normalise(v: &mut [f32]) {
    let n = norm2(v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let (m, n, k) = (5, 7, 19);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; m * n];
        gemm_abt(&a, m, &b, n, k, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want = dot(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]);
                assert!((out[i * n + j] - want).abs() < 1e-4);
            }
        }
    }
}
