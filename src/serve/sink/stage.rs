//! The sink stage of `serve`: batches points into write requests, keeps up to
//! `influxdb.concurrency` of them in flight, acknowledges them strictly in order, and persists
//! checkpoints once every point before them is written — reporting, then, the Kafka offsets
//! they complete back to the source, which stores them for commit.
//!
//! Keeps §3.3 and with it §3.1: a checkpoint arrives behind the points of the messages it
//! covers and is persisted only when they (and every batch before them) are acknowledged;
//! only then are its offsets reported. Kafka's committed offset thus never runs ahead of a
//! persisted checkpoint: a member that takes a partition over always finds the device states
//! that go with the offset it starts from (as Flink commits source offsets when a checkpoint
//! completes, and as vector's finalizers acknowledge a source's events once delivered). The
//! sink never touches the consumer: progress flows back on a channel.

use super::{SinkError, Writer};
use crate::serve::bodies::Bodies;
use crate::serve::dead_letters::DeadLetterAck;
use crate::serve::pipeline::{Checkpoints, NextOffset, Offsets, OutBatch, PartitionKey, ToSink};
use crate::state::{Checkpoint, Store};
use crate::telemetry::{Health, Metrics, labels};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Everything the sink stage needs.
pub struct SinkStage {
    /// Input from the engine stage.
    pub rx: mpsc::Receiver<ToSink>,
    /// The InfluxDB writer.
    pub writer: Writer,
    /// Where the offsets of persisted checkpoints are reported (the source stores them).
    pub persisted: mpsc::Sender<Offsets>,
    /// Where checkpoints are persisted.
    pub store: Store,
    /// A write request is sent once this many bytes wait…
    pub flush_bytes: usize,
    /// Where the engine stage's batch bodies go back once copied into a request.
    pub batch_bodies: Bodies,
    /// …or the oldest has waited this long.
    pub flush_interval: Duration,
    /// Requests in flight.
    pub concurrency: usize,
    /// Shutdown's deadline passed: give up.
    pub abort: watch::Receiver<bool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Periodic checkpoint sets the engine stage sent and that are not persisted yet.
    pub checkpoints_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Readiness (a checkpoint that cannot be written makes the service not ready).
    pub health: Arc<Health>,
}

/// Points waiting to be sent as one write request.
struct Pending {
    body: String,
    /// Where `body` goes back once written.
    to: Bodies,
    /// Points (lines) in `body`.
    points: u64,
    msg_ts: Vec<i64>,
    deadline: tokio::time::Instant,
}

impl SinkStage {
    /// Runs until the input closes and everything is written and persisted (true), or until
    /// shutdown aborts it or the writer fails for good (false).
    pub async fn run(mut self) -> bool {
        use futures_util::StreamExt;
        let writer = Arc::new(self.writer);
        let (persist_tx, persist_rx) = mpsc::channel::<(Checkpoints, Vec<DeadLetterAck>)>(1);
        let persister = tokio::spawn(persist(
            persist_rx,
            self.store.clone(),
            self.persisted.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.checkpoints_in_flight),
            Arc::clone(&self.health),
        ));
        let mut inflight = futures_util::stream::FuturesOrdered::new();
        let mut pending: Option<Pending> = None;
        // Requests' buffers: those in flight and the one filling.
        let bodies = Pools {
            batches: self.batch_bodies.clone(),
            requests: Bodies::new(self.concurrency + 1),
        };
        let mut trim = tokio::time::interval(POOL_IDLE / 4);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Requests issued and acknowledged, and checkpoints waiting for a number of them.
        let (mut issued, mut acked) = (0u64, 0u64);
        let mut barriers: VecDeque<(u64, Checkpoints, Vec<DeadLetterAck>)> = VecDeque::new();
        // Dead letters of the batches received, until their delivery is settled: a
        // checkpoint of their partition waits for them (and nothing else does).
        let mut unsettled: Vec<DeadLetterAck> = Vec::new();
        // Points InfluxDB refused, on their way to the dead-letter topic: every checkpoint
        // released after the write that found them waits for them.
        let mut refused: Vec<DeadLetterAck> = Vec::new();
        let mut closed = false;
        let ok = loop {
            release(&mut barriers, acked, &mut refused, &persist_tx).await;
            let full = inflight.len() >= self.concurrency;
            let ready = pending.as_ref().is_some_and(|p| {
                closed
                    || p.body.len() >= self.flush_bytes
                    || tokio::time::Instant::now() >= p.deadline
            });
            if ready && !full {
                let Some(p) = pending.take() else { continue };
                let (w, mut abort) = (Arc::clone(&writer), self.abort.clone());
                let body = p.to.bytes(p.body);
                let (points, msg_ts) = (p.points, p.msg_ts);
                inflight
                    .push_back(async move { (w.write(body, points, &mut abort).await, msg_ts) });
                issued += 1;
                continue;
            }
            if closed && pending.is_none() && inflight.is_empty() && barriers.is_empty() {
                break true;
            }
            let room = pending
                .as_ref()
                .is_none_or(|p| p.body.len() < self.flush_bytes);
            let deadline = pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                Some((result, msg_ts)) = inflight.next(), if !inflight.is_empty() => match result {
                    Ok(report) => {
                        acked += 1;
                        refused.append(&mut writer.take_refused());
                        written(&self.metrics, report, &msg_ts);
                    }
                    Err(SinkError::Aborted) => break false,
                    Err(e) => {
                        tracing::error!(error = %e, "sink stopped");
                        break false;
                    }
                },
                next = self.rx.recv(), if !closed && room => match next {
                    Some(ToSink::Points(mut b)) => {
                        unsettled.append(&mut b.dead_letters);
                        add(&mut pending, b, (self.flush_interval, self.flush_bytes), &bodies);
                    }
                    Some(ToSink::Checkpoints(set)) => {
                        // Behind every point received so far: send what is pending now.
                        if let Some(p) = &mut pending {
                            p.deadline = tokio::time::Instant::now();
                        }
                        unsettled.retain(|a| !a.settled());
                        barriers.push_back((issued + pending.is_some() as u64, set, unsettled.clone()));
                    }
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() && !ready => {}
                _ = trim.tick() => {
                    bodies.batches.trim_idle(POOL_IDLE);
                    bodies.requests.trim_idle(POOL_IDLE);
                }
            }
        };
        drop(persist_tx);
        if ok {
            // The last checkpoints reach the disk before the stage reports success.
            let _ = persister.await;
        } else {
            persister.abort();
        }
        ok
    }
}

/// Sends the checkpoints whose requests are all acknowledged (`acked`) to be persisted, each
/// with the dead letters it waits for: its own and those of points refused so far.
async fn release(
    barriers: &mut VecDeque<(u64, Checkpoints, Vec<DeadLetterAck>)>,
    acked: u64,
    refused: &mut Vec<DeadLetterAck>,
    persist: &mpsc::Sender<(Checkpoints, Vec<DeadLetterAck>)>,
) {
    while barriers.front().is_some_and(|(t, _, _)| *t <= acked) {
        let Some((_, set, mut acks)) = barriers.pop_front() else {
            break;
        };
        refused.retain(|a| !a.settled());
        acks.extend(refused.iter().cloned());
        if persist.send((set, acks)).await.is_err() {
            break;
        }
    }
}

/// Counts an acknowledged request's points and its messages' produce → written latency.
fn written(metrics: &Metrics, report: super::WriteReport, msg_ts: &[i64]) {
    metrics.points_written.inc_by(report.written);
    let now = chrono::Utc::now().timestamp_millis();
    metrics
        .end_to_end_latency
        .observe_all(msg_ts.iter().map(|ts| (now - ts).max(0) as f64 / 1000.0));
}

/// Adds a batch's points to the pending request (`flush`: the sink's flush interval and
/// request size). A batch's body is copied into a request's buffer and given back, unless it
/// is a request's worth on its own.
fn add(
    pending: &mut Option<Pending>,
    b: OutBatch,
    (flush_interval, flush_bytes): (Duration, usize),
    bodies: &Pools,
) {
    match pending {
        Some(p) => {
            p.body.push_str(&b.body);
            p.points += b.points;
            p.msg_ts.extend(b.msg_ts);
            bodies.batches.give(b.body);
        }
        None => {
            let (body, to) = if b.body.len() >= flush_bytes {
                (b.body, bodies.batches.clone())
            } else {
                // Room for the batches that join it before it goes (at most `flush_bytes` and
                // one more batch), so that it is not reallocated and copied as it grows.
                let mut body = bodies.requests.take(flush_bytes + b.body.len());
                body.push_str(&b.body);
                bodies.batches.give(b.body);
                (body, bodies.requests.clone())
            };
            *pending = Some(Pending {
                body,
                to,
                points: b.points,
                msg_ts: b.msg_ts,
                deadline: tokio::time::Instant::now() + flush_interval,
            });
        }
    }
}

/// Buffers nobody has taken for this long are let go (a stream that paused, a backlog caught
/// up), checked four times as often.
const POOL_IDLE: Duration = Duration::from_secs(1);

/// The buffer pools the sink draws on and gives back to.
struct Pools {
    batches: Bodies,
    requests: Bodies,
}

/// Writes checkpoints in order, off the sink's loop (file I/O on the blocking pool), and
/// reports the offsets of those written: a revoke's to its `done`, the others on `persisted`.
///
/// A periodic checkpoint of a partition with dead letters still on their way is set aside
/// until they are settled (a newer one of the same partition replaces it), so that they hold
/// back that partition alone; the others of its set are written at once. A revoke's
/// checkpoints are written together once their dead letters are settled (the revoke waits for
/// them anyway), and whatever is set aside is written before the task ends.
async fn persist(
    mut rx: mpsc::Receiver<(Checkpoints, Vec<DeadLetterAck>)>,
    store: Store,
    persisted: mpsc::Sender<Offsets>,
    metrics: Arc<Metrics>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    health: Arc<Health>,
) {
    use std::sync::atomic::Ordering;
    let key = |c: &Checkpoint| PartitionKey::new(&c.header.topic, c.header.partition);
    let mut aside: HashMap<PartitionKey, (Checkpoint, Vec<DeadLetterAck>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let write = |checkpoints: Vec<Checkpoint>| write_checkpoints(&store, &metrics, checkpoints);
    // A closed channel means the source has stopped storing offsets (shutdown): what is
    // persisted is still restored from, only not committed.
    let report = |offsets: Offsets| {
        let persisted = persisted.clone();
        async move {
            if !offsets.is_empty() {
                let _ = persisted.send(offsets).await;
            }
        }
    };
    loop {
        let (set, acks) = tokio::select! {
            next = rx.recv() => match next {
                Some(next) => next,
                None => break,
            },
            _ = tick.tick(), if !aside.is_empty() => {
                let ready: Vec<PartitionKey> = aside
                    .iter()
                    .filter(|(_, (_, acks))| acks.iter().all(DeadLetterAck::settled))
                    .map(|(k, _)| k.clone())
                    .collect();
                let checkpoints = ready.iter().filter_map(|k| aside.remove(k)).map(|(c, _)| c).collect();
                let (ok, offsets) = write(checkpoints).await;
                report(offsets).await;
                health.checkpoints_failing.store(!ok, Ordering::Relaxed);
                continue;
            }
        };
        let periodic = set.done.is_none();
        let Checkpoints { checkpoints, done } = set;
        let own = |c: &Checkpoint| -> Vec<DeadLetterAck> {
            acks.iter()
                .filter(|a| !a.settled() && a.holds_back(&c.header.topic, c.header.partition))
                .cloned()
                .collect()
        };
        for c in &checkpoints {
            // Superseded by this newer one.
            aside.remove(&key(c));
        }
        let (ok, offsets) = if periodic {
            let mut now = Vec::new();
            for c in checkpoints {
                let waits = own(&c);
                if waits.is_empty() {
                    now.push(c);
                } else {
                    aside.insert(key(&c), (c, waits));
                }
            }
            write(now).await
        } else {
            for c in &checkpoints {
                for a in own(c) {
                    a.wait().await;
                }
            }
            write(checkpoints).await
        };
        health.checkpoints_failing.store(!ok, Ordering::Relaxed);
        match done {
            Some(done) if ok => {
                let _ = done.send(offsets);
            }
            // Periodic, or a revoke's set that failed: what was written still counts.
            _ => report(offsets).await,
        }
        if periodic {
            // Written, set aside or failed, the engine stage may take the next one (a failed
            // one is retried then, its partitions still being due).
            let _ = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        }
    }
    for (c, acks) in std::mem::take(&mut aside).into_values() {
        for a in acks {
            a.wait().await;
        }
        let (ok, offsets) = write(vec![c]).await;
        report(offsets).await;
        health.checkpoints_failing.store(!ok, Ordering::Relaxed);
    }
}

/// Writes checkpoints on the blocking pool; whether every one was written, and the offsets
/// of those that were.
async fn write_checkpoints(
    store: &Store,
    metrics: &Arc<Metrics>,
    checkpoints: Vec<Checkpoint>,
) -> (bool, Offsets) {
    if checkpoints.is_empty() {
        return (true, Offsets::default());
    }
    let (store, metrics) = (store.clone(), Arc::clone(metrics));
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let mut all_ok = true;
        let mut offsets = Offsets::default();
        for c in &checkpoints {
            let l = labels(&[("stream", &c.header.stream)]);
            match store.write(c) {
                Ok((at, bytes)) => {
                    // The header's offset is the next to read.
                    offsets.advance(&c.header.topic, c.header.partition, NextOffset(c.header.offset));
                    metrics.checkpoints_written.get_or_create(&l).inc();
                    metrics.checkpoint_bytes.get_or_create(&l).inc_by(bytes as u64);
                    tracing::debug!(at = %at, bytes, devices = c.header.devices, offset = c.header.offset, "checkpoint written");
                }
                Err(e) => {
                    all_ok = false;
                    metrics.checkpoint_failures.inc();
                    tracing::error!(
                        stream = %c.header.stream,
                        partition = c.header.partition,
                        store = %store.describe(),
                        error = %e,
                        "cannot write checkpoint; restarts fall back to the previous one"
                    );
                }
            }
        }
        metrics.checkpoint_seconds.observe(t.elapsed().as_secs_f64());
        (all_ok, offsets)
    })
    .await
    .unwrap_or_default()
}
