//! `sensorcast serve`: Kafka in, engine, InfluxDB out.
//!
//! Three stages joined by bounded channels, so that a slow sink slows the consumer instead of
//! growing memory (docs/ARCHITECTURE.md §2):
//!
//! ```text
//! source task ──InBatch──► engine thread ──OutBatch──► sink task ──► store offsets
//! (decode, dead letters,     (micro-batched         (batch by size/time,
//!  micro-batch, pause when    LSTM step, points)      retry until written)
//!  the queue is full)
//! ```
//!
//! Invariant §3.1 (nothing is lost): an offset is stored only by the sink, after InfluxDB
//! acknowledged every point of its batch; batches are written and acknowledged in order, so a
//! stored offset never runs ahead of an unwritten earlier reading of its partition. Offsets
//! are committed periodically by librdkafka and synchronously at shutdown.

use crate::config::Config;
use crate::decode::Reading;
use crate::engine::{BatchOutput, Engine, EngineSettings, Outcome};
use crate::output::PointFormat;
use crate::registry::Registry;
use crate::sink::{SinkError, Writer};
use crate::source::{Consumer, DeadLetters, Decoder};
use crate::telemetry::{Health, Metrics, RateLimit, Telemetry, labels};
use anyhow::Context;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::Message;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Readings of one micro-batch and the offsets they complete.
#[derive(Default)]
struct InBatch {
    readings: Vec<(usize, Reading)>,
    offsets: Offsets,
    /// Kafka timestamps (ms) of the messages, for end-to-end latency.
    msg_ts: Vec<i64>,
    messages: usize,
}

/// Highest offset seen per partition.
#[derive(Default, Clone)]
struct Offsets(Vec<(String, i32, i64)>);

impl Offsets {
    fn note(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some(e) => e.2 = e.2.max(offset),
            None => self.0.push((topic.to_string(), partition, offset)),
        }
    }

    fn merge(&mut self, other: &Offsets) {
        for (t, p, o) in &other.0 {
            self.note(t, *p, *o);
        }
    }
}

/// Points of one micro-batch and the offsets to store once they are written.
struct OutBatch {
    body: String,
    offsets: Offsets,
    msg_ts: Vec<i64>,
}

/// Runs the service until SIGTERM/SIGINT; returns whether it drained cleanly.
pub fn run(cfg: Config) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sensorcast-io")
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<bool> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    // Models first: without them nothing can be scored.
    let registry = Registry::new(&cfg.model.registry);
    let mut engines = Vec::new();
    for stream in &cfg.streams {
        let loaded = registry
            .load(&stream.name, None)
            .with_context(|| format!("stream {:?}: cannot load its model", stream.name))?;
        anyhow::ensure!(
            loaded.meta.features == stream.features,
            "stream {:?}: model {} was trained on features {:?}, the config lists {:?}",
            stream.name,
            loaded.meta.version,
            loaded.meta.features,
            stream.features
        );
        metrics
            .model_version
            .get_or_create(&labels(&[
                ("stream", &stream.name),
                ("version", &loaded.meta.version),
            ]))
            .set(1);
        tracing::info!(stream = %stream.name, model = %loaded.meta.version, "model loaded");
        let settings = EngineSettings::from_config(&cfg, stream);
        if let Some(problem) = loaded.inference.calibration_problem(&settings) {
            tracing::warn!(stream = %stream.name, "{problem}");
        }
        let engine =
            Engine::new(Arc::new(loaded.inference), settings).map_err(anyhow::Error::msg)?;
        engines.push(engine);
    }
    health.models_loaded.store(true, Ordering::Relaxed);

    let writer = Writer::new(&cfg.influxdb, Arc::clone(&metrics), Arc::clone(&health))?;
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", cfg.http.listen))?;
    tracing::info!(listen = %cfg.http.listen, "HTTP endpoint up (/metrics, /health/live, /health/ready)");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let http = {
        let app = crate::telemetry::router(Telemetry {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        });
        let mut abort = abort_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = abort.wait_for(|a| *a).await;
                })
                .await;
        })
    };

    let consumer = crate::source::consumer(&cfg, Arc::clone(&metrics), Arc::clone(&health))
        .context("cannot create the Kafka consumer")?;
    let dead_letters = DeadLetters::new(&cfg, Arc::clone(&metrics))
        .context("cannot create the dead-letter producer")?;
    let decoder = Decoder::new(&cfg.streams, cfg.kafka.max_payload_bytes);
    let (engine_tx, engine_rx) = mpsc::channel::<InBatch>(2);
    let (sink_tx, sink_rx) = mpsc::channel::<OutBatch>(cfg.influxdb.queue_batches);

    let source = tokio::spawn(source_loop(SourceLoop {
        consumer: Arc::clone(&consumer),
        decoder,
        dead_letters,
        tx: engine_tx,
        max_batch: cfg.engine.max_batch,
        linger: cfg.engine.max_linger.get(),
        stop: stop_rx,
        give_up: abort_rx.clone(),
        metrics: Arc::clone(&metrics),
        stream_labels: cfg
            .streams
            .iter()
            .map(|st| labels(&[("stream", &st.name)]))
            .collect(),
    }));
    let engine = {
        let cfg = cfg.clone();
        let metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("sensorcast-engine".into())
            .spawn(move || engine_loop(&cfg, engines, engine_rx, sink_tx, &metrics))
            .context("cannot start the engine thread")?
    };
    let sink = tokio::spawn(sink_loop(SinkLoop {
        rx: sink_rx,
        writer,
        consumer: Arc::clone(&consumer),
        flush_bytes: cfg.influxdb.batch_bytes,
        flush_interval: cfg.influxdb.flush_interval.get(),
        concurrency: cfg.influxdb.concurrency,
        abort: abort_rx.clone(),
        metrics: Arc::clone(&metrics),
    }));

    // Run until a signal — or until a stage stops on its own, which is a failure.
    let (mut source, mut sink) = (source, sink);
    let (mut source_done, mut sink_done) = (false, None);
    let unexpected = tokio::select! {
        _ = wait_for_signal() => false,
        _ = &mut source => {
            source_done = true;
            true
        }
        r = &mut sink => {
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
    health.stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let deadline = cfg.service.shutdown_timeout.get();
    let abort_timer = tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        tracing::error!(
            "shutdown deadline reached; abandoning unwritten points (their offsets stay uncommitted)"
        );
        let _ = abort_tx.send(true);
    });
    if !source_done {
        let _ = source.await;
    }
    let engine_ok = tokio::task::spawn_blocking(move || engine.join().is_ok())
        .await
        .unwrap_or(false);
    let sink_ok = match sink_done {
        Some(ok) => ok,
        None => sink.await.unwrap_or(false),
    };
    // Offsets stored so far belong to written points only, so they are committed even when
    // a stage failed; what was not written stays uncommitted.
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {
            tracing::info!("no new offsets to commit")
        }
        Err(e) => {
            tracing::warn!(error = %e, "final commit failed; the uncommitted tail will be re-read")
        }
    }
    let clean = sink_ok && engine_ok && !unexpected;
    abort_timer.abort();
    http.abort();
    drop(consumer);
    tracing::info!(clean, "stopped");
    Ok(clean)
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

struct SourceLoop {
    consumer: Arc<Consumer>,
    decoder: Decoder,
    dead_letters: DeadLetters,
    tx: mpsc::Sender<InBatch>,
    max_batch: usize,
    linger: Duration,
    stop: watch::Receiver<bool>,
    give_up: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// Metric labels per stream, by stream index.
    stream_labels: Vec<crate::telemetry::Labels>,
}

async fn source_loop(mut s: SourceLoop) {
    let mut batch = InBatch::default();
    let mut first_at: Option<Instant> = None;
    let mut stopping = false;
    let mut paused = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let errors = RateLimit::default();
    let mut give_up = s.give_up.clone();
    loop {
        let due = first_at.map(|t| t + s.linger);
        let flush = !batch.readings.is_empty() || batch.messages > 0;
        let flush = flush
            && (stopping
                || batch.messages >= s.max_batch
                || batch.readings.len() >= s.max_batch
                || due.is_some_and(|d| Instant::now() >= d));
        if stopping && !flush {
            break;
        }
        let sleep_to = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = wait_true(&mut s.stop), if !stopping => {
                stopping = true;
            }
            _ = wait_true(&mut give_up) => break,
            permit = s.tx.reserve(), if flush => {
                let Ok(permit) = permit else { break };
                permit.send(std::mem::take(&mut batch));
                first_at = None;
                if paused {
                    set_paused(&s.consumer, &s.metrics, false);
                    paused = false;
                }
            }
            // Owned at once: a borrowed message cannot be held across the dead-letter await.
            msg = async { s.consumer.recv().await.map(|m| m.detach()) }, if !stopping => match msg {
                Ok(m) => {
                    let topic = m.topic().to_string();
                    let (partition, offset) = (m.partition(), m.offset());
                    let ts = m.timestamp().to_millis();
                    match s.decoder.decode(&topic, m.key(), m.payload()) {
                        Ok(d) => {
                            s.metrics.readings_in.get_or_create(&s.stream_labels[d.stream]).inc_by(d.readings.len() as u64);
                            batch.readings.extend(d.readings.into_iter().map(|r| (d.stream, r)));
                            if let Some(ts) = ts {
                                batch.msg_ts.push(ts);
                            }
                        }
                        Err(why) => {
                            if !s.dead_letters.handle(&m, &why, &s.give_up).await {
                                break;
                            }
                        }
                    }
                    batch.offsets.note(&topic, partition, offset);
                    batch.messages += 1;
                    first_at.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    if let Some(suppressed) = errors.check("consumer", Duration::from_secs(10)) {
                        tracing::warn!(error = %e, suppressed, "Kafka consumer error");
                    }
                }
            },
            _ = tick.tick(), if flush => {
                // The engine queue has been full for a tick: pause fetching (and re-pause
                // after a rebalance) but keep polling, so the group does not evict us.
                if !paused {
                    tracing::info!("output queue full: pausing consumption");
                }
                set_paused(&s.consumer, &s.metrics, true);
                paused = true;
            }
            _ = tokio::time::sleep_until(sleep_to.into()), if !flush && due.is_some() => {}
        }
    }
    if paused {
        set_paused(&s.consumer, &s.metrics, false);
    }
}

/// Resolves once the flag is true (or its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn set_paused(consumer: &Consumer, metrics: &Metrics, pause: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "cannot pause/resume partitions");
    }
    metrics.paused.set(pause as i64);
}

fn engine_loop(
    cfg: &Config,
    mut engines: Vec<Engine>,
    mut rx: mpsc::Receiver<InBatch>,
    tx: mpsc::Sender<OutBatch>,
    metrics: &Metrics,
) {
    let mut per_stream: Vec<Vec<Reading>> = vec![Vec::new(); engines.len()];
    let mut out = BatchOutput::default();
    while let Some(batch) = rx.blocking_recv() {
        metrics.batch_size.observe(batch.readings.len() as f64);
        for (stream, r) in batch.readings {
            per_stream[stream].push(r);
        }
        let mut body = String::new();
        for (i, readings) in per_stream.iter_mut().enumerate() {
            if readings.is_empty() {
                continue;
            }
            let stream = &cfg.streams[i];
            let engine = &mut engines[i];
            let model = Arc::clone(engine.model());
            let fmt = PointFormat {
                stream: &stream.name,
                model: &model.version,
                features: &model.features,
                horizon: model.horizon,
            };
            for chunk in readings.chunks(cfg.engine.max_batch) {
                if let Err(e) = engine.process(chunk, &mut out) {
                    // The decoder validates against the model's own schema, so this is a bug:
                    // stop the pipeline (nothing of this batch is acknowledged) rather than
                    // skip readings whose offsets would then be committed.
                    tracing::error!(error = %e, stream = %stream.name, "reading does not fit the model; stopping");
                    return;
                }
                let mut stale = 0;
                for (j, r) in chunk.iter().enumerate() {
                    match &out.outcomes[j] {
                        Outcome::Scored(_) => {
                            fmt.write_line_protocol(&mut body, r, &out, j);
                        }
                        Outcome::Stale { .. } => stale += 1,
                    }
                }
                if stale > 0 {
                    metrics
                        .readings_stale
                        .get_or_create(&labels(&[("stream", &stream.name)]))
                        .inc_by(stale);
                }
            }
            metrics
                .devices
                .get_or_create(&labels(&[("stream", &stream.name)]))
                .set(engine.devices() as i64);
            let c = engine.counters();
            let l = labels(&[("stream", &stream.name)]);
            let raised = metrics.alarms_raised.get_or_create(&l);
            raised.inc_by(c.alarms_raised.saturating_sub(raised.get()));
            metrics
                .alarms_active
                .get_or_create(&l)
                .set(c.alarms_raised.saturating_sub(c.alarms_cleared) as i64);
            readings.clear();
        }
        let out_batch = OutBatch {
            body,
            offsets: batch.offsets,
            msg_ts: batch.msg_ts,
        };
        if tx.blocking_send(out_batch).is_err() {
            break;
        }
    }
}

struct SinkLoop {
    rx: mpsc::Receiver<OutBatch>,
    writer: Writer,
    consumer: Arc<Consumer>,
    flush_bytes: usize,
    flush_interval: Duration,
    concurrency: usize,
    abort: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

/// Points waiting to be sent as one write request.
struct Pending {
    body: String,
    offsets: Offsets,
    msg_ts: Vec<i64>,
    deadline: tokio::time::Instant,
}

/// Gathers batches into write requests (by size or age), keeps up to `concurrency` requests
/// in flight, and acknowledges them strictly in order: a batch's offsets are stored only when
/// it and every batch before it are written. Returns false when shutdown aborted it with
/// points unwritten.
async fn sink_loop(mut s: SinkLoop) -> bool {
    use futures_util::StreamExt;
    let writer = Arc::new(s.writer);
    let mut inflight = futures_util::stream::FuturesOrdered::new();
    let mut pending: Option<Pending> = None;
    let mut closed = false;
    loop {
        let full = inflight.len() >= s.concurrency;
        let ready = pending.as_ref().is_some_and(|p| {
            closed || p.body.len() >= s.flush_bytes || tokio::time::Instant::now() >= p.deadline
        });
        if ready && !full {
            let Some(p) = pending.take() else { continue };
            let (w, mut abort) = (Arc::clone(&writer), s.abort.clone());
            inflight.push_back(async move {
                let result = w.write(&p.body, &mut abort).await;
                (result, p.offsets, p.msg_ts)
            });
            continue;
        }
        if closed && pending.is_none() && inflight.is_empty() {
            return true;
        }
        let room = pending
            .as_ref()
            .is_none_or(|p| p.body.len() < s.flush_bytes);
        let deadline = pending.as_ref().map(|p| p.deadline);
        tokio::select! {
            Some((result, offsets, msg_ts)) = inflight.next(), if !inflight.is_empty() => match result {
                Ok(report) => {
                    s.metrics.points_written.inc_by(report.written);
                    store_offsets(&s.consumer, &offsets);
                    let now = chrono::Utc::now().timestamp_millis();
                    for ts in msg_ts {
                        s.metrics.end_to_end_latency.observe((now - ts).max(0) as f64 / 1000.0);
                    }
                }
                Err(SinkError::Aborted) => return false,
                Err(e) => {
                    tracing::error!(error = %e, "sink stopped");
                    return false;
                }
            },
            next = s.rx.recv(), if !closed && room => match next {
                Some(b) => match &mut pending {
                    Some(p) => {
                        p.body.push_str(&b.body);
                        p.offsets.merge(&b.offsets);
                        p.msg_ts.extend(b.msg_ts);
                    }
                    None => {
                        pending = Some(Pending {
                            body: b.body,
                            offsets: b.offsets,
                            msg_ts: b.msg_ts,
                            deadline: tokio::time::Instant::now() + s.flush_interval,
                        });
                    }
                },
                None => closed = true,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() && !ready => {}
        }
    }
}

fn store_offsets(consumer: &Consumer, offsets: &Offsets) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in &offsets.0 {
        // The stored offset is the next one to consume.
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1)) {
            tracing::warn!(error = %e, topic, partition, "cannot record offset");
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // After a rebalance the partition may belong to another member, which re-reads from
        // the last commit: outputs are rewritten with the same timestamps and tags (§3.2).
        tracing::debug!(error = %e, "cannot store offsets (partition revoked?)");
    }
}
