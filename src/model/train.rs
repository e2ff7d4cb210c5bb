//! Training: windows per device, a time-ordered train/validation split, Adam on the Gaussian
//! negative log-likelihood with early stopping, and a validation report measured the way the
//! service will run the model (the streaming engine over each device's history).
//!
//! A fixed seed gives the same model: initialisation is seeded under a lock, shuffling uses a
//! seeded ChaCha generator, and devices are visited in name order.
//!
//! Short histories adapt instead of failing (see `plan`): when `train.window` +
//! `model.horizon` consecutive readings do not fit in the training or the validation part, the
//! window shrinks (down to [`MIN_WINDOW`]); when even that does not fit, the validation
//! fraction moves (within [`VALIDATION_FRACTION_RANGE`]); when no split fits, the validation
//! loss is measured on the last training windows. Each change is logged as a warning, and the
//! window used is recorded in the model's metadata. Training fails only when no device has
//! [`MIN_WINDOW`] + `model.horizon` consecutive readings.

use crate::config::{Config, HumanDuration, StreamConfig, TrainConfig};
use crate::decode::Reading;
use crate::engine::detect::Calibration;
use crate::engine::{BatchOutput, Engine, EngineSettings, InferenceModel, Outcome};
use crate::model::registry::{Metrics, ModelMeta, TrainingInfo};
use crate::model::{Architecture, Forecaster, gaussian_nll, to_vec};
use crate::time::format_ts;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Not enough data for a single window.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// Readings do not match the stream's schema.
    #[error("reading of device {device:?} has {got} values, the stream has {want} features")]
    Shape {
        /// Device.
        device: String,
        /// Values found.
        got: usize,
        /// Features expected.
        want: usize,
    },
    /// Exporting or evaluating the model failed.
    #[error("model: {0}")]
    Model(String),
}

/// A trained model and its metadata (not yet published).
pub struct Trained {
    /// Metadata to publish (`version` is set by the caller).
    pub meta: ModelMeta,
    /// The best weights.
    pub model: Forecaster,
}

/// Progress callback: `(epoch, epochs, batch, batches, train_loss)`.
pub type Progress<'a> = &'a mut dyn FnMut(ProgressEvent);

/// What training reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum ProgressEvent {
    /// Training starts: total optimiser steps at most.
    Start {
        /// Steps.
        total_steps: u64,
    },
    /// One optimiser step done.
    Step {
        /// Epoch (1-based).
        epoch: usize,
        /// Running mean loss this epoch.
        loss: f64,
    },
    /// Epoch done.
    Epoch {
        /// Epoch (1-based).
        epoch: usize,
        /// Mean training loss.
        train_loss: f64,
        /// Validation loss.
        validation_loss: f64,
        /// Whether this is the best so far.
        best: bool,
    },
}

struct Series<'a> {
    readings: Vec<&'a Reading>,
    norm: Vec<f32>,
    /// Training windows lie before it, validation windows after it.
    split: usize,
    /// The validation report scores forecasts of readings from here on (`split`, or the
    /// configured cut when the validation loss is measured on the training tail).
    scored_from: usize,
}

/// Shortest window `train.window` is shrunk to for a short history: a quarter of a window is
/// burn-in, so 8 steps still leave 6 scored steps per window. A configured window below it is
/// used as is. The horizon is not part of it: each window needs `model.horizon` more readings
/// for its targets anyway.
pub const MIN_WINDOW: usize = 8;

/// Range the validation fraction may be moved within when the configured one leaves the
/// training or the validation part too short for even a [`MIN_WINDOW`] window (a configured
/// fraction outside it widens it).
pub const VALIDATION_FRACTION_RANGE: (f64, f64) = (0.05, 0.5);

/// How the history is cut for training: the configuration adapted to what the data allows.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Window used (at most `train.window`).
    window: usize,
    /// Share of each device's history cut off, its most recent part, for validation.
    validation_fraction: f64,
    /// No split leaves a window on both sides: the validation loss is measured on each
    /// device's last training windows, and the validation report on the last
    /// `validation_fraction` of its history; both were seen in training.
    validation_on_tail: bool,
    /// Why the plan differs from the configuration, one warning each.
    warnings: Vec<String>,
}

/// Readings before the validation part of a history of `n`.
fn split_at(n: usize, validation_fraction: f64) -> usize {
    ((n as f64) * (1.0 - validation_fraction)).floor() as usize
}

/// What training found: the best model by validation loss, and how it got there.
struct Fitted {
    best_loss: f64,
    best_epoch: usize,
    best_model: Forecaster,
    epochs_run: usize,
    seconds: f64,
}

/// Trains with Adam on the Gaussian negative log-likelihood, shuffling the training windows
/// each epoch (seeded), and keeps the model of the best validation loss; stops after
/// `train.patience` epochs without improvement.
fn fit(
    arch: &Architecture,
    window: usize,
    series: &[Series<'_>],
    train_w: &mut [Window],
    valid_w: &[Window],
    tc: &crate::config::TrainConfig,
    progress: Progress<'_>,
) -> Result<Fitted, TrainError> {
    let (horizon, nf) = (arch.horizon, arch.input);
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let mut model = Forecaster::seeded(arch, &ad, tc.seed);
    let mut optim = AdamConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    let burn_in = window / 4;
    let batches = train_w.len().div_ceil(tc.batch_size);
    progress(ProgressEvent::Start {
        total_steps: (batches * tc.epochs) as u64,
    });
    let mut rng = ChaCha8Rng::seed_from_u64(tc.seed);
    let mut best: Option<(f64, usize, Forecaster)> = None;
    let mut stale_epochs = 0;
    let mut epochs_run = 0;
    let started = std::time::Instant::now();
    for epoch in 1..=tc.epochs {
        epochs_run = epoch;
        train_w.shuffle(&mut rng);
        let mut total = 0.0;
        for (b, chunk) in train_w.chunks(tc.batch_size).enumerate() {
            let (x, y) = batch_tensors(series, chunk, window, horizon, nf, &ad);
            let out = model.forward(x).narrow(1, burn_in, window - burn_in);
            let loss = gaussian_nll(out, y.narrow(1, burn_in, window - burn_in));
            let value: f32 = loss.clone().into_scalar();
            total += value as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(tc.learning_rate, model, grads);
            progress(ProgressEvent::Step {
                epoch,
                loss: total / (b + 1) as f64,
            });
        }
        let valid_model = model.valid();
        let vloss = validation_loss(
            &valid_model,
            series,
            valid_w,
            window,
            horizon,
            nf,
            burn_in,
            &device,
        )?;
        let improved = best.as_ref().is_none_or(|(l, _, _)| vloss < *l - 1e-4);
        progress(ProgressEvent::Epoch {
            epoch,
            train_loss: total / batches as f64,
            validation_loss: vloss,
            best: improved,
        });
        if improved {
            best = Some((vloss, epoch, valid_model));
            stale_epochs = 0;
        } else {
            stale_epochs += 1;
            if stale_epochs >= tc.patience {
                break;
            }
        }
    }
    let (best_loss, best_epoch, best_model) =
        best.ok_or_else(|| TrainError::Model("no epoch finished".into()))?;
    Ok(Fitted {
        best_loss,
        best_epoch,
        best_model,
        epochs_run,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A training or validation window: its device (index into the series) and first reading.
type Window = (usize, usize);

/// Each feature's mean and standard deviation over the training parts (`split_of(n)` of a
/// device's `n` readings); a feature that does not move gets a deviation of 1.
fn normalisation(
    by_device: &BTreeMap<&str, Vec<&Reading>>,
    split_of: impl Fn(usize) -> usize,
    nf: usize,
) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
    let (mut sum, mut sum_sq, mut count) = (vec![0.0f64; nf], vec![0.0f64; nf], 0usize);
    for rs in by_device.values() {
        for r in &rs[..split_of(rs.len())] {
            for f in 0..nf {
                let v = r.values[f] as f64;
                sum[f] += v;
                sum_sq[f] += v * v;
            }
            count += 1;
        }
    }
    if count == 0 {
        return Err(TrainError::NotEnoughData(
            "no readings in the training part".into(),
        ));
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    let std: Vec<f32> = (0..nf)
        .map(|f| {
            let m = sum[f] / count as f64;
            let var = (sum_sq[f] / count as f64 - m * m).max(0.0);
            let sd = var.sqrt();
            if sd > 1e-6 * m.abs().max(1.0) {
                sd as f32
            } else {
                1.0
            }
        })
        .collect();
    Ok((mean, std))
}

/// The training and validation windows, `(device, start)`, that fit `window + horizon`
/// consecutive readings without crossing a gap the engine treats as a reset.
fn windows(
    series: &[Series<'_>],
    plan: &Plan,
    horizon: usize,
    stride: usize,
    max_gap: i64,
) -> Result<(Vec<Window>, Vec<Window>), TrainError> {
    let window = plan.window;
    // Windows never cross a gap that the engine would treat as a reset.
    let span = window + horizon;
    let windows_in =
        |s: &Series<'_>, d: usize, lo: usize, hi: usize, out: &mut Vec<(usize, usize)>| {
            let mut seg_start = lo;
            for i in lo..=hi {
                let boundary =
                    i == hi || (i > lo && s.readings[i].ts - s.readings[i - 1].ts > max_gap);
                if boundary {
                    let seg_end = i;
                    let mut start = seg_start;
                    while start + span <= seg_end {
                        out.push((d, start));
                        start += stride;
                    }
                    seg_start = i;
                }
            }
        };
    let (mut train_w, mut valid_w) = (Vec::new(), Vec::new());
    for (d, s) in series.iter().enumerate() {
        let before = train_w.len();
        windows_in(s, d, 0, s.split, &mut train_w);
        if plan.validation_on_tail {
            // The device's training windows that reach into its last part, or its last one.
            let own = &train_w[before..];
            let tail = own
                .iter()
                .filter(|&&(_, start)| start + span > s.scored_from);
            if tail.clone().next().is_some() {
                valid_w.extend(tail);
            } else {
                valid_w.extend(own.last());
            }
        } else {
            windows_in(s, d, s.split, s.readings.len(), &mut valid_w);
        }
    }
    // The plan leaves room for a window on both sides; these only guard against a mismatch.
    if train_w.is_empty() {
        return Err(TrainError::NotEnoughData(format!(
            "no device has {span} consecutive readings (window {window} + model.horizon {horizon}) in its training part"
        )));
    }
    if valid_w.is_empty() {
        return Err(TrainError::NotEnoughData(format!(
            "no device has {span} consecutive readings (window {window} + model.horizon {horizon}) in its validation part (the last {:.0}% of its history)",
            plan.validation_fraction * 100.0
        )));
    }
    Ok((train_w, valid_w))
}

/// Longest run of `ts` with no step longer than `max_gap` (a gap the engine treats as a reset,
/// which no window crosses).
fn longest_run(ts: &[i64], max_gap: i64) -> usize {
    let (mut best, mut run) = (0, 0);
    for (i, t) in ts.iter().enumerate() {
        run = if i > 0 && t - ts[i - 1] <= max_gap {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

/// Chooses the window and validation split for `devices` (name, timestamps in order): the
/// configured ones when they fit, otherwise the nearest that do (see the module docs).
fn plan(
    devices: &[(&str, Vec<i64>)],
    window: usize,
    horizon: usize,
    validation_fraction: f64,
    max_gap: HumanDuration,
) -> Result<Plan, TrainError> {
    let planner = Planner {
        devices,
        window,
        horizon,
        fraction: validation_fraction,
        max_gap,
        min_window: window.min(MIN_WINDOW),
    };
    let longest = planner.longest();
    if longest.0 < planner.min_window + horizon {
        return Err(planner.too_short(longest));
    }
    let parts = planner.parts(validation_fraction);
    Ok(planner
        .as_configured(parts)
        .or_else(|| planner.moved(parts))
        .unwrap_or_else(|| planner.on_tail(longest)))
}

/// What `plan` weighs: each device's timestamps and the configured cut.
struct Planner<'a> {
    /// Name and timestamps (in order) of each device.
    devices: &'a [(&'a str, Vec<i64>)],
    /// `train.window`.
    window: usize,
    /// `model.horizon`.
    horizon: usize,
    /// `train.validation_fraction`.
    fraction: f64,
    /// `engine.max_gap`: no window crosses a longer gap.
    max_gap: HumanDuration,
    /// Shortest window `window` may be shrunk to.
    min_window: usize,
}

impl Planner<'_> {
    /// The longest run of any device and whose it is (`""` when there are no devices).
    fn longest(&self) -> (usize, &str) {
        let gap = self.max_gap.as_nanos();
        self.devices
            .iter()
            .map(|(d, ts)| (longest_run(ts, gap), *d))
            .fold((0, ""), |best, x| if x.0 > best.0 { x } else { best })
    }

    /// The error when the longest run, `longest` readings of device `who`, is too short for
    /// even the shortest window.
    fn too_short(&self, (longest, who): (usize, &str)) -> TrainError {
        let (window, horizon, min_window) = (self.window, self.horizon, self.min_window);
        let what = if window > min_window {
            format!(
                "a window of {min_window}, the shortest train.window {window} is shrunk to, + model.horizon {horizon}"
            )
        } else {
            format!("train.window {window} + model.horizon {horizon}")
        };
        let has = if who.is_empty() {
            "there are no readings".to_string()
        } else {
            format!("the longest device, {who:?}, has {longest}")
        };
        TrainError::NotEnoughData(format!(
            "training needs at least {} consecutive readings of one device ({what}) with no gap longer than engine.max_gap ({}); {has}",
            min_window + horizon,
            self.max_gap
        ))
    }

    /// Longest runs in the training and the validation parts when `f` of each device's history
    /// is held out.
    fn parts(&self, f: f64) -> (usize, usize) {
        let gap = self.max_gap.as_nanos();
        self.devices.iter().fold((0, 0), |(t, v), (_, ts)| {
            let split = split_at(ts.len(), f);
            (
                t.max(longest_run(&ts[..split], gap)),
                v.max(longest_run(&ts[split..], gap)),
            )
        })
    }

    /// Room for a window (the horizon taken off) in parts of at most `t` and `v` consecutive
    /// readings, if there is room for the shortest one.
    fn room(&self, (t, v): (usize, usize)) -> Option<usize> {
        let room = t.min(v).saturating_sub(self.horizon);
        (room >= self.min_window).then_some(room)
    }

    /// The warning that the configured window is shrunk to `w`, because `why`, if it is.
    fn shrunk(&self, w: usize, why: String) -> Option<String> {
        let (window, horizon) = (self.window, self.horizon);
        (w < window).then(|| {
            format!(
                "train.window {window} does not fit this history: {why}; using windows of {w} readings (+ model.horizon {horizon})"
            )
        })
    }

    /// The configured validation fraction, whose parts hold at most `t` and `v` consecutive
    /// readings, if they have room for a window (shrunk to fit if need be).
    fn as_configured(&self, (t, v): (usize, usize)) -> Option<Plan> {
        let room = self.room((t, v))?;
        let w = self.window.min(room);
        let why = if v <= t {
            format!(
                "the validation part (the most recent {:.0}% of each device's history) holds at most {v} consecutive readings",
                self.fraction * 100.0
            )
        } else {
            format!("the training part holds at most {t} consecutive readings")
        };
        Some(Plan {
            window: w,
            validation_fraction: self.fraction,
            validation_on_tail: false,
            warnings: self.shrunk(w, why).into_iter().collect(),
        })
    }

    /// The range the validation fraction may be moved within: [`VALIDATION_FRACTION_RANGE`],
    /// widened to take in the configured one.
    fn fraction_range(&self) -> (f64, f64) {
        (
            VALIDATION_FRACTION_RANGE.0.min(self.fraction),
            VALIDATION_FRACTION_RANGE.1.max(self.fraction),
        )
    }

    /// The validation fraction moved as little as will do, by steps of 0.01 (growing it first:
    /// usually the validation part is the short one), if some fraction in range leaves room
    /// for a window on both sides; `(t, v)` are the configured fraction's parts.
    fn moved(&self, (t, v): (usize, usize)) -> Option<Plan> {
        let (validation_fraction, horizon, min_window) =
            (self.fraction, self.horizon, self.min_window);
        let (lo, hi) = self.fraction_range();
        for k in 1..=100 {
            for f in [
                validation_fraction + k as f64 * 0.01,
                validation_fraction - k as f64 * 0.01,
            ] {
                let f = (f * 1e4).round() / 1e4;
                if f < lo || f > hi {
                    continue;
                }
                let (t2, v2) = self.parts(f);
                let Some(room) = self.room((t2, v2)) else {
                    continue;
                };
                let short = if v <= t {
                    format!("validation part holds at most {v}")
                } else {
                    format!("training part holds at most {t}")
                };
                let mut warnings = vec![format!(
                    "train.validation_fraction {validation_fraction} leaves too short a split of this history: the {short} consecutive readings, fewer than a window of {min_window} + model.horizon {horizon}; using train.validation_fraction {f} instead (at most {t2} consecutive training and {v2} validation readings)"
                )];
                let w = self.window.min(room);
                warnings.extend(self.shrunk(
                    w,
                    format!("with train.validation_fraction {f}, there is room for {w} at most"),
                ));
                return Some(Plan {
                    window: w,
                    validation_fraction: f,
                    validation_on_tail: false,
                    warnings,
                });
            }
        }
        None
    }

    /// Validation on the tail of the training windows, when no split leaves room for a window
    /// on both sides; the window fits the longest run, `longest` readings of device `who`.
    fn on_tail(&self, (longest, who): (usize, &str)) -> Plan {
        let (lo, hi) = self.fraction_range();
        let mut warnings = vec![format!(
            "this history is too short for separate training and validation parts (no train.validation_fraction in {lo}..={hi} leaves {} consecutive readings on both sides); validating on the tail of the training windows: the validation loss and report measure readings the model was trained on",
            self.min_window + self.horizon
        )];
        let w = self.window.min(longest - self.horizon);
        warnings.extend(self.shrunk(
            w,
            format!("the longest device, {who:?}, has {longest} consecutive readings"),
        ));
        Plan {
            window: w,
            validation_fraction: self.fraction,
            validation_on_tail: true,
            warnings,
        }
    }
}

/// Trains a model for `stream` on `readings` (each device's readings in time order, no
/// duplicates: see `cli`'s ordering check).
pub fn train(
    cfg: &Config,
    stream: &StreamConfig,
    readings: &[Reading],
    inputs: Vec<String>,
    progress: Progress<'_>,
) -> Result<Trained, TrainError> {
    let tc = &cfg.train;
    let nf = stream.features.len();
    let arch = Architecture {
        input: nf,
        hidden: cfg.model.hidden,
        layers: cfg.model.layers,
        horizon: cfg.model.horizon,
    };
    let horizon = arch.horizon;
    let Prepared {
        plan,
        mean,
        std,
        series,
    } = prepare(cfg, stream, readings, horizon)?;
    let window = plan.window;
    let (mut train_w, mut valid_w) = windows(
        &series,
        &plan,
        horizon,
        tc.stride,
        cfg.engine.max_gap.as_nanos(),
    )?;
    subsample(&mut train_w, tc.max_windows);
    subsample(&mut valid_w, tc.max_windows.div_ceil(4));

    let fitted = fit(&arch, window, &series, &mut train_w, &valid_w, tc, progress)?;
    let inference = fitted
        .best_model
        .export(&arch, "candidate", &stream.features, &mean, &std)
        .map_err(|e| TrainError::Model(e.to_string()))?;
    let (validation, anomaly) = validate(cfg, stream, inference, &series, (&std, horizon))?;
    let training = training_info(
        &series,
        tc,
        window,
        &fitted,
        (train_w.len(), valid_w.len()),
        inputs,
    );
    let meta = ModelMeta {
        format: 1,
        version: String::new(),
        stream: stream.name.clone(),
        created_at: String::new(),
        features: stream.features.clone(),
        mean,
        std,
        architecture: arch,
        training,
        validation,
        anomaly,
        longest_flat_ns: Some(crate::engine::stuck::longest_flat(
            &series
                .iter()
                .map(|s| s.readings.as_slice())
                .collect::<Vec<_>>(),
            nf,
        )),
        decision: None,
    };
    Ok(Trained {
        meta,
        model: fitted.best_model,
    })
}

/// The history cut for training: the plan, the normalisation (from the training parts) and
/// each device's series.
struct Prepared<'a> {
    plan: Plan,
    mean: Vec<f32>,
    std: Vec<f32>,
    series: Vec<Series<'a>>,
}

/// Groups `readings` by device (in name order) after checking each has the stream's
/// features, plans the cut (logging each way it differs from the configuration) and
/// normalises each device's series by the training parts.
fn prepare<'a>(
    cfg: &Config,
    stream: &StreamConfig,
    readings: &'a [Reading],
    horizon: usize,
) -> Result<Prepared<'a>, TrainError> {
    let tc = &cfg.train;
    let nf = stream.features.len();
    let mut by_device: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
    for r in readings {
        if r.values.len() != nf {
            return Err(TrainError::Shape {
                device: r.device.clone(),
                got: r.values.len(),
                want: nf,
            });
        }
        by_device.entry(r.device.as_str()).or_default().push(r);
    }
    let histories: Vec<(&str, Vec<i64>)> = by_device
        .iter()
        .map(|(d, rs)| (*d, rs.iter().map(|r| r.ts).collect()))
        .collect();
    let plan = plan(
        &histories,
        tc.window,
        horizon,
        tc.validation_fraction,
        cfg.engine.max_gap,
    )?;
    drop(histories);
    for warning in &plan.warnings {
        tracing::warn!(stream = %stream.name, "{warning}");
    }
    let scored_from = |n: usize| split_at(n, plan.validation_fraction);
    let split_of = |n: usize| {
        if plan.validation_on_tail {
            n
        } else {
            scored_from(n)
        }
    };
    // Normalisation from the training parts only.
    let (mean, std) = normalisation(&by_device, split_of, nf)?;
    let series: Vec<Series<'_>> = by_device
        .values()
        .map(|rs| {
            let norm = rs
                .iter()
                .flat_map(|r| (0..nf).map(|f| (r.values[f] - mean[f]) / std[f]))
                .collect();
            Series {
                readings: rs.clone(),
                norm,
                split: split_of(rs.len()),
                scored_from: scored_from(rs.len()),
            }
        })
        .collect();
    Ok(Prepared {
        plan,
        mean,
        std,
        series,
    })
}

/// Measures `inference` the way the service will run it: the validation report over each
/// device's history, and the sensitivity knob's thresholds (tails of the anomaly evidence on
/// this history; `None`, with a warning, when there are too few readings).
fn validate(
    cfg: &Config,
    stream: &StreamConfig,
    inference: InferenceModel,
    series: &[Series<'_>],
    (std, horizon): (&[f32], usize),
) -> Result<(Metrics, Option<Calibration>), TrainError> {
    let settings = EngineSettings::from_config(cfg, stream);
    let inference = Arc::new(inference);
    let validation = evaluate(
        Arc::clone(&inference),
        settings.clone(),
        series,
        (std, horizon),
        &crate::labels::Verdicts::default(),
    )?;
    // Thresholds of the sensitivity knob: tails of the anomaly evidence on this history.
    let histories: Vec<(&[&Reading], usize)> = series
        .iter()
        .map(|s| (s.readings.as_slice(), s.scored_from))
        .collect();
    let anomaly = crate::engine::calibrate::calibrate(inference, settings, &histories)
        .map_err(|e| TrainError::Model(e.to_string()))?;
    if anomaly.is_none() {
        tracing::warn!(
            "too few readings to measure the anomaly thresholds on this history; Gaussian tails are assumed"
        );
    }
    Ok((validation, anomaly))
}

/// What the model's metadata says of how it was trained: the span of `series`, the windows
/// (`train`, `validation`) and epochs, and the settings used.
fn training_info(
    series: &[Series<'_>],
    tc: &TrainConfig,
    window: usize,
    fitted: &Fitted,
    (train_windows, validation_windows): (usize, usize),
    inputs: Vec<String>,
) -> TrainingInfo {
    let first = series
        .iter()
        .map(|s| s.readings[0].ts)
        .min()
        .unwrap_or_default();
    let last = series
        .iter()
        .filter_map(|s| s.readings.last().map(|r| r.ts))
        .max()
        .unwrap_or_default();
    TrainingInfo {
        from: format_ts(first),
        to: format_ts(last),
        devices: series.len(),
        readings: series.iter().map(|s| s.readings.len()).sum(),
        train_windows,
        validation_windows,
        epochs: fitted.epochs_run,
        best_epoch: fitted.best_epoch,
        best_validation_loss: fitted.best_loss,
        seed: tc.seed,
        window,
        learning_rate: tc.learning_rate,
        inputs,
        seconds: Some(fitted.seconds),
    }
}

/// Keeps at most `max` items, evenly spaced, in their current order.
fn subsample<T: Copy>(items: &mut Vec<T>, max: usize) {
    if items.len() > max {
        let n = items.len();
        *items = (0..max).map(|i| items[i * n / max]).collect();
    }
}

fn batch_tensors(
    series: &[Series<'_>],
    chunk: &[(usize, usize)],
    window: usize,
    horizon: usize,
    nf: usize,
    device: &Device,
) -> (Tensor<3>, Tensor<3>) {
    let b = chunk.len();
    let mut x = Vec::with_capacity(b * window * nf);
    let mut y = Vec::with_capacity(b * window * horizon * nf);
    for &(d, start) in chunk {
        let s = &series[d].norm;
        x.extend_from_slice(&s[start * nf..(start + window) * nf]);
        for t in 0..window {
            let from = (start + t + 1) * nf;
            y.extend_from_slice(&s[from..from + horizon * nf]);
        }
    }
    (
        Tensor::from_data(TensorData::new(x, [b, window, nf]), device),
        Tensor::from_data(TensorData::new(y, [b, window, horizon * nf]), device),
    )
}

#[allow(clippy::too_many_arguments)]
fn validation_loss(
    model: &Forecaster,
    series: &[Series<'_>],
    windows: &[(usize, usize)],
    window: usize,
    horizon: usize,
    nf: usize,
    burn_in: usize,
    device: &Device,
) -> Result<f64, TrainError> {
    let mut total = 0.0;
    let mut n = 0usize;
    for chunk in windows.chunks(256) {
        let (x, y) = batch_tensors(series, chunk, window, horizon, nf, device);
        let out = model.forward(x).narrow(1, burn_in, window - burn_in);
        let loss = gaussian_nll(out, y.narrow(1, burn_in, window - burn_in));
        let v = to_vec(loss).map_err(|e| TrainError::Model(e.to_string()))?;
        total += v[0] as f64 * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(total / n.max(1) as f64)
}

/// Forecast error of `model` on a holdout: each device's readings are streamed through the
/// engine from its first one (so the model is warm), and the forecasts whose targets lie at
/// or after `from_ts` are scored against the naive last-value forecast — the same figures as
/// the validation report. `readings` are grouped by device, each device's in time order.
/// The model's alarms are scored against `verdicts` whose alarms start in the holdout.
pub fn holdout(
    model: Arc<crate::engine::InferenceModel>,
    cfg: &Config,
    stream: &StreamConfig,
    (readings, from_ts): (&[Reading], i64),
    verdicts: &crate::labels::Verdicts,
) -> Result<Metrics, TrainError> {
    let mut by: std::collections::BTreeMap<&str, Vec<&Reading>> = Default::default();
    for r in readings {
        by.entry(r.device.as_str()).or_default().push(r);
    }
    let series: Vec<Series<'_>> = by
        .into_values()
        .filter_map(|rs| {
            let scored_from = rs.partition_point(|r| r.ts < from_ts);
            (scored_from < rs.len()).then_some(Series {
                readings: rs,
                norm: Vec::new(),
                split: scored_from,
                scored_from,
            })
        })
        .collect();
    let std = model.std.clone();
    let horizon = model.horizon;
    evaluate(
        model,
        EngineSettings::from_config(cfg, stream),
        &series,
        (&std, horizon),
        verdicts,
    )
}

/// Streams every device's whole history through the engine and scores the forecasts whose
/// targets fall in the validation part, against the naive last-value forecast; the alarms
/// raised there (anomaly and stuck), against `verdicts`.
fn evaluate(
    model: Arc<crate::engine::InferenceModel>,
    settings: EngineSettings,
    series: &[Series<'_>],
    (std, horizon): (&[f32], usize),
    verdicts: &crate::labels::Verdicts,
) -> Result<Metrics, TrainError> {
    let nf = std.len();
    let mut engine = Engine::new(model, settings).map_err(|e| TrainError::Model(e.into()))?;
    let longest = series.iter().map(|s| s.readings.len()).max().unwrap_or(0);
    let mut out = BatchOutput::default();
    let (mut abs, mut sq, mut naive_abs, mut inside, mut n) = (0.0f64, 0.0f64, 0.0f64, 0u64, 0u64);
    let (mut judged, mut over, mut alarms) = (0u64, 0u64, 0u64);
    // Readings under an alarm per device, for the verdicts (only when there are any).
    let mut alarmed: std::collections::HashMap<String, Vec<i64>> = Default::default();
    let mut scored_from = i64::MAX;
    let mut abs_h = vec![0.0f64; horizon];
    let mut naive_h = vec![0.0f64; horizon];
    let mut abs_f = vec![0.0f64; nf];
    let mut n_f = vec![0u64; nf];
    for p in 0..longest {
        let members: Vec<usize> = (0..series.len())
            .filter(|&d| p < series[d].readings.len())
            .collect();
        let batch: Vec<Reading> = members
            .iter()
            .map(|&d| series[d].readings[p].clone())
            .collect();
        engine
            .process(&batch, &mut out)
            .map_err(|e| TrainError::Model(e.to_string()))?;
        for (i, &d) in members.iter().enumerate() {
            let s = &series[d];
            let Outcome::Scored(sc) = out.outcomes[i] else {
                continue;
            };
            if p >= s.scored_from {
                judged += 1;
                over += sc.over_line as u64;
                alarms += matches!(sc.edge, crate::engine::detect::Edge::Raised { .. }) as u64;
                let r = &s.readings[p];
                scored_from = scored_from.min(r.ts);
                if !verdicts.is_empty() {
                    let mut alarmed = |ts| alarmed.entry(r.device.clone()).or_default().push(ts);
                    if sc.is_anomaly {
                        alarmed(r.ts);
                    }
                    if let crate::engine::detect::Edge::Raised { start } = sc.stuck_edge {
                        alarmed(start);
                    }
                }
            }
            let fc = out.forecast(i);
            for h in 0..horizon {
                let q = p + h + 1;
                if q < s.scored_from || q >= s.readings.len() {
                    continue;
                }
                for f in 0..nf {
                    let k = (h * nf + f) * 3;
                    let actual = s.readings[q].values[f];
                    let err = ((fc[k] - actual) / std[f]) as f64;
                    let naive = ((s.readings[p].values[f] - actual) / std[f]) as f64;
                    abs += err.abs();
                    sq += err * err;
                    naive_abs += naive.abs();
                    abs_h[h] += err.abs();
                    naive_h[h] += naive.abs();
                    abs_f[f] += (fc[k] - actual).abs() as f64;
                    n_f[f] += 1;
                    if fc[k + 1] <= actual && actual <= fc[k + 2] {
                        inside += 1;
                    }
                    n += 1;
                }
            }
        }
    }
    if n == 0 {
        return Err(TrainError::NotEnoughData(
            "no validation points to evaluate".into(),
        ));
    }
    let nn = n as f64;
    Ok(Metrics {
        mae: abs / nn,
        rmse: (sq / nn).sqrt(),
        mase: abs / naive_abs.max(f64::MIN_POSITIVE),
        coverage_90: inside as f64 / nn,
        mase_by_horizon: abs_h
            .iter()
            .zip(&naive_h)
            .map(|(a, b)| a / b.max(f64::MIN_POSITIVE))
            .collect(),
        mae_by_feature: abs_f
            .iter()
            .zip(&n_f)
            .map(|(a, c)| a / (*c).max(1) as f64)
            .collect(),
        points: n,
        over_line: (judged > 0).then(|| over as f64 / judged as f64),
        alarms: Some(alarms),
        judged: Some(judged),
        labels: (!verdicts.is_empty())
            .then(|| crate::labels::LabelScore::of(verdicts, &alarmed, scored_from))
            .filter(|l| !l.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{FEATURES, FleetSpec, generate};

    fn small_config() -> (Config, StreamConfig) {
        let mut cfg = Config::default();
        cfg.model.hidden = 16;
        cfg.model.horizon = 2;
        cfg.train.window = 24;
        cfg.train.stride = 6;
        cfg.train.epochs = 25;
        cfg.train.batch_size = 32;
        cfg.train.learning_rate = 1e-2;
        let stream = StreamConfig {
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            interval: crate::config::HumanDuration::from_secs(300),
            ..StreamConfig::default()
        };
        cfg.streams = vec![stream.clone()];
        (cfg, stream)
    }

    #[test]
    fn seeded_training_beats_naive_and_is_reproducible() {
        let (cfg, stream) = small_config();
        let fleet = generate(&FleetSpec {
            devices: 8,
            readings: 400,
            faults: 0,
            ..FleetSpec::default()
        });
        let run = || train(&cfg, &stream, &fleet.readings, vec![], &mut |_| {}).expect("trains");
        let a = run();
        eprintln!("validation: {:?}", a.meta.validation);
        assert!(
            a.meta.validation.mase < 0.9,
            "MASE {} should beat the naive forecast with margin",
            a.meta.validation.mase
        );
        assert!(
            a.meta.validation.coverage_90 > 0.7,
            "coverage {}",
            a.meta.validation.coverage_90
        );
        // The streaming kernel agrees with burn's own forward pass on the trained model.
        let m = &a.meta;
        let inf = a
            .model
            .export(&m.architecture, "t", &m.features, &m.mean, &m.std)
            .expect("export");
        let steps = 120;
        let xs: Vec<f32> = fleet.readings[..steps * 8]
            .iter()
            .step_by(8)
            .flat_map(|r| {
                r.values
                    .iter()
                    .zip(m.mean.iter().zip(&m.std))
                    .map(|(v, (mu, sd))| (v - mu) / sd)
            })
            .collect();
        let x = Tensor::<3>::from_data(
            TensorData::new(xs.clone(), [1, steps, m.features.len()]),
            &Device::flex(),
        );
        let burn_out = to_vec(a.model.forward(x)).expect("values");
        let ours = inf.head_outputs(crate::engine::kernel::Isa::detect(), steps, &xs);
        let diff = ours
            .iter()
            .zip(&burn_out)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-5,
            "kernel vs burn on a trained model: max abs diff {diff}"
        );
        let b = run();
        assert_eq!(
            a.meta.validation, b.meta.validation,
            "same seed, same data → same model"
        );
        let wa = to_vec(a.model.head.weight.val()).expect("a");
        let wb = to_vec(b.model.head.weight.val()).expect("b");
        assert_eq!(wa, wb);
    }

    /// One device, `n` readings 5 minutes apart, with a 2-hour gap after each index in `gaps`.
    fn history(n: usize, gaps: &[usize]) -> Vec<(&'static str, Vec<i64>)> {
        let mut ts = Vec::with_capacity(n);
        let mut t = 0i64;
        for i in 0..n {
            ts.push(t);
            t += if gaps.contains(&i) { 7_200 } else { 300 } * 1_000_000_000;
        }
        vec![("pump-1", ts)]
    }

    const HOUR: HumanDuration = HumanDuration::from_secs(3600);

    #[test]
    fn the_configured_cut_is_kept_when_it_fits() {
        let p = plan(&history(300, &[]), 48, 3, 0.2, HOUR).expect("plan");
        assert_eq!(
            p,
            Plan {
                window: 48,
                validation_fraction: 0.2,
                validation_on_tail: false,
                warnings: vec![],
            }
        );
    }

    #[test]
    fn a_short_history_shrinks_the_window() {
        // 200 readings: the validation part, the last 40, has room for windows of 37 + 3.
        let p = plan(&history(200, &[]), 48, 3, 0.2, HOUR).expect("plan");
        assert_eq!((p.window, p.validation_fraction), (37, 0.2));
        assert!(!p.validation_on_tail);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        let w = &p.warnings[0];
        assert!(
            w.contains("train.window 48")
                && w.contains("windows of 37")
                && w.contains("validation part")
                && w.contains("40 consecutive readings"),
            "{w}"
        );
        // A gap in the training part limits it there instead.
        let p = plan(&history(300, &[200]), 48, 3, 0.2, HOUR).expect("plan");
        assert_eq!(
            p.window, 48,
            "the validation part (60) and [0, 201) still fit 51"
        );
        let p = plan(
            &history(300, &[20, 60, 100, 140, 180, 220]),
            48,
            3,
            0.2,
            HOUR,
        )
        .expect("plan");
        assert_eq!(
            p.window, 37,
            "runs of 40 in the training part: {:?}",
            p.warnings
        );
        assert!(p.warnings[0].contains("training part holds at most 40"));
        // A configured window below the minimum is never lengthened, only shrunk.
        let p = plan(&history(300, &[]), 4, 3, 0.2, HOUR).expect("plan");
        assert_eq!(p.window, 4);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn a_validation_part_too_short_for_a_window_moves_the_fraction() {
        // 40 readings: the last 20% (8) cannot hold 8 + 3; 26% (11) can.
        let p = plan(&history(40, &[]), 48, 3, 0.2, HOUR).expect("plan");
        assert_eq!((p.window, p.validation_fraction), (MIN_WINDOW, 0.26));
        assert!(!p.validation_on_tail);
        assert!(
            p.warnings[0].contains("train.validation_fraction 0.2 ")
                && p.warnings[0].contains("using train.validation_fraction 0.26"),
            "{:?}",
            p.warnings
        );
        assert!(p.warnings[1].contains("windows of 8"), "{:?}", p.warnings);
        // When the training part is the short one (a gap early on), the fraction shrinks.
        let p = plan(&history(24, &[1]), 48, 3, 0.5, HOUR).expect("plan");
        assert_eq!((p.window, p.validation_fraction), (MIN_WINDOW, 0.45));
        assert!(p.warnings[0].contains("training part holds at most 10"));
        // No split fits: validation on the tail of the training windows.
        let p = plan(&history(16, &[]), 48, 3, 0.2, HOUR).expect("plan");
        assert_eq!((p.window, p.validation_fraction), (13, 0.2));
        assert!(p.validation_on_tail);
        assert!(
            p.warnings[0].contains("validating on the tail of the training windows"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn nothing_to_learn_from_says_how_much_is_needed() {
        // Runs of 10 between gaps.
        let err = plan(&history(30, &[9, 19]), 48, 3, 0.2, HOUR)
            .expect_err("fails")
            .to_string();
        assert_eq!(
            err,
            "not enough data: training needs at least 11 consecutive readings of one device \
             (a window of 8, the shortest train.window 48 is shrunk to, + model.horizon 3) with \
             no gap longer than engine.max_gap (1h); the longest device, \"pump-1\", has 10"
        );
        let err = plan(&history(5, &[]), 4, 2, 0.2, HOUR)
            .expect_err("fails")
            .to_string();
        assert!(
            err.contains("at least 6 consecutive readings")
                && err.contains("(train.window 4 + model.horizon 2)")
                && err.contains("has 5"),
            "{err}"
        );
        // Through `train`: two devices of 9 readings, window 24 → 8, horizon 2.
        let (cfg, stream) = small_config();
        let fleet = generate(&FleetSpec {
            devices: 2,
            readings: 9,
            faults: 0,
            ..FleetSpec::default()
        });
        let err = train(&cfg, &stream, &fleet.readings, vec![], &mut |_| {})
            .err()
            .expect("fails")
            .to_string();
        assert!(
            err.contains("at least 10 consecutive readings") && err.contains("has 9"),
            "{err}"
        );
    }

    #[test]
    fn a_very_short_history_trains_and_validates_on_its_tail() {
        let (mut cfg, stream) = small_config();
        cfg.train.epochs = 3;
        let fleet = generate(&FleetSpec {
            devices: 2,
            readings: 16,
            faults: 0,
            ..FleetSpec::default()
        });
        let t = train(&cfg, &stream, &fleet.readings, vec![], &mut |_| {}).expect("trains");
        assert_eq!(
            t.meta.training.window, 14,
            "24 shrunk to the 16 - 2 readings there are"
        );
        assert!(t.meta.training.validation_windows >= 2);
        assert!(t.meta.validation.points > 0 && t.meta.validation.mae.is_finite());
    }
}
