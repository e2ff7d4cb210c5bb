//! `sensorcast simulate`: the demo's synthetic fleet, produced to Kafka or written to a file,
//! as JSON or line protocol (docs/ARCHITECTURE.md §5), keyed by device, timestamps ending now.

use crate::config::Format;
use crate::decode::Reading;
use crate::synth::{FEATURES, FleetSpec, generate};
use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the readings go.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Kafka topic.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// Topic.
        topic: String,
    },
    /// A file, one message per line.
    File(PathBuf),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateSpec {
    /// Fleet shape, faults and seed.
    pub fleet: FleetSpec,
    /// Payload format.
    pub format: Format,
    /// Line-protocol measurement.
    pub measurement: String,
    /// Destination.
    pub target: Target,
    /// Messages per second to Kafka (0: as fast as possible).
    pub rate: u64,
    /// Device ids start with this instead of `pump-`.
    pub device_prefix: String,
    /// Extra librdkafka producer properties (they win over the defaults).
    pub producer_properties: Vec<(String, String)>,
}

/// One message payload.
pub fn payload(r: &Reading, format: Format, measurement: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    match format {
        Format::Json => {
            let _ = write!(
                out,
                "{{\"device\":{},\"ts\":{},\"values\":{{",
                serde_json::json!(r.device),
                r.ts / 1_000_000
            );
            for (i, (f, v)) in FEATURES.iter().zip(&r.values).enumerate() {
                let _ = write!(out, "{}\"{f}\":{v}", if i > 0 { "," } else { "" });
            }
            out.push_str("}}");
        }
        Format::Line => {
            let _ = write!(
                out,
                "{measurement},device={} ",
                r.device.replace([',', ' ', '='], "_")
            );
            for (i, (f, v)) in FEATURES.iter().zip(&r.values).enumerate() {
                let _ = write!(out, "{}{f}={v}", if i > 0 { "," } else { "" });
            }
            let _ = write!(out, " {}", r.ts);
        }
    }
}

struct Delivery {
    failed: AtomicU64,
    delivered: AtomicU64,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Runs the simulation; returns the number of messages written.
pub fn run(spec: &SimulateSpec) -> anyhow::Result<u64> {
    let mut fleet = generate(&spec.fleet);
    if spec.device_prefix != "pump-" {
        for r in &mut fleet.readings {
            if let Some(n) = r.device.strip_prefix("pump-") {
                r.device = format!("{}{n}", spec.device_prefix);
            }
        }
    }
    let mut buf = String::new();
    match &spec.target {
        Target::File(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("failed to create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            for r in &fleet.readings {
                payload(r, spec.format, &spec.measurement, &mut buf);
                writeln!(w, "{buf}")?;
            }
            w.flush()?;
            Ok(fleet.readings.len() as u64)
        }
        Target::Kafka { brokers, topic } => {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "5")
                // Retries must neither reorder nor duplicate a device's readings.
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "60000");
            for (k, v) in &spec.producer_properties {
                config.set(k, v);
            }
            let producer: ThreadedProducer<Delivery> = config
                .create_with_context(Delivery {
                    failed: AtomicU64::new(0),
                    delivered: AtomicU64::new(0),
                })
                .context("cannot create the Kafka producer")?;
            let started = std::time::Instant::now();
            for (i, r) in fleet.readings.iter().enumerate() {
                if spec.rate > 0 && i % 100 == 0 {
                    // Pace: message i is due at i / rate seconds.
                    let due = Duration::from_secs_f64(i as f64 / spec.rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                payload(r, spec.format, &spec.measurement, &mut buf);
                let mut record = BaseRecord::to(topic)
                    .key(r.device.as_str())
                    .payload(buf.as_str());
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err((e, _)) => return Err(e).context("cannot produce"),
                    }
                }
            }
            producer
                .flush(Duration::from_secs(120))
                .context("cannot flush the producer")?;
            let ctx = producer.context();
            let failed = ctx.failed.load(Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} messages could not be delivered");
            Ok(ctx.delivered.load(Ordering::Relaxed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Schema;

    #[test]
    fn payloads_decode_back() {
        let r = Reading {
            device: "pump-001".into(),
            ts: 1_795_000_000_123_000_000,
            values: vec![1.5, 60.25, 10.0, 4.0],
        };
        let schema = Schema::new(
            FEATURES.iter().map(|s| s.to_string()).collect(),
            "device".into(),
        );
        let mut s = String::new();
        payload(&r, Format::Json, "pump", &mut s);
        assert_eq!(schema.decode_json(None, s.as_bytes()).expect("json"), r);
        payload(&r, Format::Line, "pump", &mut s);
        assert_eq!(schema.decode_line(None, s.as_bytes()).expect("line"), r);
    }
}
