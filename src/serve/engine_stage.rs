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
//! stream) are parked ([`crate::state::parked`]): their state moves to the partition's parked-device
//! log on disk and only an index entry stays in memory; a parked device's next reading
//! restores it first, so its outputs are those it would have had without the eviction.

use crate::config::Config;
use crate::decode::Reading;
use crate::engine::silent::SilentEvent;
use crate::engine::snapshot::ShardRecords;
use crate::engine::{BatchOutput, Counters, Engine, Outcome};
use crate::model::registry::Registry;
use crate::output::PointFormat;
use crate::serve::bodies::Bodies;
use crate::serve::pipeline::{
    Checkpoints, InBatch, Offsets, OutBatch, PartitionKey, ToEngine, ToSink,
};
use crate::serve::swap::{Swap, checked_engine};
use crate::state::parked::{ParkedLog, ParkedRef};
use crate::state::{Checkpoint, Header, Store};
use crate::telemetry::{Metrics, RateLimit, StreamMetrics, labels};
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
    /// Per stream, its metric handles (resolved once).
    stream_metrics: Vec<StreamMetrics>,
    /// Next offset per (stream, partition): everything before it has been stepped.
    next: HashMap<(usize, i32), i64>,
    /// Partitions restored behind the group's committed offset: their readings before it are
    /// stepped without writing (another member wrote them), and they are not checkpointed
    /// until it is reached (their older checkpoint stays the one to restore).
    catch_up: HashMap<(usize, i32), i64>,
    /// Per stream, which readings of the batch being stepped are caught up silently (empty
    /// while nothing is caught up).
    silent: Vec<Vec<bool>>,
    /// The current id of each stream's topic, once the source learnt it.
    topic_ids: Vec<Option<String>>,
    /// Partitions stepped since their last checkpoint.
    dirty: BTreeSet<(usize, i32)>,
    last_checkpoint: Instant,
    /// When idle devices were last looked for (once per checkpoint interval: the scan covers
    /// every device), and how many times.
    last_park: Instant,
    park_scans: u64,
    per_stream: Vec<(Vec<Reading>, Vec<u32>)>,
    out: BatchOutput,
    /// Length of the last batch's body: the next one's starting capacity.
    body_hint: usize,
    /// Where batches' bodies come from; the sink gives them back once it has copied them.
    bodies: Bodies,
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
    /// A model swap in progress, per stream ([`crate::serve::swap`]).
    swaps: Vec<Option<Swap>>,
    /// Counters of the engines swaps replaced, per stream (the metrics stay monotonic).
    counter_base: Vec<Counters>,
    // Per stream: alarm edges and restores when the active alarms were last counted; counted
    // again after a batch that changed them, and every second.
    alarm_edges_seen: Vec<u64>,
    alarms_counted: Instant,
    /// Where checkpoints of another model version find their model.
    registry: Registry,
    cfg: Config,
    last_swap_check: Instant,
    // Maintenance windows of the config and the maintenance file.
    windows: crate::engine::maintenance::WindowSource,
    // Operators' verdicts, written onto their alarms' points as they come.
    labels: Option<crate::labels::LabelSource>,
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
        let mut stage = Self {
            engines,
            names: cfg.streams.iter().map(|s| s.name.clone()).collect(),
            stream_metrics: cfg
                .streams
                .iter()
                .map(|s| metrics.for_stream(&s.name))
                .collect(),
            outputs: cfg.streams.iter().map(|s| cfg.output_for(s)).collect(),
            topics: cfg.streams.iter().map(|s| s.topic.clone()).collect(),
            group: cfg.kafka.group_id.clone(),
            max_batch: cfg.engine.max_batch,
            max_devices: cfg.engine.max_devices,
            interval: cfg.state.checkpoint_interval.get(),
            metrics,
            next: HashMap::new(),
            catch_up: HashMap::new(),
            silent: vec![Vec::new(); n],
            topic_ids: vec![None; n],
            dirty: BTreeSet::new(),
            last_checkpoint: Instant::now(),
            last_park: Instant::now(),
            park_scans: 0,
            per_stream: vec![(Vec::new(), Vec::new()); n],
            out: BatchOutput::default(),
            body_hint: 0,
            // The engine fills one batch at a time; a second covers one on its way back.
            bodies: Bodies::new(2),
            log_limit: RateLimit::default(),
            store,
            ttl_ns: cfg.engine.device_ttl.as_nanos(),
            retention_ns: cfg.state.parked_retention.as_nanos(),
            parked: HashMap::new(),
            high_water: vec![i64::MIN; n],
            checkpoints_in_flight,
            swaps: (0..n).map(|_| None).collect(),
            counter_base: vec![Counters::default(); n],
            alarm_edges_seen: vec![u64::MAX; n],
            alarms_counted: Instant::now(),
            registry: Registry::new(&cfg.model.registry),
            cfg: cfg.clone(),
            last_swap_check: Instant::now(),
            windows: crate::engine::maintenance::WindowSource::new(cfg),
            labels: crate::labels::LabelSource::new(&cfg.anomaly.labels_file),
        };
        // The maintenance file's windows apply from the first reading.
        stage.poll_maintenance();
        stage
    }

    /// Gives every engine its stream's windows when the maintenance file changed.
    fn poll_maintenance(&mut self) {
        if let Some(windows) = self.windows.poll() {
            for (i, w) in windows.into_iter().enumerate() {
                if let Some(sw) = self.swaps[i].as_mut() {
                    sw.old.set_maintenance(Arc::clone(&w));
                }
                self.engines[i].set_maintenance(w);
            }
        }
    }

    /// The points of the operators' verdicts labelled since the last call, if any (labels of
    /// streams this instance does not serve are left to the instances that do).
    fn verdicts(&mut self) -> Option<OutBatch> {
        let (mut body, mut points) = (String::new(), 0);
        for l in self.labels.as_mut()?.poll() {
            if self.names.contains(&l.stream) {
                points += crate::output::write_verdict(&mut body, &l) as u64;
            }
        }
        (!body.is_empty()).then(|| OutBatch {
            body,
            points,
            msg_ts: Vec::new(),
            dead_letters: Vec::new(),
        })
    }

    /// The pool the batches' bodies come from, for the sink to give them back to.
    pub fn bodies(&self) -> Bodies {
        self.bodies.clone()
    }

    /// Runs until the input closes; then takes a last checkpoint of every partition.
    pub fn run(mut self, mut rx: mpsc::Receiver<ToEngine>, tx: mpsc::Sender<ToSink>) {
        while let Some(msg) = rx.blocking_recv() {
            let sent = match msg {
                ToEngine::Batch(b) => match self.step(b) {
                    Some(out) => tx.blocking_send(ToSink::Points(out)).is_ok(),
                    None => return,
                },
                ToEngine::Restore {
                    stream,
                    checkpoint,
                    catch_up_to,
                } => {
                    if let Some(to) = catch_up_to {
                        self.catch_up
                            .insert((stream, checkpoint.header.partition), to);
                    }
                    self.restore(stream, *checkpoint);
                    true
                }
                ToEngine::TopicId { stream, id } => {
                    self.topic_ids[stream] = Some(id);
                    true
                }
                ToEngine::Tick => true,
                ToEngine::Swap { stream, engine } => {
                    self.start_swap(stream, *engine);
                    true
                }
                ToEngine::Revoke { partitions, done } => {
                    let set = self.revoke(&partitions, done);
                    tx.blocking_send(ToSink::Checkpoints(set)).is_ok()
                }
            };
            if !sent || !self.housekeeping(&tx) {
                return;
            }
        }
        let keys: Vec<_> = self
            .next
            .keys()
            .filter(|k| !self.catch_up.contains_key(k))
            .copied()
            .collect();
        let set = Checkpoints {
            checkpoints: self.checkpoints(&keys),
            done: None,
        };
        let _ = tx.blocking_send(ToSink::Checkpoints(set));
    }

    /// Between two messages: swaps that may end, idle devices to park, a periodic checkpoint
    /// that may be due; false when the sink is gone.
    fn housekeeping(&mut self, tx: &mpsc::Sender<ToSink>) -> bool {
        self.poll_maintenance();
        if let Some(verdicts) = self.verdicts()
            && tx.blocking_send(ToSink::Points(verdicts)).is_err()
        {
            return false;
        }
        if self.last_swap_check.elapsed() >= Duration::from_secs(1) {
            self.check_swaps();
        }
        self.count_active_alarms();
        // Not on every batch while a checkpoint waits behind a slow sink (the periodic
        // checkpoint is then overdue, and the scan covers every device).
        if self.last_checkpoint.elapsed() >= self.interval
            && self.last_park.elapsed() >= self.interval
        {
            self.last_park = Instant::now();
            self.park_idle();
        }
        // One periodic checkpoint at a time: while the last one waits behind its points
        // (a slow InfluxDB), another full copy of the state would only add memory.
        let busy = self.checkpoints_in_flight.load(Ordering::Acquire) > 0;
        if self.last_checkpoint.elapsed() >= self.interval && !self.dirty.is_empty() && !busy {
            let keys = self.due();
            let set = Checkpoints {
                checkpoints: self.checkpoints(&keys),
                done: None,
            };
            self.last_checkpoint = Instant::now();
            self.checkpoints_in_flight.fetch_add(1, Ordering::AcqRel);
            if tx.blocking_send(ToSink::Checkpoints(set)).is_err() {
                return false;
            }
        }
        true
    }

    /// The dirty partitions to checkpoint now: all but those still catching up (they stay
    /// dirty).
    fn due(&mut self) -> Vec<(usize, i32)> {
        let catching_up = &self.catch_up;
        let (wait, due): (BTreeSet<_>, BTreeSet<_>) = std::mem::take(&mut self.dirty)
            .into_iter()
            .partition(|k| catching_up.contains_key(k));
        self.dirty = wait;
        due.into_iter().collect()
    }

    fn stream_of(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Steps a batch; `None` when a reading does not fit its model (a bug: the decoder checks
    /// the schema), which stops the pipeline rather than skip readings whose offsets would be
    /// committed.
    fn step(&mut self, batch: InBatch) -> Option<OutBatch> {
        self.metrics.batch_size.observe(batch.readings.len() as f64);
        let catching_up = !self.catch_up.is_empty();
        for r in batch.readings {
            let hw = &mut self.high_water[r.stream];
            *hw = (*hw).max(r.reading.ts);
            if !self.parked.is_empty() {
                self.unpark(r.stream, r.partition, &r.reading.device);
            }
            if catching_up {
                let silent = self
                    .catch_up
                    .get(&(r.stream, r.partition))
                    .is_some_and(|to| r.offset < *to);
                self.silent[r.stream].push(silent);
            }
            let (readings, shards) = &mut self.per_stream[r.stream];
            readings.push(r.reading);
            shards.push(r.partition as u32);
        }
        // Sized from the last body, so that a batch's line protocol is not copied again and
        // again as it grows (a body of megabytes doubled its way up from nothing).
        let mut body = self.bodies.take(self.body_hint + self.body_hint / 8);
        let mut points = 0;
        for i in 0..self.engines.len() {
            if self.per_stream[i].0.is_empty() {
                continue;
            }
            let (readings, shards) = std::mem::take(&mut self.per_stream[i]);
            let silent = std::mem::take(&mut self.silent[i]);
            points += self.step_stream(i, &readings, &shards, &silent, &mut body)?;
            self.silent[i] = silent;
            self.silent[i].clear();
            let mut reuse = (readings, shards);
            reuse.0.clear();
            reuse.1.clear();
            self.per_stream[i] = reuse;
        }
        for (key, done_to) in batch.offsets.iter() {
            let partition = &key.partition;
            if let Some(stream) = self.stream_of(&key.topic) {
                let next = self.next.entry((stream, *partition)).or_insert(0);
                *next = (*next).max(done_to.0);
                self.dirty.insert((stream, *partition));
                if self
                    .catch_up
                    .get(&(stream, *partition))
                    .is_some_and(|to| *next >= *to)
                {
                    self.catch_up.remove(&(stream, *partition));
                    tracing::info!(stream = %self.names[stream], partition, offset = *next, "caught up with the group's committed offset: writing again");
                }
            }
        }
        self.body_hint = body.len();
        Some(OutBatch {
            body,
            points,
            msg_ts: batch.msg_ts,
            dead_letters: batch.dead_letters,
        })
    }

    /// Steps stream `i`'s readings and appends their points to `body`; returns how many
    /// (`None`: a reading does not fit the model, and the stage stops).
    fn step_stream(
        &mut self,
        i: usize,
        readings: &[Reading],
        shards: &[u32],
        silent: &[bool],
        body: &mut String,
    ) -> Option<u64> {
        // The device budget is the instance's: what the other streams hold is taken.
        let others: usize = (0..self.engines.len())
            .filter(|&j| j != i)
            .map(|j| self.engines[j].devices())
            .sum();
        let engine = &mut self.engines[i];
        let budget = self.max_devices.saturating_sub(others);
        engine.set_max_devices(budget);
        let model = Arc::clone(engine.model());
        let fmt = PointFormat::new(
            &self.names[i],
            &model.version,
            &model.features,
            model.horizon,
            &self.outputs[i],
        );
        // During a swap every reading is stepped through both models; the old one writes the
        // points of the devices that have not switched yet.
        let mut swap = self.swaps[i].take();
        let old_model = swap.as_ref().map(|sw| Arc::clone(sw.old.model()));
        let old_fmt = old_model.as_ref().map(|m| {
            PointFormat::new(
                &self.names[i],
                &m.version,
                &m.features,
                m.horizon,
                &self.outputs[i],
            )
        });
        let (mut stale, mut points) = (0, 0);
        // A device switches between two chunks; during a swap a chunk holds each device at
        // most once, so that it switches at the very reading it is re-warmed at, also when a
        // backlog brings many readings of it at once. (Batching never changes the outputs.)
        let ranges = if swap.is_some() {
            distinct_runs(readings, self.max_batch)
        } else {
            runs(readings.len(), self.max_batch)
        };
        for range in ranges {
            let start = range.start;
            let (chunk, chunk_shards) = (&readings[range.clone()], &shards[range]);
            if let Err(e) = engine.process_sharded(chunk, chunk_shards, &mut self.out) {
                tracing::error!(error = %e, stream = %self.names[i], "reading does not fit the model; stopping");
                return None;
            }
            if let Some(sw) = swap.as_mut() {
                sw.old.set_max_devices(budget);
                if let Err(e) = sw.old.process_sharded(chunk, chunk_shards, &mut sw.out) {
                    tracing::error!(error = %e, stream = %self.names[i], "reading does not fit the previous model; stopping");
                    return None;
                }
            }
            for (j, r) in chunk.iter().enumerate() {
                let (out, fmt) = match (&swap, &old_fmt) {
                    (Some(sw), Some(old_fmt)) if sw.writes(&r.device) => (&sw.out, old_fmt),
                    _ => (&self.out, &fmt),
                };
                match &out.outcomes[j] {
                    // Caught up silently: another member wrote this reading's points.
                    Outcome::Scored(_) if silent.get(start + j).is_some_and(|s| *s) => {}
                    Outcome::Scored(_) => {
                        points += fmt.write_line_protocol(body, r, out, j) as u64;
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
            // Silent-device alarms, from the model that writes the silent device's points.
            let caught_up = |e: &SilentEvent| silent.get(start + e.reading).is_some_and(|s| *s);
            for e in self.out.silent.iter().filter(|e| !caught_up(e)) {
                if !swap.as_ref().is_some_and(|sw| sw.writes(&e.device)) {
                    points += fmt.write_silent_event(body, e) as u64;
                }
            }
            if let (Some(sw), Some(old_fmt)) = (&swap, &old_fmt) {
                for e in sw.out.silent.iter().filter(|e| !caught_up(e)) {
                    if sw.writes(&e.device) {
                        points += old_fmt.write_silent_event(body, e) as u64;
                    }
                }
            }
            if let Some(sw) = swap.as_mut() {
                sw.advance(engine, chunk, chunk_shards);
            }
        }
        self.swaps[i] = swap;
        self.publish_counters(i, stale);
        Some(points)
    }

    /// Brings stream `i`'s metrics up to its engine's counters (`stale`: readings found stale
    /// in this batch).
    fn publish_counters(&self, i: usize, stale: u64) {
        let tracked = self.tracked(i);
        let engine = &self.engines[i];
        let m = &self.stream_metrics[i];
        if stale > 0 {
            m.readings_stale.inc_by(stale);
        }
        let c = engine.counters().plus(self.counter_base[i]);
        m.devices.set(tracked as i64);
        let sync = |counter: &prometheus_client::metrics::counter::Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        sync(&m.alarms_raised, c.alarms_raised);
        sync(&m.readings_clamped, c.clamped);
        sync(&m.devices_reset, c.poisoned);
        sync(&m.readings_refused, c.refused);
        sync(&m.stuck_raised, c.stuck_raised);
        sync(&m.silent_raised, c.silent_raised);
    }

    /// Sets the `*_alarms_active` gauges from the devices' alarm states, for each stream
    /// whose alarms changed (an edge, a restore) since it was last counted (at most every
    /// 250 ms), and for every stream once a second. During a swap each device counts in the engine that writes its
    /// points. Devices parked after `engine.device_ttl` are not counted.
    fn count_active_alarms(&mut self) {
        // O(devices) a count: at most four times a second however many edges come (an alarm
        // storm), and once a second anyway.
        let since = self.alarms_counted.elapsed();
        if since < Duration::from_millis(250) {
            return;
        }
        let due = since >= Duration::from_secs(1);
        let mut counted = false;
        for i in 0..self.engines.len() {
            let edges = |c: Counters| {
                c.alarms_raised
                    + c.alarms_cleared
                    + c.stuck_raised
                    + c.stuck_cleared
                    + c.silent_raised
                    + c.silent_cleared
                    + c.restored
            };
            let old = self.swaps[i].as_ref().map(|sw| sw.old.counters());
            let seen = edges(self.engines[i].counters()) + old.map_or(0, edges);
            if !due && seen == self.alarm_edges_seen[i] {
                continue;
            }
            self.alarm_edges_seen[i] = seen;
            counted = true;
            let active = match &self.swaps[i] {
                Some(sw) => sw
                    .old
                    .active_alarms(|d| sw.writes(d))
                    .plus(self.engines[i].active_alarms(|d| !sw.writes(d))),
                None => self.engines[i].active_alarms(|_| true),
            };
            let m = &self.stream_metrics[i];
            m.alarms_active.set(active.anomaly as i64);
            m.stuck_active.set(active.stuck as i64);
            m.silent_active.set(active.silent as i64);
        }
        if counted {
            self.alarms_counted = Instant::now();
        }
    }

    /// Devices a stream tracks (during a swap the old engine holds every one of them).
    fn tracked(&self, stream: usize) -> usize {
        let old = self.swaps[stream].as_ref().map_or(0, |sw| sw.old.devices());
        self.engines[stream].devices().max(old)
    }

    /// A parked device is back: its state goes into the engine before its reading.
    fn unpark(&mut self, stream: usize, partition: i32, device: &str) {
        let Some(log) = self.parked.get_mut(&(stream, partition)) else {
            return;
        };
        // A parked device belongs to the model that parked it: during a swap, the old one for
        // the partitions it served.
        let engine = match self.swaps[stream].as_mut() {
            Some(sw) if sw.old_partitions.contains(&(partition as u32)) => &mut sw.old,
            _ => &mut self.engines[stream],
        };
        if !log.contains(device) || engine.knows(device) {
            return;
        }
        match log.take(device) {
            Ok(Some(rec)) => {
                // Parked by this version or by one before flat runs were recorded.
                let layout = engine.state_layout().of_record(&rec);
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
        self.park_scans += 1;
        for stream in 0..self.engines.len() {
            let hw = self.high_water[stream];
            // Nothing is parked while a swap runs (it is short next to engine.device_ttl).
            if hw == i64::MIN || self.swaps[stream].is_some() {
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

    /// Restores a partition's checkpoint into the engine of its model version: the current
    /// one; the old one of a swap in progress; or, for a checkpoint of another version (taken
    /// before a swap, by this instance before a restart or by a member that had not swapped
    /// yet), that version loaded from the registry, from which its devices are re-warmed into
    /// the current model as in a swap.
    fn restore(&mut self, stream: usize, c: Checkpoint) {
        let version = c.header.model.clone();
        let partition = c.header.partition;
        let into_old = if version == self.engines[stream].model().version {
            false
        } else if let Some(sw) = &self.swaps[stream] {
            if sw.old.model().version != version {
                self.skip_restore(stream, &c, &format!("it was taken with model {version}, and a swap from {} to {} is under way; its devices start cold", sw.old.model().version, self.engines[stream].model().version));
                return;
            }
            true
        } else {
            let st = &self.cfg.streams[stream];
            match checked_engine(&self.registry, &self.cfg, st, Some(&version)) {
                Ok(old) => {
                    tracing::info!(stream = %self.names[stream], partition, checkpoint_model = %version, model = %self.engines[stream].model().version, "checkpoint of another model version: its devices are restored into that model and re-warmed into the current one");
                    self.begin_swap(stream, old, BTreeSet::new());
                    true
                }
                Err(r) => {
                    self.skip_restore(
                        stream,
                        &c,
                        &format!("it was taken with model {version}, which cannot be used ({r}); its devices start cold"),
                    );
                    return;
                }
            }
        };
        let engine = match (into_old, self.swaps[stream].as_mut()) {
            (true, Some(sw)) => {
                sw.old_partitions.insert(partition as u32);
                &mut sw.old
            }
            (_, sw) => {
                if let Some(sw) = sw {
                    sw.old_partitions.remove(&(partition as u32));
                }
                &mut self.engines[stream]
            }
        };
        let l = labels(&[("stream", &self.names[stream])]);
        match engine.restore(partition as u32, c.header.layout, &c.records) {
            Ok(n) => {
                self.next.insert((stream, partition), c.header.offset);
                if let Some(at) = c.header.parked {
                    let dir = self.partition_dir((stream, partition));
                    let engine = match &self.swaps[stream] {
                        Some(sw) if into_old => &sw.old,
                        _ => &self.engines[stream],
                    };
                    match ParkedLog::open(&dir, at, &|id| engine.knows(id)) {
                        Ok(log) => {
                            self.parked.insert((stream, partition), log);
                        }
                        Err(e) => {
                            tracing::error!(stream = %self.names[stream], partition, error = %e, "cannot open the parked-device log; parked devices start cold when they return")
                        }
                    }
                }
                self.metrics
                    .devices_restored
                    .get_or_create(&l)
                    .inc_by(n as u64);
                let tracked = self.tracked(stream);
                self.stream_metrics[stream].devices.set(tracked as i64);
                tracing::info!(
                    stream = %self.names[stream],
                    partition,
                    offset = c.header.offset,
                    devices = n,
                    model = %version,
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

    fn revoke(
        &mut self,
        partitions: &[PartitionKey],
        done: oneshot::Sender<Offsets>,
    ) -> Checkpoints {
        let keys: Vec<(usize, i32)> = partitions
            .iter()
            .filter_map(|k| Some((self.stream_of(&k.topic)?, k.partition)))
            .filter(|k| self.next.contains_key(k))
            .collect();
        // A partition still catching up keeps its older checkpoint: one taken now would lie
        // behind the group's committed offset, and its commit would move that back.
        let due: Vec<_> = keys
            .iter()
            .filter(|k| self.catch_up.remove(k).is_none())
            .copied()
            .collect();
        let checkpoints = self.checkpoints(&due);
        for (stream, engine) in self.engines.iter_mut().enumerate() {
            let gone: BTreeSet<u32> = partitions
                .iter()
                .filter(|k| k.topic == self.topics[stream])
                .map(|k| k.partition as u32)
                .collect();
            if !gone.is_empty() {
                if let Some(sw) = self.swaps[stream].as_mut() {
                    sw.old.forget(|shard, _| gone.contains(&shard));
                    sw.old_partitions.retain(|p| !gone.contains(p));
                }
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
        for k in partitions {
            if let Some(stream) = self.stream_of(&k.topic) {
                self.parked.remove(&(stream, k.partition));
                // Also a partition whose restore failed before any of its readings came.
                self.catch_up.remove(&(stream, k.partition));
            }
        }
        Checkpoints {
            checkpoints,
            done: Some(done),
        }
    }

    /// Swaps `engine` in for a stream, between two batches ([`crate::serve::swap`]).
    fn start_swap(&mut self, stream: usize, engine: Engine) {
        if engine.model().version == self.engines[stream].model().version {
            return;
        }
        if let Some(prev) = self.swaps[stream].take() {
            // A swap during a swap ends the first at once: its devices that had not switched
            // go on from what the intermediate model has seen of them.
            self.finish_swap(stream, prev, "a newer model arrived");
        }
        let mut engine = engine;
        engine.set_maintenance(Arc::clone(self.engines[stream].maintenance()));
        let old = std::mem::replace(&mut self.engines[stream], engine);
        self.counter_base[stream] = self.counter_base[stream].plus(old.counters());
        let partitions: BTreeSet<u32> = self
            .next
            .keys()
            .filter(|(s, _)| *s == stream)
            .map(|(_, p)| *p as u32)
            .collect();
        self.begin_swap(stream, old, partitions);
    }

    /// Starts re-warming a stream's devices from `old` into the current engine.
    fn begin_swap(&mut self, stream: usize, old: Engine, partitions: BTreeSet<u32>) {
        let (from, to) = (
            old.model().version.clone(),
            self.engines[stream].model().version.clone(),
        );
        let m = &self.metrics;
        let name = &self.names[stream];
        // The replaced version's series goes: one series per stream, not one per swap.
        m.model_version
            .remove(&labels(&[("stream", name), ("version", &from)]));
        m.model_version
            .get_or_create(&labels(&[("stream", name), ("version", &to)]))
            .set(1);
        m.model_swaps
            .get_or_create(&labels(&[("stream", name)]))
            .inc();
        tracing::info!(
            stream = %name,
            from = %from,
            to = %to,
            devices = old.devices(),
            warmup = self.cfg.model.swap_warmup,
            "model swap started: every reading goes through both models until each device has re-warmed in the new one"
        );
        let mut sw = Swap::new(old, partitions, self.cfg.model.swap_warmup);
        sw.old.set_max_devices(self.max_devices);
        self.swaps[stream] = Some(sw);
    }

    /// Ends swaps whose devices have all switched, or that ran `model.swap_timeout`.
    fn check_swaps(&mut self) {
        self.last_swap_check = Instant::now();
        for stream in 0..self.swaps.len() {
            let Some(sw) = &self.swaps[stream] else {
                continue;
            };
            let pending = sw.pending();
            self.metrics
                .swap_pending
                .get_or_create(&labels(&[("stream", &self.names[stream])]))
                .set(pending as i64);
            let why = if pending == 0 {
                "every device re-warmed"
            } else if sw.age() >= self.cfg.model.swap_timeout.get() {
                "model.swap_timeout reached"
            } else {
                continue;
            };
            if let Some(sw) = self.swaps[stream].take() {
                self.finish_swap(stream, sw, why);
            }
        }
    }

    /// Drops the old engine of a swap: from now on every checkpoint of the stream names the
    /// current model.
    fn finish_swap(&mut self, stream: usize, sw: Swap, why: &str) {
        let pending = sw.pending();
        let mut parked = 0;
        for &p in &sw.old_partitions {
            let key = (stream, p as i32);
            // The old model's parked states cannot go on in the new one.
            if let Some(log) = self.parked.remove(&key) {
                parked += log.devices();
            }
            if self.next.contains_key(&key) {
                self.dirty.insert(key);
            }
        }
        let l = labels(&[("stream", &self.names[stream])]);
        self.metrics.swap_pending.get_or_create(&l).set(0);
        self.metrics
            .swap_unwarmed
            .get_or_create(&l)
            .inc_by(pending as u64);
        let still_parked: usize = self
            .parked
            .iter()
            .filter(|((s, _), _)| *s == stream)
            .map(|(_, log)| log.devices())
            .sum();
        self.metrics
            .devices_parked
            .get_or_create(&l)
            .set(still_parked as i64);
        tracing::info!(
            stream = %self.names[stream],
            from = %sw.old.model().version,
            to = %self.engines[stream].model().version,
            seconds = sw.age().as_secs_f64(),
            unwarmed = pending,
            parked_dropped = parked,
            "model swap finished ({why}); checkpoints now name the new model"
        );
    }

    fn skip_restore(&self, stream: usize, c: &Checkpoint, why: &str) {
        self.metrics
            .checkpoints_skipped
            .get_or_create(&labels(&[("reason", "model")]))
            .inc();
        tracing::warn!(stream = %self.names[stream], partition = c.header.partition, offset = c.header.offset, "checkpoint not restored: {why}");
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
            // During a swap the partitions the old engine served are still its: it holds every
            // one of their devices as of this batch boundary.
            let old = self.swaps[stream].as_ref();
            let old_owns = |p: u32| old.is_some_and(|sw| sw.old_partitions.contains(&p));
            let mut records: HashMap<u32, _> = self.engines[stream]
                .snapshot(|s| wanted.contains(&s) && !old_owns(s))
                .into_iter()
                .collect();
            if let Some(sw) = old {
                records.extend(sw.old.snapshot(|s| wanted.contains(&s) && old_owns(s)));
            }
            for p in wanted {
                let Some(&offset) = self.next.get(&(stream, p as i32)) else {
                    continue;
                };
                let engine = match old {
                    Some(sw) if old_owns(p) => &sw.old,
                    _ => &self.engines[stream],
                };
                let records = records.remove(&p).unwrap_or_default();
                out.push(Checkpoint {
                    header: Header {
                        group: self.group.clone(),
                        stream: self.names[stream].clone(),
                        topic: self.topics[stream].clone(),
                        topic_id: self.topic_ids[stream].clone(),
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

/// `0..len` cut into runs of at most `max` (at least 1).
fn runs(len: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    (0..len)
        .step_by(max.max(1))
        .map(|a| a..(a + max).min(len))
        .collect()
}

/// Cuts `readings` into consecutive runs, each at most `max` long, in which no device
/// appears twice.
fn distinct_runs(readings: &[Reading], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut seen: std::collections::HashSet<&str, foldhash::fast::RandomState> = Default::default();
    let mut start = 0;
    for (i, r) in readings.iter().enumerate() {
        if i - start >= max.max(1) || !seen.insert(r.device.as_str()) {
            out.push(start..i);
            start = i;
            seen.clear();
            seen.insert(r.device.as_str());
        }
    }
    if start < readings.len() {
        out.push(start..readings.len());
    }
    out
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
    use crate::config::HumanDuration;
    use crate::engine::EngineSettings;
    use crate::engine::testing::{Shape, settings, synthetic_model, synthetic_readings};
    use crate::serve::pipeline::Sourced;

    fn stage(dir: &std::path::Path, ttl: HumanDuration) -> EngineStage {
        let spec = Shape {
            features: 3,
            hidden: 16,
            layers: 1,
            horizon: 2,
        };
        let model = Arc::new(synthetic_model(spec));
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
                b.offsets
                    .note_message("sensors.pumps", p, offset[p as usize]);
                b.readings.push(Sourced {
                    stream: 0,
                    partition: p,
                    offset: offset[p as usize],
                    reading: r.clone(),
                });
                offset[p as usize] += 1;
            }
            out.push(b);
        }
        out
    }

    /// A batch's body, checked against the points it says it holds (the sink trusts them).
    fn counted(out: OutBatch) -> String {
        assert_eq!(
            out.body.lines().count() as u64,
            out.points,
            "points as written"
        );
        out.body
    }

    fn bodies(stage: &mut EngineStage, park: bool) -> (String, usize) {
        let mut text = String::new();
        let mut most_parked = 0;
        for b in batches() {
            text.push_str(&counted(stage.step(b).expect("step")));
            if park {
                stage.park_idle();
                most_parked = most_parked.max(stage.parked.values().map(ParkedLog::devices).sum());
            }
        }
        (text, most_parked)
    }

    fn model_version(spec_seed: u64, version: &str) -> Arc<crate::engine::InferenceModel> {
        use crate::model::{Architecture, Forecaster};
        let arch = Architecture {
            input: 3,
            hidden: 16,
            layers: 1,
            horizon: 2,
        };
        let features: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
        Arc::new(
            Forecaster::seeded(&arch, &burn::tensor::Device::flex(), spec_seed)
                .export(&arch, version, &features, &[0.0; 3], &[1.0; 3])
                .expect("export"),
        )
    }

    /// (device, ts, model, likelihood) of every anomaly point of a body.
    fn anomaly_points(body: &str) -> Vec<(String, i64, String, f64)> {
        body.lines()
            .filter(|l| l.starts_with("anomaly,"))
            .map(|l| {
                let device = l
                    .split("device=")
                    .nth(1)
                    .expect("device")
                    .split([' ', ','])
                    .next()
                    .expect("d");
                let ts: i64 = l.rsplit(' ').next().expect("ts").parse().expect("ts");
                let model = l
                    .split("model=\"")
                    .nth(1)
                    .expect("model")
                    .split('"')
                    .next()
                    .expect("m");
                let lk: f64 = l
                    .split("likelihood=")
                    .nth(1)
                    .expect("lk")
                    .split([',', ' '])
                    .next()
                    .expect("l")
                    .parse()
                    .expect("lk");
                (device.to_string(), ts, model.to_string(), lk)
            })
            .collect()
    }

    #[test]
    fn a_swap_writes_one_point_per_reading_and_switches_each_device_once_warm() {
        let d = tempfile::tempdir().expect("tmp");
        let mut st = stage(d.path(), HumanDuration::from_secs(0));
        st.engines[0] = Engine::new(model_version(1, "v1"), settings()).expect("v1");
        let all = batches();
        let readings: usize = all.iter().map(|b| b.readings.len()).sum();
        let cut = all.len() / 3;
        let mut body = String::new();
        let mut all = all.into_iter();
        for b in all.by_ref().take(cut) {
            body.push_str(&counted(st.step(b).expect("step")));
        }
        let before = anomaly_points(&body).len();
        let before_swap: Vec<usize> = (0..8)
            .map(|dev| {
                let name = format!("dev-{dev:06}");
                anomaly_points(&body).iter().filter(|p| p.0 == name).count()
            })
            .collect();
        st.start_swap(
            0,
            Engine::new(model_version(2, "v2"), settings()).expect("v2"),
        );
        assert!(st.swaps[0].is_some());
        // Checkpoints taken during the swap are the old model's, with every device.
        let mid = st.checkpoints(&[(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert!(mid.iter().all(|c| c.header.model == "v1"));
        assert_eq!(mid.iter().map(|c| c.header.devices).sum::<u64>(), 8);
        for b in all {
            body.push_str(&counted(st.step(b).expect("step")));
        }
        let points = anomaly_points(&body);
        assert_eq!(points.len(), readings, "one anomaly point per reading");
        let mut seen = std::collections::HashSet::new();
        assert!(
            points
                .iter()
                .all(|(d, ts, _, _)| seen.insert((d.clone(), *ts))),
            "no reading twice"
        );
        let warmup = st.cfg.model.swap_warmup as usize;
        for (dev, &before_dev) in before_swap.iter().enumerate() {
            let name = format!("dev-{dev:06}");
            let mine: Vec<_> = points.iter().filter(|p| p.0 == name).collect();
            let first_v2 = mine.iter().position(|p| p.2 == "v2").expect("switched");
            assert!(
                mine[first_v2..].iter().all(|p| p.2 == "v2"),
                "{name} switched back"
            );
            assert!(mine[..first_v2].iter().all(|p| p.2 == "v1"));
            let old_after_swap = first_v2 - before_dev;
            if dev >= 4 {
                // Active through the swap: re-warmed in shadow, so warm at once in v2.
                assert_eq!(
                    old_after_swap, warmup,
                    "{name}: switches at the reading it has re-warmed at"
                );
                assert!(
                    mine[first_v2].3 > 0.0,
                    "{name}: its first v2 point is warm (likelihood {})",
                    mine[first_v2].3
                );
            } else {
                // Silent past engine.max_gap during the swap: both models start it cold again,
                // so it switches at once, with nothing to re-warm.
                assert!(
                    old_after_swap <= 5,
                    "{name}: {old_after_swap} readings in v1 after its gap"
                );
            }
        }
        assert!(before > 0);
        st.check_swaps();
        assert!(
            st.swaps[0].is_none(),
            "every device re-warmed: the swap is over"
        );
        let after = st.checkpoints(&[(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert!(after.iter().all(|c| c.header.model == "v2"));
        assert_eq!(after.iter().map(|c| c.header.devices).sum::<u64>(), 8);
    }

    #[test]
    fn a_swap_restored_from_its_old_checkpoint_goes_on_in_the_old_model() {
        // A checkpoint taken during a swap restores into the old model of a swap under way on
        // another member, and its devices re-warm there too.
        let d = tempfile::tempdir().expect("tmp");
        let mut a = stage(d.path(), HumanDuration::from_secs(0));
        a.engines[0] = Engine::new(model_version(1, "v1"), settings()).expect("v1");
        let mut all = batches().into_iter();
        for b in all.by_ref().take(5) {
            a.step(b).expect("step");
        }
        let cps = a.checkpoints(&[(0, 0), (0, 1), (0, 2), (0, 3)]);
        let mut b = stage(d.path(), HumanDuration::from_secs(0));
        b.engines[0] = Engine::new(model_version(1, "v1"), settings()).expect("v1");
        b.start_swap(
            0,
            Engine::new(model_version(2, "v2"), settings()).expect("v2"),
        );
        for c in cps {
            b.restore(0, c);
        }
        let sw = b.swaps[0].as_ref().expect("swap");
        assert_eq!(sw.old.devices(), 8, "restored into the old model");
        assert_eq!(sw.old_partitions.len(), 4);
        assert_eq!(b.engines[0].devices(), 0);
        let mut body = String::new();
        for batch in all {
            body.push_str(&counted(b.step(batch).expect("step")));
        }
        let points = anomaly_points(&body);
        let first = points.iter().find(|p| p.2 == "v2").expect("switched");
        assert!(first.3 > 0.0, "warm at the switch");
    }

    #[test]
    fn idle_devices_are_looked_for_once_per_interval_while_a_checkpoint_waits() {
        let d = tempfile::tempdir().expect("tmp");
        let mut stage = stage(d.path(), HumanDuration::from_secs(60));
        stage.interval = Duration::from_millis(5);
        // A periodic checkpoint is in flight behind a slow sink for the whole run, so the
        // periodic one is overdue from here on.
        stage.checkpoints_in_flight.store(1, Ordering::Release);
        std::thread::sleep(Duration::from_millis(10));
        let (tx, _rx) = mpsc::channel(64);
        let mut stepped = 0;
        let t = Instant::now();
        for _ in 0..10 {
            for b in batches() {
                stage.step(b);
                assert!(stage.housekeeping(&tx));
                stepped += 1;
            }
        }
        let intervals = (t.elapsed().as_millis() / 5 + 1) as u64;
        assert!(
            stage.park_scans <= intervals && stage.park_scans < stepped / 4,
            "{} scans in {stepped} batches over {intervals} intervals",
            stage.park_scans
        );
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
                offsets: batch.offsets.clone(),
                ..InBatch::default()
            };
            ta.push_str(&counted(a.step(batch).expect("a")));
            tb.push_str(&counted(b.step(copy).expect("b")));
        }
        assert!(
            !ta.is_empty() && ta == tb,
            "the restored member writes what the first would"
        );
        assert_eq!(b.engines[0].devices(), 8);
    }
}
