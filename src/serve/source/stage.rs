//! The source stage of `serve`: reads messages, decodes them, dead-letters what does not
//! decode, gathers micro-batches for the engine stage and pauses the partitions when the
//! engine's queue stays full (backpressure without leaving the group: the consumer keeps
//! polling, so `max.poll.interval.ms` is not tripped).
//!
//! After a rebalance the micro-batch being filled may hold messages of partitions this member
//! no longer owns; they are dropped before the batch goes on (the new owner reads them from
//! the checkpoint or committed offset), so nothing of a revoked partition reaches the engine
//! after its devices were checkpointed and forgotten.

use super::{Assignment, Consumer};
use crate::decode::Decoder;
use crate::serve::dead_letters::DeadLetters;
use crate::serve::pipeline::{InBatch, PartitionKey, Sourced, ToEngine};
use crate::telemetry::{Metrics, RateLimit};
use futures_util::FutureExt as _;
use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Everything the source stage needs.
pub struct SourceStage {
    /// The group consumer.
    pub consumer: Arc<Consumer>,
    /// Message decoding.
    pub decoder: Decoder,
    /// Dead-letter producer.
    pub dead_letters: DeadLetters,
    /// To the engine stage.
    pub tx: mpsc::Sender<ToEngine>,
    /// Micro-batch size (readings or messages).
    pub max_batch: usize,
    /// Longest a reading waits for its micro-batch.
    pub linger: Duration,
    /// Stop consuming.
    pub stop: watch::Receiver<bool>,
    /// Shutdown's deadline passed.
    pub give_up: watch::Receiver<bool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `readings_in` of each stream, by stream index (resolved once).
    pub readings_in: Vec<Counter>,
    /// Topic per stream index.
    pub topics: Vec<String>,
    /// The partitions this member owns (kept by the rebalance callbacks).
    pub assignment: Arc<Assignment>,
}

impl SourceStage {
    /// Runs until stopped (or the engine stage is gone).
    pub async fn run(mut self) {
        let s = &mut self;
        let mut st = Filling::new(&s.assignment);
        let idle = tokio::time::sleep(IDLE_CHECK);
        tokio::pin!(idle);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let errors = RateLimit::default();
        let mut give_up = s.give_up.clone();
        loop {
            if s.assignment.generation() != st.generation {
                st.follow_rebalance(&s.assignment, &s.topics);
            }
            let due = st.first_at.map(|t| t + s.linger);
            let full = !st.room(s.max_batch);
            let flush = !st.batch.readings.is_empty() || st.batch.messages > 0;
            let flush = flush && (st.stopping || full || due.is_some_and(|d| Instant::now() >= d));
            // A full batch takes no more messages: it waits for room in the engine's queue,
            // and if none comes within PAUSE_AFTER the partitions are paused and polling goes
            // on (librdkafka drops what it had prefetched for them and fetches it again on
            // resume). Only what it had already handed over when the pause landed can join.
            // (Pausing at once would cost a re-fetch per batch whenever the sink is the
            // bottleneck, as in every backlog.)
            let take = !st.stopping && (!full || st.paused);
            if flush {
                st.blocked_since.get_or_insert_with(Instant::now);
            } else if st.paused {
                // Nothing waits any more (a rebalance took the batch's partitions away).
                set_paused(&s.consumer, &s.metrics, false);
                st.paused = false;
            }
            if st.stopping && !flush {
                break;
            }
            let sleep_to = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = wait_true(&mut s.stop), if !st.stopping => {
                    st.stopping = true;
                }
                _ = wait_true(&mut give_up) => break,
                permit = s.tx.reserve(), if flush || !st.controls.is_empty() => {
                    let Ok(permit) = permit else { break };
                    if let Some(control) = st.controls.pop_front() {
                        permit.send(control);
                        continue;
                    }
                    permit.send(ToEngine::Batch(std::mem::take(&mut st.batch)));
                    st.first_at = None;
                    st.blocked_since = None;
                    if st.paused {
                        set_paused(&s.consumer, &s.metrics, false);
                        st.paused = false;
                    }
                }
                // Borrowed from librdkafka, not copied: a dead letter copies what it keeps.
                msg = s.consumer.recv(), if take => {
                    let mut next = Some(msg);
                    // Then what librdkafka already holds, without a round of this loop (its
                    // timers and clock reads) per message: up to a full batch, never across a
                    // rebalance, and never past an error (back to the loop, which sees a stop
                    // and keeps its timers, while the broker is away).
                    while let Some(msg) = next.take() {
                        match msg {
                            Ok(m) => st.take(&m, (&s.assignment, &s.decoder, &s.dead_letters, &s.readings_in)),
                            Err(e) => {
                                if let Some(suppressed) = errors.check("consumer", Duration::from_secs(10)) {
                                    tracing::warn!(error = %e, suppressed, "Kafka consumer error");
                                }
                                break;
                            }
                        }
                        if st.room(s.max_batch) && s.assignment.generation() == st.generation {
                            next = s.consumer.recv().now_or_never();
                        }
                    }
                }
                _ = tick.tick(), if flush => {
                    // The engine queue has been full for PAUSE_AFTER: pause fetching (and
                    // re-pause after a rebalance, which may assign partitions not paused yet)
                    // but keep polling, so the group does not evict us.
                    if st.paused || st.blocked_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER) {
                        if !st.paused {
                            tracing::info!("output queue full: pausing consumption");
                        }
                        set_paused(&s.consumer, &s.metrics, true);
                        st.paused = true;
                    }
                }
                _ = tokio::time::sleep_until(sleep_to.into()), if !flush && due.is_some() => {}
                // No batch open: look again for what a rebalance left (the callbacks run inside
                // the consumer's poll, which wakes nobody here), so that the restores of an
                // idle partition's devices do not wait for its next message.
                _ = &mut idle, if due.is_none() && st.controls.is_empty() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + IDLE_CHECK);
                }
            }
        }
        if st.paused {
            set_paused(&s.consumer, &s.metrics, false);
        }
    }
}

/// The source loop's state between polls: the batch being filled, and what the loop knows
/// of the assignment.
struct Filling {
    batch: InBatch,
    /// When the batch's first message came.
    first_at: Option<Instant>,
    stopping: bool,
    paused: bool,
    /// Since when a batch due to go has found the engine's queue full.
    blocked_since: Option<Instant>,
    /// A copy of the assignment, refreshed when a rebalance changes it, so that checking a
    /// message's partition takes neither a lock nor an allocation.
    generation: u64,
    owned: Vec<PartitionKey>,
    /// What the rebalance callbacks left for the engine stage (restores, topic ids, a revoke
    /// that could not be sent in time): sent before any batch.
    controls: std::collections::VecDeque<ToEngine>,
    /// Partitions a message has come from since the last rebalance (for a debug line).
    first_seen: Vec<PartitionKey>,
}

impl Filling {
    fn new(assignment: &Assignment) -> Self {
        Self {
            batch: InBatch::default(),
            first_at: None,
            stopping: false,
            paused: false,
            blocked_since: None,
            generation: assignment.generation(),
            owned: assignment.owned(),
            controls: assignment.take_pending(),
            first_seen: Vec::new(),
        }
    }

    /// Decodes a message of an owned partition into the batch (or its dead letter); a
    /// message fetched before a revoke is left to the partition's new owner.
    fn take(
        &mut self,
        m: &impl Message,
        (assignment, decoder, dead_letters, readings_in): (
            &Assignment,
            &Decoder,
            &DeadLetters,
            &[Counter],
        ),
    ) {
        let st = self;
        let topic = m.topic();
        let (partition, offset) = (m.partition(), m.offset());
        if assignment.generation() != st.generation {
            st.owned = assignment.owned();
        }
        if !st.owns(topic, partition) {
            return;
        }
        if !st.first_seen.iter().any(|k| k.is(topic, partition)) {
            st.first_seen.push(PartitionKey::new(topic, partition));
            tracing::debug!(
                topic,
                partition,
                offset,
                "first message of the partition since its assignment"
            );
        }
        let batch = &mut st.batch;
        let ts = m.timestamp().to_millis();
        match decoder.decode(topic, m.key(), m.payload()) {
            Ok(d) => {
                readings_in[d.stream].inc_by(d.readings.len() as u64);
                batch
                    .readings
                    .extend(d.readings.into_iter().map(|reading| Sourced {
                        stream: d.stream,
                        partition,
                        offset,
                        reading,
                    }));
                if let Some(ts) = ts {
                    batch.msg_ts.push(ts);
                }
            }
            Err(why) => batch.dead_letters.extend(dead_letters.send(m, &why)),
        }
        batch.offsets.note_message(topic, partition, offset);
        batch.messages += 1;
        st.first_at.get_or_insert_with(Instant::now);
    }

    /// The batch has room for another message (it is not full: see the loop).
    fn room(&self, max_batch: usize) -> bool {
        self.batch.messages < max_batch && self.batch.readings.len() < max_batch
    }

    fn owns(&self, topic: &str, partition: i32) -> bool {
        self.owned.iter().any(|k| k.is(topic, partition))
    }

    /// A rebalance ran (inside the consumer's poll): keeps only what this member still owns,
    /// and takes what the callbacks left for the engine stage.
    fn follow_rebalance(&mut self, assignment: &Assignment, topics: &[String]) {
        self.generation = assignment.generation();
        self.owned = assignment.owned();
        self.controls.extend(assignment.take_pending());
        self.first_seen.clear();
        let owned = &self.owned;
        self.batch
            .retain_partitions(|t, p| owned.iter().any(|k| k.is(t, p)), topics);
        if self.batch.readings.is_empty() && self.batch.offsets.is_empty() {
            self.batch = InBatch::default();
            self.first_at = None;
        }
    }
}

/// How long a batch due to go waits for room in the engine's queue before the partitions are
/// paused (well below `max.poll.interval.ms`: the consumer is not polled meanwhile).
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How often an idle source looks for what a rebalance left for the engine stage.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Resolves once the flag is true (or its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn set_paused(consumer: &Consumer, metrics: &Metrics, pause: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "cannot pause/resume partitions");
    }
    metrics.paused.set(pause as i64);
}
