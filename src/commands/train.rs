//! `sensorcast train`: from files, InfluxDB or Kafka, published to the registry with its
//! validation report.

use super::*;

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

/// `sensorcast train --source influxdb|kafka`: the stream's readings between `from` and `to`
/// (ns), read back from InfluxDB or from the stream's topic; trains and publishes.
pub fn run_train_from(
    cfg: &Config,
    stream: &StreamConfig,
    source: crate::config::HistorySource,
    (from, to): (i64, i64),
    strict: bool,
    show_progress: bool,
) -> anyhow::Result<ModelMeta> {
    let h = crate::model::history::read(cfg, stream, source, from, to)?;
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

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Where the history comes from.
    #[arg(long, value_enum, default_value = "file")]
    source: HistorySource,
    /// Input files (`--source file`): JSON lines, CSV (`device,ts,<feature>...`) or line
    /// protocol.
    #[arg(long, num_args = 1.., required_if_eq("source", "file"))]
    input: Vec<PathBuf>,
    /// Start of the history window (`--source influxdb|kafka`): a duration back from `--until`
    /// (e.g. `30d`) or an RFC 3339 time.
    #[arg(long, default_value = "30d")]
    since: String,
    /// End of the history window (`--source influxdb`): RFC 3339, default now.
    #[arg(long)]
    until: Option<String>,
    /// Stream to train (may be left out when the config has one stream).
    #[arg(long)]
    stream: Option<String>,
    /// Fail on the first bad input line instead of skipping it.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistorySource {
    /// `--input` files.
    File,
    /// InfluxDB (the `[influxdb]` connection; `train.history_*` say which measurement).
    Influxdb,
    /// The stream's Kafka topic (`[kafka]`), from the offsets of `--since` to `--until`.
    Kafka,
}

pub fn run(args: TrainArgs, tty: bool) -> anyhow::Result<ExitCode> {
    let TrainArgs {
        config,
        source,
        input,
        since,
        until,
        stream,
        strict,
    } = args;
    let (cfg, stream) = setup(&config, stream.as_deref())?;
    match source {
        HistorySource::File => {
            crate::commands::run_train(&cfg, &stream, &input, strict, tty)?;
        }
        HistorySource::Influxdb | HistorySource::Kafka => {
            anyhow::ensure!(input.is_empty(), "--input is for --source file");
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            let to = match &until {
                Some(u) => time_arg(u, now, "--until")?,
                None => now,
            };
            let from = time_arg(&since, to, "--since")?;
            anyhow::ensure!(from < to, "--since must be before --until");
            let source = if source == HistorySource::Kafka {
                crate::config::HistorySource::Kafka
            } else {
                crate::config::HistorySource::Influxdb
            };
            run_train_from(&cfg, &stream, source, (from, to), strict, tty)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
