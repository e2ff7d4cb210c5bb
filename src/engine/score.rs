//! Anomaly scoring: the Gaussian tail score of a reading against the forecast made one step
//! earlier, and an anomaly likelihood in the spirit of Numenta's that compares a device's
//! recent scores with its own longer history (docs/ARCHITECTURE.md §4).
//!
//! All arithmetic is sequential per device in `f64`, so it is deterministic (§3.6).

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
    let ans = t * (-z * z + poly).exp();
    if x >= 0.0 { ans } else { 2.0 - ans }
}

/// Standard normal cumulative distribution function.
#[inline(always)]
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Score of a reading from its standardised residuals `z` (each `(x − μ) / σ` against a
/// forecast): the probability that `n` independent standard normals all stay closer to zero
/// than the largest `|z|` seen. Uniform on [0, 1] when forecasts are calibrated, close to 1
/// for a reading far outside them.
#[inline(always)]
pub fn score_from_max_z(max_abs_z: f64, n: usize) -> f64 {
    let p = erfc(max_abs_z / std::f64::consts::SQRT_2).clamp(0.0, 1.0);
    // (1 − p)ⁿ by multiplication: n is small (the features judged), and no logarithm and
    // exponential are needed for it.
    (1.0 - p).powi(i32::try_from(n).unwrap_or(i32::MAX))
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

    /// Folds in one score; returns the likelihood that the recent scores are higher than the
    /// device's normal (the normal CDF of the short-term average against the long-term
    /// distribution, judged before this score updates it).
    #[inline(always)]
    pub fn update(&self, s: &mut ScoreStats, score: f64) -> f64 {
        s.short += self.alpha_short * (score - s.short);
        let sd = s.var.max(1e-8).sqrt();
        let likelihood = normal_cdf((s.short - s.mean) / sd);
        let delta = s.short - s.mean;
        s.mean += self.alpha_long * delta;
        s.var = (1.0 - self.alpha_long) * (s.var + self.alpha_long * delta * delta);
        likelihood
    }
}

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
