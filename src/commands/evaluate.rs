//! `sensorcast evaluate`: detection quality on SKAB or a labelled CSV.

use super::*;

#[derive(Subcommand, Debug)]
pub enum EvaluateCommand {
    /// The Skoltech Anomaly Benchmark's outlier-detection protocol: train on the training
    /// parts and anomaly-free.csv, stream every file as one device, pooled F1/FAR/MAR.
    Skab(SkabArgs),
    /// A labelled CSV (`device,ts,<features>,label`) scored with the stream's current model.
    Labelled(LabelledArgs),
}

#[derive(clap::Args, Debug)]
pub struct SkabArgs {
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
    evidence: Option<crate::config::Evidence>,
}

#[derive(clap::Args, Debug)]
pub struct LabelledArgs {
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

pub fn skab(args: SkabArgs, tty: bool) -> anyhow::Result<ExitCode> {
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
    let opts = crate::tools::evaluate::SkabOptions {
        data,
        out: out.clone(),
        config,
        seed,
        sweep,
        charts: !no_charts,
        model,
        evidence,
    };
    let report = crate::tools::evaluate::run_skab(&opts, tty)?;
    println!("{report}");
    if opts.charts {
        println!("charts in {}/charts", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn labelled(args: LabelledArgs) -> anyhow::Result<ExitCode> {
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
    let verdicts = crate::model::retrain::read_verdicts(&cfg, &stream.name)?;
    let report = crate::tools::evaluate::run_labelled(
        &cfg,
        &stream,
        (&input, &verdicts),
        out.as_deref(),
        model.as_deref(),
    )?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
