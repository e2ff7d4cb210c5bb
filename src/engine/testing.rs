//! Synthetic models, readings and settings for the tests and benchmarks of the engine and of
//! everything built on it (`sensorcast bench`, the criterion benchmark, the state bench):
//! one builder, so every test engine is made the same way.

use super::kernel::{GateWeights, LstmLayer, LstmStack, PackedMatrix};
use super::{EngineSettings, InferenceModel};
use crate::decode::Reading;

/// A model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Features (inputs).
    pub features: usize,
    /// Hidden width.
    pub hidden: usize,
    /// LSTM layers.
    pub layers: usize,
    /// Forecast horizon.
    pub horizon: usize,
}

/// A randomly initialised model of the given shape (identity normalisation): weights drawn
/// uniformly from ±1/√hidden, as PyTorch's LSTM initialiser draws them, from a
/// fixed seed, so every run builds the same model.
pub fn synthetic_model(spec: Shape) -> InferenceModel {
    let Shape {
        features,
        hidden,
        layers,
        horizon,
    } = spec;
    let bound = 1.0 / (hidden as f32).sqrt();
    let mut state = 0x5eed_u64;
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * bound
            })
            .collect()
    };
    let stack = (0..layers)
        .map(|l| {
            let input = if l == 0 { features } else { hidden };
            let parts: Vec<[Vec<f32>; 4]> = (0..4)
                .map(|_| {
                    [
                        draw(input * hidden),
                        draw(hidden),
                        draw(hidden * hidden),
                        draw(hidden),
                    ]
                })
                .collect();
            let gates: [GateWeights<'_>; 4] = std::array::from_fn(|g| GateWeights {
                input_weight: &parts[g][0],
                input_bias: &parts[g][1],
                hidden_weight: &parts[g][2],
                hidden_bias: &parts[g][3],
            });
            LstmLayer::from_gate_transforms(input, hidden, gates)
        })
        .collect();
    // The head: `horizon · features` means, then as many log-variances.
    let width = 2 * horizon * features;
    let model = InferenceModel {
        version: "bench".into(),
        features: (0..features).map(|i| format!("f{i}")).collect(),
        horizon,
        mean: vec![0.0; features],
        std: vec![1.0; features],
        stack: LstmStack::new(stack)
            .unwrap_or_else(|e| unreachable!("a synthetic stack is well formed: {e}")),
        head: PackedMatrix::new(hidden, width, &draw(hidden * width), &draw(width)),
        calibration: None,
        longest_flat_ns: None,
    };
    model
        .validate()
        .unwrap_or_else(|e| unreachable!("a synthetic model is valid: {e}"));
    model
}

/// A small randomly initialised model for tests: one layer of `hidden`, `features` inputs,
/// two forecast steps.
#[cfg(test)]
pub fn small_model(hidden: usize, features: usize) -> InferenceModel {
    synthetic_model(Shape {
        features,
        hidden,
        layers: 1,
        horizon: 2,
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

/// The engine settings of the default configuration.
pub fn settings() -> EngineSettings {
    let cfg = crate::config::Config::default();
    EngineSettings::from_config(&cfg, &cfg.streams[0])
}
