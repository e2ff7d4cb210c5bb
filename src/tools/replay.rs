//! The engine over readings in time order, every output written: `replay`'s core, which
//! `demo` and `evaluate` run too.

use crate::config::{Config, StreamConfig};
use crate::decode::Reading;
use crate::engine::detect::Edge;
use crate::engine::{BatchOutput, Engine, EngineSettings, Outcome};
use crate::model::registry::Registry;
use crate::output::PointFormat;
use anyhow::bail;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Output file kinds of `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// InfluxDB line protocol.
    LineProtocol,
    /// CSV, one row per reading.
    Csv,
}

impl OutputKind {
    /// From the output file's extension.
    pub fn from_path(p: &Path) -> anyhow::Result<Self> {
        match p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("lp" | "line" | "txt") => Ok(OutputKind::LineProtocol),
            Some("csv") => Ok(OutputKind::Csv),
            _ => bail!(
                "--output {}: use a .lp (line protocol) or .csv file name",
                p.display()
            ),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Readings read.
    pub readings: usize,
    /// Readings stepped.
    pub stepped: u64,
    /// Readings flagged anomalous (an alarm raised on their device).
    pub anomalies: u64,
    /// Alarms raised.
    pub alarms: u64,
    /// Lines skipped (decode errors, duplicates, out of order).
    pub skipped: usize,
    /// Devices.
    pub devices: usize,
    /// Points written.
    pub points: u64,
    /// Engine throughput (readings per second, engine only).
    pub engine_events_per_s: f64,
}

/// Runs the engine over readings in order and writes every output; `on_scored` sees each
/// stepped reading (the demo uses it to score detection).
pub fn replay_readings(
    cfg: &Config,
    stream: &StreamConfig,
    model: Arc<crate::engine::InferenceModel>,
    readings: &[Reading],
    kind: OutputKind,
    out: &mut dyn Write,
    on_scored: &mut dyn FnMut(usize, &BatchOutput, usize),
) -> anyhow::Result<ReplaySummary> {
    let settings = EngineSettings::from_config(cfg, stream);
    if let Some(problem) = model.calibration_problem(&settings) {
        tracing::warn!("{problem}");
    }
    let mut engine = Engine::new(Arc::clone(&model), settings)
        .map_err(|e| anyhow::anyhow!("model {}: {e}", model.version))?;
    // The maintenance file's windows too, as serve applies them.
    let windows = crate::engine::maintenance::WindowSource::now(cfg, &stream.name)?;
    engine.set_maintenance(Arc::new(windows));
    let output = cfg.output_for(stream);
    let fmt = PointFormat::new(
        &stream.name,
        &model.version,
        &model.features,
        model.horizon,
        &output,
    );
    if kind == OutputKind::Csv {
        writeln!(out, "{}", fmt.csv_header())?;
    }
    let mut summary = ReplaySummary {
        readings: readings.len(),
        ..ReplaySummary::default()
    };
    let mut batch_out = BatchOutput::default();
    let mut text = String::new();
    let mut engine_time = std::time::Duration::ZERO;
    for (b, chunk) in readings.chunks(cfg.engine.max_batch).enumerate() {
        let t0 = std::time::Instant::now();
        engine.process(chunk, &mut batch_out)?;
        engine_time += t0.elapsed();
        text.clear();
        for (i, r) in chunk.iter().enumerate() {
            if let Outcome::Scored(s) = &batch_out.outcomes[i] {
                match kind {
                    OutputKind::LineProtocol => {
                        summary.points +=
                            fmt.write_line_protocol(&mut text, r, &batch_out, i) as u64;
                    }
                    OutputKind::Csv => {
                        fmt.write_csv_row(&mut text, r, &batch_out, i);
                        summary.points += fmt.volume().points as u64;
                    }
                }
                summary.anomalies += s.is_anomaly as u64;
                summary.alarms += matches!(s.edge, Edge::Raised { .. }) as u64;
                on_scored(b * cfg.engine.max_batch + i, &batch_out, i);
            }
        }
        if kind == OutputKind::LineProtocol {
            for e in &batch_out.silent {
                summary.points += fmt.write_silent_event(&mut text, e) as u64;
            }
        }
        out.write_all(text.as_bytes())?;
    }
    let c = engine.counters();
    summary.stepped = c.stepped;
    summary.devices = engine.devices();
    summary.engine_events_per_s = c.stepped as f64 / engine_time.as_secs_f64().max(1e-9);
    Ok(summary)
}

/// Loads a stream's model from the registry (the current version when `version` is `None`)
/// and checks that it was trained on the features the config lists.
pub fn load_model(
    cfg: &Config,
    stream: &StreamConfig,
    version: Option<&str>,
) -> anyhow::Result<crate::model::registry::LoadedModel> {
    let loaded = Registry::new(&cfg.model.registry).load(&stream.name, version)?;
    if loaded.meta.features != stream.features {
        bail!(
            "model {} of stream {:?} was trained on features {:?}, the config lists {:?}; retrain or fix streams.features",
            loaded.meta.version,
            stream.name,
            loaded.meta.features,
            stream.features
        );
    }
    Ok(loaded)
}
