//! Anomaly scoring: the Gaussian tail score of a reading against the forecast made one step
//! earlier, and an anomaly likelihood in the spirit of Numenta's that compares a device's
//! recent scores with its own longer history (docs/ARCHITECTURE.md §4).
//!
//! All arithmetic is sequential per device in `f64`, so it is deterministic (§3.6). It is
//! plain multiplications, additions, divisions and square roots, with no library call: the
//! same bits on every machine (Rust never fuses a multiplication and an addition on its own),
//! and loops of it run as vector code.

/// Complementary error function; fractional error below 1.2e-7 everywhere (Chebyshev fit).
#[inline(always)]
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ans = t * exp(-z * z + poly);
    if x >= 0.0 { ans } else { 2.0 - ans }
}

/// log₂ e, and ln 2 split in two: `n · LN2_HI` is exact for every `n` [`exp`] meets (the low
/// 21 bits of `LN2_HI`'s mantissa are zero).
const LOG2E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// Past these, `eˣ` is beyond the largest finite `f64`, or below half the smallest subnormal.
const EXP_HI: f64 = 709.8;
const EXP_LO: f64 = -746.0;
/// 1/k! for k = 12 down to 2: the Taylor series of `eʳ` to r¹², whose next term is below
/// 3e-16 of the sum for |r| ≤ ln 2 / 2.
const EXP_TAYLOR: [f64; 11] = [
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// `eˣ` in plain arithmetic: no library call and no branch, so that a loop of it runs as
/// vector code and gives the same bits on every machine. `x = n·ln 2 + r` with `n` rounded to
/// the nearest integer (by adding 1.5·2⁵², not `round`, which the baseline has no vector
/// instruction for), `eʳ` by its Taylor series, then `2ⁿ` from bits in two factors, so that a
/// result in the subnormal range is rounded once. Relative error below 1e-15 (a few ulps);
/// NaN stays NaN, `+∞` gives `+∞` and `−∞` gives 0.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // Comparisons that are false for NaN, which passes through.
    let x = if x > EXP_HI { EXP_HI } else { x };
    let x = if x < EXP_LO { EXP_LO } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_TAYLOR[1..]
        .iter()
        .fold(EXP_TAYLOR[0], |p, c| p * r + *c);
    let y = p * (r * r) + r + 1.0;
    // `t`'s low mantissa bits hold n (|n| ≤ 1077), two's complement: split in two halves,
    // each a normal power of two.
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i64;
    let half = n >> 1;
    let pow2 = |k: i64| f64::from_bits((k.wrapping_add(1023) as u64) << 52);
    y * pow2(half) * pow2(n - half)
}

/// Standard normal cumulative distribution function.
#[inline(always)]
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// One reading's score, as [`scores_from_max_z`] computes it for many: the tests' reference.
#[cfg(test)]
pub fn score_from_max_z(max_abs_z: f64, n: usize) -> f64 {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    score_of(max_abs_z, n, u32::BITS - n.leading_zeros())
}

/// The score of each reading with residuals from its standardised residuals (each `(x − μ) / σ`
/// against a forecast): the probability that `n[i]` independent standard normals all stay
/// closer to zero than the largest `|z|` seen, `max_abs_z[i]`. Uniform on [0, 1] when
/// forecasts are calibrated, close to 1 for a reading far outside them. A row without
/// residuals (`n[i] = 0`) is left as it is. One loop without a branch, which the compiler runs
/// as vector code; each row's bits are the same whatever the other rows.
#[inline(always)]
pub fn scores_from_max_z(max_abs_z: &[f64], n: &[u32], scores: &mut [f64]) {
    // The powers' loop over the bits of n, of a length known when compiled, so that it is
    // unrolled and the loop over the rows runs as vector code.
    match u32::BITS - n.iter().fold(0, |m, k| m | k).leading_zeros() {
        0..=5 => scores_with::<5>(max_abs_z, n, scores),
        6..=8 => scores_with::<8>(max_abs_z, n, scores),
        _ => scores_with::<{ u32::BITS }>(max_abs_z, n, scores),
    }
}

/// [`scores_from_max_z`] for counts `n < 2^BITS`.
#[inline(always)]
fn scores_with<const BITS: u32>(max_abs_z: &[f64], n: &[u32], scores: &mut [f64]) {
    for ((s, z), k) in scores.iter_mut().zip(max_abs_z).zip(n) {
        let v = score_of(*z, *k, BITS);
        *s = if *k > 0 { v } else { *s };
    }
}

/// The score of a largest |z| among `n` residuals, `n < 2^bits`.
#[inline(always)]
fn score_of(max_abs_z: f64, n: u32, bits: u32) -> f64 {
    let p = erfc(max_abs_z / std::f64::consts::SQRT_2).clamp(0.0, 1.0);
    // (1 − p)ⁿ by multiplication: n is small (the features judged), and no logarithm and
    // exponential are needed for it.
    pow_n(1.0 - p, n, bits)
}

/// `xⁿ` by repeated squaring, `n < 2^bits`: the multiplications, in their order, of
/// `f64::powi`'s (compiler-rt's `__powidf2`), with each of `n`'s bits chosen by a select
/// instead of a branch, so that a loop of it runs as vector code.
#[inline(always)]
fn pow_n(x: f64, n: u32, bits: u32) -> f64 {
    let (mut r, mut a) = (1.0f64, x);
    for bit in 0..bits {
        r = if (n >> bit) & 1 == 1 { r * a } else { r };
        a *= a;
    }
    r
}

/// Per-device score statistics: a short-term average of scores and the running mean and
/// variance of that average over a long window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreStats {
    /// Short-term exponentially weighted average of scores.
    pub short: f64,
    /// Long-term mean of `short`.
    pub mean: f64,
    /// Long-term variance of `short`.
    pub var: f64,
}

/// Smoothing constants derived from the configured windows.
#[derive(Debug, Clone, Copy)]
pub struct Likelihood {
    alpha_short: f64,
    alpha_long: f64,
    prior: ScoreStats,
}

impl Likelihood {
    /// Windows in readings (`short < long`).
    pub fn new(short_window: u32, long_window: u32) -> Self {
        let alpha_short = 2.0 / (short_window as f64 + 1.0);
        let alpha_long = 2.0 / (long_window as f64 + 1.0);
        // Under calibrated forecasts scores are uniform: mean 1/2, variance 1/12; the
        // short-term average then has variance (1/12)·α/(2−α).
        let prior = ScoreStats {
            short: 0.5,
            mean: 0.5,
            var: (1.0 / 12.0) * alpha_short / (2.0 - alpha_short),
        };
        Self {
            alpha_short,
            alpha_long,
            prior,
        }
    }

    /// Stats of a device never scored.
    pub fn prior(&self) -> ScoreStats {
        self.prior
    }

    /// One device's [`Self::update_all`]: the tests' reference.
    #[cfg(test)]
    pub fn update(&self, s: &mut ScoreStats, score: f64) -> f64 {
        let (mut short, mut mean, mut var) = (s.short, s.mean, s.var);
        let likelihood = self.fold(&mut short, &mut mean, &mut var, score);
        *s = ScoreStats { short, mean, var };
        likelihood
    }

    /// Folds score `scores[i]` into device `i`'s statistics, held column by column
    /// (`short[i]`, `mean[i]`, `var[i]`), and writes into `out[i]` the likelihood that its
    /// recent scores are higher than its normal (the normal CDF of the short-term average
    /// against the long-term distribution, judged before this score updates it). One loop
    /// without a branch, which the compiler runs as vector code.
    #[inline(always)]
    pub fn update_all(&self, (short, mean, var): Columns<'_>, scores: &[f64], out: &mut [f64]) {
        let rows = short.iter_mut().zip(mean.iter_mut()).zip(var.iter_mut());
        for (((short, mean), var), (score, out)) in rows.zip(scores.iter().zip(out)) {
            *out = self.fold(short, mean, var, *score);
        }
    }

    /// One device's arithmetic of [`Self::update_all`].
    #[inline(always)]
    fn fold(&self, short: &mut f64, mean: &mut f64, var: &mut f64, score: f64) -> f64 {
        *short += self.alpha_short * (score - *short);
        let sd = var.max(1e-8).sqrt();
        let likelihood = normal_cdf((*short - *mean) / sd);
        let delta = *short - *mean;
        *mean += self.alpha_long * delta;
        *var = (1.0 - self.alpha_long) * (*var + self.alpha_long * delta * delta);
        likelihood
    }
}

/// [`ScoreStats`] of many devices, column by column: short, mean, var.
pub type Columns<'a> = (&'a mut [f64], &'a mut [f64], &'a mut [f64]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_1),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_035e-12),
            (-1.0, 1.842_700_792_949_715),
        ] {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 2e-7,
                "erfc({x}) = {got}, want {want}"
            );
        }
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-7);
    }

    #[test]
    fn exp_is_within_a_few_ulps_of_the_library_and_keeps_its_edges() {
        let mut worst = 0.0f64;
        let steps = 400_000;
        for i in 0..=steps {
            // Up to the largest finite result (2¹⁰²⁴ split in two factors past 709.44).
            let x = -745.0 + 1454.78 * f64::from(i) / f64::from(steps);
            let (got, want) = (exp(x), x.exp());
            if want >= f64::MIN_POSITIVE {
                worst = worst.max((got - want).abs() / want);
            } else {
                // Subnormal results: within one step of the subnormal grid.
                assert!(
                    (got - want).abs() <= 5e-324,
                    "exp({x}) = {got:e}, want {want:e}"
                );
            }
        }
        assert!(worst < 1e-15, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f64::NAN).is_nan());
        assert_eq!(exp(f64::INFINITY), f64::INFINITY);
        assert_eq!(exp(710.0), f64::INFINITY);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(-746.0), 0.0);
        assert_eq!(exp(-745.0), (-745.0f64).exp());
    }

    #[test]
    fn the_power_by_squaring_is_powi_bit_for_bit() {
        for i in 0..2000 {
            let x = 1.0 - f64::from(i) * 4.99e-4;
            for n in 0..40u32 {
                let want = x.powi(n as i32);
                let bits = u32::BITS - n.leading_zeros();
                assert_eq!(pow_n(x, n, bits).to_bits(), want.to_bits(), "{x}^{n}");
                assert_eq!(pow_n(x, n, 32).to_bits(), want.to_bits(), "{x}^{n}");
            }
        }
    }

    #[test]
    fn the_column_forms_give_the_bits_of_one_row_at_a_time() {
        let z: Vec<f64> = (0..300).map(|i| f64::from(i) * 0.037).collect();
        // The counts of each set reach another of the squarings' lengths (5, 8, 32 bits).
        for counts in [[0u32, 4, 8], [8, 16, 0], [64, 3, 0], [3, 300, 1]] {
            let n: Vec<u32> = (0..z.len()).map(|i| counts[i % 3]).collect();
            let mut scores = vec![-1.0; z.len()];
            scores_from_max_z(&z, &n, &mut scores);
            for ((s, z), n) in scores.iter().zip(&z).zip(&n) {
                let want = if *n > 0 {
                    score_from_max_z(*z, *n as usize)
                } else {
                    -1.0
                };
                assert_eq!(s.to_bits(), want.to_bits(), "z {z}, n {n}");
            }
        }
        let lk = Likelihood::new(8, 500);
        let stats: Vec<ScoreStats> = (0..50)
            .map(|i| ScoreStats {
                short: 0.3 + f64::from(i) * 0.01,
                mean: 0.5,
                var: f64::from(i) * 1e-3,
            })
            .collect();
        let scores: Vec<f64> = (0..50).map(|i| (f64::from(i) * 0.618).fract()).collect();
        let mut short: Vec<f64> = stats.iter().map(|s| s.short).collect();
        let mut mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
        let mut var: Vec<f64> = stats.iter().map(|s| s.var).collect();
        let mut out = vec![0.0; 50];
        lk.update_all((&mut short, &mut mean, &mut var), &scores, &mut out);
        for (i, (mut s, score)) in stats.into_iter().zip(&scores).enumerate() {
            let want = lk.update(&mut s, *score);
            assert_eq!(out[i].to_bits(), want.to_bits());
            assert_eq!(
                (short[i], mean[i], var[i]),
                (s.short, s.mean, s.var),
                "row {i}"
            );
        }
    }

    #[test]
    fn score_behaves() {
        assert_eq!(score_from_max_z(0.0, 2), 0.0);
        let s = score_from_max_z(5.0, 2);
        assert!(s > 0.999_998 && s < 1.0, "{s}");
        assert!((score_from_max_z(2.0, 1) - 0.954_499_7).abs() < 1e-6);
        assert!(
            score_from_max_z(2.0, 8) < score_from_max_z(2.0, 1),
            "more features, more chances"
        );
    }

    #[test]
    fn likelihood_rises_on_sustained_high_scores_and_adapts_to_chronic_noise() {
        let lk = Likelihood::new(8, 500);
        let mut s = lk.prior();
        // Calibrated scores, deterministic low-discrepancy sequence.
        for i in 0..2000 {
            let l = lk.update(&mut s, ((i as f64) * 0.618_033_988_75).fract());
            if i > 100 {
                assert!(l < 0.999, "normal operation alarmed at {i}: {l}");
            }
        }
        let mut peak: f64 = 0.0;
        for _ in 0..10 {
            peak = peak.max(lk.update(&mut s, 0.999_9));
        }
        assert!(peak > 0.999, "sustained outliers should alarm: {peak}");
        // A chronically noisy device settles instead of alarming forever.
        for _ in 0..3000 {
            lk.update(&mut s, 0.98);
        }
        assert!(lk.update(&mut s, 0.98) < 0.9);
    }
}
