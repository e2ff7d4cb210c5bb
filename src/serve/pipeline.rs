//! What the stages of `serve` hand each other (docs/ARCHITECTURE.md §2).
//!
//! ```text
//! source ──ToEngine──► engine stage ──ToSink──► sink ──► persist checkpoints
//!   ▲                                                  │
//!   └──────────── Offsets of persisted checkpoints ◄───┘  (the source stores them)
//! ```
//!
//! Everything travels in order through bounded channels, so a checkpoint that follows a
//! batch of points is persisted only after those points are acknowledged (§3.1, §3.3).

use crate::decode::Reading;
use crate::serve::dead_letters::DeadLetterAck;
use crate::state::Checkpoint;
use tokio::sync::oneshot;

/// One decoded reading with where it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    /// Stream index.
    pub stream: usize,
    /// Kafka partition of its message.
    pub partition: i32,
    /// Offset of its message.
    pub offset: i64,
    /// The reading.
    pub reading: Reading,
}

/// Readings of one micro-batch and the offsets they complete.
#[derive(Default)]
pub struct InBatch {
    /// The readings, in message order.
    pub readings: Vec<Sourced>,
    /// Highest offset per partition among the batch's messages (dead letters included).
    pub offsets: Offsets,
    /// Kafka timestamps (ms) of the messages, for end-to-end latency.
    pub msg_ts: Vec<i64>,
    /// Messages in the batch.
    pub messages: usize,
    /// Deliveries of the batch's dead letters, awaited before its offsets are stored.
    pub dead_letters: Vec<DeadLetterAck>,
}

impl InBatch {
    /// Drops what came from partitions `keep` refuses (revoked while the batch filled).
    pub fn retain_partitions(&mut self, keep: impl Fn(&str, i32) -> bool, topics: &[String]) {
        self.readings
            .retain(|r| keep(&topics[r.stream], r.partition));
        self.offsets.retain(|k| keep(&k.topic, k.partition));
    }
}

/// A partition of a topic: where a message came from, what a checkpoint covers, what this
/// member owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

impl PartitionKey {
    /// `partition` of `topic`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
        }
    }

    /// Whether this is `partition` of `topic` (without building a key).
    pub fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

/// The offset of the next message to read from a partition: every message before it is done.
/// This is the form Kafka stores and commits and a checkpoint's header records; the one
/// conversion from a message's own offset is [`NextOffset::after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NextOffset(pub i64);

impl NextOffset {
    /// The position just after the message at `offset`.
    pub fn after(offset: i64) -> Self {
        Self(offset + 1)
    }
}

/// How far each partition is done: the furthest [`NextOffset`] noted per partition.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Offsets(Vec<(PartitionKey, NextOffset)>);

impl Offsets {
    /// Notes that the message at `offset` of a partition is done.
    pub fn note_message(&mut self, topic: &str, partition: i32, offset: i64) {
        self.advance(topic, partition, NextOffset::after(offset));
    }

    /// Notes that a partition is done up to `next` (kept if further than what is noted).
    pub fn advance(&mut self, topic: &str, partition: i32, next: NextOffset) {
        match self.0.iter_mut().find(|(k, _)| k.is(topic, partition)) {
            Some(e) => e.1 = e.1.max(next),
            None => self.0.push((PartitionKey::new(topic, partition), next)),
        }
    }

    /// Each partition and how far it is done.
    pub fn iter(&self) -> impl Iterator<Item = &(PartitionKey, NextOffset)> {
        self.0.iter()
    }

    /// Nothing noted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keeps the partitions `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&PartitionKey) -> bool) {
        self.0.retain(|(k, _)| keep(k));
    }
}

/// From the source (and its rebalance callbacks) to the engine stage.
pub enum ToEngine {
    /// Readings to step.
    Batch(InBatch),
    /// A partition was assigned with a checkpoint: restore its devices before any of its
    /// readings arrive (they come after this, in channel order).
    Restore {
        /// Stream index.
        stream: usize,
        /// The checkpoint.
        checkpoint: Box<Checkpoint>,
        /// The group's committed offset, when it is ahead of the checkpoint's (another member
        /// wrote the points in between): the readings before it are stepped without writing
        /// anything, and the partition is not checkpointed until it is reached.
        catch_up_to: Option<i64>,
    },
    /// The current id of a stream's topic (its incarnation), recorded in its checkpoints.
    TopicId {
        /// Stream index.
        stream: usize,
        /// The id, as Kafka's tools print it.
        id: String,
    },
    /// Time has passed: a periodic checkpoint may be due although no readings arrive.
    Tick,
    /// A new model of a stream, loaded and checked: swap it in between two batches
    /// ([`crate::serve::swap`]).
    Swap {
        /// Stream index.
        stream: usize,
        /// The engine of the new model (no devices yet).
        engine: Box<crate::engine::Engine>,
    },
    /// Partitions are being revoked: checkpoint their devices as of everything sent before
    /// this, forget them, and signal `done` once the checkpoint is persisted.
    Revoke {
        /// The partitions.
        partitions: Vec<PartitionKey>,
        /// Given the persisted checkpoints' offsets once they are durable (dropped
        /// unsignalled if they could not be written); the rebalancer stores them.
        done: oneshot::Sender<Offsets>,
    },
}

impl std::fmt::Debug for ToEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToEngine::Batch(_) => "Batch",
            ToEngine::Restore { .. } => "Restore",
            ToEngine::TopicId { .. } => "TopicId",
            ToEngine::Tick => "Tick",
            ToEngine::Swap { .. } => "Swap",
            ToEngine::Revoke { .. } => "Revoke",
        })
    }
}

/// Points of one micro-batch (their offsets are stored with the checkpoint that follows).
pub struct OutBatch {
    /// Line protocol.
    pub body: String,
    /// Points (lines) in `body`, counted as they are written: the sink need not scan a
    /// request's megabytes for them.
    pub points: u64,
    /// Kafka timestamps (ms), for end-to-end latency.
    pub msg_ts: Vec<i64>,
    /// Deliveries of dead letters among the messages, awaited before the offsets are stored.
    pub dead_letters: Vec<DeadLetterAck>,
}

/// Checkpoints to persist once every point sent before them is acknowledged.
#[derive(Debug)]
pub struct Checkpoints {
    /// One per partition.
    pub checkpoints: Vec<Checkpoint>,
    /// Given their offsets once they are persisted (a revoke waits for it); `None` for a
    /// periodic or final set, whose offsets the sink reports on its progress channel and
    /// which it counts down in the stages' shared in-flight counter.
    pub done: Option<oneshot::Sender<Offsets>>,
}

/// From the engine stage to the sink.
pub enum ToSink {
    /// Points to write.
    Points(OutBatch),
    /// Checkpoints to persist after the points before them.
    Checkpoints(Checkpoints),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_keep_the_furthest_next_offset_per_partition() {
        let mut o = Offsets::default();
        o.note_message("t", 0, 41);
        o.note_message("t", 0, 40);
        o.note_message("t", 1, 7);
        // A persisted checkpoint's header already holds the next offset.
        o.advance("u", 0, NextOffset(100));
        o.advance("u", 0, NextOffset(99));
        let got: Vec<(String, i32, i64)> = o
            .iter()
            .map(|(k, n)| (k.topic.clone(), k.partition, n.0))
            .collect();
        assert_eq!(
            got,
            [
                ("t".to_string(), 0, 42),
                ("t".to_string(), 1, 8),
                ("u".to_string(), 0, 100)
            ]
        );
        o.retain(|k| k.topic == "t");
        assert_eq!(o.iter().count(), 2);
        assert!(PartitionKey::new("t", 1).is("t", 1) && !PartitionKey::new("t", 1).is("t", 2));
    }
}
