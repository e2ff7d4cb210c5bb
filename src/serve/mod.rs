//! `sensorcast serve`: Kafka in, engine, InfluxDB out — the wiring of the stages.
//!
//! Three stages joined by bounded channels, so that a slow sink slows the consumer instead of
//! growing memory (docs/ARCHITECTURE.md §2):
//!
//! ```text
//! source task ──ToEngine──► engine thread ──ToSink──► sink task ──► persist checkpoints
//! (source::stage)           (engine_stage)            (sink::stage)        │
//!      ▲                                                                  │
//!      └──── source::store_persisted: store their offsets ◄── Offsets ────┘
//! ```
//!
//! Each stage owns its internals: batching and pausing in the source, device state and
//! checkpoints in the engine stage, in-order acknowledgement in the sink. Invariant §3.1
//! (nothing is lost): an offset is stored only by the source, once the sink reports the
//! checkpoint that covers it persisted — after InfluxDB acknowledged every point of its
//! messages and of every message before them; offsets are committed periodically by
//! librdkafka and synchronously at shutdown. Invariant §3.3 (state survives): checkpoints
//! travel behind the points they cover and are persisted once those are written; rebalances
//! restore and checkpoint partitions ([`crate::serve::source::Rebalancer`]).

pub mod bodies;
pub mod dead_letters;
pub mod engine_stage;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod swap;

use crate::config::Config;
use crate::decode::Decoder;
use crate::engine::Engine;
use crate::model::registry::Registry;
use crate::serve::dead_letters::DeadLetters;
use crate::serve::engine_stage::EngineStage;
use crate::serve::pipeline::{ToEngine, ToSink};
use crate::serve::sink::Writer;
use crate::serve::sink::stage::SinkStage;
use crate::serve::source::stage::SourceStage;
use crate::serve::source::{Assignment, Consumer, Rebalancer, StreamState};
use crate::state::{DirStore, KafkaStore, Store};
use crate::telemetry::{Health, Metrics, Telemetry, labels};
use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The binary's `serve`: runs the service until SIGTERM/SIGINT on a runtime of its own, and
/// exits the process if shutdown stays blocked past its deadline and grace; returns whether
/// it drained cleanly. `config_path` is the file `cfg` was read from (a scheduled retrain runs
/// `sensorcast retrain` on it).
pub fn run(cfg: Config, config_path: std::path::PathBuf) -> anyhow::Result<bool> {
    fixed_mmap_threshold();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sensorcast-io")
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(serve(
        cfg,
        config_path,
        Shutdown {
            requested: wait_for_signal(),
            exit_if_stuck: true,
        },
    ))
}

/// When `serve` stops, and what it may do if stopping blocks.
pub struct Shutdown<F> {
    /// Resolves when the service is to stop (the binary: SIGTERM or SIGINT).
    pub requested: F,
    /// End the process (exit code 1) if shutdown still blocks `service.shutdown_timeout` plus
    /// a grace after it began — a checkpoint write or the consumer's close waiting for a
    /// server that is gone. The binary sets it; a caller embedding `serve` (a test) does not.
    pub exit_if_stuck: bool,
}

/// Runs the pipeline until `shutdown.requested` resolves (or a stage stops on its own, a
/// failure), then drains: stops consuming, steps and writes what was taken, checkpoints every
/// partition, commits. Returns whether it drained cleanly. Needs a multi-threaded tokio
/// runtime (the rebalance callbacks block in place).
pub async fn serve<F: std::future::Future<Output = ()>>(
    cfg: Config,
    config_path: std::path::PathBuf,
    shutdown: Shutdown<F>,
) -> anyhow::Result<bool> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    // Models first: without them nothing can be scored.
    let engines = load_engines(&cfg, &metrics)?;
    health.models_loaded.store(true, Ordering::Relaxed);

    let writer = Writer::new(&cfg.influxdb, Arc::clone(&metrics), Arc::clone(&health))?;
    probe_influx(&cfg, &health);
    let (stop_tx, stop) = watch::channel(false);
    let (abort_tx, abort) = watch::channel(false);
    let http = serve_http(&cfg, &metrics, &health, abort.clone()).await?;
    let shared = Shared {
        metrics,
        health,
        stop,
        abort,
    };
    let mut running = start(&cfg, config_path, engines, writer, &shared).await?;

    // Run until a signal — or until a stage stops on its own, which is a failure.
    let (mut source_done, mut sink_done) = (false, None);
    let unexpected = tokio::select! {
        _ = shutdown.requested => false,
        _ = &mut running.source => {
            source_done = true;
            true
        }
        r = &mut running.sink => {
            sink_done = Some(r.unwrap_or(false));
            true
        }
    };
    if unexpected {
        tracing::error!("a pipeline stage stopped on its own; shutting down");
    }
    tracing::info!(
        deadline_s = cfg.service.shutdown_timeout.get().as_secs_f64(),
        "shutting down: stop consuming, drain, flush, commit"
    );
    shared.health.stopping.store(true, Ordering::Relaxed);
    let stopping_since = std::time::Instant::now();
    let _ = stop_tx.send(true);
    let deadline = cfg.service.shutdown_timeout.get();
    if shutdown.exit_if_stuck {
        hard_deadline(deadline + SHUTDOWN_GRACE);
    }
    let abort_timer = abort_after(deadline, abort_tx);
    let drained = running
        .drain((source_done, sink_done), deadline, stopping_since)
        .await;
    let clean = drained && !unexpected;
    abort_timer.abort();
    http.abort();
    tracing::info!(clean, "stopped");
    Ok(clean)
}

/// What the stages share: telemetry, and the signals to stop consuming and to give up.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
}

/// The pipeline, running: its stages and the tasks beside them.
struct Running {
    consumer: Arc<Consumer>,
    rebalancer: Arc<Rebalancer>,
    source: tokio::task::JoinHandle<()>,
    engine: std::thread::JoinHandle<()>,
    sink: tokio::task::JoinHandle<bool>,
    /// Stores the offsets the sink reports persisted.
    offsets_stored: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    models: tokio::task::JoinHandle<()>,
    /// Ends with the process (a retrain under way is killed when the service stops).
    _retrainer: Option<std::thread::JoinHandle<()>>,
}

/// Opens the checkpoint store and the Kafka clients and starts the stages: source → engine
/// → sink, with the ticker, the model watcher and the retrainer beside them.
async fn start(
    cfg: &Config,
    config_path: std::path::PathBuf,
    engines: Vec<Engine>,
    writer: Writer,
    shared: &Shared,
) -> anyhow::Result<Running> {
    let store = open_store(cfg).await?;
    let assignment = Arc::new(Assignment::default());
    let (engine_tx, engine_rx) = mpsc::channel::<ToEngine>(2);
    let (sink_tx, sink_rx) = mpsc::channel::<ToSink>(cfg.influxdb.queue_batches);
    let rebalancer = rebalancer(cfg, &store, engine_tx.clone(), &assignment);
    tracing::info!(store = %store.describe(), interval_s = cfg.state.checkpoint_interval.get().as_secs_f64(), "device state checkpoints");
    let consumer = crate::serve::source::consumer(
        cfg,
        Arc::clone(&shared.metrics),
        Arc::clone(&shared.health),
        Some(Arc::clone(&rebalancer)),
    )
    .context("cannot create the Kafka consumer")?;
    crate::kafka::ensure_dead_letter_topic(cfg, &shared.health).await;
    let dead_letters =
        DeadLetters::new(cfg, Arc::clone(&shared.metrics), Arc::clone(&shared.health))
            .context("cannot create the dead-letter producer")?;
    // Points InfluxDB refuses for good go to the same dead-letter topic.
    let writer = writer.with_dead_letters(dead_letters.clone());
    let ticker = spawn_ticker(cfg, engine_tx.clone());
    // New models (retrain, promote, rollback) are noticed, loaded and checked here and swapped
    // in by the engine stage without a restart (crate::serve::swap).
    let models = tokio::spawn(crate::serve::swap::watch_models(
        cfg.clone(),
        engines.iter().map(|e| e.model().version.clone()).collect(),
        engine_tx.clone(),
        Arc::clone(&shared.metrics),
        shared.stop.clone(),
    ));
    // `[retrain] every`: retraining in child processes (a retrain under way when the service
    // stops is killed, and nothing half-published).
    let retrainer = crate::serve::swap::spawn_retrainer(
        cfg.clone(),
        config_path,
        Arc::clone(&shared.metrics),
        shared.stop.clone(),
    )
    .context("cannot start the retrain thread")?;
    let source = SourceStage {
        consumer: Arc::clone(&consumer),
        decoder: Decoder::new(
            &cfg.streams,
            cfg.kafka.max_payload_bytes,
            cfg.engine.max_future.as_nanos(),
        ),
        dead_letters,
        tx: engine_tx,
        max_batch: cfg.engine.max_batch,
        linger: cfg.engine.max_linger.get(),
        stop: shared.stop.clone(),
        give_up: shared.abort.clone(),
        metrics: Arc::clone(&shared.metrics),
        readings_in: cfg
            .streams
            .iter()
            .map(|st| shared.metrics.for_stream(&st.name).readings_in)
            .collect(),
        topics: cfg.streams.iter().map(|s| s.topic.clone()).collect(),
        assignment,
    };
    let checkpoints_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stage = EngineStage::new(
        cfg,
        engines,
        Arc::clone(&shared.metrics),
        store.clone(),
        Arc::clone(&checkpoints_in_flight),
    );
    let batch_bodies = stage.bodies();
    let engine = std::thread::Builder::new()
        .name("sensorcast-engine".into())
        .spawn(move || stage.run(engine_rx, sink_tx))
        .context("cannot start the engine thread")?;
    // The sink reports the offsets of each persisted checkpoint back; the source stores them
    // for commit (the sink never touches the consumer).
    let (persisted_tx, persisted_rx) = mpsc::channel(64);
    let offsets_stored = tokio::spawn(crate::serve::source::store_persisted(
        persisted_rx,
        Arc::clone(&consumer),
    ));
    let sink = SinkStage {
        rx: sink_rx,
        writer,
        persisted: persisted_tx,
        store,
        flush_bytes: cfg.influxdb.batch_bytes,
        batch_bodies,
        flush_interval: cfg.influxdb.flush_interval.get(),
        concurrency: cfg.influxdb.concurrency,
        abort: shared.abort.clone(),
        metrics: Arc::clone(&shared.metrics),
        checkpoints_in_flight,
        health: Arc::clone(&shared.health),
    };
    Ok(Running {
        consumer,
        rebalancer,
        source: tokio::spawn(source.run()),
        engine,
        sink: tokio::spawn(sink.run()),
        offsets_stored,
        ticker,
        models,
        _retrainer: retrainer,
    })
}

impl Running {
    /// Waits for the stages to drain, in order (the stop signal has been sent; `done` says
    /// whether the source has ended and the sink's result if it has), stores the offsets
    /// the sink reported and commits them within what is left of `deadline`. True when
    /// every stage ended cleanly.
    async fn drain(
        self,
        (source_done, sink_done): (bool, Option<bool>),
        deadline: Duration,
        stopping_since: std::time::Instant,
    ) -> bool {
        if !source_done {
            let _ = self.source.await;
        }
        // From here on rebalances move no state: the engine stage drains, takes its last
        // checkpoints and stops once the source's sender is gone too.
        self.ticker.abort();
        let _ = self.ticker.await;
        let _ = self.models.await;
        self.rebalancer.detach();
        let engine = self.engine;
        let engine_ok = tokio::task::spawn_blocking(move || engine.join().is_ok())
            .await
            .unwrap_or(false);
        let sink_ok = match sink_done {
            Some(ok) => ok,
            None => self.sink.await.unwrap_or(false),
        };
        // The sink is gone, and with it the progress channel's sender: every offset it
        // reported is stored once this returns.
        let _ = self.offsets_stored.await;
        // What was stored is committed, within what is left of the deadline.
        let left = deadline
            .saturating_sub(stopping_since.elapsed())
            .max(Duration::from_secs(1));
        commit_final(&self.consumer, left).await;
        sink_ok && engine_ok
    }
}

/// The rebalance callbacks' side of the pipeline: they restore and checkpoint partitions
/// through the engine stage, within half of `max.poll.interval.ms`.
fn rebalancer(
    cfg: &Config,
    store: &Store,
    engine_tx: mpsc::Sender<ToEngine>,
    assignment: &Arc<Assignment>,
) -> Arc<Rebalancer> {
    Arc::new(Rebalancer {
        store: store.clone(),
        group: cfg.kafka.group_id.clone(),
        streams: cfg
            .streams
            .iter()
            .map(|s| StreamState {
                name: s.name.clone(),
                topic: s.topic.clone(),
            })
            .collect(),
        engine: std::sync::Mutex::new(Some(engine_tx)),
        runtime: tokio::runtime::Handle::current(),
        callback_timeout: cfg
            .service
            .shutdown_timeout
            .get()
            .min(cfg.kafka.max_poll_interval() / 2),
        max_catch_up: cfg.state.max_catch_up,
        assignment: Arc::clone(assignment),
    })
}

/// Past the shutdown deadline the stages give up: their unwritten points stay uncommitted.
fn abort_after(deadline: Duration, abort: watch::Sender<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        tracing::error!(
            "shutdown deadline reached; abandoning unwritten points (their offsets stay uncommitted)"
        );
        let _ = abort.send(true);
    })
}

/// Each stream's engine with the registry's current model, checked.
fn load_engines(cfg: &Config, metrics: &Metrics) -> anyhow::Result<Vec<Engine>> {
    let registry = Registry::new(&cfg.model.registry);
    let mut engines = Vec::new();
    for stream in &cfg.streams {
        let engine = crate::serve::swap::checked_engine(&registry, cfg, stream, None)?;
        let version = &engine.model().version;
        metrics
            .model_version
            .get_or_create(&labels(&[("stream", &stream.name), ("version", version)]))
            .set(1);
        tracing::info!(stream = %stream.name, model = %version, "model loaded");
        engines.push(engine);
    }
    Ok(engines)
}

/// Says at once when InfluxDB will refuse the writes (wrong API, database, token); the sink
/// keeps retrying either way, so a database that comes up later is fine.
fn probe_influx(cfg: &Config, health: &Arc<Health>) {
    let (influx, health) = (cfg.influxdb.clone(), Arc::clone(health));
    tokio::spawn(async move {
        match crate::influx::probe(&influx).await {
            Ok(s) => tracing::info!("InfluxDB probe: {s}"),
            Err(e) => {
                if !matches!(e, crate::influx::ProbeError::Unreachable { .. }) {
                    health.set_sink_problem(&e.to_string());
                }
                tracing::error!("InfluxDB probe: {e}");
            }
        }
    });
}

/// The checkpoint store `state.store` names (creating the changelog topics it needs).
async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let local = DirStore::new(&cfg.state.dir, cfg.state.keep);
    Ok(match cfg.state.store {
        crate::config::StoreKind::Dir => Store::Dir(local),
        crate::config::StoreKind::Kafka => {
            crate::kafka::ensure_changelog_topics(cfg).await?;
            Store::Kafka(Arc::new(
                KafkaStore::new(
                    &crate::kafka::client_config(cfg, &[]),
                    &cfg.state.changelog_topic,
                    &cfg.kafka.group_id,
                    local,
                    cfg.state.keep,
                )
                .context("cannot create the checkpoint store's Kafka clients")?,
            ))
        }
    })
}

/// A periodic checkpoint is due even when no readings arrive (the tail of a stream must be
/// checkpointed for its offsets to be committed); and the engine stage's other housekeeping
/// (the maintenance and labels files, the active-alarm gauges, swaps) runs at least once a
/// second. Ends when the engine stage is gone.
fn spawn_ticker(cfg: &Config, tx: mpsc::Sender<ToEngine>) -> tokio::task::JoinHandle<()> {
    let every = cfg
        .state
        .checkpoint_interval
        .get()
        .min(std::time::Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // When the queue is full the stage is busy and checks the time anyway.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(ToEngine::Tick) {
                return;
            }
        }
    })
}

/// `/metrics` and the health endpoints on `http.listen`, until `abort` is set.
async fn serve_http(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    mut abort: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", cfg.http.listen))?;
    tracing::info!(listen = %cfg.http.listen, "HTTP endpoint up (/metrics, /health/live, /health/ready)");
    let app = crate::telemetry::router(Telemetry {
        metrics: Arc::clone(metrics),
        health: Arc::clone(health),
    });
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = abort.wait_for(|a| *a).await;
            })
            .await;
    }))
}

/// Commits the stored offsets, waiting at most `left` (a broker that is gone would hold the
/// commit for librdkafka's timeouts). Offsets stored so far belong to written points only, so
/// they are committed even when a stage failed; what was not written stays uncommitted.
async fn commit_final(consumer: &Arc<crate::serve::source::Consumer>, left: Duration) {
    let committer = Arc::clone(consumer);
    let commit =
        tokio::task::spawn_blocking(move || committer.commit_consumer_state(CommitMode::Sync));
    match tokio::time::timeout(left, commit).await {
        Ok(Ok(Ok(()))) => tracing::info!("offsets committed"),
        Ok(Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )))) => tracing::info!("no new offsets to commit"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "final commit failed; the uncommitted tail will be re-read")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "final commit did not run; the uncommitted tail will be re-read")
        }
        Err(_) => tracing::warn!(
            "final commit did not finish by the shutdown deadline; the uncommitted tail will be re-read"
        ),
    }
}

/// Past `service.shutdown_timeout` the stages give up (their unwritten points stay
/// uncommitted); this much later the process exits whatever still blocks (a checkpoint write
/// or the consumer's close waiting for a broker that is gone).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Ends the process with exit code 1 if it is still running `after` from now. What it leaves
/// behind is what a crash leaves: offsets stored only for what was written, read again on
/// restart.
fn hard_deadline(after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                after_s = after.as_secs_f64(),
                "shutdown still blocked past service.shutdown_timeout and its grace; exiting (uncommitted offsets are read again on restart)"
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the shutdown deadline thread");
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so the
/// multi-megabyte buffers `serve` cycles through — output batches, checkpoint snapshots — end
/// up carved from the heap and stay resident once freed. A fixed 1 MiB threshold returns them
/// to the system: on `scripts/bench-memory.sh 100000 2` resident memory after the run drops
/// from ≈2.4 KB to ≈1.5 KB per device. `MALLOC_MMAP_THRESHOLD_` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_MMAP_THRESHOLD: i32 = -3;
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes a glibc allocator setting; it is called before the
        // service starts any thread of its own.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}
