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
