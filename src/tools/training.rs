//! How a training run shows itself to the operator: a progress bar with the running loss,
//! and the validation report printed after it (`train`, `retrain`, `demo`, `evaluate`).

use crate::model::registry::ModelMeta;
use crate::model::train::ProgressEvent;

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
