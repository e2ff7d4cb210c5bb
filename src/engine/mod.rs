//! The streaming engine: per-device LSTM state, micro-batched stepping and scoring.
//!
//! Owns the device table (hidden and cell state per layer, last timestamp, warm-up counter,
//! the one-step and horizon-H forecasts, residual calibration, the deviation baseline and the
//! alarm state) and turns each reading into a forecast of the next `horizon` steps, an anomaly
//! score with its per-feature explanation and the alarm policy's decision ([`detect`]). Every
//! entry point (`serve`, `replay`, `demo`, `evaluate`, `train`'s calibration) scores through
//! [`Engine::process`], so there is one scoring code path.
//!
//! Invariants kept here: **determinism** (§3.6) — a batch is split into waves in which each
//! device appears at most once, a device's readings are stepped in batch order, and every row
//! is computed independently of the others, so any batching gives the same bits; **replays are
//! harmless** (§3.2) — a duplicate or older timestamp never advances a device. Memory per
//! device is a fixed number of floats in flat arrays ([`Engine::state_heap_bytes`] counts
//! them); the table itself is not bounded yet: devices are never evicted.

pub mod calibrate;
pub mod detect;
pub mod error;
pub mod kernel;
pub mod maintenance;
pub mod score;
pub mod silent;
pub mod snapshot;
pub mod stuck;
pub mod testing;
mod wave;

use crate::decode::Reading;
use detect::{AlarmPolicy, AlarmState, Calibration, DetectSettings, Deviation, Edge};
pub use error::{ModelError, RunError, ShapeError};
use kernel::{Isa, LstmStack, PackedMatrix, Workspace};
use score::{Likelihood, ScoreStats};
use std::collections::HashMap;
use std::sync::Arc;
pub use wave::{DetectPasses, PhaseTimes};

/// z-value of the 90% central prediction band.
pub const Z90: f32 = 1.644_853_6;
/// Largest squared residual folded into a device's calibration (5σ).
const CALIBRATION_CAP: f32 = 25.0;
/// Bounds of a device's calibration factor (variance ratio to the model's own σ²).
const CALIBRATION_MIN: f32 = 0.25;
/// See [`CALIBRATION_MIN`].
const CALIBRATION_MAX: f32 = 400.0;

/// Bounds on the head's log-variance, shared with training.
pub const LOGVAR_MIN: f32 = -12.0;
/// See [`LOGVAR_MIN`].
pub const LOGVAR_MAX: f32 = 8.0;

/// A model ready for streaming inference: exported LSTM weights, the forecast head and the
/// normalisation learned in training.
#[derive(Debug, Clone)]
pub struct InferenceModel {
    /// Model version (registry folder name).
    pub version: String,
    /// Feature names, in input order.
    pub features: Vec<String>,
    /// Forecast steps.
    pub horizon: usize,
    /// Per-feature mean used for normalisation.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation used for normalisation.
    pub std: Vec<f32>,
    /// The LSTM layers.
    pub stack: LstmStack,
    /// Head: top hidden state → `horizon·F` means then `horizon·F` log-variances.
    pub head: PackedMatrix,
    /// Tails of the anomaly evidence on normal data, measured in training (`None` for models
    /// trained before it existed: Gaussian tails are assumed).
    pub calibration: Option<Calibration>,
    /// Per feature, the longest time (ns) a device's reading held one value in the training
    /// history, for stuck-sensor alarms ([`stuck`]; `None`: not measured, no such alarms).
    pub longest_flat_ns: Option<Vec<i64>>,
}

impl InferenceModel {
    /// Sets the anomaly thresholds measured in training (a model's `meta.json` `anomaly`),
    /// ready for scoring; `None`: Gaussian tails.
    pub fn set_calibration(&mut self, calibration: Option<Calibration>) {
        self.calibration = calibration;
        if let Some(c) = self.calibration.as_mut() {
            c.prepare();
        }
    }

    /// Why the model cannot be used, if its weights are not finite: such a model would turn
    /// every device's state into NaN. (Its normalisation is checked when it is exported.)
    pub fn weights_problem(&self) -> Option<String> {
        if !self.stack.all_finite() {
            return Some("non-finite LSTM weights".into());
        }
        if !self.head.all_finite() {
            return Some("non-finite output-head weights".into());
        }
        None
    }

    /// Why the model's anomaly thresholds will not give the configured false-alarm rate
    /// under `settings`, if they will not (logged as a warning where models are loaded).
    pub fn calibration_problem(&self, settings: &EngineSettings) -> Option<String> {
        match &self.calibration {
            Some(c) if !c.measured_with.agrees_with(&settings.measured_with()) => Some(format!(
                "model {}: its anomaly thresholds were measured with other detector settings ({:?}, now {:?}); alarms will not follow anomaly.false_alarm_rate until the model is retrained",
                self.version,
                c.measured_with,
                settings.measured_with()
            )),
            None => Some(format!(
                "model {} has no measured anomaly thresholds (trained before they existed, or on too little data); Gaussian tails are assumed",
                self.version
            )),
            Some(_) => None,
        }
    }

    /// Checks that the pieces fit together.
    pub fn validate(&self) -> Result<(), ModelError> {
        let f = self.features.len();
        if let Some(c) = &self.calibration
            && (c.forecast.len() != f || c.drift.len() != f || c.deviation.len() != f)
        {
            return Err(ModelError::Calibration(format!(
                "anomaly calibration has {}, {} and {} forecast, drift and deviation tables for {f} features",
                c.forecast.len(),
                c.drift.len(),
                c.deviation.len()
            )));
        }
        if let Some(c) = &self.calibration {
            c.check_tables().map_err(ModelError::Calibration)?;
        }
        if let Some(j) = self.calibration.as_ref().and_then(|c| c.joint.as_ref())
            && (j.precision.len() != f * f || j.precision.iter().any(|v| !v.is_finite()))
        {
            return Err(ModelError::Calibration(format!(
                "the joint deviation's precision matrix has {} entries for {f} features (want {}, all finite)",
                j.precision.len(),
                f * f
            )));
        }
        if f == 0 || self.mean.len() != f || self.std.len() != f {
            return Err(ModelError::Normalisation(
                "normalisation statistics do not match the features".into(),
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(ModelError::Normalisation(
                "normalisation statistics must be finite with positive deviations".into(),
            ));
        }
        if self.stack.input() != f {
            return Err(ModelError::Shape(format!(
                "LSTM input width {} != {} features",
                self.stack.input(),
                f
            )));
        }
        if self.head.k() != self.stack.hidden() || self.head.n() != 2 * self.horizon * f {
            return Err(ModelError::Shape(
                "forecast head shape does not match hidden width, horizon and features".into(),
            ));
        }
        Ok(())
    }
}

/// Engine settings taken from the config.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Gap (ns) after which a device's state is reset.
    pub max_gap_ns: i64,
    /// Readings before flags are raised.
    pub warmup: u32,
    /// Step (ns) assumed for forecast timestamps until a device's interval is known.
    pub default_interval_ns: i64,
    /// Detection and alarm policy.
    pub detect: DetectSettings,
    /// Per-device target false-alarm rates that override `detect.false_alarm_rate`.
    pub device_rates: Arc<HashMap<String, f64>>,
    /// Weight of each new squared residual in a device's residual calibration.
    pub calibration_alpha: f32,
    /// Likelihood smoothing.
    pub likelihood: Likelihood,
    /// Normalised feature values are clamped to ±this many standard deviations.
    pub max_abs_z: f32,
    /// Maintenance windows of the stream ([`maintenance`]): the config's; `serve` adds the
    /// maintenance file's ([`Engine::set_maintenance`]).
    pub maintenance: Arc<maintenance::Maintenance>,
}

impl EngineSettings {
    /// The settings the calibration depends on, as a calibration records them.
    pub fn measured_with(&self) -> detect::MeasuredWith {
        detect::MeasuredWith {
            warmup: self.warmup,
            learning_readings: self.detect.learning,
            baseline_window: self.detect.baseline_window,
            smoothing: self.detect.smoothing,
            drift_smoothing: self.detect.drift_smoothing,
            calibration_alpha: self.calibration_alpha,
        }
    }

    /// From the config sections and one stream.
    pub fn from_config(cfg: &crate::config::Config, stream: &crate::config::StreamConfig) -> Self {
        Self {
            max_gap_ns: cfg.engine.max_gap.as_nanos(),
            warmup: cfg.engine.warmup,
            default_interval_ns: stream.interval.as_nanos(),
            detect: DetectSettings::from_config(&cfg.anomaly, stream),
            device_rates: Arc::new(
                stream
                    .device_false_alarm_rate
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            ),
            calibration_alpha: 2.0 / (cfg.anomaly.calibration_window as f32 + 1.0),
            likelihood: Likelihood::new(cfg.anomaly.short_window, cfg.anomaly.long_window),
            max_abs_z: cfg.engine.max_abs_z as f32,
            maintenance: Arc::new(maintenance::Maintenance::for_stream(
                &cfg.maintenance,
                &stream.name,
            )),
        }
    }
}

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The device was stepped: a forecast and a score.
    Scored(Scored),
    /// Duplicate or older timestamp than the device's last reading: not stepped.
    Stale {
        /// The device's last timestamp.
        last_ts: i64,
    },
    /// The reading would have made the device's state or outputs non-finite: the device was
    /// reset to a cold start and the reading has no outputs (counted in
    /// [`Counters::poisoned`]).
    Reset,
    /// A new device while the device table is full ([`Engine::set_max_devices`]): not
    /// tracked, no outputs (counted in [`Counters::refused`]).
    Refused,
}

/// Score and forecast metadata of a stepped reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Anomaly score in [0, 1]: one minus the reading's p-value, the share of normal readings
    /// at least as extreme (0 before the device is warm).
    pub score: f64,
    /// −ln of the reading's p-value: the same judgement as `score` without its saturation
    /// at 1 (where `score` rounds to 1, this still ranks readings by how unlikely they are).
    pub surprisal: f64,
    /// Gaussian tail score of the forecast residuals alone, in [0, 1] (0 when there was no
    /// earlier forecast).
    pub forecast_score: f64,
    /// One minus the p-value of the deviation from the device's normal, feature by feature
    /// (0 while it learns).
    pub deviation_score: f64,
    /// Anomaly likelihood in [0, 1] (0 during warm-up).
    pub likelihood: f64,
    /// The reading's evidence is over the line (p-value ≤ the target false-alarm rate).
    pub over_line: bool,
    /// An alarm is raised on the device (the alarm policy's state after this reading).
    pub is_anomaly: bool,
    /// What the alarm policy did at this reading.
    pub edge: Edge,
    /// Highest score of the alarm, when `edge` is set.
    pub peak: f32,
    /// The forecast-surprise statistic (largest squared standardised residual), once warm.
    pub forecast_stat: Option<f64>,
    /// The deviation statistic (largest squared standardised departure), once learnt.
    pub deviation_stat: Option<f64>,
    /// Index of the feature contributing most.
    pub top_feature: usize,
    /// Time between forecast steps (ns): forecast `h` targets `ts + h · step_ns`.
    pub step_ns: i64,
    /// The device started from a zero state (first reading or a reset after a gap).
    pub cold: bool,
    /// The reading lies in a maintenance window: it raised no alarm and taught nothing.
    pub maintenance: bool,
    /// What the stuck-sensor alarm did at this reading ([`stuck`]).
    pub stuck_edge: Edge,
    /// The features of the stuck-sensor alarm (bit `f` for feature `f < 64`), when
    /// `stuck_edge` is set.
    pub stuck_features: u64,
}

/// Results of one batch, parallel to its readings.
#[derive(Debug, Default, Clone)]
pub struct BatchOutput {
    /// One outcome per reading.
    pub outcomes: Vec<Outcome>,
    forecasts: Vec<f32>,
    per: usize,
    contributions: Vec<f32>,
    event_contributions: Vec<f32>,
    evidence: Vec<f32>,
    nf: usize,
    /// Silent-device alarm edges, in the order of the readings they came with.
    pub silent: Vec<silent::SilentEvent>,
}

impl BatchOutput {
    /// Forecast of reading `i`: for each step `h` and feature `f`, `(yhat, lower, upper)` at
    /// `[(h·F + f)·3 ..]`. Meaningful only for [`Outcome::Scored`].
    pub fn forecast(&self, i: usize) -> &[f32] {
        &self.forecasts[i * self.per..(i + 1) * self.per]
    }

    /// Per-feature contributions to the evidence of reading `i`: each feature's share of the
    /// stronger piece of evidence, signed by the direction of its departure (negative: below
    /// what was expected). Zero when there was no evidence.
    pub fn contributions(&self, i: usize) -> &[f32] {
        &self.contributions[i * self.nf..(i + 1) * self.nf]
    }

    /// A batch output assembled by hand (tests of the output formats).
    #[cfg(test)]
    pub(crate) fn assembled(
        outcomes: Vec<Outcome>,
        forecasts: Vec<f32>,
        contributions: Vec<f32>,
        event_contributions: Vec<f32>,
    ) -> Self {
        let n = outcomes.len().max(1);
        Self {
            per: forecasts.len() / n,
            nf: contributions.len() / n,
            evidence: vec![f32::NAN; 3 * contributions.len()],
            outcomes,
            forecasts,
            contributions,
            event_contributions,
            silent: Vec::new(),
        }
    }

    /// The evidence of reading `i` per feature: squared standardised forecast residuals
    /// (`[..F]`), the squared standardised drift of the residuals (`[F..2F]`) and squared
    /// standardised departures from the device's normal (`[2F..]`); NaN where not available
    /// (cold, warming up, still learning). Empty unless the engine keeps it
    /// ([`Engine::keeping_evidence`]).
    pub fn evidence(&self, i: usize) -> &[f32] {
        let n = 3 * self.nf;
        if self.evidence.is_empty() {
            return &[];
        }
        &self.evidence[i * n..(i + 1) * n]
    }

    /// Contributions of the alarm that changed at reading `i`: those of the reading that
    /// raised it (edge `Raised`), averaged over the alarm's readings (edge `Cleared`); zero
    /// otherwise.
    pub fn event_contributions(&self, i: usize) -> &[f32] {
        &self.event_contributions[i * self.nf..(i + 1) * self.nf]
    }
}

/// Engine counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Readings stepped.
    pub stepped: u64,
    /// Readings skipped as duplicate or older.
    pub stale: u64,
    /// States reset because of a gap.
    pub gap_resets: u64,
    /// Devices seen for the first time.
    pub new_devices: u64,
    /// Alarms raised.
    pub alarms_raised: u64,
    /// Alarms cleared.
    pub alarms_cleared: u64,
    /// Stuck-sensor alarms raised.
    pub stuck_raised: u64,
    /// Stuck-sensor alarms cleared.
    pub stuck_cleared: u64,
    /// Silent-device alarms raised.
    pub silent_raised: u64,
    /// Silent-device alarms cleared.
    pub silent_cleared: u64,
    /// Devices restored from a checkpoint.
    pub restored: u64,
    /// Feature values clamped to `±max_abs_z` standard deviations after normalisation.
    pub clamped: u64,
    /// Devices reset because a reading would have made their state non-finite.
    pub poisoned: u64,
    /// Readings of new devices refused because the device table was full.
    pub refused: u64,
}

impl Counters {
    /// Field-wise sum (the counters of a stream across model swaps).
    pub fn plus(self, o: Counters) -> Counters {
        Counters {
            stepped: self.stepped + o.stepped,
            stale: self.stale + o.stale,
            gap_resets: self.gap_resets + o.gap_resets,
            new_devices: self.new_devices + o.new_devices,
            alarms_raised: self.alarms_raised + o.alarms_raised,
            alarms_cleared: self.alarms_cleared + o.alarms_cleared,
            stuck_raised: self.stuck_raised + o.stuck_raised,
            stuck_cleared: self.stuck_cleared + o.stuck_cleared,
            silent_raised: self.silent_raised + o.silent_raised,
            silent_cleared: self.silent_cleared + o.silent_cleared,
            restored: self.restored + o.restored,
            clamped: self.clamped + o.clamped,
            poisoned: self.poisoned + o.poisoned,
            refused: self.refused + o.refused,
        }
    }
}

/// Alarms raised and not cleared, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveAlarms {
    /// The detector's (`kind=anomaly`).
    pub anomaly: u64,
    /// Stuck sensors'.
    pub stuck: u64,
    /// Silent devices' (those written: not held back by a maintenance window).
    pub silent: u64,
}

impl ActiveAlarms {
    /// Kind-wise sum.
    pub fn plus(self, o: Self) -> Self {
        Self {
            anomaly: self.anomaly + o.anomaly,
            stuck: self.stuck + o.stuck,
            silent: self.silent + o.silent,
        }
    }
}

/// Per-device state in flat arrays, one slot per device.
#[derive(Debug, Default)]
struct Slots {
    h: Vec<f32>,
    c: Vec<f32>,
    // The one-step-ahead forecast made at the last reading (per feature, normalised units).
    pred_mean: Vec<f32>,
    pred_sigma: Vec<f32>,
    // Ring of the last `horizon` horizon-H forecasts ([horizon × F]): slot `step % horizon`
    // holds the forecast made H steps before `step`. A level shift shows in full against it
    // for H readings, while the one-step forecast adapts after one.
    far_mean: Vec<f32>,
    far_sigma: Vec<f32>,
    // Per feature: running mean of the squared standardised residual, for the one-step and
    // the horizon-H forecasts. Scales the model's σ to the device's own normal (docs/ARCHITECTURE.md §4:
    // scale differs per device).
    calib: Vec<f32>,
    calib_far: Vec<f32>,
    stats: Vec<ScoreStats>,
    // Per feature: baseline, smoothed departure and its learnt variance (detect::Deviation).
    dev: Vec<f32>,
    // Per feature: sum of contributions over the current alarm.
    event_sum: Vec<f32>,
    // Per feature: short average of the signed one-step residuals (drift evidence).
    drift: Vec<f32>,
    alarm: Vec<AlarmState>,
    // Per feature: the last raw value and when the device took it (stuck sensors).
    flat_last: Vec<f32>,
    flat_since: Vec<i64>,
    stuck: Vec<stuck::StuckState>,
    // Silent-device alarm and the device's usual interval.
    silent: Vec<silent::SilentState>,
    // Target false-alarm rate of the device (stream default or override).
    rate: Vec<f32>,
    last_ts: Vec<i64>,
    // Readings stepped since the device's LSTM state last started from zero.
    count: Vec<u32>,
    // Readings seen since the device first appeared (the deviation's age; gaps do not reset).
    seen: Vec<u32>,
    // Per-batch scratch: the batch a slot was last seen in and its wave there.
    mark: Vec<u32>,
    wave: Vec<u32>,
    // The shard (Kafka partition) of the device's last reading: whose checkpoint it is in.
    shard: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    index: usize,
    slot: usize,
    reset: bool,
    step_ns: i64,
}

/// The streaming engine for one stream.
pub struct Engine {
    model: Arc<InferenceModel>,
    settings: EngineSettings,
    isa: Isa,
    ids: HashMap<String, u32, foldhash::fast::RandomState>,
    max_devices: usize,
    slots: Slots,
    state_len: usize,
    epoch: u32,
    counters: Counters,
    // Reused buffers.
    waves: Vec<Vec<Item>>,
    ws: Workspace,
    x: Vec<f32>,
    /// The new hidden states of a part's rows, a `rows × hidden` block per layer.
    h: Vec<f32>,
    /// Where each row's device state starts in the per-device arrays.
    at: Vec<usize>,
    head_out: Vec<f32>,
    scratch: wave::Scratch,
    // The verdicts of the part under way, one per row of `scratch`'s pending rows (by
    // index), until the rows' forecasts and state are kept.
    judged: Vec<wave::Judged>,
    // Time per phase, when measured.
    phases: Option<PhaseTimes>,
    // Each reading's evidence is written into the batch output (calibration in training).
    keep_evidence: bool,
    stuck_policy: stuck::StuckPolicy,
    watch: silent::Watch,
    // Per batch: silent-device alarms raised (reading index, its time, slot, start).
    raised_silent: Vec<(usize, i64, usize, i64)>,
    fell_silent: Vec<usize>,
}

impl Engine {
    /// An engine with no devices yet.
    pub fn new(model: Arc<InferenceModel>, settings: EngineSettings) -> Result<Self, ModelError> {
        model.validate()?;

        let state_len = model.stack.state_len();
        let stuck_policy = stuck::StuckPolicy::new(
            model.longest_flat_ns.as_deref(),
            settings.detect.stuck_factor,
            settings.detect.stuck_min_readings,
        );
        Ok(Self {
            model,
            isa: Isa::detect(),
            ids: HashMap::default(),
            max_devices: usize::MAX,
            slots: Slots::default(),
            state_len,
            epoch: 0,
            counters: Counters::default(),
            waves: Vec::new(),
            ws: Workspace::default(),
            x: Vec::new(),
            h: Vec::new(),
            at: Vec::new(),
            head_out: Vec::new(),
            scratch: wave::Scratch::default(),
            judged: Vec::new(),
            phases: None,
            keep_evidence: false,
            stuck_policy,
            watch: silent::Watch::new(settings.detect.silent_factor, settings.default_interval_ns),
            raised_silent: Vec::new(),
            fell_silent: Vec::new(),
            settings,
        })
    }

    /// Replaces the stream's maintenance windows (`serve`, when the maintenance file changed).
    pub fn set_maintenance(&mut self, windows: Arc<maintenance::Maintenance>) {
        self.settings.maintenance = windows;
    }

    /// The stream's maintenance windows in use.
    pub fn maintenance(&self) -> &Arc<maintenance::Maintenance> {
        &self.settings.maintenance
    }

    /// Writes each reading's evidence into [`BatchOutput::evidence`], for the calibration in
    /// training; without it (the service, replay, benchmarks) nothing reads it, and it is not
    /// written.
    pub fn keeping_evidence(mut self) -> Self {
        self.keep_evidence = true;
        self
    }

    /// Forces an instruction set (tests compare paths).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    /// The model in use.
    pub fn model(&self) -> &Arc<InferenceModel> {
        &self.model
    }

    /// Measures where the time goes, by phase of the waves, from now on (a few clock reads
    /// per wave; benchmarks, not the service).
    pub fn time_phases(&mut self) {
        self.phases.get_or_insert_with(PhaseTimes::default);
    }

    /// Time per phase since [`Engine::time_phases`] (`None` unless asked for).
    pub fn phase_times(&self) -> Option<PhaseTimes> {
        self.phases
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Devices tracked.
    pub fn devices(&self) -> usize {
        self.ids.len()
    }

    /// The alarms raised on the tracked devices that `include` accepts, by kind: counted from
    /// the devices' own state, so alarms restored from a checkpoint count and devices that
    /// left the table do not. O(devices).
    pub fn active_alarms(&self, include: impl Fn(&str) -> bool) -> ActiveAlarms {
        let mut a = ActiveAlarms::default();
        for (device, &slot) in &self.ids {
            if !include(device) {
                continue;
            }
            let s = slot as usize;
            a.anomaly += self.slots.alarm[s].active as u64;
            a.stuck += self.slots.stuck[s].active as u64;
            let silent = &self.slots.silent[s];
            a.silent += (silent.active && !silent.suppressed) as u64;
        }
        a
    }

    /// Most devices the table takes; readings of further new devices are
    /// [`Outcome::Refused`] (devices already tracked are unaffected, and restores are not
    /// limited: they bring back devices that were admitted before).
    pub fn set_max_devices(&mut self, max: usize) {
        self.max_devices = max;
    }

    /// Reserves room for `devices` more devices, so that growing the table does not
    /// over-allocate (Vec doubling) when the fleet size is known.
    pub fn reserve(&mut self, devices: usize) {
        let f = self.model.features.len();
        let sl = &mut self.slots;
        sl.h.reserve_exact(devices * self.state_len);
        sl.c.reserve_exact(devices * self.state_len);
        sl.pred_mean.reserve_exact(devices * f);
        sl.pred_sigma.reserve_exact(devices * f);
        sl.calib.reserve_exact(devices * f);
        sl.calib_far.reserve_exact(devices * f);
        sl.far_mean.reserve_exact(devices * f * self.model.horizon);
        sl.far_sigma.reserve_exact(devices * f * self.model.horizon);
        sl.stats.reserve_exact(devices);
        sl.dev.reserve_exact(devices * 3 * f);
        sl.event_sum.reserve_exact(devices * f);
        sl.drift.reserve_exact(devices * f);
        sl.alarm.reserve_exact(devices);
        sl.flat_last.reserve_exact(devices * f);
        sl.flat_since.reserve_exact(devices * f);
        sl.stuck.reserve_exact(devices);
        sl.silent.reserve_exact(devices);
        sl.rate.reserve_exact(devices);
        sl.last_ts.reserve_exact(devices);
        sl.count.reserve_exact(devices);
        sl.seen.reserve_exact(devices);
        sl.mark.reserve_exact(devices);
        sl.wave.reserve_exact(devices);
        sl.shard.reserve_exact(devices);
        self.ids.reserve(devices);
    }

    /// Heap bytes held for device state: the slot arrays (by capacity), the id map's table and
    /// the id strings. Excludes per-batch scratch buffers, which do not grow with the fleet.
    pub fn state_heap_bytes(&self) -> usize {
        fn cap<T>(v: &Vec<T>) -> usize {
            v.capacity() * size_of::<T>()
        }
        let sl = &self.slots;
        let arrays = cap(&sl.h)
            + cap(&sl.c)
            + cap(&sl.pred_mean)
            + cap(&sl.pred_sigma)
            + cap(&sl.far_mean)
            + cap(&sl.far_sigma)
            + cap(&sl.calib)
            + cap(&sl.calib_far)
            + cap(&sl.stats)
            + cap(&sl.dev)
            + cap(&sl.event_sum)
            + cap(&sl.drift)
            + cap(&sl.alarm)
            + cap(&sl.flat_last)
            + cap(&sl.flat_since)
            + cap(&sl.stuck)
            + cap(&sl.silent)
            + cap(&sl.rate)
            + cap(&sl.last_ts)
            + cap(&sl.count)
            + cap(&sl.seen)
            + cap(&sl.mark)
            + cap(&sl.wave)
            + cap(&sl.shard);
        // hashbrown: one bucket of (key, value) plus one control byte per bucket; buckets are
        // the next power of two above capacity · 8/7.
        let buckets = if self.ids.capacity() == 0 {
            0
        } else {
            (self.ids.capacity() * 8 / 7).next_power_of_two()
        };
        let map = buckets * (size_of::<(String, u32)>() + 1);
        let ids: usize = self.ids.keys().map(String::capacity).sum();
        arrays + map + ids + self.watch.heap_bytes()
    }

    fn slot_for(&mut self, device: &str) -> usize {
        if let Some(&s) = self.ids.get(device) {
            return s as usize;
        }
        let s = self.slots.last_ts.len();
        if s == self.slots.last_ts.capacity() {
            // Grow by a quarter rather than doubling: per-device arrays dominate memory, and
            // doubling would leave up to half of it unused.
            self.reserve((s / 4).max(64));
        }
        let f = self.model.features.len();
        let sl = &mut self.slots;
        sl.h.resize(sl.h.len() + self.state_len, 0.0);
        sl.c.resize(sl.c.len() + self.state_len, 0.0);
        sl.pred_mean.resize(sl.pred_mean.len() + f, 0.0);
        sl.pred_sigma.resize(sl.pred_sigma.len() + f, 1.0);
        sl.calib.resize(sl.calib.len() + f, 1.0);
        sl.calib_far.resize(sl.calib_far.len() + f, 1.0);
        let hz = self.model.horizon;
        sl.far_mean.resize(sl.far_mean.len() + f * hz, 0.0);
        sl.far_sigma.resize(sl.far_sigma.len() + f * hz, 1.0);
        sl.stats.push(self.settings.likelihood.prior());
        sl.dev.resize(sl.dev.len() + 3 * f, 0.0);
        sl.event_sum.resize(sl.event_sum.len() + f, 0.0);
        sl.drift.resize(sl.drift.len() + f, 0.0);
        sl.alarm.push(AlarmState::default());
        sl.flat_last.resize(sl.flat_last.len() + f, f32::NAN);
        sl.flat_since.resize(sl.flat_since.len() + f, 0);
        sl.stuck.push(stuck::StuckState::default());
        sl.silent.push(silent::SilentState::default());
        let rate = self
            .settings
            .device_rates
            .get(device)
            .copied()
            .unwrap_or(self.settings.detect.false_alarm_rate);
        sl.rate.push(rate as f32);
        sl.last_ts.push(i64::MIN);
        sl.count.push(0);
        sl.seen.push(0);
        sl.mark.push(u32::MAX);
        sl.wave.push(0);
        sl.shard.push(0);
        self.ids.insert(device.to_string(), s as u32);
        self.counters.new_devices += 1;
        s
    }

    /// Puts a device back to a cold start (its last timestamp kept, so that older readings
    /// stay stale).
    fn reset_slot(&mut self, slot: usize) {
        let (s, f, hz) = (
            self.state_len,
            self.model.features.len(),
            self.model.horizon,
        );
        let sl = &mut self.slots;
        sl.h[slot * s..(slot + 1) * s].fill(0.0);
        sl.c[slot * s..(slot + 1) * s].fill(0.0);
        sl.pred_mean[slot * f..(slot + 1) * f].fill(0.0);
        sl.pred_sigma[slot * f..(slot + 1) * f].fill(1.0);
        sl.calib[slot * f..(slot + 1) * f].fill(1.0);
        sl.calib_far[slot * f..(slot + 1) * f].fill(1.0);
        sl.far_mean[slot * f * hz..(slot + 1) * f * hz].fill(0.0);
        sl.far_sigma[slot * f * hz..(slot + 1) * f * hz].fill(1.0);
        sl.stats[slot] = self.settings.likelihood.prior();
        sl.dev[slot * 3 * f..(slot + 1) * 3 * f].fill(0.0);
        sl.event_sum[slot * f..(slot + 1) * f].fill(0.0);
        sl.drift[slot * f..(slot + 1) * f].fill(0.0);
        sl.alarm[slot] = AlarmState::default();
        sl.count[slot] = 0;
        sl.seen[slot] = 0;
    }

    /// Steps every reading of `batch` (in order per device) and fills `out`.
    pub fn process(&mut self, batch: &[Reading], out: &mut BatchOutput) -> Result<(), ShapeError> {
        self.process_sharded(batch, &[], out)
    }

    /// [`Engine::process`], noting `shards[i]` (a Kafka partition) as the shard of reading
    /// `i`'s device: its state goes into that shard's checkpoint. An empty `shards` leaves
    /// every device where it was (shard 0 for new ones).
    pub fn process_sharded(
        &mut self,
        batch: &[Reading],
        shards: &[u32],
        out: &mut BatchOutput,
    ) -> Result<(), ShapeError> {
        let nf = self.model.features.len();
        let per = self.model.horizon * nf * 3;
        out.outcomes.clear();
        out.per = per;
        out.forecasts.clear();
        out.forecasts.resize(batch.len() * per, 0.0);
        out.nf = nf;
        out.contributions.clear();
        out.contributions.resize(batch.len() * nf, 0.0);
        out.event_contributions.clear();
        out.event_contributions.resize(batch.len() * nf, 0.0);
        out.evidence.clear();
        if self.keep_evidence {
            out.evidence.resize(batch.len() * 3 * nf, f32::NAN);
        }
        out.silent.clear();
        self.raised_silent.clear();
        for (index, r) in batch.iter().enumerate() {
            if r.values.len() != nf {
                return Err(ShapeError {
                    index,
                    device: r.device.clone(),
                    got: r.values.len(),
                    want: nf,
                });
            }
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == u32::MAX {
            self.slots.mark.iter_mut().for_each(|m| *m = u32::MAX);
            self.epoch = 0;
        }
        for w in self.waves.iter_mut() {
            w.clear();
        }
        for (index, r) in batch.iter().enumerate() {
            if self.ids.len() >= self.max_devices && !self.ids.contains_key(r.device.as_str()) {
                // The table is full: a new device is refused rather than let memory grow
                // without bound (a producer keying by random ids).
                self.counters.refused += 1;
                out.outcomes.push(Outcome::Refused);
                continue;
            }
            let slot = self.slot_for(&r.device);
            if let Some(&shard) = shards.get(index) {
                self.slots.shard[slot] = shard;
            }
            let last = self.slots.last_ts[slot];
            if last != i64::MIN && r.ts <= last {
                self.counters.stale += 1;
                out.outcomes.push(Outcome::Stale { last_ts: last });
                continue;
            }
            let gap = last != i64::MIN && r.ts - last > self.settings.max_gap_ns;
            if gap {
                self.counters.gap_resets += 1;
            }
            let reset = last == i64::MIN || gap;
            let step_ns = if reset {
                self.settings.default_interval_ns
            } else {
                r.ts - last
            };
            self.slots.last_ts[slot] = r.ts;
            self.watch_silence(index, slot, r, (last, reset), out);
            let wave = if self.slots.mark[slot] == self.epoch {
                self.slots.wave[slot] + 1
            } else {
                0
            };
            self.slots.mark[slot] = self.epoch;
            self.slots.wave[slot] = wave;
            let wave = wave as usize;
            if self.waves.len() <= wave {
                self.waves.resize_with(wave + 1, Vec::new);
            }
            self.waves[wave].push(Item {
                index,
                slot,
                reset,
                step_ns,
            });
            // Placeholder, overwritten when the wave runs.
            out.outcomes.push(Outcome::Stale { last_ts: last });
        }
        let waves = std::mem::take(&mut self.waves);
        for wave in waves.iter().filter(|w| !w.is_empty()) {
            self.run_wave(batch, wave, out);
        }
        self.waves = waves;
        self.name_silent(out);
        Ok(())
    }

    /// Silence bookkeeping for reading `index` (of `slot`, previously heard at `last`;
    /// `reset`: after a gap or first): the device's own silent alarm clears, its interval and
    /// deadline are updated, and its shard's clock moves on, which may make others silent.
    fn watch_silence(
        &mut self,
        index: usize,
        slot: usize,
        r: &Reading,
        (last, reset): (i64, bool),
        out: &mut BatchOutput,
    ) {
        if !self.watch.enabled() {
            return;
        }
        let sl = &mut self.slots;
        let state = &mut sl.silent[slot];
        if state.active
            && let Some(k) = self.raised_silent.iter().position(|p| p.2 == slot)
        {
            // It fell silent earlier in this batch and its raise is not named yet: decided
            // here, where its id is known.
            let (_, at, _, _) = self.raised_silent[k];
            if self.settings.maintenance.covers(&r.device, at) {
                self.raised_silent.remove(k);
                state.suppressed = true;
            }
        }
        if std::mem::take(&mut state.suppressed) {
            state.active = false;
        }
        if state.active {
            state.active = false;
            self.counters.silent_cleared += 1;
            out.silent.push(silent::SilentEvent {
                reading: index,
                device: r.device.clone(),
                edge: Edge::Cleared {
                    start: last,
                    end: r.ts,
                },
            });
        }
        if !reset {
            state.observe(r.ts - last);
        }
        let shard = sl.shard[slot];
        self.watch.track(slot, shard, r.ts, &sl.silent[slot]);
        self.fell_silent.clear();
        self.watch.advance(
            shard,
            r.ts,
            &sl.last_ts,
            &sl.shard,
            &mut sl.silent,
            &mut self.fell_silent,
        );
        for &s in &self.fell_silent {
            self.raised_silent.push((index, r.ts, s, sl.last_ts[s]));
        }
    }

    /// Adds the silent-device alarms raised in this batch to `out`, with their devices' ids
    /// (one pass over the id table, only in a batch that raised one).
    fn name_silent(&mut self, out: &mut BatchOutput) {
        if self.raised_silent.is_empty() {
            return;
        }
        let mut names: HashMap<usize, &str, foldhash::fast::RandomState> = HashMap::default();
        names.extend(self.raised_silent.iter().map(|&(_, _, s, _)| (s, "")));
        for (id, &slot) in &self.ids {
            if let Some(n) = names.get_mut(&(slot as usize)) {
                *n = id.as_str();
            }
        }
        for &(reading, ts, slot, start) in &self.raised_silent {
            let device = names[&slot];
            if self.settings.maintenance.covers(device, ts) {
                // Switched off for maintenance: silent as expected, and not written.
                self.slots.silent[slot].suppressed = true;
                continue;
            }
            self.counters.silent_raised += 1;
            out.silent.push(silent::SilentEvent {
                reading,
                device: device.to_string(),
                edge: Edge::Raised { start },
            });
        }
        out.silent.sort_by_key(|e| e.reading);
    }
}

/// Folds a stepped reading (of `slot`, at the device's interval `step_ns`) into the device's
/// flat runs and its stuck-sensor alarm.
#[inline(always)]
fn step_stuck(
    policy: &stuck::StuckPolicy,
    slots: &mut Slots,
    counters: &mut Counters,
    (slot, r, step_ns, in_maintenance): (usize, &Reading, i64, bool),
) -> (Edge, u64) {
    let nf = r.values.len();
    let range = slot * nf..(slot + 1) * nf;
    let since = &mut slots.flat_since[range.clone()];
    stuck::observe(&mut slots.flat_last[range], since, &r.values, r.ts);
    let state = &mut slots.stuck[slot];
    if in_maintenance {
        // The runs go on; the alarm neither raises nor clears.
        return (Edge::None, state.features);
    }
    let edge = policy.step(state, since, r.ts, step_ns);
    match edge {
        Edge::Raised { .. } => counters.stuck_raised += 1,
        Edge::Cleared { .. } => counters.stuck_cleared += 1,
        Edge::None => {}
    }
    (edge, state.features)
}

/// Standard deviation (normalised units) from the head's log-variance output, through
/// [`kernel::exp_unfused`] so that a row's bands run as vector code and give the same bits on
/// every machine.
#[inline(always)]
pub fn sigma_of(logvar: f32) -> f32 {
    kernel::exp_unfused(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{Shape, settings, synthetic_model};
    use crate::synth::{FleetSpec, generate};

    #[test]
    fn sigma_is_close_to_the_exponential_and_keeps_nan() {
        let mut worst = 0.0f64;
        let steps = 200_000;
        for i in 0..=steps {
            let x = LOGVAR_MIN + (LOGVAR_MAX - LOGVAR_MIN) * i as f32 / steps as f32;
            let want = (0.5 * f64::from(x)).exp();
            let got = f64::from(sigma_of(x));
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert!(kernel::exp_unfused(f32::NAN).is_nan());
        assert!(sigma_of(f32::NAN).is_nan());
        assert_eq!(sigma_of(1e30), sigma_of(LOGVAR_MAX));
    }

    fn engine(isa: Isa) -> Engine {
        let spec = Shape {
            features: 4,
            hidden: 24,
            layers: 2,
            horizon: 3,
        };
        let mut s = settings();
        s.warmup = 5;
        s.max_gap_ns = 20 * 300_000_000_000;
        // Short learning and a sensitive line, so that deviations, alarms and their edges are
        // part of what must not depend on batching.
        s.detect.learning = 20;
        s.detect.false_alarm_rate = 0.05;
        s.detect.min_duration = 2;
        s.detect.cooldown = 3;
        Engine::new(Arc::new(synthetic_model(spec)), s)
            .expect("engine")
            .with_isa(isa)
    }

    /// A fleet with duplicates, an out-of-order reading and a long gap mixed in.
    fn readings() -> Vec<Reading> {
        let mut rs = generate(&FleetSpec {
            devices: 5,
            readings: 120,
            faults: 2,
            ..FleetSpec::default()
        })
        .readings;
        let dup = rs[40].clone();
        rs.insert(60, dup);
        let mut old = rs[100].clone();
        old.ts -= 3 * 300_000_000_000;
        rs.insert(130, old);
        // Device pump-002 goes silent for a long gap.
        let cut = rs.len() / 2;
        for r in rs[cut..].iter_mut().filter(|r| r.device == "pump-002") {
            r.ts += 40 * 300_000_000_000;
        }
        rs
    }

    fn run(isa: Isa, batch: usize) -> (Vec<Outcome>, Vec<u32>, Counters) {
        run_over(isa, batch, &readings())
    }

    /// `rs` through a fresh engine in batches of `batch`: every outcome, the bits of the
    /// scored readings' forecasts and contributions, and the counters.
    fn run_over(isa: Isa, batch: usize, rs: &[Reading]) -> (Vec<Outcome>, Vec<u32>, Counters) {
        let mut e = engine(isa);
        let mut out = BatchOutput::default();
        let (mut outcomes, mut bits) = (Vec::new(), Vec::new());
        for chunk in rs.chunks(batch) {
            e.process(chunk, &mut out).expect("process");
            for (i, o) in out.outcomes.iter().enumerate() {
                outcomes.push(*o);
                if matches!(o, Outcome::Scored(_)) {
                    bits.extend(out.forecast(i).iter().map(|v| v.to_bits()));
                    bits.extend(out.contributions(i).iter().map(|v| v.to_bits()));
                    bits.extend(out.event_contributions(i).iter().map(|v| v.to_bits()));
                }
            }
        }
        (outcomes, bits, e.counters())
    }

    fn same_bits(a: &[Outcome], b: &[Outcome]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Outcome::Scored(p), Outcome::Scored(q)) => {
                    let bits = |s: &Scored| {
                        [
                            s.score.to_bits(),
                            s.forecast_score.to_bits(),
                            s.deviation_score.to_bits(),
                            s.likelihood.to_bits(),
                            s.forecast_stat.map_or(1, f64::to_bits),
                            s.deviation_stat.map_or(1, f64::to_bits),
                            s.peak.to_bits() as u64,
                        ]
                    };
                    bits(p) == bits(q)
                        && (p.over_line, p.is_anomaly, p.edge, p.top_feature)
                            == (q.over_line, q.is_anomaly, q.edge, q.top_feature)
                        && (p.step_ns, p.cold) == (q.step_ns, q.cold)
                }
                (Outcome::Stale { last_ts: s }, Outcome::Stale { last_ts: t }) => s == t,
                _ => false,
            })
    }

    #[test]
    fn evidence_is_written_where_kept_and_changes_nothing_else() {
        let rs = readings();
        let nf = 4;
        let (mut plain, mut kept) = (
            engine(Isa::detect()),
            engine(Isa::detect()).keeping_evidence(),
        );
        let (mut a, mut b) = (BatchOutput::default(), BatchOutput::default());
        plain.process(&rs, &mut a).expect("process");
        kept.process(&rs, &mut b).expect("process");
        assert!(same_bits(&a.outcomes, &b.outcomes), "outcomes differ");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.forecasts), bits(&b.forecasts));
        assert_eq!(bits(&a.contributions), bits(&b.contributions));
        assert_eq!(bits(&a.event_contributions), bits(&b.event_contributions));
        assert!((0..rs.len()).all(|i| a.evidence(i).is_empty()));
        assert!((0..rs.len()).all(|i| b.evidence(i).len() == 3 * nf));
        // Warm readings have their forecast and deviation evidence, as calibration needs.
        let full = (0..rs.len())
            .filter(|&i| b.evidence(i).iter().all(|v| v.is_finite()))
            .count();
        assert!(full > 100, "{full} readings with all their evidence");
    }

    #[test]
    fn a_wave_wider_than_its_parts_gives_the_bits_of_one_reading_at_a_time() {
        // 700 devices in one batch: waves of 700 rows, cut into parts (PART_ROWS) and stepped
        // in chunks (kernel::STEP_CHUNK) with a remainder in each.
        let rs = crate::engine::testing::synthetic_readings(700, 30, 4);
        let (one, one_bits, one_counters) = run_over(Isa::detect(), 1, &rs);
        let (all, all_bits, all_counters) = run_over(Isa::detect(), rs.len(), &rs);
        assert!(
            one.iter()
                .filter(|o| matches!(o, Outcome::Scored(_)))
                .count()
                > 20_000
        );
        assert!(same_bits(&one, &all), "outcomes differ");
        assert!(one_bits == all_bits, "forecasts differ");
        assert_eq!(one_counters, all_counters);
    }

    #[test]
    fn any_batching_gives_identical_bits() {
        let (reference, ref_bits, counters) = run(Isa::detect(), 1);
        let raised = reference
            .iter()
            .filter(|o| matches!(o, Outcome::Scored(s) if matches!(s.edge, Edge::Raised { .. })))
            .count();
        assert!(raised > 0, "the comparison covers alarms");
        assert!(
            reference
                .iter()
                .any(|o| matches!(o, Outcome::Scored(s) if s.deviation_stat.is_some())),
            "the comparison covers learnt deviations"
        );
        for batch in [7, 4096] {
            let (o, bits, c) = run(Isa::detect(), batch);
            assert!(same_bits(&reference, &o), "batch {batch}: outcomes differ");
            assert!(ref_bits == bits, "batch {batch}: forecasts differ");
            assert_eq!(c, counters);
        }
        // The kernel and the scoring compiled for the baseline instruction set, against
        // their AVX2 copies where this CPU has AVX2.
        let (o, bits, _) = run(Isa::PORTABLE, 4096);
        assert!(
            same_bits(&reference, &o) && ref_bits == bits,
            "portable path differs"
        );
    }

    #[test]
    fn duplicates_stale_gaps_and_cold_starts() {
        let (outcomes, _, c) = run(Isa::detect(), 64);
        assert_eq!(c.stale, 2, "one duplicate and one older reading");
        assert_eq!(c.gap_resets, 1, "pump-002's long silence resets its state");
        assert_eq!(c.new_devices, 5);
        assert_eq!(c.stepped as usize + 2, outcomes.len());
        let cold: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Scored(s) if s.cold => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(cold.len(), 6, "five first readings and one reset");
        // A cold reading has no forecast to be judged against (its deviation from the
        // device's normal still counts: a gap does not make a device new).
        assert!(
            cold.iter().all(|s| s.forecast_score == 0.0
                && s.forecast_stat.is_none()
                && s.likelihood == 0.0)
        );
        assert!(
            cold.iter()
                .take(5)
                .all(|s| s.score == 0.0 && !s.is_anomaly && s.deviation_stat.is_none()),
            "first readings: nothing to judge"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Scored(s) if s.score > 0.0))
        );
    }

    #[test]
    fn a_lower_false_alarm_rate_raises_fewer_alarms() {
        let rs = generate(&FleetSpec {
            devices: 6,
            readings: 400,
            faults: 4,
            ..FleetSpec::default()
        })
        .readings;
        let mut last: Option<(usize, usize, usize)> = None;
        let mut first: Option<(usize, usize, usize)> = None;
        for rate in [0.2, 0.05, 0.01, 1e-3, 1e-4, 1e-6] {
            let mut e = engine(Isa::detect());
            e.settings.detect.false_alarm_rate = rate;
            // The deviation does not depend on the (untrained, synthetic) forecaster.
            e.settings.detect.evidence = crate::config::Evidence::Deviation;
            e.settings.detect.learning = 100;
            let mut out = BatchOutput::default();
            let (mut over, mut alarmed, mut raised) = (0, 0, 0);
            for chunk in rs.chunks(64) {
                e.process(chunk, &mut out).expect("process");
                for o in &out.outcomes {
                    if let Outcome::Scored(s) = o {
                        over += s.over_line as usize;
                        alarmed += s.is_anomaly as usize;
                        raised += matches!(s.edge, Edge::Raised { .. }) as usize;
                    }
                }
            }
            first.get_or_insert((over, alarmed, raised));
            if let Some((o, a, r)) = last {
                assert!(
                    over <= o && alarmed <= a && raised <= r,
                    "rate {rate}: over {over} (was {o}), alarmed {alarmed} (was {a}), raised {raised} (was {r})"
                );
            }
            last = Some((over, alarmed, raised));
        }
        let (over, alarmed, _) = last.expect("ran");
        let first = first.expect("ran");
        assert!(
            over < first.0 && alarmed < first.1,
            "the knob moves something: {first:?} at 0.2, ({over}, {alarmed}) at 1e-6"
        );
    }

    #[test]
    fn a_device_override_of_the_rate_applies_to_that_device_only() {
        let rs = generate(&FleetSpec {
            devices: 4,
            readings: 300,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings;
        let run = |overrides: &[(&str, f64)]| {
            let mut e = engine(Isa::detect());
            e.settings.detect.false_alarm_rate = 0.2;
            // The deviation does not depend on the (untrained, synthetic) forecaster.
            e.settings.detect.evidence = crate::config::Evidence::Deviation;
            e.settings.device_rates =
                Arc::new(overrides.iter().map(|(d, r)| (d.to_string(), *r)).collect());
            let mut out = BatchOutput::default();
            let mut over: HashMap<String, usize> = HashMap::new();
            for chunk in rs.chunks(50) {
                e.process(chunk, &mut out).expect("process");
                for (r, o) in chunk.iter().zip(&out.outcomes) {
                    if let Outcome::Scored(s) = o {
                        *over.entry(r.device.clone()).or_default() += s.over_line as usize;
                    }
                }
            }
            over
        };
        let base = run(&[]);
        let quiet = run(&[("pump-001", 1e-12)]);
        assert!(
            base["pump-001"] > 0,
            "the stream's rate flags something: {base:?}"
        );
        assert_eq!(quiet["pump-001"], 0, "{quiet:?}");
        for d in ["pump-000", "pump-002", "pump-003"] {
            assert_eq!(quiet[d], base[d], "other devices keep the stream's rate");
        }
    }

    #[test]
    fn a_device_twice_in_one_batch_is_stepped_in_order() {
        let rs = readings();
        let one = rs
            .iter()
            .filter(|r| r.device == "pump-001")
            .take(3)
            .cloned()
            .collect::<Vec<_>>();
        let mut a = engine(Isa::detect());
        let mut b = engine(Isa::detect());
        let (mut oa, mut ob) = (BatchOutput::default(), BatchOutput::default());
        a.process(&one, &mut oa).expect("batch");
        let mut seq = Vec::new();
        for r in &one {
            b.process(std::slice::from_ref(r), &mut ob).expect("single");
            seq.push(ob.forecast(0).to_vec());
        }
        for (i, f) in seq.iter().enumerate() {
            assert_eq!(oa.forecast(i), f.as_slice());
        }
    }

    #[test]
    fn a_model_whose_tail_tables_cannot_be_read_is_refused_by_name() {
        let mut model = synthetic_model(Shape {
            features: 2,
            hidden: 4,
            layers: 1,
            horizon: 1,
        });
        let mut samples: Vec<f64> = (0..1000).map(|i| f64::from(i) / 100.0).collect();
        let table = detect::TailTable::fit(&mut samples).expect("table");
        let calibration = detect::Calibration {
            forecast: vec![table.clone(), table.clone()],
            drift: vec![table.clone(), table.clone()],
            deviation: vec![table.clone(), table.clone()],
            joint: None,
            measured_with: settings().measured_with(),
        };
        let mut with = |damage: &dyn Fn(&mut detect::Calibration)| {
            let mut c = calibration.clone();
            damage(&mut c);
            model.set_calibration(Some(c));
            model.validate().err().map(|e| e.to_string())
        };
        assert_eq!(with(&|_| {}), None);
        let short = with(&|c| {
            c.drift.pop();
        })
        .expect("refused");
        assert!(short.contains("2, 1 and 2 forecast, drift and deviation tables for 2 features"));
        let unsorted = with(&|c| c.deviation[1].values.swap(1, 3)).expect("refused");
        assert!(
            unsorted.contains("the deviation tail table of feature 1 has values that are not"),
            "{unsorted}"
        );
        let levels = with(&|c| c.forecast[0].levels[2] = 1.5).expect("refused");
        assert!(
            levels.contains("the forecast tail table of feature 0 has levels"),
            "{levels}"
        );
    }

    #[test]
    fn a_full_device_table_refuses_new_devices_only() {
        let rs = generate(&FleetSpec {
            devices: 6,
            readings: 20,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings;
        let mut e = engine(Isa::detect());
        e.set_max_devices(4);
        let mut out = BatchOutput::default();
        let mut refused = HashMap::<String, usize>::new();
        for chunk in rs.chunks(16) {
            e.process(chunk, &mut out).expect("process");
            for (r, o) in chunk.iter().zip(&out.outcomes) {
                if matches!(o, Outcome::Refused) {
                    *refused.entry(r.device.clone()).or_default() += 1;
                }
            }
        }
        assert_eq!(e.devices(), 4);
        assert_eq!(refused.len(), 2, "two devices never got in: {refused:?}");
        assert!(
            refused.values().all(|n| *n == 20),
            "every reading of theirs refused"
        );
        assert_eq!(e.counters().refused, 40);
        assert_eq!(e.counters().stepped, 4 * 20);
    }

    #[test]
    fn wrong_shape_is_an_error_not_a_panic() {
        let mut e = engine(Isa::detect());
        let bad = Reading {
            device: "x".into(),
            ts: 1_795_737_600_000_000_000,
            values: vec![1.0],
        };
        let err = e.process(&[bad], &mut BatchOutput::default()).unwrap_err();
        assert!(err.to_string().contains("expects 4"), "{err}");
    }

    #[test]
    fn state_stays_within_budget_on_the_growth_path_serve_uses() {
        // docs/ARCHITECTURE.md §3.5: ≤ 2 KiB per device at hidden 64, one layer (8 features), counting
        // every per-device array by capacity, the id map and the id strings, with the table
        // grown device by device in micro-batches as `serve` grows it (no reservation).
        let spec = Shape {
            features: 8,
            hidden: 64,
            layers: 1,
            horizon: 3,
        };
        let mut e = Engine::new(Arc::new(synthetic_model(spec)), settings()).expect("engine");
        let rs = crate::engine::testing::synthetic_readings(5000, 2, spec.features);
        let mut out = BatchOutput::default();
        let mut worst = 0;
        for chunk in rs.chunks(64) {
            e.process(chunk, &mut out).expect("process");
            if e.devices() >= 100 {
                worst = worst.max(e.state_heap_bytes() / e.devices());
            }
        }
        assert_eq!(e.devices(), 5000);
        assert!(worst <= 2048, "{worst} bytes per device at worst");
        // The count covers every per-device array: a fresh engine with one device holds at
        // least the floats of its state.
        let floats = 2 * 64 + 8 * (2 + 2 * 3 + 2 + 3 + 1 + 1);
        assert!(
            worst >= floats * 4,
            "{worst} < {} bytes of state",
            floats * 4
        );
    }
}
