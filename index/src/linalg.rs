//! Dense kernels: `A · Bᵀ` through `matrixmultiply`'s SGEMM, register-blocked
//! dot products (AVX2 + FMA at compile time, AVX-512 at run time when the
//! CPU has it), and helpers.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

/// Whether the AVX-512 kernels run: the CPU has AVX-512F and the
/// environment variable `TESSERA_NO_AVX512` is unset (set it to compare
/// against the AVX2 kernels). Checked once.
pub fn avx512_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var_os("TESSERA_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i·nb + j] = a_i · b_j` for the rows of `a` (`na × dim`) and `b`
/// (`nb × dim`), both row-major.
///
/// # Panics
/// If `out` is shorter than `na·nb` (a caller bug, never data).
pub fn dot_block(a: &[f32], b: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 {
        return;
    }
    let (na, nb) = (a.len() / dim, b.len() / dim);
    assert!(out.len() >= na * nb);
    #[cfg(target_arch = "x86_64")]
    if avx512_enabled() {
        // SAFETY: AVX-512F was detected at run time; the shapes were
        // derived from the slices and checked above.
        unsafe { avx512::dot_block(&a[..na * dim], &b[..nb * dim], dim, out) };
        return;
    }
    let b = &b[..nb * dim];
    let mut pairs = a.chunks_exact(2 * dim).zip(out.chunks_exact_mut(2 * nb));
    for (c, o) in &mut pairs {
        let (c0, c1) = c.split_at(dim);
        let (o0, o1) = o.split_at_mut(nb);
        dot_rows2(c0, c1, b, o0, o1);
    }
    if na % 2 == 1 {
        let last = na - 1;
        dot_rows(&a[last * dim..na * dim], b, &mut out[last * nb..na * nb]);
    }
}

/// Hints the CPU to start loading the cache line holding `x` (a no-op
/// elsewhere).
#[inline]
pub fn prefetch_line<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that never faults; the reference is
    // valid anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (x as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Hints the CPU to start loading `v` into cache (a no-op elsewhere).
#[inline]
pub fn prefetch(v: &[f32]) {
    // One hint per 64-byte line (16 floats).
    for line in v.chunks(16) {
        prefetch_line(&line[0]);
    }
}

/// Whether the AVX-512 VNNI integer kernel runs ([`avx512_enabled`] plus
/// AVX-512BW and VNNI on this CPU). Checked once.
pub fn vnni_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            avx512_enabled()
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`dot_block_i8`] runs a SIMD integer kernel: AVX-512 VNNI
/// ([`vnni_enabled`]) or AVX2 (at compile time, as the workspace targets
/// x86-64-v3). Elsewhere its plain loops are slower than the f32 kernels.
pub fn int8_kernel_enabled() -> bool {
    vnni_enabled() || cfg!(all(target_arch = "x86_64", target_feature = "avx2"))
}

/// Largest magnitude the *signed* side of [`dot_block_i8`] may hold on
/// this CPU: 127 with VNNI, 64 for the AVX2 kernel (whose 16-bit pair sums
/// must not saturate). Quantise queries with
/// `QuantRows::with_levels(.., false, signed_levels())`.
pub fn signed_levels() -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !vnni_enabled() {
        return avx2::SIGNED_LEVELS;
    }
    127.0
}

/// Rows quantised to 8 bits with one scale per row (`x ≈ scale · q`,
/// `q ∈ [−127, 127]`), for integer dot products ([`dot_block_i8`]).
/// *Unsigned* rows hold `q + 128` (the VNNI instruction multiplies
/// unsigned by signed bytes); signed rows hold `q` and `128 · Σ q`.
///
/// Each row is padded to [`QuantRows::stride`] bytes (a multiple of 32)
/// with the code of 0 (128 unsigned, 0 signed), so the kernels never run
/// a scalar tail: a padded product is `x · 0` on the signed side, and the
/// correction sums only real values.
#[derive(Debug, Clone)]
pub struct QuantRows {
    pub dim: usize,
    /// Bytes per row: `dim` rounded up to a multiple of [`QUANT_ALIGN`].
    pub stride: usize,
    pub bytes: Vec<u8>,
    pub scale: Vec<f32>,
    /// `128 · Σ q` per row (signed rows), which undoes the other side's
    /// offset.
    pub corr: Vec<f32>,
    pub unsigned: bool,
}

impl QuantRows {
    pub fn new(rows: &[f32], dim: usize, unsigned: bool) -> Self {
        Self::with_levels(rows, dim, unsigned, 127.0)
    }

    /// [`QuantRows::new`] with `q ∈ [−levels, levels]` (`levels` ≤ 127).
    pub fn with_levels(rows: &[f32], dim: usize, unsigned: bool, levels: f32) -> Self {
        let levels = levels.clamp(1.0, 127.0);
        let n = rows.len().checked_div(dim).unwrap_or(0);
        let stride = dim.next_multiple_of(QUANT_ALIGN);
        let pad = if unsigned { 128u8 } else { 0 };
        let mut q = Self {
            dim,
            stride,
            bytes: Vec::with_capacity(n * stride),
            scale: Vec::with_capacity(n),
            corr: Vec::with_capacity(n),
            unsigned,
        };
        for r in rows.chunks_exact(dim.max(1)).take(n) {
            let max = r.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let s = if max > 0.0 { max / levels } else { 1.0 };
            let mut sum = 0i32;
            for &x in r {
                let v = (x / s).round().clamp(-levels, levels) as i32;
                sum += v;
                q.bytes.push(if unsigned {
                    (v + 128) as u8
                } else {
                    v as i8 as u8
                });
            }
            q.bytes.resize(q.bytes.len() + stride - dim, pad);
            q.scale.push(s);
            q.corr.push(128.0 * sum as f32);
        }
        q
    }

    pub fn rows(&self) -> usize {
        self.scale.len()
    }

    /// Row `i`'s bytes, padding included.
    pub fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.stride..(i + 1) * self.stride]
    }
}

/// [`QuantRows`] pad their rows to a multiple of this many bytes: one
/// AVX2 register (half an AVX-512 one, whose kernel masks its tail).
pub const QUANT_ALIGN: usize = 32;

/// `out[(i − start)·nb + j] ≈ a_i · b_j` for the rows `i` of `a` in
/// `rows`, from quantised rows: `a` unsigned, `b` signed ([`QuantRows`]).
/// AVX-512 VNNI when [`vnni_enabled`], plain integer loops otherwise.
///
/// # Panics
/// On mismatched widths or signedness, rows out of range, or a short
/// `out` (caller bugs).
pub fn dot_block_i8(a: &QuantRows, rows: std::ops::Range<usize>, b: &QuantRows, out: &mut [f32]) {
    assert!(a.unsigned && !b.unsigned && a.dim == b.dim && rows.end <= a.rows());
    // The kernels run over whole padded rows (no tails).
    let (na, nb, stride) = (rows.len(), b.rows(), a.stride);
    assert!(out.len() >= na * nb);
    let (bytes, scale) = (
        &a.bytes[rows.start * stride..rows.end * stride],
        &a.scale[rows],
    );
    if na == 0 || nb == 0 || stride == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if vnni_enabled() {
        let signed: &[i8] = bytemuck::cast_slice(&b.bytes);
        // SAFETY: AVX-512F/BW/VNNI were detected at run time; the row
        // counts come from the scales, and `QuantRows::with_levels` writes
        // exactly `rows · stride` bytes and one scale and correction per row.
        unsafe { avx512::dot_block_u8i8(bytes, scale, signed, &b.scale, &b.corr, stride, out) };
        return;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if b.bytes
        .iter()
        .all(|&x| (x as i8).unsigned_abs() as f32 <= avx2::SIGNED_LEVELS)
    {
        let signed: &[i8] = bytemuck::cast_slice(&b.bytes);
        // SAFETY: AVX2 is enabled at compile time (cfg above); the row
        // counts come from the scales, `QuantRows::with_levels` writes
        // exactly `rows · stride` bytes (a multiple of 32 per row) and one
        // scale and correction per row, and the signed side was just
        // checked to be within the kernel's ±64.
        unsafe { avx2::dot_block_u8i8(bytes, scale, signed, &b.scale, &b.corr, stride, out) };
        return;
    }
    for i in 0..na {
        let x = &bytes[i * stride..(i + 1) * stride];
        for j in 0..nb {
            let s: i32 = x
                .iter()
                .zip(b.row(j))
                .map(|(&u, &v)| i32::from(u) * i32::from(v as i8))
                .sum();
            out[i * nb + j] = (s as f32 - b.corr[j]) * scale[i] * b.scale[j];
        }
    }
}

/// `best[i] = max(best[i], max_j (q_i · d_j) · scale[j])` over the rows
/// `q_i` of `query` and `d_j` of `doc` (row-major, `dim` wide): one step
/// of MaxSim over a tile of document tokens, each scaled (e.g. by its
/// inverse norm).
///
/// # Panics
/// If `scale` or `best` is shorter than the row counts (a caller bug).
pub fn maxsim_rows(query: &[f32], doc: &[f32], dim: usize, scale: &[f32], best: &mut [f32]) {
    if dim == 0 {
        return;
    }
    let (nq, nd) = (query.len() / dim, doc.len() / dim);
    assert!(scale.len() >= nd && best.len() >= nq);
    let (query, doc, best) = (&query[..nq * dim], &doc[..nd * dim], &mut best[..nq]);
    #[cfg(target_arch = "x86_64")]
    if avx512_enabled() {
        // SAFETY: AVX-512F was detected at run time; the shapes were
        // derived from the slices and checked above.
        unsafe { avx512::maxsim_rows(query, doc, dim, scale, best) };
        return;
    }
    // Query rows in blocks of 32, their dots in stack buffers: nothing is
    // allocated per call.
    const QB: usize = 32;
    let (mut b0, mut b1) = ([0.0f32; QB], [0.0f32; QB]);
    for (qb, best) in query.chunks(QB * dim).zip(best.chunks_mut(QB)) {
        let (r0, r1) = (&mut b0[..best.len()], &mut b1[..best.len()]);
        let mut pairs = doc.chunks_exact(2 * dim).zip(scale.chunks_exact(2));
        for (d, s) in &mut pairs {
            let (d0, d1) = d.split_at(dim);
            dot_rows2(d0, d1, qb, r0, r1);
            for ((b, &x), &y) in best.iter_mut().zip(r0.iter()).zip(r1.iter()) {
                let m = (x * s[0]).max(y * s[1]);
                if m > *b {
                    *b = m;
                }
            }
        }
        if nd % 2 == 1 {
            dot_rows(&doc[(nd - 1) * dim..], qb, r0);
            for (b, &x) in best.iter_mut().zip(r0.iter()) {
                let m = x * scale[nd - 1];
                if m > *b {
                    *b = m;
                }
            }
        }
    }
}

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

/// One row of query-token scores (one centroid against every query token)
/// as the i8 table of PLAID's approximate pass: `out[i] = round(row[i] ·
/// scale)` (half to even, clamped to ±127) for `i < row.len()`, 0 beyond,
/// or all 0 when the row's best score is under `threshold`. Returns the
/// best score.
///
/// # Panics
/// If `out.len()` is not `row.len()` rounded up to a multiple of 32.
pub fn quantize_scores(row: &[f32], scale: f32, threshold: f32, out: &mut [i8]) -> f32 {
    assert_eq!(out.len(), row.len().div_ceil(32) * 32);
    #[cfg(target_arch = "x86_64")]
    if avx512_enabled() {
        // SAFETY: AVX-512F was detected at run time; `out` is a whole
        // number of 32-byte blocks covering the row (checked above).
        return unsafe { avx512::quantize_scores(row, scale, threshold, out) };
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        // SAFETY: AVX2 is enabled at compile time (cfg above); the output
        // length was checked above.
        unsafe { avx2::quantize_scores(row, scale, threshold, out) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    quantize_scores_scalar(row, scale, threshold, out)
}

/// [`quantize_scores`] without SIMD (the reference the kernel is tested
/// against).
pub fn quantize_scores_scalar(row: &[f32], scale: f32, threshold: f32, out: &mut [i8]) -> f32 {
    let best = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    out.fill(0);
    if best >= threshold {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = (x * scale).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    best
}

/// Squared L2 norm.
#[inline]
pub fn norm2(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Scales `v` to unit length (left as is when zero).
pub fn normalise(v: &mut [f32]) {
    let s = inv_norm(norm2(v));
    if s != 1.0 {
        v.iter_mut().for_each(|x| *x *= s);
    }
}

/// `1/√n2`, or 1 when `n2` is 0 (a zero vector stays as it is).
#[inline]
pub fn inv_norm(n2: f32) -> f32 {
    if n2 > 0.0 {
        1.0 / n2.sqrt()
    } else {
        1.0
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
            // Four horizontal sums at a time: three `vhaddps` and one
            // add of the halves give [Σ x0, Σ x1, Σ x2, Σ x3].
            let hsum4 = |x: &[__m256]| {
                let h = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
                let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                let mut v = [0.0f32; 4];
                _mm_storeu_ps(v.as_mut_ptr(), s);
                v
            };
            [hsum4(&acc[..4]), hsum4(&acc[4..])]
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

    fn close(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(p, q)| (p - q).abs() < 1e-4 * (1.0 + q.abs()))
    }

    #[test]
    fn dot_block_and_maxsim_rows_match_plain_dots() {
        // Whichever kernel this CPU runs (AVX-512 or AVX2/portable), every
        // shape — short blocks, widths that are not a multiple of 16 —
        // agrees with one `dot` at a time.
        for dim in [1, 5, 16, 33, 48, 128, 384] {
            for (na, nb) in [
                (1, 1),
                (3, 5),
                (4, 4),
                (7, 9),
                (17, 21),
                (5, 37),
                (16, 7),
                (33, 6),
            ] {
                let a: Vec<f32> = (0..na * dim).map(|i| (i as f32 * 0.37).sin()).collect();
                let b: Vec<f32> = (0..nb * dim).map(|i| (i as f32 * 0.11).cos()).collect();
                let scale: Vec<f32> = (0..na).map(|i| 0.5 + i as f32 * 0.1).collect();
                let want: Vec<f32> = a
                    .chunks_exact(dim)
                    .flat_map(|x| b.chunks_exact(dim).map(move |y| dot(x, y)))
                    .collect();
                let mut out = vec![0.0; na * nb];
                dot_block(&a, &b, dim, &mut out);
                assert!(close(&out, &want), "dot_block dim {dim} {na}x{nb}");
                // MaxSim step with `a` as the document tile, `b` the query.
                let want_best: Vec<f32> = (0..nb)
                    .map(|j| {
                        (0..na)
                            .map(|i| want[i * nb + j] * scale[i])
                            .fold(-0.25f32, f32::max)
                    })
                    .collect();
                let mut best = vec![-0.25f32; nb];
                maxsim_rows(&b, &a, dim, &scale, &mut best);
                assert!(close(&best, &want_best), "maxsim_rows dim {dim} {na}x{nb}");
            }
        }
    }

    #[test]
    fn quantised_scores_match_the_scalar_reference() {
        for n in [1usize, 7, 8, 31, 32, 33, 64, 70] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7 + 3) as f32 * 0.61).sin()).collect();
            // Exact halves (ties go to even), values past ±127 (clamped),
            // and a threshold above the best (all zero).
            let ties: Vec<f32> = (0..n).map(|i| i as f32 - 40.5).collect();
            let cases = [
                (&row, 100.0, 0.0),
                (&row, 300.0, -1.0),
                (&row, 100.0, 2.0),
                (&ties, 1.0, -100.0),
                (&ties, 5.0, -100.0),
            ];
            for (r, scale, threshold) in cases {
                let len = n.div_ceil(32) * 32;
                let (mut a, mut b) = (vec![9i8; len], vec![9i8; len]);
                let ba = quantize_scores(r, scale, threshold, &mut a);
                let bb = quantize_scores_scalar(r, scale, threshold, &mut b);
                assert_eq!(ba, bb, "n {n}");
                assert_eq!(a, b, "n {n} scale {scale} threshold {threshold}");
            }
        }
        // Ties to even: 0.5 → 0, 1.5 → 2, −2.5 → −2.
        let mut out = [0i8; 32];
        quantize_scores(&[0.5, 1.5, -2.5], 1.0, f32::NEG_INFINITY, &mut out);
        assert_eq!(out[..4], [0, 2, -2, 0]);
    }

    #[test]
    fn quantised_dots_are_close_to_float_dots() {
        // 127 levels: VNNI or plain loops; 64: the AVX2 kernel where built.
        for (levels, dim) in [127.0, 64.0]
            .into_iter()
            .flat_map(|l| [3, 16, 48, 64, 100, 384].map(|d| (l, d)))
        {
            for (na, nb) in [(1, 1), (5, 7), (9, 21)] {
                let a: Vec<f32> = (0..na * dim).map(|i| (i as f32 * 0.37).sin()).collect();
                let b: Vec<f32> = (0..nb * dim).map(|i| (i as f32 * 0.11).cos()).collect();
                let (qa, qb) = (
                    QuantRows::new(&a, dim, true),
                    QuantRows::with_levels(&b, dim, false, levels),
                );
                let mut out = vec![0.0; na * nb];
                dot_block_i8(&qa, 0..na, &qb, &mut out);
                for i in 0..na {
                    for j in 0..nb {
                        let (x, y) = (&a[i * dim..(i + 1) * dim], &b[j * dim..(j + 1) * dim]);
                        // Exactly the integer formula (the VNNI kernel and
                        // the plain loops must agree) ...
                        let (u, v) = (&qa.row(i)[..dim], &qb.row(j)[..dim]);
                        // Padding is the code of 0 on both sides.
                        assert!(qa.row(i)[dim..].iter().all(|&p| p == 128));
                        assert!(qb.row(j)[dim..].iter().all(|&p| p == 0));
                        let n: i32 = u
                            .iter()
                            .zip(v)
                            .map(|(&p, &q)| i32::from(p) * i32::from(q as i8))
                            .sum();
                        let exact = (n as f32 - qb.corr[j]) * qa.scale[i] * qb.scale[j];
                        assert!((out[i * nb + j] - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
                        // ... and close to the float dot product.
                        let want = dot(x, y);
                        // Each side is off by at most half a step per value.
                        let tol = 0.5
                            * (qa.scale[i] * norm2(y).sqrt() + qb.scale[j] * norm2(x).sqrt())
                            * (dim as f32).sqrt()
                            + 1e-4;
                        assert!(
                            (out[i * nb + j] - want).abs() <= tol,
                            "dim {dim} ({i},{j}): {} vs {want}",
                            out[i * nb + j]
                        );
                    }
                }
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
