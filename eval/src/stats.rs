//! Paired significance tests over per-query values of two systems, the
//! percentiles latency reports quote, and the mean ± std of seeds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Mean and sample standard deviation (0 for fewer than two values; the
/// mean of none is 0).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// The `p`-quantile (0 ≤ p ≤ 1) of `values` by nearest rank: the value at
/// position `round((n − 1)·p)` of the sorted values (p = 0.5 of an even
/// count: the upper middle). NaN when there are none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    percentiles(values, &[p])[0]
}

/// [`percentile`] at each of `ps`, sorting `values` once.
pub fn percentiles(values: &[f64], ps: &[f64]) -> Vec<f64> {
    if values.is_empty() {
        return vec![f64::NAN; ps.len()];
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    ps.iter()
        .map(|p| v[((v.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize])
        .collect()
}

/// The median and the 99th percentile (latency summaries), sorting once.
pub fn p50_p99(values: &[f64]) -> (f64, f64) {
    let p = percentiles(values, &[0.5, 0.99]);
    (p[0], p[1])
}

/// Outcome of a paired test of `b − a`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PairedTest {
    /// Number of paired queries.
    pub n: usize,
    /// Mean of `b − a`.
    pub mean_diff: f64,
    /// Student's t statistic (0 when every difference is equal).
    pub t: f64,
    /// Two-sided p-value of the paired t-test.
    pub p_t: f64,
    /// Two-sided p-value of the paired randomisation (sign-flip) test.
    pub p_rand: f64,
}

/// Both tests on paired values. `trials` sign-flip permutations with a fixed
/// seed (so reports are reproducible).
pub fn paired(a: &[f64], b: &[f64], trials: usize, seed: u64) -> PairedTest {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let n = d.len();
    let mean = if n == 0 {
        0.0
    } else {
        d.iter().sum::<f64>() / n as f64
    };
    let (t, p_t) = if n < 2 {
        (0.0, 1.0)
    } else {
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        if var <= 0.0 {
            if mean == 0.0 {
                (0.0, 1.0)
            } else {
                (f64::INFINITY.copysign(mean), 0.0)
            }
        } else {
            let t = mean / (var / n as f64).sqrt();
            (t, t_two_sided(t, (n - 1) as f64))
        }
    };
    let observed = mean.abs();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut extreme = 0usize;
    for _ in 0..trials {
        let s: f64 = d
            .iter()
            .map(|&x| if rng.gen::<bool>() { x } else { -x })
            .sum();
        if (s / n.max(1) as f64).abs() >= observed - 1e-12 {
            extreme += 1;
        }
    }
    let p_rand = (extreme + 1) as f64 / (trials + 1) as f64;
    PairedTest {
        n,
        mean_diff: mean,
        t,
        p_t,
        p_rand,
    }
}

/// Two-sided p-value of Student's t with `df` degrees of freedom:
/// `I_{df/(df+t²)}(df/2, 1/2)`.
pub fn t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// Regularised incomplete beta `I_x(a, b)` (continued fraction, Lentz).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    // One step of the modified Lentz recurrence for coefficient `aa`.
    let step = |aa: f64, c: &mut f64, d: &mut f64| -> f64 {
        *d = 1.0 + aa * *d;
        if d.abs() < TINY {
            *d = TINY;
        }
        *c = 1.0 + aa / *c;
        if c.abs() < TINY {
            *c = TINY;
        }
        *d = 1.0 / *d;
        *d * *c
    };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        h *= step(aa, &mut c, &mut d);
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        let del = step(aa, &mut c, &mut d);
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), (7.0, 0.0));
        assert_eq!(mean_std(&[]), (0.0, 0.0));
    }

    #[test]
    fn percentile_is_the_nearest_rank_of_the_sorted_values() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 5.0);
        assert_eq!(percentile(&[2.0, 1.0], 0.5), 2.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(percentiles(&v, &[0.0, 0.5, 0.99]), vec![1.0, 3.0, 5.0]);
        assert!(percentiles(&[], &[0.5, 0.9]).iter().all(|x| x.is_nan()));
        assert_eq!(p50_p99(&v), (3.0, 5.0));
    }

    #[test]
    fn t_distribution_matches_tables() {
        // scipy.stats.t.sf(|t|, df) * 2
        for (t, df, p) in [
            (2.0, 10.0, 0.073_388_034_770_740_3),
            (2.228_138_851_964_938, 10.0, 0.05),
            (1.0, 1.0, 0.5),
            (3.5, 157.0, 0.000_605_720_894_744_191_5),
            (0.0, 5.0, 1.0),
        ] {
            let got = t_two_sided(t, df);
            assert!((got - p).abs() < 1e-6, "t={t} df={df}: {got} vs {p}");
        }
    }

    #[test]
    fn identical_systems_are_not_significant_and_shifted_ones_are() {
        let a: Vec<f64> = (0..50).map(|i| (i % 7) as f64 / 7.0).collect();
        let r = paired(&a, &a, 1000, 1);
        assert_eq!((r.mean_diff, r.p_t), (0.0, 1.0));
        assert!(r.p_rand > 0.99);
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + 0.1 + 0.01 * (i % 3) as f64)
            .collect();
        let r = paired(&a, &b, 1000, 1);
        assert!(
            r.mean_diff > 0.1 && r.p_t < 1e-6 && r.p_rand < 0.01,
            "{r:?}"
        );
    }
}
