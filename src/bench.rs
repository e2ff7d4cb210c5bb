//! `sensorcast bench`: a synthetic fleet through the engine only (no I/O), reporting events
//! per second and state bytes per device. Shared with the criterion benchmark.

use crate::decode::Reading;
use crate::engine::{BatchOutput, Engine, EngineSettings, InferenceModel, Outcome};
use crate::model::{Architecture, Forecaster};
use burn::prelude::Device;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark shape (also the `sensorcast bench` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchSpec {
    /// Devices.
    #[arg(long, default_value_t = 10_000, value_parser = positive)]
    pub devices: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 50, value_parser = positive)]
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
    /// Readings the engine stepped and scored (all `devices × steps` unless one was stale).
    pub events: usize,
    /// Devices the engine tracks afterwards.
    pub devices: usize,
    /// Time spent in the engine.
    pub elapsed: Duration,
    /// Instruction set used.
    pub isa: crate::engine::kernel::Isa,
}

/// A randomly initialised model of the given shape (identity normalisation).
pub fn synthetic_model(spec: &BenchSpec) -> InferenceModel {
    let arch = Architecture {
        input: spec.features,
        hidden: spec.hidden,
        layers: spec.layers,
        horizon: spec.horizon,
    };
    let features: Vec<String> = (0..spec.features).map(|i| format!("f{i}")).collect();
    Forecaster::seeded(&arch, &Device::flex(), 1)
        .export(
            &arch,
            "bench",
            &features,
            &vec![0.0; spec.features],
            &vec![1.0; spec.features],
        )
        .unwrap_or_else(|e| unreachable!("a freshly built model exports: {e}"))
}

/// A small randomly initialised model for tests: one layer of `hidden`, `features` inputs,
/// two forecast steps.
#[cfg(test)]
pub fn small_model(hidden: usize, features: usize) -> InferenceModel {
    synthetic_model(&BenchSpec {
        devices: 0,
        steps: 0,
        hidden,
        features,
        layers: 1,
        horizon: 2,
        batch: 1,
    })
}

/// Readings for `devices × steps`, step by step, one minute apart, smooth signals plus noise.
pub fn synthetic_readings(devices: usize, steps: usize, features: usize) -> Vec<Reading> {
    let names: Vec<String> = (0..devices).map(|d| format!("dev-{d:06}")).collect();
    let mut out = Vec::with_capacity(devices * steps);
    let mut seed = 0x9e37_79b9_u32;
    for t in 0..steps {
        for (d, name) in names.iter().enumerate() {
            let values = (0..features)
                .map(|f| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let noise = seed as f32 / u32::MAX as f32 - 0.5;
                    ((t as f32) * 0.05 + d as f32 * 0.1 + f as f32).sin() + 0.1 * noise
                })
                .collect();
            out.push(Reading {
                device: name.clone(),
                ts: 1_795_737_600_000_000_000 + (t as i64) * 60_000_000_000,
                values,
            });
        }
    }
    out
}

/// Settings used by the benchmark (defaults of the config).
pub fn settings() -> EngineSettings {
    let cfg = crate::config::Config::default();
    EngineSettings::from_config(&cfg, &cfg.streams[0])
}

/// Runs the benchmark.
pub fn run(spec: &BenchSpec) -> Result<BenchResult, String> {
    let model = Arc::new(synthetic_model(spec));
    let readings = synthetic_readings(spec.devices, spec.steps, spec.features);
    let mut engine = Engine::new(model, settings())?;
    let mut out = BatchOutput::default();
    let mut scored = 0;
    let rss0 = rss_bytes();
    let start = Instant::now();
    for chunk in readings.chunks(spec.batch.max(1)) {
        engine.process(chunk, &mut out).map_err(|e| e.to_string())?;
        scored += out
            .outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Scored(_)))
            .count();
    }
    let elapsed = start.elapsed();
    let rss = rss_bytes().saturating_sub(rss0);
    Ok(BenchResult {
        events_per_s: scored as f64 / elapsed.as_secs_f64().max(1e-9),
        state_bytes_per_device: engine.state_heap_bytes() / spec.devices.max(1),
        rss_bytes_per_device: rss / spec.devices.max(1),
        events: scored,
        devices: engine.devices(),
        elapsed,
        isa: crate::engine::kernel::Isa::detect(),
    })
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
