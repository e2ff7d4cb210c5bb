//! `sensorcast state bench`: what checkpoints cost — size, time to take one on the engine
//! thread, time to persist it, and time to read it back and restore it into a fresh engine —
//! for a synthetic fleet, through the same code `serve` runs (snapshot, encode, the directory
//! store's durable write or the Kafka store's produce, load with checks, restore).

use super::bench::BenchSpec;
use crate::engine::testing::{settings, synthetic_model, synthetic_readings};
use crate::engine::{BatchOutput, Engine};
use crate::state::{Checkpoint, Expect, Header, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measurement.
#[derive(Debug, Clone)]
pub struct StateBench {
    /// Devices in the engine.
    pub devices: usize,
    /// Partitions they are spread over.
    pub partitions: u32,
    /// Bytes of all partitions' checkpoint files.
    pub bytes: usize,
    /// Taking the snapshot on the engine thread (the processing a checkpoint costs).
    pub snapshot: Duration,
    /// Encoding and writing every partition's file durably (off the engine thread in `serve`).
    pub write: Duration,
    /// Reading, checking and decoding every file.
    pub load: Duration,
    /// Restoring the devices into a fresh engine.
    pub restore: Duration,
}

/// Why the state benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum StateBenchError {
    /// The engine refused the synthetic model.
    #[error(transparent)]
    Model(#[from] crate::engine::ModelError),
    /// A batch does not fit the model.
    #[error(transparent)]
    Batch(#[from] crate::engine::ShapeError),
    /// A checkpoint could not be written.
    #[error("cannot write a checkpoint: {0}")]
    Write(#[from] std::io::Error),
    /// A checkpoint could not be restored.
    #[error(transparent)]
    Restore(#[from] crate::engine::snapshot::RestoreError),
    /// Fewer devices came back than were written.
    #[error("{restored} of {devices} devices restored")]
    Restored {
        /// Devices restored.
        restored: usize,
        /// Devices written.
        devices: usize,
    },
    /// A checkpoint just written is not found again.
    #[error("partition {0}: checkpoint not found")]
    NotFound(u32),
}

/// Measures checkpoints of `devices` devices spread over `partitions` partitions, writing
/// them to `store` (under the group and stream `bench`).
pub fn run(
    shape: &BenchSpec,
    devices: usize,
    partitions: u32,
    store: &Store,
) -> Result<StateBench, StateBenchError> {
    let model = Arc::new(synthetic_model(shape.shape()));
    let mut engine = Engine::new(Arc::clone(&model), settings())?;
    let mut out = BatchOutput::default();
    // Two readings per device, so that every part of the state has been written to.
    let readings = synthetic_readings(devices, 2, shape.features);
    let shards: Vec<u32> = (0..readings.len())
        .map(|i| (i % devices) as u32 % partitions)
        .collect();
    for (chunk, s) in readings.chunks(shape.batch).zip(shards.chunks(shape.batch)) {
        engine.process_sharded(chunk, s, &mut out)?;
    }
    drop(readings);
    let t = Instant::now();
    let snaps = engine.snapshot(|_| true);
    let snapshot = t.elapsed();
    let layout = engine.state_layout();
    let t = Instant::now();
    let mut bytes = 0;
    for (p, records) in snaps {
        let c = Checkpoint {
            header: Header {
                group: "bench".into(),
                stream: "bench".into(),
                topic: "bench".into(),
                topic_id: None,
                partition: p as i32,
                offset: devices as i64,
                model: model.version.clone(),
                layout,
                devices: records.devices as u64,
                created_ms: 0,
                parked: None,
            },
            records,
        };
        bytes += store.write(&c)?.1;
    }
    let write = t.elapsed();
    drop(engine);
    let mut fresh = Engine::new(Arc::clone(&model), settings())?;
    let (mut load, mut restore) = (Duration::ZERO, Duration::ZERO);
    for p in 0..partitions {
        let t = Instant::now();
        let loaded = store.load(&Expect {
            group: "bench",
            stream: "bench",
            topic: "bench",
            partition: p as i32,
            model: Some(&model.version),
            layout: Some(layout),
            topic_id: None,
            range: None,
        });
        let (c, _) = loaded.checkpoint.ok_or(StateBenchError::NotFound(p))?;
        load += t.elapsed();
        let t = Instant::now();
        fresh.restore(p, c.header.layout, &c.records)?;
        restore += t.elapsed();
    }
    if fresh.devices() != devices {
        return Err(StateBenchError::Restored {
            restored: fresh.devices(),
            devices,
        });
    }
    Ok(StateBench {
        devices,
        partitions,
        bytes,
        snapshot,
        write,
        load,
        restore,
    })
}
