//! `sensorcast retrain`: the champion/challenger retrain and its gate.

use super::*;

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
    let decision = crate::commands::run_retrain(&cfg, &stream, to, tty, false)?;
    if let Some(path) = report_to {
        std::fs::write(&path, serde_json::to_string(&decision)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
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
