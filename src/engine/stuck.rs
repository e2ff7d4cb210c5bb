//! Stuck sensors: a feature whose reading stays exactly the same for longer than it ever did
//! in normal operation raises an alarm of its own kind (`anomaly_event,kind=stuck`).
//!
//! A frozen transmitter, a cut wire read as the last value or a PLC holding its last scan
//! repeats one value; the forecaster and the deviation from normal often find nothing wrong
//! with it, because the value itself is plausible. What is not plausible is its flatness: on
//! the training history [`longest_flat`] measures, per feature, the longest time any device
//! held one value (a quantised sensor holds values for a while; a setpoint holds for ever),
//! and a feature is stuck once it has been flat for `stuck_factor` times that and for at
//! least `stuck_min_readings` of the device's readings. A feature flat throughout training is
//! never called stuck. Without measured flat spans (models trained before them, or too
//! little history) the check is off.
//!
//! The alarm is raised at the reading where the first feature crosses its limit, starts at the
//! first reading of that feature's flat run, and clears at the first reading where no feature
//! is stuck any more (ending at the last stuck one). It depends on the device's own readings
//! only, so batching, restarts and replay give the same events.

use super::detect::Edge;
use crate::decode::Reading;

/// Per-device stuck-alarm state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StuckState {
    /// An alarm is raised.
    pub active: bool,
    /// Start of the alarm: the first reading of the flat run that raised it.
    pub start: i64,
    /// Time of the last reading at which a feature was stuck.
    pub last_stuck: i64,
    /// The features stuck at some reading of the alarm (bit `f` for feature `f < 64`).
    pub features: u64,
}

/// Folds reading `x` at `ts` into a device's flat runs: `last[f]` is the feature's last value
/// (NaN before the first reading) and `since[f]` when it took that value.
pub fn observe(last: &mut [f32], since: &mut [i64], x: &[f32], ts: i64) {
    for ((l, s), &v) in last.iter_mut().zip(since.iter_mut()).zip(x) {
        if v.to_bits() != l.to_bits() {
            *l = v;
            *s = ts;
        }
    }
}

/// When a feature counts as stuck.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StuckPolicy {
    /// Per feature: how long (ns) it must be flat; `i64::MAX`: never. Empty: the check is off.
    pub limits: Vec<i64>,
    /// Readings a feature must also have been flat for (at the device's current interval).
    pub min_readings: u32,
}

impl StuckPolicy {
    /// From the longest flat spans measured in training (`None`: off), the factor on them
    /// (0: off) and the minimum in readings.
    pub fn new(longest_flat_ns: Option<&[i64]>, factor: f64, min_readings: u32) -> Self {
        let limits = match longest_flat_ns {
            Some(spans) if factor > 0.0 && !spans.is_empty() => spans
                .iter()
                .map(|&s| {
                    let l = (s.max(0) as f64 * factor).ceil();
                    if l >= i64::MAX as f64 {
                        i64::MAX
                    } else {
                        l as i64
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            limits,
            min_readings,
        }
    }

    /// Whether the check runs.
    pub fn enabled(&self) -> bool {
        !self.limits.is_empty()
    }

    /// The features stuck at `ts` (bit mask), given when each took its value and the device's
    /// interval `step_ns`, with the start of the earliest run among them.
    pub fn stuck(&self, since: &[i64], ts: i64, step_ns: i64) -> (u64, i64) {
        let floor = (self.min_readings.saturating_sub(1) as i64).saturating_mul(step_ns.max(1));
        let (mut mask, mut start) = (0u64, i64::MAX);
        for (f, (&limit, &s)) in self.limits.iter().zip(since).enumerate() {
            if limit == i64::MAX {
                continue;
            }
            let flat = ts.saturating_sub(s);
            if flat > limit && flat >= floor {
                mask |= 1u64 << f.min(63);
                start = start.min(s);
            }
        }
        (mask, start)
    }

    /// Folds in one reading: `since` after [`observe`]. Returns what the alarm did.
    pub fn step(&self, s: &mut StuckState, since: &[i64], ts: i64, step_ns: i64) -> Edge {
        if !self.enabled() {
            return Edge::None;
        }
        let (mask, start) = self.stuck(since, ts, step_ns);
        if mask != 0 {
            s.last_stuck = ts;
            if !s.active {
                *s = StuckState {
                    active: true,
                    start,
                    last_stuck: ts,
                    features: mask,
                };
                return Edge::Raised { start };
            }
            s.features |= mask;
            return Edge::None;
        }
        if s.active {
            // The features stay set for the clearing reading's explanation.
            s.active = false;
            return Edge::Cleared {
                start: s.start,
                end: s.last_stuck,
            };
        }
        s.features = 0;
        Edge::None
    }
}

/// Per feature, the longest time (ns) any device's reading held one value in `devices` (each
/// in time order): what flat looks like in normal operation.
pub fn longest_flat(devices: &[&[&Reading]], features: usize) -> Vec<i64> {
    let mut longest = vec![0i64; features];
    for d in devices {
        let mut last = vec![f32::NAN; features];
        let mut since = vec![0i64; features];
        for r in d.iter() {
            observe(&mut last, &mut since, &r.values, r.ts);
            for f in 0..features {
                longest[f] = longest[f].max(r.ts.saturating_sub(since[f]));
            }
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn reading(ts: i64, values: &[f32]) -> Reading {
        Reading {
            device: "d".into(),
            ts,
            values: values.to_vec(),
        }
    }

    #[test]
    fn the_longest_flat_span_is_measured_per_feature() {
        // Feature 0 holds 1.0 for 3 readings (2 s), feature 1 changes every reading.
        let rs: Vec<Reading> = [(0, 1.0, 0.0), (1, 1.0, 1.0), (2, 1.0, 2.0), (3, 2.0, 3.0)]
            .iter()
            .map(|&(t, a, b)| reading(t * S, &[a, b]))
            .collect();
        let refs: Vec<&Reading> = rs.iter().collect();
        assert_eq!(longest_flat(&[&refs], 2), vec![2 * S, 0]);
    }

    #[test]
    fn a_feature_flat_beyond_its_limit_raises_from_the_start_of_its_run_and_clears_when_it_moves() {
        // Limits: feature 0 flat for more than 2 × 3 s; feature 1 never (flat in training).
        let p = StuckPolicy {
            limits: vec![6 * S, i64::MAX],
            min_readings: 3,
        };
        let (mut last, mut since) = (vec![f32::NAN; 2], vec![0i64; 2]);
        let mut st = StuckState::default();
        let mut edges = Vec::new();
        let values = [5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.5, 4.6];
        for (t, v) in values.iter().enumerate() {
            let ts = t as i64 * S;
            observe(&mut last, &mut since, &[*v, 1.0], ts);
            edges.push(p.step(&mut st, &since, ts, S));
        }
        // Flat from t = 1; 7 s flat (> 6 s) at t = 8; moves at t = 9.
        let want: Vec<Edge> = (0..values.len())
            .map(|t| match t {
                8 => Edge::Raised { start: S },
                9 => Edge::Cleared {
                    start: S,
                    end: 8 * S,
                },
                _ => Edge::None,
            })
            .collect();
        assert_eq!(edges, want);
        assert!(!st.active);
    }

    #[test]
    fn the_minimum_in_readings_holds_where_the_measured_span_is_short() {
        // Never flat in training (limit 0): still needs 10 readings at the device's interval.
        let p = StuckPolicy::new(Some(&[0]), 3.0, 10);
        assert_eq!(p.stuck(&[0], 8 * S, S).0, 0);
        assert_eq!(p.stuck(&[0], 9 * S, S), (1, 0));
        // Off without measured spans or with factor 0.
        assert!(!StuckPolicy::new(None, 3.0, 10).enabled());
        assert!(!StuckPolicy::new(Some(&[S]), 0.0, 10).enabled());
    }
}

#[cfg(test)]
mod engine_tests {
    use crate::decode::Reading;
    use crate::engine::detect::Edge;
    use crate::engine::snapshot::{ShardRecords, StateLayout};
    use crate::engine::testing::{settings, small_model};
    use crate::engine::{BatchOutput, Engine, Outcome};
    use std::sync::Arc;

    const S: i64 = 1_000_000_000;
    const FLAT: std::ops::Range<usize> = 10..25;

    fn engine() -> Engine {
        let mut m = small_model(8, 3);
        m.longest_flat_ns = Some(vec![0; 3]);
        let mut s = settings();
        s.detect.stuck_min_readings = 5;
        Engine::new(Arc::new(m), s).expect("engine")
    }

    /// Device `a`, one reading a second; feature 1 holds one value over [`FLAT`].
    fn readings() -> Vec<Reading> {
        (0..40)
            .map(|i| Reading {
                device: "a".into(),
                ts: 1_000 * S + i as i64 * S,
                values: vec![
                    (i as f32 * 0.3).sin(),
                    if FLAT.contains(&i) {
                        0.5
                    } else {
                        (i as f32 * 0.7).cos()
                    },
                    i as f32 * 0.01,
                ],
            })
            .collect()
    }

    /// Stuck edges of each reading, stepped one at a time from `from`.
    fn edges(e: &mut Engine, rs: &[Reading]) -> Vec<(Edge, u64)> {
        let mut out = BatchOutput::default();
        rs.iter()
            .map(|r| {
                e.process(std::slice::from_ref(r), &mut out).expect("step");
                match out.outcomes[0] {
                    Outcome::Scored(s) => (s.stuck_edge, s.stuck_features),
                    o => panic!("{o:?}"),
                }
            })
            .collect()
    }

    fn expected(rs: &[Reading]) -> Vec<(Edge, u64)> {
        // 5 readings flat (4 s) at reading 14; moved at reading 25.
        (0..rs.len())
            .map(|i| match i {
                14 => (Edge::Raised { start: rs[10].ts }, 0b10),
                25 => (
                    Edge::Cleared {
                        start: rs[10].ts,
                        end: rs[24].ts,
                    },
                    0b10,
                ),
                _ if (15..25).contains(&i) => (Edge::None, 0b10),
                _ => (Edge::None, 0),
            })
            .collect()
    }

    #[test]
    fn the_engine_raises_and_clears_a_stuck_sensor_alarm_across_a_checkpoint() {
        let rs = readings();
        assert_eq!(edges(&mut engine(), &rs), expected(&rs));
        // Checkpointed in the middle of the alarm and restored into a new engine: the same.
        let mut first = engine();
        let mut got = edges(&mut first, &rs[..18]);
        let snap = first.snapshot(|_| true);
        let mut second = engine();
        second
            .restore(0, second.state_layout(), &snap[0].1)
            .expect("restore");
        // The restored alarm is active though this engine raised none (the gauge counts it).
        assert_eq!(second.counters().stuck_raised, 0);
        assert_eq!(second.active_alarms(|_| true).stuck, 1);
        assert_eq!(second.active_alarms(|d| d != "a").stuck, 0);
        got.extend(edges(&mut second, &rs[18..]));
        assert_eq!(got, expected(&rs));
        assert_eq!(second.active_alarms(|_| true).stuck, 0, "cleared");
    }

    #[test]
    fn records_written_before_the_watch_state_existed_are_restored_without_it() {
        let rs = readings();
        let mut first = engine();
        edges(&mut first, &rs[..18]);
        let snap = first.snapshot(|_| true);
        let layout = first.state_layout();
        let old = StateLayout {
            watch: false,
            ..layout
        };
        // The same record without the flat-run block (it sits before last_ts, count, seen).
        let rec = &snap[0].1.bytes;
        let block = layout.fixed_bytes() - old.fixed_bytes();
        let tail = rec.len() - 16;
        let mut bytes = rec[..tail - block].to_vec();
        bytes.extend_from_slice(&rec[tail..]);
        assert_eq!(layout.of_record(&bytes), old);
        assert_eq!(layout.of_record(rec), layout);
        let mut second = engine();
        let restored = second
            .restore(0, old, &ShardRecords::one(&bytes))
            .expect("an older record is restored");
        assert_eq!(restored, 1);
        assert_eq!(
            second.steps("a"),
            first.steps("a"),
            "its LSTM state came back"
        );
        // No flat run is known yet: it counts again from the first reading after the restore.
        let got = edges(&mut second, &rs[18..]);
        assert_eq!(got[4].0, Edge::Raised { start: rs[18].ts });
    }
}
