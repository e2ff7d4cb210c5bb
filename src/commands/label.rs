//! `sensorcast label`: an operator's verdict on an alarm, checked against InfluxDB and
//! appended to `anomaly.labels_file`.

use super::*;

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

#[derive(clap::Args, Debug)]
pub struct LabelArgs {
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
    verdict: crate::labels::Verdict,
    /// The alarm's kind.
    #[arg(long, default_value = "anomaly", value_parser = crate::labels::KINDS)]
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

pub fn run(args: LabelArgs) -> anyhow::Result<ExitCode> {
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
    let label = crate::labels::Label {
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
    println!("{}", crate::commands::run_label(&cfg, label)?);
    Ok(ExitCode::SUCCESS)
}
