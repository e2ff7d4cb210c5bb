//! History to train on, read back from InfluxDB with InfluxQL (`train --source influxdb`).
//!
//! InfluxQL over `/query` is what InfluxDB 1.x, 2.x (its v1-compatible endpoint, with a DBRP
//! mapping) and 3.x all answer, so one reader serves all three. The window is read in pages of
//! `train.history_page` (one query each, grouped by device), so no single response grows with
//! the window. Rows missing a feature are skipped and counted, like bad lines of a file.

use crate::config::{Config, StreamConfig};
use crate::decode::Reading;
use crate::time::format_ts;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// What was read.
#[derive(Debug, Default)]
pub struct History {
    /// Readings, grouped by device, each device's in increasing time order.
    pub readings: Vec<Reading>,
    /// Rows skipped, with why (the first few).
    pub skipped: Vec<String>,
    /// Rows skipped in all.
    pub skipped_total: usize,
    /// Where they came from, for the model's metadata.
    pub source: String,
}

impl History {
    /// Appends the readings of `by_device`, device by device in name order, each device's in
    /// time order with all but the first reading of a time dropped.
    fn extend_by_device(&mut self, by_device: BTreeMap<String, Vec<Reading>>) {
        for (_, mut rs) in by_device {
            rs.sort_by_key(|r| r.ts);
            rs.dedup_by_key(|r| r.ts);
            self.readings.extend(rs);
        }
    }
}

/// `"` and `\` escaped for an InfluxQL double-quoted identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `'` and `\` escaped for an InfluxQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The InfluxQL statement for one page `[from, to)` (ns).
pub fn page_query(cfg: &Config, stream: &StreamConfig, from: i64, to: i64) -> String {
    let t = &cfg.train;
    let fields: Vec<String> = stream.features.iter().map(|f| ident(f)).collect();
    let mut q = format!(
        "SELECT {} FROM {} WHERE time >= {from} AND time < {to}",
        fields.join(", "),
        ident(&t.history_measurement)
    );
    if !t.history_stream_tag.is_empty() {
        q.push_str(&format!(
            " AND {} = {}",
            ident(&t.history_stream_tag),
            literal(&stream.name)
        ));
    }
    q.push_str(&format!(" GROUP BY {}", ident(&t.history_device_tag)));
    q
}

/// Asks the InfluxDB of `cfg.influxdb` one InfluxQL statement over `/query` (times in ns);
/// returns its answer, whose `results[0]` holds no error.
pub async fn query(cfg: &Config, q: &str) -> anyhow::Result<serde_json::Value> {
    use anyhow::{Context, bail};
    let target = crate::influx::Target::new(&cfg.influxdb)?;
    let shown = crate::config::redact_url(&cfg.influxdb.url);
    // The base URL without credentials (they are in the Authorization header), at /query.
    let mut url = target.base.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("influxdb.url {shown:?} cannot be a base"))?
        .pop_if_empty()
        .pop_if_empty()
        .push("query");
    let mut form = vec![
        ("db", cfg.influxdb.v1_database().to_string()),
        ("epoch", "ns".into()),
        ("q", q.to_string()),
    ];
    if !cfg.influxdb.retention_policy.is_empty() {
        form.push(("rp", cfg.influxdb.retention_policy.clone()));
    }
    let mut req = target.client.post(url).form(&form);
    if let Some(auth) = &target.auth {
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach InfluxDB at {shown}: {}", e.without_url()))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if status != 200 {
        let short: String = body.chars().take(300).collect();
        // Credentials and missing databases read the same as for writes; any other answer
        // (a 404 here is a wrong URL path: /query is the same for every API) is quoted.
        let database_missing = short.to_ascii_lowercase().contains("database not found");
        if matches!(status, 401 | 403) || database_missing {
            bail!("{}", crate::influx::refusal(&cfg.influxdb, status, &short));
        }
        bail!(
            "InfluxDB at {shown} answered {status} to the query {q}: {} (is influxdb.url the server's base URL?)",
            short.trim()
        );
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("InfluxDB's answer to {q} is not JSON"))?;
    if let Some(e) = v["results"][0]["error"].as_str() {
        bail!("InfluxDB refused {q}: {e}");
    }
    Ok(v)
}

/// An alarm's `anomaly_event` point as InfluxDB holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmPoint {
    /// Still raised.
    pub active: bool,
    /// Its last reading, once cleared (ns).
    pub end: Option<i64>,
}

/// The alarm of kind `kind` of `stream`'s `device` that started at `at` (ns), if InfluxDB
/// holds its point.
pub async fn alarm(
    cfg: &Config,
    stream: &str,
    device: &str,
    kind: &str,
    at: i64,
) -> anyhow::Result<Option<AlarmPoint>> {
    let q = format!(
        "SELECT \"active\", \"end\" FROM \"anomaly_event\" WHERE \"stream\" = {} AND \"device\" = {} AND \"kind\" = {} AND time = {at}",
        literal(stream),
        literal(device),
        literal(kind)
    );
    let v = query(cfg, &q).await?;
    let row = &v["results"][0]["series"][0]["values"][0];
    if row.is_null() {
        return Ok(None);
    }
    Ok(Some(AlarmPoint {
        active: row[1].as_bool().unwrap_or(false),
        end: row[2].as_i64(),
    }))
}

/// Reads `stream`'s readings between `from` and `to` (ns since the epoch) from `source`:
/// InfluxDB ([`from_influxdb`], on a runtime of its own) or the stream's topic
/// ([`from_kafka`]).
pub fn read(
    cfg: &Config,
    stream: &StreamConfig,
    source: crate::config::HistorySource,
    from: i64,
    to: i64,
) -> anyhow::Result<History> {
    match source {
        crate::config::HistorySource::Influxdb => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(from_influxdb(cfg, stream, from, to)),
        crate::config::HistorySource::Kafka => from_kafka(cfg, stream, from, to),
    }
}

/// Reads `stream`'s readings between `from` and `to` (ns since the epoch) from the InfluxDB of
/// `cfg.influxdb`.
pub async fn from_influxdb(
    cfg: &Config,
    stream: &StreamConfig,
    from: i64,
    to: i64,
) -> anyhow::Result<History> {
    let db = cfg.influxdb.v1_database().to_string();
    let page = cfg.train.history_page.as_nanos().max(1);
    let mut by_device: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
    let mut history = History {
        source: format!(
            "influxdb {} db={db} measurement={} {}..{}",
            crate::config::redact_url(&cfg.influxdb.url),
            cfg.train.history_measurement,
            format_ts(from),
            format_ts(to)
        ),
        ..History::default()
    };
    let mut start = from;
    while start < to {
        let end = start.saturating_add(page).min(to);
        let q = page_query(cfg, stream, start, end);
        let v = query(cfg, &q).await?;
        let result = &v["results"][0];
        for series in result["series"].as_array().into_iter().flatten() {
            let device = series["tags"][&cfg.train.history_device_tag]
                .as_str()
                .unwrap_or("")
                .to_string();
            let columns: Vec<&str> = series["columns"]
                .as_array()
                .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            // Column of each feature (InfluxDB answers in the order asked, but say so).
            let idx: Vec<Option<usize>> = stream
                .features
                .iter()
                .map(|f| columns.iter().position(|c| c == f))
                .collect();
            for row in series["values"].as_array().into_iter().flatten() {
                let Some(ts) = row[0].as_i64() else { continue };
                let mut values = Vec::with_capacity(idx.len());
                let mut missing = None;
                for (f, i) in stream.features.iter().zip(&idx) {
                    match i.and_then(|i| row[i].as_f64()).filter(|x| x.is_finite()) {
                        Some(x) => values.push(x as f32),
                        None => {
                            missing = Some(f);
                            break;
                        }
                    }
                }
                if device.is_empty() || missing.is_some() {
                    history.skipped_total += 1;
                    if history.skipped.len() < 20 {
                        history.skipped.push(if device.is_empty() {
                            format!(
                                "row at {} has no {:?} tag",
                                format_ts(ts),
                                cfg.train.history_device_tag
                            )
                        } else {
                            format!(
                                "device {device:?} at {}: feature {:?} missing or not a number",
                                format_ts(ts),
                                missing.map(String::as_str).unwrap_or("")
                            )
                        });
                    }
                    continue;
                }
                by_device.entry(device.clone()).or_default().push(Reading {
                    device: device.clone(),
                    ts,
                    values,
                });
            }
        }
        start = end;
    }
    history.extend_by_device(by_device);
    Ok(history)
}

/// Reads `stream`'s readings between `from` and `to` (ns since the epoch) from its Kafka topic:
/// each partition from the offset of its first message at or after `from` (Kafka's offsets for
/// times, on message timestamps) until a message stamped at or after `to` or the end of the
/// partition, decoded exactly as `serve` decodes. The window is on the messages' Kafka
/// timestamps (what offsets for times index), not on the readings' own times; messages that
/// do not decode are skipped and counted.
pub fn from_kafka(
    cfg: &Config,
    stream: &StreamConfig,
    from: i64,
    to: i64,
) -> anyhow::Result<History> {
    let timeout = Duration::from_secs(30);
    let consumer = history_consumer(cfg)?;
    let topic = stream.topic.as_str();
    let (assign, open) = start_offsets(&consumer, topic, from, timeout)?;
    let decoder = crate::decode::Decoder::new(
        std::slice::from_ref(stream),
        cfg.kafka.max_payload_bytes,
        i64::MAX,
    );
    let mut history = History {
        source: format!(
            "kafka {} topic={topic} {}..{}",
            cfg.kafka.brokers,
            format_ts(from),
            format_ts(to)
        ),
        ..History::default()
    };
    if !open.is_empty() {
        consumer.assign(&assign)?;
    }
    let partitions = Partitions {
        consumer: &consumer,
        topic,
        timeout,
    };
    let by_device = partitions.read(&decoder, open, to.div_euclid(1_000_000), &mut history)?;
    history.extend_by_device(by_device);
    Ok(history)
}

/// A Kafka consumer for reading history: its own group (`<kafka.group_id>.history`), no
/// offsets committed or stored, and an end-of-partition event at each partition's end.
fn history_consumer(cfg: &Config) -> anyhow::Result<BaseConsumer> {
    use anyhow::Context;
    crate::kafka::client_config(
        cfg,
        &[
            ("group.id", format!("{}.history", cfg.kafka.group_id)),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "true".into()),
            ("auto.offset.reset", "earliest".into()),
        ],
    )
    .create()
    .context("cannot create a Kafka consumer")
}

/// Where to start reading each partition of `topic`: the offset of its first message stamped
/// at or after `from` (ns), for the partitions that have one. Returns the assignment and the
/// partitions in it.
fn start_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    from: i64,
    timeout: Duration,
) -> anyhow::Result<(TopicPartitionList, HashSet<i32>)> {
    use anyhow::Context;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of topic {topic:?}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic:?} does not exist");
    let mut query = TopicPartitionList::new();
    for &p in &partitions {
        query.add_partition_offset(topic, p, Offset::Offset(from.div_euclid(1_000_000)))?;
    }
    let starts = consumer
        .offsets_for_times(query, timeout)
        .with_context(|| format!("the brokers cannot tell the offsets of {topic:?} for a time"))?;
    let mut assign = TopicPartitionList::new();
    let mut open = HashSet::new();
    for e in starts.elements() {
        if let Offset::Offset(o) = e.offset() {
            let (_, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
            if o < high {
                assign.add_partition_offset(topic, e.partition(), Offset::Offset(o))?;
                open.insert(e.partition());
            }
        }
    }
    Ok((assign, open))
}

/// The assigned partitions of a topic, read by a history consumer.
struct Partitions<'a> {
    consumer: &'a BaseConsumer,
    topic: &'a str,
    /// How long reading may make no progress.
    timeout: Duration,
}

impl Partitions<'_> {
    /// Reads until none of the `open` partitions is left: a partition closes at its end or at
    /// its first message stamped at or after `to_ms` (ms). Returns the readings decoded, by
    /// device; messages that do not decode are counted (the first few described) in
    /// `history`'s skipped ones.
    fn read(
        &self,
        decoder: &crate::decode::Decoder,
        mut open: HashSet<i32>,
        to_ms: i64,
        history: &mut History,
    ) -> anyhow::Result<BTreeMap<String, Vec<Reading>>> {
        let (topic, timeout) = (self.topic, self.timeout);
        let mut by_device: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
        let mut last_progress = Instant::now();
        while !open.is_empty() {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let p = m.partition();
                    if !open.contains(&p) {
                        continue;
                    }
                    if m.timestamp().to_millis().is_some_and(|t| t >= to_ms) {
                        open.remove(&p);
                        continue;
                    }
                    match decoder.decode(topic, m.key(), m.payload()) {
                        Ok(d) => {
                            for r in d.readings {
                                by_device.entry(r.device.clone()).or_default().push(r);
                            }
                        }
                        Err(e) => {
                            history.skipped_total += 1;
                            if history.skipped.len() < 20 {
                                history.skipped.push(format!(
                                    "{topic}/{p}@{}: {} ({})",
                                    m.offset(),
                                    e.message,
                                    e.reason
                                ));
                            }
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) if last_progress.elapsed() > timeout => {
                    anyhow::bail!("reading {topic:?}: {e}");
                }
                Some(Err(_)) => {}
                None if last_progress.elapsed() > timeout => {
                    anyhow::bail!(
                        "reading {topic:?} made no progress for {} s",
                        timeout.as_secs()
                    );
                }
                None => {}
            }
        }
        Ok(by_device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_quote_names_and_filter_the_stream() {
        let mut cfg = Config::default();
        let stream = StreamConfig {
            name: "o'brien".into(),
            features: vec!["temp \"c\"".into(), "flow".into()],
            ..StreamConfig::default()
        };
        assert_eq!(
            page_query(&cfg, &stream, 10, 20),
            r#"SELECT "temp \"c\"", "flow" FROM "reading" WHERE time >= 10 AND time < 20 AND "stream" = 'o\'brien' GROUP BY "device""#
        );
        cfg.train.history_stream_tag.clear();
        cfg.train.history_measurement = "pump".into();
        cfg.train.history_device_tag = "host".into();
        assert_eq!(
            page_query(&cfg, &stream, 0, 5),
            r#"SELECT "temp \"c\"", "flow" FROM "pump" WHERE time >= 0 AND time < 5 GROUP BY "host""#
        );
    }
}
