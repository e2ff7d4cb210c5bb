//! The streaming engine: per-device LSTM state, micro-batched stepping and scoring.
//!
//! Owns the device table (hidden and cell state per layer, last timestamp, warm-up counter,
//! the one-step-ahead forecast and score statistics) and turns each reading into a forecast of
//! the next `horizon` steps plus an anomaly score against the forecast made one step earlier.
//!
//! Invariants kept here: **determinism** (§3.6) — a batch is split into waves in which each
//! device appears at most once, a device's readings are stepped in batch order, and every row
//! is computed independently of the others, so any batching gives the same bits; **replays are
//! harmless** (§3.2) — a duplicate or older timestamp never advances a device; **memory is
//! bounded** (§3.5) — state is a fixed number of floats per device in flat arrays.

pub mod kernel;
pub mod score;

use crate::decode::Reading;
use kernel::{Isa, LstmStack, PackedMatrix, Workspace};
use score::{Likelihood, ScoreStats};
use std::collections::HashMap;
use std::sync::Arc;

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
}

impl InferenceModel {
    /// Checks that the pieces fit together.
    pub fn validate(&self) -> Result<(), String> {
        let f = self.features.len();
        if f == 0 || self.mean.len() != f || self.std.len() != f {
            return Err("normalisation statistics do not match the features".into());
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err("normalisation statistics must be finite with positive deviations".into());
        }
        if self.stack.input() != f {
            return Err(format!(
                "LSTM input width {} != {} features",
                self.stack.input(),
                f
            ));
        }
        if self.head.k() != self.stack.hidden() || self.head.n() != 2 * self.horizon * f {
            return Err(
                "forecast head shape does not match hidden width, horizon and features".into(),
            );
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
    /// Immediate flag threshold on the score.
    pub score_threshold: f64,
    /// Flag threshold on the likelihood.
    pub likelihood_threshold: f64,
    /// Weight of each new squared residual in a device's residual calibration.
    pub calibration_alpha: f32,
    /// Likelihood smoothing.
    pub likelihood: Likelihood,
}

impl EngineSettings {
    /// From the config sections and one stream.
    pub fn from_config(cfg: &crate::config::Config, stream: &crate::config::StreamConfig) -> Self {
        Self {
            max_gap_ns: cfg.engine.max_gap.as_nanos(),
            warmup: cfg.engine.warmup,
            default_interval_ns: stream.interval.as_nanos(),
            score_threshold: cfg.anomaly.score_threshold,
            likelihood_threshold: cfg.anomaly.likelihood_threshold,
            calibration_alpha: 2.0 / (cfg.anomaly.calibration_window as f32 + 1.0),
            likelihood: Likelihood::new(cfg.anomaly.short_window, cfg.anomaly.long_window),
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
}

/// Score and forecast metadata of a stepped reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Tail score in [0, 1] (0 when there was no earlier forecast).
    pub score: f64,
    /// Anomaly likelihood in [0, 1] (0 during warm-up).
    pub likelihood: f64,
    /// Whether the reading is flagged.
    pub is_anomaly: bool,
    /// Index of the feature contributing most.
    pub top_feature: usize,
    /// Time between forecast steps (ns): forecast `h` targets `ts + h · step_ns`.
    pub step_ns: i64,
    /// The device started from a zero state (first reading or a reset after a gap).
    pub cold: bool,
}

/// Results of one batch, parallel to its readings.
#[derive(Debug, Default, Clone)]
pub struct BatchOutput {
    /// One outcome per reading.
    pub outcomes: Vec<Outcome>,
    forecasts: Vec<f32>,
    per: usize,
}

impl BatchOutput {
    /// Forecast of reading `i`: for each step `h` and feature `f`, `(yhat, lower, upper)` at
    /// `[(h·F + f)·3 ..]`. Meaningful only for [`Outcome::Scored`].
    pub fn forecast(&self, i: usize) -> &[f32] {
        &self.forecasts[i * self.per..(i + 1) * self.per]
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
}

/// A reading whose shape does not fit the model.
#[derive(Debug, thiserror::Error)]
#[error(
    "reading {index} of the batch (device {device:?}) has {got} values, the model expects {want}"
)]
pub struct ShapeError {
    /// Position in the batch.
    pub index: usize,
    /// Device.
    pub device: String,
    /// Values found.
    pub got: usize,
    /// Features expected.
    pub want: usize,
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
    // the horizon-H forecasts. Scales the model's σ to the device's own normal (DESIGN.md §4:
    // scale differs per device).
    calib: Vec<f32>,
    calib_far: Vec<f32>,
    stats: Vec<ScoreStats>,
    last_ts: Vec<i64>,
    count: Vec<u32>,
    // Per-batch scratch: the batch a slot was last seen in and its wave there.
    mark: Vec<u32>,
    wave: Vec<u32>,
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
    slots: Slots,
    state_len: usize,
    epoch: u32,
    counters: Counters,
    // Reused buffers.
    waves: Vec<Vec<Item>>,
    ws: Workspace,
    x: Vec<f32>,
    h: Vec<f32>,
    c: Vec<f32>,
    head_in: Vec<f32>,
    head_out: Vec<f32>,
}

impl Engine {
    /// An engine with no devices yet.
    pub fn new(model: Arc<InferenceModel>, settings: EngineSettings) -> Result<Self, String> {
        model.validate()?;
        let state_len = model.stack.state_len();
        Ok(Self {
            model,
            settings,
            isa: Isa::detect(),
            ids: HashMap::default(),
            slots: Slots::default(),
            state_len,
            epoch: 0,
            counters: Counters::default(),
            waves: Vec::new(),
            ws: Workspace::default(),
            x: Vec::new(),
            h: Vec::new(),
            c: Vec::new(),
            head_in: Vec::new(),
            head_out: Vec::new(),
        })
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

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Devices tracked.
    pub fn devices(&self) -> usize {
        self.ids.len()
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
        sl.last_ts.reserve_exact(devices);
        sl.count.reserve_exact(devices);
        sl.mark.reserve_exact(devices);
        sl.wave.reserve_exact(devices);
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
            + cap(&sl.calib_far)
            + cap(&sl.stats)
            + cap(&sl.last_ts)
            + cap(&sl.count)
            + cap(&sl.mark)
            + cap(&sl.wave);
        // hashbrown: one bucket of (key, value) plus one control byte per bucket; buckets are
        // the next power of two above capacity · 8/7.
        let buckets = if self.ids.capacity() == 0 {
            0
        } else {
            (self.ids.capacity() * 8 / 7).next_power_of_two()
        };
        let map = buckets * (size_of::<(String, u32)>() + 1);
        let ids: usize = self.ids.keys().map(String::capacity).sum();
        arrays + map + ids
    }

    fn slot_for(&mut self, device: &str) -> usize {
        if let Some(&s) = self.ids.get(device) {
            return s as usize;
        }
        let s = self.slots.last_ts.len();
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
        sl.last_ts.push(i64::MIN);
        sl.count.push(0);
        sl.mark.push(u32::MAX);
        sl.wave.push(0);
        self.ids.insert(device.to_string(), s as u32);
        self.counters.new_devices += 1;
        s
    }

    /// Steps every reading of `batch` (in order per device) and fills `out`.
    pub fn process(&mut self, batch: &[Reading], out: &mut BatchOutput) -> Result<(), ShapeError> {
        let nf = self.model.features.len();
        let per = self.model.horizon * nf * 3;
        out.outcomes.clear();
        out.per = per;
        out.forecasts.clear();
        out.forecasts.resize(batch.len() * per, 0.0);
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
            let slot = self.slot_for(&r.device);
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
        Ok(())
    }

    fn run_wave(&mut self, batch: &[Reading], items: &[Item], out: &mut BatchOutput) {
        let model = Arc::clone(&self.model);
        let nf = model.features.len();
        let rows = items.len();
        let s_len = self.state_len;
        let layers = model.stack.layers();
        let top = model.stack.hidden();
        self.x.clear();
        for it in items {
            let r = &batch[it.index];
            for f in 0..nf {
                self.x.push((r.values[f] - model.mean[f]) / model.std[f]);
            }
        }
        // Gather: per layer a rows × hidden block.
        self.h.clear();
        self.h.resize(rows * s_len, 0.0);
        self.c.clear();
        self.c.resize(rows * s_len, 0.0);
        let mut off = 0;
        for layer in layers {
            let hl = layer.hidden();
            for (r, it) in items.iter().enumerate() {
                if it.reset {
                    continue;
                }
                let src = it.slot * s_len + off;
                let dst = rows * off + r * hl;
                self.h[dst..dst + hl].copy_from_slice(&self.slots.h[src..src + hl]);
                self.c[dst..dst + hl].copy_from_slice(&self.slots.c[src..src + hl]);
            }
            off += hl;
        }
        model.stack.step(
            self.isa,
            &mut self.ws,
            rows,
            &self.x,
            &mut self.h,
            &mut self.c,
        );
        // Head on the top layer's new hidden state.
        let padded = kernel::padded_rows(rows);
        let top_block = rows * (s_len - top);
        self.head_in.clear();
        self.head_in
            .extend_from_slice(&self.h[top_block..top_block + rows * top]);
        self.head_in.resize(padded * top, 0.0);
        let stride = model.head.n_pad();
        self.head_out.resize(padded * stride, 0.0);
        kernel::gemm_bias(
            self.isa,
            &self.head_in,
            padded,
            &model.head,
            &mut self.head_out,
        );
        let hf = model.horizon * nf;
        for (r, it) in items.iter().enumerate() {
            let slot = it.slot;
            let x = &self.x[r * nf..(r + 1) * nf];
            let head = &self.head_out[r * stride..r * stride + 2 * hf];
            let step = if it.reset {
                0
            } else {
                self.slots.count[slot] as usize
            };
            let had_forecast = step > 0;
            let warm = step >= self.settings.warmup as usize;
            let hz = model.horizon;
            let ring = (slot * hz + step % hz) * nf;
            let use_far = hz > 1 && step >= hz;
            let (mut score, mut top_feature, mut likelihood) = (0.0, 0, 0.0);
            if had_forecast {
                let alpha = self.settings.calibration_alpha;
                let sl = &mut self.slots;
                let mut worst = 0.0f64;
                let mut judged = 0;
                let mut judge =
                    |x: &[f32], mean: &[f32], sigma: &[f32], calib: &mut [f32], learn: bool| {
                        for f in 0..nf {
                            let z = (x[f] - mean[f]) / (sigma[f] * calib[f].sqrt());
                            let az = z.abs() as f64;
                            if az > worst {
                                worst = az;
                                top_feature = f;
                            }
                            if learn {
                                // Capped at 5σ so that a fault does not teach the device that
                                // faults are normal.
                                let z2 = (z * z * calib[f]).min(CALIBRATION_CAP);
                                calib[f] = (calib[f] + alpha * (z2 - calib[f]))
                                    .clamp(CALIBRATION_MIN, CALIBRATION_MAX);
                            }
                        }
                        judged += nf;
                    };
                let near = slot * nf..(slot + 1) * nf;
                judge(
                    x,
                    &sl.pred_mean[near.clone()],
                    &sl.pred_sigma[near.clone()],
                    &mut sl.calib[near.clone()],
                    warm,
                );
                if use_far {
                    judge(
                        x,
                        &sl.far_mean[ring..ring + nf],
                        &sl.far_sigma[ring..ring + nf],
                        &mut sl.calib_far[near],
                        warm,
                    );
                }
                score = score::score_from_max_z(worst, judged);
                if warm {
                    likelihood = self.settings.likelihood.update(&mut sl.stats[slot], score);
                }
            }
            let is_anomaly = warm
                && (score >= self.settings.score_threshold
                    || likelihood >= self.settings.likelihood_threshold);
            // Keep the one-step and horizon-H forecasts for scoring the readings to come.
            let far = (hz - 1) * nf;
            for f in 0..nf {
                self.slots.pred_mean[slot * nf + f] = head[f];
                self.slots.pred_sigma[slot * nf + f] = sigma_of(head[hf + f]);
                self.slots.far_mean[ring + f] = head[far + f];
                self.slots.far_sigma[ring + f] = sigma_of(head[hf + far + f]);
            }
            let fc = &mut out.forecasts[it.index * out.per..(it.index + 1) * out.per];
            let calib = &self.slots.calib[slot * nf..(slot + 1) * nf];
            for k in 0..hf {
                let f = k % nf;
                let yhat = head[k] * model.std[f] + model.mean[f];
                let half = Z90 * sigma_of(head[hf + k]) * calib[f].sqrt() * model.std[f];
                fc[3 * k] = yhat;
                fc[3 * k + 1] = yhat - half;
                fc[3 * k + 2] = yhat + half;
            }
            // Scatter the new state back.
            let mut off = 0;
            for layer in layers {
                let hl = layer.hidden();
                let dst = slot * s_len + off;
                let src = rows * off + r * hl;
                self.slots.h[dst..dst + hl].copy_from_slice(&self.h[src..src + hl]);
                self.slots.c[dst..dst + hl].copy_from_slice(&self.c[src..src + hl]);
                off += hl;
            }
            self.slots.count[slot] = if it.reset {
                1
            } else {
                self.slots.count[slot].saturating_add(1)
            };
            self.counters.stepped += 1;
            out.outcomes[it.index] = Outcome::Scored(Scored {
                score,
                likelihood,
                is_anomaly,
                top_feature,
                step_ns: it.step_ns,
                cold: it.reset,
            });
        }
    }
}

/// Standard deviation (normalised units) from the head's log-variance output.
#[inline]
pub fn sigma_of(logvar: f32) -> f32 {
    (0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchSpec, settings, synthetic_model};
    use crate::synth::{FleetSpec, generate};

    fn engine(isa: Isa) -> Engine {
        let spec = BenchSpec {
            devices: 0,
            steps: 0,
            hidden: 24,
            features: 4,
            layers: 2,
            horizon: 3,
            batch: 1,
        };
        let mut s = settings();
        s.warmup = 5;
        s.max_gap_ns = 20 * 300_000_000_000;
        Engine::new(Arc::new(synthetic_model(&spec)), s)
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
        let mut e = engine(isa);
        let rs = readings();
        let mut out = BatchOutput::default();
        let (mut outcomes, mut bits) = (Vec::new(), Vec::new());
        for chunk in rs.chunks(batch) {
            e.process(chunk, &mut out).expect("process");
            for (i, o) in out.outcomes.iter().enumerate() {
                outcomes.push(*o);
                if matches!(o, Outcome::Scored(_)) {
                    bits.extend(out.forecast(i).iter().map(|v| v.to_bits()));
                }
            }
        }
        (outcomes, bits, e.counters())
    }

    fn same_bits(a: &[Outcome], b: &[Outcome]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Outcome::Scored(p), Outcome::Scored(q)) => {
                    p.score.to_bits() == q.score.to_bits()
                        && p.likelihood.to_bits() == q.likelihood.to_bits()
                        && (p.is_anomaly, p.top_feature, p.step_ns, p.cold)
                            == (q.is_anomaly, q.top_feature, q.step_ns, q.cold)
                }
                (Outcome::Stale { last_ts: s }, Outcome::Stale { last_ts: t }) => s == t,
                _ => false,
            })
    }

    #[test]
    fn any_batching_gives_identical_bits() {
        let (reference, ref_bits, counters) = run(Isa::detect(), 1);
        for batch in [7, 4096] {
            let (o, bits, c) = run(Isa::detect(), batch);
            assert!(same_bits(&reference, &o), "batch {batch}: outcomes differ");
            assert!(ref_bits == bits, "batch {batch}: forecasts differ");
            assert_eq!(c, counters);
        }
        let (o, bits, _) = run(Isa::Portable, 4096);
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
        assert!(
            cold.iter()
                .all(|s| s.score == 0.0 && !s.is_anomaly && s.likelihood == 0.0)
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Scored(s) if s.score > 0.0))
        );
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
    fn state_stays_within_budget() {
        // DESIGN.md §3.5: ≤ 2 KiB per device at hidden 64, one layer (8 features).
        let spec = BenchSpec {
            devices: 2000,
            steps: 1,
            hidden: 64,
            features: 8,
            layers: 1,
            horizon: 3,
            batch: 4096,
        };
        let mut e = Engine::new(Arc::new(synthetic_model(&spec)), settings()).expect("engine");
        e.reserve(spec.devices);
        let rs = crate::bench::synthetic_readings(spec.devices, 1, spec.features);
        e.process(&rs, &mut BatchOutput::default())
            .expect("process");
        let per = e.state_heap_bytes() / spec.devices;
        assert!(per <= 2048, "{per} bytes per device");
    }
}
