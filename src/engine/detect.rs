//! Anomaly detection on top of the forecaster: the evidence of each reading, its calibration
//! against normal data, the alarm policy and the per-feature explanation.
//!
//! Two pieces of evidence are judged for every reading once a device is warm:
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
//!   for as long as it lasts (in the spirit of MSET and of multivariate EWMA control charts).
//!
//! Each piece is turned into a *tail probability*: the share of normal readings (measured in
//! training, [`TailTable`]) at least as extreme. With both, the reading's p-value is
//! `min(2·min(p_forecast, p_deviation), 1)` (Bonferroni), and `score = 1 − p`. The sensitivity
//! knob is the **target false-alarm rate** `r`: a reading is *over the line* when `p ≤ r`. The
//! [`AlarmPolicy`] turns readings over the line into alarms with hysteresis: it raises after
//! `min_duration` readings over the line in a row, holds while the fault lasts, and clears after
//! `cooldown` readings in a row that are quiet (`p > r · clear_factor`).
//!
//! All arithmetic is sequential per device, so outputs do not depend on batching (§3.6).

use serde::{Deserialize, Serialize};

/// Smallest variance of a feature's smoothed departure (normalised units²): a sensor that
/// did not move while its device learnt still gets a finite scale.
pub const VARIANCE_FLOOR: f64 = 1e-6;
/// A healthy reading's squared departure is capped at this many variances before it updates
/// the device's normal spread, so that the onset of a fault does not teach it that faults
/// are normal.
const VARIANCE_CAP: f64 = 25.0;

/// Empirical upper tail of a non-negative statistic on normal data: `values[k]` is the value
/// exceeded by a share `levels[k]` of the samples. Beyond the last level the tail is
/// extrapolated exponentially (the statistics are squared residuals, whose tails decay at
/// least that fast when the data are near Gaussian).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TailTable {
    /// Exceedance probabilities, decreasing.
    pub levels: Vec<f64>,
    /// Statistic values, non-decreasing.
    pub values: Vec<f64>,
    /// Samples the table was fitted on.
    pub samples: u64,
    /// −ln of `levels`, cached ([`TailTable::prepare`]).
    #[serde(skip)]
    pub neg_ln_levels: Vec<f64>,
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
            neg_ln_levels: Vec::new(),
        };
        t.prepare();
        Some(t)
    }

    /// Caches −ln of the levels (called once a table is loaded or fitted; the lookup works
    /// without it, slower).
    pub fn prepare(&mut self) {
        self.neg_ln_levels = self.levels.iter().map(|l| -l.ln()).collect();
    }

    fn level_surprisal(&self, k: usize) -> f64 {
        match self.neg_ln_levels.get(k) {
            Some(s) if self.neg_ln_levels.len() == self.levels.len() => *s,
            _ => -self.levels[k].ln(),
        }
    }

    /// Surprisal −ln p of a statistic `x`, p the share of normal readings at least as extreme:
    /// interpolated linearly in surprisal between the table's levels (p log-linearly), from 0
    /// at `x = 0` to the first level, and extrapolated along the last two levels beyond the
    /// table (exponential tail). Costs no logarithm or exponential once [`Self::prepare`]d.
    pub fn surprisal(&self, x: f64) -> f64 {
        let v = &self.values;
        if v.is_empty() || x.is_nan() || x <= 0.0 {
            return 0.0;
        }
        if x <= v[0] {
            return if v[0] <= 0.0 {
                self.level_surprisal(0)
            } else {
                self.level_surprisal(0) * (x / v[0])
            };
        }
        for k in 1..v.len() {
            if x <= v[k] {
                let (s0, s1) = (self.level_surprisal(k - 1), self.level_surprisal(k));
                let span = v[k] - v[k - 1];
                if span <= 0.0 {
                    return s1;
                }
                return s0 + (x - v[k - 1]) / span * (s1 - s0);
            }
        }
        let last = v.len() - 1;
        let s_last = self.level_surprisal(last);
        let slope = if last > 0 && v[last] > v[last - 1] {
            (s_last - self.level_surprisal(last - 1)) / (v[last] - v[last - 1])
        } else {
            // One usable level: one more unit of surprisal for every multiple of its value.
            1.0 / v[last].max(f64::MIN_POSITIVE)
        };
        s_last + slope.max(0.0) * (x - v[last])
    }

    /// Share of normal readings whose statistic is at least `x` (`exp(−surprisal)`).
    pub fn survival(&self, x: f64) -> f64 {
        (-self.surprisal(x)).exp()
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
    /// The detector settings the tails were measured with; the tails describe the evidence
    /// only under these settings.
    pub measured_with: MeasuredWith,
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
    /// Prepares every table for fast lookups ([`TailTable::prepare`]).
    pub fn prepare(&mut self) {
        for t in self
            .forecast
            .iter_mut()
            .chain(self.drift.iter_mut())
            .chain(self.deviation.iter_mut())
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

    /// What `settings` would measure.
    pub fn of(settings: &super::EngineSettings) -> Self {
        Self {
            warmup: settings.warmup,
            learning_readings: settings.detect.learning,
            baseline_window: settings.detect.baseline_window,
            smoothing: settings.detect.smoothing,
            drift_smoothing: settings.detect.drift_smoothing,
            calibration_alpha: settings.calibration_alpha,
        }
    }
}

/// Per-feature surprisals (−ln p-value) of squared statistics `q` (their sign, a direction,
/// is ignored), written into `s`, from the feature's tail table or, without one, the
/// two-sided Gaussian tail. Returns the reading's p-value for this piece of evidence: the
/// smallest per-feature p-value times the number of features (Bonferroni), at most 1.
pub fn feature_surprisals(tables: Option<&[TailTable]>, q: &[f64], s: &mut [f64]) -> f64 {
    let mut max_s: f64 = 0.0;
    for f in 0..q.len() {
        let x = q[f].abs();
        let sf = match tables {
            Some(t) => t[f].surprisal(x),
            None => -super::score::erfc((x / 2.0).sqrt())
                .max(f64::MIN_POSITIVE)
                .ln(),
        };
        s[f] = sf;
        max_s = max_s.max(sf);
    }
    ((-max_s).exp() * q.len() as f64).min(1.0)
}

/// Each feature's share of a reading's evidence, signed by the direction of its departure:
/// its surprisal over the sum of surprisals. Zero everywhere when nothing is surprising.
pub fn explain(surprisal: &[f64], direction: &[f64], out: &mut [f32]) {
    let total: f64 = surprisal.iter().sum();
    for f in 0..surprisal.len() {
        out[f] = if total > 0.0 {
            (surprisal[f] / total).copysign(direction[f]) as f32
        } else {
            0.0
        };
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
}

impl DetectSettings {
    /// From the `[anomaly]` section, with the stream's own rate when it sets one.
    pub fn from_config(
        a: &crate::config::AnomalyConfig,
        stream: &crate::config::StreamConfig,
    ) -> Self {
        Self {
            false_alarm_rate: stream.false_alarm_rate.unwrap_or(a.false_alarm_rate),
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
    pub fn start(&mut self, x: &[f32]) {
        let nf = x.len();
        self.state[..nf].copy_from_slice(x);
        self.state[nf..3 * nf].iter_mut().for_each(|v| *v = 0.0);
    }

    /// Folds the departure of reading `x` into the smoothed departure; `n` is the number of
    /// readings the device had before this one (≥ 1). Returns the statistic once learnt, and
    /// writes each feature's squared standardised departure, signed by its direction, into
    /// `parts`.
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
        let mut worst: f64 = 0.0;
        for f in 0..nf {
            let d = x[f] as f64 - base[f] as f64;
            let e = lambda * d + (1.0 - lambda) * ewm[f] as f64;
            ewm[f] = e as f32;
            if n >= learn_from && n < learnt_at {
                // Running mean of e² over the learning readings.
                let k = (n - learn_from + 1) as f64;
                var[f] = (var[f] as f64 + (e * e - var[f] as f64) / k) as f32;
            }
            let q = e * e / (var[f] as f64).max(VARIANCE_FLOOR);
            parts[f] = q.copysign(e);
            worst = worst.max(q);
        }
        DeviationStat {
            stat: (n >= learnt_at).then_some(worst),
        }
    }

    /// Moves the baseline to where the device's readings settled (baseline plus smoothed
    /// departure) and forgets the departure.
    pub fn rebase(&mut self) {
        let nf = self.state.len() / 3;
        let (base, rest) = self.state.split_at_mut(nf);
        for f in 0..nf {
            base[f] += rest[f];
            rest[f] = 0.0;
        }
    }

    /// Moves the baseline towards reading `x` and (after learning) the spread towards the
    /// current departure — only while the device is healthy (no alarm raised, reading not over
    /// the line): a fault that persists is never learnt as normal. (An alarm that lasts ends
    /// through [`AlarmPolicy`]'s settle rule or maximum duration, after which the engine
    /// restarts the baseline where the device settled.)
    pub fn adapt(&mut self, set: &DetectSettings, warmup: u32, n: u32, x: &[f32], healthy: bool) {
        if !healthy {
            return;
        }
        let nf = x.len();
        let window = set.baseline_window.max(1) as f64;
        let alpha = 1.0 / ((n as f64) + 1.0).min(window);
        let learnt = n >= warmup.saturating_add(set.learning);
        let (base, rest) = self.state.split_at_mut(nf);
        let (ewm, var) = rest.split_at_mut(nf);
        for f in 0..nf {
            let d = x[f] as f64 - base[f] as f64;
            base[f] = (base[f] as f64 + alpha * d) as f32;
            if learnt {
                let v = (var[f] as f64).max(VARIANCE_FLOOR);
                let e2 = (ewm[f] as f64).powi(2).min(VARIANCE_CAP * v);
                var[f] = (v + (e2 - v) / window) as f32;
            }
        }
    }
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
    /// Highest surprisal (−ln p-value) since the alarm (or its run) started.
    pub peak_surprisal: f32,
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
    /// Folds in one reading at time `ts` judged `j`, with `surprisal` −ln of its p-value. While an alarm is raised, a reading also counts as
    /// quiet when its surprisal has fallen below `settle_fraction` of the alarm's peak (the
    /// condition that raised it is over, though the device may have settled elsewhere).
    pub fn step(
        &self,
        s: &mut AlarmState,
        ts: i64,
        j: Judgement,
        score: f32,
        surprisal: f64,
    ) -> Edge {
        let Judgement {
            over,
            extreme,
            quiet,
        } = j;
        let surprisal = surprisal as f32;
        if !s.active {
            if over {
                if s.over_run == 0 {
                    s.start = ts;
                    s.peak = 0.0;
                    s.peak_surprisal = 0.0;
                }
                s.over_run += 1;
                s.peak = s.peak.max(score);
                s.peak_surprisal = s.peak_surprisal.max(surprisal);
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
        s.peak_surprisal = s.peak_surprisal.max(surprisal);
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
        let settled = (surprisal as f64) < self.settle_fraction * s.peak_surprisal as f64;
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
pub fn combine(p: &[Option<f64>]) -> f64 {
    let present = p.iter().flatten().count();
    p.iter()
        .flatten()
        .fold(None, |m: Option<f64>, &v| Some(m.map_or(v, |m| m.min(v))))
        .map_or(1.0, |m| (m * present as f64).min(1.0))
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
        // Raised by readings of surprisal 50, then the device sits at surprisal 9 (still over
        // a line at, say, 7): under a fifth of the peak, so it clears after the cool-down.
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
        // Extrapolated far tail is close to the true exp(−x/2).
        let p = t.survival(30.0);
        assert!(p < 1e-5 && p > 1e-8, "{p}");
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
                -pv.max(f64::MIN_POSITIVE).ln(),
            );
            let healthy = !alarm.active && pv > set.false_alarm_rate;
            d.adapt(&set, warmup, n, &x, healthy);
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
