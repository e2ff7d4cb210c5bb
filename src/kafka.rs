//! Kafka clients outside the consumer group: the client configuration every client starts
//! from (our defaults, then `kafka.properties`), topic creation and deletion through the admin
//! API (dead-letter and changelog topics), `check-config --probe`, and the producer the
//! dead letters and the changelog store use ([`producer`]).

use crate::config::Config;
use crate::telemetry::Health;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use std::time::Duration;

pub mod producer;

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
pub async fn ensure_changelog_topics(cfg: &Config) -> Result<(), AdminError> {
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
                return Err(AdminError::Changelog {
                    topic,
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(())
}

/// Why a topic could not be created or deleted.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// librdkafka refused the admin client's configuration.
    #[error("cannot create a Kafka admin client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// The request failed (no broker answered in time, or it was refused).
    #[error("{0}")]
    Request(#[source] rdkafka::error::KafkaError),
    /// The broker refused the topic.
    #[error("{0}")]
    Refused(rdkafka::types::RDKafkaErrorCode),
    /// The broker's answer named no topic.
    #[error("the broker did not answer")]
    NoAnswer,
    /// A stream's changelog topic is missing and cannot be created.
    #[error(
        "changelog topic {topic} (state.changelog_topic) does not exist and cannot be created: {source}"
    )]
    Changelog {
        /// The topic.
        topic: String,
        /// Why.
        source: Box<AdminError>,
    },
}

fn admin(
    cfg: &Config,
) -> Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>, AdminError> {
    let mut c = client_config(cfg, &[]);
    // Asking for a missing topic's metadata from a producer-type client (an admin client is
    // one) makes a broker with auto.create.topics.enable (Apache Kafka's default) create it,
    // with the broker's default partition count and no compaction: the changelog topic would
    // then be a plain topic of one partition, whose checkpoints retention deletes.
    c.set("allow.auto.create.topics", "false");
    c.create().map_err(AdminError::Client)
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
            .map_err(AdminError::Request),
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
) -> Result<bool, AdminError> {
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
            Some(Err((_, e))) => Err(AdminError::Refused(e)),
            None => Err(AdminError::NoAnswer),
        },
        Err(e) => Err(AdminError::Request(e)),
    }
}
