//! The engine stage of `serve`: one [`Engine`] per stream, the device state they hold, and the
//! checkpoints taken of it.
//!
//! Runs on a thread of its own (stepping is CPU-bound). It knows, per partition, the offset of
//! the next message after everything it has stepped, so a snapshot taken between two batches
//! is a true checkpoint: the states after exactly the messages before that offset (§3.3).
//! Checkpoints go to the sink behind the points of those messages, so they are persisted only
//! once those points are written (§3.1). They are taken every `state.checkpoint_interval` (of
//! the partitions that moved since the last one), when partitions are revoked (then their
//! devices are forgotten here: the next owner restores them), and when the stage stops.

use super::{Checkpoint, Header};
use crate::config::Config;
use crate::decode::Reading;
use crate::engine::{BatchOutput, Engine, Outcome};
use crate::output::PointFormat;
use crate::pipeline::{Checkpoints, InBatch, OutBatch, ToEngine, ToSink};
use crate::telemetry::{Metrics, RateLimit, labels};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The engine stage.
pub struct EngineStage {
    engines: Vec<Engine>,
    names: Vec<String>,
    topics: Vec<String>,
    group: String,
    max_batch: usize,
    max_devices: usize,
    interval: Duration,
    metrics: Arc<Metrics>,
    /// Next offset per (stream, partition): everything before it has been stepped.
    next: HashMap<(usize, i32), i64>,
    /// Partitions stepped since their last checkpoint.
    dirty: BTreeSet<(usize, i32)>,
    last_checkpoint: Instant,
    per_stream: Vec<(Vec<Reading>, Vec<u32>)>,
    out: BatchOutput,
    log_limit: RateLimit,
}

impl EngineStage {
    /// A stage over one engine per configured stream (in config order).
    pub fn new(cfg: &Config, engines: Vec<Engine>, metrics: Arc<Metrics>) -> Self {
        let n = engines.len();
        Self {
            engines,
            names: cfg.streams.iter().map(|s| s.name.clone()).collect(),
            topics: cfg.streams.iter().map(|s| s.topic.clone()).collect(),
            group: cfg.kafka.group_id.clone(),
            max_batch: cfg.engine.max_batch,
            max_devices: cfg.engine.max_devices,
            interval: cfg.state.checkpoint_interval.get(),
            metrics,
            next: HashMap::new(),
            dirty: BTreeSet::new(),
            last_checkpoint: Instant::now(),
            per_stream: vec![(Vec::new(), Vec::new()); n],
            out: BatchOutput::default(),
            log_limit: RateLimit::default(),
        }
    }

    /// Runs until the input closes; then takes a last checkpoint of every partition.
    pub fn run(mut self, mut rx: mpsc::Receiver<ToEngine>, tx: mpsc::Sender<ToSink>) {
        while let Some(msg) = rx.blocking_recv() {
            let sent = match msg {
                ToEngine::Batch(b) => match self.step(b) {
                    Some(out) => tx.blocking_send(ToSink::Points(out)).is_ok(),
                    None => return,
                },
                ToEngine::Restore { stream, checkpoint } => {
                    self.restore(stream, *checkpoint);
                    true
                }
                ToEngine::Revoke { partitions, done } => {
                    let set = self.revoke(&partitions, done);
                    tx.blocking_send(ToSink::Checkpoints(set)).is_ok()
                }
            };
            if !sent {
                return;
            }
            if self.last_checkpoint.elapsed() >= self.interval && !self.dirty.is_empty() {
                let keys: Vec<_> = std::mem::take(&mut self.dirty).into_iter().collect();
                let set = Checkpoints {
                    checkpoints: self.checkpoints(&keys),
                    done: None,
                };
                self.last_checkpoint = Instant::now();
                if tx.blocking_send(ToSink::Checkpoints(set)).is_err() {
                    return;
                }
            }
        }
        let keys: Vec<_> = self.next.keys().copied().collect();
        let set = Checkpoints {
            checkpoints: self.checkpoints(&keys),
            done: None,
        };
        let _ = tx.blocking_send(ToSink::Checkpoints(set));
    }

    fn stream_of(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Steps a batch; `None` when a reading does not fit its model (a bug: the decoder checks
    /// the schema), which stops the pipeline rather than skip readings whose offsets would be
    /// committed.
    fn step(&mut self, batch: InBatch) -> Option<OutBatch> {
        self.metrics.batch_size.observe(batch.readings.len() as f64);
        for r in batch.readings {
            let (readings, shards) = &mut self.per_stream[r.stream];
            readings.push(r.reading);
            shards.push(r.partition as u32);
        }
        let mut body = String::new();
        for i in 0..self.engines.len() {
            if self.per_stream[i].0.is_empty() {
                continue;
            }
            let (readings, shards) = std::mem::take(&mut self.per_stream[i]);
            if !self.step_stream(i, &readings, &shards, &mut body) {
                return None;
            }
            let mut reuse = (readings, shards);
            reuse.0.clear();
            reuse.1.clear();
            self.per_stream[i] = reuse;
        }
        for (topic, partition, offset) in &batch.offsets.0 {
            if let Some(stream) = self.stream_of(topic) {
                let next = self.next.entry((stream, *partition)).or_insert(0);
                *next = (*next).max(offset + 1);
                self.dirty.insert((stream, *partition));
            }
        }
        Some(OutBatch {
            body,
            offsets: batch.offsets,
            msg_ts: batch.msg_ts,
            dead_letters: batch.dead_letters,
        })
    }

    fn step_stream(
        &mut self,
        i: usize,
        readings: &[Reading],
        shards: &[u32],
        body: &mut String,
    ) -> bool {
        // The device budget is the instance's: what the other streams hold is taken.
        let others: usize = (0..self.engines.len())
            .filter(|&j| j != i)
            .map(|j| self.engines[j].devices())
            .sum();
        let engine = &mut self.engines[i];
        engine.set_max_devices(self.max_devices.saturating_sub(others));
        let model = Arc::clone(engine.model());
        let fmt = PointFormat {
            stream: &self.names[i],
            model: &model.version,
            features: &model.features,
            horizon: model.horizon,
        };
        let mut stale = 0;
        for (chunk, chunk_shards) in readings
            .chunks(self.max_batch)
            .zip(shards.chunks(self.max_batch))
        {
            if let Err(e) = engine.process_sharded(chunk, chunk_shards, &mut self.out) {
                tracing::error!(error = %e, stream = %self.names[i], "reading does not fit the model; stopping");
                return false;
            }
            for (j, r) in chunk.iter().enumerate() {
                match &self.out.outcomes[j] {
                    Outcome::Scored(_) => {
                        fmt.write_line_protocol(body, r, &self.out, j);
                    }
                    Outcome::Stale { .. } => stale += 1,
                    Outcome::Refused => {
                        if let Some(suppressed) =
                            self.log_limit.check("refused", Duration::from_secs(10))
                        {
                            tracing::warn!(stream = %self.names[i], device = %r.device, max_devices = self.max_devices, suppressed, "device table full (engine.max_devices): readings of new devices are not scored");
                        }
                    }
                    Outcome::Reset => {
                        if let Some(suppressed) =
                            self.log_limit.check("reset", Duration::from_secs(10))
                        {
                            tracing::warn!(stream = %self.names[i], device = %r.device, ts = r.ts, suppressed, "reading would have made the device's state non-finite: device reset, no points written");
                        }
                    }
                }
            }
        }
        let l = labels(&[("stream", &self.names[i])]);
        let m = &self.metrics;
        if stale > 0 {
            m.readings_stale.get_or_create(&l).inc_by(stale);
        }
        let c = engine.counters();
        m.devices.get_or_create(&l).set(engine.devices() as i64);
        let sync = |counter: &prometheus_client::metrics::counter::Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        sync(&m.alarms_raised.get_or_create(&l), c.alarms_raised);
        sync(&m.readings_clamped.get_or_create(&l), c.clamped);
        sync(&m.devices_reset.get_or_create(&l), c.poisoned);
        sync(&m.readings_refused.get_or_create(&l), c.refused);
        m.alarms_active
            .get_or_create(&l)
            .set(c.alarms_raised.saturating_sub(c.alarms_cleared) as i64);
        true
    }

    fn restore(&mut self, stream: usize, c: Checkpoint) {
        let engine = &mut self.engines[stream];
        let partition = c.header.partition;
        let l = labels(&[("stream", &self.names[stream])]);
        match engine.restore(partition as u32, c.header.layout, &c.records) {
            Ok(n) => {
                self.next.insert((stream, partition), c.header.offset);
                self.metrics
                    .devices_restored
                    .get_or_create(&l)
                    .inc_by(n as u64);
                self.metrics
                    .devices
                    .get_or_create(&l)
                    .set(engine.devices() as i64);
                tracing::info!(
                    stream = %self.names[stream],
                    partition,
                    offset = c.header.offset,
                    devices = n,
                    "device states restored"
                );
            }
            Err(e) => {
                // The source already seeks to the checkpoint's offset; its devices start cold
                // from there (their earlier points stay as written).
                self.metrics
                    .checkpoints_skipped
                    .get_or_create(&labels(&[("reason", "records")]))
                    .inc();
                tracing::error!(stream = %self.names[stream], partition, error = %e, "checkpoint records cannot be restored; its devices start cold");
            }
        }
    }

    fn revoke(&mut self, partitions: &[(String, i32)], done: oneshot::Sender<()>) -> Checkpoints {
        let keys: Vec<(usize, i32)> = partitions
            .iter()
            .filter_map(|(t, p)| Some((self.stream_of(t)?, *p)))
            .filter(|k| self.next.contains_key(k))
            .collect();
        let checkpoints = self.checkpoints(&keys);
        for (stream, engine) in self.engines.iter_mut().enumerate() {
            let gone: BTreeSet<u32> = partitions
                .iter()
                .filter(|(t, _)| *t == self.topics[stream])
                .map(|(_, p)| *p as u32)
                .collect();
            if !gone.is_empty() {
                let n = engine.forget(|shard, _| gone.contains(&shard));
                tracing::debug!(stream = %self.names[stream], devices = n, "devices of revoked partitions forgotten");
                self.metrics
                    .devices
                    .get_or_create(&labels(&[("stream", &self.names[stream])]))
                    .set(engine.devices() as i64);
            }
        }
        for k in &keys {
            self.next.remove(k);
            self.dirty.remove(k);
        }
        Checkpoints {
            checkpoints,
            done: Some(done),
        }
    }

    /// Checkpoints of the given partitions as of now.
    fn checkpoints(&self, keys: &[(usize, i32)]) -> Vec<Checkpoint> {
        let mut out = Vec::with_capacity(keys.len());
        let created_ms = chrono::Utc::now().timestamp_millis();
        for stream in 0..self.engines.len() {
            let wanted: BTreeSet<u32> = keys
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, p)| *p as u32)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let engine = &self.engines[stream];
            let mut records: HashMap<u32, _> = engine
                .snapshot(|s| wanted.contains(&s))
                .into_iter()
                .collect();
            for p in wanted {
                let Some(&offset) = self.next.get(&(stream, p as i32)) else {
                    continue;
                };
                let records = records.remove(&p).unwrap_or_default();
                out.push(Checkpoint {
                    header: Header {
                        group: self.group.clone(),
                        stream: self.names[stream].clone(),
                        topic: self.topics[stream].clone(),
                        partition: p as i32,
                        offset,
                        model: engine.model().version.clone(),
                        layout: engine.state_layout(),
                        devices: records.devices as u64,
                        created_ms,
                    },
                    records,
                });
            }
        }
        out
    }
}
