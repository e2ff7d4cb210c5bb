//! Operator feedback: an alarm recorded as false or confirmed (`sensorcast label`).
//!
//! Labels live in one append-only TOML file of `[[label]]` entries (`anomaly.labels_file`),
//! each naming an alarm by what identifies its `anomaly_event` point: stream, device, kind and
//! start. A later entry for the same alarm supersedes an earlier one, so a verdict can be
//! changed by labelling again; nothing is ever rewritten in place.
//!
//! Who reads them:
//! - `serve` watches the file and writes each verdict onto its event point (same series and
//!   timestamp, so the point gains `verdict`, `labelled_by`, `label_note`), for dashboards;
//! - `retrain` leaves confirmed faults out of the challenger's training data, and its gate
//!   refuses a challenger that alarms on fewer confirmed faults or more false alarms than the
//!   champion in the holdout;
//! - `evaluate labelled --labels` takes them as the truth of a user's own history.
//!
//! A label covers its alarm's readings from `at` to `until` (both included: the event's
//! `start` and `end`). An alarm still active when labelled covers up to when it was labelled.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the operator found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing was wrong.
    False,
    /// A real fault.
    Confirmed,
}

impl Verdict {
    /// As written in the file and on points.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::False => "false",
            Verdict::Confirmed => "confirmed",
        }
    }
}

/// Alarm kinds a label may name (`anomaly_event`'s `kind` tag).
pub const KINDS: [&str; 3] = ["anomaly", "stuck", "silent"];

fn anomaly() -> String {
    "anomaly".into()
}

/// One entry of the labels file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// The stream.
    pub stream: String,
    /// The device.
    pub device: String,
    /// The alarm's kind.
    #[serde(default = "anomaly")]
    pub kind: String,
    /// The alarm's start (RFC 3339 or ns): its `anomaly_event` point's time.
    pub at: String,
    /// Its last reading (the event's `end`); absent while it was still active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// What the operator found.
    pub verdict: Verdict,
    /// Who.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    /// Why, in their words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
}

/// A label's times, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The alarm's start (ns).
    pub at: i64,
    /// The last reading it covers (ns, included).
    pub until: i64,
    /// When it was recorded (ns).
    pub recorded: i64,
}

impl Label {
    /// Its times, or the key that is wrong and why.
    pub fn span(&self) -> Result<Span, (&'static str, String)> {
        let parse = |key: &'static str, v: &str| {
            crate::time::parse_ts_text(v).map_err(|e| (key, e.to_string()))
        };
        let at = parse("at", &self.at)?;
        let recorded = parse("recorded_at", &self.recorded_at)?;
        let until = match &self.until {
            Some(u) => parse("until", u)?,
            None => recorded.max(at),
        };
        if until < at {
            return Err(("until", format!("{until:?} is before at ({})", self.at)));
        }
        if self.device.is_empty() {
            return Err(("device", "must not be empty".into()));
        }
        if !KINDS.contains(&self.kind.as_str()) {
            return Err((
                "kind",
                format!("{:?} is not one of {}", self.kind, KINDS.join(", ")),
            ));
        }
        Ok(Span {
            at,
            until,
            recorded,
        })
    }
}

/// What went wrong with the labels file.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// It exists but cannot be read.
    #[error("{path}: cannot read the labels file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// It is not TOML of `[[label]]` entries.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// An entry is wrong.
    #[error("{path}: label[{index}].{key}: {message}")]
    Entry {
        path: PathBuf,
        index: usize,
        key: &'static str,
        message: String,
    },
    /// A label cannot be appended.
    #[error("{path}: cannot append the label: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelFile {
    #[serde(default)]
    label: Vec<Label>,
}

/// Reads the labels file; a file that does not exist yet holds no labels. Errors name the
/// file, the entry and what is wrong.
pub fn read_labels_file(path: &Path) -> Result<Vec<Label>, LabelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabelError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let file: LabelFile = toml::from_str(&text).map_err(|e| LabelError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    for (index, l) in file.label.iter().enumerate() {
        l.span().map_err(|(key, message)| LabelError::Entry {
            path: path.into(),
            index,
            key,
            message,
        })?;
    }
    Ok(file.label)
}

/// Appends `label` to the file (created if missing) in one write, so that a reader never
/// sees half an entry and two writers never interleave theirs.
pub fn append_label(path: &Path, label: &Label) -> Result<(), LabelError> {
    use std::io::Write;
    let text = toml::to_string(&LabelFile {
        label: vec![label.clone()],
    })
    .expect("a label serialises");
    let write = |text: &str| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(format!("\n{text}").as_bytes())?;
        f.sync_all()
    };
    write(&text).map_err(|source| LabelError::Write {
        path: path.into(),
        source,
    })
}

/// One alarm's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// The readings it covers, `[at, until]` (ns).
    pub at: i64,
    /// See `at`.
    pub until: i64,
    /// The verdict.
    pub verdict: Verdict,
}

/// One stream's verdicts on its engine's alarms (kinds `anomaly` and `stuck`), by device;
/// the latest label of each alarm wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdicts {
    by_device: HashMap<String, Vec<Judged>>,
}

impl Verdicts {
    /// The verdicts of `labels` on `stream`'s anomaly and stuck alarms (entries that do not
    /// parse are left out: reading the file reports them).
    pub fn for_stream(labels: &[Label], stream: &str) -> Self {
        let mut latest: HashMap<(&str, &str, i64), (i64, Judged)> = HashMap::new();
        for l in labels
            .iter()
            .filter(|l| l.stream == stream && l.kind != "silent")
        {
            let Ok(s) = l.span() else { continue };
            let judged = Judged {
                at: s.at,
                until: s.until,
                verdict: l.verdict,
            };
            let e = latest
                .entry((&l.device, &l.kind, s.at))
                .or_insert((s.recorded, judged));
            if s.recorded >= e.0 {
                *e = (s.recorded, judged);
            }
        }
        let mut v = Self::default();
        for ((device, _, _), (_, j)) in latest {
            v.by_device.entry(device.to_string()).or_default().push(j);
        }
        for js in v.by_device.values_mut() {
            js.sort_by_key(|j| (j.at, j.until));
        }
        v
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// The verdicts of `device`.
    pub fn of(&self, device: &str) -> &[Judged] {
        self.by_device.get(device).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The verdict on `device`'s reading at `ts`, if it lies in a labelled alarm (a
    /// confirmed fault wins where spans overlap).
    pub fn at(&self, device: &str, ts: i64) -> Option<Verdict> {
        self.of(device)
            .iter()
            .filter(|j| ts >= j.at && ts <= j.until)
            .map(|j| j.verdict)
            .max_by_key(|v| *v == Verdict::Confirmed)
    }

    /// Whether `device`'s reading at `ts` lies in an alarm an operator confirmed as a fault.
    pub fn confirmed_fault(&self, device: &str, ts: i64) -> bool {
        self.at(device, ts) == Some(Verdict::Confirmed)
    }

    /// Every verdict.
    pub fn all(&self) -> impl Iterator<Item = (&str, &Judged)> {
        self.by_device
            .iter()
            .flat_map(|(d, js)| js.iter().map(move |j| (d.as_str(), j)))
    }
}

/// How a model's alarms fare against the operators' verdicts in a stretch of history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelScore {
    /// Confirmed faults in the stretch.
    pub confirmed: u32,
    /// ... of which the model alarmed on at least one reading.
    pub confirmed_alarmed: u32,
    /// Alarms labelled false in the stretch.
    pub false_alarms: u32,
    /// ... whose readings the model alarmed on again (at least one).
    pub false_alarmed: u32,
}

impl LabelScore {
    /// Scores `alarmed` (each device's readings under an alarm, ns) against the verdicts
    /// whose alarms start at or after `from`.
    pub fn of(verdicts: &Verdicts, alarmed: &HashMap<String, Vec<i64>>, from: i64) -> Self {
        let mut s = Self::default();
        for (device, j) in verdicts.all().filter(|(_, j)| j.at >= from) {
            let hit = alarmed
                .get(device)
                .is_some_and(|ts| ts.iter().any(|&t| t >= j.at && t <= j.until));
            match j.verdict {
                Verdict::Confirmed => {
                    s.confirmed += 1;
                    s.confirmed_alarmed += hit as u32;
                }
                Verdict::False => {
                    s.false_alarms += 1;
                    s.false_alarmed += hit as u32;
                }
            }
        }
        s
    }

    /// Whether any verdict was in the stretch.
    pub fn is_empty(&self) -> bool {
        self.confirmed + self.false_alarms == 0
    }
}

impl std::fmt::Display for LabelScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} confirmed faults alarmed, {}/{} false alarms alarmed again",
            self.confirmed_alarmed, self.confirmed, self.false_alarmed, self.false_alarms
        )
    }
}

/// The labels file, read again when it changes (`serve`): hands out the labels not handed
/// out before (new entries, entries changed by hand, and all of them after a restart;
/// writing a verdict twice is harmless: same point, same fields).
#[derive(Debug)]
pub struct LabelSource {
    file: crate::watched::WatchedFile,
    /// The entries handed out so far, as written.
    seen: std::collections::HashSet<String>,
}

impl LabelSource {
    /// For `anomaly.labels_file`; `None` when there is none.
    pub fn new(path: &str) -> Option<Self> {
        (!path.is_empty()).then(|| Self {
            file: crate::watched::WatchedFile::new(path),
            seen: Default::default(),
        })
    }

    /// The labels added since the last call, when the file changed (at most once a second).
    /// A file that cannot be read is logged and tried again when it next changes.
    pub fn poll(&mut self) -> Vec<Label> {
        let Some(path) = self.file.changed() else {
            return Vec::new();
        };
        match read_labels_file(path) {
            Ok(labels) => {
                let new: Vec<Label> = labels
                    .into_iter()
                    .filter(|l| self.seen.insert(format!("{l:?}")))
                    .collect();
                if !new.is_empty() {
                    tracing::info!(file = %path.display(), new = new.len(), "operator labels read");
                }
                new
            }
            Err(e) => {
                tracing::error!(error = %e, "labels file not read; its verdicts wait until it is mended");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(device: &str, at: &str, until: Option<&str>, v: Verdict, recorded: &str) -> Label {
        Label {
            stream: "pumps".into(),
            device: device.into(),
            kind: "anomaly".into(),
            at: at.into(),
            until: until.map(String::from),
            verdict: v,
            by: "ops".into(),
            note: String::new(),
            recorded_at: recorded.into(),
        }
    }

    fn t(s: &str) -> i64 {
        crate::time::parse_ts_text(s).expect("time")
    }

    #[test]
    fn appended_labels_read_back_and_the_latest_verdict_of_an_alarm_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels.toml");
        assert!(
            read_labels_file(&path)
                .expect("missing is empty")
                .is_empty()
        );
        let first = label(
            "p1",
            "2026-12-05T08:00:00Z",
            Some("2026-12-05T08:10:00Z"),
            Verdict::False,
            "2026-12-05T09:00:00Z",
        );
        let mut second = first.clone();
        second.verdict = Verdict::Confirmed;
        second.recorded_at = "2026-12-05T10:00:00Z".into();
        second.note = "bearing \"worn\"\nreplaced".into();
        let open = label(
            "p2",
            "2026-12-05T08:00:00Z",
            None,
            Verdict::False,
            "2026-12-05T08:30:00Z",
        );
        for l in [&first, &second, &open] {
            append_label(&path, l).expect("append");
        }
        let back = read_labels_file(&path).expect("read");
        assert_eq!(back, vec![first, second, open]);
        let v = Verdicts::for_stream(&back, "pumps");
        assert_eq!(v.of("p1").len(), 1, "one alarm, latest verdict");
        assert_eq!(v.of("p1")[0].verdict, Verdict::Confirmed);
        assert!(
            v.confirmed_fault("p1", t("2026-12-05T08:10:00Z")),
            "end included"
        );
        assert!(!v.confirmed_fault("p1", t("2026-12-05T08:10:01Z")));
        assert_eq!(
            v.of("p2")[0].until,
            t("2026-12-05T08:30:00Z"),
            "an open alarm covers up to its labelling"
        );
        assert!(Verdicts::for_stream(&back, "fans").is_empty());
    }

    #[test]
    fn errors_name_the_file_the_entry_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels.toml");
        let good = label(
            "p1",
            "2026-12-05T08:00:00Z",
            None,
            Verdict::False,
            "2026-12-05T09:00:00Z",
        );
        append_label(&path, &good).expect("append");
        let mut bad = good.clone();
        bad.until = Some("2026-12-05T07:00:00Z".into());
        append_label(&path, &bad).expect("append");
        let e = read_labels_file(&path).unwrap_err().to_string();
        assert!(e.contains("labels.toml: label[1].until"), "{e}");
        std::fs::write(
            &path,
            "[[label]]\nstream = \"pumps\"\nverdict = \"maybe\"\n",
        )
        .unwrap();
        let e = read_labels_file(&path).unwrap_err().to_string();
        assert!(e.contains("labels.toml") && e.contains("verdict"), "{e}");
        let mut kind = good;
        kind.kind = "loud".into();
        assert_eq!(kind.span().unwrap_err().0, "kind");
    }

    #[test]
    fn the_score_counts_alarms_raised_inside_each_verdicts_span() {
        let labels = [
            label(
                "p1",
                "2026-12-05T08:00:00Z",
                Some("2026-12-05T08:10:00Z"),
                Verdict::Confirmed,
                "2026-12-05T09:00:00Z",
            ),
            label(
                "p2",
                "2026-12-05T08:00:00Z",
                Some("2026-12-05T08:10:00Z"),
                Verdict::False,
                "2026-12-05T09:00:00Z",
            ),
            label(
                "p3",
                "2026-12-04T08:00:00Z",
                Some("2026-12-04T08:10:00Z"),
                Verdict::False,
                "2026-12-05T09:00:00Z",
            ),
        ];
        let v = Verdicts::for_stream(&labels, "pumps");
        let raised: HashMap<String, Vec<i64>> = [
            ("p1".to_string(), vec![t("2026-12-05T08:05:00Z")]),
            ("p2".to_string(), vec![t("2026-12-05T08:11:00Z")]),
            ("p3".to_string(), vec![t("2026-12-04T08:00:00Z")]),
        ]
        .into();
        let s = LabelScore::of(&v, &raised, t("2026-12-05T00:00:00Z"));
        assert_eq!(
            s,
            LabelScore {
                confirmed: 1,
                confirmed_alarmed: 1,
                false_alarms: 1,
                false_alarmed: 0,
            },
            "p3's label lies before the stretch; p2's alarm came after its span"
        );
    }

    #[test]
    fn the_source_hands_out_each_label_once_and_whatever_an_edit_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels.toml");
        let mut src = LabelSource::new(path.to_str().unwrap()).expect("a file");
        assert!(src.poll().is_empty());
        let l = label(
            "p1",
            "2026-12-05T08:00:00Z",
            None,
            Verdict::False,
            "2026-12-05T09:00:00Z",
        );
        let mut again = l.clone();
        again.verdict = Verdict::Confirmed;
        append_label(&path, &l).expect("append");
        append_label(&path, &again).expect("append");
        src.file = crate::watched::WatchedFile::new(&path);
        assert_eq!(src.poll().len(), 2);
        let mut third = l.clone();
        third.device = "p3".into();
        append_label(&path, &third).expect("append");
        src.file = crate::watched::WatchedFile::new(&path);
        assert_eq!(src.poll(), vec![third.clone()], "only the new one");
        // Edited by hand: an entry removed, one changed, one added at once.
        let mut changed = third.clone();
        changed.note = "mended".into();
        let mut fourth = l.clone();
        fourth.device = "p4".into();
        std::fs::write(&path, "").unwrap();
        for x in [&l, &changed, &fourth] {
            append_label(&path, x).expect("append");
        }
        src.file = crate::watched::WatchedFile::new(&path);
        assert_eq!(
            src.poll(),
            vec![changed, fourth],
            "what was not handed out as it is"
        );
    }
}
