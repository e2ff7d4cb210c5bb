//! Kafka source: the consumer group, rebalances with device state, message decoding per
//! stream, dead letters.
//!
//! Keeps invariant §3.1 on the input side: offsets are never stored here; the consumer runs
//! with `enable.auto.offset.store=false` and the sink stores an offset only once everything
//! derived from it and from earlier messages of its partition is written. Keeps §3.4: a
//! message that does not decode is counted, logged (rate-limited) and produced to the
//! dead-letter topic with the reason, and its offset then counts as done — it never stalls
//! its partition.
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

use crate::config::{Config, Format, StreamConfig};
use crate::decode::{DecodeError, Reading, Schema};
use crate::telemetry::{Health, Metrics, RateLimit, labels};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Client config: our defaults, then the user's pass-through properties (which win).
pub fn client_config(cfg: &Config, defaults: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

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

/// The dead-letter producer. A dead letter that cannot be delivered within 10 s is given up
/// (counted as `undeliverable`): its partition's progress waits for it until then.
pub fn producer(cfg: &Config) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    client_config(cfg, &[("message.timeout.ms", "10000".into())]).create()
}

/// Makes sure the dead-letter topic exists (creating it with one partition and the broker's
/// default replication when it does not), so that a missing topic does not hold every dead
/// letter — and its partition's progress — until delivery gives up. A failure is logged, not
/// fatal: dead letters are then counted and given up.
pub async fn ensure_dead_letter_topic(cfg: &Config, health: &Health) {
    let topic = &cfg.kafka.dead_letter_topic;
    if topic.is_empty() {
        return;
    }
    match create_topic(cfg, topic, 1, &[]).await {
        Ok(true) => tracing::info!(topic, "dead-letter topic created"),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(topic, error = %e, "kafka.dead_letter_topic does not exist and cannot be created; dead letters will be counted and given up");
            health.warn(format!(
                "kafka.dead_letter_topic {topic} does not exist and cannot be created ({e}): dead letters will be given up"
            ));
        }
    }
}

/// Creates each stream's changelog topic (`state.store = "kafka"`) if it is missing:
/// compacted, with as many partitions as the stream's topic (one if that does not exist yet;
/// input partitions then share changelog partitions).
pub async fn ensure_changelog_topics(cfg: &Config) -> Result<(), String> {
    for s in &cfg.streams {
        let topic = crate::config::changelog_topic(
            &cfg.state.changelog_topic,
            &cfg.kafka.group_id,
            &s.name,
        );
        let partitions = topic_partitions(cfg, &s.topic).unwrap_or(1);
        match create_topic(cfg, &topic, partitions, &[("cleanup.policy", "compact")]).await {
            Ok(true) => tracing::info!(topic, partitions, "changelog topic created"),
            Ok(false) => tracing::debug!(topic, "changelog topic exists"),
            Err(e) => {
                return Err(format!(
                    "changelog topic {topic} (state.changelog_topic) does not exist and cannot be created: {e}"
                ));
            }
        }
    }
    Ok(())
}

fn admin(
    cfg: &Config,
) -> Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>, String> {
    let mut c = client_config(cfg, &[]);
    // Asking for a missing topic's metadata from a producer-type client (an admin client is
    // one) makes a broker with auto.create.topics.enable (Apache Kafka's default) create it,
    // with the broker's default partition count and no compaction: the changelog topic would
    // then be a plain topic of one partition, whose checkpoints retention deletes.
    c.set("allow.auto.create.topics", "false");
    c.create()
        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))
}

/// A client context that keeps librdkafka's last error (the probe reports why it got no
/// answer: a failed TLS handshake, refused SASL credentials, a name that does not resolve).
#[derive(Default)]
struct ProbeContext {
    last_error: std::sync::Mutex<Option<String>>,
}

impl ProbeContext {
    /// Keeps the first specific reason ("… brokers are down" only says that it failed).
    fn note(&self, reason: &str) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        let generic = reason.contains("brokers are down");
        if last.is_none()
            || (!generic
                && last
                    .as_deref()
                    .is_some_and(|l| l.contains("brokers are down")))
        {
            *last = Some(reason.to_string());
        }
    }
}

impl rdkafka::producer::ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error");
        self.note(reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // Connection failures (TLS, SASL, resolution) are logged by librdkafka's broker
        // threads; an admin client that only fetches metadata never sees them as errors.
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            tracing::debug!(fac, message, "librdkafka");
            self.note(message);
        }
    }
}

/// Partitions of a topic, if it exists.
fn topic_partitions(cfg: &Config, topic: &str) -> Option<i32> {
    let md = admin(cfg)
        .ok()?
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
}

/// `check-config --probe`: the brokers answer, and each stream's topic exists (with how
/// many partitions). One line per check, starting with `ok` or `FAIL`.
pub fn probe(cfg: &Config) -> Vec<String> {
    // A producer, not an admin client: polling it serves librdkafka's error events, which
    // say why the brokers did not answer.
    let client: rdkafka::producer::BaseProducer<ProbeContext> =
        match client_config(cfg, &[]).create_with_context(ProbeContext::default()) {
            Ok(a) => a,
            Err(e) => return vec![format!("FAIL  kafka: cannot create a Kafka client: {e}")],
        };
    let md = match rdkafka::producer::Producer::client(&client)
        .fetch_metadata(None, Duration::from_secs(10))
    {
        Ok(m) => m,
        Err(e) => {
            client.poll(Duration::from_millis(100));
            let why = rdkafka::producer::Producer::context(&client)
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|r| format!(" (last error: {r})"))
                .unwrap_or_default();
            return vec![format!(
                "FAIL  kafka: no answer from {} within 10 s: {e}{why}",
                cfg.kafka.brokers
            )];
        }
    };
    let mut out = vec![format!(
        "ok    kafka: {} broker(s) answer at {}",
        md.brokers().len(),
        cfg.kafka.brokers
    )];
    for s in &cfg.streams {
        match md.topics().iter().find(|t| t.name() == s.topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => out.push(format!(
                "ok    kafka: stream {:?} reads topic {:?} ({} partitions)",
                s.name,
                s.topic,
                t.partitions().len()
            )),
            _ => out.push(format!(
                "FAIL  kafka: stream {:?}: topic {:?} does not exist (create it, or fix streams.topic)",
                s.name, s.topic
            )),
        }
    }
    out
}

/// Deletes a topic (the state bench's); failures are logged.
pub async fn delete_topic(cfg: &Config, topic: &str) {
    let opts = rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = match admin(cfg) {
        Ok(a) => a
            .delete_topics(&[topic], &opts)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(topic, error = %e, "cannot delete the topic");
    }
}

/// Creates `topic` unless it exists; true if it was created.
pub async fn create_topic(
    cfg: &Config,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<bool, String> {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    if topic_partitions(cfg, topic).is_some() {
        return Ok(false);
    }
    let admin = admin(cfg)?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (k, v) in config {
        new = new.set(k, v);
    }
    // A broker that never answers CreateTopics (librdkafka's mock cluster does not implement
    // it) must not hold the start-up for librdkafka's 60 s socket timeout.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics([&new], &opts).await {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) => Ok(true),
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
            Some(Err((_, e))) => Err(e.to_string()),
            None => Err("the broker did not answer".into()),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// Stream lookup by topic and decoding of one message.
pub struct Decoder {
    by_topic: HashMap<String, usize>,
    schemas: Vec<Schema>,
    formats: Vec<Format>,
    max_payload: usize,
    max_future_ns: i64,
}

/// A decoded message.
pub struct Decoded {
    /// Stream index.
    pub stream: usize,
    /// Its readings (one for JSON; one per line for line protocol).
    pub readings: Vec<Reading>,
}

/// Why a message is a dead letter.
#[derive(Debug)]
pub struct Rejected {
    /// Metric label.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

impl Decoder {
    /// For the configured streams; readings stamped more than `max_future_ns` ahead of the
    /// wall clock are refused (`future_timestamp`).
    pub fn new(streams: &[StreamConfig], max_payload: usize, max_future_ns: i64) -> Self {
        Self {
            by_topic: streams
                .iter()
                .enumerate()
                .map(|(i, s)| (s.topic.clone(), i))
                .collect(),
            schemas: streams.iter().map(Schema::from_stream).collect(),
            formats: streams.iter().map(|s| s.format).collect(),
            max_payload,
            max_future_ns,
        }
    }

    /// Decodes a message (`key` is the device id unless the payload names one).
    pub fn decode(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Decoded, Rejected> {
        let reject = |e: DecodeError| Rejected {
            reason: e.reason(),
            message: e.to_string(),
        };
        let stream = *self.by_topic.get(topic).ok_or_else(|| Rejected {
            reason: "unknown_stream",
            message: format!("no stream is configured for topic {topic:?}"),
        })?;
        let payload = payload.unwrap_or_default();
        if payload.len() > self.max_payload {
            return Err(reject(DecodeError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            }));
        }
        let key = match key {
            Some(k) => Some(std::str::from_utf8(k).map_err(|_| Rejected {
                reason: "invalid_key",
                message: "message key is not UTF-8".into(),
            })?),
            None => None,
        };
        let schema = &self.schemas[stream];
        let readings = match self.formats[stream] {
            Format::Json => vec![schema.decode_json(key, payload).map_err(reject)?],
            Format::Line => {
                let mut out = Vec::new();
                for line in payload.split(|b| *b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    out.push(schema.decode_line(key, line).map_err(reject)?);
                }
                if out.is_empty() {
                    return Err(Rejected {
                        reason: "invalid_line_protocol",
                        message: "empty message".into(),
                    });
                }
                out
            }
        };
        // A reading from the future would make every later reading of its device stale
        // until the clock caught up: refuse it here.
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let limit = now.saturating_add(self.max_future_ns);
        if let Some(r) = readings.iter().find(|r| r.ts > limit) {
            return Err(reject(DecodeError::FutureTimestamp {
                ts: crate::time::format_ts(r.ts),
                ahead_s: (r.ts - now) as f64 / 1e9,
                allowed_s: self.max_future_ns as f64 / 1e9,
            }));
        }
        Ok(Decoded { stream, readings })
    }
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
    producer: Option<(FutureProducer, String)>,
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
    pub fn send(&self, msg: &OwnedMessage, why: &Rejected) -> Option<DeadLetterAck> {
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
        (producer, topic): (FutureProducer, String),
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
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(h);
                if let Some(k) = &key {
                    record = record.key(k.as_slice());
                }
                if let Some(p) = &payload {
                    record = record.payload(&p[..p.len().min(limit)]);
                }
                let err = match producer.send(record, Duration::from_secs(5)).await {
                    Ok(_) => return,
                    Err((e, _)) => e,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_routes_by_topic_and_rejects_with_reasons() {
        let streams = vec![
            StreamConfig {
                name: "a".into(),
                topic: "t.a".into(),
                format: Format::Json,
                features: vec!["x".into()],
                ..StreamConfig::default()
            },
            StreamConfig {
                name: "b".into(),
                topic: "t.b".into(),
                format: Format::Line,
                features: vec!["x".into()],
                ..StreamConfig::default()
            },
        ];
        let d = Decoder::new(&streams, 200, 300_000_000_000);
        let ok = d
            .decode(
                "t.a",
                Some(b"dev-1"),
                Some(br#"{"ts":1795000000000,"values":{"x":1.5}}"#),
            )
            .expect("json");
        assert_eq!((ok.stream, ok.readings[0].device.as_str()), (0, "dev-1"));
        let ok = d
            .decode(
                "t.b",
                None,
                Some(b"m,device=d1 x=1 1795000000000000000\nm,device=d1 x=2 1795000001000000000\n"),
            )
            .expect("lines");
        assert_eq!((ok.stream, ok.readings.len()), (1, 2));
        for (topic, payload, reason) in [
            ("t.c", &b"{}"[..], "unknown_stream"),
            ("t.a", &[b'x'; 300][..], "too_large"),
            ("t.a", &b"{"[..], "invalid_json"),
            (
                "t.b",
                &b"m,device=d x=1 1795000000000000000\nbroken"[..],
                "invalid_line_protocol",
            ),
            ("t.b", &b"\n"[..], "invalid_line_protocol"),
            (
                "t.b",
                &b"m,device=d x=1 4102444800000000000"[..],
                "future_timestamp",
            ),
        ] {
            let err = d.decode(topic, None, Some(payload)).err().expect(reason);
            assert_eq!(err.reason, reason, "{}", err.message);
        }
        assert_eq!(
            d.decode("t.a", Some(&[0xff, 0xfe]), Some(b"{}"))
                .err()
                .expect("key")
                .reason,
            "invalid_key"
        );
    }
}
