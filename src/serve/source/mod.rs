//! Kafka source: the consumer group, rebalances with device state, and the offsets it stores
//! for commit.
//!
//! Keeps invariant §3.1 on the input side: the consumer runs with
//! `enable.auto.offset.store=false`, and an offset is stored only once a checkpoint at or past
//! it is persisted — which the sink persists only once everything derived from the messages
//! before it is written. The sink reports each persisted checkpoint's offsets back
//! ([`store_persisted`]); this module alone stores offsets and commits. A message that does not decode
//! is dead-lettered ([`crate::serve::dead_letters`], §3.4) and its offset then counts as done.
//!
//! Keeps §3.3 across rebalances ([`rebalance`]): before partitions are given up, everything
//! already taken from them is stepped and written and their devices checkpointed; when
//! partitions are assigned, the newest checkpoint of each that belongs to the topic's current
//! incarnation is restored into the engine stage and the partition is read from the
//! checkpoint's offset (quickwit and arroyo treat Kafka's committed offset as progress only,
//! the same way), caught up silently where the group's committed offset is ahead of it.

pub mod rebalance;
pub mod stage;
mod topic_id;

pub use rebalance::{Assignment, Consumer, Rebalancer, SourceContext, StreamState};

use crate::config::Config;
use crate::kafka::client_config;
use crate::serve::pipeline::Offsets;
use crate::telemetry::{Health, Metrics};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Creates the group consumer and subscribes it to every stream's topic.
pub fn consumer(
    cfg: &Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    rebalancer: Option<Arc<Rebalancer>>,
) -> Result<Arc<Consumer>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer as _;
    let mut c = client_config(
        cfg,
        &[
            ("auto.offset.reset", cfg.kafka.auto_offset_reset.clone()),
            ("statistics.interval.ms", "5000".into()),
            // Bound what librdkafka prefetches, so memory stays flat while the sink is down.
            ("queued.max.messages.kbytes", "16384".into()),
            // Latency: do not let an idle fetch sit at the broker for librdkafka's 500 ms.
            ("fetch.wait.max.ms", "50".into()),
            // Live traffic: let the broker gather a quarter of a MiB (or wait those 50 ms)
            // before it answers, instead of answering each fetch with whatever single batch
            // has just arrived; below ≈ 30 k readings/s a broker so answers every 50 ms. On a
            // 2-vCPU test machine at 20 k readings/s this took serve's CPU down by a quarter
            // and the broker's by a sixth to a fifth (docs/PERFORMANCE.md §12). A backlog's
            // fetches are full either way, where max.partition.fetch.bytes × partitions a
            // broker leads reaches 256 KiB (the defaults: 1 MiB a partition).
            ("fetch.min.bytes", "262144".into()),
            // Incremental rebalancing: a member joining or leaving moves only the partitions
            // that change owner; the others keep their devices in memory and keep being
            // scored (librdkafka's default, range+roundrobin, revokes every partition).
            ("partition.assignment.strategy", "cooperative-sticky".into()),
        ],
    );
    // Managed by sensorcast (validation refuses them in kafka.properties).
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            cfg.kafka.commit_interval.get().as_millis().to_string(),
        );
    let consumer: Consumer = c.create_with_context(SourceContext {
        metrics,
        health,
        rebalancer,
    })?;
    let topics: Vec<&str> = cfg.streams.iter().map(|s| s.topic.as_str()).collect();
    consumer.subscribe(&topics)?;
    Ok(Arc::new(consumer))
}

/// Stores the offsets the sink reports for each persisted checkpoint, until the sink is done
/// (its sender dropped). The offsets of a revoke's checkpoints do not come this way: the
/// rebalancer stores them itself before the partitions go.
pub async fn store_persisted(mut persisted: mpsc::Receiver<Offsets>, consumer: Arc<Consumer>) {
    while let Some(offsets) = persisted.recv().await {
        if let Err(e) = store_offsets(&*consumer, &offsets) {
            // After a rebalance the partition may belong to another member, which re-reads
            // from its checkpoint: outputs are rewritten with the same timestamps, tags and
            // values (§3.2, §3.3).
            tracing::debug!(error = %e, "cannot store offsets (partition revoked?)");
        }
    }
}

/// Stores each partition's next offset for the next commit.
pub(crate) fn store_offsets<C>(
    consumer: &C,
    offsets: &Offsets,
) -> Result<(), rdkafka::error::KafkaError>
where
    C: rdkafka::consumer::Consumer<SourceContext> + ?Sized,
{
    let mut tpl = TopicPartitionList::new();
    for (key, next) in offsets.iter() {
        let (topic, partition) = (&key.topic, key.partition);
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next.0)) {
            tracing::warn!(error = %e, topic, partition, "cannot record offset");
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.store_offsets(&tpl)
}
