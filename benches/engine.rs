//! Criterion benchmark of the batched engine step (gather → one matrix product per layer →
//! scatter, plus forecast head and scoring). Targets live here and in `sensorcast bench`,
//! never in timed tests.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sensorcast::engine::testing::{settings, synthetic_model, synthetic_readings};
use sensorcast::engine::{BatchOutput, Engine};
use sensorcast::tools::bench::BenchSpec;
use std::hint::black_box;
use std::sync::Arc;

fn batched_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_step");
    for &(batch, hidden) in &[(1usize, 64usize), (64, 64), (4096, 64), (4096, 32)] {
        let spec = BenchSpec {
            devices: batch,
            steps: 64,
            hidden,
            features: 8,
            layers: 1,
            horizon: 3,
            batch,
        };
        let model = Arc::new(synthetic_model(spec.shape()));
        let readings = synthetic_readings(batch, 64, spec.features);
        let mut engine = Engine::new(model, settings()).expect("engine");
        let mut out = BatchOutput::default();
        // Warm every device past its first reading so the measured steps score too.
        engine
            .process(&readings[..batch], &mut out)
            .expect("warm-up");
        let steps: Vec<&[sensorcast::decode::Reading]> = readings[batch..].chunks(batch).collect();
        let mut i = 0;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("hidden{hidden}"), batch),
            &batch,
            |b, _| {
                b.iter(|| {
                    // Readings must move forward in time; wrap by rebuilding the engine rarely.
                    if i == steps.len() {
                        engine =
                            Engine::new(Arc::clone(engine.model()), settings()).expect("engine");
                        engine
                            .process(&readings[..batch], &mut out)
                            .expect("warm-up");
                        i = 0;
                    }
                    engine.process(black_box(steps[i]), &mut out).expect("step");
                    i += 1;
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, batched_step);
criterion_main!(benches);
