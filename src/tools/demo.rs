//! `sensorcast demo`: the whole pipeline on an embedded synthetic fleet, with no servers.
//!
//! Generates a fleet with injected faults, trains a small model on the clean first half,
//! replays the whole series through the streaming engine, writes line protocol and an SVG
//! chart, and scores detection against the known faults.

use crate::config::{Config, HumanDuration, ModelConfig, StreamConfig, TrainConfig};
use crate::decode::Reading;
use crate::engine::detect::Edge;
use crate::engine::{BatchOutput, InferenceModel, Outcome};
use crate::model::registry::Registry;
use crate::model::train::train;
use crate::output::PointFormat;
use crate::synth::{FEATURES, Fault, Fleet, FleetSpec, device_name, generate};
use crate::tools::replay::{OutputKind, replay_readings};
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Demo size.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Output folder.
    pub out: PathBuf,
    /// Devices.
    pub devices: usize,
    /// Readings per device.
    pub readings: usize,
    /// Faults injected.
    pub faults: usize,
    /// Seed.
    pub seed: u64,
    /// The live part's operating point moves by this many standard deviations of each
    /// feature (as measured on the device's training part), linearly over `shift_days`, then
    /// stays there (0: no move).
    pub shift_sigmas: f64,
    /// Days the move takes.
    pub shift_days: f64,
}

/// Readings after a fault's end that still count as catching it.
pub const DETECTION_SLACK: usize = 12;

/// What the demo found.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Devices.
    pub devices: usize,
    /// Readings replayed.
    pub readings: usize,
    /// Engine throughput during the replay.
    pub events_per_s: f64,
    /// Faults injected.
    pub faults: usize,
    /// Faults with an alarm raised inside their window.
    pub detected: usize,
    /// Alarms raised outside every fault window (false alarm events).
    pub false_alarms: u64,
    /// Device-days of normal operation those alarms could have been raised in.
    pub normal_device_days: f64,
    /// Readings flagged (alarm raised) outside every fault window.
    pub false_alarm_readings: u64,
    /// Readings that could have raised a false alarm.
    pub normal_readings: u64,
    /// Normal readings over the alarm line (what the knob promises to keep under its rate).
    pub over_line_readings: u64,
    /// The knob (`anomaly.false_alarm_rate` of the stream).
    pub rate: f64,
    /// Readings per device-day.
    pub readings_per_day: f64,
    /// Alarm events: device, start and end step (end `None` while still raised at the end).
    pub alarms: Vec<(usize, usize, Option<usize>, String)>,
    /// Seconds spent training.
    pub train_secs: f64,
    /// Validation MASE of the model.
    pub mase: f64,
    /// Per fault: kind, device, feature, detection delay in readings (None if missed) and the
    /// share of the fault's readings under a raised alarm.
    pub per_fault: Vec<(Fault, Option<usize>, f64)>,
}

/// The demo's configuration (also written to `<out>/demo.toml`): its own stream, model and
/// training settings on top of `base` (the defaults and any `SENSORCAST__…` overrides).
pub fn demo_config(base: Config, out: &Path, seed: u64) -> Config {
    Config {
        streams: vec![StreamConfig {
            name: "pumps".into(),
            topic: "sensors.pumps".into(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            interval: HumanDuration::from_secs(300),
            ..StreamConfig::default()
        }],
        model: ModelConfig {
            registry: out.join("models"),
            hidden: 32,
            layers: 1,
            horizon: 3,
            ..ModelConfig::default()
        },
        train: TrainConfig {
            window: 32,
            stride: 4,
            epochs: 40,
            batch_size: 32,
            patience: 5,
            learning_rate: 5e-3,
            seed,
            ..base.train.clone()
        },
        ..base
    }
}

impl DemoSpec {
    /// The fleet generator's settings for this demo.
    fn fleet_spec(&self) -> FleetSpec {
        FleetSpec {
            devices: self.devices,
            readings: self.readings,
            faults: self.faults,
            seed: self.seed,
            ..FleetSpec::default()
        }
    }

    /// Steps of each device's history the model trains on: the first half.
    fn history_end(&self) -> usize {
        self.readings / 2
    }
}

/// An alarm event: device, start and end step (end `None` while still raised at the end),
/// and what it says about why.
type Alarm = (usize, usize, Option<usize>, String);

/// Runs the demo: generates the fleet, trains on its first half, replays all of it through
/// the engine, draws the chart and scores detection against the injected faults.
pub fn run(spec: &DemoSpec, show_progress: bool) -> anyhow::Result<DemoSummary> {
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("failed to create {}", spec.out.display()))?;
    let cfg = demo_config(Config::load(None)?, &spec.out, spec.seed);
    let stream = cfg.streams[0].clone();
    std::fs::write(spec.out.join("demo.toml"), cfg.to_masked_toml())
        .context("failed to write demo.toml")?;
    let fleet_spec = spec.fleet_spec();
    let fleet = make_fleet(spec, &fleet_spec);
    let history = write_inputs(spec, &fleet, &stream.features)?;
    eprintln!(
        "demo: {} devices × {} readings ({} features, 5-minute interval), {} faults injected in the second half",
        spec.devices,
        spec.readings,
        FEATURES.len(),
        fleet.faults.len()
    );
    let model = train_model(&cfg, &stream, &history, show_progress)?;
    let chart_feature = chart_features(&fleet, spec.devices);
    let replayed = replay(
        &cfg,
        &stream,
        spec,
        &fleet,
        fleet_spec.interval_ns,
        model.inference,
        &chart_feature,
    )?;
    let scores = score(&fleet, spec, cfg.engine.warmup as usize, &replayed);
    let interval_days = stream.interval.as_nanos() as f64 / 86_400e9;
    crate::tools::chart::draw(
        &spec.out.join("chart.svg"),
        &fleet,
        &replayed.forecast1,
        &replayed.flagged,
        &chart_feature,
        spec.devices,
    )?;
    Ok(DemoSummary {
        devices: spec.devices,
        readings: fleet.readings.len(),
        events_per_s: replayed.events_per_s,
        faults: fleet.faults.len(),
        detected: scores
            .per_fault
            .iter()
            .filter(|(_, d, _)| d.is_some())
            .count(),
        false_alarms: scores.false_alarms,
        normal_device_days: scores.normal_readings as f64 * interval_days,
        false_alarm_readings: scores.false_alarm_readings,
        normal_readings: scores.normal_readings,
        over_line_readings: scores.over_line_readings,
        rate: stream.rate(&cfg.anomaly),
        readings_per_day: 1.0 / interval_days,
        alarms: replayed.alarms,
        train_secs: model.train_secs,
        mase: model.mase,
        per_fault: scores.per_fault,
    })
}

/// Generates the demo's fleet and, when `spec` asks for it, moves the operating point of its
/// live part (see [`shift_operating_point`]).
fn make_fleet(spec: &DemoSpec, fleet_spec: &FleetSpec) -> Fleet {
    let mut fleet = generate(fleet_spec);
    let history_end = spec.history_end();
    if spec.shift_sigmas != 0.0 {
        let ramp = (spec.shift_days * 86_400e9 / fleet_spec.interval_ns as f64).max(1.0);
        shift_operating_point(
            &mut fleet,
            spec.devices,
            history_end,
            spec.shift_sigmas,
            ramp,
        );
        eprintln!(
            "demo: from reading {history_end} on, every device's operating point moves by {}σ per feature over {} days ({ramp:.0} readings), then stays there",
            spec.shift_sigmas, spec.shift_days
        );
    }
    fleet
}

/// Writes the fleet's readings under `spec.out`: the first half, which the model trains on,
/// to `history.jsonl` and all of them to `live.jsonl`. Returns the first half.
fn write_inputs(
    spec: &DemoSpec,
    fleet: &Fleet,
    features: &[String],
) -> anyhow::Result<Vec<Reading>> {
    let history_end = spec.history_end();
    let history: Vec<_> = fleet
        .readings
        .iter()
        .zip(&fleet.steps)
        .filter(|(_, s)| **s < history_end)
        .map(|(r, _)| r.clone())
        .collect();
    write_jsonl(&spec.out.join("history.jsonl"), &history, features)?;
    write_jsonl(&spec.out.join("live.jsonl"), &fleet.readings, features)?;
    Ok(history)
}

/// The demo's model, trained, published and loaded back.
struct DemoModel {
    /// Exported for the engine.
    inference: InferenceModel,
    /// Seconds spent training.
    train_secs: f64,
    /// Validation MASE.
    mase: f64,
}

/// Trains a model on `history`, publishes it to the demo's registry, prints its validation
/// report and loads it back for the replay.
fn train_model(
    cfg: &Config,
    stream: &StreamConfig,
    history: &[Reading],
    show_progress: bool,
) -> anyhow::Result<DemoModel> {
    eprintln!(
        "demo: training on the clean first half ({} readings)…",
        history.len()
    );
    let t0 = std::time::Instant::now();
    let mut progress = crate::tools::training::TrainingProgress::new(show_progress);
    let trained = train(
        cfg,
        stream,
        history,
        vec!["history.jsonl".into()],
        &mut |e| progress.update(e),
    )?;
    progress.finish();
    let train_secs = t0.elapsed().as_secs_f64();
    let registry = Registry::new(&cfg.model.registry);
    let mut meta = trained.meta;
    registry.publish_new(&mut meta, &trained.model)?;
    let loaded = registry.load(&stream.name, None)?;
    eprintln!(
        "{}",
        crate::tools::training::validation_report(&loaded.meta)
    );
    Ok(DemoModel {
        inference: loaded.inference,
        train_secs,
        mase: meta.validation.mase,
    })
}

/// The feature charted for each of `devices`: the one of its first fault, else the second.
fn chart_features(fleet: &Fleet, devices: usize) -> Vec<usize> {
    (0..devices)
        .map(|d| {
            fleet
                .faults
                .iter()
                .find(|f| f.device == d)
                .map(|f| f.feature)
                .unwrap_or(1)
        })
        .collect()
}

/// Device of reading `i`: readings are step by step, devices in order within a step.
fn device_of(i: usize, devices: usize) -> usize {
    i % devices.max(1)
}

/// What the replay left for the chart and the scoring.
struct Replayed {
    /// Per reading: an alarm was raised.
    flagged: Vec<bool>,
    /// Per reading: it was over the alarm line.
    over_line: Vec<bool>,
    /// Per reading: the one-step forecast (mean, low, high) of its device's charted feature.
    forecast1: Vec<[f32; 3]>,
    /// Alarm events in order of start step, then device.
    alarms: Vec<Alarm>,
    /// Engine throughput.
    events_per_s: f64,
}

/// Replays the whole fleet through the engine with `model`, writing line protocol to
/// `forecasts.lp` under `spec.out`; `interval_ns` is the time between a device's readings.
fn replay(
    cfg: &Config,
    stream: &StreamConfig,
    spec: &DemoSpec,
    fleet: &Fleet,
    interval_ns: i64,
    model: InferenceModel,
    chart_feature: &[usize],
) -> anyhow::Result<Replayed> {
    let out_path = spec.out.join("forecasts.lp");
    let file = std::fs::File::create(&out_path)
        .with_context(|| format!("failed to create {}", out_path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let output = cfg.output_for(stream);
    let mut recorder = Recorder::new(
        fleet,
        spec.devices,
        interval_ns,
        chart_feature,
        PointFormat::new(
            &stream.name,
            "",
            &stream.features,
            cfg.model.horizon,
            &output,
        ),
    );
    let summary = replay_readings(
        cfg,
        stream,
        Arc::new(model),
        &fleet.readings,
        OutputKind::LineProtocol,
        &mut w,
        &mut |i, out, j| recorder.record(i, out, j),
    )?;
    let replayed = recorder.finish(summary.engine_events_per_s);
    w.flush()?;
    Ok(replayed)
}

/// Records, reading by reading, what the chart and the scoring need from the replay.
struct Recorder<'a> {
    fleet: &'a Fleet,
    devices: usize,
    /// Time between a device's readings (ns).
    interval_ns: i64,
    chart_feature: &'a [usize],
    /// Explains an alarm as the line protocol does.
    fmt: PointFormat<'a>,
    /// Per device: the start step and explanation of its alarm while raised.
    open: Vec<Option<(usize, String)>>,
    replayed: Replayed,
}

impl<'a> Recorder<'a> {
    /// A recorder for the replay of `fleet`, nothing recorded yet.
    fn new(
        fleet: &'a Fleet,
        devices: usize,
        interval_ns: i64,
        chart_feature: &'a [usize],
        fmt: PointFormat<'a>,
    ) -> Self {
        let n = fleet.readings.len();
        Recorder {
            fleet,
            devices,
            interval_ns,
            chart_feature,
            fmt,
            open: vec![None; devices],
            replayed: Replayed {
                flagged: vec![false; n],
                over_line: vec![false; n],
                forecast1: vec![[0.0f32; 3]; n],
                alarms: Vec::new(),
                events_per_s: 0.0,
            },
        }
    }

    /// Records reading `i`, the `j`th of the engine's output `out`: its flags, the alarm
    /// edge it brings and the forecast of its device's charted feature.
    fn record(&mut self, i: usize, out: &BatchOutput, j: usize) {
        let Outcome::Scored(s) = &out.outcomes[j] else {
            return;
        };
        let r = &mut self.replayed;
        r.flagged[i] = s.is_anomaly;
        r.over_line[i] = s.over_line;
        let d = device_of(i, self.devices);
        let step = self.fleet.steps[i];
        // A device's readings are `interval` apart: an edge's timestamp gives its step.
        let ts = self.fleet.readings[i].ts;
        let interval_ns = self.interval_ns;
        let step_of = |t: i64| step.saturating_sub(((ts - t) / interval_ns.max(1)) as usize);
        match s.edge {
            Edge::Raised { start } => {
                self.open[d] = Some((
                    step_of(start),
                    self.fmt.explain(out.event_contributions(j), 2),
                ));
            }
            Edge::Cleared { end, .. } => {
                if let Some((start, why)) = self.open[d].take() {
                    r.alarms.push((d, start, Some(step_of(end)), why));
                }
            }
            Edge::None => {}
        }
        let f = self.chart_feature[d];
        let fc = out.forecast(j);
        r.forecast1[i] = [fc[f * 3], fc[f * 3 + 1], fc[f * 3 + 2]];
    }

    /// What was recorded, with the alarms still raised at the end closed as such and all
    /// alarms sorted.
    fn finish(self, events_per_s: f64) -> Replayed {
        let mut replayed = self.replayed;
        for (d, o) in self.open.into_iter().enumerate() {
            if let Some((start, why)) = o {
                replayed.alarms.push((d, start, None, why));
            }
        }
        replayed.alarms.sort_by_key(|a| (a.1, a.0));
        replayed.events_per_s = events_per_s;
        replayed
    }
}

/// How detection did against the known faults.
struct Scores {
    /// Per fault: the fault, its detection delay in readings (None if missed) and the share of
    /// its readings under a raised alarm.
    per_fault: Vec<(Fault, Option<usize>, f64)>,
    /// Alarm events outside every fault window.
    false_alarms: u64,
    /// Readings flagged outside every fault window.
    false_alarm_readings: u64,
    /// Readings after the warm-up outside every fault window.
    normal_readings: u64,
    /// Normal readings over the alarm line.
    over_line_readings: u64,
}

/// Scores what the replay flagged against `fleet`'s known faults; readings before `warmup`
/// steps are not counted as normal ones.
fn score(fleet: &Fleet, spec: &DemoSpec, warmup: usize, replayed: &Replayed) -> Scores {
    let flagged = &replayed.flagged;
    let in_window = |d: usize, step: usize| {
        fleet
            .faults
            .iter()
            .any(|f| f.device == d && step >= f.start && step < f.end + DETECTION_SLACK)
    };
    let mut per_fault = Vec::new();
    for f in &fleet.faults {
        let delay = (f.start..(f.end + DETECTION_SLACK).min(spec.readings))
            .find(|&s| flagged[s * spec.devices + f.device])
            .map(|s| s - f.start);
        let held = (f.start..f.end.min(spec.readings))
            .filter(|&s| flagged[s * spec.devices + f.device])
            .count() as f64
            / (f.end.min(spec.readings) - f.start).max(1) as f64;
        per_fault.push((f.clone(), delay, held));
    }
    let (mut false_alarm_readings, mut normal, mut over_line_readings) = (0u64, 0u64, 0u64);
    for (i, (&step, &flag)) in fleet.steps.iter().zip(flagged).enumerate() {
        if step >= warmup && !in_window(device_of(i, spec.devices), step) {
            normal += 1;
            false_alarm_readings += flag as u64;
            over_line_readings += replayed.over_line[i] as u64;
        }
    }
    let false_alarms = replayed
        .alarms
        .iter()
        .filter(|(d, start, end, _)| {
            let end = end.unwrap_or(spec.readings);
            !fleet.faults.iter().any(|f| {
                f.device == *d
                    && *start < f.end + DETECTION_SLACK
                    && end + DETECTION_SLACK >= f.start
            })
        })
        .count() as u64;
    Scores {
        per_fault,
        false_alarms,
        false_alarm_readings,
        normal_readings: normal,
        over_line_readings,
    }
}

/// Moves every device's operating point from step `from` on: each feature by `sigmas` of its
/// standard deviation over the device's steps before `from`, linearly over `ramp` steps.
fn shift_operating_point(fleet: &mut Fleet, devices: usize, from: usize, sigmas: f64, ramp: f64) {
    let nf = FEATURES.len();
    let mut moments = vec![(0.0f64, 0.0f64, 0usize); devices * nf];
    for (i, r) in fleet.readings.iter().enumerate() {
        if fleet.steps[i] < from {
            for (f, &v) in r.values.iter().enumerate() {
                let m = &mut moments[(i % devices) * nf + f];
                m.0 += v as f64;
                m.1 += (v as f64) * (v as f64);
                m.2 += 1;
            }
        }
    }
    let sd: Vec<f64> = moments
        .iter()
        .map(|&(s, sq, n)| {
            let n = n.max(1) as f64;
            (sq / n - (s / n).powi(2)).max(0.0).sqrt()
        })
        .collect();
    for (i, r) in fleet.readings.iter_mut().enumerate() {
        let step = fleet.steps[i];
        if step >= from {
            let progress = ((step - from + 1) as f64 / ramp).min(1.0);
            for (f, v) in r.values.iter_mut().enumerate() {
                *v = (*v as f64 + sigmas * sd[(i % devices) * nf + f] * progress) as f32;
            }
        }
    }
}

fn write_jsonl(
    path: &Path,
    readings: &[crate::decode::Reading],
    features: &[String],
) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for r in readings {
        let values: serde_json::Map<String, serde_json::Value> = features
            .iter()
            .zip(&r.values)
            .map(|(f, v)| (f.clone(), serde_json::json!(*v)))
            .collect();
        let line = serde_json::json!({"device": r.device, "ts": crate::time::format_ts(r.ts), "values": values});
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    Ok(())
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "devices: {}", self.devices)?;
        writeln!(f, "readings: {}", self.readings)?;
        writeln!(
            f,
            "training: {:.1}s, validation MASE {:.3}",
            self.train_secs, self.mase
        )?;
        writeln!(f, "events/s (engine): {:.0}", self.events_per_s)?;
        writeln!(f, "faults injected: {}", self.faults)?;
        writeln!(f, "faults detected: {}/{}", self.detected, self.faults)?;
        for (fault, delay, held) in &self.per_fault {
            let d = match delay {
                Some(d) => format!(
                    "detected after {d} readings, alarm held for {:.0}% of it",
                    held * 100.0
                ),
                None => "missed".into(),
            };
            writeln!(
                f,
                "  {} on {} {} (readings {}..{}): {d}",
                fault.kind.name(),
                device_name(fault.device),
                FEATURES[fault.feature],
                fault.start,
                fault.end
            )?;
        }
        writeln!(f, "alarm events: {}", self.alarms.len())?;
        for (d, start, end, why) in &self.alarms {
            let end = end.map_or("still raised".to_string(), |e| e.to_string());
            writeln!(f, "  {} readings {start}..{end}: {why}", device_name(*d))?;
        }
        let per_day = self.false_alarms as f64 / self.normal_device_days.max(f64::MIN_POSITIVE);
        write!(
            f,
            "false alarm events: {} in {:.1} device-days of normal operation ({per_day:.3} per device-day); flagged normal readings: {} of {} ({:.2}%)",
            self.false_alarms,
            self.normal_device_days,
            self.false_alarm_readings,
            self.normal_readings,
            self.false_alarm_readings as f64 / self.normal_readings.max(1) as f64 * 100.0
        )?;
        let over = self.over_line_readings as f64 / self.normal_readings.max(1) as f64;
        write!(
            f,
            "\nnormal readings over the line: {} ({:.3}%; the knob, anomaly.false_alarm_rate, promises {:.3}%: at most {:.2} per device-day, {:.2} measured)",
            self.over_line_readings,
            over * 100.0,
            self.rate * 100.0,
            self.rate * self.readings_per_day,
            over * self.readings_per_day,
        )
    }
}
