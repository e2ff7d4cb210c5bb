//! `sensorcast bench --kernel`: the model core alone (the LSTM step and the forecast head on one
//! micro-batch, again and again, with no device state, detection or output) held against what
//! the core can do at most: its measured multiply-add peak on the same instruction set.

use super::bench::BenchSpec;
use crate::engine::kernel::{self, Isa, LstmLayer, STEP_CHUNK, Workspace};
use crate::engine::testing::synthetic_model;
use std::time::{Duration, Instant};

/// The model core's speed on one shape.
#[derive(Debug, Clone)]
pub struct KernelResult {
    /// Rows of the micro-batch.
    pub rows: usize,
    /// LSTM step (every layer: matrix product and cell update), ns per row.
    pub step_ns_per_row: f64,
    /// Forecast head (matrix product), ns per row.
    pub head_ns_per_row: f64,
    /// The step's matrix products alone (every layer, in the step's chunks of rows, without
    /// copying the inputs in or the cell update), ns per row: what is left of the step is the
    /// cell and the copies.
    pub product_ns_per_row: f64,
    /// Floating-point operations per row of the step's matrix products alone.
    pub product_flop_per_row: f64,
    /// Floating-point operations per row of the step's and head's matrix products: two per
    /// multiply-add of the model's own weights (padding and the cell's element-wise work not
    /// counted).
    pub flop_per_row: f64,
    /// The core's measured multiply-add peak on the same instruction set, FLOP per second
    /// (`None` for portable code).
    pub peak_flops: Option<f64>,
}

impl KernelResult {
    /// FLOP per second of the step and head together.
    pub fn flops(&self) -> f64 {
        self.flop_per_row * 1e9 / (self.step_ns_per_row + self.head_ns_per_row).max(1e-9)
    }

    /// [`Self::flops`] as a fraction of the peak.
    pub fn fraction_of_peak(&self) -> Option<f64> {
        self.peak_flops.map(|p| self.flops() / p)
    }

    /// The step's matrix products' FLOP per second as a fraction of the peak.
    pub fn product_fraction_of_peak(&self) -> Option<f64> {
        let flops = self.product_flop_per_row * 1e9 / self.product_ns_per_row.max(1e-9);
        self.peak_flops.map(|p| flops / p)
    }
}

/// Runs the step and head of a model of `spec`'s shape on a micro-batch of `spec.batch` rows
/// for about `time`, then the step's products alone for about half of that, then measures the
/// peak for about a fifth.
pub fn run(spec: &BenchSpec, isa: Isa, time: Duration) -> KernelResult {
    let model = synthetic_model(spec.shape());
    let rows = spec.batch;
    let state_len = spec.hidden * spec.layers;
    let top = spec.hidden;
    let x: Vec<f32> = (0..rows * spec.features)
        .map(|i| ((i % 97) as f32 * 0.13).sin())
        .collect();
    let (mut h, mut c) = (vec![0.0; rows * state_len], vec![0.0; rows * state_len]);
    let mut head_out = Vec::new();
    let mut ws = Workspace::default();
    let (mut step, mut head, mut passes) = (Duration::ZERO, Duration::ZERO, 0u64);
    // One untimed pass sizes the workspace and warms the caches.
    while passes == 0 || step + head < time {
        let t0 = Instant::now();
        model.stack.step(isa, &mut ws, rows, &x, &mut h, &mut c);
        let t1 = Instant::now();
        model
            .stack
            .top_gemm(isa, rows, &mut h, &model.head, &mut head_out);
        if passes > 0 {
            step += t1 - t0;
            head += t1.elapsed();
        }
        passes += 1;
    }
    std::hint::black_box(&head_out);
    let timed = (passes - 1) as f64 * rows as f64;
    let per_row = |d: Duration| d.as_secs_f64() * 1e9 / timed;
    let gates: usize = model
        .stack
        .layers()
        .iter()
        .map(|l| l.input() + l.hidden())
        .map(|k| 2 * k * 4 * spec.hidden)
        .sum();
    let head_flop = 2 * top * 2 * spec.horizon * spec.features;
    KernelResult {
        rows,
        step_ns_per_row: per_row(step),
        head_ns_per_row: per_row(head),
        product_ns_per_row: time_products(model.stack.layers(), isa, rows, time / 2),
        product_flop_per_row: gates as f64,
        flop_per_row: (gates + head_flop) as f64,
        peak_flops: kernel::fma_peak_flops(isa, time / 5),
    }
}

/// ns per row of the layers' matrix products alone over `rows` rows, in the step's chunks of
/// [`STEP_CHUNK`] rows (each chunk's gates into one buffer, as the step does), for about `time`.
fn time_products(layers: &[LstmLayer], isa: Isa, rows: usize, time: Duration) -> f64 {
    let padded = kernel::padded_rows(STEP_CHUNK.min(rows));
    // Each layer's `[x, h]` rows: the values do not change the time (none is subnormal).
    let inputs: Vec<Vec<f32>> = layers
        .iter()
        .map(|l| 0..padded * (l.input() + l.hidden()))
        .map(|n| n.map(|i| ((i % 89) as f32 * 0.17).cos()).collect())
        .collect();
    let mut out = Vec::new();
    let (mut spent, mut passes) = (Duration::ZERO, 0u64);
    while passes == 0 || spent < time {
        let t0 = Instant::now();
        for (layer, a) in layers.iter().zip(&inputs) {
            for r0 in (0..rows).step_by(STEP_CHUNK) {
                let n = kernel::padded_rows((rows - r0).min(STEP_CHUNK));
                out.resize(n * layer.gates().n_pad(), 0.0);
                kernel::gemm_bias(isa, a, n, layer.gates(), &mut out);
            }
        }
        // The first pass sizes the buffer and warms the caches.
        if passes > 0 {
            spent += t0.elapsed();
        }
        passes += 1;
    }
    std::hint::black_box(&out);
    spent.as_secs_f64() * 1e9 / ((passes - 1) as f64 * rows as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_model_s_own_multiply_adds_and_measures_something() {
        let spec = BenchSpec {
            devices: 1,
            steps: 1,
            hidden: 16,
            features: 3,
            layers: 2,
            horizon: 2,
            batch: 13,
        };
        let r = run(&spec, Isa::detect(), Duration::from_millis(20));
        // Layer 1: (3 + 16) inputs, layer 2: (16 + 16), 4 gates of 16 each; head 16 → 2·2·3.
        let expected = 2 * (3 + 16) * 64 + 2 * (16 + 16) * 64 + 2 * 16 * 12;
        assert_eq!(r.flop_per_row, expected as f64);
        assert_eq!(r.rows, 13);
        assert!(r.step_ns_per_row > 0.0 && r.head_ns_per_row > 0.0);
        assert!(r.product_ns_per_row > 0.0 && r.product_ns_per_row.is_finite());
        assert_eq!(r.product_flop_per_row, (expected - 2 * 16 * 12) as f64);
        assert!(r.flops().is_finite() && r.flops() > 0.0);
        match (Isa::detect() == Isa::PORTABLE, r.peak_flops) {
            (true, peak) => assert_eq!(peak, None),
            (false, Some(peak)) => {
                assert!(peak > 0.0 && peak.is_finite());
                assert!(r.product_fraction_of_peak().is_some_and(|f| f > 0.0));
            }
            (false, None) => panic!("a vector ISA has a measurable peak"),
        }
    }
}
