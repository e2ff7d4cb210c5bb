//! The `sensorcast` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sensorcast::config::{Config, ConfigError, StreamConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Streaming LSTM forecasting and anomaly scoring for sensor fleets.
#[derive(Parser, Debug)]
#[command(name = "sensorcast", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole pipeline on an embedded synthetic fleet (no servers needed).
    Demo(DemoArgs),
    /// Train a model from history (files, InfluxDB or Kafka) and publish it to the registry.
    Train(TrainArgs),
    /// Train a challenger from the history (InfluxDB or Kafka) and publish it only if it beats
    /// the current model on a recent holdout (`[retrain]`); what a timer or CronJob runs. A
    /// running `serve` swaps a published model in without a restart.
    Retrain(RetrainArgs),
    /// Record an operator's verdict on an alarm (appended to `anomaly.labels_file`): `serve`
    /// writes it onto the alarm's point; `retrain` and `evaluate labelled` use it.
    Label(LabelArgs),
    /// Run the streaming engine over a file in time order and write its outputs.
    Replay(ReplayArgs),
    /// Measure the engine alone on a synthetic fleet (no I/O).
    Bench(BenchSpec),
    /// Run the service: consume readings from Kafka, write forecasts and scores to InfluxDB.
    Serve(ServeArgs),
    /// Produce the synthetic fleet to Kafka or write it to a file.
    Simulate(SimulateArgs),
    /// Measure detection quality on labelled data with the service's own scoring.
    #[command(subcommand)]
    Evaluate(EvaluateCommand),
    /// Device state checkpoints.
    #[command(subcommand)]
    State(StateCommand),
    /// The model registry: versions, which is current, promote, roll back, prune.
    Models(ModelsArgs),
    /// Print the effective configuration (secrets masked) or every problem in it.
    CheckConfig(CheckConfigArgs),
}

#[derive(Subcommand, Debug)]
enum EvaluateCommand {
    /// The Skoltech Anomaly Benchmark's outlier-detection protocol: train on the training
    /// parts and anomaly-free.csv, stream every file as one device, pooled F1/FAR/MAR.
    Skab(SkabArgs),
    /// A labelled CSV (`device,ts,<features>,label`) scored with the stream's current model.
    Labelled(LabelledArgs),
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Every version with its training range and validation figures; `*` marks the current.
    List,
    /// One version's metadata (JSON).
    Show {
        /// Version (default: the current one).
        version: Option<String>,
    },
    /// Make a version current (it must load). A running `serve` swaps it in without a restart.
    Promote {
        /// Version.
        version: String,
    },
    /// Make the version that was current before the current one current again.
    Rollback,
    /// Remove old versions, keeping the newest N, the current one and those the last changes
    /// of `current` name.
    Prune {
        /// Versions to keep.
        #[arg(long)]
        keep: usize,
    },
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Partitions, devices, offsets, model versions, sizes and ages of the checkpoints.
    Inspect(InspectArgs),
    /// Measure checkpoint size and the time to take, write, load and restore one.
    Bench(StateBenchArgs),
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Output folder for line protocol, chart, model and data.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Devices in the fleet.
    #[arg(long, default_value_t = 24)]
    devices: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 1000)]
    readings: usize,
    /// Faults to inject.
    #[arg(long, default_value_t = 8)]
    faults: usize,
    /// Seed for data and training.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Move every device's operating point in the live part by this many standard
    /// deviations per feature (a slow change of normal; 0: none).
    #[arg(long, default_value_t = 0.0)]
    shift: f64,
    /// Days the move takes (linear), after which it stays.
    #[arg(long, default_value_t = 7.0)]
    shift_days: f64,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
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

#[derive(clap::Args, Debug)]
struct RetrainArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Stream (may be left out when the config has one stream).
    #[arg(long)]
    stream: Option<String>,
    /// Where the history is read from (default: `retrain.source`).
    #[arg(long, value_parser = ["influxdb", "kafka"])]
    source: Option<String>,
    /// End of the history window: RFC 3339, default now.
    #[arg(long)]
    until: Option<String>,
    /// Also write the decision as JSON to this file (for `serve`, which runs retrains in
    /// child processes).
    #[arg(long, hide = true)]
    report_to: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct LabelArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Stream (may be left out when the config has one stream).
    #[arg(long)]
    stream: Option<String>,
    /// The device.
    #[arg(long)]
    device: String,
    /// The alarm's start (its `anomaly_event` point's time, the `start` field): RFC 3339
    /// or an integer epoch.
    #[arg(long)]
    at: String,
    /// What was found.
    #[arg(long, value_enum)]
    verdict: sensorcast::labels::Verdict,
    /// The alarm's kind.
    #[arg(long, default_value = "anomaly", value_parser = sensorcast::labels::KINDS)]
    kind: String,
    /// The alarm's last reading. Default: looked up in InfluxDB (the event's `end`;
    /// none while the alarm is active), which also checks that the alarm exists.
    #[arg(long)]
    until: Option<String>,
    /// Who labels it (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Why, in words.
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Input file: JSON lines, CSV or line protocol.
    #[arg(long)]
    input: PathBuf,
    /// Output: `.lp` (InfluxDB line protocol) or `.csv`.
    #[arg(long)]
    output: PathBuf,
    /// Stream (may be left out when the config has one stream).
    #[arg(long)]
    stream: Option<String>,
    /// Model version (default: the registry's current one).
    #[arg(long)]
    model: Option<String>,
    /// Fail on the first bad input line instead of skipping it.
    #[arg(long)]
    strict: bool,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
}

#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// Devices.
    #[arg(long, default_value_t = 24)]
    devices: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 1000)]
    readings: usize,
    /// Payload format.
    #[arg(long, value_enum, default_value = "json")]
    format: SimFormat,
    /// Faults to inject.
    #[arg(long, default_value_t = 0)]
    faults: usize,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Time between a device's readings, e.g. 1s, 1m.
    #[arg(long, default_value = "1m")]
    interval: sensorcast::config::HumanDuration,
    /// Time of the last reading (RFC 3339); default now.
    #[arg(long)]
    end: Option<String>,
    /// Line-protocol measurement name.
    #[arg(long, default_value = "pump")]
    measurement: String,
    /// Kafka bootstrap servers (with --topic).
    #[arg(long, requires = "topic", conflicts_with = "out")]
    brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
    /// Output file instead of Kafka.
    #[arg(long, required_unless_present = "brokers")]
    out: Option<PathBuf>,
    /// Messages per second to Kafka (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Device ids start with this instead of `pump-` (e.g. a new fleet per run, for
    /// device churn).
    #[arg(long, default_value = "pump-")]
    device_prefix: String,
    /// A librdkafka producer property, `KEY=VALUE` (repeatable), e.g.
    /// `batch.num.messages=1`.
    #[arg(long = "producer-property", value_parser = key_value)]
    producer_properties: Vec<(String, String)>,
}

#[derive(clap::Args, Debug)]
struct ModelsArgs {
    /// Config file (TOML): `model.registry` and the streams.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Registry folder (instead of the config's `model.registry`).
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    /// Stream (may be left out when there is one).
    #[arg(long, global = true)]
    stream: Option<String>,
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(clap::Args, Debug)]
struct CheckConfigArgs {
    /// Config file (TOML); defaults and environment only when left out.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also check that InfluxDB takes writes as configured (an empty write) and that the
    /// Kafka brokers answer with the streams' topics; exit 1 if not.
    #[arg(long)]
    probe: bool,
}

#[derive(clap::Args, Debug)]
struct SkabArgs {
    /// SKAB folder (the one holding anomaly-free/, valve1/, valve2/, other/, or its parent).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: model registry and charts.
    #[arg(long, default_value = "skab-out")]
    out: PathBuf,
    /// Config file (default: built-in, SKAB's sensors, 1 s interval, hidden 32).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Training seed (overrides the config's).
    #[arg(long)]
    seed: Option<u64>,
    /// Also report these target false-alarm rates (the sensitivity trade-off), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.03,0.01,0.003,0.001,0.0003,0.0001"
    )]
    sweep: Vec<f64>,
    /// Skip the per-file charts.
    #[arg(long)]
    no_charts: bool,
    /// Reuse a model already trained into --out's registry (thresholds measured again).
    #[arg(long)]
    model: Option<String>,
    /// Judge on one piece of evidence only, to measure each one's contribution.
    #[arg(long, value_enum)]
    evidence: Option<EvidenceArg>,
}

#[derive(clap::Args, Debug)]
struct LabelledArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Labelled CSV (`device`, `ts`, the features and `label`; `label` may be left out
    /// when operators' verdicts give the truth).
    #[arg(long)]
    input: PathBuf,
    /// Operators' verdicts (`sensorcast label`'s file) that overrule `label` on the rows
    /// of the alarms they judged (default: `anomaly.labels_file`).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Stream (may be left out when the config has one stream).
    #[arg(long)]
    stream: Option<String>,
    /// Model version (default: the registry's current one).
    #[arg(long)]
    model: Option<String>,
    /// Folder for one chart per device.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// Checkpoint directory (`state.dir` of `state.store = "dir"`).
    #[arg(long, conflicts_with_all = ["config", "topic"], required_unless_present_any = ["config", "topic"])]
    dir: Option<PathBuf>,
    /// Or a changelog topic (`state.store = "kafka"`); the whole topic is read.
    #[arg(long)]
    topic: Option<String>,
    /// The config whose store to read (with `--topic`: whose Kafka settings to use).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (with `--topic`; overrides the config's).
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
}

#[derive(clap::Args, Debug)]
struct StateBenchArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    devices: Vec<usize>,
    /// Partitions the devices are spread over.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Hidden width.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Features.
    #[arg(long, default_value_t = 8)]
    features: usize,
    /// Forecast horizon.
    #[arg(long, default_value_t = 3)]
    horizon: usize,
    /// Where to write the checkpoints (a temporary folder inside it, removed afterwards).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Measure the Kafka changelog store instead, on these brokers (a topic of its own,
    /// deleted afterwards).
    #[arg(long)]
    brokers: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HistorySource {
    /// `--input` files.
    File,
    /// InfluxDB (the `[influxdb]` connection; `train.history_*` say which measurement).
    Influxdb,
    /// The stream's Kafka topic (`[kafka]`), from the offsets of `--since` to `--until`.
    Kafka,
}

/// A time (RFC 3339) or a duration back from `until`, in ns since the epoch.
fn time_arg(text: &str, until: i64, key: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_nanos_opt().unwrap_or(i64::MAX));
    }
    let d: sensorcast::config::HumanDuration = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{key} {text:?}: not an RFC 3339 time or a duration ({e})"))?;
    Ok(until.saturating_sub(d.as_nanos()))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EvidenceArg {
    Default,
    All,
    Forecast,
    Drift,
    Deviation,
    Joint,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SimFormat {
    Json,
    Line,
}

/// `KEY=VALUE`.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

use sensorcast::telemetry::init_logging;
use sensorcast::tools::bench::BenchSpec;

/// Loads the config, starts logging as it says, and picks the stream.
fn setup(path: &std::path::Path, stream: Option<&str>) -> anyhow::Result<(Config, StreamConfig)> {
    let cfg = Config::load(Some(path))?;
    init_logging(Some(&cfg));
    let stream = cfg.stream(stream).map_err(anyhow::Error::msg)?.clone();
    Ok((cfg, stream))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.command {
        Command::CheckConfig(args) => check_config(args),
        Command::Label(args) => label(args),
        Command::Retrain(args) => retrain(args, tty),
        Command::Train(args) => train(args, tty),
        Command::Replay(args) => replay(args),
        Command::Bench(spec) => bench(spec),
        Command::Serve(args) => serve(args),
        Command::Simulate(args) => simulate(args),
        Command::Models(args) => models(args),
        Command::State(StateCommand::Inspect(args)) => state_inspect(args),
        Command::State(StateCommand::Bench(args)) => state_bench(args),
        Command::Evaluate(EvaluateCommand::Skab(args)) => evaluate_skab(args, tty),
        Command::Evaluate(EvaluateCommand::Labelled(args)) => evaluate_labelled(args),
        Command::Demo(args) => demo(args, tty),
    }
}

fn demo(args: DemoArgs, tty: bool) -> anyhow::Result<ExitCode> {
    let DemoArgs {
        out,
        devices,
        readings,
        faults,
        seed,
        shift,
        shift_days,
    } = args;
    init_logging(None);
    anyhow::ensure!(
        devices >= 1 && readings >= 100,
        "the demo needs at least 1 device and 100 readings per device"
    );
    anyhow::ensure!(
        shift.is_finite() && shift_days.is_finite() && shift_days > 0.0,
        "--shift must be a number and --shift-days a number of days above 0"
    );
    let spec = sensorcast::tools::demo::DemoSpec {
        out: out.clone(),
        devices,
        readings,
        faults,
        seed,
        shift_sigmas: shift,
        shift_days,
    };
    let summary = sensorcast::tools::demo::run(&spec, tty)?;
    println!("{summary}");
    println!(
        "wrote {}/forecasts.lp (InfluxDB line protocol), {}/chart.svg, model in {}/models, data in {}/history.jsonl and live.jsonl",
        out.display(),
        out.display(),
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn train(args: TrainArgs, tty: bool) -> anyhow::Result<ExitCode> {
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
            sensorcast::commands::run_train(&cfg, &stream, &input, strict, tty)?;
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
            if source == HistorySource::Kafka {
                sensorcast::commands::run_train_from_kafka(&cfg, &stream, from, to, strict, tty)?;
            } else {
                sensorcast::commands::run_train_from_influxdb(
                    &cfg, &stream, from, to, strict, tty,
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn retrain(args: RetrainArgs, tty: bool) -> anyhow::Result<ExitCode> {
    let RetrainArgs {
        config,
        stream,
        source,
        until,
        report_to,
    } = args;
    let (mut cfg, stream) = setup(&config, stream.as_deref())?;
    match source.as_deref() {
        Some("kafka") => cfg.retrain.source = sensorcast::config::HistorySource::Kafka,
        Some("influxdb") => cfg.retrain.source = sensorcast::config::HistorySource::Influxdb,
        _ => {}
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let to = match &until {
        Some(u) => time_arg(u, now, "--until")?,
        None => now,
    };
    let decision = sensorcast::commands::run_retrain(&cfg, &stream, to, tty, false)?;
    if let Some(path) = report_to {
        std::fs::write(&path, serde_json::to_string(&decision)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn label(args: LabelArgs) -> anyhow::Result<ExitCode> {
    let LabelArgs {
        config,
        stream,
        device,
        at,
        verdict,
        kind,
        until,
        by,
        note,
    } = args;
    let (cfg, stream) = setup(&config, stream.as_deref())?;
    let label = sensorcast::labels::Label {
        stream: stream.name.clone(),
        device,
        kind,
        at,
        until,
        verdict,
        by: by
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default(),
        note,
        recorded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    println!("{}", sensorcast::commands::run_label(&cfg, label)?);
    Ok(ExitCode::SUCCESS)
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs {
        config,
        input,
        output,
        stream,
        model,
        strict,
    } = args;
    let (cfg, stream) = setup(&config, stream.as_deref())?;
    let s =
        sensorcast::commands::run_replay(&cfg, &stream, &input, &output, model.as_deref(), strict)?;
    println!(
        "replayed {} readings of {} devices: {} stepped, {} skipped lines, {} anomalies, {} points written to {} ({:.0} events/s in the engine)",
        s.readings,
        s.devices,
        s.stepped,
        s.skipped,
        s.anomalies,
        s.points,
        output.display(),
        s.engine_events_per_s
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs { config } = args;
    let cfg = Config::load(Some(&config))?;
    init_logging(Some(&cfg));
    let clean = sensorcast::serve::run(cfg, config)?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let SimulateArgs {
        devices,
        readings,
        format,
        faults,
        seed,
        interval,
        end,
        measurement,
        brokers,
        topic,
        out,
        rate,
        device_prefix,
        producer_properties,
    } = args;
    init_logging(None);
    let end_ts = match end {
        Some(t) => {
            sensorcast::time::parse_ts_text(&t).map_err(|e| anyhow::anyhow!("--end: {e}"))?
        }
        None => chrono::Utc::now()
            .timestamp_nanos_opt()
            .context("clock out of range")?,
    };
    let target = match (brokers, topic, out) {
        (Some(brokers), Some(topic), None) => {
            sensorcast::tools::simulate::Target::Kafka { brokers, topic }
        }
        (None, None, Some(path)) => sensorcast::tools::simulate::Target::File(path),
        _ => anyhow::bail!("give either --brokers and --topic, or --out"),
    };
    let spec = sensorcast::tools::simulate::SimulateSpec {
        fleet: sensorcast::synth::FleetSpec {
            devices,
            readings,
            interval_ns: interval.as_nanos(),
            end_ts,
            faults,
            seed,
            ..sensorcast::synth::FleetSpec::default()
        },
        format: match format {
            SimFormat::Json => sensorcast::config::Format::Json,
            SimFormat::Line => sensorcast::config::Format::Line,
        },
        measurement,
        target,
        rate,
        device_prefix,
        producer_properties,
    };
    let n = sensorcast::tools::simulate::run(&spec)?;
    println!("wrote {n} readings of {devices} devices");
    Ok(ExitCode::SUCCESS)
}

fn models(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let ModelsArgs {
        config,
        registry,
        stream,
        command,
    } = args;
    init_logging(None);
    let cfg = match &config {
        Some(c) => Config::load(Some(c))?,
        None => Config::default(),
    };
    let reg = sensorcast::model::registry::Registry::new(
        registry.unwrap_or_else(|| cfg.model.registry.clone()),
    );
    let stream = match (stream, &config) {
        (Some(s), _) => s,
        (None, Some(_)) => cfg.stream(None).map_err(anyhow::Error::msg)?.name.clone(),
        (None, None) => {
            let streams = reg.streams();
            match streams.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("the registry holds no stream"),
                many => anyhow::bail!(
                    "the registry holds several streams ({}): choose one with --stream",
                    many.join(", ")
                ),
            }
        }
    };
    match command {
        ModelsCommand::List => {
            println!(
                "  {:<22} {:<20} {:<20} {:>9} {:>7} {:>9}",
                "version", "trained from", "to", "readings", "mase", "coverage"
            );
            for l in reg.list(&stream)? {
                let mark = if l.current { "*" } else { " " };
                match &l.meta {
                    Ok(m) => println!(
                        "{mark} {:<22} {:<20} {:<20} {:>9} {:>7.3} {:>9.3}",
                        l.version,
                        m.training.from,
                        m.training.to,
                        m.training.readings,
                        m.validation.mase,
                        m.validation.coverage_90
                    ),
                    Err(e) => println!("{mark} {:<22} unreadable: {e}", l.version),
                }
            }
            for c in reg.history(&stream)?.iter().rev().take(5) {
                println!("# {} {} {}", c.at, c.action, c.version);
            }
        }
        ModelsCommand::Show { version } => {
            let v = match version {
                Some(v) => v,
                None => reg.current(&stream)?,
            };
            println!("{}", serde_json::to_string_pretty(&reg.meta(&stream, &v)?)?);
        }
        ModelsCommand::Promote { version } => {
            reg.promote(&stream, &version)?;
            println!("{stream}: {version} is current");
        }
        ModelsCommand::Rollback => {
            let v = reg.rollback(&stream)?;
            println!("{stream}: rolled back to {v}");
        }
        ModelsCommand::Prune { keep } => {
            let removed = reg.prune(&stream, keep)?;
            println!(
                "{stream}: removed {} version(s): {}",
                removed.len(),
                removed.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let CheckConfigArgs { config, probe } = args;
    init_logging(None);
    let text = match sensorcast::commands::check_config(config.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{text}");
    if !probe {
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = Config::load(config.as_deref())?;
    let (report, code) = match sensorcast::commands::probe(&cfg) {
        Ok(r) => (r, ExitCode::SUCCESS),
        Err(r) => (r, ExitCode::from(1)),
    };
    // As comments, so that the output stays a valid config.
    println!("\n# probe");
    for line in report.lines() {
        println!("# {line}");
    }
    Ok(code)
}

fn evaluate_skab(args: SkabArgs, tty: bool) -> anyhow::Result<ExitCode> {
    let SkabArgs {
        data,
        out,
        config,
        seed,
        sweep,
        no_charts,
        model,
        evidence,
    } = args;
    init_logging(None);
    for r in &sweep {
        anyhow::ensure!(
            *r > 0.0 && *r < 1.0,
            "--sweep: {r} is not a rate strictly between 0 and 1"
        );
    }
    let opts = sensorcast::tools::evaluate::SkabOptions {
        data,
        out: out.clone(),
        config,
        seed,
        sweep,
        charts: !no_charts,
        model,
        evidence: evidence.map(|e| match e {
            EvidenceArg::Default => sensorcast::config::Evidence::Default,
            EvidenceArg::All => sensorcast::config::Evidence::All,
            EvidenceArg::Forecast => sensorcast::config::Evidence::Forecast,
            EvidenceArg::Drift => sensorcast::config::Evidence::Drift,
            EvidenceArg::Deviation => sensorcast::config::Evidence::Deviation,
            EvidenceArg::Joint => sensorcast::config::Evidence::Joint,
        }),
    };
    let report = sensorcast::tools::evaluate::run_skab(&opts, tty)?;
    println!("{report}");
    if opts.charts {
        println!("charts in {}/charts", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn evaluate_labelled(args: LabelledArgs) -> anyhow::Result<ExitCode> {
    let LabelledArgs {
        config,
        input,
        labels,
        stream,
        model,
        out,
    } = args;
    let (mut cfg, stream) = setup(&config, stream.as_deref())?;
    if let Some(path) = labels {
        anyhow::ensure!(path.exists(), "--labels {}: no such file", path.display());
        cfg.anomaly.labels_file = path.to_string_lossy().into_owned();
    }
    let verdicts = sensorcast::commands::read_verdicts(&cfg, &stream.name)?;
    let report = sensorcast::tools::evaluate::run_labelled(
        &cfg,
        &stream,
        (&input, &verdicts),
        out.as_deref(),
        model.as_deref(),
    )?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn state_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let InspectArgs {
        dir,
        topic,
        config,
        brokers,
    } = args;
    init_logging(None);
    let now = chrono::Utc::now().timestamp_millis();
    let cfg = match &config {
        Some(c) => Some(Config::load(Some(c))?),
        None => None,
    };
    let kafka_store = |cfg: &Config| {
        sensorcast::state::KafkaStore::new(
            &sensorcast::kafka::client_config(cfg, &[]),
            &cfg.state.changelog_topic,
            &cfg.kafka.group_id,
            sensorcast::state::DirStore::new(&cfg.state.dir, 1),
            1,
        )
        .context("cannot create Kafka clients")
    };
    let report = match (dir, topic, cfg) {
        (Some(d), _, _) => sensorcast::state::inspect(&d, now)
            .with_context(|| format!("cannot read checkpoints under {}", d.display()))?,
        (None, Some(t), cfg) => {
            let mut cfg = cfg.unwrap_or_default();
            if let Some(b) = brokers {
                cfg.kafka.brokers = b;
            }
            sensorcast::state::inspect_topic(&kafka_store(&cfg)?, &t, now)
                .with_context(|| format!("cannot read changelog topic {t}"))?
        }
        (None, None, Some(cfg)) => match cfg.state.store {
            sensorcast::config::StoreKind::Dir => sensorcast::state::inspect(&cfg.state.dir, now)
                .with_context(|| {
                format!("cannot read checkpoints under {}", cfg.state.dir.display())
            })?,
            sensorcast::config::StoreKind::Kafka => {
                let store = kafka_store(&cfg)?;
                let mut out = String::new();
                for s in &cfg.streams {
                    let t = store.topic(&s.name);
                    out += &sensorcast::state::inspect_topic(&store, &t, now)
                        .with_context(|| format!("cannot read changelog topic {t}"))?;
                }
                out
            }
        },
        (None, None, None) => anyhow::bail!("give --dir, --topic or --config"),
    };
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn state_bench(args: StateBenchArgs) -> anyhow::Result<ExitCode> {
    let StateBenchArgs {
        devices,
        partitions,
        hidden,
        features,
        horizon,
        dir,
        brokers,
    } = args;
    init_logging(None);
    anyhow::ensure!(partitions >= 1, "--partitions must be at least 1");
    let kafka = brokers.map(|b| {
        let mut cfg = Config::default();
        cfg.kafka.brokers = b;
        cfg.kafka.group_id = "bench".into();
        cfg.state.changelog_topic = format!("sensorcast-state-bench-{}", std::process::id());
        cfg
    });
    let shape = BenchSpec {
        devices: 0,
        steps: 2,
        hidden,
        features,
        layers: 1,
        horizon,
        batch: 4096,
    };
    println!("hidden={hidden} features={features} horizon={horizon} partitions={partitions}");
    println!(
        "{:>9} {:>12} {:>9} {:>12} {:>10} {:>10} {:>11}",
        "devices", "bytes", "B/device", "snapshot_ms", "write_ms", "load_ms", "restore_ms"
    );
    for n in devices {
        anyhow::ensure!(n >= 1, "--devices: {n} is not at least 1");
        let tmp = dir.join(format!("sensorcast-state-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let local = sensorcast::state::DirStore::new(&tmp, 1);
        let r = match &kafka {
            None => sensorcast::tools::state_bench::run(&shape, n, partitions, &local.into()),
            Some(cfg) => {
                let topic = cfg.state.changelog_topic.clone();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(sensorcast::kafka::create_topic(
                    cfg,
                    &topic,
                    partitions as i32,
                    &[("cleanup.policy", "compact")],
                ))
                .map_err(anyhow::Error::msg)?;
                let store = sensorcast::state::KafkaStore::new(
                    &sensorcast::kafka::client_config(cfg, &[]),
                    &topic,
                    "bench",
                    local,
                    1,
                )?;
                let r = sensorcast::tools::state_bench::run(
                    &shape,
                    n,
                    partitions,
                    &sensorcast::state::Store::Kafka(std::sync::Arc::new(store)),
                );
                rt.block_on(sensorcast::kafka::delete_topic(cfg, &topic));
                r
            }
        };
        let _ = std::fs::remove_dir_all(&tmp);
        let r = r.map_err(anyhow::Error::msg)?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:>9} {:>12} {:>9} {:>12.1} {:>10.1} {:>10.1} {:>11.1}",
            r.devices,
            r.bytes,
            r.bytes / r.devices,
            ms(r.snapshot),
            ms(r.write),
            ms(r.load),
            ms(r.restore)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(spec: BenchSpec) -> anyhow::Result<ExitCode> {
    init_logging(None);
    let r = sensorcast::tools::bench::run(&spec)
        .map_err(anyhow::Error::msg)
        .context("benchmark failed")?;
    let BenchSpec {
        devices,
        steps,
        hidden,
        features,
        layers,
        horizon,
        batch,
    } = spec;
    println!(
        "devices={devices} steps={steps} hidden={hidden} features={features} layers={layers} horizon={horizon} batch={batch} isa={:?}",
        r.isa
    );
    println!(
        "events={} fully_scored={} elapsed_s={:.3}",
        r.events,
        r.fully_scored,
        r.elapsed.as_secs_f64()
    );
    println!("events_per_s={:.0}", r.events_per_s);
    println!("state_bytes_per_device={}", r.state_bytes_per_device);
    println!("rss_bytes_per_device={}", r.rss_bytes_per_device);
    Ok(ExitCode::SUCCESS)
}
