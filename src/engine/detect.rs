//! Anomaly detection on top of the forecaster: the evidence of each reading, its calibration
//! against normal data, the alarm policy and the per-feature explanation.
//!
//! These pieces of evidence are judged for every reading once a device is warm:
//!
//! - **forecast surprise**: the largest squared standardised residual of the reading against the
//!   forecasts made one step and `horizon` steps earlier (computed in the engine). It sees
//!   onsets and spikes, but a one-step forecaster follows a fault that persists;
//! - **deviation from the device's normal**: every device keeps a slow baseline of its
//!   normalised readings (a running mean over its first readings, then an exponential average
//!   over `anomaly.baseline_window` readings that is *frozen while the device is alarmed*), a
//!   short exponential average of the reading's departure from that baseline, and the normal
//!   spread of that average, learnt over the device's first `anomaly.learning_readings`
//!   readings and adapted slowly while it is healthy. A fault that persists keeps its departure
//!   for as long as it lasts (in the spirit of MSET and of multivariate EWMA control charts);
//! - **joint deviation**: the Mahalanobis distance of all features' standardised departures
//!   together ([`Joint`]), with their covariance measured on the fleet's normal data, so that
//!   several sensors each moving a little, or sensors that normally move together parting
//!   ways, add up to evidence that no single feature shows.
//!
//! (The forecast piece comes in two parts, the surprise and the drift of the one-step
//! residuals, so four p-values in all; the drift is judged only with `anomaly.evidence =
//! "all"`, see [`crate::config::Evidence`].) Each piece is turned into a *tail probability*: the
//! share of normal readings (measured in training, [`TailTable`]) at least as extreme, with
//! the deep tail, beyond the top 2 % of the samples, a fitted generalised Pareto tail
//! ([`Gpd`]) that errs wide. The reading's p-value is the smallest of the pieces' times their number
//! (Bonferroni, [`combine`]), and `score = 1 − p`. The sensitivity knob is the **target
//! false-alarm rate** `r`: a reading is *over the line* when `p ≤ r`. The [`AlarmPolicy`]
//! turns readings over the line into alarms with hysteresis: it raises after `min_duration`
//! readings over the line in a row, holds while the fault lasts, and clears after `cooldown`
//! readings in a row that are quiet (`p > r · clear_factor`). Baselines learn from a reading in
//! proportion to how healthy it is ([`health_weight`]).
//!
//! All arithmetic is sequential per device, so outputs do not depend on batching (§3.6).

use serde::{Deserialize, Serialize};

/// Smallest variance of a feature's smoothed departure (normalised units²): a sensor that
/// did not move while its device learnt still gets a finite scale.
pub const VARIANCE_FLOOR: f64 = 1e-6;
/// A healthy reading's squared departure is capped at this many variances before it updates
/// the device's normal spread, so that the onset of a fault does not teach it that faults
/// are normal: one reading widens the spread by at most (cap − 1) / `baseline_window`, 1 %
/// at the default window. (At 25, 8 % a reading, a fault that builds up over a few dozen
/// readings widened the spread as fast as it grew and was never alarmed: on SKAB 5 of 34
/// faults more were missed.)
const VARIANCE_CAP: f64 = 4.0;

/// Empirical upper tail of a non-negative statistic on normal data: `values[k]` is the value
/// exceeded by a share `levels[k]` of the samples. Beyond the last level, where too few samples
/// lie to read the tail off, it decays as a generalised Pareto distribution fitted to the top
/// of the samples ([`Gpd`], peaks over threshold); in tables fitted before that existed, it is
/// extrapolated exponentially.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TailTable {
    /// Exceedance probabilities, decreasing.
    pub levels: Vec<f64>,
    /// Statistic values, non-decreasing.
    pub values: Vec<f64>,
    /// Samples the table was fitted on.
    pub samples: u64,
    /// The deep tail, beyond the table's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpd: Option<Gpd>,
    /// The interpolation's knots, cached ([`TailTable::prepare`]).
    #[serde(skip)]
    knots: Knots,
}

/// A tail table's knots: `(0, 0)`, then each level's value and surprisal (−ln level), so that
/// a look-up below the first level interpolates like any other; and the slope of each span,
/// from knot `k` to `k + 1` (one fewer than the knots; a span with no width, between two
/// equal values, is never used: its slope may be infinite or NaN).
#[derive(Debug, Clone, Default)]
struct Knots {
    values: Vec<f64>,
    surprisals: Vec<f64>,
    slopes: Vec<f64>,
}

/// The knots are a cache of the table's levels and values, which the table compares itself:
/// a table equals its copy whether or not either was [`TailTable::prepare`]d (and a NaN slope
/// of a span with no width does not make a table unequal to itself).
impl PartialEq for Knots {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Knots {
    fn of(levels: &[f64], values: &[f64]) -> Self {
        let values: Vec<f64> = std::iter::once(0.0).chain(values.iter().copied()).collect();
        let surprisals: Vec<f64> = std::iter::once(0.0)
            .chain(levels.iter().map(|l| -l.ln()))
            .collect();
        let slopes = values
            .windows(2)
            .zip(surprisals.windows(2))
            .map(|(v, s)| (s[1] - s[0]) / (v[1] - v[0]))
            .collect();
        Self {
            values,
            surprisals,
            slopes,
        }
    }

    /// The surprisal at `x` on span `j` (`values[j] < x ≤ values[j + 1]`): the same
    /// arithmetic wherever a look-up is made. At a knot it may differ from the knot's
    /// surprisal by an ulp.
    #[inline(always)]
    fn along(&self, j: usize, x: f64) -> f64 {
        self.surprisals[j] + (x - self.values[j]) * self.slopes[j]
    }
}

impl TailTable {
    /// Fits the table to samples of the statistic (non-finite samples are ignored). Levels go
    /// down by a factor 10^¼ from 0.5 for as long as at least 10 samples lie beyond them.
    /// `None` when fewer than 100 samples are given.
    pub fn fit(samples: &mut Vec<f64>) -> Option<Self> {
        samples.retain(|v| v.is_finite());
        if samples.len() < 100 {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let (mut levels, mut values) = (Vec::new(), Vec::new());
        let mut k = 0;
        loop {
            let level = 0.5 * 10f64.powf(-(k as f64) / 4.0);
            if level * n < 10.0 {
                break;
            }
            // Value exceeded by `level · n` samples.
            let idx = ((1.0 - level) * n).floor() as usize;
            let v = samples[idx.min(samples.len() - 1)];
            let v = values.last().map_or(v, |&last: &f64| v.max(last));
            levels.push(level);
            values.push(v);
            k += 1;
        }
        let mut t = Self {
            levels,
            values,
            samples: samples.len() as u64,
            gpd: Gpd::fit(samples),
            knots: Knots::default(),
        };
        t.prepare();
        Some(t)
    }

    /// Caches the interpolation's knots (called once a table is loaded or fitted; the lookup
    /// works without it, slower).
    pub fn prepare(&mut self) {
        self.knots = Knots::of(&self.levels, &self.values);
    }

    /// The cached knots, where [`Self::prepare`] made them for the table as it is.
    fn prepared(&self) -> Option<&Knots> {
        (self.knots.values.len() == self.values.len() + 1).then_some(&self.knots)
    }

    /// Why the table cannot be read (`None`: it can): its levels must be probabilities going
    /// down and its values finite, non-negative and not going down, one per level.
    pub fn defect(&self) -> Option<&'static str> {
        let (l, v) = (&self.levels, &self.values);
        if l.len() != v.len() {
            Some("has a different number of levels and values")
        } else if l.iter().any(|p| !(*p > 0.0 && *p <= 1.0)) || l.windows(2).any(|w| w[1] >= w[0]) {
            Some("has levels that are not probabilities going down")
        } else if v.iter().any(|x| !(x.is_finite() && *x >= 0.0))
            || v.windows(2).any(|w| w[1] < w[0])
        {
            Some("has values that are not finite, non-negative and non-decreasing")
        } else {
            None
        }
    }

    /// Surprisal −ln p of a statistic `x`, p the share of normal readings at least as extreme:
    /// interpolated linearly in surprisal between the table's levels (p log-linearly), from 0
    /// at `x = 0` to the first level, and beyond the table along its fitted deep tail or, in
    /// tables without one, along the last two levels (exponential tail). Costs no logarithm or
    /// exponential within the table once [`Self::prepare`]d, and no branch that depends on
    /// where in the table `x` falls.
    pub fn surprisal(&self, x: f64) -> f64 {
        if self.values.is_empty() || x.is_nan() || x <= 0.0 {
            return 0.0;
        }
        let unprepared;
        let knots = match self.prepared() {
            Some(k) => k,
            None => {
                unprepared = Knots::of(&self.levels, &self.values);
                &unprepared
            }
        };
        let v = &knots.values;
        let last = v.len() - 1;
        if x > v[last] {
            return self.beyond(x, knots);
        }
        // The span `x` falls in (the first knot, 0, lies below it): the knots below `x`
        // counted rather than searched for ([`Self::defect`]: the values do not go down); at
        // most `last - 1`. `v[j] < x <= v[j + 1]`: the span is not empty.
        let j = v[1..].iter().fold(0, |n, b| n + usize::from(*b < x));
        knots.along(j, x)
    }

    /// [`Self::surprisal`] of every statistic in `xs`, into `out` (as long), bit for bit: the
    /// same operations in the same order, four statistics at a time, each knot compared with
    /// four statistics at once (in AVX2 intrinsics where the CPU has AVX2, since the compiler
    /// vectorised the portable form the other way round). The statistics outside the table
    /// (not positive, NaN or beyond its last level) go through [`Self::surprisal`] itself.
    pub fn surprisals(&self, xs: &[f64], out: &mut [f64]) {
        assert_eq!(xs.len(), out.len(), "one surprisal per statistic");
        if self.values.is_empty() || self.prepared().is_none() {
            for (o, x) in out.iter_mut().zip(xs) {
                *o = self.surprisal(*x);
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, just checked.
            unsafe { lanes_avx2(self, xs, out) };
            return;
        }
        lanes(self, xs, out);
    }

    /// The surprisal of `x` beyond the table's last level (the last of `knots`): where the
    /// samples are too few to read off, the fitted deep tail's decay, anchored at the last
    /// level so that the tail stays continuous; in a table without one, the slope of the last
    /// two levels.
    fn beyond(&self, x: f64, knots: &Knots) -> f64 {
        let (v, s) = (&knots.values, &knots.surprisals);
        let last = v.len() - 1;
        if let Some(g) = &self.gpd {
            return s[last] + (g.surprisal(x) - g.surprisal(v[last]));
        }
        let slope = if last > 1 && v[last] > v[last - 1] {
            knots.slopes[last - 1]
        } else {
            // One usable level: one more unit of surprisal for every multiple of its value.
            1.0 / v[last].max(f64::MIN_POSITIVE)
        };
        s[last] + slope.max(0.0) * (x - v[last])
    }

    /// Share of normal readings whose statistic is at least `x` (`exp(−surprisal)`).
    #[inline(always)]
    pub fn survival(&self, x: f64) -> f64 {
        (-self.surprisal(x)).exp()
    }
}

/// Statistics looked up together in [`TailTable::surprisals`].
const LANES: usize = 4;

/// [`TailTable::surprisals`] of a prepared table, [`LANES`] statistics at a time.
#[inline(always)]
fn lanes(t: &TailTable, xs: &[f64], out: &mut [f64]) {
    let v = &t.knots.values;
    let top = v[v.len() - 1];
    lanes_by(t, xs, out, |x| {
        // As in `surprisal`: the span of each statistic, its knots below it counted.
        let mut j = [0u64; LANES];
        for b in &v[1..] {
            for l in 0..LANES {
                j[l] += u64::from(*b < x[l]);
            }
        }
        let inside = (0..LANES).fold(0, |m, l| m | (u32::from(x[l] > 0.0 && x[l] <= top) << l));
        (j, inside)
    });
}

/// The statistics of `xs` [`LANES`] at a time: `spans` counts each one's knots below it and
/// says which lie inside the table (a bit each); each is then read along its span, and those
/// outside the table (rare) go through [`TailTable::surprisal`], as does the remainder.
#[inline(always)]
fn lanes_by(
    t: &TailTable,
    xs: &[f64],
    out: &mut [f64],
    spans: impl Fn(&[f64]) -> ([u64; LANES], u32),
) {
    let knots = &t.knots;
    let last = knots.values.len() - 1;
    let mut xc = xs.chunks_exact(LANES);
    let mut oc = out.chunks_exact_mut(LANES);
    for (x, o) in (&mut xc).zip(&mut oc) {
        let (j, inside) = spans(x);
        for l in 0..LANES {
            o[l] = knots.along((j[l] as usize).min(last - 1), x[l]);
        }
        if inside != (1 << LANES) - 1 {
            for l in 0..LANES {
                // Outside the table: the value above is meaningless there.
                if inside & (1 << l) == 0 {
                    o[l] = t.surprisal(x[l]);
                }
            }
        }
    }
    for (o, x) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
        *o = t.surprisal(*x);
    }
}

/// [`lanes`] with its count of knots in AVX2 instructions, written out: the compiler ran
/// `lanes`' count as vector code over the knots, one statistic at a time, with a horizontal sum
/// for each, where it is meant to run over the four statistics, one knot at a time. The same
/// comparisons, then each statistic's span read as `lanes` reads it (gathering the span's
/// knots instead was no faster on a Xeon, and gathers are slow on some CPUs): the same bits.
///
/// # Safety
///
/// The CPU must have AVX2; `t` must be prepared.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2(t: &TailTable, xs: &[f64], out: &mut [f64]) {
    use std::arch::x86_64::*;
    const _: () = assert!(LANES == 4, "four f64 to an AVX2 vector");
    let v = &t.knots.values;
    assert!(v.len() >= 2, "a prepared table has a knot above 0");
    let (top, zero) = (_mm256_set1_pd(v[v.len() - 1]), _mm256_setzero_pd());
    lanes_by(t, xs, out, |x| {
        // SAFETY: `x` holds four f64.
        let xv = unsafe { _mm256_loadu_pd(x.as_ptr()) };
        // The knots below each statistic, counted: a comparison's all-ones lane is −1.
        let mut j = _mm256_setzero_si256();
        for b in &v[1..] {
            let below = _mm256_cmp_pd::<_CMP_LT_OQ>(_mm256_set1_pd(*b), xv);
            j = _mm256_sub_epi64(j, _mm256_castpd_si256(below));
        }
        let mut span = [0u64; LANES];
        // SAFETY: `span` holds four u64.
        unsafe { _mm256_storeu_si256(span.as_mut_ptr().cast(), j) };
        let inside = _mm256_movemask_pd(_mm256_and_pd(
            _mm256_cmp_pd::<_CMP_GT_OQ>(xv, zero),
            _mm256_cmp_pd::<_CMP_LE_OQ>(xv, top),
        ));
        (span, inside as u32)
    });
}

/// Exceedances of the deep tail's threshold: a share this large of the samples (so that the
/// fit rests on many of them; SPOT uses the same 2 %) ...
const GPD_SHARE: f64 = 0.02;
/// ... but never fewer than this many: with fewer samples no deep tail is fitted.
const GPD_MIN_EXCEEDANCES: usize = 30;

/// The deep tail of a statistic beyond a threshold `u`, as a generalised Pareto distribution
/// (Pickands–Balkema–de Haan: the excesses over a high threshold of almost any distribution
/// are near one), fitted to the excesses by probability-weighted moments (Hosking & Wallis,
/// 1987), as SPOT does (Siffer et al., KDD 2017) with maximum likelihood:
/// `P(X > x) = level · (1 + shape · (x − u) / scale)^(−1/shape)`.
///
/// It errs towards heavy tails, since a line drawn too tight pages people: the shape used is
/// never below 0, so a bounded tail is never assumed and no line is drawn where the samples
/// merely ran out; the tail decays at most exponentially, as the statistics (squares of
/// near-Gaussian quantities) do. (Widening further by one standard error of the shape,
/// `(1 + shape)/√k`, was measured: on the demo fleet it hid a noise burst, and is not done.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gpd {
    /// The threshold `u`.
    pub threshold: f64,
    /// Share of the samples above it.
    pub level: f64,
    /// Scale of the excesses.
    pub scale: f64,
    /// Shape used (the estimate, within [0, 1/2]).
    pub shape: f64,
    /// The estimate itself, for reports.
    pub shape_estimate: f64,
    /// Excesses the fit rests on.
    pub exceedances: u64,
}

impl Gpd {
    /// Fits the tail beyond the top `GPD_SHARE` (2 %) of `sorted` (ascending, finite). `None`
    /// with fewer than `GPD_MIN_EXCEEDANCES` excesses or a degenerate tail (all equal).
    pub fn fit(sorted: &[f64]) -> Option<Self> {
        let n = sorted.len();
        let k = ((n as f64 * GPD_SHARE).round() as usize).max(GPD_MIN_EXCEEDANCES);
        if k * 5 > n {
            return None;
        }
        let threshold = sorted[n - k - 1];
        let excess: Vec<f64> = sorted[n - k..].iter().map(|x| x - threshold).collect();
        let kf = k as f64;
        // Probability-weighted moments of the excesses (ascending): a0 = E[Y],
        // a1 = E[Y (1 − F(Y))] with the plotting position (k − i) / (k − 1).
        let a0 = excess.iter().sum::<f64>() / kf;
        let a1 = excess
            .iter()
            .enumerate()
            .map(|(i, y)| y * (kf - 1.0 - i as f64) / (kf - 1.0))
            .sum::<f64>()
            / kf;
        let d = a0 - 2.0 * a1;
        if !(a0 > 0.0 && d > 0.0) {
            return None;
        }
        // Hosking's k is −shape.
        let estimate = 2.0 - a0 / d;
        // Never a bounded tail, and at most 1/2 (a tail so heavy that its variance does not
        // exist is no normal operation). The scale is the one that keeps the mean excess the
        // data show, `scale / (1 − shape)`: where the shape is clamped, the fitted tail still
        // agrees with the samples where they are and only decays more slowly beyond them.
        let shape = estimate.clamp(0.0, 0.5);
        let scale = a0 * (1.0 - shape);
        (scale.is_finite() && scale > 0.0 && estimate.is_finite()).then_some(Self {
            threshold,
            level: kf / n as f64,
            scale,
            shape,
            shape_estimate: estimate,
            exceedances: k as u64,
        })
    }

    /// −ln of the share of normal readings at least `x` (`x` above the threshold).
    pub fn surprisal(&self, x: f64) -> f64 {
        let y = (x - self.threshold).max(0.0) / self.scale;
        let tail = if self.shape > 1e-9 {
            (self.shape * y).ln_1p() / self.shape
        } else {
            y
        };
        -self.level.ln() + tail
    }
}

/// Tail tables of both pieces of evidence, one per feature, measured on the training data
/// when the model was trained; stored in the model's metadata. Per feature, because sensors
/// differ: a slowly drifting temperature departs from its recent level far more often than a
/// flow meter does, and each is judged against its own normal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Forecast surprise per feature (squared standardised residual).
    pub forecast: Vec<TailTable>,
    /// Drift of the one-step residuals per feature (squared standardised short average).
    pub drift: Vec<TailTable>,
    /// Deviation from the device's normal per feature (squared standardised departure).
    pub deviation: Vec<TailTable>,
    /// Joint deviation over all features (absent in models calibrated before it existed:
    /// they are judged feature by feature only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joint: Option<Joint>,
    /// The detector settings the tails were measured with; the tails describe the evidence
    /// only under these settings.
    pub measured_with: MeasuredWith,
}

/// Share of the diagonal mixed into the covariance of the standardised departures before it
/// is inverted: keeps the precision matrix well conditioned when two sensors moved together
/// in training (a redundant pair) or the samples were few against the number of features.
const JOINT_SHRINKAGE: f64 = 0.1;

/// Joint evidence of the deviation from a device's normal: the Mahalanobis distance
/// `zᵀ P z` of the reading's standardised departures `z` (one per feature, each its smoothed
/// departure over its own learnt spread), `P` the inverse of their covariance across the
/// fleet's normal readings. Small departures of several sensors in the same reading add up,
/// and so do departures that break the way sensors normally move together, which the
/// per-feature pieces (judged by their largest member) cannot see. Its tail on normal data is
/// measured like the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Joint {
    /// Inverse of the shrunk covariance of the standardised departures, row-major `F × F`.
    pub precision: Vec<f64>,
    /// Tail of the distance on normal data.
    pub tail: TailTable,
}

impl Joint {
    /// Fits the precision matrix and the distance's tail to `n` normal readings' standardised
    /// departures (`z`, row-major `n × nf`, signed). `None` with fewer than 100 finite rows
    /// or a covariance that cannot be inverted.
    pub fn fit(z: &[f64], nf: usize) -> Option<Self> {
        if nf == 0 {
            return None;
        }
        let rows: Vec<&[f64]> = z
            .chunks_exact(nf)
            .filter(|r| r.iter().all(|v| v.is_finite()))
            .collect();
        if rows.len() < 100 {
            return None;
        }
        // Second moments about zero: a departure is measured from the device's normal, so a
        // systematic lean in training belongs in the spread, not subtracted from it.
        let mut cov = vec![0.0; nf * nf];
        for r in &rows {
            for i in 0..nf {
                for j in 0..nf {
                    cov[i * nf + j] += r[i] * r[j];
                }
            }
        }
        let n = rows.len() as f64;
        for i in 0..nf {
            for j in 0..nf {
                let v = cov[i * nf + j] / n;
                cov[i * nf + j] = if i == j {
                    v.max(VARIANCE_FLOOR)
                } else {
                    (1.0 - JOINT_SHRINKAGE) * v
                };
            }
        }
        let precision = invert_spd(&cov, nf)?;
        let mut joint = Self {
            precision,
            tail: TailTable {
                levels: Vec::new(),
                values: Vec::new(),
                samples: 0,
                gpd: None,
                knots: Knots::default(),
            },
        };
        let mut d: Vec<f64> = rows.iter().map(|r| joint.distance(r)).collect();
        joint.tail = TailTable::fit(&mut d)?;
        Some(joint)
    }

    /// The terms `zᵢ (P z)ᵢ` of `zᵀ P z`, one per feature.
    fn terms<'a>(&'a self, z: &'a [f64]) -> impl Iterator<Item = f64> + 'a {
        let nf = z.len();
        self.precision
            .chunks_exact(nf.max(1))
            .zip(z)
            .map(move |(row, zi)| zi * row.iter().zip(z).map(|(p, v)| p * v).sum::<f64>())
    }

    /// `zᵀ P z`.
    pub fn distance(&self, z: &[f64]) -> f64 {
        self.terms(z).sum::<f64>().max(0.0)
    }

    /// The distance, as [`Self::distance`], with each feature's share of it, `|zᵢ (P z)ᵢ|`,
    /// written into `out` (for the explanation) in the same pass.
    pub fn parts(&self, z: &[f64], out: &mut [f64]) -> f64 {
        let mut d = 0.0;
        for (t, o) in self.terms(z).zip(out.iter_mut()) {
            d += t;
            *o = t.abs();
        }
        d.max(0.0)
    }

    /// [`Self::parts`] of many readings, bit for bit: `z` and `out` hold one reading's `nf`
    /// values after another, `d` its distance. [`JOINT_LANES`] readings are taken in lockstep,
    /// their departures turned into columns (`zt`, scratch), so that each step of the products
    /// with `P` runs for all of them as vector code: one reading's product is a chain of
    /// dependent additions (they are added in the same order, so rounded the same), which
    /// leaves the core waiting where readings go one at a time.
    #[inline(always)]
    pub fn parts_of_rows(
        &self,
        nf: usize,
        (z, out): (&[f64], &mut [f64]),
        d: &mut [f64],
        zt: &mut Vec<[f64; JOINT_LANES]>,
    ) {
        assert!(
            z.len() == nf * d.len() && out.len() == z.len(),
            "nf values a reading"
        );
        if d.is_empty() {
            return;
        }
        assert_eq!(
            self.precision.len(),
            nf * nf,
            "one precision row per feature"
        );
        const L: usize = JOINT_LANES;
        for ((z, out), d) in z
            .chunks(L * nf)
            .zip(out.chunks_mut(L * nf))
            .zip(d.chunks_mut(L))
        {
            // Missing lanes of the last chunk compute on zeros and are not written.
            zt.clear();
            zt.extend(
                (0..nf).map(|f| std::array::from_fn(|l| z.get(l * nf + f).copied().unwrap_or(0.0))),
            );
            let mut dist = [0.0f64; L];
            for (i, row) in self.precision.chunks_exact(nf).enumerate() {
                // `(P z)ᵢ` as `terms` sums it: from its first product on (`Sum` starts at
                // −0, which adds nothing to it), in the features' order.
                let mut dot: [f64; L] = std::array::from_fn(|l| row[0] * zt[0][l]);
                for (p, zj) in row[1..].iter().zip(&zt[1..]) {
                    for l in 0..L {
                        dot[l] += p * zj[l];
                    }
                }
                for l in 0..L {
                    let t = zt[i][l] * dot[l];
                    dist[l] += t;
                    if let Some(o) = out.get_mut(l * nf + i) {
                        *o = t.abs();
                    }
                }
            }
            for (d, v) in d.iter_mut().zip(dist) {
                *d = v.max(0.0);
            }
        }
    }
}

/// Readings whose joint distances are computed together ([`Joint::parts_of_rows`]): two AVX2
/// vectors of `f64`, two independent chains.
pub const JOINT_LANES: usize = 8;

/// Inverse of a symmetric positive definite `n × n` matrix (row-major) through its Cholesky
/// factor; `None` when it is not positive definite.
fn invert_spd(a: &[f64], n: usize) -> Option<Vec<f64>> {
    // A = L Lᵀ.
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    // A⁻¹ = L⁻ᵀ L⁻¹, column by column: solve L y = eⱼ, then Lᵀ x = y.
    let mut inv = vec![0.0; n * n];
    let mut y = vec![0.0; n];
    for j in 0..n {
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
            y[i] = (if i == j { 1.0 } else { 0.0 } - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[k * n + i] * inv[k * n + j]).sum();
            inv[i * n + j] = (y[i] - s) / l[i * n + i];
        }
    }
    Some(inv)
}

/// Detector settings that shape the evidence's distribution.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeasuredWith {
    /// `engine.warmup`.
    pub warmup: u32,
    /// `anomaly.learning_readings`.
    pub learning_readings: u32,
    /// `anomaly.baseline_window`.
    pub baseline_window: u32,
    /// Weight of a new departure (from `anomaly.smoothing_window`).
    pub smoothing: f64,
    /// Weight of a new residual in the drift average (from `anomaly.drift_window`).
    pub drift_smoothing: f64,
    /// `anomaly.calibration_window`'s weight of a new residual.
    pub calibration_alpha: f32,
}

impl Calibration {
    /// Checks that every table can be read ([`TailTable::defect`]); the error names the first
    /// that cannot.
    pub fn check_tables(&self) -> Result<(), String> {
        let pieces = [
            ("forecast", &self.forecast),
            ("drift", &self.drift),
            ("deviation", &self.deviation),
        ];
        for (piece, tables) in pieces {
            for (f, t) in tables.iter().enumerate() {
                if let Some(why) = t.defect() {
                    return Err(format!("the {piece} tail table of feature {f} {why}"));
                }
            }
        }
        match self.joint.as_ref().and_then(|j| j.tail.defect()) {
            Some(why) => Err(format!("the joint deviation's tail table {why}")),
            None => Ok(()),
        }
    }

    /// Prepares every table for fast lookups ([`TailTable::prepare`]).
    pub fn prepare(&mut self) {
        for t in self
            .forecast
            .iter_mut()
            .chain(self.drift.iter_mut())
            .chain(self.deviation.iter_mut())
            .chain(self.joint.iter_mut().map(|j| &mut j.tail))
        {
            t.prepare();
        }
    }
}

impl MeasuredWith {
    /// Same settings (the derived weights compared to 1e-9, as they pass through JSON).
    pub fn agrees_with(&self, other: &Self) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12);
        (self.warmup, self.learning_readings, self.baseline_window)
            == (other.warmup, other.learning_readings, other.baseline_window)
            && close(self.smoothing, other.smoothing)
            && close(self.drift_smoothing, other.drift_smoothing)
            && close(
                self.calibration_alpha as f64,
                other.calibration_alpha as f64,
            )
    }
}

/// The surprisals (−ln p-value) of one feature's squared statistics `q` in many readings
/// (their sign, a direction, is ignored: `q` is left holding their absolute values), written
/// into `out`: from the feature's tail table or, without one, the two-sided Gaussian tail.
#[inline(always)]
pub fn column_surprisals(table: Option<&TailTable>, q: &mut [f64], out: &mut [f64]) {
    for x in q.iter_mut() {
        *x = x.abs();
    }
    match table {
        Some(t) => t.surprisals(q, out),
        None => {
            for (o, x) in out.iter_mut().zip(q.iter()) {
                *o = -super::score::erfc((x / 2.0).sqrt())
                    .max(f64::MIN_POSITIVE)
                    .ln();
            }
        }
    }
}

/// The largest of the `magnitude`s of `v` (each +0 or more, or NaN), NaNs passed over, and
/// +0 where none is left: what folding `max` over them from 0, one after another, gives.
///
/// Over numbers of +0 and more, `max` is associative and commutative and no magnitude is −0,
/// so any order of the fold gives the same bits. It runs in [`MAGNITUDE_LANES`] independent
/// lanes, then a tree of `max`: one after another, each `max` (three instructions, to pass
/// NaNs over) waited for the one before, and held a row's loop over its features to one
/// feature at a time.
#[inline(always)]
pub fn largest_magnitude<T: Copy + PartialOrd + Default>(v: &[T], magnitude: impl Fn(T) -> T) -> T {
    // `x > m` is false for a NaN `x`, which leaves `m`: the NaN is passed over.
    let larger = |m: T, x: T| if x > m { x } else { m };
    let mut lanes = [T::default(); MAGNITUDE_LANES];
    let mut chunks = v.chunks_exact(MAGNITUDE_LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = larger(*m, magnitude(x));
        }
    }
    for (m, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *m = larger(*m, magnitude(x));
    }
    let mut width = MAGNITUDE_LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] = larger(lanes[i], lanes[i + width]);
        }
    }
    lanes[0]
}

/// The lanes of [`largest_magnitude`]: a power of two, the features of most models.
pub const MAGNITUDE_LANES: usize = 8;

/// A reading's p-value for one piece of evidence from the largest of its `nf` features'
/// surprisals (the running maximum from 0, one feature after another): the smallest
/// per-feature p-value times the number of features (Bonferroni), at most 1.
#[inline(always)]
pub fn piece_p(max_s: f64, nf: usize) -> f64 {
    ((-max_s).exp() * nf as f64).min(1.0)
}

/// Each feature's share of a reading's evidence, signed by the direction of its departure:
/// its surprisal over the sum of surprisals. Zero everywhere when nothing is surprising.
#[inline(always)]
pub fn explain(surprisal: &[f64], direction: &[f64], out: &mut [f32]) {
    let total: f64 = surprisal.iter().sum();
    if total.is_nan() || total <= 0.0 {
        out.fill(0.0);
        return;
    }
    // One plain pass without a branch, which the compiler runs as vector code.
    for ((o, s), d) in out.iter_mut().zip(surprisal).zip(direction) {
        *o = (s / total).copysign(*d) as f32;
    }
}

/// Detection settings for one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectSettings {
    /// Target false-alarm rate: share of normal readings allowed over the line.
    pub false_alarm_rate: f64,
    /// Readings over the line in a row that raise an alarm.
    pub min_duration: u32,
    /// Quiet readings in a row that clear an alarm.
    pub cooldown: u32,
    /// A reading is quiet when its p-value exceeds `false_alarm_rate · clear_factor`.
    pub clear_factor: f64,
    /// Readings (after warm-up) over which a device learns the spread of its departures.
    pub learning: u32,
    /// Readings in the baseline's exponential average.
    pub baseline_window: u32,
    /// Weight of a new departure in its short exponential average.
    pub smoothing: f64,
    /// Which evidence is judged.
    pub evidence: crate::config::Evidence,
    /// Weight of a new one-step residual in its short average (drift evidence).
    pub drift_smoothing: f64,
    /// A raised alarm also counts readings as quiet once their surprisal is below this
    /// fraction of the alarm's peak; when it clears that way the device's baseline restarts
    /// from where it settled (0: off).
    pub settle_fraction: f64,
    /// Longest an alarm is held (readings); then the device's state is taken as its new
    /// normal and the baseline restarts there (0: no limit).
    pub max_alarm: u32,
    /// See `anomaly.stuck_factor` (0: off).
    pub stuck_factor: f64,
    /// See `anomaly.stuck_min_readings`.
    pub stuck_min_readings: u32,
    /// See `anomaly.silent_factor` (0: off).
    pub silent_factor: f64,
}

impl DetectSettings {
    /// From the `[anomaly]` section, with the stream's own rate when it sets one.
    pub fn from_config(
        a: &crate::config::AnomalyConfig,
        stream: &crate::config::StreamConfig,
    ) -> Self {
        Self {
            false_alarm_rate: stream.rate(a),
            min_duration: a.min_duration,
            cooldown: a.cooldown,
            clear_factor: a.clear_factor,
            learning: a.learning_readings,
            baseline_window: a.baseline_window,
            smoothing: 2.0 / (a.smoothing_window as f64 + 1.0),
            evidence: a.evidence,
            drift_smoothing: 2.0 / (a.drift_window as f64 + 1.0),
            settle_fraction: a.settle_fraction,
            max_alarm: a.max_alarm_readings,
            stuck_factor: a.stuck_factor,
            stuck_min_readings: a.stuck_min_readings,
            silent_factor: a.silent_factor,
        }
    }
}

/// One device's deviation state for `features` features: baseline, smoothed departure and
/// its learnt variance, per feature, in a caller-owned slice of `3·F` floats.
pub struct Deviation<'a> {
    /// `[baseline; F] [smoothed departure; F] [variance; F]`.
    pub state: &'a mut [f32],
}

/// Evidence of one reading from the deviation piece.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviationStat {
    /// Largest squared standardised departure (after learning), else `None`.
    pub stat: Option<f64>,
}

impl Deviation<'_> {
    /// Starts a device at its first reading `x` (normalised).
    #[inline(always)]
    pub fn start(&mut self, x: &[f32]) {
        let nf = x.len();
        self.state[..nf].copy_from_slice(x);
        self.state[nf..3 * nf].iter_mut().for_each(|v| *v = 0.0);
    }

    /// Folds the departure of reading `x` into the smoothed departure; `n` is the number of
    /// readings the device had before this one (≥ 1). Returns the statistic once learnt, and
    /// writes each feature's squared standardised departure, signed by its direction, into
    /// `parts`.
    #[inline(always)]
    pub fn observe(
        &mut self,
        set: &DetectSettings,
        warmup: u32,
        n: u32,
        x: &[f32],
        parts: &mut [f64],
    ) -> DeviationStat {
        let nf = x.len();
        let lambda = set.smoothing;
        let learn_from = warmup;
        let learnt_at = warmup.saturating_add(set.learning);
        let (base, rest) = self.state.split_at_mut(nf);
        let (ewm, var) = rest.split_at_mut(nf);
        let (base, ewm, var, parts) = (
            &base[..nf],
            &mut ewm[..nf],
            &mut var[..nf],
            &mut parts[..nf],
        );
        // Running mean of e² over the learning readings: the weight of this one.
        let learning = (n >= learn_from && n < learnt_at).then(|| (n - learn_from + 1) as f64);
        // Plain loops over the features, the branch and the running maximum out of them, so
        // that the compiler runs them (divisions included) as vector code. `parts` holds each
        // smoothed departure until the last one turns it into its statistic.
        for f in 0..nf {
            let d = x[f] as f64 - base[f] as f64;
            let e = lambda * d + (1.0 - lambda) * ewm[f] as f64;
            ewm[f] = e as f32;
            parts[f] = e;
        }
        if let Some(k) = learning {
            for f in 0..nf {
                let e = parts[f];
                var[f] = (var[f] as f64 + (e * e - var[f] as f64) / k) as f32;
            }
        }
        for f in 0..nf {
            let e = parts[f];
            let q = e * e / (var[f] as f64).max(VARIANCE_FLOOR);
            parts[f] = q.copysign(e);
        }
        // |q| is q (never negative), and NaN where q is: passed over.
        let worst = largest_magnitude(parts, f64::abs);
        DeviationStat {
            stat: (n >= learnt_at).then_some(worst),
        }
    }

    /// Moves the baseline to where the device's readings settled (baseline plus smoothed
    /// departure) and forgets the departure.
    #[inline(always)]
    pub fn rebase(&mut self) {
        let nf = self.state.len() / 3;
        let (base, rest) = self.state.split_at_mut(nf);
        for f in 0..nf {
            base[f] += rest[f];
            rest[f] = 0.0;
        }
    }

    /// Moves the baseline towards reading `x` and (after learning) the spread towards the
    /// current departure, in proportion to how healthy the reading is (`weight`, from
    /// [`health_weight`]): fully while it is quiet, not at all once it is over the line or the
    /// device is alarmed, and partly in between. A fault that persists is never learnt as
    /// normal, and the onset of one passes the in-between band too fast to be learnt, while a
    /// device whose normal moves slowly spends long enough there to be followed. (An alarm
    /// that lasts ends through [`AlarmPolicy`]'s settle rule or maximum duration, after
    /// which the engine restarts the baseline where the device settled.)
    #[inline(always)]
    pub fn adapt(&mut self, set: &DetectSettings, warmup: u32, n: u32, x: &[f32], weight: f64) {
        if weight <= 0.0 {
            return;
        }
        let nf = x.len();
        let window = set.baseline_window.max(1) as f64;
        let alpha = weight / ((n as f64) + 1.0).min(window);
        let learnt = n >= warmup.saturating_add(set.learning);
        let (base, rest) = self.state.split_at_mut(nf);
        let (ewm, var) = rest.split_at_mut(nf);
        // Plain loops, the branch out of them, for vector code (zipped: no bound to check).
        for (b, x) in base.iter_mut().zip(x) {
            let d = *x as f64 - *b as f64;
            *b = (*b as f64 + alpha * d) as f32;
        }
        if learnt {
            for (var, e) in var.iter_mut().zip(ewm.iter()) {
                let v = (*var as f64).max(VARIANCE_FLOOR);
                let e = *e as f64;
                let e2 = (e * e).min(VARIANCE_CAP * v);
                *var = (v + weight * (e2 - v) / window) as f32;
            }
        }
    }
}

/// How far a reading with p-value `p` counts as healthy for the baselines: 0 while the device
/// is alarmed or the reading is over the line (`p ≤ rate`), 1 once it is quiet
/// (`p > rate · clear_factor`), and in between log-linearly in `p`.
#[inline(always)]
pub fn health_weight(alarmed: bool, p: f64, rate: f64, clear_factor: f64) -> f64 {
    if alarmed || p <= rate {
        return 0.0;
    }
    let quiet = rate * clear_factor;
    if p > quiet || clear_factor <= 1.0 {
        return 1.0;
    }
    ((p / rate).ln() / clear_factor.ln()).clamp(0.0, 1.0)
}

/// What the alarm policy did at a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Edge {
    /// No change.
    #[default]
    None,
    /// An alarm was raised; it started at the first reading of the run over the line.
    Raised {
        /// Time of the first reading over the line.
        start: i64,
    },
    /// An alarm cleared.
    Cleared {
        /// When it was raised (first reading over the line).
        start: i64,
        /// Time of its last reading that was not quiet.
        end: i64,
    },
}

/// Per-device alarm state: hysteresis between readings over the line and quiet ones.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AlarmState {
    /// An alarm is raised.
    pub active: bool,
    /// Readings over the line in a row (while not active).
    pub over_run: u32,
    /// Quiet readings in a row (while active).
    pub quiet_run: u32,
    /// Time of the first reading of the current run over the line, or of the alarm.
    pub start: i64,
    /// Time of the last reading that was not quiet.
    pub last_loud: i64,
    /// Highest score since the alarm (or its run) started.
    pub peak: f32,
    /// Highest settle level (the device's distance from its normal, see
    /// [`AlarmPolicy::step`]) since the alarm (or its run) started.
    pub peak_level: f32,
    /// Readings since the alarm was raised.
    pub held: u32,
}

/// The alarm policy: raise after `min_duration` readings over the line in a row, hold, clear
/// after `cooldown` quiet readings in a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmPolicy {
    /// See [`DetectSettings::min_duration`].
    pub min_duration: u32,
    /// See [`DetectSettings::cooldown`].
    pub cooldown: u32,
    /// See [`DetectSettings::settle_fraction`].
    pub settle_fraction: f64,
    /// See [`DetectSettings::max_alarm`].
    pub max_alarm: u32,
}

impl AlarmPolicy {
    /// Folds in one reading at time `ts` judged `j`, with `level` how far the device is from
    /// its normal (a non-negative statistic). While an alarm is raised, a reading also counts
    /// as quiet when its level has fallen below `settle_fraction` of the alarm's peak (the
    /// condition that raised it is over, though the device may have settled elsewhere).
    #[inline(always)]
    pub fn step(&self, s: &mut AlarmState, ts: i64, j: Judgement, score: f32, level: f64) -> Edge {
        let Judgement {
            over,
            extreme,
            quiet,
        } = j;
        let level = level as f32;
        if !s.active {
            if over {
                if s.over_run == 0 {
                    s.start = ts;
                    s.peak = 0.0;
                    s.peak_level = 0.0;
                }
                s.over_run += 1;
                s.peak = s.peak.max(score);
                s.peak_level = s.peak_level.max(level);
                s.last_loud = ts;
                if extreme || s.over_run >= self.min_duration.max(1) {
                    s.active = true;
                    s.quiet_run = 0;
                    s.over_run = 0;
                    s.held = 0;
                    return Edge::Raised { start: s.start };
                }
            } else {
                s.over_run = 0;
            }
            return Edge::None;
        }
        s.peak = s.peak.max(score);
        s.peak_level = s.peak_level.max(level);
        s.held = s.held.saturating_add(1);
        if self.max_alarm > 0 && s.held >= self.max_alarm {
            // Held for the longest an alarm may last: the device's state is its new normal.
            s.active = false;
            s.quiet_run = 0;
            return Edge::Cleared {
                start: s.start,
                end: ts,
            };
        }
        let settled = (level as f64) < self.settle_fraction * s.peak_level as f64;
        if quiet || settled {
            s.quiet_run += 1;
            if s.quiet_run >= self.cooldown.max(1) {
                s.active = false;
                s.quiet_run = 0;
                return Edge::Cleared {
                    start: s.start,
                    end: s.last_loud,
                };
            }
        } else {
            s.quiet_run = 0;
            s.last_loud = ts;
        }
        Edge::None
    }
}

/// Combines the p-values of the pieces of evidence present into the reading's p-value: the
/// smallest, times the number present (Bonferroni), at most 1; 1 when none is present.
#[inline(always)]
pub fn combine(p: &[Option<f64>]) -> f64 {
    // A plain loop: the iterator chain it replaces cost more than the arithmetic.
    let (mut present, mut smallest) = (0u32, f64::NAN);
    for v in p.iter().flatten() {
        smallest = if present == 0 { *v } else { smallest.min(*v) };
        present += 1;
    }
    if present == 0 {
        1.0
    } else {
        (smallest * f64::from(present)).min(1.0)
    }
}

/// How one reading stands against the alarm line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Over the line (p-value ≤ the target false-alarm rate).
    pub over: bool,
    /// So far over it (p-value ≤ rate²: as unlikely as two independent readings over the
    /// line) that it raises an alarm at once, without waiting for the minimum duration.
    pub extreme: bool,
    /// Well below the line (p-value > rate · clear_factor).
    pub quiet: bool,
}

impl Judgement {
    /// From the three tests.
    pub fn new(over: bool, extreme: bool, quiet: bool) -> Self {
        Self {
            over,
            extreme: extreme && over,
            quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Survival of the largest of `n` squared standard normals.
    fn gaussian_max_sq_survival(x: f64, n: usize) -> f64 {
        1.0 - super::super::score::score_from_max_z(x.max(0.0).sqrt(), n.max(1))
    }

    fn policy() -> AlarmPolicy {
        AlarmPolicy {
            min_duration: 3,
            cooldown: 4,
            settle_fraction: 0.0,
            max_alarm: 0,
        }
    }

    /// Runs the policy over a pattern: `#` over the line, `.` quiet, `-` in between.
    fn run(pattern: &str) -> (String, Vec<Edge>) {
        let p = policy();
        let mut s = AlarmState::default();
        let mut active = String::new();
        let mut edges = Vec::new();
        for (t, c) in pattern.chars().enumerate() {
            let e = p.step(
                &mut s,
                t as i64,
                Judgement::new(c == '#' || c == '!', c == '!', c == '.'),
                0.9,
                1.0,
            );
            if e != Edge::None {
                edges.push(e);
            }
            active.push(if s.active { 'A' } else { '_' });
        }
        (active, edges)
    }

    #[test]
    fn raises_only_after_the_minimum_duration() {
        let (a, e) = run("..##..###...");
        assert_eq!(a, "________AAAA", "two in a row do not raise, three do");
        assert_eq!(e, vec![Edge::Raised { start: 6 }]);
    }

    #[test]
    fn a_lone_spike_pages_nobody() {
        let (a, e) = run("....#.....#.#.....");
        assert!(!a.contains('A'));
        assert!(e.is_empty());
    }

    #[test]
    fn holds_while_the_fault_lasts_and_clears_after_the_cooldown() {
        // Over the line, then in-between readings (neither over nor quiet) hold it, a short
        // quiet spell does not clear it, four quiet readings do.
        let (a, e) = run("###--#-...#....##");
        assert_eq!(a, "__AAAAAAAAAAAA___");
        assert_eq!(
            e,
            vec![
                Edge::Raised { start: 0 },
                Edge::Cleared { start: 0, end: 10 }
            ]
        );
    }

    #[test]
    fn no_flapping_around_the_line() {
        // A fault hovering around the line: over, in-between, over ... raises once and stays.
        let pattern: String = "###".to_string() + &"-#-#--#".repeat(20) + "....";
        let (a, e) = run(&pattern);
        assert_eq!(e.len(), 2, "one raise, one clear: {e:?}");
        assert!(a[2..a.len() - 1].chars().all(|c| c == 'A'));
    }

    #[test]
    fn an_alarm_held_for_its_longest_duration_ends() {
        let p = AlarmPolicy {
            max_alarm: 10,
            ..policy()
        };
        let mut s = AlarmState::default();
        let mut edges = Vec::new();
        for t in 0..20 {
            let e = p.step(&mut s, t, Judgement::new(true, false, false), 0.99, 30.0);
            if e != Edge::None {
                edges.push((t, e));
            }
        }
        assert_eq!(
            edges,
            vec![
                (2, Edge::Raised { start: 0 }),
                (12, Edge::Cleared { start: 0, end: 12 }),
                (15, Edge::Raised { start: 13 }),
            ]
        );
    }

    #[test]
    fn an_alarm_clears_once_its_condition_settles_far_below_its_peak() {
        let p = AlarmPolicy {
            min_duration: 2,
            cooldown: 3,
            settle_fraction: 0.2,
            max_alarm: 0,
        };
        let mut s = AlarmState::default();
        // Raised by readings at level 50, then the device sits at level 9 (still over a line
        // at, say, 7): under a fifth of the peak, so it clears after the cool-down.
        let mut edges = Vec::new();
        for (t, sur) in [50.0, 50.0, 40.0, 9.0, 9.0, 9.0, 9.0].iter().enumerate() {
            let e = p.step(
                &mut s,
                t as i64,
                Judgement::new(true, false, false),
                0.99,
                *sur,
            );
            if e != Edge::None {
                edges.push(e);
            }
        }
        assert_eq!(
            edges,
            vec![
                Edge::Raised { start: 0 },
                Edge::Cleared { start: 0, end: 2 }
            ]
        );
        // Without the settle rule the same readings hold the alarm.
        let q = AlarmPolicy {
            settle_fraction: 0.0,
            ..p
        };
        let mut s = AlarmState::default();
        for (t, sur) in [50.0, 50.0, 40.0, 9.0, 9.0, 9.0, 9.0].iter().enumerate() {
            q.step(
                &mut s,
                t as i64,
                Judgement::new(true, false, false),
                0.99,
                *sur,
            );
        }
        assert!(s.active);
    }

    #[test]
    fn many_statistics_look_up_the_bits_of_one_at_a_time() {
        let mut samples: Vec<f64> = (1..5_000)
            .map(|i| -2.0 * (i as f64 * 0.618_033_988_75).fract().max(1e-12).ln())
            .collect();
        let with_tail = TailTable::fit(&mut samples).expect("enough samples");
        let mut without_tail = with_tail.clone();
        without_tail.gpd = None;
        let unprepared = TailTable {
            knots: Knots::default(),
            ..with_tail.clone()
        };
        // Knots themselves, points between and beyond them, and what lies outside the table.
        let mut xs: Vec<f64> = with_tail.values.clone();
        xs.extend((0..3_001).map(|i| i as f64 * 0.01));
        xs.extend([
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            f64::MIN_POSITIVE,
        ]);
        // A table with one level, and one whose values repeat (spans with no width, whose
        // slopes are infinite or NaN and must never be used).
        let one_level = {
            let mut t = TailTable {
                levels: vec![0.5],
                values: vec![1.5],
                samples: 100,
                gpd: None,
                knots: Knots::default(),
            };
            t.prepare();
            t
        };
        let repeating = {
            let mut t = TailTable {
                levels: vec![0.5, 0.3, 0.1, 0.05, 0.01],
                values: vec![0.0, 1.0, 1.0, 1.0, 4.0],
                samples: 1000,
                gpd: None,
                knots: Knots::default(),
            };
            t.prepare();
            t
        };
        xs.extend([0.5, 1.0, 1.0f64.next_up(), 1.5, 3.9, 4.0, 4.0f64.next_up()]);
        for t in [
            &with_tail,
            &without_tail,
            &unprepared,
            &one_level,
            &repeating,
        ] {
            // Every length, so that every remainder of the four-at-a-time loop is met.
            for n in [0, 1, 3, 4, 5, 7, xs.len()] {
                let mut out = vec![0.0; n];
                t.surprisals(&xs[..n], &mut out);
                for (x, got) in xs.iter().zip(&out) {
                    let want = t.surprisal(*x);
                    assert_eq!(got.to_bits(), want.to_bits(), "x = {x}: {got} vs {want}");
                }
            }
        }
        // Portable code too, where this CPU would take the AVX2 path.
        let mut out = vec![0.0; xs.len()];
        lanes(&with_tail, &xs, &mut out);
        for (x, got) in xs.iter().zip(&out) {
            assert_eq!(got.to_bits(), with_tail.surprisal(*x).to_bits(), "x = {x}");
        }
    }

    #[test]
    fn tail_table_round_trips_its_levels_and_extrapolates_monotonically() {
        // Squared standard-normal-like samples from a deterministic sequence.
        let mut s: Vec<f64> = (1..20_000)
            .map(|i| {
                let u = (i as f64 * 0.618_033_988_75).fract().max(1e-12);
                // Exponential with mean 2 (χ²₂).
                -2.0 * u.ln()
            })
            .collect();
        let t = TailTable::fit(&mut s).expect("enough samples");
        assert!(t.levels.len() >= 10);
        assert!(t.gpd.is_some(), "a deep tail");
        for (l, v) in t.levels.iter().zip(&t.values) {
            let p = t.survival(*v);
            assert!((p / l - 1.0).abs() < 1e-9, "{v}: {p} vs {l}");
            // χ²₂ survival is exp(−x/2).
            assert!(((-v / 2.0).exp() / l - 1.0).abs() < 0.1, "{v}: {l}");
        }
        let mut last = 1.0;
        for i in 0..400 {
            let p = t.survival(i as f64 * 0.1);
            assert!(p <= last && p > 0.0, "monotone and positive");
            last = p;
        }
        // The far tail, beyond every sample, is near the true exp(−x/2) = 3e-7, a little wide.
        let p = t.survival(30.0);
        assert!(p < 1e-5 && p > 3e-7, "{p}");
        assert!(TailTable::fit(&mut vec![1.0; 99]).is_none());
    }

    #[test]
    fn deviation_stays_flagged_for_a_sustained_level_shift() {
        let set = DetectSettings::from_config(
            &crate::config::AnomalyConfig::default(),
            &crate::config::StreamConfig::default(),
        );
        let p = AlarmPolicy {
            min_duration: set.min_duration,
            cooldown: set.cooldown,
            settle_fraction: set.settle_fraction,
            max_alarm: set.max_alarm,
        };
        let warmup = 10;
        let mut st = vec![0.0f32; 6];
        let mut parts = [0.0; 2];
        let mut mid_fault = [0.0; 2];
        let mut alarm = AlarmState::default();
        let noise = |i: u32| ((i as f64 * 0.754_877_666).fract() - 0.5) as f32 * 0.2;
        let mut active = Vec::new();
        for n in 0..1500u32 {
            // Feature 1 shifts by 1 (5× its noise amplitude) from reading 800 to 1200.
            let shift = if (800..1200).contains(&n) { 1.0 } else { 0.0 };
            let x = [noise(n), noise(n + 7) + shift];
            let mut d = Deviation { state: &mut st };
            if n == 0 {
                d.start(&x);
                active.push(false);
                continue;
            }
            let s = d.observe(&set, warmup, n, &x, &mut parts);
            if n == 1000 {
                mid_fault = parts;
            }
            let pv = s.stat.map(|q| gaussian_max_sq_survival(q, 2));
            let pv = combine(&[None, pv]);
            p.step(
                &mut alarm,
                n as i64,
                Judgement::new(
                    pv <= set.false_alarm_rate,
                    pv <= set.false_alarm_rate.powi(2),
                    pv > set.false_alarm_rate * set.clear_factor,
                ),
                (1.0 - pv) as f32,
                s.stat.unwrap_or(0.0),
            );
            let weight = health_weight(alarm.active, pv, set.false_alarm_rate, set.clear_factor);
            d.adapt(&set, warmup, n, &x, weight);
            active.push(alarm.active);
        }
        let during = active[800..1200].iter().filter(|a| **a).count();
        assert!(during >= 390, "flagged for {during} of 400 readings");
        assert!(
            active[1200 + set.cooldown as usize + 20..]
                .iter()
                .all(|a| !a),
            "clears after the fault ends"
        );
        assert!(
            active[..800].iter().all(|a| !a),
            "no alarm before the fault"
        );
        // Mid-fault, the shifted feature carries the departure, upwards.
        assert!(
            mid_fault[1] > 10.0 * mid_fault[0].abs(),
            "departures mid-fault: {mid_fault:?}"
        );
    }

    /// A deterministic standard normal from a low-discrepancy sequence (Box–Muller).
    fn normal(i: u64) -> f64 {
        let u1 = ((i as f64 + 0.5) * 0.618_033_988_749_895)
            .fract()
            .max(1e-12);
        let u2 = ((i as f64 + 0.5) * 0.754_877_666_246_693).fract();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    #[test]
    fn the_spd_inverse_is_an_inverse() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = invert_spd(&a, 3).expect("positive definite");
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-12, "({i},{j}) = {v}");
            }
        }
        assert!(invert_spd(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "indefinite");
    }

    #[test]
    fn the_joint_distance_adds_up_small_shifts_and_sees_broken_correlations() {
        // Two sensors that move together (correlation 0.9) and a third on its own.
        let n = 20_000u64;
        let mut z = Vec::new();
        for i in 0..n {
            let (a, b, c) = (normal(3 * i), normal(3 * i + 1), normal(3 * i + 2));
            z.extend([a, 0.9 * a + (1.0f64 - 0.81).sqrt() * b, c]);
        }
        let j = Joint::fit(&z, 3).expect("enough rows");
        // On normal rows the distance is about χ²₃, a little less (≈ 2.6) because the
        // shrinkage weakens the pair's correlation; its tail is measured, not assumed.
        let mean: f64 = z.chunks(3).map(|r| j.distance(r)).sum::<f64>() / n as f64;
        assert!((2.2..3.1).contains(&mean), "mean distance {mean}");
        // Every sensor 1.5σ off, the way the pair moves together: no single one is far out,
        // together they are.
        let together = [1.5, 1.5, 1.5];
        assert!(j.tail.survival(j.distance(&together)) < 0.01);
        // The pair moving against each other by 1.5σ is far rarer than the same sizes in step.
        let against = [1.5, -1.5, 0.0];
        let in_step = [1.5, 1.5, 0.0];
        assert!(j.distance(&against) > 5.0 * j.distance(&in_step));
        // The explanation names the moved sensors.
        let mut parts = [0.0; 3];
        assert_eq!(j.parts(&against, &mut parts), j.distance(&against));
        assert!(
            parts[0] > 0.0 && parts[1] > 0.0 && parts[2] == 0.0,
            "{parts:?}"
        );
        assert!(Joint::fit(&z[..99 * 3], 3).is_none(), "too few rows");
    }

    #[test]
    fn many_joint_distances_have_the_bits_of_one_at_a_time() {
        // A fitted precision matrix of five features, and readings that include zeros of both
        // signs, large and tiny departures, and the non-finite values a broken sensor gives.
        let nf = 5;
        let z: Vec<f64> = (0..2_000u64).map(normal).collect();
        let j = Joint::fit(&z, nf).expect("enough rows");
        let mut rows: Vec<f64> = z[..40 * nf].to_vec();
        rows.extend([0.0, -0.0, 0.0, -0.0, 0.0]);
        rows.extend([-0.0; 5]);
        rows.extend([1e150, -1e-300, 3.0, f64::MIN_POSITIVE, -7.5]);
        rows.extend([f64::NAN, 1.0, 2.0, 3.0, 4.0]);
        rows.extend([f64::INFINITY, -1.0, 0.5, 0.0, 1.0]);
        let mut zt = Vec::new();
        // Every count of readings around the lanes' width, so that the last chunk is full,
        // partial or alone.
        for n in [
            0,
            1,
            3,
            JOINT_LANES - 1,
            JOINT_LANES,
            JOINT_LANES + 1,
            rows.len() / nf,
        ] {
            let z = &rows[..n * nf];
            let (mut parts, mut d) = (vec![0.0; n * nf], vec![0.0; n]);
            j.parts_of_rows(nf, (z, &mut parts), &mut d, &mut zt);
            for (i, r) in z.chunks_exact(nf).enumerate() {
                let mut want = vec![0.0; nf];
                let dist = j.parts(r, &mut want);
                assert_eq!(d[i].to_bits(), dist.to_bits(), "{r:?}: {} vs {dist}", d[i]);
                for (got, want) in parts[i * nf..(i + 1) * nf].iter().zip(&want) {
                    assert_eq!(got.to_bits(), want.to_bits(), "{r:?}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn the_largest_magnitude_has_the_bits_of_the_fold_one_after_another() {
        fn check<T: Copy + PartialOrd + Default + std::fmt::Debug>(
            v: &[T],
            magnitude: fn(T) -> T,
            max: fn(T, T) -> T,
            bits: fn(T) -> u64,
        ) {
            let want = v.iter().fold(T::default(), |w, x| max(w, magnitude(*x)));
            let got = largest_magnitude(v, magnitude);
            assert_eq!(bits(got), bits(want), "{v:?}: {got:?} vs {want:?}");
        }
        let f64s = |v: &[f64]| check(v, f64::abs, f64::max, f64::to_bits);
        let f32s = |v: &[f32]| check(v, f32::abs, f32::max, |x| u64::from(x.to_bits()));
        // Each width's own special values (no infinity among them, so that each of them can be
        // the largest), every window of them in every count around the lanes' width.
        let special64 = [
            -0.0,
            f64::NAN,
            f64::MIN_POSITIVE / 4.0,
            -f64::NAN,
            0.0,
            -3.5,
            f64::MIN_POSITIVE,
            3.5,
            -1e300,
            f64::MAX,
            -f64::MAX,
            2.0,
        ];
        let special32 = [
            -0.0,
            f32::NAN,
            f32::MIN_POSITIVE / 4.0,
            -f32::NAN,
            0.0,
            -3.5,
            f32::MIN_POSITIVE,
            3.5,
            -1e30,
            f32::MAX,
            -f32::MAX,
            2.0,
        ];
        for start in 0..special64.len() {
            for end in start..=special64.len() {
                f64s(&special64[start..end]);
                f32s(&special32[start..end]);
            }
        }
        // Alone or among NaNs: a −0, a NaN of either sign, a subnormal, an infinity.
        for v in [
            [-0.0, f64::NAN],
            [-f64::NAN, -f64::NAN],
            [f64::MIN_POSITIVE / 4.0, f64::NAN],
            [f64::NEG_INFINITY, -0.0],
        ] {
            f64s(&v);
            f64s(&v[..1]);
            f32s(&v.map(|x| x as f32));
        }
        // Longer runs: normal values with the specials spread among them, every count and
        // start around the lanes' width.
        let mut values: Vec<f64> = (0..64u64).map(normal).collect();
        for (i, s) in special64.iter().enumerate() {
            values.insert(i * 5, *s);
        }
        values.push(f64::INFINITY);
        let values32: Vec<f32> = values.iter().map(|x| *x as f32).collect();
        for n in (0..=3 * MAGNITUDE_LANES + 1).chain([values.len()]) {
            for start in [0, 1, 7, 11] {
                let end = (start + n).min(values.len());
                f64s(&values[start.min(end)..end]);
                f32s(&values32[start.min(end)..end]);
            }
        }
        assert_eq!(largest_magnitude(&[] as &[f32], f32::abs).to_bits(), 0);
    }

    #[test]
    fn the_deep_tail_keeps_its_promise_beyond_the_samples() {
        // Exponential samples (the tail of a squared Gaussian statistic): the fitted deep tail
        // must not be lighter than the truth where no sample reaches.
        let mut s: Vec<f64> = (0..50_000)
            .map(|i| {
                -((i as f64 + 0.5) * 0.618_033_988_75)
                    .fract()
                    .max(1e-15)
                    .ln()
            })
            .collect();
        let t = TailTable::fit(&mut s).expect("enough samples");
        let g = t.gpd.as_ref().expect("deep tail fitted");
        assert_eq!(g.exceedances, 1000);
        assert!(
            g.shape_estimate.abs() < 0.1,
            "exponential: shape ≈ 0, {g:?}"
        );
        for p in [1e-4, 1e-6, 1e-9] {
            let x = -f64::ln(p); // true quantile
            let got = t.survival(x);
            assert!(
                got >= 0.7 * p,
                "at p = {p}: {got} promises more than the truth"
            );
            // Wide, but the line it draws for p lies within 1.5 × the true one.
            assert!(
                t.survival(1.5 * x) < p,
                "at p = {p}: the line is needlessly far out"
            );
        }
        // Heavy-tailed samples (Pareto, shape 0.3): an exponential extrapolation would promise
        // far too much; the fit does not.
        let mut h: Vec<f64> = (0..50_000)
            .map(|i| {
                let u = ((i as f64 + 0.5) * 0.618_033_988_75).fract().max(1e-15);
                (u.powf(-0.3) - 1.0) / 0.3
            })
            .collect();
        let t = TailTable::fit(&mut h).expect("enough samples");
        for p in [1e-4f64, 1e-6] {
            let x = (p.powf(-0.3) - 1.0) / 0.3;
            let got = t.survival(x);
            assert!(got >= 0.5 * p && got < 20.0 * p, "at p = {p}: {got}");
        }
        // Few samples: no deep tail fitted, the table alone.
        let mut few: Vec<f64> = s[..120].to_vec();
        assert!(TailTable::fit(&mut few).expect("a table").gpd.is_none());
    }

    #[test]
    fn the_baseline_learns_from_quiet_readings_partly_from_doubtful_ones_never_from_alarms() {
        assert_eq!(health_weight(false, 0.5, 0.001, 10.0), 1.0);
        assert_eq!(health_weight(false, 0.001, 0.001, 10.0), 0.0);
        assert_eq!(health_weight(true, 0.5, 0.001, 10.0), 0.0);
        let mid = health_weight(false, 0.001 * 10f64.sqrt(), 0.001, 10.0);
        assert!((mid - 0.5).abs() < 1e-12, "{mid}");
    }

    #[test]
    fn combine_takes_the_stronger_evidence_with_a_bonferroni_factor() {
        assert_eq!(combine(&[None, None]), 1.0);
        assert_eq!(combine(&[Some(0.2), None]), 0.2);
        assert_eq!(combine(&[Some(0.2), Some(0.01)]), 0.02);
        assert_eq!(combine(&[Some(0.2), Some(0.01), Some(0.5)]), 0.03);
        assert_eq!(combine(&[Some(0.9), Some(0.8)]), 1.0);
    }

    #[test]
    fn an_extreme_reading_raises_at_once_a_lone_one_over_the_line_does_not() {
        let (a, e) = run("...#.....!----");
        assert_eq!(a, ".........AAAAA".replace('.', "_"));
        assert_eq!(e, vec![Edge::Raised { start: 9 }]);
    }
}
