//! Helpers of the end-to-end tests: real servers (Apache Kafka from scripts/kafka.sh, shared
//! or of a test's own; VictoriaMetrics and InfluxDB started per test) and the real binary.
#![allow(dead_code)]

use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sensorcast");
pub const FEATURES: [&str; 4] = ["vibration", "temperature", "current", "pressure"];
pub const HORIZON: usize = 2;

pub fn brokers() -> String {
    std::env::var("SENSORCAST_TEST_BROKERS")
        .expect("SENSORCAST_TEST_BROKERS: run the integration tests through scripts/test.sh")
}

/// An Apache Kafka broker of the test's own, run by `scripts/kafka.sh` (the script that runs the
/// shared one): for tests that restart a broker or need broker settings of their own. Its data
/// directory lives in the test's folder, so a restart (`down` then `up`) comes back as the same
/// broker, on the same port, with its topics, offsets and committed group offsets.
pub struct Broker {
    dir: PathBuf,
    addr: String,
    running: bool,
}

impl Broker {
    /// Starts a broker in `dir/kafka` with the given extra server properties (`key=value`).
    pub fn start(dir: &Path, properties: &[&str]) -> Self {
        let dir = dir.join("kafka");
        let addr = kafka_sh(&["start", &dir.to_string_lossy()], properties);
        Broker {
            dir,
            addr,
            running: true,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The broker's own log (for a failing test's message).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/server.log")).unwrap_or_default()
    }

    /// Starts the stopped broker again from its data directory.
    pub fn up(&mut self) {
        assert!(!self.running, "the broker is already running");
        let addr = kafka_sh(&["start", &self.dir.to_string_lossy()], &[]);
        assert_eq!(addr, self.addr, "a restarted broker keeps its address");
        self.running = true;
    }

    /// Stops the broker the way a restart does (SIGTERM: a clean shutdown).
    pub fn down(&mut self) {
        if self.running {
            kafka_sh(&["stop", &self.dir.to_string_lossy()], &[]);
            self.running = false;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

fn kafka_sh(args: &[&str], extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let out = Command::new(&script)
        .args(args)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/kafka.sh (needs java and mvn, as scripts/test.sh installs)");
    assert!(out.status.success(), "scripts/kafka.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Minimal HTTP/1.1 client (the tests need GET and form POST only).
pub fn http(method: &str, addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encoding of a form value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A database `serve` writes to in a test: what goes into the config's `[influxdb]` section.
pub trait Database {
    /// `key = value` lines of `[influxdb]` (url, api, bucket or database).
    fn influx_config(&self) -> String;
}

impl Database for Vm {
    fn influx_config(&self) -> String {
        format!("url = \"http://{}\"\n", self.addr())
    }
}

/// A real InfluxDB 1.6 (Debian's `influxdb`, installed by scripts/test.sh) of this test's own,
/// with database `sensorcast`.
pub struct Influx {
    child: Option<Child>,
    pub port: u16,
    rpc_port: u16,
    dir: tempfile::TempDir,
    auth: bool,
}

/// The database the tests write to.
pub const INFLUX_DB: &str = "sensorcast";

impl Database for Influx {
    fn influx_config(&self) -> String {
        format!(
            "url = \"http://{}\"\napi = \"v1\"\ndatabase = \"{INFLUX_DB}\"\n",
            self.addr()
        )
    }
}

impl Influx {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With authentication on and one admin user, `admin` / `secret`.
    pub fn start_with_auth() -> Self {
        Self::start_with(true)
    }

    fn start_with(auth: bool) -> Self {
        let mut db = Influx {
            child: None,
            port: free_port(),
            rpc_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            auth,
        };
        db.up();
        if auth {
            // Allowed without credentials while no admin exists.
            let q = "CREATE USER admin WITH PASSWORD 'secret' WITH ALL PRIVILEGES";
            let (status, body) = http("POST", &db.addr(), "/query", &format!("q={}", urlencode(q)))
                .unwrap_or((0, String::new()));
            assert_eq!(status, 200, "CREATE USER: {body}");
        }
        let (status, body) = db.post_query(&format!("CREATE DATABASE {INFLUX_DB}"));
        assert_eq!(status, 200, "CREATE DATABASE: {body}");
        db
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let d = self.dir.path();
        let conf = d.join("influxdb.conf");
        std::fs::write(
            &conf,
            format!(
                r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
  auth-enabled = {auth}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"#,
                rpc = self.rpc_port,
                http = self.port,
                auth = self.auth,
                d = d.display()
            ),
        )
        .expect("influxdb.conf");
        let bin = std::env::var("SENSORCAST_TEST_INFLUXD_BIN").unwrap_or_else(|_| "influxd".into());
        let child = Command::new(bin)
            .args(["run", "-config"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("influxd.log")).expect("log"))
            .spawn()
            .expect("start influxd (Debian's influxdb package; scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = self.addr();
        wait_until("InfluxDB", Duration::from_secs(30), || {
            http("GET", &addr, "/ping", "").is_some_and(|(s, _)| s == 204)
        });
    }

    /// Stops the server gracefully (SIGTERM: what it acknowledged is in its WAL).
    pub fn down(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }

    fn post_query(&self, q: &str) -> (u16, String) {
        // Credentials go in the URL: InfluxDB 1.x does not read them from a form body.
        let path = if self.auth {
            "/query?u=admin&p=secret"
        } else {
            "/query"
        };
        http(
            "POST",
            &self.addr(),
            path,
            &format!("db={INFLUX_DB}&epoch=ns&q={}", urlencode(q)),
        )
        .unwrap_or((0, String::new()))
    }

    /// Runs an InfluxQL query; the JSON answer.
    pub fn query(&self, q: &str) -> serde_json::Value {
        let (status, body) = self.post_query(q);
        assert_eq!(status, 200, "{q}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// The rows of an InfluxQL query's first series (none when it has none).
    pub fn rows(&self, q: &str) -> Vec<serde_json::Value> {
        self.query(q)["results"][0]["series"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Points of `measurement` that have `field`.
    pub fn count(&self, measurement: &str, field: &str) -> usize {
        let v = self.query(&format!("SELECT COUNT(\"{field}\") FROM \"{measurement}\""));
        v["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0) as usize
    }

    /// Tag sets of `measurement`'s series.
    pub fn series(&self, measurement: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        let v = self.query(&format!("SHOW SERIES FROM \"{measurement}\""));
        v["results"][0]["series"][0]["values"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r[0].as_str())
                    .map(|key| {
                        key.split(',')
                            .skip(1)
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.down();
    }
}

/// Either database, for tests that run against both.
pub enum Db {
    /// VictoriaMetrics (v2 write API).
    Vm(Vm),
    /// InfluxDB 1.6 (v1 write API).
    Influx(Influx),
}

impl Database for Db {
    fn influx_config(&self) -> String {
        match self {
            Db::Vm(v) => v.influx_config(),
            Db::Influx(i) => i.influx_config(),
        }
    }
}

impl Db {
    pub fn vm() -> Self {
        Db::Vm(Vm::start())
    }

    pub fn influx() -> Self {
        Db::Influx(Influx::start())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Db::Vm(_) => "VictoriaMetrics",
            Db::Influx(_) => "InfluxDB 1.6",
        }
    }

    pub fn up(&mut self) {
        match self {
            Db::Vm(v) => v.up(),
            Db::Influx(i) => i.up(),
        }
    }

    pub fn down(&mut self) {
        match self {
            Db::Vm(v) => v.down(),
            Db::Influx(i) => i.down(),
        }
    }

    /// Points of `measurement` with `field`: distinct (series, timestamp) pairs, and writes
    /// kept. InfluxDB keeps one value per series and timestamp, so the two are equal there;
    /// VictoriaMetrics keeps every write, so a duplicate shows.
    pub fn points(&self, measurement: &str, field: &str) -> (usize, usize) {
        match self {
            Db::Vm(v) => {
                let (u, r, _) = v.samples(&format!("{measurement}_{field}"));
                (u, r)
            }
            Db::Influx(i) => {
                let n = i.count(measurement, field);
                (n, n)
            }
        }
    }

    /// Tag sets of the series of `measurement` (with `field`, for VictoriaMetrics).
    pub fn series(
        &self,
        measurement: &str,
        field: &str,
    ) -> Vec<std::collections::BTreeMap<String, String>> {
        match self {
            Db::Vm(v) => v
                .samples(&format!("{measurement}_{field}"))
                .2
                .iter()
                .map(|m| {
                    m.as_object()
                        .map(|o| {
                            o.iter()
                                .filter(|(k, _)| *k != "__name__")
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect(),
            Db::Influx(i) => i.series(measurement),
        }
    }
}

/// A VictoriaMetrics server of this test's own.
pub struct Vm {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Vm {
    pub fn start() -> Self {
        let mut vm = Vm {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        vm.up();
        vm
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let bin =
            std::env::var("SENSORCAST_TEST_VM_BIN").unwrap_or_else(|_| "victoria-metrics".into());
        let child = Command::new(bin)
            .arg(format!("-httpListenAddr={}", self.addr()))
            .arg(format!("-storageDataPath={}", self.dir.path().display()))
            .args([
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-loggerLevel=ERROR",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start victoria-metrics");
        self.child = Some(child);
        let addr = self.addr();
        wait_until("VictoriaMetrics", Duration::from_secs(30), || {
            http("GET", &addr, "/health", "").is_some_and(|(s, _)| s == 200)
        });
    }

    /// Stops the server gracefully: VictoriaMetrics keeps recent samples in memory, and a
    /// SIGKILL would lose data it already acknowledged — not what this outage is about.
    pub fn down(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }

    /// Distinct (series, timestamp) pairs and raw samples of a metric.
    pub fn samples(&self, metric: &str) -> (usize, usize, Vec<serde_json::Value>) {
        let _ = http("GET", &self.addr(), "/internal/force_flush", "");
        let Some((200, body)) = http(
            "POST",
            &self.addr(),
            "/api/v1/export",
            &format!("match[]={metric}"),
        ) else {
            return (0, 0, vec![]);
        };
        let (mut unique, mut raw, mut metas) = (0, 0, Vec::new());
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("export line");
            let ts: Vec<i64> = v["timestamps"]
                .as_array()
                .expect("timestamps")
                .iter()
                .filter_map(|t| t.as_i64())
                .collect();
            raw += ts.len();
            unique += ts.iter().collect::<HashSet<_>>().len();
            metas.push(v["metric"].clone());
        }
        (unique, raw, metas)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.down();
    }
}

/// A running `sensorcast serve`.
pub struct Serve {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `serve` and waits until it is ready.
    pub fn start(cfg: &Path, dir: &Path, http_port: u16) -> Self {
        Self::start_logging(cfg, dir, http_port, "sensorcast=debug,info")
    }

    /// Starts `serve` with `RUST_LOG` = `log` and waits until it is ready.
    pub fn start_logging(cfg: &Path, dir: &Path, http_port: u16, log: &str) -> Self {
        let s = Self::spawn_logging(cfg, dir, http_port, log);
        let t0 = Instant::now();
        loop {
            let ready = http("GET", &s.http, "/health/ready", "");
            if ready.as_ref().is_some_and(|(st, _)| *st == 200) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "serve not ready after 60 s: {ready:?}\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `serve` without waiting.
    pub fn spawn(cfg: &Path, dir: &Path, http_port: u16) -> Self {
        Self::spawn_logging(cfg, dir, http_port, "sensorcast=debug,info")
    }

    fn spawn_logging(cfg: &Path, dir: &Path, http_port: u16, rust_log: &str) -> Self {
        let log = dir.join(format!("serve-{}.log", free_port()));
        let child = Command::new(BIN)
            .args(["serve", "--config", cfg.to_str().expect("utf-8")])
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start serve");
        Serve {
            child,
            http: format!("127.0.0.1:{http_port}"),
            log,
        }
    }

    /// Sum of a metric's samples: `name` is a metric name (every label set counts) or a
    /// name with a label set, as the exposition writes it.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `/metrics` as text (empty when it does not answer).
    pub fn metrics_text(&self) -> String {
        http("GET", &self.http, "/metrics", "")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Sum of a metric's samples whose labels include every `(name, value)` of `labels`.
    pub fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics_text()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                let (set, value) = rest.split_once("} ")?;
                labels
                    .iter()
                    .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn terminate(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "serve did not exit after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a server the way an orderly restart does (SIGTERM, then SIGKILL after 20 s).
pub fn stop(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let t = Instant::now();
    while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn run(args: &[&str]) {
    let o = Command::new(BIN)
        .args(args)
        .output()
        .expect("run sensorcast");
    assert!(
        o.status.success(),
        "sensorcast {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An admin client of `brokers` that never makes a broker auto-create a topic by asking for
/// it, and a runtime to run its requests on.
fn admin(brokers: &str) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (admin, rt)
}

pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let (admin, rt) = admin(brokers);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let results = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics");
    for r in results {
        if let Err((t, e)) = r {
            panic!("cannot create topic {t}: {e}");
        }
    }
}

/// Deletes a topic and waits until the broker has forgotten it (a topic re-created with the
/// same name is then a new incarnation, with a new topic id and offsets from 0).
pub fn delete_topic(brokers: &str, topic: &str) {
    // Asking for the metadata of a missing topic must not create it again (`admin`).
    let (admin, rt) = admin(brokers);
    for r in rt
        .block_on(admin.delete_topics(&[topic], &AdminOptions::new()))
        .expect("delete topics")
    {
        if let Err((t, e)) = r {
            panic!("cannot delete topic {t}: {e}");
        }
    }
    wait_until("the topic is gone", Duration::from_secs(30), || {
        admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| m.topics().iter().all(|t| t.partitions().is_empty()))
            .unwrap_or(false)
    });
}

/// Unique names per test run, so tests can share one broker.
pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), free_port())
}

pub struct Stream<'a> {
    pub name: &'a str,
    pub topic: &'a str,
    pub format: &'a str,
}

/// The checkpoint store `setup` configures: the directory store, so that a test's
/// checkpoints are where it looks and the mock cluster (which cannot create topics) works; a
/// test of the default store removes this line ([`TEST_STORE`] is matched literally).
pub const TEST_STORE: &str = "store = \"dir\"\n";

/// Writes a config and trains one model per stream on simulated history.
pub fn setup(
    dir: &Path,
    brokers: &str,
    db: &dyn Database,
    group: &str,
    streams: &[Stream<'_>],
    extra: &str,
) -> (PathBuf, u16) {
    let http_port = free_port();
    let mut text = String::new();
    for s in streams {
        text.push_str(&format!(
            "[[streams]]\nname = \"{}\"\ntopic = \"{}\"\nformat = \"{}\"\nfeatures = {:?}\ninterval = \"1s\"\n\n",
            s.name, s.topic, s.format, FEATURES
        ));
    }
    text.push_str(&format!(
        r#"[model]
registry = "{registry}"
hidden = 16
horizon = {HORIZON}

[train]
window = 16
epochs = 3

[engine]
warmup = 5

[kafka]
brokers = "{brokers}"
group_id = "{group}"
commit_interval = "500ms"

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "10000"

[influxdb]
{influx}flush_interval = "100ms"
max_backoff = "1s"
min_backoff = "50ms"

[http]
listen = "127.0.0.1:{http_port}"

[service]
shutdown_timeout = "20s"

[state]
{TEST_STORE}dir = "{state}"
checkpoint_interval = "1s"
{extra}"#,
        registry = dir.join("models").display(),
        state = dir.join("state").display(),
        influx = db.influx_config(),
    ));
    let cfg = dir.join("sensorcast.toml");
    std::fs::write(&cfg, text).expect("config");
    let history = dir.join("history.jsonl");
    run(&[
        "simulate",
        "--devices",
        "4",
        "--readings",
        "200",
        "--interval",
        "1s",
        "--out",
        history.to_str().unwrap(),
    ]);
    for s in streams {
        run(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--input",
            history.to_str().unwrap(),
            "--stream",
            s.name,
        ]);
    }
    (cfg, http_port)
}

pub fn simulate(
    brokers: &str,
    topic: &str,
    format: &str,
    devices: usize,
    readings: usize,
    end: &str,
) {
    run(&[
        "simulate",
        "--devices",
        &devices.to_string(),
        "--readings",
        &readings.to_string(),
        "--format",
        format,
        "--interval",
        "1s",
        "--end",
        end,
        "--brokers",
        brokers,
        "--topic",
        topic,
    ]);
}

/// Committed offsets summed over a topic's partitions (each partition's committed offset is
/// the count of its messages fully handled). tansu 0.6.0 did not report high watermarks
/// reliably through ListOffsets, so tests compare with the number of messages they produced.
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum()
}

pub fn now_rfc3339(offset_s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_s)).to_rfc3339()
}

/// The current model version of stream "pumps" in the registry `setup` writes under `dir`.
pub fn current_model(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("models/pumps/current"))
        .expect("current")
        .trim()
        .to_string()
}

/// Settings that train a deliberately weak model (one epoch on four windows).
pub const WEAK_TRAINING: [(&str, &str); 2] = [
    ("SENSORCAST__TRAIN__EPOCHS", "1"),
    ("SENSORCAST__TRAIN__MAX_WINDOWS", "4"),
];

/// Runs `sensorcast ARGS --config CFG` with `env` added: (success, stdout, stderr).
pub fn with_config(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(cfg)
        .envs(env.iter().copied())
        .output()
        .expect("run sensorcast");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Rewrites the config file `cfg` with `f`.
pub fn config_with(cfg: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(cfg).expect("config");
    std::fs::write(cfg, f(text)).expect("config");
}

/// Adds `keys` (TOML lines) at the top of `[section]` of the config file `cfg`.
pub fn add_keys(cfg: &Path, section: &str, keys: &str) {
    config_with(cfg, |text| {
        let header = format!("{section}\n");
        assert!(text.contains(&header), "{} has no {section}", cfg.display());
        text.replacen(
            &header,
            &format!("{header}{}\n", keys.trim_end_matches('\n')),
            1,
        )
    });
}
