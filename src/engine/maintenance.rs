//! Maintenance windows: stretches of event time during which a stream's devices (or some of
//! them) are worked on. Readings in a window are stepped and written as always, but raise no
//! alarm of any kind, teach no baseline (a device opened up for repair is not its normal), and
//! their `anomaly` points carry `maintenance=true`; an alarm already raised is held as it was.
//!
//! Windows come from the configuration (`[[maintenance]]`) and from an optional file of the
//! same entries (`anomaly.maintenance_file`), which `serve` reads again whenever it changes.
//! They are judged by reading time, so a replay with the same windows writes the same points.

pub use crate::config::MaintenanceWindow;
use std::collections::HashMap;

/// The windows of one stream, ready for lookups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Maintenance {
    /// Windows of every device: `[from, until)` in ns.
    all: Vec<(i64, i64)>,
    /// Windows of named devices.
    devices: HashMap<String, Vec<(i64, i64)>>,
}

impl Maintenance {
    /// The windows of `windows` that apply to `stream` (windows that do not parse are left
    /// out; configuration and file loading report them).
    pub fn for_stream(windows: &[MaintenanceWindow], stream: &str) -> Self {
        let mut m = Self::default();
        for w in windows {
            if w.stream.as_deref().is_some_and(|s| s != stream) {
                continue;
            }
            let Ok(s) = w.span() else { continue };
            if w.devices.is_empty() {
                m.all.push(s);
            } else {
                for d in &w.devices {
                    m.devices.entry(d.clone()).or_default().push(s);
                }
            }
        }
        m
    }

    /// Whether there are no windows.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.devices.is_empty()
    }

    /// Whether `device`'s reading at `ts` lies in a window.
    pub fn covers(&self, device: &str, ts: i64) -> bool {
        let inside = |w: &[(i64, i64)]| w.iter().any(|&(a, b)| ts >= a && ts < b);
        inside(&self.all) || self.devices.get(device).is_some_and(|w| inside(w))
    }
}

/// The windows of every stream from the config and the maintenance file, read again when
/// the file changes (`serve`).
#[derive(Debug)]
pub struct WindowSource {
    config: Vec<MaintenanceWindow>,
    file: Option<crate::watched::WatchedFile>,
    streams: Vec<String>,
}

impl WindowSource {
    /// For the config's streams and windows, and its `anomaly.maintenance_file`.
    pub fn new(cfg: &crate::config::Config) -> Self {
        let file = &cfg.anomaly.maintenance_file;
        Self {
            config: cfg.maintenance.clone(),
            file: (!file.is_empty()).then(|| crate::watched::WatchedFile::new(file)),
            streams: cfg.streams.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// The windows of stream `name`, config and file, as they are now (`replay`).
    pub fn now(
        cfg: &crate::config::Config,
        name: &str,
    ) -> Result<Maintenance, crate::config::MaintenanceFileError> {
        let mut windows = cfg.maintenance.clone();
        if !cfg.anomaly.maintenance_file.is_empty() {
            windows.extend(crate::config::read_maintenance_file(std::path::Path::new(
                &cfg.anomaly.maintenance_file,
            ))?);
        }
        Ok(Maintenance::for_stream(&windows, name))
    }

    /// Each stream's windows when the file changed since the last call (or on the first
    /// call), at most once a second. A file that cannot be read or parsed is logged and the
    /// windows in use are kept.
    pub fn poll(&mut self) -> Option<Vec<std::sync::Arc<Maintenance>>> {
        let path = self.file.as_mut()?.changed()?;
        let mut windows = self.config.clone();
        match crate::config::read_maintenance_file(path) {
            Ok(ws) => {
                tracing::info!(file = %path.display(), windows = ws.len(), "maintenance windows read");
                windows.extend(ws);
            }
            Err(e) => {
                tracing::error!(error = %e, "maintenance file not used; the windows in use are kept");
                return None;
            }
        }
        Some(
            self.streams
                .iter()
                .map(|s| std::sync::Arc::new(Maintenance::for_stream(&windows, s)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(
        stream: Option<&str>,
        devices: &[&str],
        from: &str,
        until: &str,
    ) -> MaintenanceWindow {
        MaintenanceWindow {
            stream: stream.map(String::from),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            until: until.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn windows_cover_their_devices_and_stream_from_start_to_before_the_end() {
        let ws = [
            window(
                Some("pumps"),
                &["p1"],
                "2026-12-05T08:00:00Z",
                "2026-12-05T09:00:00Z",
            ),
            window(None, &[], "2026-12-06T00:00:00Z", "2026-12-06T01:00:00Z"),
            window(
                Some("fans"),
                &[],
                "2026-12-05T00:00:00Z",
                "2026-12-07T00:00:00Z",
            ),
        ];
        let m = Maintenance::for_stream(&ws, "pumps");
        let t = |s: &str| crate::time::parse_ts_text(s).expect("time");
        assert!(m.covers("p1", t("2026-12-05T08:00:00Z")));
        assert!(
            !m.covers("p1", t("2026-12-05T09:00:00Z")),
            "the end is not in it"
        );
        assert!(!m.covers("p2", t("2026-12-05T08:30:00Z")), "another device");
        assert!(
            m.covers("p2", t("2026-12-06T00:30:00Z")),
            "a window of every device"
        );
        assert!(
            !m.covers("p2", t("2026-12-05T12:00:00Z")),
            "another stream's window"
        );
        assert!(Maintenance::for_stream(&[], "pumps").is_empty());
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use crate::decode::Reading;
    use crate::engine::detect::Edge;
    use crate::engine::testing::{settings, small_model};
    use crate::engine::{BatchOutput, Engine, Outcome};
    use std::sync::Arc;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_795_000_000 * S;

    fn engine(windows: &[MaintenanceWindow]) -> Engine {
        let m = small_model(8, 2);
        let mut s = settings();
        s.warmup = 5;
        s.detect.learning = 30;
        s.detect.min_duration = 2;
        s.detect.silent_factor = 0.0;
        s.maintenance = Arc::new(Maintenance::for_stream(windows, "pumps"));
        Engine::new(Arc::new(m), s).expect("engine")
    }

    /// Raised edges and maintenance flags of device `a`: normal for 100 readings, then 5
    /// units higher for good.
    fn run(e: &mut Engine) -> (Vec<usize>, Vec<bool>) {
        let mut out = BatchOutput::default();
        let (mut raised, mut flags) = (Vec::new(), Vec::new());
        for i in 0..160i64 {
            let level = if i >= 100 { 5.0 } else { 0.0 };
            let r = Reading {
                device: "a".into(),
                ts: T0 + i * S,
                values: vec![(i as f32 * 0.2).sin() + level, (i as f32 * 0.1).cos()],
            };
            e.process(&[r], &mut out).expect("step");
            let Outcome::Scored(s) = out.outcomes[0] else {
                panic!("{:?}", out.outcomes[0]);
            };
            if matches!(s.edge, Edge::Raised { .. }) {
                raised.push(i as usize);
            }
            flags.push(s.maintenance);
        }
        (raised, flags)
    }

    #[test]
    fn a_window_holds_alarms_back_and_its_readings_teach_no_baseline() {
        let (raised, flags) = run(&mut engine(&[]));
        assert!(
            raised.first().is_some_and(|&i| (100..105).contains(&i)),
            "{raised:?}"
        );
        assert!(flags.iter().all(|f| !f));
        // Readings 100..130 in a window of device `a`.
        let window = MaintenanceWindow {
            stream: None,
            devices: vec!["a".into()],
            from: crate::time::format_ts(T0 + 100 * S),
            until: crate::time::format_ts(T0 + 130 * S),
            reason: "valve replaced".into(),
        };
        let (raised, flags) = run(&mut engine(&[window]));
        assert_eq!(
            flags
                .iter()
                .enumerate()
                .filter(|(_, f)| **f)
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            (100..130).collect::<Vec<_>>()
        );
        // Nothing raised inside; the new level was not learnt there, so it alarms after.
        assert!(
            raised.first().is_some_and(|&i| (130..135).contains(&i)),
            "{raised:?}"
        );
    }
}
