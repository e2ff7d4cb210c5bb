//! `sensorcast bench`: a synthetic fleet through the engine only (no I/O), reporting events
//! per second and state bytes per device. Shared with the criterion benchmark.

use crate::engine::kernel::Isa;
use crate::engine::testing::{Shape, settings, synthetic_model, synthetic_readings};
use crate::engine::{BatchOutput, Engine, InferenceModel, Outcome};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark shape (also the `sensorcast bench` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchSpec {
    /// Devices.
    #[arg(long, default_value_t = 10_000, value_parser = positive)]
    pub devices: usize,
    /// Readings per device timed, all of them past the warm-up (30 readings) and the deviation
    /// baselines' learning (200) of the default config, which every device goes through
    /// first, untimed: every timed reading runs every piece of evidence and the alarm policy,
    /// as a fleet's readings do once it has run a while.
    #[arg(long, default_value_t = 300, value_parser = positive)]
    pub steps: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub hidden: usize,
    /// Features.
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub features: usize,
    /// LSTM layers.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub layers: usize,
    /// Forecast horizon.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    pub horizon: usize,
    /// Readings per micro-batch.
    #[arg(long, default_value_t = 4096, value_parser = positive)]
    pub batch: usize,
}

impl BenchSpec {
    /// The model's shape.
    pub fn shape(&self) -> Shape {
        Shape {
            features: self.features,
            hidden: self.hidden,
            layers: self.layers,
            horizon: self.horizon,
        }
    }
}

/// A whole number of at least 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1")),
    }
}

/// Benchmark result.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Readings per second through `Engine::process`.
    pub events_per_s: f64,
    /// Heap bytes of device state per device.
    pub state_bytes_per_device: usize,
    /// Growth of the process's resident memory over the run, per device (Linux; 0 elsewhere):
    /// what the table really costs, allocator included.
    pub rss_bytes_per_device: usize,
    /// Readings the engine stepped and scored in the timed run (all `devices × steps` unless
    /// one was stale), every one past its device's warm-up and learning, so that every piece
    /// of evidence and the alarm policy ran for it.
    pub events: usize,
    /// Readings the devices went through first, untimed: their warm-up and learning.
    pub learning: usize,
    /// Devices the engine tracks afterwards.
    pub devices: usize,
    /// Time spent in the engine.
    pub elapsed: Duration,
    /// Instruction set used.
    pub isa: Isa,
    /// Where the engine's time went, by phase of its waves (of a second run, measured: the
    /// first is timed as a whole only).
    pub phases: crate::engine::PhaseTimes,
    /// That second run's time in the engine, phases and the rest (device look-up, waves).
    pub phases_of: Duration,
    /// Whether the model scored with measured tail tables (else Gaussian tails).
    pub calibrated: bool,
}

/// Runs the benchmark.
pub fn run(spec: &BenchSpec) -> Result<BenchResult, crate::engine::RunError> {
    run_on(spec, Isa::detect())
}

/// [`run`] with the kernel on instruction set `isa` (a lower one than the CPU's best measures
/// that code path on this machine).
pub fn run_on(spec: &BenchSpec, isa: Isa) -> Result<BenchResult, crate::engine::RunError> {
    let model = calibrated_model(spec)?;
    let settings = settings();
    let learning = settings.warmup as usize + settings.detect.learning as usize;
    let readings = synthetic_readings(spec.devices, learning + spec.steps, spec.features);
    // The generator interleaves devices step by step: the first `learning` steps of all.
    let (first, timed) = readings.split_at(learning * spec.devices);
    let mut engine = Engine::new(Arc::clone(&model), settings)?.with_isa(isa);
    let mut out = BatchOutput::default();
    let rss0 = rss_bytes();
    scored(&mut engine, first, spec.batch, &mut out)?;
    let start = Instant::now();
    let events = scored(&mut engine, timed, spec.batch, &mut out)?;
    let elapsed = start.elapsed();
    let rss = rss_bytes().saturating_sub(rss0);
    let (phases, phases_of) = phase_run(spec, &model, (first, timed), isa)?;
    Ok(BenchResult {
        events_per_s: events as f64 / elapsed.as_secs_f64().max(1e-9),
        state_bytes_per_device: engine.state_heap_bytes() / spec.devices.max(1),
        rss_bytes_per_device: rss / spec.devices.max(1),
        events,
        learning: first.len(),
        devices: engine.devices(),
        elapsed,
        isa,
        phases,
        phases_of,
        calibrated: model.calibration.is_some(),
    })
}

/// Runs `readings` through `engine` in micro-batches of `batch`; returns how many it scored.
fn scored(
    engine: &mut Engine,
    readings: &[crate::decode::Reading],
    batch: usize,
    out: &mut BatchOutput,
) -> Result<usize, crate::engine::RunError> {
    let mut scored = 0;
    for chunk in readings.chunks(batch.max(1)) {
        engine.process(chunk, out)?;
        scored += out
            .outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Scored(_)))
            .count();
    }
    Ok(scored)
}

/// The same run on a fresh engine that measures the phases of the timed readings (after the
/// devices' learning, untimed, as in [`run_on`]), so that the clock reads do not weigh on the
/// figure above; returns the phases and the whole time in the engine.
fn phase_run(
    spec: &BenchSpec,
    model: &Arc<InferenceModel>,
    (first, timed): (&[crate::decode::Reading], &[crate::decode::Reading]),
    isa: Isa,
) -> Result<(crate::engine::PhaseTimes, Duration), crate::engine::RunError> {
    let mut engine = Engine::new(Arc::clone(model), settings())?.with_isa(isa);
    let mut out = BatchOutput::default();
    scored(&mut engine, first, spec.batch, &mut out)?;
    engine.time_phases();
    let start = Instant::now();
    for chunk in timed.chunks(spec.batch.max(1)) {
        engine.process(chunk, &mut out)?;
    }
    let all = start.elapsed();
    Ok((engine.phase_times().unwrap_or_default(), all))
}

/// Devices and readings per device of the sample the benchmark's anomaly thresholds are
/// measured on (past warm-up and learning for half of them).
const CALIBRATION_SAMPLE: (usize, usize) = (500, 460);

/// The synthetic model with anomaly thresholds measured on a sample of a synthetic fleet, as
/// training measures a real model's: scoring then reads tail tables, as it does in
/// production, instead of falling back to Gaussian tails.
fn calibrated_model(spec: &BenchSpec) -> Result<Arc<InferenceModel>, crate::engine::RunError> {
    let mut model = synthetic_model(spec.shape());
    let (devices, steps) = CALIBRATION_SAMPLE;
    let sample = synthetic_readings(devices, steps, spec.features);
    // The generator interleaves devices step by step.
    let by_device: Vec<Vec<&crate::decode::Reading>> = (0..devices)
        .map(|d| (0..steps).map(|t| &sample[t * devices + d]).collect())
        .collect();
    let histories: Vec<(&[&crate::decode::Reading], usize)> = by_device
        .iter()
        .map(|r| (r.as_slice(), steps / 2))
        .collect();
    let calibration =
        crate::engine::calibrate::calibrate(Arc::new(model.clone()), settings(), &histories)?;
    model.set_calibration(calibration);
    Ok(Arc::new(model))
}

/// Resident memory of this process (`VmRSS`), 0 where `/proc` does not tell.
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reading_of_every_device_is_stepped_and_scored() {
        // Batches that cut across steps, two layers: nothing skipped, nothing counted twice.
        let spec = BenchSpec {
            devices: 300,
            steps: 5,
            hidden: 16,
            features: 3,
            layers: 2,
            horizon: 2,
            batch: 128,
        };
        let r = run(&spec).expect("bench");
        assert_eq!(r.events, spec.devices * spec.steps);
        assert_eq!(r.devices, spec.devices);
        // Every device learnt first, untimed, so that every timed reading was fully scored.
        let s = settings();
        let learning = s.warmup as usize + s.detect.learning as usize;
        assert_eq!(r.learning, spec.devices * learning);
        assert!(r.phases.detect > Duration::ZERO, "the phases were timed");
        // The state really holds h and C of every layer (f32)…
        let hc = 2 * spec.layers * spec.hidden * 4;
        assert!(
            r.state_bytes_per_device >= hc,
            "{} bytes per device cannot hold h and C ({hc} bytes)",
            r.state_bytes_per_device
        );
    }

    #[test]
    fn state_per_device_is_within_budget_at_the_readme_shape() {
        // …and at the shape the README reports (hidden 64, 8 features, one layer) stays
        // within the 2 KiB budget (docs/ARCHITECTURE.md §3.5).
        let spec = BenchSpec {
            devices: 3000,
            steps: 2,
            hidden: 64,
            features: 8,
            layers: 1,
            horizon: 3,
            batch: 4096,
        };
        let r = run(&spec).expect("bench");
        assert_eq!(r.events, spec.devices * spec.steps);
        assert!(
            (2 * 64 * 4..=2048).contains(&r.state_bytes_per_device),
            "{} bytes per device",
            r.state_bytes_per_device
        );
    }
}
