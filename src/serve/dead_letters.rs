//! Dead letters: messages that do not decode, and points InfluxDB refuses for good, produced
//! to `kafka.dead_letter_topic` with the reason (§3.4). Both the source and the sink hand
//! them here; the acknowledgement of each ([`DeadLetterAck`]) travels with the pipeline's
//! batches, so that the checkpoint of a dead letter's partition — and with it the partition's
//! offset — waits until the dead letter is delivered or given up.

use crate::config::Config;
use crate::decode::Rejected;
use crate::kafka::client_config;
use crate::kafka::producer::{Producer, Record};
use crate::telemetry::{Health, Metrics, RateLimit, labels};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use std::sync::Arc;
use std::time::Duration;

/// The dead-letter producer. A dead letter that cannot be delivered within 10 s is given up
/// (counted as `undeliverable`): its partition's progress waits for it until then.
pub fn producer(cfg: &Config) -> Result<Producer, rdkafka::error::KafkaError> {
    Producer::new(&client_config(
        cfg,
        &[("message.timeout.ms", "10000".into())],
    ))
}

/// A dead letter on its way: the partition of the message it stands for, and whether its
/// delivery is settled (delivered, or given up and counted as `undeliverable`). The sink
/// persists that partition's next checkpoint — and so stores its offset — only once it is.
#[derive(Clone, Debug)]
pub struct DeadLetterAck {
    /// Topic of the dead-lettered message.
    pub topic: String,
    /// Its partition; -1: unknown (a point InfluxDB refused), which holds back every one.
    pub partition: i32,
    settled: tokio::sync::watch::Receiver<bool>,
}

impl DeadLetterAck {
    /// Whether it holds back the checkpoint of `partition` of `topic`.
    pub fn holds_back(&self, topic: &str, partition: i32) -> bool {
        self.partition < 0 || (self.partition == partition && self.topic == topic)
    }

    /// Whether the delivery is settled.
    pub fn settled(&self) -> bool {
        *self.settled.borrow()
    }

    /// Resolves once the delivery is settled.
    pub async fn wait(mut self) {
        // An error means the producing task is gone: nothing is left to wait for.
        let _ = self.settled.wait_for(|s| *s).await;
    }
}

/// Produces dead letters and logs them (rate-limited).
///
/// Off the critical path: the source starts producing a dead letter at once (a task of its
/// own) and goes on; the sink writes points without waiting for it, and holds back only the
/// checkpoint — and so the stored offset — of the dead letter's own partition until its
/// delivery is settled, so the offset still advances only once the dead letter is delivered or
/// definitively given up (§3.1, §3.4). A payload over `kafka.dead_letter_max_bytes` (and a key over 1 KiB) goes out
/// truncated, with headers saying so and giving the original size; a broker that still refuses
/// it as too large gets one more try with the first 4 KiB; other failures are librdkafka's to
/// retry within its delivery timeout, after which the dead letter is given up.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Option<(Producer, String)>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    log_limit: Arc<RateLimit>,
    max_bytes: usize,
}

/// What a dead letter carries.
struct Payload {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

/// Longest key a dead letter keeps.
const DEAD_LETTER_MAX_KEY: usize = 1024;
/// What is left of a payload the broker refused as too large even after truncation.
const DEAD_LETTER_LAST_RESORT: usize = 4096;

impl DeadLetters {
    /// With a producer when `kafka.dead_letter_topic` is set.
    pub fn new(
        cfg: &Config,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = if cfg.kafka.dead_letter_topic.is_empty() {
            None
        } else {
            Some((producer(cfg)?, cfg.kafka.dead_letter_topic.clone()))
        };
        Ok(Self {
            producer,
            metrics,
            health,
            log_limit: Arc::new(RateLimit::default()),
            max_bytes: cfg.kafka.dead_letter_max_bytes,
        })
    }

    /// Counts and logs the message and, when a dead-letter topic is configured, starts
    /// producing it there (on the runtime, at once); returns what must settle before its
    /// offset counts as done.
    pub fn send(&self, msg: &impl Message, why: &Rejected) -> Option<DeadLetterAck> {
        self.metrics
            .dead_letters
            .get_or_create(&labels(&[("reason", why.reason)]))
            .inc();
        if let Some(suppressed) = self.log_limit.check(why.reason, Duration::from_secs(10)) {
            tracing::warn!(
                reason = why.reason,
                error = %why.message,
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                suppressed,
                "bad message"
            );
        }
        let (producer, topic) = self.producer.clone()?;
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let payload = msg.payload().map(<[u8]>::to_vec);
        let key = msg
            .key()
            .map(|k| k[..k.len().min(DEAD_LETTER_MAX_KEY)].to_vec());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "sensorcast.reason",
                value: Some(why.reason),
            })
            .insert(Header {
                key: "sensorcast.error",
                value: Some(why.message.as_str()),
            })
            .insert(Header {
                key: "sensorcast.source.topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "sensorcast.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "sensorcast.source.offset",
                value: Some(offset.as_str()),
            });
        if msg.key().is_some_and(|k| k.len() > DEAD_LETTER_MAX_KEY) {
            headers = headers.insert(Header {
                key: "sensorcast.key_truncated",
                value: Some(msg.key().map_or(0, <[u8]>::len).to_string().as_str()),
            });
        }
        if let Some(h) = msg.headers() {
            for i in 0..h.count() {
                let orig = h.get(i);
                headers = headers.insert(Header {
                    key: orig.key,
                    value: orig.value,
                });
            }
        }
        Some(self.spawn(
            (producer, topic),
            Payload {
                key,
                payload,
                headers,
            },
            (msg.topic().to_string(), msg.partition(), msg.offset()),
            why.reason,
        ))
    }

    /// A point InfluxDB refused for good (a single line rejected with 400): counted as
    /// `refused_by_influxdb`, logged, and produced with the status and InfluxDB's answer, the
    /// line as its payload. Its ack holds back every partition's checkpoint (the line's
    /// partition is not known here) until it is settled.
    pub fn send_refused(&self, line: &[u8], status: u16, response: &str) -> Option<DeadLetterAck> {
        const REASON: &str = "refused_by_influxdb";
        self.metrics
            .dead_letters
            .get_or_create(&labels(&[("reason", REASON)]))
            .inc();
        let (producer, topic) = self.producer.clone()?;
        let status = status.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "sensorcast.reason",
                value: Some(REASON),
            })
            .insert(Header {
                key: "sensorcast.error",
                value: Some(response),
            })
            .insert(Header {
                key: "sensorcast.influxdb.status",
                value: Some(status.as_str()),
            });
        Some(self.spawn(
            (producer, topic),
            Payload {
                key: None,
                payload: Some(line.to_vec()),
                headers,
            },
            // No source message: partition -1 holds back every checkpoint.
            (String::new(), -1, -1),
            REASON,
        ))
    }

    /// Produces a dead letter on a task of its own; the ack holds back the checkpoint of the
    /// `source` message's partition (topic, partition, offset; partition -1: every partition).
    fn spawn(
        &self,
        (producer, topic): (Producer, String),
        record: Payload,
        source: (String, i32, i64),
        reason: &'static str,
    ) -> DeadLetterAck {
        let (metrics, log_limit) = (Arc::clone(&self.metrics), Arc::clone(&self.log_limit));
        let health = Arc::clone(&self.health);
        let (src_topic, src_partition, src_offset) = source;
        let Payload {
            key,
            payload,
            headers,
        } = record;
        let size = payload.as_ref().map_or(0, Vec::len);
        let max_bytes = self.max_bytes;
        let (settle, settled) = tokio::sync::watch::channel(false);
        let ack = DeadLetterAck {
            topic: src_topic.clone(),
            partition: src_partition,
            settled,
        };
        let produce = async move {
            let mut limit = max_bytes;
            loop {
                let mut h = headers.clone();
                if size > limit {
                    let original = size.to_string();
                    h = h
                        .insert(Header {
                            key: "sensorcast.truncated",
                            value: Some("true"),
                        })
                        .insert(Header {
                            key: "sensorcast.original_size",
                            value: Some(original.as_str()),
                        });
                }
                let record = Record {
                    topic: &topic,
                    key: key.as_deref(),
                    payload: payload.as_ref().map(|p| &p[..p.len().min(limit)]),
                    headers: Some(h),
                    ..Record::default()
                };
                let err = match producer.send(&record, Duration::from_secs(5)).await {
                    Ok(_) => return,
                    Err(e) => e,
                };
                let too_large = matches!(
                    err,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                    )
                );
                if too_large && limit > DEAD_LETTER_LAST_RESORT {
                    // Permanent for this size: retrying the same bytes cannot help.
                    limit = DEAD_LETTER_LAST_RESORT;
                    continue;
                }
                metrics
                    .dead_letters
                    .get_or_create(&labels(&[("reason", "undeliverable")]))
                    .inc();
                if let Some(suppressed) = log_limit.check("undeliverable", Duration::from_secs(10))
                {
                    tracing::error!(
                        topic = %src_topic,
                        partition = src_partition,
                        offset = src_offset,
                        reason,
                        error = %err,
                        suppressed,
                        "dead letter could not be produced; given up"
                    );
                    health.warn(format!(
                        "dead letters cannot be produced to {topic} ({err}); they are counted as undeliverable and given up"
                    ));
                }
                return;
            }
        };
        tokio::spawn(async move {
            produce.await;
            let _ = settle.send(true);
        });
        ack
    }
}
