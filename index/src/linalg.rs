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

/// Dot products of one vector `c` with four others at once: `c` is read
/// once and the four sums are independent chains, so the loop runs near the
/// FMA units' throughput (one `dot` at a time is bound by the latency of
/// its single chain). AVX2 + FMA when the build targets them (the
/// workspace builds for x86-64-v3), portable code otherwise.
#[inline]
pub fn dot4(c: &[f32], q: [&[f32]; 4]) -> [f32; 4] {
    let n = c.len();
    let q = q.map(|x| &x[..n]);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        dot4_avx2(c, q)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        q.map(|qj| dot(c, qj))
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline]
fn dot4_avx2(c: &[f32], q: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = c.len();
    let chunks = n / 8;
    // SAFETY: AVX2 and FMA are enabled at compile time (cfg above); every
    // load reads 8 floats at offset i*8 + 8 <= chunks*8 <= n, and all five
    // slices have length n (asserted by the re-slicing in `dot4`).
    let mut out = unsafe {
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (pc, p0, p1, p2, p3) = (
            c.as_ptr(),
            q[0].as_ptr(),
            q[1].as_ptr(),
            q[2].as_ptr(),
            q[3].as_ptr(),
        );
        for i in 0..chunks {
            let x = _mm256_loadu_ps(pc.add(i * 8));
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p0.add(i * 8)), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p1.add(i * 8)), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p2.add(i * 8)), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p3.add(i * 8)), a3);
        }
        let mut lanes = [[0.0f32; 8]; 4];
        _mm256_storeu_ps(lanes[0].as_mut_ptr(), a0);
        _mm256_storeu_ps(lanes[1].as_mut_ptr(), a1);
        _mm256_storeu_ps(lanes[2].as_mut_ptr(), a2);
        _mm256_storeu_ps(lanes[3].as_mut_ptr(), a3);
        lanes.map(|l| l.iter().sum::<f32>())
    };
    for (o, qj) in out.iter_mut().zip(q) {
        for i in chunks * 8..n {
            *o += c[i] * qj[i];
        }
    }
    out
}

/// `out[i] = ⟨c, q_i⟩` for the `out.len()` rows of `q` (row-major, `c.len()`
/// wide), four rows at a time.
#[inline]
pub fn dot_rows(c: &[f32], q: &[f32], out: &mut [f32]) {
    let dim = c.len();
    let mut rows = q.chunks_exact(dim);
    let mut o = out.chunks_exact_mut(4);
    for o4 in &mut o {
        let (a, b, cc, d) = (
            rows.next().expect("4 rows"),
            rows.next().expect("4 rows"),
            rows.next().expect("4 rows"),
            rows.next().expect("4 rows"),
        );
        o4.copy_from_slice(&dot4(c, [a, b, cc, d]));
    }
    for (r, qi) in o.into_remainder().iter_mut().zip(rows) {
        *r = dot(c, qi);
    }
}

/// [`dot4`] for two vectors at once: eight independent chains, and each
/// loaded query lane feeds two FMAs.
#[inline]
pub fn dot2x4(c0: &[f32], c1: &[f32], q: [&[f32]; 4]) -> [[f32; 4]; 2] {
    let n = c0.len();
    let c1 = &c1[..n];
    let q = q.map(|x| &x[..n]);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        use std::arch::x86_64::*;
        let chunks = n / 8;
        // SAFETY: AVX2 and FMA are enabled at compile time (cfg above);
        // every load reads 8 floats at offset i*8 + 8 <= n, and all six
        // slices have length n (re-sliced above).
        let mut out = unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            let pq = q.map(<[f32]>::as_ptr);
            let (pa, pb) = (c0.as_ptr(), c1.as_ptr());
            for i in 0..chunks {
                let a = _mm256_loadu_ps(pa.add(i * 8));
                let b = _mm256_loadu_ps(pb.add(i * 8));
                for j in 0..4 {
                    let y = _mm256_loadu_ps(pq[j].add(i * 8));
                    acc[j] = _mm256_fmadd_ps(a, y, acc[j]);
                    acc[4 + j] = _mm256_fmadd_ps(b, y, acc[4 + j]);
                }
            }
            let mut lanes = [[0.0f32; 8]; 8];
            for (l, a) in lanes.iter_mut().zip(acc) {
                _mm256_storeu_ps(l.as_mut_ptr(), a);
            }
            let sums = lanes.map(|l| l.iter().sum::<f32>());
            [
                [sums[0], sums[1], sums[2], sums[3]],
                [sums[4], sums[5], sums[6], sums[7]],
            ]
        };
        for (o, c) in out.iter_mut().zip([c0, c1]) {
            for (oj, qj) in o.iter_mut().zip(q) {
                for i in chunks * 8..n {
                    *oj += c[i] * qj[i];
                }
            }
        }
        out
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        [dot4(c0, q), dot4(c1, q)]
    }
}

/// [`dot_rows`] for two vectors `c0`, `c1` at once.
#[inline]
pub fn dot_rows2(c0: &[f32], c1: &[f32], q: &[f32], out0: &mut [f32], out1: &mut [f32]) {
    let dim = c0.len();
    let mut rows = q.chunks_exact(dim);
    let mut o0 = out0.chunks_exact_mut(4);
    let mut o1 = out1.chunks_exact_mut(4);
    for (a4, b4) in (&mut o0).zip(&mut o1) {
        let r = [
            rows.next().expect("4 rows"),
            rows.next().expect("4 rows"),
            rows.next().expect("4 rows"),
            rows.next().expect("4 rows"),
        ];
        let [x, y] = dot2x4(c0, c1, r);
        a4.copy_from_slice(&x);
        b4.copy_from_slice(&y);
    }
    for ((r0, r1), qi) in o0
        .into_remainder()
        .iter_mut()
        .zip(o1.into_remainder().iter_mut())
        .zip(rows)
    {
        *r0 = dot(c0, qi);
        *r1 = dot(c1, qi);
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

    #[test]
    fn blocked_dots_match_single_dots() {
        for dim in [1, 7, 8, 33, 384] {
            for nq in [1, 3, 4, 5, 9] {
                let q: Vec<f32> = (0..nq * dim).map(|i| (i as f32 * 0.37).sin()).collect();
                let c0: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.11).cos()).collect();
                let c1: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.23).sin()).collect();
                let want0: Vec<f32> = q.chunks_exact(dim).map(|r| dot(&c0, r)).collect();
                let want1: Vec<f32> = q.chunks_exact(dim).map(|r| dot(&c1, r)).collect();
                let (mut a, mut b) = (vec![0.0; nq], vec![0.0; nq]);
                dot_rows(&c0, &q, &mut a);
                let close = |x: &[f32], y: &[f32]| {
                    x.iter()
                        .zip(y)
                        .all(|(p, q)| (p - q).abs() < 1e-4 * (1.0 + q.abs()))
                };
                assert!(close(&a, &want0), "dot_rows dim {dim} nq {nq}");
                dot_rows2(&c0, &c1, &q, &mut a, &mut b);
                assert!(
                    close(&a, &want0) && close(&b, &want1),
                    "dot_rows2 dim {dim} nq {nq}"
                );
            }
        }
    }
}
