//! Rebalances with device state (§3.3): what a member does when partitions are assigned to it
//! and when they are taken away.
//!
//! **Assigned.** For each partition the newest checkpoint that belongs to the topic's current
//! incarnation (its topic id) and whose offset lies within the partition's offsets is chosen
//! ([`crate::state::Expect`]). Then the group's committed offset decides:
//! - not ahead of the checkpoint: the devices are restored and the partition is read from the
//!   checkpoint's offset (the points after it are rewritten with exactly their values);
//! - ahead by at most `state.max_catch_up` messages (another member wrote the points in
//!   between, and this instance's checkpoint is older): the devices are restored, the
//!   partition is read from the checkpoint's offset, and the readings before the committed
//!   offset are stepped without writing anything (*catching up*);
//! - further ahead, or no usable checkpoint: the devices start cold at the committed offset,
//!   and when a checkpoint was passed over that is said loudly (log, metric, `/health/ready`).
//!
//! **Revoked.** Everything already taken from the partitions is stepped, written and
//! checkpointed before they go (the callback waits for it), then offsets are committed.
//!
//! **Bounded.** The callbacks run inside the consumer's poll: every wait in them has a deadline
//! below `max.poll.interval.ms`, so a rebalance during a database outage (the engine stage and
//! the sink stuck behind their full queues) completes. Restores are not sent from the callback
//! at all: they are queued here and the source stage forwards them ahead of any batch.

use super::topic_id;
use crate::serve::pipeline::{NextOffset, Offsets, PartitionKey, ToEngine};
use crate::state::{CheckpointError, Expect, Store};
use crate::telemetry::{Health, Metrics, labels};
use rdkafka::consumer::{
    BaseConsumer, Consumer as _, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The consumer type used by `serve`.
pub type Consumer = StreamConsumer<SourceContext>;

/// The partitions this member owns, kept by the rebalance callbacks and read by the source
/// stage (which drops what it holds of partitions it lost), and the messages for the engine
/// stage the callbacks leave to the source stage.
#[derive(Debug, Default)]
pub struct Assignment {
    owned: Mutex<HashSet<PartitionKey>>,
    generation: AtomicU64,
    /// For the engine stage, in order: forwarded by the source stage before any batch.
    pending: Mutex<VecDeque<ToEngine>>,
}

impl Assignment {
    /// The partitions this member owns now.
    pub fn owned(&self) -> Vec<PartitionKey> {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Changes with every rebalance.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The messages the callbacks left for the engine stage, oldest first.
    pub fn take_pending(&self) -> VecDeque<ToEngine> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, m: ToEngine) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(m);
    }

    /// Drops restores of `parts` not forwarded yet (revoked before they were applied).
    fn drop_restores(&self, parts: &[PartitionKey]) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m| match m {
                ToEngine::Restore { checkpoint, .. } => !parts
                    .iter()
                    .any(|k| k.is(&checkpoint.header.topic, checkpoint.header.partition)),
                _ => true,
            });
    }

    fn update(&self, f: impl FnOnce(&mut HashSet<PartitionKey>)) {
        f(&mut self.owned.lock().unwrap_or_else(|e| e.into_inner()));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A stream as the rebalance callbacks see it: what its checkpoints must match.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Stream name.
    pub name: String,
    /// Topic.
    pub topic: String,
}

/// What the rebalance callbacks need to move device state with partitions.
pub struct Rebalancer {
    /// Checkpoints.
    pub store: Store,
    /// Consumer group.
    pub group: String,
    /// Streams, by index.
    pub streams: Vec<StreamState>,
    /// The engine stage's input; taken away at shutdown (then rebalances move no state).
    pub engine: Mutex<Option<mpsc::Sender<ToEngine>>>,
    /// The runtime the callbacks block on.
    pub runtime: tokio::runtime::Handle,
    /// Longest a callback waits in all (below `max.poll.interval.ms`).
    pub callback_timeout: Duration,
    /// Most messages a restored checkpoint may lie behind the committed offset and still be
    /// caught up (`state.max_catch_up`).
    pub max_catch_up: u64,
    /// Owned partitions, and messages left for the source stage.
    pub assignment: Arc<Assignment>,
}

/// What the cluster says about the assigned partitions, each piece `None` when it could not
/// be learnt in time (then the checks that need it are not made).
#[derive(Debug, Default)]
struct Facts {
    /// Topic ids by topic.
    ids: HashMap<String, String>,
    /// The group's committed offsets, if they could be read (a partition without one is
    /// absent).
    committed: Option<HashMap<PartitionKey, NextOffset>>,
    /// Low and high watermark per partition.
    range: HashMap<PartitionKey, (i64, i64)>,
}

/// Where an assigned partition with a usable checkpoint at `offset` starts.
#[derive(Debug, PartialEq)]
enum Start {
    /// Restore it and read from its offset; catch up to the committed offset if given.
    Restore { catch_up_to: Option<i64> },
    /// Too far behind the committed offset: cold at the committed offset, for this reason.
    Cold(String),
}

fn start(offset: i64, committed: Option<i64>, max_catch_up: u64) -> Start {
    match committed {
        Some(c) if c > offset => {
            let gap = (c - offset) as u64;
            if gap <= max_catch_up {
                Start::Restore {
                    catch_up_to: Some(c),
                }
            } else {
                Start::Cold(format!(
                    "its offset {offset} is {gap} messages behind the group's committed offset {c}, more than state.max_catch_up = {max_catch_up}"
                ))
            }
        }
        _ => Start::Restore { catch_up_to: None },
    }
}

impl Rebalancer {
    fn engine(&self) -> Option<mpsc::Sender<ToEngine>> {
        self.engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops moving state with rebalances (shutdown: the engine stage is finishing).
    pub fn detach(&self) {
        self.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Runs `fut` to completion from inside a librdkafka callback (which runs on a runtime
    /// worker, inside the source stage's poll).
    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        tokio::task::block_in_place(|| self.runtime.block_on(fut))
    }

    /// Asks the cluster for the assigned partitions' topic ids, committed offsets and
    /// watermarks, within the callback's deadline.
    fn facts(&self, consumer: &BaseConsumer<SourceContext>, parts: &[PartitionKey]) -> Facts {
        let deadline = Instant::now() + self.callback_timeout / 2;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(10))
        };
        let mut facts = Facts::default();
        let mut topics: Vec<&str> = parts.iter().map(|k| k.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        match topic_id::topic_ids(consumer.client(), &topics, left()) {
            Ok(ids) => facts.ids = ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot learn the topics' ids: checkpoints of an earlier incarnation of a topic cannot be told apart")
            }
        }
        let mut tpl = TopicPartitionList::new();
        for k in parts {
            tpl.add_partition(&k.topic, k.partition);
        }
        match consumer.committed_offsets(tpl, left()) {
            Ok(c) => {
                facts.committed = Some(
                    c.elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o) => {
                                Some((PartitionKey::new(e.topic(), e.partition()), NextOffset(o)))
                            }
                            _ => None,
                        })
                        .collect(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's committed offsets: restored checkpoints are not checked against them")
            }
        }
        for k in parts {
            let (t, p) = (&k.topic, &k.partition);
            if left().is_zero() {
                tracing::warn!(
                    "no time left to read every partition's offsets: the rest are not checked"
                );
                break;
            }
            match consumer.fetch_watermarks(t, *p, left()) {
                Ok(r) => {
                    facts.range.insert(k.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(topic = %t, partition = p, error = %e, "cannot read the partition's offsets")
                }
            }
        }
        facts
    }

    /// Chooses each assigned partition's start (see the module's doc), queues the restores
    /// for the source stage and sets the partitions to be read from their checkpoints'
    /// offsets; returns the restored partitions whose committed offset is behind that offset.
    fn on_assign(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        tpl: &mut TopicPartitionList,
        metrics: &Metrics,
        health: &Health,
    ) -> Offsets {
        let mut behind = Offsets::default();
        if self.engine().is_none() {
            return behind;
        }
        let parts: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .filter(|e| self.streams.iter().any(|s| s.topic == e.topic()))
            .map(|e| PartitionKey::new(e.topic(), e.partition()))
            .collect();
        if parts.is_empty() {
            return behind;
        }
        let facts = self.facts(consumer, &parts);
        for (stream, st) in self.streams.iter().enumerate() {
            if let Some(id) = facts.ids.get(&st.topic) {
                self.assignment.push(ToEngine::TopicId {
                    stream,
                    id: id.clone(),
                });
            }
        }
        for key in parts {
            let Some(stream) = self.streams.iter().position(|s| s.topic == key.topic) else {
                continue;
            };
            let committed = facts.committed.as_ref().and_then(|c| c.get(&key).copied());
            let seek = self.choose(stream, &key, &facts, committed, metrics, health);
            if let Some(offset) = seek {
                let (topic, partition) = (&key.topic, key.partition);
                if let Err(e) = tpl.set_partition_offset(topic, partition, Offset::Offset(offset.0))
                {
                    tracing::error!(error = %e, topic, partition, "cannot seek to the checkpoint's offset");
                    continue;
                }
                if facts.committed.is_some() && committed.is_none_or(|c| c < offset) {
                    behind.advance(&key.topic, key.partition, offset);
                }
            }
        }
        behind
    }

    /// Loads the partition's checkpoint and decides where it starts; queues its restore and
    /// returns the offset to read from, or `None` for a cold start at the committed offset.
    fn choose(
        &self,
        stream: usize,
        key: &PartitionKey,
        facts: &Facts,
        committed: Option<NextOffset>,
        metrics: &Metrics,
        health: &Health,
    ) -> Option<NextOffset> {
        let st = &self.streams[stream];
        let (topic, partition) = (key.topic.as_str(), key.partition);
        let committed = committed.map(|c| c.0);
        let loaded = self.store.load(&Expect {
            group: &self.group,
            stream: &st.name,
            topic,
            partition,
            // Any version: the engine stage brings a checkpoint of another model back in
            // that model and re-warms it into the current one (crate::serve::swap).
            model: None,
            layout: None,
            topic_id: facts.ids.get(topic).map(String::as_str),
            range: facts.range.get(key).copied(),
        });
        let skipped = |reason: &str| {
            metrics
                .checkpoints_skipped
                .get_or_create(&labels(&[("reason", reason)]))
                .inc();
        };
        // A checkpoint passed over for what it says about the topic is a reason to say so
        // loudly if the partition then starts cold.
        let mut unusable = None;
        for s in &loaded.skipped {
            skipped(skip_reason(&s.reason));
            tracing::warn!(at = %s.location, reason = %s.reason, "checkpoint skipped");
            if matches!(
                s.reason,
                CheckpointError::Recreated(_) | CheckpointError::OutOfRange(_)
            ) {
                unusable.get_or_insert_with(|| s.reason.to_string());
            }
        }
        let assigned = |start: &str| {
            metrics
                .partitions_assigned
                .get_or_create(&labels(&[
                    ("topic", topic),
                    ("partition", &partition.to_string()),
                    ("start", start),
                ]))
                .inc();
        };
        let cold = |why: String| {
            let at = committed.map_or_else(
                || "the auto.offset.reset position (the group has no committed offset)".into(),
                |c| format!("the committed offset {c}"),
            );
            tracing::warn!(stream = %st.name, topic, partition, reason = %why, "checkpoint not usable: devices start cold at {at}");
            health.warn(format!(
                "stream {} partition {partition}: checkpoint not usable ({why}); devices started cold at {at}",
                st.name
            ));
        };
        let Some((c, at)) = loaded.checkpoint else {
            assigned("cold");
            match unusable {
                Some(why) => cold(why),
                None => {
                    tracing::info!(stream = %st.name, partition, "no checkpoint: devices start cold from the committed offset")
                }
            }
            return None;
        };
        let offset = c.header.offset;
        let catch_up_to = match start(offset, committed, self.max_catch_up) {
            Start::Restore { catch_up_to } => catch_up_to,
            Start::Cold(why) => {
                assigned("cold");
                skipped("behind_committed");
                cold(why);
                return None;
            }
        };
        assigned("checkpoint");
        match catch_up_to {
            Some(to) => {
                tracing::info!(stream = %st.name, partition, offset, committed = to, devices = c.header.devices, at = %at, "restoring checkpoint and catching up: the {} messages before the committed offset are stepped without writing (another member wrote them)", to - offset)
            }
            None => {
                tracing::info!(stream = %st.name, partition, offset, devices = c.header.devices, at = %at, "restoring checkpoint")
            }
        }
        self.assignment.push(ToEngine::Restore {
            stream,
            checkpoint: Box::new(c),
            catch_up_to,
        });
        Some(NextOffset(offset))
    }

    /// After an assignment: a restored checkpoint's offset is done (a checkpoint is written
    /// only once every point before its offset is), so it is stored for the next commit where
    /// the group's committed offset is behind it. Otherwise a partition whose last commit was
    /// lost (the broker went away, the assignment with it) and that gets no new reading would
    /// show a lag that is not there, and a member without checkpoints would re-read it. Never
    /// moves a committed offset back.
    fn store_restored<C: rdkafka::consumer::Consumer<SourceContext>>(
        consumer: &C,
        behind: &Offsets,
    ) {
        if behind.is_empty() {
            return;
        }
        match super::store_offsets(consumer, behind) {
            Ok(()) => tracing::info!(
                partitions = behind.iter().count(),
                "committed offsets behind the restored checkpoints moved up to them"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the restored checkpoints' offsets")
            }
        }
    }

    /// Before partitions go: everything taken from them is stepped, written and
    /// checkpointed, then their offsets are committed. Each wait ends by the callback's
    /// deadline; a revoke that cannot reach the engine stage in time is left to the source
    /// stage (the engine then checkpoints and forgets the partitions later).
    fn on_revoke<C: rdkafka::consumer::Consumer<SourceContext>>(
        &self,
        consumer: &C,
        tpl: &TopicPartitionList,
    ) {
        let parts: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| PartitionKey::new(e.topic(), e.partition()))
            .collect();
        self.assignment.drop_restores(&parts);
        self.assignment.update(|owned| {
            for p in &parts {
                owned.remove(p);
            }
        });
        let Some(tx) = self.engine() else { return };
        let (done_tx, done_rx) = oneshot::channel();
        let revoke = ToEngine::Revoke {
            partitions: parts.clone(),
            done: done_tx,
        };
        let deadline = tokio::time::Instant::now() + self.callback_timeout;
        let waited = self.block_on(async {
            match tokio::time::timeout_at(deadline, tx.reserve()).await {
                Ok(Ok(permit)) => permit.send(revoke),
                Ok(Err(_)) => return false,
                Err(_) => {
                    // The engine stage is stuck behind a full sink (a database outage).
                    self.assignment.push(revoke);
                    return false;
                }
            }
            match tokio::time::timeout_at(deadline, done_rx).await {
                Ok(Ok(offsets)) => {
                    // Persisted: their offsets go into the commit below.
                    if let Err(e) = super::store_offsets(consumer, &offsets) {
                        tracing::warn!(error = %e, "cannot store the revoked partitions' offsets");
                    }
                    true
                }
                _ => false,
            }
        });
        if waited {
            tracing::info!(partitions = parts.len(), "revoked partitions checkpointed");
        } else {
            tracing::warn!(
                partitions = parts.len(),
                "revoked partitions could not be checkpointed in time; their next owner restores the previous checkpoint and re-reads from it"
            );
        }
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => tracing::warn!(error = %e, "commit before revoke failed"),
        }
    }
}

fn skip_reason(e: &CheckpointError) -> &'static str {
    use CheckpointError as E;
    match e {
        E::TooShort(_) | E::Checksum { .. } | E::Incomplete(_) => "damaged",
        E::Unavailable(_) => "unavailable",
        E::BadMagic | E::Header(_) => "unreadable",
        E::UnknownVersion(_) => "format_version",
        E::Mismatch(_) => "mismatch",
        E::Recreated(_) => "topic_recreated",
        E::OutOfRange(_) => "out_of_range",
    }
}

/// Consumer callbacks: rebalances (with device state), partition counts for readiness, lag
/// from librdkafka's statistics.
pub struct SourceContext {
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    pub(super) rebalancer: Option<Arc<Rebalancer>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    let l = labels(&[("topic", topic), ("partition", &partition.to_string())]);
                    self.metrics
                        .consumer_lag
                        .get_or_create(&l)
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut behind = Offsets::default();
                if let Some(r) = &self.rebalancer {
                    behind = r.on_assign(consumer, tpl, &self.metrics, &self.health);
                    r.assignment.update(|owned| {
                        if !cooperative {
                            owned.clear();
                        }
                        for e in tpl.elements() {
                            owned.insert(PartitionKey::new(e.topic(), e.partition()));
                        }
                    });
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if r.is_ok() {
                    Rebalancer::store_restored(consumer, &behind);
                }
                self.after(consumer, &Rebalance::Assign(tpl));
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Some(r) = &self.rebalancer {
                    r.on_revoke(consumer, tpl);
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                self.after(consumer, &Rebalance::Revoke(tpl));
                r
            }
            other => {
                let e = rdkafka::error::KafkaError::Rebalance(other.into());
                tracing::warn!(error = %e, "rebalance error");
                if let Some(r) = &self.rebalancer {
                    r.assignment.update(|owned| owned.clear());
                }
                // Under the cooperative protocol librdkafka refuses a plain unassign.
                match consumer.assignment() {
                    Ok(current) if cooperative => consumer.incremental_unassign(&current),
                    _ => consumer.unassign(),
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot apply the rebalance");
        }
    }
}

impl SourceContext {
    fn after(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let n = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.health.partitions.store(n, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(assigned = tpl.count(), total = n, "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                // Lag of partitions this member no longer owns is someone else's to report.
                for e in tpl.elements() {
                    let l = labels(&[
                        ("topic", e.topic()),
                        ("partition", &e.partition().to_string()),
                    ]);
                    self.metrics.consumer_lag.remove(&l);
                    self.metrics.partitions_revoked.get_or_create(&l).inc();
                }
                tracing::info!(revoked = tpl.count(), total = n, "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_behind_the_committed_offset_is_caught_up_within_the_limit() {
        let restore = |to| Start::Restore { catch_up_to: to };
        // No committed offset, or one at or behind the checkpoint: read from the checkpoint.
        assert_eq!(start(100, None, 10), restore(None));
        assert_eq!(start(100, Some(100), 10), restore(None));
        assert_eq!(start(100, Some(40), 10), restore(None));
        // Ahead by at most the limit: caught up to it.
        assert_eq!(start(100, Some(110), 10), restore(Some(110)));
        // Further ahead, or catching up switched off: cold at the committed offset.
        let Start::Cold(why) = start(100, Some(111), 10) else {
            panic!("a gap past the limit starts cold")
        };
        assert!(
            why.contains("11 messages behind") && why.contains("state.max_catch_up = 10"),
            "{why}"
        );
        assert!(matches!(start(100, Some(101), 0), Start::Cold(_)));
    }

    #[test]
    fn restores_of_revoked_partitions_are_dropped_before_they_are_forwarded() {
        let a = Assignment::default();
        let restore = |partition| {
            let mut c = crate::state::tests::sample();
            c.header.topic = "t".into();
            c.header.partition = partition;
            ToEngine::Restore {
                stream: 0,
                checkpoint: Box::new(c),
                catch_up_to: None,
            }
        };
        a.push(ToEngine::TopicId {
            stream: 0,
            id: "x".into(),
        });
        a.push(restore(1));
        a.push(restore(2));
        a.drop_restores(&[PartitionKey::new("t", 1)]);
        let left: Vec<_> = a
            .take_pending()
            .into_iter()
            .map(|m| match m {
                ToEngine::Restore { checkpoint, .. } => checkpoint.header.partition,
                _ => -1,
            })
            .collect();
        assert_eq!(left, [-1, 2]);
        assert!(a.take_pending().is_empty());
    }
}
