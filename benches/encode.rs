//! Criterion benchmark of encoding: the line-protocol points of one processed micro-batch
//! (what `serve` appends to a write request per batch), with the default `[output]`, with
//! every step and no reading points, and with the default for readings of two decimals
//! (`default_two_decimals`: what a plant with a resolution of 0.01 sends). The batch comes
//! from the engine itself, past warm-up and the deviation baselines' learning, so that scores,
//! explanations and bands are real values. Reports readings per second; targets live here,
//! never in timed tests.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sensorcast::config::{HorizonSet, Horizons, OutputConfig};
use sensorcast::decode::Reading;
use sensorcast::engine::testing::{settings, synthetic_model, synthetic_readings};
use sensorcast::engine::{BatchOutput, Engine};
use sensorcast::output::PointFormat;
use sensorcast::tools::bench::BenchSpec;
use std::hint::black_box;
use std::sync::Arc;

const DEVICES: usize = 1024;
/// Past the default warm-up (30) and the deviation baselines' learning (200).
const STEPS: usize = 240;

/// Feature names as a plant names them (the synthetic model's are `f0`, `f1`, …).
const NAMES: [&str; 8] = [
    "vibration",
    "temperature",
    "current",
    "pressure",
    "flow",
    "voltage",
    "rpm",
    "humidity",
];

/// The last batch of a fleet of `features`-feature devices run through the engine, with the
/// model named as the registry names versions.
fn processed(features: usize) -> (Vec<String>, Vec<Reading>, BatchOutput) {
    let spec = BenchSpec {
        devices: DEVICES,
        steps: STEPS,
        hidden: 64,
        features,
        layers: 1,
        horizon: 3,
        batch: DEVICES,
    };
    let mut model = synthetic_model(spec.shape());
    model.features = NAMES[..features].iter().map(|s| s.to_string()).collect();
    model.version = "20261206T054649Z".into();
    let names = model.features.clone();
    let readings = synthetic_readings(DEVICES, STEPS, features);
    let mut engine = Engine::new(Arc::new(model), settings()).expect("engine");
    let mut out = BatchOutput::default();
    let mut last = &readings[..0];
    for batch in readings.chunks(DEVICES) {
        engine.process(batch, &mut out).expect("step");
        last = batch;
    }
    (names, last.to_vec(), out)
}

fn two_decimals(r: &Reading) -> Reading {
    let mut r = r.clone();
    for v in &mut r.values {
        *v = (*v * 100.0).round() / 100.0;
    }
    r
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_line_protocol");
    let full = OutputConfig {
        readings: false,
        horizons: Horizons::Named(HorizonSet::All),
        ..OutputConfig::default()
    };
    for features in [4, 8] {
        let (names, readings, out) = processed(features);
        // The same readings as a plant with a resolution of 0.01 would send them: their
        // values are written with at most two decimals (the engine's outputs are unchanged).
        let short: Vec<Reading> = readings.iter().map(two_decimals).collect();
        for (label, output, readings) in [
            ("default", OutputConfig::default(), &readings),
            ("full", full.clone(), &readings),
            ("default_two_decimals", OutputConfig::default(), &short),
        ] {
            let fmt = PointFormat::new("pumps", "20261206T054649Z", &names, 3, &output);
            let mut body = String::new();
            group.throughput(Throughput::Elements(readings.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(label, format!("{features}_features")),
                readings,
                |b, readings| {
                    b.iter(|| {
                        // A pooled body: cleared, its capacity kept.
                        body.clear();
                        for (i, r) in readings.iter().enumerate() {
                            fmt.write_line_protocol(&mut body, r, &out, i);
                        }
                        black_box(body.len())
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
