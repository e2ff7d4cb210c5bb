//! A synthetic sensor fleet with known faults, for the demo, benchmarks, tests and `simulate`.
//!
//! Each device is a pump whose load follows a daily cycle plus slow random variation. Its
//! sensors are correlated through that load: motor current tracks it, temperature follows it
//! with thermal lag on top of an ambient daily cycle and a slow drift, vibration and pressure
//! scale with it. Every device has its own baselines and scales, so the fleet model must cope
//! with devices that run at different levels. Faults are injected at known times so that
//! detection can be scored.

use crate::decode::Reading;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The fleet's features, in order.
pub const FEATURES: [&str; 4] = ["vibration", "temperature", "current", "pressure"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Devices (`pump-000`, `pump-001`, …).
    pub devices: usize,
    /// Readings per device.
    pub readings: usize,
    /// Time between a device's readings, nanoseconds.
    pub interval_ns: i64,
    /// Readings per daily cycle.
    pub day_steps: usize,
    /// Time of the last step, nanoseconds since the epoch.
    pub end_ts: i64,
    /// Faults to inject (spread over devices, in the second half of the series).
    pub faults: usize,
    /// Seed: the same spec gives the same fleet.
    pub seed: u64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            devices: 24,
            readings: 1000,
            interval_ns: 300_000_000_000,
            day_steps: 288,
            // 2026-11-27T00:00:00Z
            end_ts: 1_795_737_600_000_000_000,
            faults: 8,
            seed: 7,
        }
    }
}

/// Kinds of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// One sensor jumps to a new level and stays there.
    LevelShift,
    /// One sensor drifts away steadily.
    Drift,
    /// Vibration grows much noisier (bearing wear).
    NoiseBurst,
    /// A short, large spike.
    Spike,
}

impl FaultKind {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LevelShift => "level_shift",
            FaultKind::Drift => "drift",
            FaultKind::NoiseBurst => "noise_burst",
            FaultKind::Spike => "spike",
        }
    }
}

/// An injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Device index.
    pub device: usize,
    /// Kind.
    pub kind: FaultKind,
    /// Affected feature index.
    pub feature: usize,
    /// First affected step.
    pub start: usize,
    /// One past the last affected step.
    pub end: usize,
}

/// The generated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Readings in time order (step by step, devices in order within a step).
    pub readings: Vec<Reading>,
    /// Injected faults.
    pub faults: Vec<Fault>,
    /// Step index of each reading (parallel to `readings`).
    pub steps: Vec<usize>,
}

/// Name of device `i`.
pub fn device_name(i: usize) -> String {
    format!("pump-{i:03}")
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; `1 - u` keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

struct DeviceParams {
    phase: f64,
    vib: f64,
    temp: f64,
    cur: f64,
    press: f64,
    drift: f64,
    offset_ns: i64,
}

/// Noise standard deviations per feature relative to the device's scale.
const NOISE: [f64; 4] = [0.04, 0.15, 0.05, 0.02];

/// Generates the fleet.
pub fn generate(spec: &FleetSpec) -> Fleet {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let params: Vec<DeviceParams> = (0..spec.devices)
        .map(|_| DeviceParams {
            phase: rng.random::<f64>() * std::f64::consts::TAU,
            vib: 0.5 + rng.random::<f64>() * 2.0,
            temp: 45.0 + rng.random::<f64>() * 30.0,
            cur: 8.0 + rng.random::<f64>() * 12.0,
            press: 3.0 + rng.random::<f64>() * 4.0,
            drift: (rng.random::<f64>() - 0.5) * 2.0,
            offset_ns: (rng.random::<f64>() * 1e9) as i64,
        })
        .collect();
    let faults = plan_faults(spec, &mut rng);
    let start_ts = spec.end_ts - (spec.readings.saturating_sub(1) as i64) * spec.interval_ns;
    let mut load_noise = vec![0.0f64; spec.devices];
    let mut thermal = vec![0.5f64; spec.devices];
    let mut readings = Vec::with_capacity(spec.devices * spec.readings);
    let mut steps = Vec::with_capacity(spec.devices * spec.readings);
    for t in 0..spec.readings {
        let day = std::f64::consts::TAU * t as f64 / spec.day_steps as f64;
        for (d, p) in params.iter().enumerate() {
            load_noise[d] = 0.97 * load_noise[d] + 0.03 * normal(&mut rng);
            let load = (0.6
                + 0.25 * (day + p.phase).sin()
                + 0.1 * (2.0 * day + p.phase).sin()
                + 0.5 * load_noise[d])
                .clamp(0.05, 1.2);
            thermal[d] += 0.1 * (load - thermal[d]);
            let ambient = 4.0 * (day - 1.0).sin();
            let mut v = [
                p.vib * (0.7 + 0.5 * load),
                p.temp + ambient + 18.0 * thermal[d] + p.drift * t as f64 / spec.day_steps as f64,
                p.cur * (0.4 + 0.8 * load),
                p.press * (0.9 + 0.25 * load),
            ];
            let scale = [p.vib, 1.0, p.cur, p.press];
            let mut noise_mult = [1.0; 4];
            for f in faults
                .iter()
                .filter(|f| f.device == d && (f.start..f.end).contains(&t))
            {
                let sigma = NOISE[f.feature] * scale[f.feature];
                let progress = (t - f.start + 1) as f64 / (f.end - f.start) as f64;
                match f.kind {
                    FaultKind::LevelShift => v[f.feature] += 6.0 * sigma,
                    FaultKind::Drift => v[f.feature] += 16.0 * sigma * progress,
                    FaultKind::NoiseBurst => noise_mult[f.feature] = 6.0,
                    FaultKind::Spike => v[f.feature] += 12.0 * sigma,
                }
            }
            let values = (0..4)
                .map(|f| (v[f] + NOISE[f] * scale[f] * noise_mult[f] * normal(&mut rng)) as f32)
                .collect();
            readings.push(Reading {
                device: device_name(d),
                ts: start_ts + t as i64 * spec.interval_ns + p.offset_ns.min(spec.interval_ns / 2),
                values,
            });
            steps.push(t);
        }
    }
    Fleet {
        readings,
        faults,
        steps,
    }
}

fn plan_faults(spec: &FleetSpec, rng: &mut ChaCha8Rng) -> Vec<Fault> {
    let kinds = [
        FaultKind::LevelShift,
        FaultKind::Drift,
        FaultKind::NoiseBurst,
        FaultKind::Spike,
    ];
    let first = spec.readings / 2;
    let mut faults = Vec::new();
    if spec.devices == 0 || spec.readings < 80 {
        return faults;
    }
    for i in 0..spec.faults {
        let kind = kinds[i % kinds.len()];
        let device = (i * 7 + 3) % spec.devices;
        let len = match kind {
            FaultKind::Spike => 2,
            FaultKind::Drift => 40,
            _ => 30,
        };
        // Faults on one device never overlap and leave room to settle.
        let span = spec.readings - first - len - 5;
        let mut start = first + rng.random_range(0..span.max(1));
        let mut tries = 0;
        while faults
            .iter()
            .any(|f: &Fault| f.device == device && start < f.end + 40 && f.start < start + len + 40)
            && tries < 50
        {
            start = first + rng.random_range(0..span.max(1));
            tries += 1;
        }
        let feature = match kind {
            FaultKind::NoiseBurst => 0,
            _ => rng.random_range(0..FEATURES.len()),
        };
        faults.push(Fault {
            device,
            kind,
            feature,
            start,
            end: start + len,
        });
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let spec = FleetSpec {
            devices: 5,
            readings: 200,
            faults: 4,
            ..FleetSpec::default()
        };
        let a = generate(&spec);
        let b = generate(&spec);
        assert_eq!(a.readings, b.readings);
        assert_eq!(a.readings.len(), 1000);
        assert_eq!(a.faults.len(), 4);
        assert!(
            a.readings
                .windows(2)
                .all(|w| w[0].ts <= w[1].ts + spec.interval_ns)
        );
        assert!(
            a.readings
                .iter()
                .all(|r| r.values.iter().all(|v| v.is_finite()))
        );
        let last = a.readings.iter().map(|r| r.ts).max().expect("readings");
        assert!(last >= spec.end_ts && last < spec.end_ts + spec.interval_ns);
        for f in &a.faults {
            assert!(f.start >= 100 && f.end <= 200, "{f:?}");
        }
    }
}
