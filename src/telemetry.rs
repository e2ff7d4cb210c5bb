//! Telemetry: Prometheus metrics, health state, logging set-up and the HTTP endpoint
//! (`/metrics`, `/health/live`, `/health/ready`).
//!
//! Readiness is the conjunction the operators need before routing traffic or paging:
//! partitions assigned, every stream's model loaded, the sink reachable (the last write
//! attempt did not fail with an authentication or bucket error), and checkpoints being written
//! (the last one did not fail: without them offsets stop advancing).

use crate::config::{Config, LogFormat};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Label set: pairs of label name and value.
pub type Labels = Vec<(String, String)>;

/// One pair of labels.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Readings decoded, by stream.
    pub readings_in: Family<Labels, Counter>,
    /// Readings not stepped because their timestamp was not after the device's last one.
    pub readings_stale: Family<Labels, Counter>,
    /// Points acknowledged by InfluxDB.
    pub points_written: Counter,
    /// Messages that could not be decoded, by reason.
    pub dead_letters: Family<Labels, Counter>,
    /// Write attempts that failed and were retried, by cause.
    pub sink_retries: Family<Labels, Counter>,
    /// Points InfluxDB rejected for good and that were dropped: single lines refused with 400,
    /// and the counts 422 partial writes reported.
    pub sink_rejected_points: Counter,
    /// Write requests InfluxDB accepted only in part (422), by whether it said how many points
    /// it rejected (`count="reported"`) or not (`count="unknown"`).
    pub sink_partial_writes: Family<Labels, Counter>,
    /// Duration of successful write requests.
    pub sink_latency: Histogram,
    /// Readings per engine micro-batch.
    pub batch_size: Histogram,
    /// Seconds from a message's Kafka timestamp to its outputs being acknowledged
    /// ([`latency_buckets`]: 10 ms wide up to 1 s), observed a write request's messages at a
    /// time.
    pub end_to_end_latency: BatchHistogram,
    /// Consumer lag per partition, from librdkafka statistics.
    pub consumer_lag: Family<Labels, Gauge>,
    /// Devices tracked, by stream.
    pub devices: Family<Labels, Gauge>,
    /// Alarms raised, by stream.
    pub alarms_raised: Family<Labels, Counter>,
    /// Alarms raised and not yet cleared, by stream.
    pub alarms_active: Family<Labels, Gauge>,
    /// Stuck-sensor alarms raised, by stream.
    pub stuck_raised: Family<Labels, Counter>,
    /// Devices with a stuck-sensor alarm raised now, by stream.
    pub stuck_active: Family<Labels, Gauge>,
    /// Silent-device alarms raised, by stream.
    pub silent_raised: Family<Labels, Counter>,
    /// Devices with a silent-device alarm raised now, by stream.
    pub silent_active: Family<Labels, Gauge>,
    /// 1 for the model version in use, by stream and version.
    pub model_version: Family<Labels, Gauge>,
    /// 1 while consumption is paused for backpressure.
    pub paused: Gauge,
    /// Partition checkpoints persisted, by stream.
    pub checkpoints_written: Family<Labels, Counter>,
    /// Bytes of checkpoints persisted, by stream.
    pub checkpoint_bytes: Family<Labels, Counter>,
    /// Checkpoints that could not be written.
    pub checkpoint_failures: Counter,
    /// Time to persist one set of checkpoints.
    pub checkpoint_seconds: Histogram,
    /// Checkpoints passed over on restore, by reason.
    pub checkpoints_skipped: Family<Labels, Counter>,
    /// Devices restored from checkpoints, by stream.
    pub devices_restored: Family<Labels, Counter>,
    /// Partitions assigned to this instance, by topic, partition and how their devices
    /// started (`checkpoint` or `cold`). Under cooperative rebalancing a partition that stays
    /// is not assigned again, so this shows which partitions moved.
    pub partitions_assigned: Family<Labels, Counter>,
    /// Partitions revoked from this instance (checkpointed and forgotten), by topic and
    /// partition.
    pub partitions_revoked: Family<Labels, Counter>,
    /// Feature values clamped to ±engine.max_abs_z, by stream.
    pub readings_clamped: Family<Labels, Counter>,
    /// Devices reset because a reading would have made their state non-finite, by stream.
    pub devices_reset: Family<Labels, Counter>,
    /// Readings of new devices not scored because the device table was full, by stream.
    pub readings_refused: Family<Labels, Counter>,
    /// Devices parked on disk after `engine.device_ttl` without a reading, by stream.
    pub devices_parked: Family<Labels, Gauge>,
    /// Model swaps started, by stream.
    pub model_swaps: Family<Labels, Counter>,
    /// New models refused (they stay unused; the model in use keeps serving), by stream and
    /// reason (load, schema, weights).
    pub models_rejected: Family<Labels, Counter>,
    /// Devices still written by the previous model while a swap re-warms them, by stream.
    pub swap_pending: Family<Labels, Gauge>,
    /// Devices that switched at `model.swap_timeout` without `model.swap_warmup` readings
    /// in the new model, by stream.
    pub swap_unwarmed: Family<Labels, Counter>,
    /// Retrains run inside `serve` (`retrain.every`), by stream and outcome (published,
    /// kept, failed).
    pub retrains: Family<Labels, Counter>,
    /// 1 while a retrain runs inside `serve`.
    pub retrain_running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sensorcast");
        let m = Self {
            readings_in: Family::default(),
            readings_stale: Family::default(),
            points_written: Counter::default(),
            dead_letters: Family::default(),
            sink_retries: Family::default(),
            sink_rejected_points: Counter::default(),
            sink_partial_writes: Family::default(),
            sink_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            end_to_end_latency: BatchHistogram::new(latency_buckets()),
            consumer_lag: Family::default(),
            devices: Family::default(),
            alarms_raised: Family::default(),
            alarms_active: Family::default(),
            stuck_raised: Family::default(),
            stuck_active: Family::default(),
            silent_raised: Family::default(),
            silent_active: Family::default(),
            model_version: Family::default(),
            paused: Gauge::default(),
            checkpoints_written: Family::default(),
            checkpoint_bytes: Family::default(),
            checkpoint_failures: Counter::default(),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            checkpoints_skipped: Family::default(),
            devices_restored: Family::default(),
            partitions_assigned: Family::default(),
            partitions_revoked: Family::default(),
            readings_clamped: Family::default(),
            devices_reset: Family::default(),
            readings_refused: Family::default(),
            devices_parked: Family::default(),
            model_swaps: Family::default(),
            models_rejected: Family::default(),
            swap_pending: Family::default(),
            swap_unwarmed: Family::default(),
            retrains: Family::default(),
            retrain_running: Gauge::default(),
            registry: Registry::default(),
        };
        // In this order in the exposition.
        m.register_throughput(&mut registry);
        m.register_sink(&mut registry);
        m.register_pipeline(&mut registry);
        m.register_alarms(&mut registry);
        m.register_serving_state(&mut registry);
        m.register_checkpoints(&mut registry);
        m.register_device_guards(&mut registry);
        m.register_models(&mut registry);
        Self { registry, ..m }
    }

    /// Registers the counts of readings in, points out and messages that could not be decoded.
    fn register_throughput(&self, registry: &mut Registry) {
        registry.register("readings", "Readings decoded", self.readings_in.clone());
        registry.register(
            "readings_stale",
            "Readings with a duplicate or older timestamp, not stepped",
            self.readings_stale.clone(),
        );
        registry.register(
            "points_written",
            "Output points acknowledged by InfluxDB",
            self.points_written.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages that could not be decoded, by reason",
            self.dead_letters.clone(),
        );
    }

    /// Registers the sink's metrics: retried and rejected writes, partial writes and write
    /// latency.
    fn register_sink(&self, registry: &mut Registry) {
        registry.register(
            "sink_retries",
            "Failed write attempts that were retried, by cause",
            self.sink_retries.clone(),
        );
        registry.register(
            "sink_rejected_points",
            "Points InfluxDB rejected for good, dropped: single lines refused with 400, and the count a 422 partial write reported (dropped=N)",
            self.sink_rejected_points.clone(),
        );
        registry.register(
            "sink_partial_writes",
            "Write requests InfluxDB accepted only in part (422), not retried; count=reported: the response said how many points it rejected (added to sink_rejected_points); count=unknown: it did not, so anywhere from one point to the whole request was rejected",
            self.sink_partial_writes.clone(),
        );
        registry.register(
            "sink_write_seconds",
            "Duration of successful write requests",
            self.sink_latency.clone(),
        );
    }

    /// Registers how the pipeline keeps up: batch size, end-to-end latency, consumer lag and
    /// devices tracked.
    fn register_pipeline(&self, registry: &mut Registry) {
        registry.register(
            "batch_readings",
            "Readings per engine micro-batch",
            self.batch_size.clone(),
        );
        registry.register(
            "end_to_end_seconds",
            "From a message's Kafka timestamp to its outputs being written",
            self.end_to_end_latency.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the partition's high watermark",
            self.consumer_lag.clone(),
        );
        registry.register("devices", "Devices tracked", self.devices.clone());
    }

    /// Registers the alarms raised and active now: anomaly, stuck-sensor and silent-device.
    fn register_alarms(&self, registry: &mut Registry) {
        registry.register(
            "alarms_raised",
            "Anomaly alarms raised (alarm policy: minimum duration, cool-down)",
            self.alarms_raised.clone(),
        );
        registry.register(
            "alarms_active",
            "Devices with an anomaly alarm raised now",
            self.alarms_active.clone(),
        );
        registry.register(
            "stuck_alarms_raised",
            "Stuck-sensor alarms raised (a feature flat far longer than in training)",
            self.stuck_raised.clone(),
        );
        registry.register(
            "stuck_alarms_active",
            "Devices with a stuck-sensor alarm raised now",
            self.stuck_active.clone(),
        );
        registry.register(
            "silent_alarms_raised",
            "Silent-device alarms raised (no reading while its partition went on)",
            self.silent_raised.clone(),
        );
        registry.register(
            "silent_alarms_active",
            "Devices with a silent-device alarm raised now",
            self.silent_active.clone(),
        );
    }

    /// Registers the gauges of what serves now: the model version in use, and whether
    /// consumption is paused for backpressure.
    fn register_serving_state(&self, registry: &mut Registry) {
        registry.register(
            "model_version",
            "1 for the model version in use",
            self.model_version.clone(),
        );
        registry.register(
            "paused",
            "1 while consumption is paused for backpressure",
            self.paused.clone(),
        );
    }

    /// Registers the checkpoints written, failed and passed over on restore, the devices
    /// restored, and the partitions assigned and revoked.
    fn register_checkpoints(&self, registry: &mut Registry) {
        registry.register(
            "checkpoints_written",
            "Partition checkpoints of device state persisted",
            self.checkpoints_written.clone(),
        );
        registry.register(
            "checkpoint_bytes",
            "Bytes of partition checkpoints persisted",
            self.checkpoint_bytes.clone(),
        );
        registry.register(
            "checkpoint_failures",
            "Partition checkpoints that could not be written",
            self.checkpoint_failures.clone(),
        );
        registry.register(
            "checkpoint_seconds",
            "Time to persist one set of partition checkpoints",
            self.checkpoint_seconds.clone(),
        );
        registry.register(
            "checkpoints_skipped",
            "Checkpoints passed over on restore (damaged, unreadable, unavailable, format_version, mismatch, records, model)",
            self.checkpoints_skipped.clone(),
        );
        registry.register(
            "devices_restored",
            "Devices whose state was restored from a checkpoint",
            self.devices_restored.clone(),
        );
        registry.register(
            "partitions_assigned",
            "Partitions assigned to this instance, by how their devices started (checkpoint or cold)",
            self.partitions_assigned.clone(),
        );
        registry.register(
            "partitions_revoked",
            "Partitions revoked from this instance (checkpointed, then their devices forgotten)",
            self.partitions_revoked.clone(),
        );
    }

    /// Registers what the engine does to guard itself: readings clamped, devices reset,
    /// readings refused and devices parked.
    fn register_device_guards(&self, registry: &mut Registry) {
        registry.register(
            "readings_clamped",
            "Feature values clamped to plus or minus engine.max_abs_z standard deviations",
            self.readings_clamped.clone(),
        );
        registry.register(
            "devices_reset",
            "Devices reset to a cold start because a reading would have made their state non-finite",
            self.devices_reset.clone(),
        );
        registry.register(
            "readings_refused",
            "Readings of new devices not scored because the device table was full (engine.max_devices)",
            self.readings_refused.clone(),
        );
        registry.register(
            "devices_parked",
            "Devices idle for engine.device_ttl, their state parked on disk until they return",
            self.devices_parked.clone(),
        );
    }

    /// Registers model swaps, rejected models and retrains run inside `serve`.
    fn register_models(&self, registry: &mut Registry) {
        registry.register(
            "model_swaps",
            "Model swaps started while serving (a new current version, or a checkpoint of another version restored)",
            self.model_swaps.clone(),
        );
        registry.register(
            "models_rejected",
            "New models refused while serving (load, schema, weights); the model in use keeps serving",
            self.models_rejected.clone(),
        );
        registry.register(
            "swap_pending",
            "Devices still written by the previous model while a swap re-warms them in the new one",
            self.swap_pending.clone(),
        );
        registry.register(
            "swap_unwarmed",
            "Devices switched at model.swap_timeout before model.swap_warmup readings in the new model",
            self.swap_unwarmed.clone(),
        );
        registry.register(
            "retrains",
            "Retrains run inside serve (retrain.every), by outcome: published, kept, failed",
            self.retrains.clone(),
        );
        registry.register(
            "retrain_running",
            "1 while a retrain runs inside serve",
            self.retrain_running.clone(),
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What `/health/ready` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// Partitions currently assigned.
    pub partitions: AtomicUsize,
    /// Every stream has a model.
    pub models_loaded: AtomicBool,
    /// The last write attempt did not fail with 401, 403 or 404.
    pub sink_reachable: AtomicBool,
    /// Shutting down.
    pub stopping: AtomicBool,
    /// The last checkpoint could not be written (offsets stop advancing until one is).
    pub checkpoints_failing: AtomicBool,
    /// Why InfluxDB refuses every write, when it does (empty otherwise).
    sink_problem: std::sync::Mutex<String>,
    /// Recent events an operator should know of that do not make the service unready (a
    /// partition that started cold although it had a checkpoint), newest last.
    warnings: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, String)>>,
}

/// Warnings `/health/ready` shows: at most this many…
const WARNINGS_KEPT: usize = 16;
/// …of at most this age.
const WARNING_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

impl Health {
    /// Records why InfluxDB refuses every write (empty: it accepts them again).
    pub fn set_sink_problem(&self, why: &str) {
        self.sink_reachable.store(why.is_empty(), Ordering::Relaxed);
        let mut p = self.sink_problem.lock().unwrap_or_else(|e| e.into_inner());
        if *p != why {
            *p = why.to_string();
        }
    }

    /// Records a warning for `/health/ready` (shown for an hour; readiness is unchanged).
    pub fn warn(&self, what: String) {
        let mut w = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() == WARNINGS_KEPT {
            w.pop_front();
        }
        w.push_back((std::time::Instant::now(), what));
    }

    /// Whether the service is ready, and why not.
    pub fn ready(&self) -> (bool, String) {
        let parts = self.partitions.load(Ordering::Relaxed);
        let models = self.models_loaded.load(Ordering::Relaxed);
        let sink = self.sink_reachable.load(Ordering::Relaxed);
        let stopping = self.stopping.load(Ordering::Relaxed);
        let failing = self.checkpoints_failing.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        if parts == 0 {
            reasons.push(
                "no partitions assigned: the group is rebalancing, has more members than partitions, or a member that died still holds them until its session.timeout.ms expires",
            );
        }
        if !models {
            reasons.push("a stream has no model");
        }
        let problem = self
            .sink_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !sink {
            reasons.push(if problem.is_empty() {
                "InfluxDB refuses the writes (see the log)"
            } else {
                problem.as_str()
            });
        }
        if failing {
            reasons.push("checkpoints cannot be written, so offsets are not committed");
        }
        if stopping {
            reasons.push("shutting down");
        }
        let ok = reasons.is_empty();
        let reasons = serde_json::to_string(&reasons).unwrap_or_default();
        let warnings: Vec<String> = self
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(at, _)| at.elapsed() < WARNING_AGE)
            .map(|(_, w)| w.clone())
            .collect();
        let warnings = serde_json::to_string(&warnings).unwrap_or_default();
        let body = format!(
            "{{\"ready\":{ok},\"partitions_assigned\":{parts},\"models_loaded\":{models},\"sink_reachable\":{sink},\"checkpoints_failing\":{failing},\"stopping\":{stopping},\"reasons\":{reasons},\"warnings\":{warnings}}}\n"
        );
        (ok, body)
    }
}

/// Shared state of the HTTP endpoint.
#[derive(Clone)]
pub struct Telemetry {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
}

/// The HTTP routes.
pub fn router(t: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health/live", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/health/ready", get(ready_handler))
        .with_state(t)
}

async fn metrics_handler(State(t): State<Telemetry>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.metrics.render(),
    )
}

async fn ready_handler(State(t): State<Telemetry>) -> impl IntoResponse {
    let (ok, body) = t.health.ready();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Starts `tracing` output as the config says (`RUST_LOG` wins when set).
pub fn init_logging(cfg: Option<&Config>) {
    let level = cfg
        .map(|c| c.log.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a journal or a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match cfg.map(|c| c.log.format) {
        Some(LogFormat::Json) => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

/// Logs at most once per `interval` per key; returns how many were suppressed since the last
/// one logged, or `None` when this one should be suppressed.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl RateLimit {
    /// Whether to log an event of kind `key` now.
    pub fn check(&self, key: &'static str, interval: std::time::Duration) -> Option<u64> {
        let mut map = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match map.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                map.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// One stream's metric handles, resolved once. A family lookup hashes the labels and takes a
/// lock; the engine stage would otherwise do that for a dozen metrics after every batch and
/// the source for every message. The handles share their values with the families, which
/// `/metrics` exports.
#[derive(Clone, Debug)]
pub struct StreamMetrics {
    /// `readings_in`.
    pub readings_in: Counter,
    /// `readings_stale`.
    pub readings_stale: Counter,
    /// `devices`.
    pub devices: Gauge,
    /// `alarms_raised`.
    pub alarms_raised: Counter,
    /// `readings_clamped`.
    pub readings_clamped: Counter,
    /// `devices_reset`.
    pub devices_reset: Counter,
    /// `readings_refused`.
    pub readings_refused: Counter,
    /// `stuck_raised`.
    pub stuck_raised: Counter,
    /// `silent_raised`.
    pub silent_raised: Counter,
    /// `alarms_active`.
    pub alarms_active: Gauge,
    /// `stuck_active`.
    pub stuck_active: Gauge,
    /// `silent_active`.
    pub silent_active: Gauge,
}

impl Metrics {
    /// The handles of `stream`'s series (created at 0 if new).
    pub fn for_stream(&self, stream: &str) -> StreamMetrics {
        let l = labels(&[("stream", stream)]);
        StreamMetrics {
            readings_in: self.readings_in.get_or_create(&l).clone(),
            readings_stale: self.readings_stale.get_or_create(&l).clone(),
            devices: self.devices.get_or_create(&l).clone(),
            alarms_raised: self.alarms_raised.get_or_create(&l).clone(),
            readings_clamped: self.readings_clamped.get_or_create(&l).clone(),
            devices_reset: self.devices_reset.get_or_create(&l).clone(),
            readings_refused: self.readings_refused.get_or_create(&l).clone(),
            stuck_raised: self.stuck_raised.get_or_create(&l).clone(),
            silent_raised: self.silent_raised.get_or_create(&l).clone(),
            alarms_active: self.alarms_active.get_or_create(&l).clone(),
            stuck_active: self.stuck_active.get_or_create(&l).clone(),
            silent_active: self.silent_active.get_or_create(&l).clone(),
        }
    }
}

/// A histogram that takes many observations under one lock, each bucket found by binary
/// search. prometheus_client's `Histogram` locks and scans its buckets in order for every
/// value: with the 108 latency buckets and one observation per message that was ≈ 1.7 % of
/// `serve`'s CPU in a throughput run. Exported in the same text as that `Histogram`.
#[derive(Clone, Debug)]
pub struct BatchHistogram(Arc<std::sync::Mutex<Buckets>>);

#[derive(Debug)]
struct Buckets {
    sum: f64,
    count: u64,
    /// Upper bounds, increasing, the last `f64::MAX` (+Inf), and each one's count.
    upper: Vec<f64>,
    counts: Vec<u64>,
}

impl BatchHistogram {
    /// A histogram over these increasing upper bounds (and +Inf).
    pub fn new(bounds: impl Iterator<Item = f64>) -> Self {
        let upper: Vec<f64> = bounds.chain(std::iter::once(f64::MAX)).collect();
        let counts = vec![0; upper.len()];
        Self(Arc::new(std::sync::Mutex::new(Buckets {
            sum: 0.0,
            count: 0,
            upper,
            counts,
        })))
    }

    /// Observes every value (a value on a bound counts in that bound's bucket, `le`).
    pub fn observe_all(&self, values: impl IntoIterator<Item = f64>) {
        let mut b = self.lock();
        let Buckets {
            sum,
            count,
            upper,
            counts,
        } = &mut *b;
        for v in values {
            *sum += v;
            *count += 1;
            // The first bound at or above `v`. NaN has none, nor has +Inf (past f64::MAX):
            // they count in no bucket, as in prometheus_client's histogram.
            let i = upper.partition_point(|&u| u < v);
            if let Some(c) = counts.get_mut(i).filter(|_| !v.is_nan()) {
                *c += 1;
            }
        }
    }

    /// Sum, count and (upper bound, count) per bucket.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let b = self.lock();
        let buckets = b.upper.iter().copied().zip(b.counts.iter().copied());
        (b.sum, b.count, buckets.collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // The counts stay consistent enough to export even if an observer panicked.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl prometheus_client::metrics::TypedMetric for BatchHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for BatchHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// Buckets of the produce → written latency: 10 ms wide from 10 ms to 1 s, so that a p50 or
/// p99 read from them (interpolated within a bucket) is good to ±5 ms where the targets lie
/// (a p99 under 250 ms), with 1 and 5 ms below and doubling from 2 s to 64 s above for
/// backlogs — 108 buckets on one series. (Kafka timestamps have millisecond resolution, so
/// finer buckets would not say more.)
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.001, 0.005]
        .into_iter()
        .chain((1..=100).map(|i| f64::from(i) * 0.01))
        .chain((1..=6).map(|k| 2f64.powi(k)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_handles_share_their_values_with_the_exported_families() {
        let m = super::Metrics::new();
        let a = m.for_stream("a");
        a.alarms_raised.inc_by(3);
        a.silent_active.set(2);
        let l = super::labels(&[("stream", "a")]);
        assert_eq!(m.alarms_raised.get_or_create(&l).get(), 3);
        assert_eq!(m.silent_active.get_or_create(&l).get(), 2);
        // Resolved again (another stage), the same series.
        m.for_stream("a").alarms_raised.inc();
        assert_eq!(a.alarms_raised.get(), 4);
    }

    #[test]
    fn a_batch_histogram_exports_what_prometheus_client_s_histogram_does() {
        use prometheus_client::metrics::histogram::Histogram;
        let ours = super::BatchHistogram::new(super::latency_buckets());
        let theirs = Histogram::new(super::latency_buckets());
        // On bounds, between them, below the first, past the last, and zero.
        let values: Vec<f64> = (0..3000)
            .map(|i| f64::from(i) * 0.001)
            .chain([0.0, 0.0005, 0.01, 0.25, 1.0, 2.0, 63.9, 64.0, 65.0, 1e9])
            .collect();
        ours.observe_all(values[..1000].iter().copied());
        ours.observe_all(values[1000..].iter().copied());
        for &v in &values {
            theirs.observe(v);
        }
        fn text(m: impl prometheus_client::registry::Metric) -> String {
            let mut r = prometheus_client::registry::Registry::default();
            r.register("latency", "help", m);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
            out
        }
        let (a, b) = (text(ours.clone()), text(theirs.clone()));
        assert!(a.contains("latency_bucket{le=\"0.25\"}"), "{a}");
        assert_eq!(a, b);
        // Values that fit no bucket (none arrive: latencies are whole milliseconds).
        ours.observe_all([f64::NAN, f64::INFINITY]);
        theirs.observe(f64::NAN);
        theirs.observe(f64::INFINITY);
        assert_eq!(text(ours), text(theirs));
    }

    #[test]
    fn latency_buckets_are_10_ms_wide_up_to_a_second() {
        let b: Vec<f64> = super::latency_buckets().collect();
        assert!(b.windows(2).all(|w| w[0] < w[1]), "increasing");
        let around = |x: f64| {
            b.windows(2)
                .find(|w| w[0] < x && x <= w[1])
                .map(|w| w[1] - w[0])
        };
        for x in [0.048, 0.25, 0.569, 0.99] {
            let width = around(x).expect("inside");
            assert!((width - 0.01).abs() < 1e-9, "{x}: {width}");
        }
        assert_eq!((b.len(), b[b.len() - 1]), (108, 64.0));
    }

    #[test]
    fn warnings_show_in_readiness_without_changing_it() {
        let h = Health::default();
        h.partitions.store(1, Ordering::Relaxed);
        h.models_loaded.store(true, Ordering::Relaxed);
        h.sink_reachable.store(true, Ordering::Relaxed);
        let (ok, body) = h.ready();
        assert!(ok && body.contains("\"warnings\":[]"), "{body}");
        for i in 0..20 {
            h.warn(format!("partition {i} started cold"));
        }
        let (ok, body) = h.ready();
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let w = v["warnings"].as_array().expect("warnings");
        assert!(ok, "{body}");
        assert_eq!(w.len(), WARNINGS_KEPT, "{body}");
        assert_eq!(w[WARNINGS_KEPT - 1], "partition 19 started cold");
    }

    use super::*;

    #[test]
    fn metrics_render_with_prefix_and_labels() {
        let m = Metrics::new();
        m.dead_letters
            .get_or_create(&labels(&[("reason", "invalid_json")]))
            .inc();
        m.points_written.inc_by(5);
        let text = m.render();
        assert!(
            text.contains("sensorcast_dead_letters_total{reason=\"invalid_json\"} 1"),
            "{text}"
        );
        assert!(text.contains("sensorcast_points_written_total 5"), "{text}");
    }

    /// The exposition's families in order, with their help texts and types (bucket lines
    /// counted, not listed): what dashboards and alerts are built on.
    #[test]
    fn the_exposition_keeps_every_family_name_help_and_type() {
        let text = Metrics::new().render();
        let described: Vec<&str> = text.lines().filter(|l| !l.contains("_bucket{")).collect();
        let buckets = text.lines().filter(|l| l.contains("_bucket{")).count();
        let expected = [
            "# HELP sensorcast_readings Readings decoded.",
            "# TYPE sensorcast_readings counter",
            "# HELP sensorcast_readings_stale Readings with a duplicate or older timestamp, not stepped.",
            "# TYPE sensorcast_readings_stale counter",
            "# HELP sensorcast_points_written Output points acknowledged by InfluxDB.",
            "# TYPE sensorcast_points_written counter",
            "sensorcast_points_written_total 0",
            "# HELP sensorcast_dead_letters Messages that could not be decoded, by reason.",
            "# TYPE sensorcast_dead_letters counter",
            "# HELP sensorcast_sink_retries Failed write attempts that were retried, by cause.",
            "# TYPE sensorcast_sink_retries counter",
            "# HELP sensorcast_sink_rejected_points Points InfluxDB rejected for good, dropped: single lines refused with 400, and the count a 422 partial write reported (dropped=N).",
            "# TYPE sensorcast_sink_rejected_points counter",
            "sensorcast_sink_rejected_points_total 0",
            "# HELP sensorcast_sink_partial_writes Write requests InfluxDB accepted only in part (422), not retried; count=reported: the response said how many points it rejected (added to sink_rejected_points); count=unknown: it did not, so anywhere from one point to the whole request was rejected.",
            "# TYPE sensorcast_sink_partial_writes counter",
            "# HELP sensorcast_sink_write_seconds Duration of successful write requests.",
            "# TYPE sensorcast_sink_write_seconds histogram",
            "sensorcast_sink_write_seconds_sum 0.0",
            "sensorcast_sink_write_seconds_count 0",
            "# HELP sensorcast_batch_readings Readings per engine micro-batch.",
            "# TYPE sensorcast_batch_readings histogram",
            "sensorcast_batch_readings_sum 0.0",
            "sensorcast_batch_readings_count 0",
            "# HELP sensorcast_end_to_end_seconds From a message's Kafka timestamp to its outputs being written.",
            "# TYPE sensorcast_end_to_end_seconds histogram",
            "sensorcast_end_to_end_seconds_sum 0.0",
            "sensorcast_end_to_end_seconds_count 0",
            "# HELP sensorcast_consumer_lag Messages behind the partition's high watermark.",
            "# TYPE sensorcast_consumer_lag gauge",
            "# HELP sensorcast_devices Devices tracked.",
            "# TYPE sensorcast_devices gauge",
            "# HELP sensorcast_alarms_raised Anomaly alarms raised (alarm policy: minimum duration, cool-down).",
            "# TYPE sensorcast_alarms_raised counter",
            "# HELP sensorcast_alarms_active Devices with an anomaly alarm raised now.",
            "# TYPE sensorcast_alarms_active gauge",
            "# HELP sensorcast_stuck_alarms_raised Stuck-sensor alarms raised (a feature flat far longer than in training).",
            "# TYPE sensorcast_stuck_alarms_raised counter",
            "# HELP sensorcast_stuck_alarms_active Devices with a stuck-sensor alarm raised now.",
            "# TYPE sensorcast_stuck_alarms_active gauge",
            "# HELP sensorcast_silent_alarms_raised Silent-device alarms raised (no reading while its partition went on).",
            "# TYPE sensorcast_silent_alarms_raised counter",
            "# HELP sensorcast_silent_alarms_active Devices with a silent-device alarm raised now.",
            "# TYPE sensorcast_silent_alarms_active gauge",
            "# HELP sensorcast_model_version 1 for the model version in use.",
            "# TYPE sensorcast_model_version gauge",
            "# HELP sensorcast_paused 1 while consumption is paused for backpressure.",
            "# TYPE sensorcast_paused gauge",
            "sensorcast_paused 0",
            "# HELP sensorcast_checkpoints_written Partition checkpoints of device state persisted.",
            "# TYPE sensorcast_checkpoints_written counter",
            "# HELP sensorcast_checkpoint_bytes Bytes of partition checkpoints persisted.",
            "# TYPE sensorcast_checkpoint_bytes counter",
            "# HELP sensorcast_checkpoint_failures Partition checkpoints that could not be written.",
            "# TYPE sensorcast_checkpoint_failures counter",
            "sensorcast_checkpoint_failures_total 0",
            "# HELP sensorcast_checkpoint_seconds Time to persist one set of partition checkpoints.",
            "# TYPE sensorcast_checkpoint_seconds histogram",
            "sensorcast_checkpoint_seconds_sum 0.0",
            "sensorcast_checkpoint_seconds_count 0",
            "# HELP sensorcast_checkpoints_skipped Checkpoints passed over on restore (damaged, unreadable, unavailable, format_version, mismatch, records, model).",
            "# TYPE sensorcast_checkpoints_skipped counter",
            "# HELP sensorcast_devices_restored Devices whose state was restored from a checkpoint.",
            "# TYPE sensorcast_devices_restored counter",
            "# HELP sensorcast_partitions_assigned Partitions assigned to this instance, by how their devices started (checkpoint or cold).",
            "# TYPE sensorcast_partitions_assigned counter",
            "# HELP sensorcast_partitions_revoked Partitions revoked from this instance (checkpointed, then their devices forgotten).",
            "# TYPE sensorcast_partitions_revoked counter",
            "# HELP sensorcast_readings_clamped Feature values clamped to plus or minus engine.max_abs_z standard deviations.",
            "# TYPE sensorcast_readings_clamped counter",
            "# HELP sensorcast_devices_reset Devices reset to a cold start because a reading would have made their state non-finite.",
            "# TYPE sensorcast_devices_reset counter",
            "# HELP sensorcast_readings_refused Readings of new devices not scored because the device table was full (engine.max_devices).",
            "# TYPE sensorcast_readings_refused counter",
            "# HELP sensorcast_devices_parked Devices idle for engine.device_ttl, their state parked on disk until they return.",
            "# TYPE sensorcast_devices_parked gauge",
            "# HELP sensorcast_model_swaps Model swaps started while serving (a new current version, or a checkpoint of another version restored).",
            "# TYPE sensorcast_model_swaps counter",
            "# HELP sensorcast_models_rejected New models refused while serving (load, schema, weights); the model in use keeps serving.",
            "# TYPE sensorcast_models_rejected counter",
            "# HELP sensorcast_swap_pending Devices still written by the previous model while a swap re-warms them in the new one.",
            "# TYPE sensorcast_swap_pending gauge",
            "# HELP sensorcast_swap_unwarmed Devices switched at model.swap_timeout before model.swap_warmup readings in the new model.",
            "# TYPE sensorcast_swap_unwarmed counter",
            "# HELP sensorcast_retrains Retrains run inside serve (retrain.every), by outcome: published, kept, failed.",
            "# TYPE sensorcast_retrains counter",
            "# HELP sensorcast_retrain_running 1 while a retrain runs inside serve.",
            "# TYPE sensorcast_retrain_running gauge",
            "sensorcast_retrain_running 0",
            "# EOF",
        ];
        assert_eq!(described, expected);
        assert_eq!(
            buckets,
            16 + 14 + 108 + 16 + 4,
            "the buckets and their +Inf lines"
        );
    }

    #[test]
    fn readiness_needs_everything() {
        let h = Health::default();
        assert!(!h.ready().0);
        assert!(
            h.ready().1.contains("no partitions assigned"),
            "{}",
            h.ready().1
        );
        h.partitions.store(2, Ordering::Relaxed);
        h.models_loaded.store(true, Ordering::Relaxed);
        h.sink_reachable.store(true, Ordering::Relaxed);
        assert!(h.ready().0);
        h.checkpoints_failing.store(true, Ordering::Relaxed);
        assert!(!h.ready().0 && h.ready().1.contains("\"checkpoints_failing\":true"));
        h.checkpoints_failing.store(false, Ordering::Relaxed);
        assert!(h.ready().0);
        h.stopping.store(true, Ordering::Relaxed);
        assert!(!h.ready().0 && h.ready().1.contains("\"stopping\":true"));
        let body: serde_json::Value = serde_json::from_str(&h.ready().1).expect("JSON");
        assert_eq!(body["reasons"], serde_json::json!(["shutting down"]));
    }

    #[test]
    fn rate_limit_suppresses_and_counts() {
        let r = RateLimit::default();
        let long = std::time::Duration::from_secs(60);
        assert_eq!(r.check("a", long), Some(0));
        assert_eq!(r.check("a", long), None);
        assert_eq!(r.check("b", long), Some(0));
        assert_eq!(r.check("a", std::time::Duration::ZERO), Some(1));
    }
}
