//! The model registry: `<registry>/<stream>/<version>/{model.bpk, meta.json}` plus a
//! `<registry>/<stream>/current` file naming the version in use.
//!
//! Publishing never exposes a half-written model: a version is written into a hidden
//! temporary folder and renamed into place, and `current` is replaced by renaming a
//! temporary file over it, so a reader sees the old version or the new one, never a mix.
//!
//! Every change of `current` is appended to `<registry>/<stream>/history` (`time version
//! action`), which `rollback` walks back; `prune` removes old versions but never the current
//! one nor any version named in the last [`HISTORY_KEPT`] changes, so a rollback always has
//! its target. A version is removed by renaming it to a hidden name first, so a `serve` that
//! lists or loads versions meanwhile sees it whole or not at all.

use crate::engine::InferenceModel;
use crate::model::{Architecture, Forecaster};
use burn::module::Module;
use burn::prelude::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Weights file name inside a version folder.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// Metadata file name inside a version folder.
pub const META_FILE: &str = "meta.json";
/// Pointer file naming the current version.
pub const CURRENT_FILE: &str = "current";
/// Log of the changes of `current`.
pub const HISTORY_FILE: &str = "history";
/// Versions named by this many of the latest changes of `current` are never pruned.
pub const HISTORY_KEPT: usize = 3;

/// One change of `current`, as `history` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// When (RFC 3339).
    pub at: String,
    /// The version made current.
    pub version: String,
    /// Why: `publish`, `promote` or `rollback`.
    pub action: String,
}

/// A version as `models list` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Version.
    pub version: String,
    /// Its metadata, or why it cannot be read.
    pub meta: Result<ModelMeta, String>,
    /// Whether it is the current one.
    pub current: bool,
}

/// Validation metrics of a trained model (see `train`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Mean absolute error, normalised units, all horizons and features.
    pub mae: f64,
    /// Root mean squared error, normalised units.
    pub rmse: f64,
    /// MAE divided by the naive last-value forecast's MAE on the same points.
    pub mase: f64,
    /// Share of actual values inside the 90% band.
    pub coverage_90: f64,
    /// MASE per horizon step.
    pub mase_by_horizon: Vec<f64>,
    /// MAE per feature, in the feature's own units.
    pub mae_by_feature: Vec<f64>,
    /// Forecast values evaluated.
    pub points: u64,
    /// Detection on the same readings: the share of scored readings (once warm) over the
    /// alarm line. On normal data it should sit near the target false-alarm rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_line: Option<f64>,
    /// Alarms the alarm policy raised on those readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarms: Option<u64>,
    /// Readings those two figures are taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<u64>,
    /// How its alarms fare against the operators' verdicts on those readings (when any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<crate::labels::LabelScore>,
}

/// What the model was trained on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingInfo {
    /// First reading (RFC 3339).
    pub from: String,
    /// Last reading (RFC 3339).
    pub to: String,
    /// Devices.
    pub devices: usize,
    /// Readings used.
    pub readings: usize,
    /// Training windows.
    pub train_windows: usize,
    /// Validation windows.
    pub validation_windows: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Best validation loss (Gaussian NLL, normalised units).
    pub best_validation_loss: f64,
    /// Seed.
    pub seed: u64,
    /// Window length.
    pub window: usize,
    /// Learning rate.
    pub learning_rate: f64,
    /// Input files.
    pub inputs: Vec<String>,
    /// Wall time of the epochs (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl TrainingInfo {
    /// Training throughput: windows stepped forward and back per second (all epochs).
    pub fn windows_per_s(&self) -> Option<f64> {
        let s = self.seconds?;
        (s > 0.0).then(|| (self.train_windows * self.epochs) as f64 / s)
    }
}

/// `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Format of this file.
    pub format: u32,
    /// Version (folder name).
    pub version: String,
    /// Stream.
    pub stream: String,
    /// When it was published (RFC 3339).
    pub created_at: String,
    /// Feature names in input order (the schema).
    pub features: Vec<String>,
    /// Normalisation means.
    pub mean: Vec<f32>,
    /// Normalisation standard deviations.
    pub std: Vec<f32>,
    /// Architecture.
    pub architecture: Architecture,
    /// Training data and settings.
    pub training: TrainingInfo,
    /// Validation metrics.
    pub validation: Metrics,
    /// Tails of the anomaly evidence on the training data (absent in models trained before
    /// it existed: Gaussian tails are then assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<crate::engine::detect::Calibration>,
    /// Per feature, the longest time (ns) a device's reading held one value in the training
    /// history: what flat looks like for stuck-sensor alarms (absent in models trained before
    /// them: no such alarms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_flat_ns: Option<Vec<i64>>,
    /// The champion/challenger decision that published it (`sensorcast retrain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// A champion/challenger decision of `sensorcast retrain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// When (RFC 3339).
    pub at: String,
    /// The model that was current (none for a stream's first model).
    pub champion: Option<String>,
    /// Its holdout MASE.
    pub champion_mase: Option<f64>,
    /// The challenger's version (when published) or `"rejected"`.
    pub challenger: String,
    /// Its holdout MASE.
    pub challenger_mase: f64,
    /// Holdout window (RFC 3339).
    pub holdout_from: String,
    /// End of the holdout.
    pub holdout_to: String,
    /// Required improvement.
    pub margin: f64,
    /// Champion's share of holdout readings over the alarm line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_over_line: Option<f64>,
    /// Challenger's share of holdout readings over the alarm line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger_over_line: Option<f64>,
    /// Alarms the champion raised on the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_alarms: Option<u64>,
    /// Alarms the challenger raised on the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger_alarms: Option<u64>,
    /// The champion's alarms against the operators' verdicts in the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_labels: Option<crate::labels::LabelScore>,
    /// The challenger's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger_labels: Option<crate::labels::LabelScore>,
    /// Readings left out of the challenger's training as confirmed faults.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub confirmed_left_out: u64,
    /// Whether the challenger was published.
    pub published: bool,
    /// Why, in words.
    pub reason: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// File of a stream's retrain decisions, one JSON object a line.
pub const DECISIONS_FILE: &str = "decisions.jsonl";

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// I/O on a path.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No current model.
    #[error("no model for stream {stream:?} in {registry} (train one with `sensorcast train`)")]
    NoModel {
        /// Stream.
        stream: String,
        /// Registry.
        registry: PathBuf,
    },
    /// Bad `meta.json`.
    #[error("{path}: invalid model metadata: {message}")]
    Meta {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A version name that is not a single path component (from a checkpoint's header, a
    /// `current` file or the command line: it is never joined into a path).
    #[error("model version {0:?} is not a version name (a single path component)")]
    BadVersion(String),
    /// Weights could not be saved or loaded.
    #[error("{path}: {message}")]
    Weights {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `version` if it names one entry of a stream's folder: not empty, not `.` or `..`, without
/// a path separator or NUL.
fn version_name(version: &str) -> Result<&str, RegistryError> {
    let bad = version.is_empty()
        || version == "."
        || version == ".."
        || version.contains(['/', '\\', '\0']);
    if bad {
        Err(RegistryError::BadVersion(version.to_string()))
    } else {
        Ok(version)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A registry root.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A loaded model version.
pub struct LoadedModel {
    /// Metadata.
    pub meta: ModelMeta,
    /// The burn model (for retraining or comparison).
    pub model: Forecaster,
    /// Exported for the engine.
    pub inference: InferenceModel,
}

impl Registry {
    /// Registry at `root` (created on first publish).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn stream_dir(&self, stream: &str) -> PathBuf {
        self.root.join(stream)
    }

    /// A fresh version name from the time (`20261127T033000Z`), with a suffix if taken.
    pub fn new_version(&self, stream: &str, now: chrono::DateTime<chrono::Utc>) -> String {
        let base = now.format("%Y%m%dT%H%M%SZ").to_string();
        let dir = self.stream_dir(stream);
        let mut name = base.clone();
        let mut n = 1;
        while dir.join(&name).exists() {
            n += 1;
            name = format!("{base}-{n}");
        }
        name
    }

    /// Names a trained model's version after the current time (and stamps `created_at`),
    /// publishes it and makes it current. Returns the version folder.
    pub fn publish_new(
        &self,
        meta: &mut ModelMeta,
        model: &Forecaster,
    ) -> Result<PathBuf, RegistryError> {
        let now = chrono::Utc::now();
        meta.version = self.new_version(&meta.stream, now);
        meta.created_at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.publish(meta, model)
    }

    /// Writes a version and makes it current. Returns the version folder.
    pub fn publish(&self, meta: &ModelMeta, model: &Forecaster) -> Result<PathBuf, RegistryError> {
        let dir = self.stream_dir(&meta.stream);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".tmp-{}-{}", meta.version, std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let weights = tmp.join(WEIGHTS_FILE);
        model
            .clone()
            .save_file(&weights)
            .map_err(|e| RegistryError::Weights {
                path: weights.clone(),
                message: format!("cannot save weights: {e:?}"),
            })?;
        let meta_path = tmp.join(META_FILE);
        let text = serde_json::to_string_pretty(meta).map_err(|e| RegistryError::Meta {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        write_synced(&meta_path, text.as_bytes())?;
        sync_file(&weights)?;
        let final_dir = dir.join(&meta.version);
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        self.make_current(&meta.stream, &meta.version, "publish")?;
        Ok(final_dir)
    }

    /// Points `current` at `version` atomically and records why in `history`.
    pub fn make_current(
        &self,
        stream: &str,
        version: &str,
        action: &str,
    ) -> Result<(), RegistryError> {
        self.set_current(stream, version)?;
        let path = self.stream_dir(stream).join(HISTORY_FILE);
        let line = format!(
            "{} {version} {action}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                f.sync_all()
            })
            .map_err(io(&path))
    }

    /// The changes of `current`, oldest first (empty for registries older than the history).
    pub fn history(&self, stream: &str) -> Result<Vec<Change>, RegistryError> {
        let path = self.stream_dir(stream).join(HISTORY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RegistryError::Io { path, source: e }),
        };
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some(Change {
                    at: parts.next()?.to_string(),
                    version: parts.next()?.to_string(),
                    action: parts.next().unwrap_or("").to_string(),
                })
            })
            .collect())
    }

    /// Every version of a stream, oldest first (version names sort by time).
    pub fn list(&self, stream: &str) -> Result<Vec<Listed>, RegistryError> {
        let dir = self.stream_dir(stream);
        let current = self.current(stream).ok();
        let mut versions: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.path().join(META_FILE).is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(RegistryError::Io {
                    path: dir,
                    source: e,
                });
            }
        };
        versions.sort();
        Ok(versions
            .into_iter()
            .map(|v| Listed {
                meta: self.meta(stream, &v).map_err(|e| e.to_string()),
                current: current.as_deref() == Some(v.as_str()),
                version: v,
            })
            .collect())
    }

    /// The streams with a folder in the registry.
    pub fn streams(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Appends a retrain decision to the stream's `decisions.jsonl`.
    pub fn record_decision(&self, stream: &str, d: &Decision) -> Result<(), RegistryError> {
        let dir = self.stream_dir(stream);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(DECISIONS_FILE);
        let mut line = serde_json::to_string(d).map_err(|e| RegistryError::Meta {
            path: path.clone(),
            message: e.to_string(),
        })?;
        line.push('\n');
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                f.sync_all()
            })
            .map_err(io(&path))
    }

    /// Makes `version` current (it must load: weights and metadata intact).
    pub fn promote(&self, stream: &str, version: &str) -> Result<(), RegistryError> {
        version_name(version)?;
        self.load(stream, Some(version))?;
        self.make_current(stream, version, "promote")
    }

    /// Makes the version that was current before the current one current again; returns it.
    /// Repeated rollbacks keep walking back through the history.
    pub fn rollback(&self, stream: &str) -> Result<String, RegistryError> {
        let current = self.current(stream)?;
        // Replay the history as a stack: publishing or promoting pushes a version, a rollback
        // pops back to the one below. The target is the version below the current one.
        let mut stack: Vec<String> = Vec::new();
        for c in self.history(stream)? {
            if c.action == "rollback" {
                stack.pop();
                if stack.last() != Some(&c.version) {
                    stack.push(c.version);
                }
            } else {
                stack.push(c.version);
            }
        }
        if stack.last() != Some(&current) {
            stack.push(current.clone());
        }
        stack.pop();
        let target = stack
            .into_iter()
            .rev()
            .find(|v| *v != current && self.meta(stream, v).is_ok());
        let Some(target) = target else {
            return Err(RegistryError::Meta {
                path: self.stream_dir(stream).join(HISTORY_FILE),
                message: format!("no earlier version of {stream:?} to roll back to"),
            });
        };
        self.load(stream, Some(&target))?;
        self.make_current(stream, &target, "rollback")?;
        Ok(target)
    }

    /// Removes all but the newest `keep` versions, never the current one nor any version the
    /// last [`HISTORY_KEPT`] changes of `current` name. Returns the versions removed.
    pub fn prune(&self, stream: &str, keep: usize) -> Result<Vec<String>, RegistryError> {
        let listed = self.list(stream)?;
        let current = self.current(stream).ok();
        let history = self.history(stream)?;
        let protected: std::collections::HashSet<String> = history
            .iter()
            .rev()
            .take(HISTORY_KEPT)
            .map(|c| c.version.clone())
            .chain(current)
            .collect();
        let n = listed.len();
        let mut removed = Vec::new();
        for l in listed.into_iter().take(n.saturating_sub(keep)) {
            if protected.contains(&l.version) {
                continue;
            }
            let dir = self.stream_dir(stream);
            let from = dir.join(&l.version);
            let hidden = dir.join(format!(".pruned-{}-{}", l.version, std::process::id()));
            std::fs::rename(&from, &hidden).map_err(io(&from))?;
            std::fs::remove_dir_all(&hidden).map_err(io(&hidden))?;
            removed.push(l.version);
        }
        Ok(removed)
    }

    /// Points `current` at `version` atomically (no history entry: see [`Self::make_current`]).
    pub fn set_current(&self, stream: &str, version: &str) -> Result<(), RegistryError> {
        version_name(version)?;
        let dir = self.stream_dir(stream);
        let target = dir.join(version);
        if !target.join(META_FILE).is_file() {
            return Err(RegistryError::Meta {
                path: target,
                message: "no such version".into(),
            });
        }
        let tmp = dir.join(format!(".{CURRENT_FILE}.tmp-{}", std::process::id()));
        write_synced(&tmp, format!("{version}\n").as_bytes())?;
        let current = dir.join(CURRENT_FILE);
        std::fs::rename(&tmp, &current).map_err(io(&current))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The current version of a stream.
    pub fn current(&self, stream: &str) -> Result<String, RegistryError> {
        let path = self.stream_dir(stream).join(CURRENT_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Ok(_) => Err(RegistryError::Meta {
                path,
                message: "empty pointer".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RegistryError::NoModel {
                stream: stream.to_string(),
                registry: self.root.clone(),
            }),
            Err(e) => Err(RegistryError::Io { path, source: e }),
        }
    }

    /// Reads a version's metadata.
    pub fn meta(&self, stream: &str, version: &str) -> Result<ModelMeta, RegistryError> {
        let path = self
            .stream_dir(stream)
            .join(version_name(version)?)
            .join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let meta: ModelMeta = serde_json::from_str(&text).map_err(|e| RegistryError::Meta {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if meta.version != version || meta.stream != stream {
            return Err(RegistryError::Meta {
                path,
                message: format!(
                    "names version {:?} of stream {:?}",
                    meta.version, meta.stream
                ),
            });
        }
        Ok(meta)
    }

    /// Loads a version (the current one when `version` is `None`) and exports it.
    pub fn load(&self, stream: &str, version: Option<&str>) -> Result<LoadedModel, RegistryError> {
        let version = match version {
            Some(v) => v.to_string(),
            None => self.current(stream)?,
        };
        let meta = self.meta(stream, &version)?;
        let path = self.stream_dir(stream).join(&version).join(WEIGHTS_FILE);
        let device = Device::flex();
        let model = Forecaster::seeded(&meta.architecture, &device, 0)
            .try_load_file(&path)
            .map_err(|e| RegistryError::Weights {
                path: path.clone(),
                message: format!("cannot load weights: {e:?}"),
            })?;
        let mut inference = model
            .export(
                &meta.architecture,
                &meta.version,
                &meta.features,
                &meta.mean,
                &meta.std,
            )
            .map_err(|e| RegistryError::Weights {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if let Some(problem) = inference.weights_problem() {
            return Err(RegistryError::Weights {
                path,
                message: format!("{problem}: the model is refused"),
            });
        }
        inference.set_calibration(meta.anomaly.clone());
        inference.longest_flat_ns = meta.longest_flat_ns.clone();
        Ok(LoadedModel {
            meta,
            model,
            inference,
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_file(path: &Path) -> Result<(), RegistryError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_version_name_that_is_not_one_path_component_is_never_joined_into_a_path() {
        let d = tempfile::tempdir().expect("tmp");
        let r = Registry::new(d.path());
        for v in ["../../etc", "a/b", "..", ".", "", "x\\y", "nul\0"] {
            for err in [
                r.meta("pumps", v).map(|_| ()),
                r.load("pumps", Some(v)).map(|_| ()),
                r.set_current("pumps", v),
                r.promote("pumps", v),
            ] {
                assert!(
                    matches!(&err, Err(RegistryError::BadVersion(b)) if b == v),
                    "{v:?}: {err:?}"
                );
            }
        }
    }

    use super::*;
    use crate::model::to_vec;

    fn meta(version: &str, arch: Architecture) -> ModelMeta {
        ModelMeta {
            format: 1,
            version: version.into(),
            stream: "pumps".into(),
            created_at: "2026-11-27T00:00:00Z".into(),
            features: vec!["a".into(), "b".into()],
            mean: vec![1.0, 2.0],
            std: vec![0.5, 3.0],
            architecture: arch,
            training: TrainingInfo {
                from: String::new(),
                to: String::new(),
                devices: 1,
                readings: 1,
                train_windows: 1,
                validation_windows: 1,
                epochs: 1,
                best_epoch: 1,
                best_validation_loss: 0.0,
                seed: 1,
                window: 2,
                learning_rate: 0.1,
                inputs: vec![],
                seconds: None,
            },
            validation: Metrics {
                mae: 0.0,
                rmse: 0.0,
                mase: 0.5,
                coverage_90: 0.9,
                mase_by_horizon: vec![0.5],
                mae_by_feature: vec![0.0, 0.0],
                points: 1,
                over_line: None,
                alarms: None,
                judged: None,
                labels: None,
            },
            anomaly: None,
            longest_flat_ns: None,
            decision: None,
        }
    }

    #[test]
    fn publish_load_and_switch_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new(dir.path());
        assert!(matches!(
            reg.current("pumps"),
            Err(RegistryError::NoModel { .. })
        ));
        let arch = Architecture {
            input: 2,
            hidden: 4,
            layers: 2,
            horizon: 1,
        };
        let device = Device::flex();
        let m1 = Forecaster::seeded(&arch, &device, 1);
        let m2 = Forecaster::seeded(&arch, &device, 2);
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T03:30:00Z")
            .expect("time")
            .to_utc();
        let v1 = reg.new_version("pumps", now);
        assert_eq!(v1, "20261127T033000Z");
        reg.publish(&meta(&v1, arch), &m1).expect("publish v1");
        let v2 = reg.new_version("pumps", now);
        assert_eq!(v2, "20261127T033000Z-2", "a taken name gets a suffix");
        reg.publish(&meta(&v2, arch), &m2).expect("publish v2");
        assert_eq!(reg.current("pumps").expect("current"), v2);
        let loaded = reg.load("pumps", None).expect("load current");
        assert_eq!(loaded.meta.version, v2);
        assert_eq!(loaded.inference.version, v2);
        assert_eq!(
            to_vec(loaded.model.head.weight.val()).expect("w"),
            to_vec(m2.head.weight.val()).expect("w")
        );
        reg.set_current("pumps", &v1).expect("roll back");
        assert_eq!(reg.load("pumps", None).expect("load v1").meta.version, v1);
        assert!(
            reg.set_current("pumps", "nope").is_err(),
            "cannot point at a missing version"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("pumps"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "no temporary files left: {leftovers:?}"
        );
        // History, promote, rollback (walking back step by step), prune.
        let v3 = reg.new_version("pumps", now);
        reg.publish(&meta(&v3, arch), &m1).expect("publish v3");
        let actions: Vec<_> = reg
            .history("pumps")
            .expect("history")
            .into_iter()
            .map(|c| (c.version, c.action))
            .collect();
        assert_eq!(
            actions,
            [
                (v1.clone(), "publish".to_string()),
                (v2.clone(), "publish".to_string()),
                (v3.clone(), "publish".to_string())
            ],
            "set_current alone (the roll back above) is not a change of record"
        );
        assert_eq!(reg.rollback("pumps").expect("rollback"), v2);
        assert_eq!(reg.current("pumps").expect("current"), v2);
        assert_eq!(
            reg.rollback("pumps").expect("again"),
            v1,
            "walks further back"
        );
        assert!(reg.rollback("pumps").is_err(), "nothing before the first");
        reg.promote("pumps", &v3).expect("promote");
        assert_eq!(reg.rollback("pumps").expect("rollback"), v1);
        assert!(reg.promote("pumps", "nope").is_err());
        let listed = reg.list("pumps").expect("list");
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().find(|l| l.version == v1).expect("v1").current);
        // keep 0: only what is current or named by the last three changes (v1 rolled back
        // to, v3 promoted, v1 rolled back to) stays.
        assert_eq!(reg.prune("pumps", 0).expect("prune"), vec![v2.clone()]);
        assert_eq!(reg.prune("pumps", 5).expect("prune"), Vec::<String>::new());
        for _ in 0..3 {
            reg.promote("pumps", &v1).expect("promote");
        }
        assert_eq!(reg.prune("pumps", 0).expect("prune"), vec![v3.clone()]);
        assert_eq!(reg.list("pumps").expect("list").len(), 1);
        assert_eq!(reg.streams(), ["pumps"]);
        // A model with a zero scale is refused on load, so promote refuses it (non-finite
        // weights likewise: see the kernel's tests).
        let v4 = reg.new_version("pumps", now);
        let mut bad = meta(&v4, arch);
        bad.std[1] = 0.0;
        reg.publish(&bad, &m1).expect("publish v4");
        reg.set_current("pumps", &v1).expect("back");
        let err = reg.promote("pumps", &v4).expect_err("refused").to_string();
        assert!(err.contains("must be finite"), "{err}");
        assert_eq!(reg.current("pumps").expect("current"), v1);
        // A damaged meta.json is reported with its path.
        std::fs::write(dir.path().join("pumps").join(&v1).join(META_FILE), "{").expect("write");
        let err = reg
            .load("pumps", Some(&v1))
            .err()
            .expect("fails")
            .to_string();
        assert!(
            err.contains(META_FILE) && err.contains("invalid model metadata"),
            "{err}"
        );
    }
}
