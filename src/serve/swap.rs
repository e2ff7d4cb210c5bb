//! Model swaps while serving (docs/ARCHITECTURE.md §3.7): a new `current` version is noticed,
//! loaded and checked off the hot path, and swapped in between two micro-batches; each device is
//! re-warmed in the new model before its points come from it.
//!
//! New weights make the old hidden states meaningless, so a device cannot simply carry on in
//! the new model. During a swap the engine stage keeps **both** engines and steps every reading
//! through both: the old model still writes the points of a device until the new one has
//! stepped `model.swap_warmup` readings of it (or as many as the old one had, for a device that
//! is young anyway); then the device *switches*: it takes over from the old engine what does
//! not depend on the weights ([`Engine::adopt`]: its deviation baseline, the baseline's age and
//! any alarm it is in) and its points come from the new model from the next micro-batch on. A
//! reading is stepped and written exactly once per engine, and exactly one point set per reading
//! is written, so no reading is lost or doubled, and the `model` field of the points says which
//! model wrote them.
//!
//! While a swap runs the old engine holds every device of the partitions it served, stepped up
//! to the batch boundary, so the checkpoints of those partitions are still taken from it (with
//! its version): a crash or a rebalance in the middle of a swap restores them into the old model
//! (loaded from the registry) and the swap starts over there. Once every such device has
//! switched (or `model.swap_timeout` passed) the old engine is dropped and every checkpoint
//! names the new version. Cost while it runs: a second engine step per reading and a second
//! device state (1481 B at hidden 64, 8 features, README "Performance") per device; nothing
//! after.

use crate::config::{Config, Horizons, StreamConfig};
use crate::decode::Reading;
use crate::engine::{BatchOutput, Engine, EngineSettings};
use crate::model::registry::{Registry, RegistryError};
use crate::serve::pipeline::ToEngine;
use crate::telemetry::{Metrics, labels};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Why a model was refused; each says what is wrong, naming the version and the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// Missing or unreadable files.
    #[error("{0}")]
    Load(String),
    /// Its features or horizon do not fit the stream as configured.
    #[error("{0}")]
    Schema(String),
    /// Non-finite or inconsistent weights.
    #[error("{0}")]
    Weights(String),
}

impl Rejected {
    /// The `reason` label of `sensorcast_models_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Load(_) => "load",
            Rejected::Schema(_) => "schema",
            Rejected::Weights(_) => "weights",
        }
    }
}

/// Loads a version of a stream's model (the current one for `None`) and checks that it can
/// serve the stream as configured: an engine ready to step, or why not.
pub fn checked_engine(
    registry: &Registry,
    cfg: &Config,
    stream: &StreamConfig,
    version: Option<&str>,
) -> Result<Engine, Rejected> {
    let what = version.map_or_else(|| "the current model".to_string(), |v| format!("model {v}"));
    let loaded = registry.load(&stream.name, version).map_err(|e| {
        let message = format!("stream {:?}: cannot load {what}: {e}", stream.name);
        match e {
            RegistryError::Weights { .. } => Rejected::Weights(message),
            _ => Rejected::Load(message),
        }
    })?;
    let v = &loaded.meta.version;
    if loaded.meta.features != stream.features {
        return Err(Rejected::Schema(format!(
            "stream {:?}: model {v} was trained on features {:?}, the config lists {:?}",
            stream.name, loaded.meta.features, stream.features
        )));
    }
    if let Horizons::Steps(steps) = &cfg.output_for(stream).horizons
        && let Some(&s) = steps
            .iter()
            .find(|&&s| s as usize > loaded.inference.horizon)
    {
        return Err(Rejected::Schema(format!(
            "stream {:?}: model {v} forecasts {} steps, output.horizons asks for step {s}",
            stream.name, loaded.inference.horizon
        )));
    }
    let settings = EngineSettings::from_config(cfg, stream);
    if let Some(problem) = loaded.inference.calibration_problem(&settings) {
        tracing::warn!(stream = %stream.name, model = %v, "{problem}");
    }
    Engine::new(Arc::new(loaded.inference), settings)
        .map_err(|e| Rejected::Weights(format!("stream {:?}: model {v}: {e}", stream.name)))
}

/// A swap in progress on one stream: the engine of the model being replaced and which devices
/// have switched.
pub struct Swap {
    /// The engine of the previous model, stepping every reading until the swap ends.
    pub old: Engine,
    /// Partitions whose devices the old engine served (their checkpoints are its, until the
    /// swap ends).
    pub old_partitions: BTreeSet<u32>,
    /// The old engine's outputs of the current chunk.
    pub out: BatchOutput,
    switched: HashSet<String, foldhash::fast::RandomState>,
    warmup: u32,
    started: Instant,
}

impl Swap {
    /// A swap away from `old`, whose devices in `partitions` are re-warmed.
    pub fn new(old: Engine, partitions: BTreeSet<u32>, warmup: u32) -> Self {
        Self {
            old,
            old_partitions: partitions,
            out: BatchOutput::default(),
            switched: HashSet::default(),
            warmup,
            started: Instant::now(),
        }
    }

    /// Whether the old model still writes this device's points.
    pub fn writes(&self, device: &str) -> bool {
        !self.switched.contains(device)
    }

    /// After both engines stepped `chunk`: devices the new engine now knows well enough switch
    /// (from the next chunk on their points come from `new`). A device of a partition the old
    /// engine did not serve (assigned during the swap) switches at once: it has nothing to
    /// re-warm.
    pub fn advance(&mut self, new: &mut Engine, chunk: &[Reading], shards: &[u32]) {
        for (j, r) in chunk.iter().enumerate() {
            if self.switched.contains(r.device.as_str()) {
                continue;
            }
            let shard = shards.get(j).copied().unwrap_or(0);
            let served = self.old_partitions.contains(&shard);
            let ready = if served {
                let seen_new = new.steps(&r.device).unwrap_or(0);
                let seen_old = self.old.steps(&r.device).unwrap_or(0);
                seen_new >= self.warmup.min(seen_old.max(1))
            } else {
                true
            };
            if ready {
                if served {
                    new.adopt(&self.old, &r.device);
                }
                self.switched.insert(r.device.clone());
            }
        }
    }

    /// Devices of the old engine's partitions that have not switched yet.
    pub fn pending(&self) -> usize {
        self.old
            .device_shards()
            .filter(|(id, shard)| {
                self.old_partitions.contains(shard) && !self.switched.contains(*id)
            })
            .count()
    }

    /// How long the swap has run.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Watches each stream's `current` pointer (every `model.poll_interval`, and at once on
/// SIGHUP) and hands a new version, loaded and checked here, to the engine stage. A version
/// that fails its checks is refused (logged, counted in `sensorcast_models_rejected_total`)
/// and not tried again until `current` changes or a SIGHUP asks; the model in use keeps
/// serving.
pub async fn watch_models(
    cfg: Config,
    mut in_use: Vec<String>,
    tx: mpsc::Sender<ToEngine>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Registry::new(&cfg.model.registry);
    let every = cfg.model.poll_interval.get();
    let mut tick = tokio::time::interval(if every.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        every
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut rejected: Vec<Option<String>> = vec![None; cfg.streams.len()];
    let cfg = Arc::new(cfg);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = tick.tick(), if !every.is_zero() => false,
            _ = hangup => {
                tracing::info!("SIGHUP: checking the registry for new models");
                true
            }
            _ = stop.wait_for(|s| *s) => return,
        };
        for (i, stream) in cfg.streams.iter().enumerate() {
            let current = match registry.current(&stream.name) {
                Ok(v) => v,
                Err(e) => {
                    if forced {
                        tracing::warn!(stream = %stream.name, error = %e, "cannot read the current model pointer; the model in use keeps serving");
                    }
                    continue;
                }
            };
            if current == in_use[i] || (!forced && rejected[i].as_deref() == Some(&current)) {
                continue;
            }
            let (c, s, r, v) = (
                Arc::clone(&cfg),
                stream.clone(),
                registry.clone(),
                current.clone(),
            );
            let checked =
                tokio::task::spawn_blocking(move || checked_engine(&r, &c, &s, Some(&v))).await;
            let checked = checked.unwrap_or_else(|e| {
                Err(Rejected::Load(format!(
                    "loading model {current} failed: {e}"
                )))
            });
            match checked {
                Ok(engine) => {
                    tracing::info!(stream = %stream.name, from = %in_use[i], to = %current, "new model loaded and checked; swapping it in");
                    if tx
                        .send(ToEngine::Swap {
                            stream: i,
                            engine: Box::new(engine),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    in_use[i] = current;
                    rejected[i] = None;
                }
                Err(r) => {
                    metrics
                        .models_rejected
                        .get_or_create(&labels(&[("stream", &stream.name), ("reason", r.reason())]))
                        .inc();
                    tracing::error!(stream = %stream.name, version = %current, reason = %r.reason(), "new model refused; {} keeps serving: {r}", in_use[i]);
                    rejected[i] = Some(current);
                }
            }
        }
    }
}

/// `[retrain] every` inside `serve`: each stream is retrained in a child process
/// (`sensorcast retrain`, the same binary, on `retrain.threads` threads), so that the history
/// window and the training never live in the serving process: its memory does not grow with
/// `retrain.window`, and a retrain that runs out of memory is killed instead of the service.
/// A published model is then noticed by [`watch_models`] like any other. The child's log lines
/// become this process's, tagged with the stream; at shutdown a running child is killed
/// (nothing half-published: the registry publishes by rename). Returns at once when
/// retraining is off.
pub fn spawn_retrainer(
    cfg: Config,
    config_path: std::path::PathBuf,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    let every = cfg.retrain.every.get();
    if every.is_zero() {
        return Ok(None);
    }
    let exe = std::env::current_exe()?;
    std::thread::Builder::new()
        .name("sensorcast-retrain".into())
        .spawn(move || {
            tracing::info!(every_s = every.as_secs_f64(), threads = cfg.retrain.threads, "scheduled retraining on (a child process per run)");
            let mut next = Instant::now() + every;
            loop {
                while Instant::now() < next {
                    if *stop.borrow() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250).min(next - Instant::now()));
                }
                next += every;
                for stream in &cfg.streams {
                    if *stop.borrow() {
                        return;
                    }
                    let started = Instant::now();
                    tracing::info!(stream = %stream.name, source = ?cfg.retrain.source, window_s = cfg.retrain.window.get().as_secs_f64(), "scheduled retrain started");
                    metrics.retrain_running.set(1);
                    let result = retrain_child(&exe, &config_path, &cfg, &stream.name, &stop);
                    metrics.retrain_running.set(0);
                    let outcome = match &result {
                        Ok(Some(d)) if d.published => "published",
                        Ok(Some(_)) => "kept",
                        Ok(None) => return,
                        Err(_) => "failed",
                    };
                    metrics
                        .retrains
                        .get_or_create(&labels(&[("stream", &stream.name), ("outcome", outcome)]))
                        .inc();
                    match result {
                        Ok(Some(d)) => tracing::info!(stream = %stream.name, outcome, seconds = started.elapsed().as_secs_f64(), "scheduled retrain: {}", d.reason),
                        Ok(None) => {}
                        Err(e) => tracing::error!(stream = %stream.name, seconds = started.elapsed().as_secs_f64(), "scheduled retrain failed; the model in use keeps serving: {e}"),
                    }
                }
                // A retrain longer than `every` does not queue runs up.
                next = next.max(Instant::now());
            }
        })
        .map(Some)
}

/// Runs `sensorcast retrain` for one stream in a child process and returns its decision;
/// `Ok(None)` when shutdown stopped it (the child is killed).
fn retrain_child(
    exe: &std::path::Path,
    config_path: &std::path::Path,
    cfg: &Config,
    stream: &str,
    stop: &watch::Receiver<bool>,
) -> Result<Option<crate::model::registry::Decision>, RetrainFailed> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let report = Report(std::env::temp_dir().join(format!(
        "sensorcast-retrain-{}-{run}.json",
        std::process::id()
    )));
    let mut child = Command::new(exe)
        .arg("retrain")
        .arg("--config")
        .arg(config_path)
        .args(["--stream", stream])
        .arg("--report-to")
        .arg(&report.0)
        // The training's thread pool (rayon) keeps to `retrain.threads`.
        .env("RAYON_NUM_THREADS", cfg.retrain.threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RetrainFailed::Start {
            exe: exe.to_path_buf(),
            source,
        })?;
    let stderr = child.stderr.take();
    let name = stream.to_string();
    let relay = std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            tracing::info!(stream = %name, "retrain: {}", line.trim_end());
        }
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if *stop.borrow() => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = relay.join();
                tracing::info!(stream, "shutting down: the running retrain was stopped");
                return Ok(None);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(250)),
            Err(e) => return Err(RetrainFailed::Wait(e)),
        }
    };
    let _ = relay.join();
    if !status.success() {
        return Err(RetrainFailed::Exit(status));
    }
    let text = std::fs::read_to_string(&report.0).map_err(RetrainFailed::ReadDecision)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(RetrainFailed::ParseDecision)
}

/// Why a scheduled retrain's child process gave no decision.
#[derive(Debug, thiserror::Error)]
enum RetrainFailed {
    #[error("cannot start {}: {source}", exe.display())]
    Start {
        exe: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot wait for the retrain process: {0}")]
    Wait(std::io::Error),
    #[error("the retrain process ended with {0} (its log lines above say why)")]
    Exit(std::process::ExitStatus),
    #[error("cannot read the retrain's decision: {0}")]
    ReadDecision(std::io::Error),
    #[error("the retrain's decision does not parse: {0}")]
    ParseDecision(serde_json::Error),
}

/// The file a retrain child writes its decision to; removed when dropped.
struct Report(std::path::PathBuf);

impl Drop for Report {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
