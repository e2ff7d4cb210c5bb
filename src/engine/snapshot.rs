//! Device state out of and back into the engine: the bytes a checkpoint holds.
//!
//! Every device's memory — h and C per layer, the forecasts it will be judged against, its
//! calibration, score statistics, deviation baseline, drift, alarm state, last timestamp and
//! counters — is written bit for bit, so that an engine restored from a snapshot continues
//! exactly as the engine it came from would have (§3.3 rests on §3.6: same state, same
//! readings → same bits). The per-device target rate is not stored: it comes from the config.
//!
//! A record is `u16 id length, id bytes, fixed block`; the fixed block's size depends only on
//! the [`StateLayout`], which the checkpoint header carries and [`Engine::restore`] checks.

use super::detect::AlarmState;
use super::score::ScoreStats;
use super::silent::SilentState;
use super::stuck::StuckState;
use super::{Engine, Slots};

/// The shape of a device record: what a checkpoint must match to be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateLayout {
    /// Floats of h (and of C) per device: the sum of the layers' hidden widths.
    pub state_len: u32,
    /// Features.
    pub features: u32,
    /// Forecast steps.
    pub horizon: u32,
    /// Records carry the watch block: each feature's last value and since when the device has
    /// held it, the stuck-sensor alarm, and the silent-device alarm with the device's usual
    /// interval (absent in checkpoints written before them: such records are restored with
    /// none of it).
    #[serde(default)]
    pub watch: bool,
}

impl StateLayout {
    /// Bytes of a record's fixed block (everything but the id).
    pub fn fixed_bytes(&self) -> usize {
        let (s, f, h) = (
            self.state_len as usize,
            self.features as usize,
            self.horizon as usize,
        );
        // h, c | pred mean, sigma | far mean, sigma | calib, calib_far | dev (3F) | event_sum |
        // drift — all f32 — then score stats (3 × f64), the alarm state, the flat runs,
        // last_ts, count, seen.
        4 * (2 * s + 2 * f + 2 * f * h + 2 * f + 3 * f + f + f)
            + 24
            + ALARM_BYTES
            + self.flat_bytes()
            + 8
            + 4
            + 4
    }

    /// Bytes of the flat runs and the stuck-sensor alarm in a record.
    fn flat_bytes(&self) -> usize {
        if self.watch {
            (4 + 8) * self.features as usize + WATCH_BYTES
        } else {
            0
        }
    }

    /// The layout a record of `record.len()` bytes (id included) was written with: this one,
    /// or this one without flat runs (parked before they existed). Records of neither size
    /// are left to [`Engine::restore`] to refuse.
    pub fn of_record(self, record: &[u8]) -> Self {
        let old = Self {
            watch: false,
            ..self
        };
        let id = record
            .get(..2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        if self.watch && record.len() == 2 + id + old.fixed_bytes() {
            old
        } else {
            self
        }
    }
}

/// The stuck-sensor alarm, then the silent-device alarm and the device's usual interval.
const WATCH_BYTES: usize = 1 + 8 + 8 + 8 + 1 + 4;

const ALARM_BYTES: usize = 1 + 4 + 4 + 8 + 8 + 4 + 4 + 4;

/// Why records could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The checkpoint's layout is not the running model's.
    #[error("device records have layout {found:?}, the model needs {want:?}")]
    Layout {
        /// Found.
        found: StateLayout,
        /// Needed.
        want: StateLayout,
    },
    /// The records end in the middle of one.
    #[error("device record {index} is truncated")]
    Truncated {
        /// Record number.
        index: usize,
    },
    /// A device id that is not UTF-8.
    #[error("device record {index} has an id that is not UTF-8")]
    BadId {
        /// Record number.
        index: usize,
    },
    /// A record with a non-finite value (it would poison the device).
    #[error("device record {index} ({device:?}) holds a non-finite value")]
    NonFinite {
        /// Record number.
        index: usize,
        /// Device.
        device: String,
    },
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn f32s(&mut self, v: &[f32]) {
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn f64(&mut self, x: f64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn i64(&mut self, x: i64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn f32s(&mut self, out: &mut [f32]) {
        for x in out {
            *x = f32::from_le_bytes(self.take(4).try_into().unwrap_or_default());
        }
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().unwrap_or_default())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap_or_default())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take(8).try_into().unwrap_or_default())
    }
}

/// Device records of one shard.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShardRecords {
    /// Devices in `bytes`.
    pub devices: usize,
    /// The records, back to back.
    pub bytes: Vec<u8>,
}

impl ShardRecords {
    /// One device's record (as [`ShardRecords::iter`] yields it) on its own.
    pub fn one(record: &[u8]) -> Self {
        Self {
            devices: 1,
            bytes: record.to_vec(),
        }
    }

    /// Each record with its device id and last timestamp, for records of `layout` (stops at
    /// the first that does not fit; [`Engine::restore`] is what checks them).
    pub fn iter(&self, layout: StateLayout) -> impl Iterator<Item = (&str, i64, &[u8])> + '_ {
        let fixed = layout.fixed_bytes();
        let mut pos = 0;
        std::iter::from_fn(move || {
            let b = &self.bytes;
            let n = u16::from_le_bytes([*b.get(pos)?, *b.get(pos + 1)?]) as usize;
            let end = pos + 2 + n + fixed;
            let id = std::str::from_utf8(b.get(pos + 2..pos + 2 + n)?).ok()?;
            let rec = b.get(pos..end)?;
            // last_ts sits before the two u32 counters at the end of the fixed block.
            let ts = i64::from_le_bytes(rec[rec.len() - 16..rec.len() - 8].try_into().ok()?);
            pos = end;
            Some((id, ts, rec))
        })
    }
}

impl Engine {
    /// The record shape of this engine's model.
    pub fn state_layout(&self) -> StateLayout {
        StateLayout {
            state_len: self.state_len as u32,
            features: self.model.features.len() as u32,
            horizon: self.model.horizon as u32,
            watch: true,
        }
    }

    /// The shard (Kafka partition) each device was last seen in is recorded by
    /// [`Engine::process_sharded`]; this writes the records of every device whose shard
    /// `want` accepts, grouped by shard, sorted by shard.
    pub fn snapshot(&self, want: impl Fn(u32) -> bool) -> Vec<(u32, ShardRecords)> {
        self.snapshot_where(|shard, _| want(shard))
    }

    /// [`Engine::snapshot`] of the devices `want` accepts by `(shard, last timestamp)`.
    pub fn snapshot_where(&self, want: impl Fn(u32, i64) -> bool) -> Vec<(u32, ShardRecords)> {
        let mut by_shard: std::collections::BTreeMap<u32, ShardRecords> = Default::default();
        let fixed = self.state_layout().fixed_bytes();
        // In slot order, so that the same history gives the same bytes.
        let mut by_slot: Vec<&str> = vec![""; self.slots.last_ts.len()];
        for (id, &slot) in &self.ids {
            by_slot[slot as usize] = id;
        }
        // Sized first, so that no buffer grows (and copies) while it is filled.
        let mut sizes: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
        for (slot, id) in by_slot.iter().enumerate() {
            let shard = self.slots.shard[slot];
            if want(shard, self.slots.last_ts[slot]) {
                let e = sizes.entry(shard).or_default();
                e.0 += 1;
                e.1 += 2 + id.len() + fixed;
            }
        }
        for (shard, (devices, bytes)) in sizes {
            by_shard.insert(
                shard,
                ShardRecords {
                    devices,
                    bytes: Vec::with_capacity(bytes),
                },
            );
        }
        for (slot, id) in by_slot.into_iter().enumerate() {
            let shard = self.slots.shard[slot];
            if want(shard, self.slots.last_ts[slot])
                && let Some(rec) = by_shard.get_mut(&shard)
            {
                self.write_record(&mut rec.bytes, id, slot);
            }
        }
        by_shard.into_iter().collect()
    }

    fn write_record(&self, out: &mut Vec<u8>, id: &str, slot: usize) {
        let (s, f, hz) = (
            self.state_len,
            self.model.features.len(),
            self.model.horizon,
        );
        let sl = &self.slots;
        // Ids are at most 256 bytes (decode::MAX_DEVICE_ID_BYTES).
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        let mut w = Writer(out);
        w.f32s(&sl.h[slot * s..(slot + 1) * s]);
        w.f32s(&sl.c[slot * s..(slot + 1) * s]);
        w.f32s(&sl.pred_mean[slot * f..(slot + 1) * f]);
        w.f32s(&sl.pred_sigma[slot * f..(slot + 1) * f]);
        w.f32s(&sl.far_mean[slot * f * hz..(slot + 1) * f * hz]);
        w.f32s(&sl.far_sigma[slot * f * hz..(slot + 1) * f * hz]);
        w.f32s(&sl.calib[slot * f..(slot + 1) * f]);
        w.f32s(&sl.calib_far[slot * f..(slot + 1) * f]);
        w.f32s(&sl.dev[slot * 3 * f..(slot + 1) * 3 * f]);
        w.f32s(&sl.event_sum[slot * f..(slot + 1) * f]);
        w.f32s(&sl.drift[slot * f..(slot + 1) * f]);
        let st = sl.stats[slot];
        w.f64(st.short);
        w.f64(st.mean);
        w.f64(st.var);
        let a = sl.alarm[slot];
        w.0.push(a.active as u8);
        w.u32(a.over_run);
        w.u32(a.quiet_run);
        w.i64(a.start);
        w.i64(a.last_loud);
        w.f32s(&[a.peak, a.peak_level]);
        w.u32(a.held);
        w.f32s(&sl.flat_last[slot * f..(slot + 1) * f]);
        for &t in &sl.flat_since[slot * f..(slot + 1) * f] {
            w.i64(t);
        }
        let st = sl.stuck[slot];
        w.0.push(st.active as u8);
        w.i64(st.start);
        w.i64(st.last_stuck);
        w.0.extend_from_slice(&st.features.to_le_bytes());
        let quiet = sl.silent[slot];
        w.0.push(quiet.active as u8 | (quiet.suppressed as u8) << 1);
        w.f32s(&[quiet.interval]);
        w.i64(sl.last_ts[slot]);
        w.u32(sl.count[slot]);
        w.u32(sl.seen[slot]);
    }

    /// Restores the devices of `records` (written by [`Engine::snapshot`] with `layout`) into
    /// shard `shard`, replacing any device of the same id. Checks every record before
    /// changing anything: on error the engine is as it was. Returns the devices restored.
    pub fn restore(
        &mut self,
        shard: u32,
        layout: StateLayout,
        records: &ShardRecords,
    ) -> Result<usize, RestoreError> {
        let want = self.state_layout();
        let older = StateLayout {
            watch: false,
            ..want
        };
        if layout != want && layout != older {
            return Err(RestoreError::Layout {
                found: layout,
                want,
            });
        }
        let fixed = layout.fixed_bytes();
        // Validate first. The device count comes from the checkpoint's header: it sizes
        // nothing beyond what the bytes present can hold (each record is at least its id's
        // length and the fixed part).
        let mut spans = Vec::with_capacity(records.devices.min(records.bytes.len() / (2 + fixed)));
        let buf = &records.bytes;
        let mut pos = 0;
        let mut index = 0;
        while pos < buf.len() {
            if pos + 2 > buf.len() {
                return Err(RestoreError::Truncated { index });
            }
            let n = u16::from_le_bytes([buf[pos], buf[pos + 1]]) as usize;
            let (id_at, body_at) = (pos + 2, pos + 2 + n);
            if body_at + fixed > buf.len() {
                return Err(RestoreError::Truncated { index });
            }
            let id = std::str::from_utf8(&buf[id_at..body_at])
                .map_err(|_| RestoreError::BadId { index })?;
            if !record_is_finite(layout, &buf[body_at..body_at + fixed]) {
                return Err(RestoreError::NonFinite {
                    index,
                    device: id.to_string(),
                });
            }
            spans.push((id, body_at));
            pos = body_at + fixed;
            index += 1;
        }
        if spans.len() != records.devices {
            return Err(RestoreError::Truncated { index });
        }
        let owned: Vec<(String, usize)> = spans.iter().map(|(i, b)| (i.to_string(), *b)).collect();
        self.reserve(
            owned
                .len()
                .saturating_sub(self.slots.last_ts.capacity() - self.slots.last_ts.len()),
        );
        for (id, body_at) in &owned {
            let slot = match self.ids.get(id.as_str()) {
                Some(&s) => s as usize,
                None => {
                    let s = self.slot_for(id);
                    self.counters.new_devices -= 1;
                    s
                }
            };
            self.read_record(
                &mut Reader {
                    buf: &records.bytes,
                    pos: *body_at,
                },
                slot,
                layout.watch,
            );
            self.slots.shard[slot] = shard;
            let sl = &self.slots;
            self.watch
                .restored(slot, shard, sl.last_ts[slot], &sl.silent[slot]);
        }
        self.counters.restored += owned.len() as u64;
        Ok(owned.len())
    }

    fn read_record(&mut self, r: &mut Reader<'_>, slot: usize, watch: bool) {
        let (s, f, hz) = (
            self.state_len,
            self.model.features.len(),
            self.model.horizon,
        );
        let sl: &mut Slots = &mut self.slots;
        r.f32s(&mut sl.h[slot * s..(slot + 1) * s]);
        r.f32s(&mut sl.c[slot * s..(slot + 1) * s]);
        r.f32s(&mut sl.pred_mean[slot * f..(slot + 1) * f]);
        r.f32s(&mut sl.pred_sigma[slot * f..(slot + 1) * f]);
        r.f32s(&mut sl.far_mean[slot * f * hz..(slot + 1) * f * hz]);
        r.f32s(&mut sl.far_sigma[slot * f * hz..(slot + 1) * f * hz]);
        r.f32s(&mut sl.calib[slot * f..(slot + 1) * f]);
        r.f32s(&mut sl.calib_far[slot * f..(slot + 1) * f]);
        r.f32s(&mut sl.dev[slot * 3 * f..(slot + 1) * 3 * f]);
        r.f32s(&mut sl.event_sum[slot * f..(slot + 1) * f]);
        r.f32s(&mut sl.drift[slot * f..(slot + 1) * f]);
        sl.stats[slot] = ScoreStats {
            short: r.f64(),
            mean: r.f64(),
            var: r.f64(),
        };
        let active = r.take(1)[0] != 0;
        let over_run = r.u32();
        let quiet_run = r.u32();
        let start = r.i64();
        let last_loud = r.i64();
        let mut peaks = [0f32; 2];
        r.f32s(&mut peaks);
        let held = r.u32();
        sl.alarm[slot] = AlarmState {
            active,
            over_run,
            quiet_run,
            start,
            last_loud,
            peak: peaks[0],
            peak_level: peaks[1],
            held,
        };
        let (last, since) = (
            &mut sl.flat_last[slot * f..(slot + 1) * f],
            &mut sl.flat_since[slot * f..(slot + 1) * f],
        );
        if watch {
            r.f32s(last);
            for t in since.iter_mut() {
                *t = r.i64();
            }
            sl.stuck[slot] = StuckState {
                active: r.take(1)[0] != 0,
                start: r.i64(),
                last_stuck: r.i64(),
                features: u64::from_le_bytes(r.take(8).try_into().unwrap_or_default()),
            };
            let flags = r.take(1)[0];
            let mut interval = [0f32];
            r.f32s(&mut interval);
            sl.silent[slot] = SilentState {
                active: flags & 1 != 0,
                suppressed: flags & 2 != 0,
                interval: interval[0],
            };
        } else {
            last.fill(f32::NAN);
            since.fill(0);
            sl.stuck[slot] = StuckState::default();
            sl.silent[slot] = SilentState::default();
        }
        sl.last_ts[slot] = r.i64();
        sl.count[slot] = r.u32();
        sl.seen[slot] = r.u32();
    }

    /// Whether the device is in the table.
    pub fn knows(&self, device: &str) -> bool {
        self.ids.contains_key(device)
    }

    /// Every device in the table with its shard.
    pub fn device_shards(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.ids
            .iter()
            .map(|(id, &slot)| (id.as_str(), self.slots.shard[slot as usize]))
    }

    /// Readings the device was stepped through since its LSTM state last started from zero;
    /// `None` for a device not in the table.
    pub fn steps(&self, device: &str) -> Option<u32> {
        self.ids
            .get(device)
            .map(|&slot| self.slots.count[slot as usize])
    }

    /// Takes over, for `device`, what the engine `from` (another model of the same stream)
    /// learnt that does not depend on the model's weights: the device's deviation baseline
    /// (its own normal, with how far it normally departs from it), the age of that baseline
    /// and the alarm it may be in. The model-dependent part (LSTM state, forecasts and their
    /// calibration, drift and likelihood history) stays as this engine computed it — in a
    /// model swap, from the readings it stepped in shadow. The baseline is kept in normalised
    /// units, so it is carried from `from`'s normalisation to this one's. Returns whether the
    /// device was in both tables.
    pub fn adopt(&mut self, from: &Engine, device: &str) -> bool {
        let (Some(&to), Some(&src)) = (self.ids.get(device), from.ids.get(device)) else {
            return false;
        };
        let (to, src) = (to as usize, src as usize);
        let f = self.model.features.len();
        if from.model.features.len() != f {
            return false;
        }
        let (a, b) = (&from.model, &self.model);
        let dst = &mut self.slots.dev[to * 3 * f..(to + 1) * 3 * f];
        let old = &from.slots.dev[src * 3 * f..(src + 1) * 3 * f];
        for k in 0..f {
            // z_b = (x − m_b) / s_b with x = z_a · s_a + m_a.
            let scale = a.std[k] / b.std[k];
            let shift = (a.mean[k] - b.mean[k]) / b.std[k];
            dst[k] = old[k] * scale + shift;
            dst[f + k] = old[f + k] * scale;
            dst[2 * f + k] = old[2 * f + k] * scale * scale;
        }
        self.slots.event_sum[to * f..(to + 1) * f]
            .copy_from_slice(&from.slots.event_sum[src * f..(src + 1) * f]);
        self.slots.alarm[to] = from.slots.alarm[src];
        // What a sensor's raw readings did does not depend on the model either.
        self.slots.flat_last[to * f..(to + 1) * f]
            .copy_from_slice(&from.slots.flat_last[src * f..(src + 1) * f]);
        self.slots.flat_since[to * f..(to + 1) * f]
            .copy_from_slice(&from.slots.flat_since[src * f..(src + 1) * f]);
        self.slots.stuck[to] = from.slots.stuck[src];
        self.slots.silent[to] = from.slots.silent[src];
        self.slots.seen[to] = from.slots.seen[src].max(self.slots.seen[to]);
        true
    }

    /// Forgets every device `drop` selects by `(shard, last timestamp)`; returns how many.
    /// One pass over the table: the kept devices move down, keeping their order.
    pub fn forget(&mut self, drop: impl Fn(u32, i64) -> bool) -> usize {
        let n = self.slots.last_ts.len();
        let mut remap = vec![u32::MAX; n];
        let mut next = 0u32;
        for (slot, m) in remap.iter_mut().enumerate() {
            if !drop(self.slots.shard[slot], self.slots.last_ts[slot]) {
                *m = next;
                next += 1;
            }
        }
        let removed = n - next as usize;
        if removed == 0 {
            return 0;
        }
        let (s, f, hz) = (
            self.state_len,
            self.model.features.len(),
            self.model.horizon,
        );
        let sl = &mut self.slots;
        compact(&mut sl.h, s, &remap);
        compact(&mut sl.c, s, &remap);
        compact(&mut sl.pred_mean, f, &remap);
        compact(&mut sl.pred_sigma, f, &remap);
        compact(&mut sl.far_mean, f * hz, &remap);
        compact(&mut sl.far_sigma, f * hz, &remap);
        compact(&mut sl.calib, f, &remap);
        compact(&mut sl.calib_far, f, &remap);
        compact(&mut sl.stats, 1, &remap);
        compact(&mut sl.dev, 3 * f, &remap);
        compact(&mut sl.event_sum, f, &remap);
        compact(&mut sl.drift, f, &remap);
        compact(&mut sl.alarm, 1, &remap);
        compact(&mut sl.flat_last, f, &remap);
        compact(&mut sl.flat_since, f, &remap);
        compact(&mut sl.stuck, 1, &remap);
        compact(&mut sl.silent, 1, &remap);
        compact(&mut sl.rate, 1, &remap);
        compact(&mut sl.last_ts, 1, &remap);
        compact(&mut sl.count, 1, &remap);
        compact(&mut sl.seen, 1, &remap);
        compact(&mut sl.mark, 1, &remap);
        compact(&mut sl.wave, 1, &remap);
        compact(&mut sl.shard, 1, &remap);
        self.ids.retain(|_, slot| {
            let m = remap[*slot as usize];
            *slot = m;
            m != u32::MAX
        });
        let sl = &self.slots;
        self.watch.rebuild(&sl.last_ts, &sl.shard, &sl.silent);
        removed
    }
}

/// Whether every float of a record's body (of `layout`) is finite: every f32 of the block
/// before the score stats, then the three f64 stats. (The flat runs' last values may be NaN:
/// no value yet.)
fn record_is_finite(layout: StateLayout, body: &[u8]) -> bool {
    let floats = layout.fixed_bytes() - 24 - ALARM_BYTES - layout.flat_bytes() - 16;
    let f32_ok = body[..floats]
        .chunks_exact(4)
        .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
    let f64_ok = body[floats..floats + 24]
        .chunks_exact(8)
        .all(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()).is_finite());
    f32_ok && f64_ok
}

/// Keeps the `width`-wide rows of `v` whose `remap` entry is set, in order.
fn compact<T: Copy>(v: &mut Vec<T>, width: usize, remap: &[u32]) {
    let mut to = 0;
    for (from, m) in remap.iter().enumerate() {
        if *m != u32::MAX {
            if to != from {
                v.copy_within(from * width..(from + 1) * width, to * width);
            }
            to += 1;
        }
    }
    v.truncate(to * width);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{Shape, settings, synthetic_model};
    use crate::engine::{BatchOutput, Outcome};
    use crate::synth::{FleetSpec, generate};
    use std::sync::Arc;

    fn engine() -> Engine {
        let spec = Shape {
            features: 4,
            hidden: 16,
            layers: 2,
            horizon: 3,
        };
        let mut s = settings();
        s.warmup = 5;
        s.detect.learning = 20;
        s.detect.false_alarm_rate = 0.05;
        s.detect.min_duration = 2;
        Engine::new(Arc::new(synthetic_model(spec)), s).expect("engine")
    }

    fn bits(e: &mut Engine, rs: &[crate::decode::Reading]) -> Vec<u64> {
        let mut out = BatchOutput::default();
        let mut v = Vec::new();
        for chunk in rs.chunks(13) {
            let shards: Vec<u32> = chunk.iter().map(|r| shard_of(&r.device)).collect();
            e.process_sharded(chunk, &shards, &mut out)
                .expect("process");
            for (i, o) in out.outcomes.iter().enumerate() {
                if let Outcome::Scored(s) = o {
                    v.push(s.score.to_bits());
                    v.push(s.likelihood.to_bits());
                    v.push(s.is_anomaly as u64);
                    v.extend(out.forecast(i).iter().map(|x| x.to_bits() as u64));
                } else {
                    v.push(u64::MAX);
                }
            }
        }
        v
    }

    fn shard_of(device: &str) -> u32 {
        device.bytes().map(u32::from).sum::<u32>() % 3
    }

    #[test]
    fn adopt_carries_the_deviation_baseline_across_normalisations() {
        // Two models of the same stream with different normalisations, fed the same readings:
        // their baselines agree in raw units, so adopting one's into the other changes
        // (nearly) nothing; the alarm state and the baseline's age come along.
        let a = engine();
        let mut m = (**a.model()).clone();
        m.version = "other".into();
        m.mean = vec![0.5, -1.0, 2.0, 0.0];
        m.std = vec![2.0, 0.5, 1.5, 1.0];
        let mut a = a;
        let mut b = Engine::new(Arc::new(m), a.settings.clone()).expect("b");
        let rs = generate(&FleetSpec {
            devices: 3,
            readings: 120,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings;
        bits(&mut a, &rs);
        bits(&mut b, &rs);
        let dev = rs[0].device.clone();
        let slot = b.ids[&dev] as usize;
        let own: Vec<f32> = b.slots.dev[slot * 12..(slot + 1) * 12].to_vec();
        b.slots.alarm[slot] = AlarmState::default();
        b.slots.seen[slot] = 0;
        assert!(b.adopt(&a, &dev));
        let got = &b.slots.dev[slot * 12..(slot + 1) * 12];
        for (k, (x, y)) in own.iter().zip(got).enumerate() {
            assert!(
                (x - y).abs() <= 1e-3 * (1.0 + x.abs()),
                "dev[{k}]: own {x}, adopted {y}"
            );
        }
        let sa = a.ids[&dev] as usize;
        assert_eq!(b.slots.seen[slot], a.slots.seen[sa]);
        assert_eq!(b.slots.alarm[slot], a.slots.alarm[sa]);
        assert!(!b.adopt(&a, "nobody"));
    }

    #[test]
    fn a_restored_engine_continues_bit_for_bit() {
        let rs = generate(&FleetSpec {
            devices: 7,
            readings: 150,
            faults: 2,
            ..FleetSpec::default()
        })
        .readings;
        let cut = rs.len() * 2 / 3;
        let mut whole = engine();
        let reference = bits(&mut whole, &rs);
        let mut first = engine();
        let head = bits(&mut first, &rs[..cut]);
        // Each shard goes into a fresh engine on its own, as partitions move between members.
        let mut second = engine();
        let layout = first.state_layout();
        let mut restored = 0;
        for (shard, recs) in first.snapshot(|_| true) {
            restored += second.restore(shard, layout, &recs).expect("restore");
        }
        assert_eq!(restored, 7);
        assert_eq!(second.devices(), 7);
        let tail = bits(&mut second, &rs[cut..]);
        assert_eq!(head.len() + tail.len(), reference.len());
        assert!(
            head.iter().chain(&tail).eq(reference.iter()),
            "outputs after a restore differ from an uninterrupted run"
        );
    }

    #[test]
    fn forget_drops_a_shard_and_keeps_the_rest_intact() {
        let rs = generate(&FleetSpec {
            devices: 9,
            readings: 60,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings;
        let mut a = engine();
        let mut b = engine();
        bits(&mut a, &rs);
        bits(&mut b, &rs);
        let gone = a.forget(|shard, _| shard == 1);
        assert!(gone > 0 && a.devices() == 9 - gone);
        // What is left is byte for byte what b holds for those shards.
        assert!(a.snapshot(|s| s != 1) == b.snapshot(|s| s != 1));
        assert!(a.snapshot(|s| s == 1).is_empty());
        assert!(a.state_heap_bytes() > 0);
    }

    #[test]
    fn records_iterate_with_their_ids_and_last_timestamps() {
        let rs = generate(&FleetSpec {
            devices: 4,
            readings: 10,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings;
        let mut a = engine();
        bits(&mut a, &rs);
        let layout = a.state_layout();
        let mut last: std::collections::HashMap<&str, i64> = Default::default();
        for r in &rs {
            let e = last.entry(r.device.as_str()).or_insert(i64::MIN);
            *e = (*e).max(r.ts);
        }
        let all: Vec<(String, i64)> = a
            .snapshot(|_| true)
            .iter()
            .flat_map(|(_, r)| {
                r.iter(layout)
                    .map(|(id, ts, _)| (id.to_string(), ts))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(all.len(), 4);
        assert!(
            all.iter().all(|(id, ts)| last[id.as_str()] == *ts),
            "{all:?}"
        );
        // One record restores on its own.
        let (shard, recs) = a.snapshot(|_| true).remove(0);
        let (id, _, rec) = recs.iter(layout).next().expect("a record");
        let mut b = engine();
        assert_eq!(b.restore(shard, layout, &ShardRecords::one(rec)), Ok(1));
        assert!(b.knows(id));
        let oldest = last.values().copied().min().expect("devices");
        assert!(a.snapshot_where(|_, ts| ts < oldest).is_empty());
        let newest = last.values().copied().max().expect("devices");
        let idle: usize = a
            .snapshot_where(|_, ts| ts < newest)
            .iter()
            .map(|(_, r)| r.devices)
            .sum();
        assert_eq!(idle, 3, "every device but the newest one");
    }

    #[test]
    fn damaged_records_are_refused_and_change_nothing() {
        let rs = generate(&FleetSpec {
            devices: 3,
            readings: 40,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings;
        let mut a = engine();
        bits(&mut a, &rs);
        let layout = a.state_layout();
        let (shard, recs) = a.snapshot(|_| true).remove(0);
        let mut fresh = engine();
        let mut cut = recs.clone();
        cut.bytes.truncate(cut.bytes.len() - 3);
        assert!(matches!(
            fresh.restore(shard, layout, &cut),
            Err(RestoreError::Truncated { .. })
        ));
        let mut other = layout;
        other.horizon += 1;
        assert!(matches!(
            fresh.restore(shard, other, &recs),
            Err(RestoreError::Layout { .. })
        ));
        let mut nan = recs.clone();
        let id_len = u16::from_le_bytes([nan.bytes[0], nan.bytes[1]]) as usize;
        nan.bytes[2 + id_len..2 + id_len + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            fresh.restore(shard, layout, &nan),
            Err(RestoreError::NonFinite { .. })
        ));
        assert_eq!(fresh.devices(), 0, "a refused restore changes nothing");
    }
}
