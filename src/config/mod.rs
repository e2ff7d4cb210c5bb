//! Configuration: one serde struct per section, defaults in code, TOML files plus
//! `SENSORCAST__SECTION__KEY` environment overrides, and validation that names the key.
//!
//! Every key is documented in `config/default.toml`; a test keeps that file and these defaults
//! in step. Parsing rejects unknown keys (`deny_unknown_fields`); [`Config::validate`] then
//! checks values and reports every problem at once as `key: what is wrong`.

mod duration;

pub use duration::HumanDuration;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Input streams: one schema (and one model) each.
    pub streams: Vec<StreamConfig>,
    /// Model architecture and registry.
    pub model: ModelConfig,
    /// Streaming engine behaviour.
    pub engine: EngineConfig,
    /// Anomaly scoring.
    pub anomaly: AnomalyConfig,
    /// Training.
    pub train: TrainConfig,
    /// Kafka source (used by `serve` and `simulate`).
    pub kafka: KafkaConfig,
    /// InfluxDB sink (used by `serve`).
    pub influxdb: InfluxConfig,
    /// HTTP endpoint for metrics and health (used by `serve`).
    pub http: HttpConfig,
    /// Service lifecycle.
    pub service: ServiceConfig,
    /// Device state checkpoints (used by `serve`).
    pub state: StateConfig,
    /// What is written per reading (every stream; a stream's `output` overrides keys).
    pub output: OutputConfig,
    /// `sensorcast retrain`: the champion/challenger gate.
    pub retrain: RetrainConfig,
    /// Logging.
    pub log: LogConfig,
    /// Maintenance windows (`[[maintenance]]`): no alarms, no learning (engine::maintenance).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
}

/// One window, as configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// The stream it applies to; every stream when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The devices it applies to; every device of the stream when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Start (RFC 3339), inclusive.
    pub from: String,
    /// End (RFC 3339), exclusive.
    pub until: String,
    /// Why, for people reading the config.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl MaintenanceWindow {
    /// The window's `[from, until)` in ns, or the key that is wrong and why.
    pub fn span(&self) -> Result<(i64, i64), (&'static str, String)> {
        let parse = |key: &'static str, v: &str| {
            crate::time::parse_ts_text(v).map_err(|e| (key, e.to_string()))
        };
        let (from, until) = (parse("from", &self.from)?, parse("until", &self.until)?);
        if until <= from {
            return Err((
                "until",
                format!("{} must be after from ({})", self.until, self.from),
            ));
        }
        Ok((from, until))
    }
}

/// A file of windows (`anomaly.maintenance_file`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    #[serde(default)]
    maintenance: Vec<MaintenanceWindow>,
}

/// Why a file of maintenance windows cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceFileError {
    /// The file cannot be read.
    #[error("{}: cannot read the maintenance file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML of `[[maintenance]]` entries (the parser's message names the line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry's times are not usable.
    #[error("{}: maintenance[{entry}].{key}: {message}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's index.
        entry: usize,
        /// The entry's key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Reads a file of windows (`anomaly.maintenance_file`: `[[maintenance]]` entries). Errors
/// name the file, the entry and what is wrong.
pub fn read_maintenance_file(path: &Path) -> Result<Vec<MaintenanceWindow>, MaintenanceFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| MaintenanceFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: WindowFile = toml::from_str(&text).map_err(|e| MaintenanceFileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    for (entry, w) in file.maintenance.iter().enumerate() {
        w.span()
            .map_err(|(key, message)| MaintenanceFileError::Entry {
                path: path.to_path_buf(),
                entry,
                key,
                message,
            })?;
    }
    Ok(file.maintenance)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            streams: vec![StreamConfig::default()],
            model: ModelConfig::default(),
            engine: EngineConfig::default(),
            anomaly: AnomalyConfig::default(),
            train: TrainConfig::default(),
            kafka: KafkaConfig::default(),
            influxdb: InfluxConfig::default(),
            http: HttpConfig::default(),
            service: ServiceConfig::default(),
            state: StateConfig::default(),
            output: OutputConfig::default(),
            retrain: RetrainConfig::default(),
            maintenance: Vec::new(),
            log: LogConfig::default(),
        }
    }
}

/// `sensorcast retrain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    /// History window the challenger is trained on (back from now), holdout included.
    pub window: HumanDuration,
    /// The most recent part of the window, held out from training: champion and challenger
    /// are both scored on it.
    pub holdout: HumanDuration,
    /// The challenger is published only if its holdout MASE is below the champion's by at
    /// least this fraction (0.02: 2 % better).
    pub margin: f64,
    /// Detection check: the challenger is also refused if the share of holdout readings it
    /// puts over the alarm line exceeds this multiple of the larger of the champion's share
    /// and the stream's target false-alarm rate (a model that forecasts well but alarms more).
    pub max_over_line_ratio: f64,
    /// Where the history comes from: `"influxdb"` (the `reading` points serve writes, or
    /// `train.history_*`) or `"kafka"` (the stream's topic, by offsets for times).
    pub source: HistorySource,
    /// `serve`: retrain every this long, inside the service (off the hot path, on `threads`
    /// threads); `0s`: never (a timer or CronJob runs `sensorcast retrain` instead).
    pub every: HumanDuration,
    /// Threads a retrain inside `serve` trains on, so that serving keeps its cores.
    pub threads: usize,
}

/// Where `retrain` reads history from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HistorySource {
    /// InfluxDB over `/query`.
    Influxdb,
    /// The stream's Kafka topic.
    Kafka,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            window: HumanDuration::from_secs(30 * 86_400),
            holdout: HumanDuration::from_secs(86_400),
            margin: 0.02,
            max_over_line_ratio: 2.0,
            source: HistorySource::Influxdb,
            every: HumanDuration::from_secs(0),
            threads: 1,
        }
    }
}

/// What is written per reading.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Write the reading itself as a `reading` point (one field per feature), so dashboards
    /// draw actuals next to forecasts and history can be read back for retraining.
    pub readings: bool,
    /// Forecast steps written: `"all"`, `"first"`, `"last"`, `"ends"` (first and last), or a
    /// list of steps such as `[1, 3]`.
    pub horizons: Horizons,
    /// Write the 90 % band (`yhat_lower`, `yhat_upper`) with each forecast.
    pub band: bool,
    /// Write forecasts for every k-th reading of a device only (by event time: when the
    /// reading crosses a multiple of k reading intervals), 1 = every reading.
    pub forecast_every: u32,
    /// Fields of the `anomaly` point: `"all"` (score, its parts, likelihood, flags, top field,
    /// per-feature contributions) or `"basic"` (score, likelihood, is_anomaly, top_field).
    pub anomaly: AnomalyFields,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            readings: true,
            horizons: Horizons::Named(HorizonSet::Ends),
            band: true,
            forecast_every: 1,
            anomaly: AnomalyFields::All,
        }
    }
}

/// A stream's overrides of `[output]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputOverride {
    /// See [`OutputConfig::readings`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings: Option<bool>,
    /// See [`OutputConfig::horizons`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizons: Option<Horizons>,
    /// See [`OutputConfig::band`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band: Option<bool>,
    /// See [`OutputConfig::forecast_every`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast_every: Option<u32>,
    /// See [`OutputConfig::anomaly`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<AnomalyFields>,
}

/// Which forecast steps are written.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Horizons {
    /// A named set.
    Named(HorizonSet),
    /// Steps, 1-based.
    Steps(Vec<u32>),
}

/// Named sets of forecast steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HorizonSet {
    /// Every step.
    All,
    /// Step 1.
    First,
    /// Step H.
    Last,
    /// Steps 1 and H.
    Ends,
}

impl<'de> Deserialize<'de> for Horizons {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            Steps(Vec<u32>),
        }
        const EXPECTED: &str =
            "\"all\", \"first\", \"last\", \"ends\" or a list of steps such as [1, 3]";
        match Repr::deserialize(d).map_err(|_| D::Error::custom(format!("expected {EXPECTED}")))? {
            Repr::Steps(s) => Ok(Horizons::Steps(s)),
            Repr::Name(n) => Ok(Horizons::Named(match n.as_str() {
                "all" => HorizonSet::All,
                "first" => HorizonSet::First,
                "last" => HorizonSet::Last,
                "ends" => HorizonSet::Ends,
                other => {
                    return Err(D::Error::custom(format!("{other:?} is not {EXPECTED}")));
                }
            })),
        }
    }
}

impl Horizons {
    /// Whether step `h` (1-based) of a model with `horizon` steps is written.
    pub fn includes(&self, h: usize, horizon: usize) -> bool {
        match self {
            Horizons::Named(HorizonSet::All) => true,
            Horizons::Named(HorizonSet::First) => h == 1,
            Horizons::Named(HorizonSet::Last) => h == horizon,
            Horizons::Named(HorizonSet::Ends) => h == 1 || h == horizon,
            Horizons::Steps(s) => s.iter().any(|&x| x as usize == h),
        }
    }
}

/// Fields of the `anomaly` point.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnomalyFields {
    /// Everything.
    All,
    /// Score, likelihood, is_anomaly, top_field (and the model).
    Basic,
}

/// Kafka consumer group and dead letters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Consumer group; instances sharing it split the partitions between them.
    pub group_id: String,
    /// Topic for messages that cannot be decoded (empty: count and log only).
    pub dead_letter_topic: String,
    /// Messages larger than this are dead letters.
    pub max_payload_bytes: usize,
    /// Dead letters carry at most this much of the original payload (the rest is cut, with
    /// headers saying so), so that an oversized message fits the dead-letter topic.
    pub dead_letter_max_bytes: usize,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// How often stored offsets are committed.
    pub commit_interval: HumanDuration,
    /// Any other librdkafka property, passed through (e.g. `security.protocol`, `sasl.*`,
    /// `ssl.*`).
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "sensorcast".into(),
            dead_letter_topic: "sensorcast.dead-letter".into(),
            max_payload_bytes: 1 << 20,
            dead_letter_max_bytes: 900_000,
            auto_offset_reset: "earliest".into(),
            commit_interval: HumanDuration::from_secs(5),
            properties: Default::default(),
        }
    }
}

impl KafkaConfig {
    /// librdkafka's `max.poll.interval.ms` as set in `properties` (its default, 300 s,
    /// otherwise): the longest the consumer may go between polls, rebalance callbacks included.
    pub fn max_poll_interval(&self) -> std::time::Duration {
        let ms = self
            .properties
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(300_000);
        std::time::Duration::from_millis(ms)
    }
}

/// InfluxDB v2 write API.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxConfig {
    /// Base URL (`http://` or `https://`).
    pub url: String,
    /// Write API: `v2` (`/api/v2/write`: InfluxDB 2.x/3.x, VictoriaMetrics) or `v1` (`/write`:
    /// InfluxDB 1.x, and 2.x/3.x through their compatibility endpoints).
    pub api: InfluxApi,
    /// Organisation (v2).
    pub org: String,
    /// Bucket (v2); also the v1 database when `database` is empty.
    pub bucket: String,
    /// Database (v1; empty: the `bucket` value).
    pub database: String,
    /// Retention policy (v1; empty: the database's default).
    pub retention_policy: String,
    /// User name (v1 basic authentication; empty: the token, if any, is sent instead).
    pub username: String,
    /// Password (v1; prefer `SENSORCAST__INFLUXDB__PASSWORD` or `password_file`).
    pub password: String,
    /// File holding the password (read at start-up; wins over `password`).
    pub password_file: String,
    /// API token (prefer `SENSORCAST__INFLUXDB__TOKEN` or `token_file`).
    pub token: String,
    /// File holding the token (read at start-up; wins over `token`).
    pub token_file: String,
    /// PEM file of extra CA certificates to trust for `https://` (e.g. a plant's own CA).
    pub ca_file: String,
    /// A write request is sent once this many bytes of points are waiting…
    pub batch_bytes: usize,
    /// …or when the oldest waiting point is this old.
    pub flush_interval: HumanDuration,
    /// Timeout of one write request.
    pub request_timeout: HumanDuration,
    /// Timeout of connecting.
    pub connect_timeout: HumanDuration,
    /// First retry delay; doubles per failed attempt (with jitter) up to `max_backoff`.
    pub min_backoff: HumanDuration,
    /// Longest retry delay (also the cap on a server's `Retry-After`).
    pub max_backoff: HumanDuration,
    /// Retry delay after an authentication or bucket error (401, 403, 404).
    pub auth_retry_interval: HumanDuration,
    /// Batches queued for the writer; when full, consumption pauses.
    pub queue_batches: usize,
    /// Write requests in flight at once (acknowledged in order).
    pub concurrency: usize,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8086".into(),
            api: InfluxApi::V2,
            org: "plant".into(),
            bucket: "sensorcast".into(),
            database: String::new(),
            retention_policy: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            token: String::new(),
            token_file: String::new(),
            ca_file: String::new(),
            batch_bytes: 1 << 20,
            flush_interval: HumanDuration::from_millis(200),
            request_timeout: HumanDuration::from_secs(10),
            connect_timeout: HumanDuration::from_secs(3),
            min_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_secs(30),
            auth_retry_interval: HumanDuration::from_secs(15),
            queue_batches: 16,
            concurrency: 2,
        }
    }
}

impl InfluxConfig {
    /// The v1 database: `database`, else the bucket's name.
    pub fn v1_database(&self) -> &str {
        if self.database.is_empty() {
            &self.bucket
        } else {
            &self.database
        }
    }
}

/// InfluxDB write API.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `/write?db=&rp=` (InfluxDB 1.x).
    V1,
    /// `/api/v2/write?org=&bucket=` (InfluxDB 2.x/3.x, VictoriaMetrics).
    V2,
}

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("InfluxConfig")
            .field("url", &redact_url(&self.url))
            .field("api", &self.api)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &masked(&self.password))
            .field("token", &masked(&self.token))
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

/// HTTP endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for `/metrics`, `/health/live` and `/health/ready`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

/// Service lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// On SIGTERM/SIGINT: time allowed to drain, flush and commit before exiting.
    pub shutdown_timeout: HumanDuration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: HumanDuration::from_secs(30),
        }
    }
}

/// Device state checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Where checkpoints go: `kafka` (the default: a compacted changelog topic per stream, so
    /// that instances on any machine take partitions over with their devices) or `dir` (files
    /// under `dir`; exact across instances only if they share it).
    pub store: StoreKind,
    /// Directory of checkpoints (`store = "dir"`) and of parked devices (both stores):
    /// `<dir>/<group>/<stream>/p<partition>/`.
    pub dir: PathBuf,
    /// Changelog topic of a stream (`store = "kafka"`); `{group}` and `{stream}` are filled in.
    /// Created if missing (compacted, as many partitions as the stream's topic).
    pub changelog_topic: String,
    /// How often every partition's device states are checkpointed (also on revoke and at
    /// shutdown).
    pub checkpoint_interval: HumanDuration,
    /// Checkpoints kept per partition (older ones are pruned); a damaged newest one falls
    /// back to the one before.
    pub keep: usize,
    /// A partition whose newest checkpoint lies behind the group's committed offset (another
    /// member wrote the points in between: private state directories, a restored backup) is
    /// restored and caught up — the messages in between stepped without writing — when they
    /// are at most this many; otherwise its devices start cold at the committed offset.
    /// `0`: never catch up.
    pub max_catch_up: u64,
    /// A parked device (see `engine.device_ttl`) that has not returned after this long is
    /// forgotten for good (it starts cold if it ever comes back).
    pub parked_retention: HumanDuration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Kafka,
            dir: PathBuf::from("state"),
            changelog_topic: "{group}.{stream}.checkpoints".into(),
            checkpoint_interval: HumanDuration::from_secs(10),
            keep: 3,
            max_catch_up: 1_000_000,
            parked_retention: HumanDuration::from_secs(30 * 86_400),
        }
    }
}

/// Where checkpoints are kept.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Files under `state.dir` (local, or a volume instances share).
    Dir,
    /// A compacted Kafka changelog topic per stream.
    Kafka,
}

/// Input payload format of a stream (also `simulate --format`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"device":…,"ts":…,"values":{…}}`
    Json,
    /// InfluxDB line protocol as Telegraf writes it.
    Line,
}

/// Which evidence a reading is judged on (also `evaluate skab --evidence`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Evidence {
    /// Forecast surprise, deviation and joint deviation (the strongest wins). The residual
    /// drift is left out: on the cyclic demo fleet it alone put 1.3 % of normal readings over
    /// a 0.1 % line, and on SKAB it added nothing the deviation did not see.
    #[default]
    Default,
    /// Every piece, the residual drift too.
    All,
    /// The forecast surprise only (misses faults that persist).
    Forecast,
    /// The drift of the forecast residuals only.
    Drift,
    /// The deviation from the device's normal only, feature by feature (slower on sharp
    /// spikes).
    Deviation,
    /// The joint deviation over all features only (Mahalanobis distance of the departures).
    Joint,
}

/// One input stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Stream name; the `stream` tag of every output point and the model's registry folder.
    pub name: String,
    /// Kafka topic (used by `serve`).
    pub topic: String,
    /// Payload format.
    pub format: Format,
    /// Feature names, in model input order.
    pub features: Vec<String>,
    /// Tag (line protocol) or field (JSON) that carries the device id when the message key
    /// does not.
    pub device_key: String,
    /// Expected time between readings of a device; used for forecast timestamps until a
    /// device's own interval is known.
    pub interval: HumanDuration,
    /// This stream's target false-alarm rate (default: `anomaly.false_alarm_rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub false_alarm_rate: Option<f64>,
    /// Per-device target false-alarm rates, e.g. `{ "pump-7" = 0.0001 }`.
    pub device_false_alarm_rate: std::collections::BTreeMap<String, f64>,
    /// This stream's alarm budget (default: `anomaly.alarm_budget`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_budget: Option<f64>,
    /// This stream's overrides of `[output]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputOverride>,
}

/// A week, in nanoseconds (the unit of `anomaly.alarm_budget`).
pub const WEEK_NS: f64 = 7.0 * 86_400e9;

impl StreamConfig {
    /// The stream's target false-alarm rate per reading: its own `false_alarm_rate`, else its
    /// alarm budget (or `anomaly.alarm_budget`) converted with its interval, else
    /// `anomaly.false_alarm_rate`.
    pub fn rate(&self, a: &AnomalyConfig) -> f64 {
        if let Some(r) = self.false_alarm_rate {
            return r;
        }
        let budget = self.alarm_budget.unwrap_or(a.alarm_budget);
        if budget > 0.0 {
            budget * self.interval.as_nanos() as f64 / WEEK_NS
        } else {
            a.false_alarm_rate
        }
    }

    /// The most false alarm events a week per device the rate `rate` allows at this stream's
    /// interval (the budget the rate stands for).
    pub fn budget_of(&self, rate: f64) -> f64 {
        rate * WEEK_NS / self.interval.as_nanos().max(1) as f64
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            name: "pumps".into(),
            topic: "sensors.pumps".into(),
            format: Format::Json,
            features: vec!["vibration".into(), "temperature".into(), "current".into()],
            device_key: "device".into(),
            interval: HumanDuration::from_secs(60),
            false_alarm_rate: None,
            device_false_alarm_rate: Default::default(),
            alarm_budget: None,
            output: None,
        }
    }
}

/// Model architecture and registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Directory of versioned models: `<registry>/<stream>/<version>/`.
    pub registry: PathBuf,
    /// LSTM hidden width.
    pub hidden: usize,
    /// Stacked LSTM layers.
    pub layers: usize,
    /// Forecast steps ahead.
    pub horizon: usize,
    /// `serve`: how often each stream's `current` pointer is checked for a new model (SIGHUP
    /// checks at once). `0s`: only on SIGHUP.
    pub poll_interval: HumanDuration,
    /// `serve`: after a model swap, readings each device is stepped through the new model in
    /// shadow (the old one still writing its points) before it switches, so that its first
    /// points from the new model are warm.
    pub swap_warmup: u32,
    /// `serve`: longest a swap runs; devices that have not sent `swap_warmup` readings by then
    /// switch with what the new model has seen of them (a device that sent nothing starts
    /// cold).
    pub swap_timeout: HumanDuration,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            registry: PathBuf::from("models"),
            hidden: 64,
            layers: 1,
            horizon: 3,
            poll_interval: HumanDuration::from_secs(10),
            swap_warmup: 30,
            swap_timeout: HumanDuration::from_secs(2 * 3600),
        }
    }
}

/// Streaming engine behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// A gap between two readings of a device longer than this resets its LSTM state.
    pub max_gap: HumanDuration,
    /// Readings per device before anomaly flags are raised (cold start).
    pub warmup: u32,
    /// Largest micro-batch stepped at once.
    pub max_batch: usize,
    /// Longest a reading waits for its micro-batch to fill (`serve`).
    pub max_linger: HumanDuration,
    /// `serve`: a device without a reading for this long (event time, against the newest
    /// reading of its stream) is parked: its state moves to disk beside its partition's
    /// checkpoints and is restored when it returns. `0s`: never.
    pub device_ttl: HumanDuration,
    /// Most devices one `serve` instance tracks (all streams together); readings of further
    /// new devices are not scored (counted), so that a producer keying by random ids cannot
    /// exhaust memory.
    pub max_devices: usize,
    /// Normalised feature values beyond ± this many standard deviations are clamped (counted),
    /// so that an absurd but finite value cannot overflow a device's state.
    pub max_abs_z: f64,
    /// `serve`: a reading stamped further than this ahead of the wall clock is a dead letter
    /// (`future_timestamp`) instead of a reading that would make its device's later readings
    /// stale.
    pub max_future: HumanDuration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_gap: HumanDuration::from_secs(3600),
            warmup: 30,
            max_batch: 4096,
            max_linger: HumanDuration::from_millis(20),
            device_ttl: HumanDuration::from_secs(86_400),
            max_devices: 1_000_000,
            max_abs_z: 1000.0,
            max_future: HumanDuration::from_secs(300),
        }
    }
}

/// Anomaly scoring (docs/ARCHITECTURE.md §4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// The sensitivity knob: the share of normal readings (as measured on the training data)
    /// allowed over the alarm line. Lower: fewer false alarms, later or missed detections.
    /// A stream may set its own (`streams.false_alarm_rate`) and devices theirs
    /// (`streams.device_false_alarm_rate`).
    pub false_alarm_rate: f64,
    /// Readings over the line in a row before an alarm is raised (a lone spike pages nobody).
    pub min_duration: u32,
    /// Quiet readings in a row before a raised alarm clears.
    pub cooldown: u32,
    /// The knob in operator units: false alarm events per device per week. When above 0, a
    /// stream's rate (unless it sets `false_alarm_rate`) is `alarm_budget × interval / 7 days`:
    /// every false alarm needs at least one reading over the line, so a device raises at most
    /// that many a week. 0: `false_alarm_rate` applies.
    pub alarm_budget: f64,
    /// A reading is quiet when its p-value exceeds `false_alarm_rate · clear_factor`
    /// (hysteresis: readings in between neither raise nor clear).
    pub clear_factor: f64,
    /// Readings (after warm-up) over which each device learns the normal spread of its
    /// readings around its baseline.
    pub learning_readings: u32,
    /// Readings in each device's slowly moving baseline (frozen while the device is alarmed).
    pub baseline_window: u32,
    /// Readings in the short average of a reading's departure from the baseline.
    pub smoothing_window: u32,
    /// Which evidence readings are judged on: `all`, `forecast`, `drift`, `deviation` or
    /// `joint`.
    pub evidence: Evidence,
    /// Readings in the short average of signed one-step residuals (drift evidence).
    pub drift_window: u32,
    /// A raised alarm also treats readings as quiet once the device's distance from its
    /// normal (the joint deviation, or the largest standardised departure) falls below this
    /// fraction of the alarm's peak; clearing that way restarts the device's baseline where
    /// it settled. 0 turns it off.
    pub settle_fraction: f64,
    /// Longest an alarm is held, in readings; the device's state is then taken as its new
    /// normal (its baseline restarts there) and the alarm clears. 0: no limit.
    pub max_alarm_readings: u32,
    /// A feature whose reading stays exactly the same for this many times the longest it
    /// held one value in the training history is a stuck sensor: an alarm of its own kind
    /// (`anomaly_event,kind=stuck`). 0 turns the check off.
    pub stuck_factor: f64,
    /// ... and for at least this many of the device's readings.
    pub stuck_min_readings: u32,
    /// A file of `[[maintenance]]` windows besides the config's, read again by `serve`
    /// whenever it changes (empty: none).
    pub maintenance_file: String,
    /// Operators' verdicts on alarms (`sensorcast label` appends to it; empty: none). `serve`
    /// writes them onto the alarms' points, `retrain` and `evaluate labelled` use them.
    pub labels_file: String,
    /// A device is silent once the other devices of its Kafka partition have reported this
    /// many times its usual interval past its last reading: an alarm of its own kind
    /// (`anomaly_event,kind=silent`) until it reports again. 0 turns the check off (for
    /// devices that report only on change).
    pub silent_factor: f64,
    /// Readings in the short-term average of scores.
    pub short_window: u32,
    /// Readings in the long-term history the short-term average is compared with.
    pub long_window: u32,
    /// Readings over which each device learns how far its readings normally fall from the
    /// forecast (per-device calibration of the model's uncertainty).
    pub calibration_window: u32,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            false_alarm_rate: 0.001,
            alarm_budget: 0.0,
            min_duration: 5,
            cooldown: 30,
            clear_factor: 10.0,
            learning_readings: 200,
            baseline_window: 300,
            smoothing_window: 9,
            evidence: Evidence::Default,
            drift_window: 20,
            settle_fraction: 0.2,
            max_alarm_readings: 1440,
            stuck_factor: 3.0,
            stuck_min_readings: 20,
            maintenance_file: String::new(),
            labels_file: String::new(),
            silent_factor: 10.0,
            short_window: 8,
            long_window: 500,
            calibration_window: 200,
        }
    }
}

/// Training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Steps per training window.
    pub window: usize,
    /// Windows start every `stride` readings.
    pub stride: usize,
    /// Most passes over the training windows.
    pub epochs: usize,
    /// Windows per optimiser step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Share of each device's history (its most recent part) held out for validation.
    pub validation_fraction: f64,
    /// Epochs without validation improvement before stopping early.
    pub patience: usize,
    /// Seed for initialisation and shuffling; the same seed and data give the same model.
    pub seed: u64,
    /// Upper bound on training windows (evenly subsampled beyond it).
    pub max_windows: usize,
    /// History in InfluxDB (`train --source influxdb`): the measurement holding readings…
    pub history_measurement: String,
    /// …the tag naming the device…
    pub history_device_tag: String,
    /// …the tag naming the stream (empty: the measurement holds one stream only, as
    /// Telegraf's data does; otherwise only the stream's own readings are read)…
    pub history_stream_tag: String,
    /// …and how much time one query covers (responses stay bounded however long the window).
    pub history_page: HumanDuration,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            window: 48,
            stride: 8,
            epochs: 30,
            batch_size: 64,
            learning_rate: 3e-3,
            validation_fraction: 0.2,
            patience: 4,
            seed: 42,
            max_windows: 20_000,
            history_measurement: "reading".into(),
            history_device_tag: "device".into(),
            history_stream_tag: "stream".into(),
            history_page: HumanDuration::from_secs(6 * 3600),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `sensorcast=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `model.hidden` or `streams[0].features`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a command cannot tell which stream it is for.
#[derive(Debug, thiserror::Error)]
pub enum StreamChoiceError {
    /// No stream has the name given.
    #[error("no stream named {name:?} in the config (streams: {})", known.join(", "))]
    Unknown {
        /// The name given.
        name: String,
        /// The config's streams.
        known: Vec<String>,
    },
    /// None was named and the config has several.
    #[error("the config has several streams: choose one with --stream NAME")]
    Several,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML or an environment override does not parse into the schema.
    #[error("config {origin}: {message}")]
    Parse {
        /// File name, or "environment".
        origin: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// Values parsed but are not usable.
    #[error("invalid config{}:\n{}", origin.as_ref().map(|o| format!(" {o}")).unwrap_or_default(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// File name, if any.
        origin: Option<String>,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Loads defaults, then `path` (when given), then `SENSORCAST__…` environment overrides,
    /// and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        let origin = path.map(|p| p.display().to_string());
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            // Parse the file alone first so that its errors name the file, not the merge.
            let file_only = config::Config::builder()
                .add_source(config::File::from_str(&text, config::FileFormat::Toml))
                .build()
                .map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
            file_only
                .try_deserialize::<Config>()
                .map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SENSORCAST__"))
            .collect();
        let has_env = !env.is_empty();
        builder = builder.add_source(
            config::Environment::with_prefix("SENSORCAST")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let merged = builder.build().map_err(|e| ConfigError::Parse {
            origin: origin.clone().unwrap_or_else(|| "environment".into()),
            message: e.to_string(),
        })?;
        let cfg: Config = merged.try_deserialize().map_err(|e| ConfigError::Parse {
            origin: if has_env {
                "environment (SENSORCAST__…)".into()
            } else {
                origin.clone().unwrap_or_else(|| "defaults".into())
            },
            message: e.to_string(),
        })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid { origin, problems })
        }
    }

    /// Checks values that parse but cannot work; returns every problem found.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        self.validate_streams(&mut p);
        self.validate_model(&mut p);
        self.validate_engine(&mut p);
        self.validate_retrain(&mut p);
        self.validate_state(&mut p);
        self.validate_anomaly(&mut p);
        self.validate_alarm_policy(&mut p);
        self.validate_train(&mut p);
        self.validate_kafka(&mut p);
        self.validate_durations(&mut p);
        self.validate_influxdb(&mut p);
        self.validate_service(&mut p);
        p
    }

    /// The streams: names, topics, features, device keys, intervals.
    fn validate_streams(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        if self.streams.is_empty() {
            bad(
                "streams".into(),
                "at least one [[streams]] entry is required".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            let key = |k: &str| format!("streams[{i}].{k}");
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bad(
                    key("name"),
                    format!(
                        "{:?} must be non-empty and use only letters, digits, '-', '_' or '.'",
                        s.name
                    ),
                );
            }
            if !names.insert(s.name.clone()) {
                bad(
                    key("name"),
                    format!("stream name {:?} is used twice", s.name),
                );
            }
            if s.topic.is_empty() {
                bad(key("topic"), "must not be empty".into());
            }
            if s.features.is_empty() {
                bad(key("features"), "needs at least one feature".into());
            }
            let mut seen = std::collections::HashSet::new();
            for f in &s.features {
                if f.is_empty() || f.contains(['"', '\n', '\\']) {
                    bad(
                        key("features"),
                        format!("feature name {f:?} is empty or has a quote, backslash or newline"),
                    );
                }
                if !seen.insert(f) {
                    bad(key("features"), format!("feature {f:?} is listed twice"));
                }
            }
            if s.device_key.is_empty() {
                bad(key("device_key"), "must not be empty".into());
            }
            if s.interval.as_nanos() == 0 {
                bad(key("interval"), "must be longer than zero".into());
            }
        }
    }

    /// `[model]`.
    fn validate_model(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let m = &self.model;
        if !(1..=1024).contains(&m.hidden) {
            bad(
                "model.hidden".into(),
                format!("{} is out of range 1..=1024", m.hidden),
            );
        }
        if !(1..=8).contains(&m.layers) {
            bad(
                "model.layers".into(),
                format!("{} is out of range 1..=8", m.layers),
            );
        }
        if !(1..=256).contains(&m.horizon) {
            bad(
                "model.horizon".into(),
                format!("{} is out of range 1..=256", m.horizon),
            );
        }
        if m.registry.as_os_str().is_empty() {
            bad("model.registry".into(), "must not be empty".into());
        }
    }

    /// `[engine]`.
    fn validate_engine(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let e = &self.engine;
        if !(1..=1_000_000).contains(&e.max_batch) {
            bad(
                "engine.max_batch".into(),
                format!("{} is out of range 1..=1000000", e.max_batch),
            );
        }
        if e.max_devices == 0 {
            bad("engine.max_devices".into(), "must be at least 1".into());
        }
        if !(e.max_abs_z.is_finite() && e.max_abs_z >= 1.0) {
            bad(
                "engine.max_abs_z".into(),
                format!("{} must be a finite number of at least 1", e.max_abs_z),
            );
        }
        for (i, stream) in self.streams.iter().enumerate() {
            let o = self.output_for(stream);
            let key = |k: &str| {
                if stream.output.is_some() {
                    format!("streams[{i}].output.{k} (or output.{k})")
                } else {
                    format!("output.{k}")
                }
            };
            if o.forecast_every == 0 {
                bad(key("forecast_every"), "must be at least 1".into());
            }
            if let Horizons::Steps(steps) = &o.horizons {
                let h = self.model.horizon as u32;
                if let Some(bad_step) = steps.iter().find(|&&x| x == 0 || x > h) {
                    bad(
                        key("horizons"),
                        format!("step {bad_step} is outside 1..={h} (model.horizon)"),
                    );
                }
            }
        }
    }

    /// `[retrain]`.
    fn validate_retrain(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let r = &self.retrain;
        if !(0.0..1.0).contains(&r.margin) {
            bad(
                "retrain.margin".into(),
                format!("{} is out of range 0 ≤ margin < 1", r.margin),
            );
        }
        if r.holdout.as_nanos() == 0 || r.holdout >= r.window {
            bad(
                "retrain.holdout".into(),
                "must be longer than zero and shorter than retrain.window".into(),
            );
        }
        if !(r.max_over_line_ratio >= 1.0 && r.max_over_line_ratio.is_finite()) {
            bad(
                "retrain.max_over_line_ratio".into(),
                format!("{} must be a finite number ≥ 1", r.max_over_line_ratio),
            );
        }
        if r.threads == 0 {
            bad("retrain.threads".into(), "must be at least 1".into());
        }
    }

    /// `[state]`: the directory and, with the Kafka store, its changelog topics.
    fn validate_state(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let st = &self.state;
        if st.dir.as_os_str().is_empty() {
            bad("state.dir".into(), "must not be empty".into());
        }
        if st.store == StoreKind::Kafka {
            let topics: std::collections::BTreeSet<String> = self
                .streams
                .iter()
                .map(|s| changelog_topic(&st.changelog_topic, &self.kafka.group_id, &s.name))
                .collect();
            if topics.iter().any(|t| t.is_empty()) {
                bad(
                    "state.changelog_topic".into(),
                    "must not be empty when state.store = \"kafka\"".into(),
                );
            }
            let taken: Vec<&String> = self
                .streams
                .iter()
                .map(|s| &s.topic)
                .chain([&self.kafka.dead_letter_topic])
                .filter(|t| topics.contains(*t))
                .collect();
            for t in taken {
                bad(
                    "state.changelog_topic".into(),
                    format!(
                        "names topic {t:?}, which is a stream's input or the dead-letter topic"
                    ),
                );
            }
        }
        if st.parked_retention < self.engine.device_ttl {
            bad(
                "state.parked_retention".into(),
                "must not be shorter than engine.device_ttl".into(),
            );
        }
        if !(1..=100).contains(&st.keep) {
            bad(
                "state.keep".into(),
                format!("{} is out of range 1..=100", st.keep),
            );
        }
    }

    /// `[anomaly]`: the false-alarm rate and budget, overall and per stream.
    fn validate_anomaly(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let a = &self.anomaly;
        let rate_ok = |v: f64| v > 0.0 && v < 1.0;
        if !(a.alarm_budget >= 0.0 && a.alarm_budget.is_finite()) {
            bad(
                "anomaly.alarm_budget".into(),
                format!(
                    "{} must be a number of alarms a week, 0 or more",
                    a.alarm_budget
                ),
            );
        }
        for (i, s) in self.streams.iter().enumerate() {
            if let Some(b) = s.alarm_budget
                && !(b > 0.0 && b.is_finite())
            {
                bad(
                    format!("streams[{i}].alarm_budget"),
                    format!("{b} must be a number of alarms a week above 0"),
                );
            } else if s.false_alarm_rate.is_none() && !rate_ok(s.rate(a)) {
                bad(
                    format!("streams[{i}].alarm_budget"),
                    format!(
                        "a budget of {} alarms a week at one reading every {} is a rate of {}, which must be under 1: set streams[{i}].false_alarm_rate instead",
                        s.alarm_budget.unwrap_or(a.alarm_budget),
                        s.interval,
                        s.rate(a)
                    ),
                );
            }
        }
        if !rate_ok(a.false_alarm_rate) {
            bad(
                "anomaly.false_alarm_rate".into(),
                format!("{} must be strictly between 0 and 1", a.false_alarm_rate),
            );
        }
        for (i, s) in self.streams.iter().enumerate() {
            if let Some(v) = s.false_alarm_rate.filter(|v| !rate_ok(*v)) {
                bad(
                    format!("streams[{i}].false_alarm_rate"),
                    format!("{v} must be strictly between 0 and 1"),
                );
            }
            for (d, v) in s
                .device_false_alarm_rate
                .iter()
                .filter(|(_, v)| !rate_ok(**v))
            {
                bad(
                    format!("streams[{i}].device_false_alarm_rate.{d:?}"),
                    format!("{v} must be strictly between 0 and 1"),
                );
            }
        }
    }

    /// `[anomaly]`: the alarm policy, the silent and stuck alarms, maintenance windows and
    /// the detector's windows.
    fn validate_alarm_policy(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let a = &self.anomaly;
        if !(a.clear_factor >= 1.0 && a.clear_factor.is_finite()) {
            bad(
                "anomaly.clear_factor".into(),
                format!("{} must be at least 1", a.clear_factor),
            );
        }
        if !(a.stuck_factor == 0.0 || (a.stuck_factor >= 1.0 && a.stuck_factor.is_finite())) {
            bad(
                "anomaly.stuck_factor".into(),
                format!(
                    "{} must be 0 (off) or at least 1 (a sensor flat no longer than in training is not stuck)",
                    a.stuck_factor
                ),
            );
        }
        if !(a.silent_factor == 0.0 || (a.silent_factor >= 2.0 && a.silent_factor.is_finite())) {
            bad(
                "anomaly.silent_factor".into(),
                format!(
                    "{} must be 0 (off) or at least 2 (one late reading is not silence)",
                    a.silent_factor
                ),
            );
        }
        for (i, w) in self.maintenance.iter().enumerate() {
            if let Err((k, e)) = w.span() {
                bad(format!("maintenance[{i}].{k}"), e);
            }
            if let Some(s) = &w.stream
                && !self.streams.iter().any(|st| &st.name == s)
            {
                bad(
                    format!("maintenance[{i}].stream"),
                    format!("{s:?} is not a configured stream"),
                );
            }
        }
        if !a.maintenance_file.is_empty()
            && let Err(e) = read_maintenance_file(Path::new(&a.maintenance_file))
        {
            bad("anomaly.maintenance_file".into(), e.to_string());
        }
        for (k, v) in [
            ("anomaly.stuck_min_readings", a.stuck_min_readings),
            ("anomaly.min_duration", a.min_duration),
            ("anomaly.cooldown", a.cooldown),
            ("anomaly.baseline_window", a.baseline_window),
            ("anomaly.smoothing_window", a.smoothing_window),
            ("anomaly.drift_window", a.drift_window),
        ] {
            if v == 0 {
                bad(k.into(), "must be at least 1".into());
            }
        }
        if a.short_window == 0 {
            bad("anomaly.short_window".into(), "must be at least 1".into());
        }
        if a.calibration_window == 0 {
            bad(
                "anomaly.calibration_window".into(),
                "must be at least 1".into(),
            );
        }
        if a.long_window <= a.short_window {
            bad(
                "anomaly.long_window".into(),
                format!(
                    "{} must be larger than anomaly.short_window ({})",
                    a.long_window, a.short_window
                ),
            );
        }
    }

    /// `[train]`.
    fn validate_train(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let t = &self.train;
        if t.window < 2 {
            bad("train.window".into(), "must be at least 2".into());
        }
        if t.stride == 0 {
            bad("train.stride".into(), "must be at least 1".into());
        }
        if t.epochs == 0 {
            bad("train.epochs".into(), "must be at least 1".into());
        }
        if t.batch_size == 0 {
            bad("train.batch_size".into(), "must be at least 1".into());
        }
        if !(t.learning_rate > 0.0 && t.learning_rate < 1.0) {
            bad(
                "train.learning_rate".into(),
                format!("{} must be in (0, 1)", t.learning_rate),
            );
        }
        if !(t.validation_fraction > 0.0 && t.validation_fraction < 0.9) {
            bad(
                "train.validation_fraction".into(),
                format!("{} must be in (0, 0.9)", t.validation_fraction),
            );
        }
        if t.max_windows == 0 {
            bad("train.max_windows".into(), "must be at least 1".into());
        }
    }

    /// `[kafka]`: group, topics, limits and the properties sensorcast manages.
    fn validate_kafka(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            bad("kafka.brokers".into(), "must not be empty".into());
        }
        if k.group_id.trim().is_empty() {
            bad("kafka.group_id".into(), "must not be empty".into());
        }
        if k.max_payload_bytes == 0 {
            bad(
                "kafka.max_payload_bytes".into(),
                "must be at least 1".into(),
            );
        }
        if k.dead_letter_max_bytes < 1024 {
            bad(
                "kafka.dead_letter_max_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if !matches!(k.auto_offset_reset.as_str(), "earliest" | "latest") {
            bad(
                "kafka.auto_offset_reset".into(),
                format!(
                    "{:?} must be \"earliest\" or \"latest\"",
                    k.auto_offset_reset
                ),
            );
        }
        for key in k.properties.keys() {
            // Offsets are stored and committed by sensorcast (§3.1), and the others have keys
            // of their own, which a pass-through property would silently override.
            let instead = match key.as_str() {
                "enable.auto.offset.store" | "enable.auto.commit" => Some(""),
                "group.id" => Some(" (set kafka.group_id)"),
                "bootstrap.servers" => Some(" (set kafka.brokers)"),
                "auto.offset.reset" => Some(" (set kafka.auto_offset_reset)"),
                "auto.commit.interval.ms" => Some(" (set kafka.commit_interval)"),
                _ => None,
            };
            if let Some(instead) = instead {
                bad(
                    format!("kafka.properties.\"{key}\""),
                    format!("is managed by sensorcast and cannot be overridden{instead}"),
                );
            }
        }
    }

    /// Durations across sections that cannot work at zero.
    fn validate_durations(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        // Every duration that cannot work at zero: no commits, back-offs, timeouts and polls
        // that spin, a history page that never ends. (engine.max_linger and retrain.every mean
        // something at zero; retrain.holdout has its own check above.)
        for (key, d) in [
            ("engine.max_gap", &self.engine.max_gap),
            ("engine.max_future", &self.engine.max_future),
            ("model.swap_timeout", &self.model.swap_timeout),
            ("state.checkpoint_interval", &self.state.checkpoint_interval),
            ("kafka.commit_interval", &self.kafka.commit_interval),
            ("influxdb.flush_interval", &self.influxdb.flush_interval),
            ("influxdb.request_timeout", &self.influxdb.request_timeout),
            ("influxdb.connect_timeout", &self.influxdb.connect_timeout),
            ("influxdb.min_backoff", &self.influxdb.min_backoff),
            ("influxdb.max_backoff", &self.influxdb.max_backoff),
            (
                "influxdb.auth_retry_interval",
                &self.influxdb.auth_retry_interval,
            ),
            ("service.shutdown_timeout", &self.service.shutdown_timeout),
            ("state.parked_retention", &self.state.parked_retention),
            ("model.poll_interval", &self.model.poll_interval),
            ("engine.device_ttl", &self.engine.device_ttl),
            ("train.history_page", &self.train.history_page),
        ] {
            if d.as_nanos() == 0 {
                bad(key.into(), "must be longer than zero".into());
            }
        }
    }

    /// `[influxdb]`: target, credentials, batching and back-off.
    fn validate_influxdb(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        let i = &self.influxdb;
        match reqwest::Url::parse(&i.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => bad(
                "influxdb.url".into(),
                format!("{:?} is not an http(s) URL", redact_url(&i.url)),
            ),
        }
        match i.api {
            InfluxApi::V2 => {
                if i.bucket.is_empty() {
                    bad("influxdb.bucket".into(), "must not be empty".into());
                }
                for (key, v) in [
                    ("influxdb.database", &i.database),
                    ("influxdb.retention_policy", &i.retention_policy),
                    ("influxdb.username", &i.username),
                ] {
                    if !v.is_empty() {
                        bad(
                            key.into(),
                            "is a v1 setting; with api = \"v2\" use org, bucket and token".into(),
                        );
                    }
                }
            }
            InfluxApi::V1 => {
                if i.v1_database().is_empty() {
                    bad(
                        "influxdb.database".into(),
                        "must not be empty (nor the bucket it defaults to)".into(),
                    );
                }
                let password = !i.password.is_empty() || !i.password_file.is_empty();
                if i.username.is_empty() && password {
                    bad(
                        "influxdb.password".into(),
                        "is set but influxdb.username is not".into(),
                    );
                }
                let token = !i.token.is_empty() || !i.token_file.is_empty();
                if !i.username.is_empty() && token {
                    bad(
                        "influxdb.token".into(),
                        "and influxdb.username are both set: give one way to authenticate".into(),
                    );
                }
            }
        }
        if !i.ca_file.is_empty() && !i.url.starts_with("https://") {
            bad(
                "influxdb.ca_file".into(),
                format!(
                    "is set but influxdb.url {:?} is not https://",
                    redact_url(&i.url)
                ),
            );
        }
        if i.batch_bytes < 1024 {
            bad(
                "influxdb.batch_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if i.queue_batches == 0 {
            bad("influxdb.queue_batches".into(), "must be at least 1".into());
        }
        if !(1..=64).contains(&i.concurrency) {
            bad(
                "influxdb.concurrency".into(),
                format!("{} is out of range 1..=64", i.concurrency),
            );
        }
        if i.min_backoff > i.max_backoff {
            bad(
                "influxdb.min_backoff".into(),
                "must not exceed influxdb.max_backoff".into(),
            );
        }
    }

    /// `[http]` and `[log]`.
    fn validate_service(&self, p: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "http.listen".into(),
                format!(
                    "{:?} is not an address like 127.0.0.1:9898",
                    self.http.listen
                ),
            );
        }
        if self.log.level.trim().is_empty() {
            bad("log.level".into(), "must not be empty".into());
        } else if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad(
                "log.level".into(),
                format!("{:?} is not a valid tracing filter", self.log.level),
            );
        }
    }

    /// What is written per reading of `stream`: `[output]` with the stream's overrides.
    pub fn output_for(&self, stream: &StreamConfig) -> OutputConfig {
        let mut o = self.output.clone();
        if let Some(x) = &stream.output {
            if let Some(v) = x.readings {
                o.readings = v;
            }
            if let Some(v) = &x.horizons {
                o.horizons = v.clone();
            }
            if let Some(v) = x.band {
                o.band = v;
            }
            if let Some(v) = x.forecast_every {
                o.forecast_every = v;
            }
            if let Some(v) = x.anomaly {
                o.anomaly = v;
            }
        }
        o
    }

    /// The stream called `name`, or the only stream when `name` is `None`.
    pub fn stream(&self, name: Option<&str>) -> Result<&StreamConfig, StreamChoiceError> {
        match name {
            Some(n) => self.streams.iter().find(|s| s.name == n).ok_or_else(|| {
                StreamChoiceError::Unknown {
                    name: n.to_string(),
                    known: self.streams.iter().map(|s| s.name.clone()).collect(),
                }
            }),
            None if self.streams.len() == 1 => Ok(&self.streams[0]),
            None => Err(StreamChoiceError::Several),
        }
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render config: {e}\n"),
        };
        mask_secrets(&mut value);
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Whether a key (ours or a librdkafka property) holds a secret: a token, a password, a
/// client secret, a private key in PEM (`ssl.key.pem`), SASL/OAUTHBEARER settings that carry
/// credentials. Keys naming a file that holds one (`token_file`, `ssl.key.location`) do not.
pub fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    let named = [
        "token",
        "password",
        "secret",
        "key.pem",
        "private",
        "credential",
    ]
    .iter()
    .any(|s| lower.contains(s))
        || lower == "sasl.oauthbearer.config"
        || lower == "sasl.jaas.config";
    named && !lower.ends_with("_file") && !lower.ends_with(".location")
}

/// `url` for messages: credentials in it (`https://user:pass@host`) and secret query
/// parameters (`p`, `password`, `token`, …) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k == "p" || is_secret_key(&k);
                        (
                            k.into_owned(),
                            if secret { "***".into() } else { v.into_owned() },
                        )
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Not a URL: whatever precedes an `@` may be credentials.
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        },
    }
}

/// Replaces the value of every key that looks like a secret with `"***"`, and the
/// credentials in `url`s.
fn mask_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                if k == "url"
                    && let toml::Value::String(s) = v
                {
                    *s = redact_url(s);
                    continue;
                }
                let secret = is_secret_key(k);
                if secret {
                    if let toml::Value::String(s) = v
                        && !s.is_empty()
                    {
                        *s = "***".into();
                    }
                } else {
                    mask_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// The changelog topic of a stream: `template` with `{group}` and `{stream}` filled in, and
/// any character Kafka does not allow in a topic name replaced by `_`.
pub fn changelog_topic(template: &str, group: &str, stream: &str) -> String {
    template
        .replace("{group}", group)
        .replace("{stream}", stream)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(249)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn topic_names_are_filled_in_and_legal() {
        assert_eq!(
            changelog_topic("{group}.{stream}.checkpoints", "plant 1", "pumps/a"),
            "plant_1.pumps_a.checkpoints"
        );
    }

    #[test]
    fn an_alarm_budget_is_converted_with_the_streams_interval_and_a_rate_wins() {
        let mut cfg = Config::default();
        cfg.streams[0].interval = HumanDuration::from_secs(60);
        let a = cfg.anomaly.clone();
        assert_eq!(
            cfg.streams[0].rate(&a),
            a.false_alarm_rate,
            "no budget: the rate"
        );
        cfg.anomaly.alarm_budget = 1.0;
        let a = cfg.anomaly.clone();
        // One alarm a week at one reading a minute: one reading in 10,080.
        assert!((cfg.streams[0].rate(&a) - 1.0 / 10_080.0).abs() < 1e-12);
        assert!((cfg.streams[0].budget_of(cfg.streams[0].rate(&a)) - 1.0).abs() < 1e-9);
        cfg.streams[0].alarm_budget = Some(2.0);
        assert!((cfg.streams[0].rate(&a) - 2.0 / 10_080.0).abs() < 1e-12);
        cfg.streams[0].false_alarm_rate = Some(0.01);
        assert_eq!(cfg.streams[0].rate(&a), 0.01, "an explicit rate wins");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        // A budget larger than the readings of a week is refused, naming the key.
        cfg.streams[0].false_alarm_rate = None;
        cfg.streams[0].alarm_budget = Some(20_000.0);
        let p = cfg.validate();
        assert!(
            p.iter()
                .any(|p| p.key == "streams[0].alarm_budget"
                    && p.message.contains("false_alarm_rate")),
            "{p:?}"
        );
    }
    #[test]
    fn a_bad_window_file_names_the_file_entry_and_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[[maintenance]]\nfrom = \"2026-12-05T08:00:00Z\"\nuntil = \"2026-12-05T07:00:00Z\"\n",
        )
        .expect("write");
        let e = read_maintenance_file(&path)
            .expect_err("until before from")
            .to_string();
        assert!(e.contains("m.toml: maintenance[0].until"), "{e}");
        std::fs::write(
            &path,
            "[[maintenance]]\nfrom = \"soon\"\nuntil = \"later\"\n",
        )
        .expect("write");
        let e = read_maintenance_file(&path)
            .expect_err("not times")
            .to_string();
        assert!(e.contains("maintenance[0].from"), "{e}");
    }

    #[test]
    fn credentials_in_urls_and_secret_keys_are_masked() {
        assert_eq!(
            redact_url("https://admin:pw@db.plant:8086/influx?token=abc&db=x&p=pw2"),
            "https://***@db.plant:8086/influx?token=***&db=x&p=***"
        );
        assert_eq!(redact_url("http://db:8086"), "http://db:8086/");
        assert_eq!(redact_url("not a url with user:pw@host"), "***@host");
        for k in [
            "token",
            "password",
            "sasl.password",
            "ssl.key.pem",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "token_file",
            "ssl.key.location",
            "ssl.ca.location",
            "url",
            "username",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let f = write(text);
        Config::load_with_env(
            Some(f.path()),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn default_toml_matches_code_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let cfg = Config::load_with_env(Some(&path), []).expect("config/default.toml loads");
        assert_eq!(cfg, Config::default());
        // And every key of the config structs is written out there (documented), so the file
        // cannot fall behind the code.
        let file: toml::Value =
            toml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("toml");
        let code = toml::Value::try_from(Config::default()).expect("serialise");
        fn missing(code: &toml::Value, file: &toml::Value, at: &str, out: &mut Vec<String>) {
            match (code, file) {
                (toml::Value::Table(c), toml::Value::Table(f)) => {
                    for (k, v) in c {
                        let key = if at.is_empty() {
                            k.clone()
                        } else {
                            format!("{at}.{k}")
                        };
                        match f.get(k) {
                            Some(fv) => missing(v, fv, &key, out),
                            None => out.push(key),
                        }
                    }
                }
                (toml::Value::Array(c), toml::Value::Array(f)) => {
                    for (i, (cv, fv)) in c.iter().zip(f).enumerate() {
                        missing(cv, fv, &format!("{at}[{i}]"), out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        missing(&code, &file, "", &mut out);
        assert!(
            out.is_empty(),
            "keys missing from config/default.toml: {out:?}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[model]\nhiden = 3\n", &[]).unwrap_err().to_string();
        assert!(err.contains("hiden"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load("[model]\nhidden = \"big\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_keys() {
        let err = load(
            "[model]\nhidden = 0\n[train]\nvalidation_fraction = 1.5\n",
            &[],
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["model.hidden", "train.validation_fraction"]);
    }

    #[test]
    fn env_overrides_file() {
        let cfg = load(
            "[model]\nhidden = 16\n",
            &[("SENSORCAST__MODEL__HIDDEN", "24"), ("OTHER", "x")],
        )
        .expect("loads");
        assert_eq!(cfg.model.hidden, 24);
        let err = load("", &[("SENSORCAST__MODEL__HIDDEN", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment") && err.contains("hidden"),
            "{err}"
        );
    }

    #[test]
    fn durations_parse_and_reject() {
        let cfg = load("[engine]\nmax_gap = \"90s\"\n", &[]).expect("loads");
        assert_eq!(cfg.engine.max_gap.as_nanos(), 90_000_000_000);
        let err = load("[engine]\nmax_gap = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn a_zero_duration_that_would_spin_or_stall_is_refused_by_its_key() {
        // A zero commit interval disables commits, a zero back-off, timeout or poll interval
        // spins, a zero history page never ends.
        let keys = [
            ("engine", "max_gap"),
            ("engine", "max_future"),
            ("model", "swap_timeout"),
            ("state", "checkpoint_interval"),
            ("kafka", "commit_interval"),
            ("influxdb", "flush_interval"),
            ("influxdb", "request_timeout"),
            ("influxdb", "connect_timeout"),
            ("influxdb", "min_backoff"),
            ("influxdb", "max_backoff"),
            ("influxdb", "auth_retry_interval"),
            ("service", "shutdown_timeout"),
            ("state", "parked_retention"),
            ("model", "poll_interval"),
            ("engine", "device_ttl"),
            ("train", "history_page"),
        ];
        for (section, key) in keys {
            let err = load(&format!("[{section}]\n{key} = \"0s\"\n"), &[])
                .expect_err(&format!("{section}.{key} = 0s"));
            let ConfigError::Invalid { problems, .. } = err else {
                panic!("expected Invalid, got {err}")
            };
            assert!(
                problems
                    .iter()
                    .any(|p| p.key == format!("{section}.{key}") && p.message.contains("zero")),
                "{section}.{key}: {problems:?}"
            );
        }
        // Zero where it has a meaning: no linger, no scheduled retraining.
        let cfg = load(
            "[engine]\nmax_linger = \"0s\"\n[retrain]\nevery = \"0s\"\n",
            &[],
        );
        assert!(cfg.is_ok(), "{:?}", cfg.err().map(|e| e.to_string()));
    }

    #[test]
    fn kafka_properties_cannot_override_what_sensorcast_manages() {
        for (property, instead) in [
            ("auto.offset.reset", "kafka.auto_offset_reset"),
            ("auto.commit.interval.ms", "kafka.commit_interval"),
            ("group.id", "kafka.group_id"),
            ("bootstrap.servers", "kafka.brokers"),
            ("enable.auto.commit", ""),
            ("enable.auto.offset.store", ""),
        ] {
            let err = load(
                &format!("[kafka.properties]\n\"{property}\" = \"x\"\n"),
                &[],
            )
            .expect_err(property)
            .to_string();
            assert!(
                err.contains(&format!("kafka.properties.\"{property}\"")) && err.contains(instead),
                "{property}: {err}"
            );
        }
    }

    #[test]
    fn several_streams_need_a_choice() {
        let cfg = load(
            "[[streams]]\nname = \"a\"\ntopic = \"t.a\"\nfeatures = [\"x\"]\n[[streams]]\nname = \"b\"\ntopic = \"t.b\"\nfeatures = [\"y\"]\n",
            &[],
        )
        .expect("loads");
        assert!(cfg.stream(None).is_err());
        assert_eq!(cfg.stream(Some("b")).expect("b").features, ["y"]);
        assert!(
            cfg.stream(Some("c"))
                .unwrap_err()
                .to_string()
                .contains("\"c\"")
        );
    }

    #[test]
    fn the_changelog_topic_must_be_a_topic_of_its_own() {
        let cfg = load("[state]\nstore = \"kafka\"\n", &[]).expect("loads");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let problems = load(
            "[state]\nstore = \"kafka\"\nchangelog_topic = \"{stream}\"\n[[streams]]\nname = \"pumps\"\ntopic = \"pumps\"\nfeatures = [\"x\"]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            problems.contains("state.changelog_topic") && problems.contains("\"pumps\""),
            "{problems}"
        );
        let err = load("[state]\nstore = \"s3\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3"), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        let mut v: toml::Value =
            toml::from_str("[influxdb]\ntoken = \"abc\"\ntoken_file = \"/run/t\"\n").expect("toml");
        mask_secrets(&mut v);
        let s = v.to_string();
        assert!(
            s.contains("***") && !s.contains("abc") && s.contains("/run/t"),
            "{s}"
        );
    }
}
