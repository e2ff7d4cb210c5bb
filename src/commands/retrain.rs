//! `sensorcast retrain`: one champion/challenger retrain ([`crate::model::retrain`]), its
//! progress on stderr and its decision on stdout.

use super::*;
use crate::model::retrain::{Notice, retrain};

#[derive(clap::Args, Debug)]
pub struct RetrainArgs {
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

pub fn run(args: RetrainArgs, tty: bool) -> anyhow::Result<ExitCode> {
    let RetrainArgs {
        config,
        stream,
        source,
        until,
        report_to,
    } = args;
    let (mut cfg, stream) = setup(&config, stream.as_deref())?;
    match source.as_deref() {
        Some("kafka") => cfg.retrain.source = crate::config::HistorySource::Kafka,
        Some("influxdb") => cfg.retrain.source = crate::config::HistorySource::Influxdb,
        _ => {}
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let to = match &until {
        Some(u) => time_arg(u, now, "--until")?,
        None => now,
    };
    let mut progress = TrainingProgress::new(tty);
    let decision = retrain(&cfg, &stream, to, &mut |notice| match notice {
        Notice::Progress(e) => progress.update(e),
        Notice::Trained { .. } => {
            progress.finish();
            eprintln!("{notice}");
        }
        _ => eprintln!("{notice}"),
    })?;
    if decision.published {
        println!(
            "published {} (now current): {}",
            decision.challenger, decision.reason
        );
    } else {
        println!(
            "kept {}: {}",
            decision.champion.as_deref().unwrap_or("-"),
            decision.reason
        );
    }
    if let Some(path) = report_to {
        std::fs::write(&path, serde_json::to_string(&decision)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
