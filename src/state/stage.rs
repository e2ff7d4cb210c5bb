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
//!
//! Devices idle for `engine.device_ttl` (event time, against the newest reading of their
//! stream) are parked ([`super::parked`]): their state moves to the partition's parked-device
//! log on disk and only an index entry stays in memory; a parked device's next reading
//! restores it first, so its outputs are those it would have had without the eviction.

use super::parked::{ParkedLog, ParkedRef};
use super::{Checkpoint, Header, Store};
use crate::config::Config;
use crate::decode::Reading;
use crate::engine::snapshot::ShardRecords;
use crate::engine::{BatchOutput, Engine, Outcome};
use crate::output::PointFormat;
use crate::pipeline::{Checkpoints, InBatch, OutBatch, ToEngine, ToSink};
use crate::telemetry::{Metrics, RateLimit, labels};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The engine stage.
pub struct EngineStage {
    engines: Vec<Engine>,
    names: Vec<String>,
    /// What is written per reading, per stream.
    outputs: Vec<crate::config::OutputConfig>,
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
    store: Store,
    /// Idle time (ns of event time) after which a device is parked; 0: never.
    ttl_ns: i64,
    /// Parked devices idle longer than this (ns) are dropped for good.
    retention_ns: i64,
    /// Parked devices per (stream, partition).
    parked: HashMap<(usize, i32), ParkedLog>,
    /// Newest reading time per stream.
    high_water: Vec<i64>,
    /// Periodic checkpoint sets sent and not yet persisted (the sink counts them down).
    checkpoints_in_flight: Arc<AtomicUsize>,
}

/// A parked-device log is compacted once it is at least this big and mostly dead.
const PARKED_COMPACT_BYTES: u64 = 64 << 20;

impl EngineStage {
    /// A stage over one engine per configured stream (in config order).
    pub fn new(
        cfg: &Config,
        engines: Vec<Engine>,
        metrics: Arc<Metrics>,
        store: Store,
        checkpoints_in_flight: Arc<AtomicUsize>,
    ) -> Self {
        let n = engines.len();
        Self {
            engines,
            names: cfg.streams.iter().map(|s| s.name.clone()).collect(),
            outputs: cfg.streams.iter().map(|s| cfg.output_for(s)).collect(),
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
            store,
            ttl_ns: cfg.engine.device_ttl.as_nanos(),
            retention_ns: cfg.state.parked_retention.as_nanos(),
            parked: HashMap::new(),
            high_water: vec![i64::MIN; n],
            checkpoints_in_flight,
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
                ToEngine::Tick => true,
                ToEngine::Revoke { partitions, done } => {
                    let set = self.revoke(&partitions, done);
                    tx.blocking_send(ToSink::Checkpoints(set)).is_ok()
                }
            };
            if !sent {
                return;
            }
            if self.last_checkpoint.elapsed() >= self.interval {
                self.park_idle();
            }
            // One periodic checkpoint at a time: while the last one waits behind its points
            // (a slow InfluxDB), another full copy of the state would only add memory.
            let busy = self.checkpoints_in_flight.load(Ordering::Acquire) > 0;
            if self.last_checkpoint.elapsed() >= self.interval && !self.dirty.is_empty() && !busy {
                let keys: Vec<_> = std::mem::take(&mut self.dirty).into_iter().collect();
                let set = Checkpoints {
                    checkpoints: self.checkpoints(&keys),
                    done: None,
                };
                self.last_checkpoint = Instant::now();
                self.checkpoints_in_flight.fetch_add(1, Ordering::AcqRel);
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
            let hw = &mut self.high_water[r.stream];
            *hw = (*hw).max(r.reading.ts);
            if !self.parked.is_empty() {
                self.unpark(r.stream, r.partition, &r.reading.device);
            }
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
        let fmt = PointFormat::new(
            &self.names[i],
            &model.version,
            &model.features,
            model.horizon,
            &self.outputs[i],
        );
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

    /// A parked device is back: its state goes into the engine before its reading.
    fn unpark(&mut self, stream: usize, partition: i32, device: &str) {
        let Some(log) = self.parked.get_mut(&(stream, partition)) else {
            return;
        };
        if !log.contains(device) || self.engines[stream].knows(device) {
            return;
        }
        let engine = &mut self.engines[stream];
        let layout = engine.state_layout();
        match log.take(device) {
            Ok(Some(rec)) => {
                if let Err(e) = engine.restore(partition as u32, layout, &ShardRecords::one(&rec)) {
                    tracing::error!(stream = %self.names[stream], device, error = %e, "parked state cannot be restored; the device starts cold");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(stream = %self.names[stream], device, error = %e, "cannot read a parked device's state; it starts cold");
            }
        }
        self.dirty.insert((stream, partition));
    }

    /// Parks every device idle for `engine.device_ttl` and expires parked ones past
    /// `state.parked_retention`.
    fn park_idle(&mut self) {
        if self.ttl_ns <= 0 {
            return;
        }
        for stream in 0..self.engines.len() {
            let hw = self.high_water[stream];
            if hw == i64::MIN {
                continue;
            }
            let cutoff = hw.saturating_sub(self.ttl_ns);
            // Only partitions this member owns (it has stepped or restored them).
            let owned: BTreeSet<u32> = self
                .next
                .keys()
                .filter(|(s, _)| *s == stream)
                .map(|(_, p)| *p as u32)
                .collect();
            let idle = |shard: u32, ts: i64| ts < cutoff && owned.contains(&shard);
            let snaps = self.engines[stream].snapshot_where(idle);
            let layout = self.engines[stream].state_layout();
            let mut parked_ok = BTreeSet::new();
            for (shard, records) in &snaps {
                let key = (stream, *shard as i32);
                let log = match self.log_for(key) {
                    Ok(log) => log,
                    Err(e) => {
                        tracing::error!(stream = %self.names[stream], partition = shard, error = %e, "cannot open the parked-device log; idle devices stay in memory");
                        continue;
                    }
                };
                let mut ok = true;
                for (id, ts, rec) in records.iter(layout) {
                    if let Err(e) = log.park(id, ts, rec) {
                        tracing::error!(error = %e, "cannot park a device; idle devices stay in memory");
                        ok = false;
                        break;
                    }
                }
                if ok {
                    parked_ok.insert(*shard);
                    self.dirty.insert(key);
                }
            }
            let n = self.engines[stream]
                .forget(|shard, ts| idle(shard, ts) && parked_ok.contains(&shard));
            let expire = hw.saturating_sub(self.retention_ns);
            let mut parked_total = 0;
            for (&(s, p), log) in self.parked.iter_mut().filter(|((s, _), _)| *s == stream) {
                if log.expire(expire) > 0 {
                    self.dirty.insert((s, p));
                }
                match log.compact_if_mostly_dead(PARKED_COMPACT_BYTES) {
                    Ok(true) => {
                        self.dirty.insert((s, p));
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot compact a parked-device log"),
                }
                parked_total += log.devices();
            }
            let l = labels(&[("stream", &self.names[stream])]);
            self.metrics
                .devices_parked
                .get_or_create(&l)
                .set(parked_total as i64);
            self.metrics
                .devices
                .get_or_create(&l)
                .set(self.engines[stream].devices() as i64);
            if n > 0 {
                tracing::debug!(stream = %self.names[stream], devices = n, "idle devices parked");
            }
        }
    }

    /// The parked-device log of a partition, opened (as a new generation) if need be.
    fn log_for(&mut self, key: (usize, i32)) -> std::io::Result<&mut ParkedLog> {
        if !self.parked.contains_key(&key) {
            let dir = self.partition_dir(key);
            // A new log never reuses a generation an older checkpoint may name.
            let generation = newest_generation(&dir).map_or(0, |g| g + 1);
            let engine = &self.engines[key.0];
            let log = ParkedLog::open(
                &dir,
                ParkedRef {
                    generation,
                    len: 0,
                    devices: 0,
                },
                &|id| engine.knows(id),
            )?;
            self.parked.insert(key, log);
        }
        self.parked
            .get_mut(&key)
            .ok_or_else(|| std::io::Error::other("parked log vanished"))
    }

    fn partition_dir(&self, (stream, partition): (usize, i32)) -> std::path::PathBuf {
        self.store
            .partition_dir(&self.group, &self.names[stream], partition)
    }

    fn restore(&mut self, stream: usize, c: Checkpoint) {
        let engine = &mut self.engines[stream];
        let partition = c.header.partition;
        let l = labels(&[("stream", &self.names[stream])]);
        match engine.restore(partition as u32, c.header.layout, &c.records) {
            Ok(n) => {
                self.next.insert((stream, partition), c.header.offset);
                if let Some(at) = c.header.parked {
                    let dir = self.partition_dir((stream, partition));
                    let engine = &self.engines[stream];
                    match ParkedLog::open(&dir, at, &|id| engine.knows(id)) {
                        Ok(log) => {
                            self.parked.insert((stream, partition), log);
                        }
                        Err(e) => {
                            tracing::error!(stream = %self.names[stream], partition, error = %e, "cannot open the parked-device log; parked devices start cold when they return")
                        }
                    }
                }
                let engine = &mut self.engines[stream];
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
        for (t, p) in partitions {
            if let Some(stream) = self.stream_of(t) {
                self.parked.remove(&(stream, *p));
            }
        }
        Checkpoints {
            checkpoints,
            done: Some(done),
        }
    }

    /// Checkpoints of the given partitions as of now (their parked-device logs are flushed
    /// to disk first: a checkpoint that names a log must not outlive what it names).
    fn checkpoints(&mut self, keys: &[(usize, i32)]) -> Vec<Checkpoint> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(log) = self.parked.get_mut(k)
                && let Err(e) = log.sync()
            {
                tracing::error!(error = %e, "cannot flush a parked-device log");
            }
        }
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
                        parked: self.parked.get(&(stream, p as i32)).map(ParkedLog::at),
                    },
                    records,
                });
            }
        }
        out
    }
}

/// The newest parked-log generation in a partition folder.
fn newest_generation(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("parked-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchSpec, settings, synthetic_model, synthetic_readings};
    use crate::config::HumanDuration;
    use crate::engine::EngineSettings;
    use crate::pipeline::{Offsets, Sourced};

    fn stage(dir: &std::path::Path, ttl: HumanDuration) -> EngineStage {
        let spec = BenchSpec {
            devices: 0,
            steps: 0,
            hidden: 16,
            features: 3,
            layers: 1,
            horizon: 2,
            batch: 64,
        };
        let model = Arc::new(synthetic_model(&spec));
        let mut cfg = Config::default();
        cfg.streams[0].features = model.features.clone();
        cfg.engine.device_ttl = ttl;
        let s: EngineSettings = settings();
        let engine = Engine::new(model, s).expect("engine");
        EngineStage::new(
            &cfg,
            vec![engine],
            Arc::new(Metrics::new()),
            crate::state::DirStore::new(dir, 3).into(),
            Arc::default(),
        )
    }

    /// 8 devices over 4 partitions, one reading a minute; devices 0..3 fall silent for 100
    /// minutes in the middle.
    fn batches() -> Vec<InBatch> {
        let all = synthetic_readings(8, 300, 3);
        let mut out = Vec::new();
        let mut offset = [0i64; 4];
        for chunk in all.chunks(40) {
            let mut b = InBatch::default();
            for r in chunk {
                let d: usize = r.device[4..].parse().expect("dev-N");
                let step = (r.ts - all[0].ts) / 60_000_000_000;
                if d < 4 && (100..200).contains(&step) {
                    continue;
                }
                let p = (d % 4) as i32;
                b.offsets.note("sensors.pumps", p, offset[p as usize]);
                offset[p as usize] += 1;
                b.readings.push(Sourced {
                    stream: 0,
                    partition: p,
                    reading: r.clone(),
                });
            }
            out.push(b);
        }
        out
    }

    fn bodies(stage: &mut EngineStage, park: bool) -> (String, usize) {
        let mut text = String::new();
        let mut most_parked = 0;
        for b in batches() {
            let out = stage.step(b).expect("step");
            text.push_str(&out.body);
            if park {
                stage.park_idle();
                most_parked = most_parked.max(stage.parked.values().map(ParkedLog::devices).sum());
            }
        }
        (text, most_parked)
    }

    #[test]
    fn parked_devices_come_back_with_exactly_their_state() {
        let d = tempfile::tempdir().expect("tmp");
        let (reference, _) = bodies(&mut stage(d.path(), HumanDuration::from_secs(0)), false);
        let mut parking = stage(d.path(), HumanDuration::from_secs(30 * 60));
        let (text, most_parked) = bodies(&mut parking, true);
        assert_eq!(most_parked, 4, "the four silent devices were parked");
        assert_eq!(parking.engines[0].devices(), 8, "and came back");
        assert!(text == reference, "parking changed the outputs");
        // A checkpoint names the partition's log; restoring it brings the parked set back.
        let cps = parking.checkpoints(&[(0, 1)]);
        assert_eq!(cps.len(), 1);
        assert!(cps[0].header.parked.is_some());
    }

    #[test]
    fn a_checkpoint_restored_elsewhere_carries_its_parked_devices() {
        let d = tempfile::tempdir().expect("tmp");
        let mut a = stage(d.path(), HumanDuration::from_secs(30 * 60));
        let all = batches();
        // Up to the middle of the silence: devices 0..3 are parked.
        let cut = all.len() / 2;
        let mut all = all.into_iter();
        for b in all.by_ref().take(cut) {
            a.step(b).expect("step");
            a.park_idle();
        }
        assert!(a.parked.values().map(ParkedLog::devices).sum::<usize>() == 4);
        let cps = a.checkpoints(&[(0, 0), (0, 1), (0, 2), (0, 3)]);
        // A second member restores them and carries on; the first goes on alone as reference.
        let mut b = stage(d.path(), HumanDuration::from_secs(30 * 60));
        for c in cps {
            b.restore(0, c);
        }
        assert_eq!(b.engines[0].devices(), 4, "active devices restored");
        assert_eq!(b.parked.values().map(ParkedLog::devices).sum::<usize>(), 4);
        let (mut ta, mut tb) = (String::new(), String::new());
        for batch in all {
            let copy = InBatch {
                readings: batch.readings.clone(),
                offsets: Offsets(batch.offsets.0.clone()),
                ..InBatch::default()
            };
            ta.push_str(&a.step(batch).expect("a").body);
            tb.push_str(&b.step(copy).expect("b").body);
        }
        assert!(
            !ta.is_empty() && ta == tb,
            "the restored member writes what the first would"
        );
        assert_eq!(b.engines[0].devices(), 8);
    }
}
