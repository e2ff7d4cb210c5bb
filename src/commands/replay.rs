//! `sensorcast replay`: the engine over a file in time order, every output written.

use super::*;
use crate::tools::replay::{OutputKind, ReplaySummary, load_model, replay_readings};

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

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
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

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs {
        config,
        input,
        output,
        stream,
        model,
        strict,
    } = args;
    let (cfg, stream) = setup(&config, stream.as_deref())?;
    let s = crate::commands::run_replay(&cfg, &stream, &input, &output, model.as_deref(), strict)?;
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
