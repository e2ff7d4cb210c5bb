//! Command implementations behind `main`: reading input files with their problems reported by
//! file and line, and the `train`, `replay`, `check-config` and `bench` commands.

use crate::config::{Config, StreamConfig};
use crate::decode::{Reading, Schema, read_file};
use crate::engine::detect::Edge;
use crate::engine::{BatchOutput, Engine, EngineSettings, Outcome};
use crate::model::registry::{ModelMeta, Registry};
use crate::model::train::{ProgressEvent, Trained, train};
use crate::output::PointFormat;
use crate::time::format_ts;
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A line of input that was skipped, with its location.
#[derive(Debug, Clone)]
pub struct InputIssue {
    /// File.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InputIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Readings of several files in order, with every skipped line.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Readings, each device's in strictly increasing time order.
    pub readings: Vec<Reading>,
    /// Source of each reading (parallel to `readings`).
    pub lines: Vec<(usize, usize)>,
    /// Skipped lines.
    pub issues: Vec<InputIssue>,
    /// Files, by index used in `lines`.
    pub files: Vec<PathBuf>,
}

/// Reads files in order. Lines that do not decode, and readings whose timestamp is not after
/// the same device's previous reading (duplicates and out-of-order lines), are skipped and
/// reported with file and line. A missing or empty file, or a bad CSV header, is an error.
pub fn read_inputs(paths: &[PathBuf], schema: &Schema) -> anyhow::Result<Inputs> {
    let mut out = Inputs::default();
    let mut last: HashMap<String, (i64, usize, usize)> = HashMap::new();
    for (fi, path) in paths.iter().enumerate() {
        let fr = read_file(path, schema)?;
        out.files.push(path.clone());
        for e in fr.errors {
            out.issues.push(InputIssue {
                path: e.path,
                line: e.line,
                message: format!("{} ({})", e.error, e.error.reason()),
            });
        }
        for (line, r) in fr.readings {
            if let Some(&(ts, pf, pl)) = last.get(&r.device)
                && r.ts <= ts
            {
                let what = if r.ts == ts {
                    "duplicate"
                } else {
                    "out-of-order"
                };
                out.issues.push(InputIssue {
                        path: path.clone(),
                        line,
                        message: format!(
                            "{what} timestamp {} for device {:?}: not after its previous reading at {}:{} ({}); skipped",
                            format_ts(r.ts),
                            r.device,
                            paths[pf].display(),
                            pl,
                            format_ts(ts)
                        ),
                    });
                continue;
            }
            last.insert(r.device.clone(), (r.ts, fi, line));
            out.readings.push(r);
            out.lines.push((fi, line));
        }
    }
    out.issues
        .sort_by(|a, b| a.path.cmp(&b.path).then(a.line.cmp(&b.line)));
    Ok(out)
}

/// Prints skipped lines to stderr (the first `limit`, then a count) and fails in strict mode.
pub fn report_issues(issues: &[InputIssue], strict: bool, limit: usize) -> anyhow::Result<()> {
    for i in issues.iter().take(limit) {
        eprintln!("warning: {i}");
    }
    if issues.len() > limit {
        eprintln!("warning: … and {} more skipped lines", issues.len() - limit);
    }
    if strict && !issues.is_empty() {
        bail!(
            "{} bad input lines (--strict); the first: {}",
            issues.len(),
            issues[0]
        );
    }
    Ok(())
}

/// `sensorcast check-config`: the effective config with secrets masked.
pub fn check_config(path: Option<&Path>) -> Result<String, crate::config::ConfigError> {
    let cfg = Config::load(path)?;
    let mut out = cfg.to_masked_toml();
    out.push_str("\n# output per stepped reading (model.horizon and the stream's features)\n");
    for s in &cfg.streams {
        let output = cfg.output_for(s);
        let fmt = PointFormat::new(&s.name, "model", &s.features, cfg.model.horizon, &output);
        let v = fmt.volume();
        let every = output.forecast_every.max(1);
        let _ = writeln!(
            out,
            "# stream {:?}: {} points, {} samples{}; an alarm raised or cleared adds 1 point",
            s.name,
            v.points,
            v.samples,
            if every > 1 {
                let thin = PointFormat::new(
                    &s.name,
                    "model",
                    &s.features,
                    cfg.model.horizon,
                    &crate::config::OutputConfig {
                        horizons: crate::config::Horizons::Steps(Vec::new()),
                        ..output.clone()
                    },
                )
                .volume();
                format!(
                    " on every {every}th reading, {} points, {} samples on the others",
                    thin.points, thin.samples
                )
            } else {
                String::new()
            }
        );
    }
    Ok(out)
}

/// `sensorcast check-config --probe`: whether InfluxDB takes writes as configured and the
/// Kafka brokers answer with the streams' topics. One line per check; `Err` if any failed.
pub fn probe(cfg: &Config) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut ok = true;
    match rt.block_on(crate::influx::probe(&cfg.influxdb)) {
        Ok(s) => out.push_str(&format!("ok    influxdb: {s}\n")),
        Err(e) => {
            ok = false;
            out.push_str(&format!("FAIL  influxdb: {e}\n"));
        }
    }
    for line in crate::kafka::probe(cfg) {
        ok &= line.starts_with("ok");
        out.push_str(&line);
        out.push('\n');
    }
    if ok { Ok(out) } else { Err(out) }
}

/// `sensorcast train`: trains and publishes; returns the published metadata.
pub fn run_train(
    cfg: &Config,
    stream: &StreamConfig,
    inputs: &[PathBuf],
    strict: bool,
    show_progress: bool,
) -> anyhow::Result<ModelMeta> {
    let schema = Schema::from_stream(stream);
    let data = read_inputs(inputs, &schema)?;
    report_issues(&data.issues, strict, 20)?;
    if data.readings.is_empty() {
        bail!(
            "no valid readings in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let input_names = inputs.iter().map(|p| p.display().to_string()).collect();
    train_and_publish(cfg, stream, &data.readings, input_names, show_progress)
}

/// `sensorcast train --source influxdb`: the stream's readings between `from` and `to` (ns),
/// read back from InfluxDB; trains and publishes.
pub fn run_train_from_influxdb(
    cfg: &Config,
    stream: &StreamConfig,
    from: i64,
    to: i64,
    strict: bool,
    show_progress: bool,
) -> anyhow::Result<ModelMeta> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let h = rt.block_on(crate::model::history::from_influxdb(cfg, stream, from, to))?;
    train_on_history(cfg, stream, h, strict, show_progress)
}

/// `sensorcast train --source kafka`: the stream's topic between `from` and `to` (ns).
pub fn run_train_from_kafka(
    cfg: &Config,
    stream: &StreamConfig,
    from: i64,
    to: i64,
    strict: bool,
    show_progress: bool,
) -> anyhow::Result<ModelMeta> {
    let h = crate::model::history::from_kafka(cfg, stream, from, to)?;
    train_on_history(cfg, stream, h, strict, show_progress)
}

fn train_on_history(
    cfg: &Config,
    stream: &StreamConfig,
    h: crate::model::history::History,
    strict: bool,
    show_progress: bool,
) -> anyhow::Result<ModelMeta> {
    for s in &h.skipped {
        eprintln!("warning: {s}");
    }
    if h.skipped_total > h.skipped.len() {
        eprintln!(
            "warning: … and {} more skipped rows",
            h.skipped_total - h.skipped.len()
        );
    }
    if strict && h.skipped_total > 0 {
        bail!("{} rows skipped (--strict)", h.skipped_total);
    }
    if h.readings.is_empty() {
        bail!(
            "no readings of stream {:?} in {} (for InfluxDB, train.history_measurement, history_device_tag and history_stream_tag say where to look)",
            stream.name,
            h.source
        );
    }
    train_and_publish(cfg, stream, &h.readings, vec![h.source], show_progress)
}

/// `sensorcast label`: checks the label (and, without `until`, finds the alarm's end in
/// InfluxDB, which also proves the alarm exists), then appends it to `anomaly.labels_file`.
/// Returns what was recorded, in words.
pub fn run_label(cfg: &Config, mut label: crate::labels::Label) -> anyhow::Result<String> {
    let path = &cfg.anomaly.labels_file;
    if path.is_empty() {
        bail!("anomaly.labels_file is not set: the config names no file to record labels in");
    }
    let at = crate::time::parse_ts_text(&label.at).context("--at")?;
    // Exactly the point's timestamp, whatever form it was given in.
    label.at = format_ts(at);
    if let Some(u) = &label.until {
        label.until = Some(format_ts(crate::time::parse_ts_text(u).context("--until")?));
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let found = rt
            .block_on(crate::model::history::alarm(
                cfg,
                &label.stream,
                &label.device,
                &label.kind,
                at,
            ))
            .context(
                "cannot look the alarm up in InfluxDB (give --until to record it without looking)",
            )?;
        let Some(found) = found else {
            bail!(
                "InfluxDB holds no {} alarm of device {:?} (stream {:?}) starting at {}: --at must be the alarm's start, as its anomaly_event point's time and `start` field give it (or give --until to record it without looking)",
                label.kind,
                label.device,
                label.stream,
                label.at
            );
        };
        label.until = found.end.filter(|_| !found.active).map(format_ts);
    }
    label
        .span()
        .map_err(|(key, e)| anyhow::anyhow!("{key}: {e}"))?;
    crate::labels::append_label(std::path::Path::new(path), &label)?;
    Ok(format!(
        "recorded the {} alarm of {} ({}) from {} to {} as {} in {path}",
        label.kind,
        label.device,
        label.stream,
        label.at,
        label.until.as_deref().unwrap_or("now (still active)"),
        label.verdict.as_str()
    ))
}

/// `sensorcast retrain` (and `[retrain] every` inside `serve`): a challenger trained on the
/// stream's history (`retrain.source`: InfluxDB or Kafka) before the holdout, scored with the
/// current model (the champion) on the holdout, and published only if its MASE beats the
/// champion's by `retrain.margin` and it does not put many more holdout readings over the
/// alarm line (`retrain.max_over_line_ratio`). Returns the decision (also appended to
/// the registry's `decisions.jsonl`, and in the published model's metadata).
pub fn run_retrain(
    cfg: &Config,
    stream: &StreamConfig,
    to: i64,
    show_progress: bool,
    inside_serve: bool,
) -> anyhow::Result<crate::model::registry::Decision> {
    // Inside `serve` everything goes to the log only (which may be JSON).
    let say = |line: String| {
        if inside_serve {
            tracing::info!(stream = %stream.name, "retrain: {line}");
        } else {
            eprintln!("{line}");
        }
    };
    use crate::model::registry::Decision;
    let r = &cfg.retrain;
    let from = to.saturating_sub(r.window.as_nanos());
    let split = to.saturating_sub(r.holdout.as_nanos());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let h = match r.source {
        crate::config::HistorySource::Influxdb => {
            rt.block_on(crate::model::history::from_influxdb(cfg, stream, from, to))?
        }
        crate::config::HistorySource::Kafka => {
            crate::model::history::from_kafka(cfg, stream, from, to)?
        }
    };
    if h.skipped_total > 0 {
        say(format!(
            "warning: {} history rows skipped (e.g. {:?})",
            h.skipped_total,
            h.skipped.first()
        ));
    }
    let verdicts = rt.block_on(retrain_verdicts(cfg, &stream.name, to, &say));
    // Confirmed faults are not the normal the challenger should learn.
    let before: Vec<Reading> = h
        .readings
        .iter()
        .filter(|x| x.ts < split && !verdicts.confirmed_fault(&x.device, x.ts))
        .cloned()
        .collect();
    let confirmed_left_out = h
        .readings
        .iter()
        .filter(|x| x.ts < split && verdicts.confirmed_fault(&x.device, x.ts))
        .count() as u64;
    let held_out = h.readings.iter().filter(|x| x.ts >= split).count();
    if before.is_empty() || held_out == 0 {
        bail!(
            "{} readings before the holdout and {held_out} in it ({}): retrain needs both (retrain.window, retrain.holdout)",
            before.len(),
            h.source
        );
    }
    say(format!(
        "challenger: training on {} readings before {} ({confirmed_left_out} left out as confirmed faults); holdout: {held_out} readings",
        before.len(),
        crate::time::format_ts(split)
    ));
    let mut progress = TrainingProgress::new(show_progress);
    let Trained { mut meta, model } =
        train(cfg, stream, &before, vec![h.source.clone()], &mut |e| {
            progress.update(e)
        })?;
    progress.finish();
    say(format!(
        "challenger trained: {} windows × {} epochs in {:.1} s ({:.0} windows/s)",
        meta.training.train_windows,
        meta.training.epochs,
        meta.training.seconds.unwrap_or(0.0),
        meta.training.windows_per_s().unwrap_or(0.0)
    ));
    let mut challenger = model
        .export(
            &meta.architecture,
            "challenger",
            &meta.features,
            &meta.mean,
            &meta.std,
        )
        .map_err(anyhow::Error::msg)?;
    // Scored with the anomaly thresholds its training measured, as the champion is with its
    // own (a model without them falls back to Gaussian tails, which would make the detection
    // comparison unfair).
    challenger.set_calibration(meta.anomaly.clone());
    challenger.longest_flat_ns = meta.longest_flat_ns.clone();
    let challenger = Arc::new(challenger);
    let score = |m: Arc<crate::engine::InferenceModel>| {
        crate::model::train::holdout(m, cfg, stream, (&h.readings, split), &verdicts)
    };
    let challenger_m = score(challenger)?;
    let registry = Registry::new(&cfg.model.registry);
    let champion = match registry.load(&stream.name, None) {
        Ok(l) => Some(l),
        Err(crate::model::registry::RegistryError::NoModel { .. }) => None,
        Err(e) => return Err(e).context("cannot load the current model (the champion)"),
    };
    let champion_m = match &champion {
        Some(c) if c.meta.features == stream.features => {
            Some(score(Arc::new(c.inference.clone()))?)
        }
        _ => None,
    };
    let (publish, reason) = match (&champion, &champion_m) {
        (None, _) => (
            true,
            "no current model: the challenger is the first".to_string(),
        ),
        (Some(c), None) => (
            true,
            format!(
                "the champion {} has another schema than the stream",
                c.meta.version
            ),
        ),
        (Some(_), Some(cm)) => gate(
            (&challenger_m).into(),
            cm.into(),
            (r.margin, r.max_over_line_ratio),
            stream.rate(&cfg.anomaly),
        ),
    };
    let mut decision = Decision {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        champion: champion.as_ref().map(|c| c.meta.version.clone()),
        champion_mase: champion_m.as_ref().map(|m| m.mase),
        challenger: "rejected".into(),
        challenger_mase: challenger_m.mase,
        holdout_from: crate::time::format_ts(split),
        holdout_to: crate::time::format_ts(to),
        margin: r.margin,
        champion_over_line: champion_m.as_ref().and_then(|m| m.over_line),
        challenger_over_line: challenger_m.over_line,
        champion_alarms: champion_m.as_ref().and_then(|m| m.alarms),
        challenger_alarms: challenger_m.alarms,
        champion_labels: champion_m.as_ref().and_then(|m| m.labels),
        challenger_labels: challenger_m.labels,
        confirmed_left_out,
        published: publish,
        reason,
    };
    if publish {
        // Named before publishing, so that its metadata carries the decision in one atomic
        // publish.
        let now = chrono::Utc::now();
        meta.version = registry.new_version(&stream.name, now);
        meta.created_at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        decision.challenger = meta.version.clone();
        meta.decision = Some(decision.clone());
        registry
            .publish(&meta, &model)
            .context("failed to publish the challenger")?;
        if !inside_serve {
            println!(
                "published {} (now current): {}",
                meta.version, decision.reason
            );
        }
    } else if !inside_serve {
        println!(
            "kept {}: {}",
            decision.champion.as_deref().unwrap_or("-"),
            decision.reason
        );
    }
    registry.record_decision(&stream.name, &decision)?;
    tracing::info!(
        stream = %stream.name,
        published = decision.published,
        champion = ?decision.champion,
        champion_mase = ?decision.champion_mase,
        challenger_mase = decision.challenger_mase,
        champion_over_line = ?decision.champion_over_line,
        challenger_over_line = ?decision.challenger_over_line,
        "retrain decision: {}",
        decision.reason
    );
    Ok(decision)
}

/// The operators' verdicts for a retrain up to `to`: a labels file that cannot be read is
/// reported and the retrain goes on without verdicts (a hand edit must not stop retraining);
/// a label recorded while its alarm was still active is completed from InfluxDB — up to the
/// alarm's end if it has cleared since, else up to `to` — so that a fault confirmed while it
/// lasted is left out of training whole.
async fn retrain_verdicts(
    cfg: &Config,
    stream: &str,
    to: i64,
    say: &impl Fn(String),
) -> crate::labels::Verdicts {
    let path = &cfg.anomaly.labels_file;
    if path.is_empty() {
        return Default::default();
    }
    let mut labels = match crate::labels::read_labels_file(std::path::Path::new(path)) {
        Ok(l) => l,
        Err(e) => {
            say(format!("warning: operators' labels not used: {e}"));
            return Default::default();
        }
    };
    for l in labels
        .iter_mut()
        .filter(|l| l.stream == stream && l.until.is_none())
    {
        let Ok(span) = l.span() else { continue };
        match crate::model::history::alarm(cfg, &l.stream, &l.device, &l.kind, span.at).await {
            Ok(Some(a)) if !a.active => l.until = a.end.map(format_ts),
            Ok(Some(_)) => l.until = Some(format_ts(to.max(span.at))),
            Ok(None) => {}
            Err(e) => say(format!(
                "warning: the end of {}'s alarm at {} is not known ({e:#}); its label covers up to {}",
                l.device, l.at, l.recorded_at
            )),
        }
    }
    crate::labels::Verdicts::for_stream(&labels, stream)
}

/// The operators' verdicts on `stream`'s alarms (`anomaly.labels_file`; none when unset).
pub fn read_verdicts(cfg: &Config, stream: &str) -> anyhow::Result<crate::labels::Verdicts> {
    let path = &cfg.anomaly.labels_file;
    if path.is_empty() {
        return Ok(Default::default());
    }
    let labels = crate::labels::read_labels_file(std::path::Path::new(path))?;
    Ok(crate::labels::Verdicts::for_stream(&labels, stream))
}

fn train_and_publish(
    cfg: &Config,
    stream: &StreamConfig,
    readings: &[Reading],
    input_names: Vec<String>,
    show_progress: bool,
) -> anyhow::Result<ModelMeta> {
    eprintln!(
        "training stream {:?} on {} readings of {} devices (hidden {}, layers {}, horizon {}, window {})",
        stream.name,
        readings.len(),
        readings
            .iter()
            .map(|r| r.device.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        cfg.model.hidden,
        cfg.model.layers,
        cfg.model.horizon,
        cfg.train.window
    );
    let mut progress = TrainingProgress::new(show_progress);
    let Trained { mut meta, model } = train(cfg, stream, readings, input_names, &mut |e| {
        progress.update(e)
    })?;
    progress.finish();
    let dir = Registry::new(&cfg.model.registry)
        .publish_new(&mut meta, &model)
        .context("failed to publish the model")?;
    println!("{}", validation_report(&meta));
    if let Some(w) = meta.training.windows_per_s() {
        println!(
            "trained {} windows × {} epochs in {:.1} s: {w:.0} windows/s",
            meta.training.train_windows,
            meta.training.epochs,
            meta.training.seconds.unwrap_or(0.0)
        );
    }
    println!("published {} (now current)", dir.display());
    Ok(meta)
}

/// A progress bar with the running loss (drawn on stderr when `show` is set) that also logs
/// each finished epoch at debug level.
pub struct TrainingProgress {
    bar: indicatif::ProgressBar,
    best: String,
}

impl TrainingProgress {
    /// A new bar; hidden unless `show`.
    pub fn new(show: bool) -> Self {
        let bar = if show {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self {
            bar,
            best: String::new(),
        }
    }

    /// Takes one event from `train`.
    pub fn update(&mut self, e: ProgressEvent) {
        match e {
            ProgressEvent::Start { total_steps } => self.bar.set_length(total_steps),
            ProgressEvent::Step { epoch, loss } => {
                self.bar.inc(1);
                self.bar
                    .set_message(format!("epoch {epoch} loss {loss:.4} {}", self.best));
            }
            ProgressEvent::Epoch {
                epoch,
                train_loss,
                validation_loss,
                best,
            } => {
                if best {
                    self.best = format!("(best validation {validation_loss:.4} at epoch {epoch})");
                }
                tracing::debug!(epoch, train_loss, validation_loss, best, "epoch finished");
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The validation report printed after training.
pub fn validation_report(meta: &ModelMeta) -> String {
    let v = &meta.validation;
    let t = &meta.training;
    let mut s = format!(
        "validation report — stream {}, {} devices, {} readings ({} .. {})\n  epochs run {} (best {}), train windows {}, validation windows {}\n  MAE  {:.4} (normalised units)\n  RMSE {:.4} (normalised units)\n  MASE {:.4} vs naive last value (by horizon: {})\n  90% band coverage {:.1}% over {} forecast values\n  MAE by feature:",
        meta.stream,
        t.devices,
        t.readings,
        t.from,
        t.to,
        t.epochs,
        t.best_epoch,
        t.train_windows,
        t.validation_windows,
        v.mae,
        v.rmse,
        v.mase,
        v.mase_by_horizon
            .iter()
            .map(|m| format!("{m:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        v.coverage_90 * 100.0,
        v.points
    );
    for (f, mae) in meta.features.iter().zip(&v.mae_by_feature) {
        s.push_str(&format!(" {f}={mae:.4}"));
    }
    s.push_str(&tails_report(meta.anomaly.as_ref()));
    s
}

/// One model's holdout figures the gate weighs.
#[derive(Debug, Clone, Copy, Default)]
struct Judged {
    mase: f64,
    /// Share of readings over the alarm line.
    over_line: Option<f64>,
    /// Its alarms against the operators' verdicts.
    labels: Option<crate::labels::LabelScore>,
}

impl From<&crate::model::registry::Metrics> for Judged {
    fn from(m: &crate::model::registry::Metrics) -> Self {
        Self {
            mase: m.mase,
            over_line: m.over_line,
            labels: m.labels,
        }
    }
}

/// The champion/challenger gate on the two models' holdout figures: the challenger must beat
/// the champion's MASE by `margin`, put at most `ratio` × max(the champion's share, `target`)
/// of the holdout over the alarm line, and — where operators labelled alarms in the holdout —
/// alarm on as many confirmed faults and on no more alarms labelled false than the champion.
/// Returns whether to publish, and why.
fn gate(
    challenger: Judged,
    champion: Judged,
    (margin, ratio): (f64, f64),
    target: f64,
) -> (bool, String) {
    let needed = champion.mase * (1.0 - margin);
    if challenger.mase >= needed {
        return (
            false,
            format!(
                "challenger MASE {:.4} is not below champion {:.4} × (1 − {margin}) = {needed:.4}",
                challenger.mase, champion.mase
            ),
        );
    }
    let beats = format!(
        "challenger MASE {:.4} < champion {:.4} × (1 − {margin}) = {needed:.4}",
        challenger.mase, champion.mase
    );
    let allowed = ratio * champion.over_line.unwrap_or(0.0).max(target);
    let over = challenger.over_line.unwrap_or(0.0);
    if over > allowed {
        return (
            false,
            format!(
                "challenger MASE {:.4} beats champion {:.4}, but it puts {over:.4} of the holdout readings over the alarm line, more than {ratio} × max(champion {:.4}, target {target}) = {allowed:.4}",
                challenger.mase,
                champion.mase,
                champion.over_line.unwrap_or(0.0)
            ),
        );
    }
    let (Some(ch), Some(cp)) = (challenger.labels, champion.labels) else {
        return (true, beats);
    };
    if ch.confirmed_alarmed < cp.confirmed_alarmed {
        return (
            false,
            format!(
                "{beats}, but it alarms on {} of the {} faults operators confirmed in the holdout, the champion on {}",
                ch.confirmed_alarmed, ch.confirmed, cp.confirmed_alarmed
            ),
        );
    }
    if ch.false_alarmed > cp.false_alarmed {
        return (
            false,
            format!(
                "{beats}, but it alarms again on {} of the {} alarms operators labelled false in the holdout, the champion on {}",
                ch.false_alarmed, ch.false_alarms, cp.false_alarmed
            ),
        );
    }
    (
        true,
        format!("{beats}; operators' verdicts: {ch} (champion: {cp})"),
    )
}

/// What the anomaly thresholds rest on: per piece of evidence, the fewest normal readings
/// behind one feature's tail, and how many of them the fitted deep tail rests on.
fn tails_report(calibration: Option<&crate::engine::detect::Calibration>) -> String {
    use crate::engine::detect::TailTable;
    let Some(c) = calibration else {
        return "\n  anomaly thresholds: not measured (too few readings); Gaussian tails assumed"
            .into();
    };
    let piece = |name: &str, tables: &[&TailTable]| {
        let samples = tables.iter().map(|t| t.samples).min().unwrap_or(0);
        let deep = tables
            .iter()
            .map(|t| t.gpd.as_ref().map_or(0, |g| g.exceedances))
            .min()
            .unwrap_or(0);
        if deep > 0 {
            format!("{name} {samples} ({deep} in the deep tail)")
        } else {
            format!("{name} {samples} (no deep tail: too few)")
        }
    };
    fn refs(v: &[TailTable]) -> Vec<&TailTable> {
        v.iter().collect()
    }
    let mut parts = vec![
        piece("forecast", &refs(&c.forecast)),
        piece("drift", &refs(&c.drift)),
        piece("deviation", &refs(&c.deviation)),
    ];
    match &c.joint {
        Some(j) => parts.push(piece("joint", &[&j.tail])),
        None => parts.push("joint: not measured".into()),
    }
    format!(
        "\n  anomaly thresholds rest on (normal readings per feature's tail): {}",
        parts.join(", ")
    )
}

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
    let windows = crate::engine::maintenance::WindowSource::now(cfg, &stream.name)
        .map_err(anyhow::Error::msg)?;
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

/// `sensorcast replay`.
pub fn run_replay(
    cfg: &Config,
    stream: &StreamConfig,
    input: &Path,
    output: &Path,
    version: Option<&str>,
    strict: bool,
) -> anyhow::Result<ReplaySummary> {
    let kind = OutputKind::from_path(output)?;
    let loaded = load_model(cfg, stream, version)?;
    let schema = Schema::from_stream(stream);
    let data = read_inputs(&[input.to_path_buf()], &schema)?;
    report_issues(&data.issues, strict, 20)?;
    let file = std::fs::File::create(output)
        .with_context(|| format!("failed to create {}", output.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut summary = replay_readings(
        cfg,
        stream,
        Arc::new(loaded.inference),
        &data.readings,
        kind,
        &mut w,
        &mut |_, _, _| {},
    )?;
    w.flush()
        .with_context(|| format!("failed to write {}", output.display()))?;
    summary.skipped = data.issues.len();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::{Judged, gate};
    use crate::labels::LabelScore;

    fn j(mase: f64, over: f64) -> Judged {
        Judged {
            mase,
            over_line: Some(over),
            labels: None,
        }
    }

    #[test]
    fn the_gate_weighs_mase_with_a_margin_and_refuses_a_challenger_that_alarms_more() {
        let knobs = (0.05, 2.0);
        // Better by more than the margin, alarms within 2 × the champion's share: published.
        let (publish, why) = gate(j(0.9, 0.003), j(1.0, 0.002), knobs, 0.001);
        assert!(publish, "{why}");
        // Better, but 5 % over the line against 2 × max(1 %, 0.1 %) = 2 %: kept.
        let (publish, why) = gate(j(0.9, 0.05), j(1.0, 0.01), knobs, 0.001);
        assert!(!publish);
        assert!(
            why.contains("over the alarm line") && why.contains("0.0200"),
            "{why}"
        );
        // A champion quieter than the target is measured against the target.
        let (publish, _) = gate(j(0.9, 0.0015), j(1.0, 0.0), knobs, 0.001);
        assert!(publish);
        // Not better by the margin: kept, whatever it alarms.
        let (publish, why) = gate(j(0.97, 0.0), j(1.0, 0.01), knobs, 0.001);
        assert!(!publish && why.contains("not below"), "{why}");
    }

    #[test]
    fn the_gate_refuses_a_challenger_that_misses_confirmed_faults_or_repeats_false_alarms() {
        let knobs = (0.05, 2.0);
        let with = |m: f64, confirmed_alarmed, false_alarmed| Judged {
            labels: Some(LabelScore {
                confirmed: 3,
                confirmed_alarmed,
                false_alarms: 4,
                false_alarmed,
            }),
            ..j(m, 0.001)
        };
        let (publish, why) = gate(with(0.9, 3, 1), with(1.0, 3, 4), knobs, 0.001);
        assert!(publish, "{why}");
        assert!(
            why.contains("3/3 confirmed faults alarmed, 1/4 false"),
            "{why}"
        );
        let (publish, why) = gate(with(0.9, 2, 0), with(1.0, 3, 4), knobs, 0.001);
        assert!(!publish && why.contains("2 of the 3 faults"), "{why}");
        let (publish, why) = gate(with(0.9, 3, 2), with(1.0, 3, 1), knobs, 0.001);
        assert!(!publish && why.contains("2 of the 4 alarms"), "{why}");
        // Without verdicts on both sides the labels do not weigh.
        let (publish, _) = gate(with(0.9, 0, 4), j(1.0, 0.001), knobs, 0.001);
        assert!(publish);
    }
}
