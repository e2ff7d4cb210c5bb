//! The champion/challenger retrain (`sensorcast retrain`, and `[retrain] every` inside
//! `serve`, which runs it in a child process): a challenger is trained on the stream's
//! history (`retrain.source`: InfluxDB or Kafka) before the holdout, scored beside the current
//! model (the champion) on the holdout, and published only if it passes the gate: a MASE
//! better by `retrain.margin`, not many more readings over the alarm line, and no worse on the
//! operators' verdicts. It prints nothing: it reports what it does as [`Notice`]s and returns
//! its [`Decision`], which is also appended to the registry's `decisions.jsonl` and kept in
//! the published model's metadata.

use crate::config::{Config, StreamConfig};
use crate::decode::Reading;
use crate::engine::InferenceModel;
use crate::model::history::{self, History};
use crate::model::registry::{Decision, LoadedModel, Metrics, Registry, RegistryError};
use crate::model::train::{self, ProgressEvent, Trained};
use crate::time::format_ts;
use anyhow::{Context, bail};
use std::sync::Arc;

/// What a retrain reports while it runs (the command prints these; its `Display` is the line).
#[derive(Debug)]
pub enum Notice {
    /// History rows that could not be read.
    SkippedRows {
        /// In all.
        count: usize,
        /// The first, with why.
        first: Option<String>,
    },
    /// The operators' labels file cannot be read: the retrain goes on without verdicts.
    LabelsUnused(String),
    /// A label recorded while its alarm was active, whose alarm's end cannot be read.
    AlarmEndUnknown {
        /// The label's device, alarm time and when it was recorded.
        device: String,
        /// See `device`.
        at: String,
        /// See `device`.
        recorded_at: String,
        /// Why.
        error: String,
    },
    /// The challenger's training starts.
    Training {
        /// Readings it trains on.
        readings: usize,
        /// Start of the holdout (ns).
        split: i64,
        /// Readings left out as confirmed faults.
        confirmed_left_out: u64,
        /// Readings in the holdout.
        held_out: usize,
    },
    /// Training's own progress.
    Progress(ProgressEvent),
    /// The challenger is trained.
    Trained {
        /// Training windows, epochs, seconds and windows per second.
        windows: usize,
        /// See `windows`.
        epochs: usize,
        /// See `windows`.
        seconds: f64,
        /// See `windows`.
        windows_per_s: f64,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SkippedRows { count, first } => {
                write!(f, "warning: {count} history rows skipped (e.g. {first:?})")
            }
            Self::LabelsUnused(e) => write!(f, "warning: operators' labels not used: {e}"),
            Self::AlarmEndUnknown {
                device,
                at,
                recorded_at,
                error,
            } => write!(
                f,
                "warning: the end of {device}'s alarm at {at} is not known ({error}); its label covers up to {recorded_at}"
            ),
            Self::Training {
                readings,
                split,
                confirmed_left_out,
                held_out,
            } => write!(
                f,
                "challenger: training on {readings} readings before {} ({confirmed_left_out} left out as confirmed faults); holdout: {held_out} readings",
                format_ts(*split)
            ),
            Self::Progress(e) => write!(f, "{e:?}"),
            Self::Trained {
                windows,
                epochs,
                seconds,
                windows_per_s,
            } => write!(
                f,
                "challenger trained: {windows} windows × {epochs} epochs in {seconds:.1} s ({windows_per_s:.0} windows/s)"
            ),
        }
    }
}

/// Retrains `stream` on its history up to `to` (ns): trains a challenger, weighs it against
/// the champion and publishes it if it passes. Returns the decision.
pub fn retrain(
    cfg: &Config,
    stream: &StreamConfig,
    to: i64,
    on: &mut dyn FnMut(Notice),
) -> anyhow::Result<Decision> {
    let r = &cfg.retrain;
    let split = to.saturating_sub(r.holdout.as_nanos());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let from = to.saturating_sub(r.window.as_nanos());
    let h = history::read(cfg, stream, r.source, from, to)?;
    if h.skipped_total > 0 {
        on(Notice::SkippedRows {
            count: h.skipped_total,
            first: h.skipped.first().cloned(),
        });
    }
    let verdicts = rt.block_on(verdicts_until(cfg, &stream.name, to, on));
    let training = TrainingSet::cut(&h, split, &verdicts)?;
    on(Notice::Training {
        readings: training.before.len(),
        split,
        confirmed_left_out: training.confirmed_left_out,
        held_out: training.held_out,
    });
    let (Trained { mut meta, model }, challenger) =
        train_challenger(cfg, stream, &training.before, &h.source, on)?;
    let score =
        |m: Arc<InferenceModel>| train::holdout(m, cfg, stream, (&h.readings, split), &verdicts);
    let challenger_m = score(challenger)?;
    let registry = Registry::new(&cfg.model.registry);
    let champion = match registry.load(&stream.name, None) {
        Ok(l) => Some(l),
        Err(RegistryError::NoModel { .. }) => None,
        Err(e) => return Err(e).context("cannot load the current model (the champion)"),
    };
    let champion_m = match &champion {
        Some(c) if c.meta.features == stream.features => {
            Some(score(Arc::new(c.inference.clone()))?)
        }
        _ => None,
    };
    let (published, reason) = weigh(
        cfg,
        stream,
        champion.as_ref(),
        champion_m.as_ref(),
        &challenger_m,
    );
    let mut decision = Decision {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        champion: champion.as_ref().map(|c| c.meta.version.clone()),
        champion_mase: champion_m.as_ref().map(|m| m.mase),
        challenger: "rejected".into(),
        challenger_mase: challenger_m.mase,
        holdout_from: format_ts(split),
        holdout_to: format_ts(to),
        margin: r.margin,
        champion_over_line: champion_m.as_ref().and_then(|m| m.over_line),
        challenger_over_line: challenger_m.over_line,
        champion_alarms: champion_m.as_ref().and_then(|m| m.alarms),
        challenger_alarms: challenger_m.alarms,
        champion_labels: champion_m.as_ref().and_then(|m| m.labels),
        challenger_labels: challenger_m.labels,
        confirmed_left_out: training.confirmed_left_out,
        published,
        reason,
    };
    if published {
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

/// Trains the challenger on `before` (from `source`) and readies it for scoring, with the
/// anomaly thresholds its training measured, as the champion is scored with its own (a model
/// without them falls back to Gaussian tails, which would make the comparison unfair).
fn train_challenger(
    cfg: &Config,
    stream: &StreamConfig,
    before: &[Reading],
    source: &str,
    on: &mut dyn FnMut(Notice),
) -> anyhow::Result<(Trained, Arc<InferenceModel>)> {
    let trained = train::train(cfg, stream, before, vec![source.to_string()], &mut |e| {
        on(Notice::Progress(e))
    })?;
    let meta = &trained.meta;
    on(Notice::Trained {
        windows: meta.training.train_windows,
        epochs: meta.training.epochs,
        seconds: meta.training.seconds.unwrap_or(0.0),
        windows_per_s: meta.training.windows_per_s().unwrap_or(0.0),
    });
    let mut challenger = trained.model.export(
        &meta.architecture,
        "challenger",
        &meta.features,
        &meta.mean,
        &meta.std,
    )?;
    challenger.set_calibration(meta.anomaly.clone());
    challenger.longest_flat_ns = meta.longest_flat_ns.clone();
    Ok((trained, Arc::new(challenger)))
}

/// The history cut at the holdout.
struct TrainingSet {
    /// Readings before the holdout, less confirmed faults (not the normal the challenger
    /// should learn).
    before: Vec<Reading>,
    /// Readings before the holdout left out as confirmed faults.
    confirmed_left_out: u64,
    /// Readings in the holdout.
    held_out: usize,
}

impl TrainingSet {
    fn cut(h: &History, split: i64, verdicts: &crate::labels::Verdicts) -> anyhow::Result<Self> {
        let (mut before, mut confirmed_left_out, mut held_out) = (Vec::new(), 0, 0);
        for x in &h.readings {
            if x.ts >= split {
                held_out += 1;
            } else if verdicts.confirmed_fault(&x.device, x.ts) {
                confirmed_left_out += 1;
            } else {
                before.push(x.clone());
            }
        }
        if before.is_empty() || held_out == 0 {
            bail!(
                "{} readings before the holdout and {held_out} in it ({}): retrain needs both (retrain.window, retrain.holdout)",
                before.len(),
                h.source
            );
        }
        Ok(Self {
            before,
            confirmed_left_out,
            held_out,
        })
    }
}

/// Whether to publish the challenger, and why: the first model is; one whose champion has
/// another schema than the stream is; otherwise the [`gate`] decides.
fn weigh(
    cfg: &Config,
    stream: &StreamConfig,
    champion: Option<&LoadedModel>,
    champion_m: Option<&Metrics>,
    challenger_m: &Metrics,
) -> (bool, String) {
    match (champion, champion_m) {
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
            challenger_m.into(),
            cm.into(),
            (cfg.retrain.margin, cfg.retrain.max_over_line_ratio),
            stream.rate(&cfg.anomaly),
        ),
    }
}

/// The operators' verdicts for a retrain up to `to`: a labels file that cannot be read is
/// reported and the retrain goes on without verdicts (a hand edit must not stop retraining);
/// a label recorded while its alarm was still active is completed from InfluxDB — up to the
/// alarm's end if it has cleared since, else up to `to` — so that a fault confirmed while it
/// lasted is left out of training whole.
async fn verdicts_until(
    cfg: &Config,
    stream: &str,
    to: i64,
    on: &mut dyn FnMut(Notice),
) -> crate::labels::Verdicts {
    let path = &cfg.anomaly.labels_file;
    if path.is_empty() {
        return Default::default();
    }
    let mut labels = match crate::labels::read_labels_file(std::path::Path::new(path)) {
        Ok(l) => l,
        Err(e) => {
            on(Notice::LabelsUnused(e.to_string()));
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
            Err(e) => on(Notice::AlarmEndUnknown {
                device: l.device.clone(),
                at: l.at.clone(),
                recorded_at: l.recorded_at.clone(),
                error: format!("{e:#}"),
            }),
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

impl From<&Metrics> for Judged {
    fn from(m: &Metrics) -> Self {
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
