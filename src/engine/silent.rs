//! Silent devices: a device that stops reporting while the devices beside it go on raises an
//! alarm of its own kind (`anomaly_event,kind=silent`).
//!
//! Silence is judged in event time, per shard (Kafka partition): a shard's clock is the latest
//! reading time it has delivered, and a device is silent once that clock is more than
//! `silent_factor` times the device's usual interval past its last reading. Judging by the
//! wall clock instead would call every device silent during a backlog or a broker outage, and
//! would make the events depend on when the service happened to run; judged this way they
//! depend only on the order of each partition's readings, which Kafka keeps, so restarts and
//! rebalances write the same events. (A partition that falls silent as a whole raises nothing:
//! its clock stops with it; `sensorcast_consumer_lag` and the end-to-end latency show that.)
//! `replay`, which has no partitions, judges the whole input as one.
//!
//! The alarm starts at the device's last reading and clears at its next one (ending there);
//! both edges are written as the same `anomaly_event` point, like every alarm. Each shard keeps
//! a min-heap of deadlines with at most one entry per device, so a reading costs O(log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::detect::Edge;

/// A silent-device alarm edge, written with the points of the batch reading it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentEvent {
    /// Index, in the batch, of the reading that raised or cleared it (a reading of another
    /// device of the same shard when raised, the device's own when cleared).
    pub reading: usize,
    /// The silent device.
    pub device: String,
    /// Raised (start: its last reading) or cleared (end: the reading it came back with).
    pub edge: Edge,
}

/// Per-device silence state (in the device record).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SilentState {
    /// An alarm is raised.
    pub active: bool,
    /// ... but not written: the device was in a maintenance window when it fell silent.
    pub suppressed: bool,
    /// Exponential average of the device's interval (ns; 0 until it has one).
    pub interval: f32,
}

/// Weight of a new interval in its average.
const INTERVAL_WEIGHT: f32 = 0.1;

impl SilentState {
    /// Folds in the interval `step_ns` to the device's previous reading.
    pub fn observe(&mut self, step_ns: i64) {
        let step = step_ns as f32;
        self.interval = if self.interval > 0.0 {
            self.interval + INTERVAL_WEIGHT * (step - self.interval)
        } else {
            step
        };
    }
}

/// The time after which a device last heard at `last_ts` is silent: `factor` times its
/// usual interval (`default_interval_ns` before its own is known).
fn deadline(factor: f64, default_interval_ns: i64, last_ts: i64, state: &SilentState) -> i64 {
    let interval = if state.interval > 0.0 {
        state.interval as f64
    } else {
        default_interval_ns as f64
    };
    last_ts.saturating_add((factor * interval).min(i64::MAX as f64 / 2.0) as i64)
}

/// The shards' clocks and deadlines.
#[derive(Debug, Default)]
pub struct Watch {
    /// Times the usual interval a device may stay silent (0: off).
    factor: f64,
    /// Interval assumed for a device before its own is known.
    default_interval_ns: i64,
    shards: HashMap<u32, Shard, foldhash::fast::RandomState>,
    /// Per slot: whether the device has an entry in its shard's heap.
    queued: Vec<bool>,
    /// Devices found in another shard's heap by [`Watch::advance`], queued there afterwards.
    moved: Vec<(u32, Reverse<(i64, u32)>)>,
}

#[derive(Debug)]
struct Shard {
    /// Latest reading time the shard delivered.
    clock: i64,
    /// (deadline, slot), earliest first; an entry may be out of date (re-checked when popped).
    heap: BinaryHeap<Reverse<(i64, u32)>>,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            clock: i64::MIN,
            heap: BinaryHeap::new(),
        }
    }
}

impl Watch {
    /// Off when `factor` is 0.
    pub fn new(factor: f64, default_interval_ns: i64) -> Self {
        Self {
            factor,
            default_interval_ns,
            ..Self::default()
        }
    }

    /// Whether silence is judged.
    pub fn enabled(&self) -> bool {
        self.factor > 0.0
    }

    /// The time after which a device last heard at `last_ts` is silent.
    pub fn deadline(&self, last_ts: i64, state: &SilentState) -> i64 {
        deadline(self.factor, self.default_interval_ns, last_ts, state)
    }

    /// Makes sure the device in `slot` (of `shard`, last heard at `last_ts`) has a deadline.
    pub fn track(&mut self, slot: usize, shard: u32, last_ts: i64, state: &SilentState) {
        if !self.enabled() {
            return;
        }
        if self.queued.len() <= slot {
            self.queued.resize(slot + 1, false);
        }
        if !self.queued[slot] && !state.active {
            let d = self.deadline(last_ts, state);
            self.shards
                .entry(shard)
                .or_default()
                .heap
                .push(Reverse((d, slot as u32)));
            self.queued[slot] = true;
        }
    }

    /// Moves `shard`'s clock to `ts` (if later) and returns the slots that fell silent, with
    /// the device tables' current view (`last_ts`, `shards`, `states`; the states of those
    /// returned are set active).
    pub fn advance(
        &mut self,
        shard: u32,
        ts: i64,
        last_ts: &[i64],
        shards: &[u32],
        states: &mut [SilentState],
        silent: &mut Vec<usize>,
    ) {
        if !self.enabled() {
            return;
        }
        let Watch {
            factor,
            default_interval_ns,
            shards: heaps,
            queued,
            moved,
        } = self;
        // The shard looked up once (a call per reading).
        let s = heaps.entry(shard).or_default();
        s.clock = s.clock.max(ts);
        let clock = s.clock;
        while let Some(&Reverse((d, slot))) = s.heap.peek() {
            if d >= clock {
                break;
            }
            s.heap.pop();
            let slot = slot as usize;
            if states[slot].active {
                // Already silent (an entry left over from a restore).
                continue;
            }
            let current = deadline(*factor, *default_interval_ns, last_ts[slot], &states[slot]);
            let entry = Reverse((current, slot as u32));
            if shards[slot] != shard {
                // The device moved to another shard: judged by that one's clock (queued
                // there below; this loop reads this shard's heap only).
                moved.push((shards[slot], entry));
            } else if current < clock {
                queued[slot] = false;
                states[slot].active = true;
                silent.push(slot);
            } else {
                s.heap.push(entry);
            }
        }
        for (other, entry) in moved.drain(..) {
            heaps.entry(other).or_default().heap.push(entry);
        }
    }

    /// Forgets every deadline and queues the devices again (after the slots were renumbered
    /// or restored); each shard's clock is kept, and moved to its devices' latest reading.
    pub fn rebuild(&mut self, last_ts: &[i64], shards: &[u32], states: &[SilentState]) {
        if !self.enabled() {
            return;
        }
        for s in self.shards.values_mut() {
            s.heap.clear();
        }
        self.queued.clear();
        self.queued.resize(last_ts.len(), false);
        for slot in 0..last_ts.len() {
            if last_ts[slot] == i64::MIN {
                continue;
            }
            let s = self.shards.entry(shards[slot]).or_default();
            s.clock = s.clock.max(last_ts[slot]);
            self.track(slot, shards[slot], last_ts[slot], &states[slot]);
        }
    }

    /// A device restored into `slot` of `shard`: the shard's clock is at least its last
    /// reading (what the shard had delivered before the checkpoint), and it gets a deadline.
    pub fn restored(&mut self, slot: usize, shard: u32, last_ts: i64, state: &SilentState) {
        if !self.enabled() {
            return;
        }
        let s = self.shards.entry(shard).or_default();
        s.clock = s.clock.max(last_ts);
        if self.queued.len() <= slot {
            self.queued.resize(slot + 1, false);
        }
        // A slot reused for another device may hold a stale entry: re-checked when popped.
        self.queued[slot] = false;
        self.track(slot, shard, last_ts, state);
    }

    /// Heap bytes held (the deadline heaps and the queued flags).
    pub fn heap_bytes(&self) -> usize {
        self.queued.capacity()
            + self
                .shards
                .values()
                .map(|s| s.heap.capacity() * size_of::<Reverse<(i64, u32)>>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn a_device_is_silent_once_its_shard_moved_on_by_the_factor_times_its_interval() {
        let mut w = Watch::new(3.0, S);
        let mut last = vec![10 * S, 10 * S];
        let shards = vec![0, 0];
        let mut states = vec![SilentState::default(); 2];
        for slot in 0..2 {
            states[slot].observe(S);
            w.track(slot, 0, last[slot], &states[slot]);
        }
        let mut silent = Vec::new();
        // Device 1 goes on reporting; device 0 does not.
        for t in 11..=14 {
            last[1] = t * S;
            w.track(1, 0, last[1], &states[1]);
            w.advance(0, t * S, &last, &shards, &mut states, &mut silent);
            let want: &[usize] = if t >= 14 { &[0] } else { &[] };
            assert_eq!(silent, want, "at {t} s");
        }
        assert!(states[0].active && !states[1].active);
        // Raised once only.
        last[1] = 20 * S;
        w.advance(0, 20 * S, &last, &shards, &mut states, &mut silent);
        assert_eq!(silent, [0]);
    }

    #[test]
    fn another_shard_clock_does_not_make_a_device_silent() {
        let mut w = Watch::new(3.0, S);
        let (last, shards) = (vec![10 * S], vec![0]);
        let mut states = vec![SilentState::default()];
        w.track(0, 0, last[0], &states[0]);
        let mut silent = Vec::new();
        w.advance(1, 100 * S, &last, &shards, &mut states, &mut silent);
        assert!(silent.is_empty());
        w.advance(0, 14 * S, &last, &shards, &mut states, &mut silent);
        assert_eq!(silent, [0]);
    }

    #[test]
    fn a_device_that_moved_to_another_shard_is_judged_by_that_shards_clock() {
        let mut w = Watch::new(3.0, S);
        let last = vec![10 * S, 10 * S];
        // Both were queued in shard 0; device 0 has since moved to shard 1.
        let mut shards = vec![0, 0];
        let mut states = vec![SilentState::default(); 2];
        for slot in 0..2 {
            states[slot].observe(S);
            w.track(slot, 0, last[slot], &states[slot]);
        }
        shards[0] = 1;
        let mut silent = Vec::new();
        // Shard 0's clock passes both deadlines: only device 1, still its own, falls silent.
        w.advance(0, 20 * S, &last, &shards, &mut states, &mut silent);
        assert_eq!(silent, [1]);
        assert!(!states[0].active);
        // Shard 1's clock is behind the deadline, then passes it.
        silent.clear();
        w.advance(1, 12 * S, &last, &shards, &mut states, &mut silent);
        assert!(silent.is_empty());
        w.advance(1, 14 * S, &last, &shards, &mut states, &mut silent);
        assert_eq!(silent, [0]);
    }

    #[test]
    fn the_interval_is_the_devices_own_once_known() {
        let mut s = SilentState::default();
        s.observe(60 * S);
        let w = Watch::new(10.0, S);
        // (The average is an f32 of nanoseconds: exact to a few parts in 10⁸.)
        assert!((w.deadline(0, &s) - 600 * S).abs() < S / 1000);
        assert_eq!(w.deadline(0, &SilentState::default()), 10 * S);
        assert!(!Watch::new(0.0, S).enabled());
    }
}

#[cfg(test)]
mod engine_tests {
    use super::SilentEvent;
    use crate::decode::Reading;
    use crate::engine::detect::Edge;
    use crate::engine::testing::{settings, small_model};
    use crate::engine::{BatchOutput, Engine};
    use std::sync::Arc;

    const S: i64 = 1_000_000_000;

    fn engine() -> Engine {
        let m = small_model(8, 2);
        let mut s = settings();
        s.detect.silent_factor = 5.0;
        s.default_interval_ns = S;
        Engine::new(Arc::new(m), s).expect("engine")
    }

    /// Devices `a` and `b` on shard 0, `c` on shard 1, one reading a second; `b` says nothing
    /// from 10 s to 29 s; `c` runs a minute ahead of the others.
    fn readings() -> Vec<(Reading, u32)> {
        let mut v = Vec::new();
        for t in 0..40i64 {
            for (d, shard, skew) in [("a", 0, 0), ("b", 0, 0), ("c", 1, 60)] {
                if d == "b" && (10..30).contains(&t) {
                    continue;
                }
                v.push((
                    Reading {
                        device: d.into(),
                        ts: (1_000 + t + skew) * S,
                        values: vec![(t as f32).sin(), 1.0],
                    },
                    shard,
                ));
            }
        }
        v
    }

    /// Every silent event, with its reading's position in the whole input.
    fn run(e: &mut Engine, rs: &[(Reading, u32)], batch: usize) -> Vec<SilentEvent> {
        let mut out = BatchOutput::default();
        let mut events = Vec::new();
        for (k, chunk) in rs.chunks(batch).enumerate() {
            let (readings, shards): (Vec<Reading>, Vec<u32>) = chunk.iter().cloned().unzip();
            e.process_sharded(&readings, &shards, &mut out)
                .expect("step");
            events.extend(out.silent.iter().map(|ev| SilentEvent {
                reading: k * batch + ev.reading,
                ..ev.clone()
            }));
        }
        events
    }

    #[test]
    fn a_device_silent_while_its_partition_goes_on_raises_once_and_clears_when_it_returns() {
        let rs = readings();
        let events = run(&mut engine(), &rs, 1);
        let at = |i: usize| rs[i].0.ts;
        assert_eq!(events.len(), 2, "{events:?}");
        // Raised by a's reading at 1015 s (b last heard at 1009 s, 5 × 1 s before 1014 s).
        let raised = &events[0];
        assert_eq!(raised.device, "b");
        assert_eq!(raised.edge, Edge::Raised { start: 1_009 * S });
        assert_eq!(rs[raised.reading].0.device, "a");
        assert_eq!(at(raised.reading), 1_015 * S);
        // Cleared by b's own reading at 1030 s.
        assert_eq!(
            events[1].edge,
            Edge::Cleared {
                start: 1_009 * S,
                end: 1_030 * S
            }
        );
        assert_eq!(rs[events[1].reading].0.device, "b");
        // Batching changes nothing.
        for batch in [2, 7, rs.len()] {
            assert_eq!(run(&mut engine(), &rs, batch), events, "batch {batch}");
        }
    }

    #[test]
    fn a_checkpoint_in_the_middle_of_a_silence_neither_repeats_nor_loses_it() {
        let rs = readings();
        let whole = run(&mut engine(), &rs, 1);
        // Checkpointed after b fell silent, restored into a new engine (as after a restart).
        let cut = whole[0].reading + 5;
        let mut first = engine();
        let mut got = run(&mut first, &rs[..cut], 1);
        let mut second = engine();
        for (shard, recs) in first.snapshot(|_| true) {
            second
                .restore(shard, second.state_layout(), &recs)
                .expect("restore");
        }
        got.extend(
            run(&mut second, &rs[cut..], 1)
                .into_iter()
                .map(|e| SilentEvent {
                    reading: e.reading + cut,
                    ..e
                }),
        );
        assert_eq!(got, whole);
    }
}

#[cfg(test)]
mod maintenance_tests {
    use crate::config::MaintenanceWindow;
    use crate::decode::Reading;
    use crate::engine::maintenance::Maintenance;
    use crate::engine::testing::{settings, small_model};
    use crate::engine::{BatchOutput, Engine};
    use std::sync::Arc;

    const S: i64 = 1_000_000_000;

    #[test]
    fn a_device_silent_inside_its_maintenance_window_raises_nothing() {
        let m = small_model(8, 2);
        let t0 = 1_795_000_000 * S;
        let mut s = settings();
        s.detect.silent_factor = 10.0;
        s.default_interval_ns = S;
        s.maintenance = Arc::new(Maintenance::for_stream(
            &[MaintenanceWindow {
                devices: vec!["b".into()],
                from: crate::time::format_ts(t0 + 15 * S),
                until: crate::time::format_ts(t0 + 45 * S),
                ..MaintenanceWindow::default()
            }],
            "pumps",
        ));
        let m = Arc::new(m);
        let mut out = BatchOutput::default();
        let mut batch = Vec::new();
        for i in 0..60i64 {
            for d in ["a", "b"] {
                if d == "b" && (20..40).contains(&i) {
                    continue;
                }
                let r = Reading {
                    device: d.into(),
                    ts: t0 + i * S,
                    values: vec![(i as f32).sin(), 1.0],
                };
                batch.push(r);
            }
        }
        // One reading at a time, and all at once (the device falls silent and returns within
        // one batch).
        for size in [1, batch.len()] {
            let mut e = Engine::new(Arc::clone(&m), s.clone()).expect("engine");
            let mut events = Vec::new();
            for chunk in batch.chunks(size) {
                e.process(chunk, &mut out).expect("step");
                events.extend(out.silent.clone());
            }
            assert!(events.is_empty(), "batch {size}: {events:?}");
            assert_eq!(e.counters().silent_raised, 0);
        }
    }
}
