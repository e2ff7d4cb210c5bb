//! InfluxDB sink: a thin client of the write APIs, v2 (`POST /api/v2/write`) and v1
//! (`POST /write`), line protocol.
//!
//! Keeps invariant §3.1 (nothing is lost): a batch is acknowledged only when InfluxDB has
//! accepted every point of it; failures are retried with exponential backoff and jitter,
//! honouring `Retry-After`, until they succeed or shutdown runs out of time. Authentication
//! and bucket errors (401/403/404) mark the service not ready and are retried slowly. A 400
//! or 413 splits the batch to isolate the offending lines; a single line InfluxDB rejects
//! is logged, counted and dropped, so one bad point cannot stall a partition forever.
//!
//! A 422 is a partial write: InfluxDB stored the points it could and refused the rest for good
//! (outside the bucket's retention, field type conflicts), so retrying cannot help. InfluxDB
//! 1.x/2.x say how many they refused (`… dropped=N` in the message); that count is what is
//! reported as rejected. A 422 without a count leaves it unknown — anywhere from one point to
//! the whole request — and is counted as such instead of being guessed.
//!
//! The `influxdb2` crate was the users' preference, but its write call discards the
//! response headers (no `Retry-After`) and pins reqwest 0.11, whose rustls stack carries a
//! known vulnerability; this writer does the one request the service needs on reqwest 0.12.

pub mod stage;

use crate::config::InfluxConfig;
use crate::influx::{Target, refusal};
use crate::telemetry::{Health, Metrics, RateLimit, labels};
use bytes::Bytes;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why a write gave up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Shutdown's deadline passed before InfluxDB accepted the points.
    #[error("aborted by shutdown before InfluxDB accepted the batch")]
    Aborted,
    /// Configuration that cannot work.
    #[error(transparent)]
    Target(#[from] crate::influx::TargetError),
}

/// Result of writing a body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// Lines InfluxDB is known to have accepted.
    pub written: u64,
    /// Lines InfluxDB is known to have rejected for good (dropped, not retried): single lines
    /// refused with 400, and the count a 422 partial write reports.
    pub rejected: u64,
    /// Lines of 422 partial writes that did not say how many points were refused: some of
    /// them are written, some (at least one, possibly all) are not, and nothing tells which.
    pub unknown: u64,
}

/// The writer.
pub struct Writer {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<String>,
    cfg: InfluxConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    log_limit: RateLimit,
    // Consecutive failed attempts; drives the backoff and resets on success.
    failures: AtomicU64,
    // Single points rejected since the last accepted request.
    rejected_in_a_row: AtomicU64,
    // Where refused points go (`kafka.dead_letter_topic`), and their deliveries not yet
    // handed to the sink stage.
    dead_letters: Option<crate::serve::dead_letters::DeadLetters>,
    refused: std::sync::Mutex<Vec<crate::serve::dead_letters::DeadLetterAck>>,
}

/// Single-point rejections in a row after which rejection is treated as systemic.
const SYSTEMIC_REJECTIONS: u64 = 1000;

enum Attempt {
    Done,
    /// Accepted in part (422): InfluxDB rejected some points for good (outside the bucket's
    /// retention, field type conflicts) and wrote the rest; `dropped` is how many it says it
    /// rejected, when it says.
    Partial {
        dropped: Option<u64>,
        text: String,
    },
    /// Split and retry halves (400, 413).
    Split(u16, String),
    /// Retry the same body after the delay.
    Retry(Duration, &'static str),
}

impl Writer {
    /// A writer for `cfg`. The token comes from `token_file` when set, else `token` (the
    /// password likewise).
    pub fn new(
        cfg: &InfluxConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, SinkError> {
        let target = Target::new(cfg)?;
        health.sink_reachable.store(true, Ordering::Relaxed);
        Ok(Self {
            client: target.client,
            url: target.url,
            auth: target.auth,
            cfg: cfg.clone(),
            metrics,
            health,
            log_limit: RateLimit::default(),
            failures: AtomicU64::new(0),
            rejected_in_a_row: AtomicU64::new(0),
            dead_letters: None,
            refused: Default::default(),
        })
    }

    /// Points InfluxDB refuses for good go to the dead-letter topic instead of being dropped.
    pub fn with_dead_letters(
        mut self,
        dead_letters: crate::serve::dead_letters::DeadLetters,
    ) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// The deliveries of refused points produced since the last call: the sink stage holds
    /// checkpoints back until they are settled.
    pub fn take_refused(&self) -> Vec<crate::serve::dead_letters::DeadLetterAck> {
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes `body` (`lines` whole lines of line protocol, as its writer counted them) until
    /// InfluxDB has accepted every line, or until `abort` turns true.
    pub async fn write(
        &self,
        body: impl Into<Bytes>,
        lines: u64,
        abort: &mut watch::Receiver<bool>,
    ) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();
        // Work list of bodies still to write, in order, with their line counts where known;
        // splitting pushes halves back (counted when written). Halves and retries share the
        // one buffer (no copy per request).
        let mut pending: Vec<(Bytes, Option<u64>)> = vec![(body.into(), Some(lines))];
        while let Some((chunk, lines)) = pending.pop() {
            if chunk.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // Backoff grows per chunk, never across chunks.
            let mut attempt = 0u32;
            loop {
                // A request in flight is given up at shutdown's deadline, not at the end of
                // influxdb.request_timeout (a server that never answers).
                let outcome = tokio::select! {
                    a = self.attempt(chunk.clone()) => a,
                    _ = abort.wait_for(|a| *a) => return Err(SinkError::Aborted),
                };
                match outcome {
                    Attempt::Done => {
                        report.written += lines.unwrap_or_else(|| line_count(&chunk) as u64);
                        break;
                    }
                    Attempt::Partial { dropped, text } => {
                        self.partly_written(&chunk, dropped, &text, &mut report);
                        break;
                    }
                    Attempt::Split(status, text) => {
                        if line_count(&chunk) > 1 {
                            let (first, second) = split_lines(&chunk);
                            // Last pushed is written first: keep the original order.
                            pending.push((second, None));
                            pending.push((first, None));
                        } else if self.rejected_in_a_row.load(Ordering::Relaxed)
                            >= SYSTEMIC_REJECTIONS
                        {
                            self.rejecting_all(status, &text, abort).await?;
                            pending.push((chunk, lines));
                        } else {
                            self.rejected(&chunk, status, &text, &mut report);
                        }
                        break;
                    }
                    Attempt::Retry(delay, cause) => {
                        attempt += 1;
                        self.retry_after(delay, cause, attempt, abort).await?;
                    }
                }
            }
        }
        Ok(report)
    }

    /// A chunk InfluxDB accepted in part (422): the rejected points cannot be written later
    /// either, so retrying would stall the partition forever: they are counted (`dropped`,
    /// where the server says how many) and the write moves on.
    fn partly_written(
        &self,
        chunk: &[u8],
        dropped: Option<u64>,
        text: &str,
        report: &mut WriteReport,
    ) {
        let lines = line_count(chunk) as u64;
        let outcome = match dropped {
            Some(n) => {
                let n = n.min(lines);
                self.metrics.sink_rejected_points.inc_by(n);
                report.written += lines - n;
                report.rejected += n;
                "reported"
            }
            None => {
                report.unknown += lines;
                "unknown"
            }
        };
        self.metrics
            .sink_partial_writes
            .get_or_create(&labels(&[("count", outcome)]))
            .inc();
        if let Some(suppressed) = self.log_limit.check("partial", Duration::from_secs(10)) {
            match dropped {
                Some(n) => {
                    tracing::error!(status = 422, lines, rejected = n.min(lines), response = %text, suppressed, "InfluxDB rejected points of a batch for good (e.g. outside retention); the rest are written")
                }
                None => {
                    tracing::error!(status = 422, lines, response = %text, suppressed, "InfluxDB accepted a batch only in part without saying how many points it rejected; not retried")
                }
            }
        }
    }

    /// Our own points, rejected one by one for this long: the server or a proxy in front of
    /// it refuses everything. Data is not dropped for that: the service reports not ready and
    /// the point is retried slowly instead.
    async fn rejecting_all(
        &self,
        status: u16,
        text: &str,
        abort: &mut watch::Receiver<bool>,
    ) -> Result<(), SinkError> {
        self.health
            .set_sink_problem(&format!("InfluxDB rejects every point ({status}: {text})"));
        if let Some(suppressed) = self.log_limit.check("systemic", Duration::from_secs(60)) {
            tracing::error!(status, response = %text, suppressed, "every point is being rejected; not ready, retrying instead of dropping");
        }
        self.metrics
            .sink_retries
            .get_or_create(&labels(&[("cause", "rejecting_all")]))
            .inc();
        tokio::select! {
            _ = tokio::time::sleep(self.cfg.auth_retry_interval.get()) => Ok(()),
            _ = abort.wait_for(|a| *a) => Err(SinkError::Aborted),
        }
    }

    /// One point InfluxDB rejects for good: sent to the dead-letter topic where there is one
    /// (its delivery then holds checkpoints back, [`Writer::take_refused`]), else dropped;
    /// counted either way.
    fn rejected(&self, chunk: &[u8], status: u16, text: &str, report: &mut WriteReport) {
        self.rejected_in_a_row.fetch_add(1, Ordering::Relaxed);
        self.metrics.sink_rejected_points.inc();
        report.rejected += 1;
        let line = chunk.trim_ascii_end();
        let ack = self
            .dead_letters
            .as_ref()
            .and_then(|d| d.send_refused(line, status, text));
        let kept = ack.is_some();
        if let Some(ack) = ack {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ack);
        }
        if let Some(suppressed) = self.log_limit.check("rejected", Duration::from_secs(10)) {
            let fate = if kept {
                "sent to the dead-letter topic"
            } else {
                "dropped (no kafka.dead_letter_topic)"
            };
            tracing::error!(status, response = %text, line = %String::from_utf8_lossy(line), suppressed, "InfluxDB rejected a point; {fate}");
        }
    }

    /// Counts and logs a failed attempt (the `attempt`-th of this chunk), then waits `delay`
    /// unless the write is aborted first.
    async fn retry_after(
        &self,
        delay: Duration,
        cause: &'static str,
        attempt: u32,
        abort: &mut watch::Receiver<bool>,
    ) -> Result<(), SinkError> {
        self.metrics
            .sink_retries
            .get_or_create(&labels(&[("cause", cause)]))
            .inc();
        if let Some(suppressed) = self.log_limit.check(cause, Duration::from_secs(10)) {
            tracing::warn!(
                cause,
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                suppressed,
                "InfluxDB write failed; retrying"
            );
        }
        if *abort.borrow() {
            return Err(SinkError::Aborted);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = abort.wait_for(|a| *a) => Err(SinkError::Aborted),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.min_backoff.get().as_secs_f64() * 2f64.powi(attempt.min(20) as i32);
        let capped = base.min(self.cfg.max_backoff.get().as_secs_f64());
        // Full jitter in [capped/2, capped].
        let jittered = capped * (0.5 + 0.5 * rand::rng().random::<f64>());
        Duration::from_secs_f64(jittered)
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let started = Instant::now();
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let cause = if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                };
                tracing::debug!(error = %e.without_url(), "write request failed");
                let failures = self.failures.fetch_add(1, Ordering::Relaxed);
                return Attempt::Retry(self.backoff(failures_for(failures)), cause);
            }
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() || status == 422 {
            self.failures.store(0, Ordering::Relaxed);
            self.rejected_in_a_row.store(0, Ordering::Relaxed);
            self.health.set_sink_problem("");
        }
        if resp.status().is_success() {
            self.metrics
                .sink_latency
                .observe(started.elapsed().as_secs_f64());
            return Attempt::Done;
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let full = resp.text().await.unwrap_or_default();
        let text: String = full.chars().take(500).collect();
        let backoff = self.backoff(failures_for(self.failures.fetch_add(1, Ordering::Relaxed)));
        match status {
            400 | 413 => Attempt::Split(status, text),
            401 | 403 | 404 => {
                let why = refusal(&self.cfg, status, &text);
                self.health.set_sink_problem(&why);
                if let Some(suppressed) = self.log_limit.check("auth", Duration::from_secs(60)) {
                    tracing::error!(status, suppressed, "{why}; not ready, retrying");
                }
                Attempt::Retry(self.cfg.auth_retry_interval.get(), "auth")
            }
            422 => Attempt::Partial {
                dropped: reported_drops(&full),
                text,
            },
            429 | 503 => {
                let delay = retry_after
                    .map(|d| {
                        d.min(self.cfg.max_backoff.get())
                            .max(self.cfg.min_backoff.get())
                    })
                    .unwrap_or(backoff);
                Attempt::Retry(
                    delay,
                    if status == 429 {
                        "throttled"
                    } else {
                        "unavailable"
                    },
                )
            }
            500..=599 => Attempt::Retry(backoff, "server_error"),
            _ => {
                // Any other 4xx is a client/proxy misconfiguration: not ready, loud, slow retry.
                self.health
                    .set_sink_problem(&format!("InfluxDB answered {status}: {text}"));
                if let Some(suppressed) = self
                    .log_limit
                    .check("client_error", Duration::from_secs(60))
                {
                    tracing::error!(status, response = %text, suppressed, "InfluxDB answered with a client error; not ready, retrying");
                }
                Attempt::Retry(self.cfg.auth_retry_interval.get(), "client_error")
            }
        }
    }
}

fn failures_for(consecutive: u64) -> u32 {
    consecutive.min(32) as u32
}

/// How many points a 422 response says were rejected. InfluxDB 1.x and 2.x end the message
/// of a partial write with `dropped=N` (`{"code":"unprocessable entity","message":"failure
/// writing points to database: partial write: points beyond retention policy dropped=2"}`);
/// other servers (VictoriaMetrics does not answer 422 at all) give no count.
fn reported_drops(body: &str) -> Option<u64> {
    let (_, rest) = body.split_once("dropped=")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Lines in a body (the last one may lack its newline).
fn line_count(body: &[u8]) -> usize {
    let newlines = memchr::memchr_iter(b'\n', body).count();
    newlines + usize::from(body.last().is_some_and(|&b| b != b'\n'))
}

/// Splits a body into two halves at a line boundary (sharing its buffer).
fn split_lines(body: &Bytes) -> (Bytes, Bytes) {
    let half = line_count(body) / 2;
    let mut idx = 0;
    for (n, i) in memchr::memchr_iter(b'\n', body).enumerate() {
        if n + 1 == half {
            idx = i + 1;
            break;
        }
    }
    (body.slice(..idx), body.slice(idx..))
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now());
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::influx::probe;
    use crate::influx::test_server::{server, server_with_bodies, tls_server};

    #[tokio::test]
    async fn https_with_the_plants_own_ca_and_v1_basic_auth() {
        let (url, seen) = tls_server(vec![(204, vec![])]).await;
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls/ca.pem");
        let cfg = InfluxConfig {
            url: url.clone(),
            api: crate::config::InfluxApi::V1,
            database: "plant".into(),
            retention_policy: "weekly".into(),
            username: "writer".into(),
            password: "pw".into(),
            ca_file: ca.into(),
            ..InfluxConfig::default()
        };
        let (w, _, health) = {
            let metrics = Arc::new(Metrics::new());
            let health = Arc::new(Health::default());
            (
                Writer::new(&cfg, Arc::clone(&metrics), Arc::clone(&health)).expect("writer"),
                metrics,
                health,
            )
        };
        let (_tx, mut abort) = watch::channel(false);
        let r = w.write("m f=1 1\n", 1, &mut abort).await.expect("write");
        assert_eq!(r.written, 1);
        assert!(health.ready().1.contains("\"sink_reachable\":true"));
        let (head, _) = seen.lock().expect("lock")[0].clone();
        assert!(
            head.starts_with("POST /write?db=plant&rp=weekly&precision=ns HTTP/1.1"),
            "{head}"
        );
        // "writer:pw" in base64.
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: basic d3jpdgvyonb3"),
            "{head}"
        );
        // Without the CA the server's certificate is refused, and the probe says so.
        let err = probe(&InfluxConfig {
            ca_file: String::new(),
            ..cfg.clone()
        })
        .await
        .expect_err("unknown issuer");
        assert!(
            matches!(&err, crate::influx::ProbeError::Unreachable { why, .. }
                if why.to_lowercase().contains("certificate")),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("cannot reach InfluxDB"),
            "{err}"
        );
        assert!(probe(&cfg).await.is_ok());
        // A CA file that holds no certificate is a configuration error naming the key.
        let not_pem = InfluxConfig {
            ca_file: concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            ..cfg
        };
        let err = Target::new(&not_pem).err().expect("refused").to_string();
        assert!(err.contains("influxdb.ca_file"), "{err}");
    }

    fn writer(url: &str) -> (Writer, Arc<Metrics>, Arc<Health>) {
        let cfg = InfluxConfig {
            url: url.into(),
            token: "s3cret".into(),
            min_backoff: crate::config::HumanDuration::from_millis(10),
            max_backoff: crate::config::HumanDuration::from_millis(50),
            auth_retry_interval: crate::config::HumanDuration::from_millis(30),
            ..InfluxConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        (
            Writer::new(&cfg, Arc::clone(&metrics), Arc::clone(&health)).expect("writer"),
            metrics,
            health,
        )
    }

    fn retries(m: &Metrics, cause: &str) -> u64 {
        m.sink_retries
            .get_or_create(&labels(&[("cause", cause)]))
            .get()
    }

    #[tokio::test]
    async fn writes_with_token_org_bucket_and_precision() {
        let (url, seen) = server(vec![(204, vec![])]).await;
        let (w, _, _) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let r = w
            .write("m f=1 1\nm f=2 2\n", 2, &mut abort)
            .await
            .expect("write");
        assert_eq!(
            r,
            WriteReport {
                written: 2,
                rejected: 0,
                unknown: 0
            }
        );
        let seen = seen.lock().expect("lock");
        let (head, body) = &seen[0];
        assert!(
            head.starts_with("POST /api/v2/write?org=plant&bucket=sensorcast&precision=ns "),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: token s3cret"),
            "{head}"
        );
        assert_eq!(body, "m f=1 1\nm f=2 2\n");
    }

    #[tokio::test]
    async fn retries_503_and_429_honouring_retry_after() {
        let (url, seen) = server(vec![
            (503, vec![]),
            (429, vec![("Retry-After", "1".into())]),
            (204, vec![]),
        ])
        .await;
        let (w, m, _) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let t0 = Instant::now();
        let r = w.write("m f=1 1\n", 1, &mut abort).await.expect("write");
        assert_eq!(r.written, 1);
        assert_eq!(seen.lock().expect("lock").len(), 3);
        assert_eq!(
            (retries(&m, "unavailable"), retries(&m, "throttled")),
            (1, 1)
        );
        // Retry-After: 1 is capped by max_backoff (50 ms) here; the cap is what was honoured.
        assert!(t0.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn auth_and_bucket_errors_mark_not_ready_until_fixed() {
        let (url, _) = server(vec![(401, vec![]), (404, vec![]), (204, vec![])]).await;
        let (w, m, h) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        w.write("m f=1 1\n", 1, &mut abort).await.expect("write");
        assert_eq!(retries(&m, "auth"), 2);
        assert!(
            h.sink_reachable.load(Ordering::Relaxed),
            "reachable again after success"
        );
        let (url, _) = server(vec![(403, vec![]); 100]).await;
        let (w, _, h) = writer(&url);
        let (tx, mut abort) = watch::channel(false);
        let task = tokio::spawn(async move { w.write("m f=1 1\n", 1, &mut abort).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!h.sink_reachable.load(Ordering::Relaxed), "403 → not ready");
        tx.send(true).expect("abort");
        assert!(matches!(task.await.expect("join"), Err(SinkError::Aborted)));
    }

    #[tokio::test]
    async fn a_400_is_split_to_isolate_the_bad_point() {
        // 4 lines: first try 400, halves [a b] → 204, [c d] → 400, [c] → 204, [d] → 400 → dropped.
        let (url, seen) = server(vec![
            (400, vec![]),
            (204, vec![]),
            (400, vec![]),
            (204, vec![]),
            (400, vec![]),
        ])
        .await;
        let (w, m, _) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let r = w
            .write("a f=1 1\nb f=1 1\nc f=1 1\nd f=1 1\n", 4, &mut abort)
            .await
            .expect("write");
        assert_eq!(
            r,
            WriteReport {
                written: 3,
                rejected: 1,
                unknown: 0
            }
        );
        assert_eq!(m.sink_rejected_points.get(), 1);
        let bodies: Vec<String> = seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(bodies[1], "a f=1 1\nb f=1 1\n");
        assert_eq!(bodies[4], "d f=1 1\n");
    }

    #[tokio::test]
    async fn a_413_splits_too_and_connection_errors_retry() {
        let (url, seen) = server(vec![(413, vec![]), (204, vec![]), (204, vec![])]).await;
        let (w, _, _) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let r = w
            .write("a f=1 1\nb f=1 1\n", 2, &mut abort)
            .await
            .expect("write");
        assert_eq!(r.written, 2);
        assert_eq!(seen.lock().expect("lock").len(), 3);
        // Nothing listens here: connection errors are retried until aborted.
        let (w, m, _) = writer("http://127.0.0.1:9");
        let (tx, mut abort) = watch::channel(false);
        let task = tokio::spawn(async move { w.write("a f=1 1\n", 1, &mut abort).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send(true).expect("abort");
        assert!(task.await.expect("join").is_err());
        assert!(retries(&m, "connection") >= 2);
    }

    fn partial_writes(m: &Metrics, count: &str) -> u64 {
        m.sink_partial_writes
            .get_or_create(&labels(&[("count", count)]))
            .get()
    }

    #[tokio::test]
    async fn a_422_counts_the_points_influxdb_reports_rejected() {
        // InfluxDB 2.x's answer when points fall outside the bucket's retention.
        let retention = r#"{"code":"unprocessable entity","message":"failure writing points to database: partial write: points beyond retention policy dropped=2"}"#;
        // 2.7.11 and later name the oldest and newest dropped points first, so the count
        // can sit past the 500 characters that are logged.
        let long = format!(
            r#"{{"code":"unprocessable entity","message":"failure writing points to database: partial write: dropped 1 points outside retention policy of duration 24h0m0s - oldest point {0} dropped because it violates a Retention Policy Lower Bound at 2026-01-01T00:00:00Z, newest point {0} dropped because it violates a Retention Policy Lower Bound at 2026-01-01T00:00:00Z dropped=1 for database: 0123456789abcdef for retention policy: autogen"}}"#,
            "m,stream=pumps,device=pump-000,field=vibration,horizon=1,model=20260101T000000Z at 2025-12-01T00:00:00Z"
        );
        assert!(long.find("dropped=").expect("count") > 500);
        let (url, seen) = server_with_bodies(vec![
            (422, vec![], retention.into()),
            (422, vec![], long),
            // A server claiming more than it was sent: at most the whole request.
            (
                422,
                vec![],
                r#"{"message":"partial write: dropped=99"}"#.into(),
            ),
        ])
        .await;
        let (w, m, h) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let r = w
            .write("a f=1 1\nb f=1 1\nc f=1 1\n", 3, &mut abort)
            .await
            .expect("write");
        assert_eq!(
            r,
            WriteReport {
                written: 1,
                rejected: 2,
                unknown: 0
            },
            "dropped=2 of 3: one written, not retried"
        );
        let r = w.write("a f=1 1\n", 1, &mut abort).await.expect("write");
        assert_eq!((r.written, r.rejected), (0, 1));
        let r = w
            .write("a f=1 1\nb f=1 1\n", 2, &mut abort)
            .await
            .expect("write");
        assert_eq!((r.written, r.rejected), (0, 2));
        assert_eq!(seen.lock().expect("lock").len(), 3, "never retried");
        assert_eq!(m.sink_rejected_points.get(), 5);
        assert_eq!(
            (
                partial_writes(&m, "reported"),
                partial_writes(&m, "unknown")
            ),
            (3, 0)
        );
        assert!(
            h.sink_reachable.load(Ordering::Relaxed),
            "a partial write is not a readiness problem"
        );
    }

    #[tokio::test]
    async fn a_422_without_a_count_claims_neither_written_nor_rejected() {
        let (url, seen) = server_with_bodies(vec![
            (422, vec![], "{}".into()),
            (422, vec![], "points rejected".into()),
        ])
        .await;
        let (w, m, _) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let r = w
            .write("a f=1 1\nb f=1 1\n", 2, &mut abort)
            .await
            .expect("write");
        assert_eq!(
            r,
            WriteReport {
                written: 0,
                rejected: 0,
                unknown: 2
            }
        );
        let r = w.write("a f=1 1\n", 1, &mut abort).await.expect("write");
        assert_eq!(r.unknown, 1);
        assert_eq!(seen.lock().expect("lock").len(), 2, "never retried");
        assert_eq!(m.sink_rejected_points.get(), 0, "no count was reported");
        assert_eq!(
            (
                partial_writes(&m, "reported"),
                partial_writes(&m, "unknown")
            ),
            (0, 2)
        );
    }

    #[tokio::test]
    async fn other_4xx_mean_not_ready_while_they_last() {
        let (url, seen) = server(vec![(405, vec![]); 1000]).await;
        let (w, m, h) = writer(&url);
        let (tx, mut abort) = watch::channel(false);
        let task = tokio::spawn(async move { w.write("a f=1 1\n", 1, &mut abort).await });
        let t0 = Instant::now();
        while seen.lock().expect("lock").len() < 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no retry of the 405"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !h.sink_reachable.load(Ordering::Relaxed),
            "not ready while InfluxDB answers 405"
        );
        assert!(retries(&m, "client_error") >= 1);
        tx.send(true).expect("abort");
        assert!(matches!(task.await.expect("join"), Err(SinkError::Aborted)));
        assert!(!h.sink_reachable.load(Ordering::Relaxed));

        // Ready again once a write succeeds.
        let (url, _) = server(vec![(405, vec![]), (204, vec![])]).await;
        let (w, m, h) = writer(&url);
        let (_tx, mut abort) = watch::channel(false);
        let r = w.write("a f=1 1\n", 1, &mut abort).await.expect("write");
        assert_eq!(r.written, 1);
        assert_eq!(retries(&m, "client_error"), 1);
        assert!(h.sink_reachable.load(Ordering::Relaxed));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        let split = |s: &'static str| {
            let (a, b) = split_lines(&Bytes::from(s));
            (a.to_vec(), b.to_vec())
        };
        assert_eq!(
            split("a\nb\nc\nd\n"),
            (b"a\nb\n".to_vec(), b"c\nd\n".to_vec())
        );
        assert_eq!(split("a\nb\nc\n"), (b"a\n".to_vec(), b"b\nc\n".to_vec()));
        assert_eq!(line_count(b"a\nb"), 2);
        assert_eq!(line_count(b""), 0);
    }
}
