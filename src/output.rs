//! Output points (docs/ARCHITECTURE.md §5): InfluxDB line protocol and CSV renderings of a stepped reading.
//!
//! Keeps invariant §3.2 (replays are harmless): every point carries the reading's event time
//! (forecasts: the time they forecast) and a tag set fixed by stream, device, field and
//! horizon, so writing the same reading again overwrites the same points. The model version is
//! a field (DESIGN §5): a reading re-scored by a new model replaces its old point.

use crate::config::{AnomalyFields, OutputConfig};
use crate::decode::Reading;
use crate::engine::detect::Edge;
use crate::engine::silent::SilentEvent;
use crate::engine::{BatchOutput, Outcome, Scored};
use std::cell::Cell;
use std::fmt::Write as _;

mod plain;

/// Appends `s` to `out`. The pieces of a point are short (a key, a number's digits, a tag
/// set), and the calls to `memcpy` for them held a quarter of encoding's samples
/// (`benches/encode.rs`): up to 64 bytes are copied inline, in at most two overlapping loads
/// and stores (byte by byte below 4), and encoding takes 7–9 % less time.
#[inline(always)]
fn put(out: &mut String, s: &str) {
    let n = s.len();
    if n > 64 {
        out.push_str(s);
        return;
    }
    out.reserve(n);
    // SAFETY: `s` is UTF-8 and is appended whole, so `out` stays UTF-8. `reserve` made room
    // for `n` bytes past the length, and each pair of copies below stays within both `s` and
    // that room: the second copy of a pair ends at byte `n` (overlapping the first where `n`
    // is not the width); for `n` < 4, bytes 0, n/2 and n − 1 cover all of them. A `&str` and
    // the `&mut String` it is appended to cannot overlap.
    unsafe {
        let v = out.as_mut_vec();
        let len = v.len();
        let (src, dst) = (s.as_ptr(), v.as_mut_ptr().add(len));
        if n >= 32 {
            copy_ends::<32>(src, dst, n);
        } else if n >= 16 {
            copy_ends::<16>(src, dst, n);
        } else if n >= 8 {
            copy_ends::<8>(src, dst, n);
        } else if n >= 4 {
            copy_ends::<4>(src, dst, n);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        v.set_len(len + n);
    }
}

/// Copies `n` bytes (`W ≤ n ≤ 2·W`) as the first and the last `W`.
///
/// # Safety
///
/// `src` must be readable and `dst` writable for `n` bytes, and they must not overlap.
#[inline(always)]
unsafe fn copy_ends<const W: usize>(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: both copies lie within the first `n` bytes, as the caller promises for both.
    unsafe {
        let head = src.cast::<[u8; W]>().read_unaligned();
        let tail = src.add(n - W).cast::<[u8; W]>().read_unaligned();
        dst.cast::<[u8; W]>().write_unaligned(head);
        dst.add(n - W).cast::<[u8; W]>().write_unaligned(tail);
    }
}

/// Writes a tag key or value with line-protocol escaping (comma, equals sign, space). Every
/// character escaped is ASCII, so a byte test tells whether there is any.
fn push_tag(out: &mut String, s: &str) {
    if !s
        .bytes()
        .any(|b| matches!(b, b',' | b'=' | b' ' | b'\\' | b'\n'))
    {
        put(out, s);
        return;
    }
    for ch in s.chars() {
        if matches!(ch, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        if ch == '\n' {
            put(out, "\\n");
        } else {
            out.push(ch);
        }
    }
}

/// Appends an operator's verdict on an alarm to its `anomaly_event` point (same series and
/// timestamp, so the point gains the fields): `verdict`, `labelled_by`, `label_note` (line
/// breaks in them become spaces) and `labelled_at` (ns). Returns the points written (0 for a
/// label without a valid span).
pub fn write_verdict(out: &mut String, label: &crate::labels::Label) -> usize {
    let Ok(span) = label.span() else { return 0 };
    put(out, "anomaly_event,stream=");
    push_tag(out, &label.stream);
    put(out, ",device=");
    push_tag(out, &label.device);
    put(out, ",kind=");
    push_tag(out, &label.kind);
    put(out, " verdict=");
    push_str_field(out, label.verdict.as_str());
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    put(out, ",labelled_by=");
    push_str_field(out, &one_line(&label.by));
    put(out, ",label_note=");
    push_str_field(out, &one_line(&label.note));
    put(out, ",labelled_at=");
    push_i64(out, span.recorded);
    put(out, "i ");
    push_i64(out, span.at);
    out.push('\n');
    1
}

/// Writes a string field value with its quotes escaped.
fn push_str_field(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| matches!(b, b'"' | b'\\')) {
        put(out, s);
        out.push('"');
        return;
    }
    for ch in s.chars() {
        if matches!(ch, '"' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

/// Renders the points of one stepped reading.
#[derive(Debug, Clone)]
pub struct PointFormat<'a> {
    /// Model version (the `model` field; not written when empty).
    model: &'a str,
    /// Feature names in model order.
    features: &'a [String],
    /// Forecast steps of the model.
    horizon: usize,
    /// What is written.
    output: &'a OutputConfig,
    /// Escaped once, written many times: `,stream=S`, per step and feature
    /// `,field=F,horizon=H yhat=` (step-major), per feature `,contrib_F=` and `F=`, and
    /// `,model="V"`.
    stream_tag: String,
    forecast_keys: Vec<String>,
    contrib_keys: Vec<String>,
    reading_keys: Vec<String>,
    model_field: String,
    /// The buffer a reading's series is made in ([`PointFormat::with_series`]), kept from one
    /// reading to the next instead of allocated for each.
    series: Kept,
}

/// A buffer kept from one use to the next ([`PointFormat::with_series`]): taken, filled,
/// given back.
#[derive(Default)]
struct Kept(Cell<String>);

/// A clone starts with a buffer of its own.
impl Clone for Kept {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kept")
    }
}

/// What one reading costs in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    /// Points (lines of line protocol).
    pub points: usize,
    /// Field values.
    pub samples: usize,
}

/// Appends a float in its shortest exact form (`1.5`, `2.0`, `1e-7`); line protocol reads
/// all of these. Values are finite here (the engine resets a device rather than output
/// anything else); a non-finite one would be written as `0`, never as `NaN`. Plain decimals
/// (zero, and from 2^−10 to below 2^23: nearly every reading, forecast and contribution) are
/// made in place ([`plain`]); the rest go through zmij. Inlined into the writers: a call per
/// number cost 1.1–1.4 % of encoding (`cargo bench --bench encode`).
#[inline(always)]
fn push_f32(out: &mut String, v: f32) {
    if !plain::push(out, v) {
        push_float(out, v, v.is_finite(), v.abs() >= 1e7);
    }
}

fn push_f64(out: &mut String, v: f64) {
    push_float(out, v, v.is_finite(), v.abs() >= 1e7);
}

/// Appends zmij's shortest form of a `finite` float with the exponent's `+` left out (`1e13`,
/// not `1e+13`): the digits ryu wrote before, for every finite f32 (checked exhaustively) and
/// every f64 tried. Both write an exponent only from 1e13 (f32) and 1e16 (f64) up, so the `+`
/// is looked for only in `large` numbers (from 1e7: a margin), not in a reading's values.
fn push_float<F: zmij::Float>(out: &mut String, v: F, finite: bool, large: bool) {
    if !finite {
        out.push('0');
        return;
    }
    let mut buffer = zmij::Buffer::new();
    let s = buffer.format_finite(v);
    match large.then(|| s.bytes().position(|b| b == b'+')).flatten() {
        None => put(out, s),
        Some(i) => {
            put(out, &s[..i]);
            put(out, &s[i + 1..]);
        }
    }
}

fn push_i64(out: &mut String, v: i64) {
    put(out, itoa::Buffer::new().format(v));
}

fn push_bool(out: &mut String, v: bool) {
    put(out, if v { "true" } else { "false" });
}

fn escaped_tag(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    push_tag(&mut out, s);
    out
}

impl<'a> PointFormat<'a> {
    /// Points of `stream`, computed by `model` (version, features, horizon), as `output` says.
    pub fn new(
        stream: &'a str,
        model: &'a str,
        features: &'a [String],
        horizon: usize,
        output: &'a OutputConfig,
    ) -> Self {
        let model_field = if model.is_empty() {
            String::new()
        } else {
            let mut m = String::from(",model=");
            push_str_field(&mut m, model);
            m
        };
        Self {
            model,
            features,
            horizon,
            output,
            stream_tag: format!(",stream={}", escaped_tag(stream)),
            forecast_keys: (1..=horizon)
                .flat_map(|h| {
                    features
                        .iter()
                        .map(move |f| format!(",field={},horizon={h} yhat=", escaped_tag(f)))
                })
                .collect(),
            contrib_keys: features
                .iter()
                .map(|f| format!(",contrib_{}=", escaped_tag(f)))
                .collect(),
            reading_keys: features
                .iter()
                .map(|f| format!("{}=", escaped_tag(f)))
                .collect(),
            model_field,
            series: Kept::default(),
        }
    }

    fn model_field(&self) -> usize {
        usize::from(!self.model.is_empty())
    }

    /// Points and samples of a stepped reading whose forecasts are written (without alarm
    /// events, and before `forecast_every` thins the forecasts out).
    pub fn volume(&self) -> Volume {
        let nf = self.features.len();
        let steps = (1..=self.horizon)
            .filter(|&h| self.output.horizons.includes(h, self.horizon))
            .count();
        let forecast_fields = if self.output.band { 3 } else { 1 } + self.model_field();
        let anomaly_fields = match self.output.anomaly {
            AnomalyFields::All => 7 + nf,
            AnomalyFields::Basic => 4,
        } + self.model_field();
        let readings = usize::from(self.output.readings);
        Volume {
            points: 1 + steps * nf + readings,
            samples: anomaly_fields + steps * nf * forecast_fields + readings * nf,
        }
    }

    /// Whether the forecasts of a reading at `ts` (readings `step_ns` apart) are written:
    /// every reading for `forecast_every = 1`; else those crossing a multiple of
    /// `forecast_every` steps since the previous one, which depends on the event time only, so
    /// replays and restores write the same ones.
    fn forecasts_due(&self, ts: i64, step_ns: i64) -> bool {
        let k = self.output.forecast_every.max(1) as i64;
        if k == 1 || step_ns <= 0 {
            return true;
        }
        let period = step_ns.saturating_mul(k);
        ts.div_euclid(period) != ts.saturating_sub(step_ns).div_euclid(period)
    }

    /// Appends the line-protocol points of reading `i` of a processed batch to `out`, one per
    /// line; returns how many. Nothing for a reading that was not stepped.
    pub fn write_line_protocol(
        &self,
        out: &mut String,
        reading: &Reading,
        batch: &BatchOutput,
        i: usize,
    ) -> usize {
        let Outcome::Scored(scored) = &batch.outcomes[i] else {
            return 0;
        };
        self.with_series(&reading.device, |series| {
            self.write_points(out, series, reading, (batch, i), scored)
        })
    }

    /// [`PointFormat::write_line_protocol`] once the series is made.
    fn write_points(
        &self,
        out: &mut String,
        series: &str,
        reading: &Reading,
        (batch, i): (&BatchOutput, usize),
        scored: &Scored,
    ) -> usize {
        let mut points = 0;
        let mut ts = itoa::Buffer::new();
        let ts = ts.format(reading.ts);
        if self.output.readings {
            self.write_reading(out, series, reading, ts);
            points += 1;
        }
        if self.forecasts_due(reading.ts, scored.step_ns) {
            points +=
                self.write_forecasts(out, series, reading.ts, scored.step_ns, batch.forecast(i));
        }
        self.write_anomaly(out, series, scored, batch.contributions(i), ts);
        points += 1;
        points + self.write_alarm_edges(out, series, scored, batch, i)
    }

    /// Calls `write` with `,stream=S,device=D`, the tags every point of a device starts with,
    /// escaped once, made in the kept buffer.
    fn with_series<R>(&self, device: &str, write: impl FnOnce(&str) -> R) -> R {
        let mut series = self.series.0.take();
        series.clear();
        put(&mut series, &self.stream_tag);
        put(&mut series, ",device=");
        push_tag(&mut series, device);
        let written = write(&series);
        self.series.0.set(series);
        written
    }

    /// Appends the `reading` point: the reading's values, one field per feature, at `ts`.
    fn write_reading(&self, out: &mut String, series: &str, reading: &Reading, ts: &str) {
        put(out, "reading");
        put(out, series);
        for (f, (key, v)) in self.reading_keys.iter().zip(&reading.values).enumerate() {
            out.push(if f == 0 { ' ' } else { ',' });
            put(out, key);
            push_f32(out, *v);
        }
        out.push(' ');
        put(out, ts);
        out.push('\n');
    }

    /// Appends a `forecast` point per written step and feature of a reading at `ts`, each at
    /// the time it forecasts (`step_ns` apart); returns how many.
    fn write_forecasts(
        &self,
        out: &mut String,
        series: &str,
        ts: i64,
        step_ns: i64,
        forecast: &[f32],
    ) -> usize {
        let nf = self.features.len();
        let mut points = 0;
        for h in 0..self.horizon {
            if !self.output.horizons.includes(h + 1, self.horizon) {
                continue;
            }
            let target = ts.saturating_add((h as i64 + 1).saturating_mul(step_ns));
            let mut target_buf = itoa::Buffer::new();
            let target = target_buf.format(target);
            let keys = &self.forecast_keys[h * nf..(h + 1) * nf];
            for (f, key) in keys.iter().enumerate() {
                let k = (h * nf + f) * 3;
                put(out, "forecast");
                put(out, series);
                put(out, key);
                push_f32(out, forecast[k]);
                if self.output.band {
                    put(out, ",yhat_lower=");
                    push_f32(out, forecast[k + 1]);
                    put(out, ",yhat_upper=");
                    push_f32(out, forecast[k + 2]);
                }
                put(out, &self.model_field);
                out.push(' ');
                put(out, target);
                out.push('\n');
                points += 1;
            }
        }
        points
    }

    /// Appends the `anomaly` point of a reading at `ts`: its score, the fields
    /// `output.anomaly` asks for, and the feature that contributed most (empty when nothing
    /// was explained, every contribution 0).
    fn write_anomaly(
        &self,
        out: &mut String,
        series: &str,
        scored: &Scored,
        contrib: &[f32],
        ts: &str,
    ) {
        let all = self.output.anomaly == AnomalyFields::All;
        put(out, "anomaly");
        put(out, series);
        let explained = contrib.iter().any(|c| *c != 0.0);
        let top = if explained {
            self.features[scored.top_feature].as_str()
        } else {
            ""
        };
        put(out, " score=");
        push_f64(out, scored.score);
        if all {
            put(out, ",forecast_score=");
            push_f64(out, scored.forecast_score);
            put(out, ",deviation_score=");
            push_f64(out, scored.deviation_score);
        }
        put(out, ",likelihood=");
        push_f64(out, scored.likelihood);
        if all {
            put(out, ",over_line=");
            push_bool(out, scored.over_line);
        }
        put(out, ",is_anomaly=");
        push_bool(out, scored.is_anomaly);
        if scored.maintenance {
            put(out, ",maintenance=true");
        }
        put(out, ",top_field=");
        push_str_field(out, top);
        if all {
            for (key, c) in self.contrib_keys.iter().zip(contrib) {
                put(out, key);
                push_f32(out, *c);
            }
        }
        put(out, &self.model_field);
        out.push(' ');
        put(out, ts);
        out.push('\n');
    }

    /// Appends an `anomaly_event` point for each alarm reading `i` of `batch` raised or
    /// cleared (the detector's, then the stuck sensor's); returns how many.
    fn write_alarm_edges(
        &self,
        out: &mut String,
        series: &str,
        scored: &Scored,
        batch: &BatchOutput,
        i: usize,
    ) -> usize {
        let mut points = 0;
        if scored.edge != Edge::None {
            let contrib = batch.event_contributions(i);
            let event = Event {
                kind: "anomaly",
                edge: scored.edge,
                peak: Some(scored.peak),
                top_fields: &self.explain(contrib, 3),
                contributions: contrib,
            };
            self.write_event(out, series, &event);
            points += 1;
        }
        if scored.stuck_edge != Edge::None {
            let event = Event {
                kind: "stuck",
                edge: scored.stuck_edge,
                peak: None,
                top_fields: &self.flat_fields(scored.stuck_features),
                contributions: &[],
            };
            self.write_event(out, series, &event);
            points += 1;
        }
        points
    }

    /// Appends an alarm's `anomaly_event` point. One point per alarm, at its start: written
    /// when it is raised, and overwritten when it clears.
    fn write_event(&self, out: &mut String, series: &str, e: &Event<'_>) {
        let (Edge::Raised { start } | Edge::Cleared { start, .. }) = e.edge else {
            return;
        };
        put(out, "anomaly_event");
        put(out, series);
        put(out, ",kind=");
        put(out, e.kind);
        put(out, " active=");
        push_bool(out, matches!(e.edge, Edge::Raised { .. }));
        put(out, ",start=");
        push_i64(out, start);
        out.push('i');
        if let Edge::Cleared { end, .. } = e.edge {
            put(out, ",end=");
            push_i64(out, end);
            put(out, "i,duration_s=");
            push_f64(out, (end - start) as f64 / 1e9);
        }
        if let Some(peak) = e.peak {
            put(out, ",peak_score=");
            push_f32(out, peak);
        }
        put(out, ",top_fields=");
        push_str_field(out, e.top_fields);
        for (key, c) in self.contrib_keys.iter().zip(e.contributions) {
            put(out, key);
            push_f32(out, *c);
        }
        put(out, &self.model_field);
        out.push(' ');
        push_i64(out, start);
        out.push('\n');
    }

    /// Appends the `anomaly_event` point (`kind=silent`) of a silent device's alarm edge;
    /// returns the points written (1).
    pub fn write_silent_event(&self, out: &mut String, e: &SilentEvent) -> usize {
        let event = Event {
            kind: "silent",
            edge: e.edge,
            peak: None,
            top_fields: "",
            contributions: &[],
        };
        self.with_series(&e.device, |series| self.write_event(out, series, &event));
        1
    }

    /// The features of a stuck-sensor alarm (bit mask): `"pressure flat, flow flat"`.
    pub fn flat_fields(&self, mask: u64) -> String {
        let mut s = String::new();
        for (f, name) in self.features.iter().enumerate().take(64) {
            if mask & (1u64 << f) != 0 {
                if !s.is_empty() {
                    s.push_str(", ");
                }
                s.push_str(name);
                s.push_str(" flat");
            }
        }
        s
    }

    /// The features that contributed most, largest first, with their direction:
    /// `"pressure low, flow low"`. Features under 10 % of the evidence are left out.
    pub fn explain(&self, contrib: &[f32], most: usize) -> String {
        let mut order: Vec<usize> = (0..contrib.len())
            .filter(|&f| contrib[f].abs() >= 0.1)
            .collect();
        order.sort_by(|&a, &b| {
            contrib[b]
                .abs()
                .total_cmp(&contrib[a].abs())
                .then(a.cmp(&b))
        });
        order
            .iter()
            .take(most)
            .map(|&f| {
                let dir = if contrib[f] < 0.0 { "low" } else { "high" };
                format!("{} {dir}", self.features[f])
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The CSV header matching [`PointFormat::write_csv_row`].
    pub fn csv_header(&self) -> String {
        let mut s = String::from(
            "device,ts,model,score,forecast_score,deviation_score,likelihood,over_line,is_anomaly,alarm,top_field,value_of_top_field,explanation,stuck,stuck_fields",
        );
        for h in 1..=self.horizon {
            for f in self.features {
                for part in ["yhat", "lower", "upper"] {
                    let _ = write!(s, ",{f}_h{h}_{part}");
                }
            }
        }
        s
    }

    /// One CSV row for reading `i` of a processed batch (RFC 3339 timestamps); nothing for a
    /// reading that was not stepped. `alarm` and `stuck` (a stuck-sensor alarm, whose
    /// features `stuck_fields` names) are `raised`, `cleared` or empty. (Silent-device alarms
    /// are raised at other devices' readings and have no row; line protocol carries them.)
    pub fn write_csv_row(
        &self,
        out: &mut String,
        reading: &Reading,
        batch: &BatchOutput,
        i: usize,
    ) {
        let Outcome::Scored(scored) = &batch.outcomes[i] else {
            return;
        };
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let contrib = batch.contributions(i);
        let explained = contrib.iter().any(|c| *c != 0.0);
        let (top, top_value) = if explained {
            (
                self.features[scored.top_feature].as_str(),
                reading.values[scored.top_feature].to_string(),
            )
        } else {
            ("", String::new())
        };
        let edge = |e: Edge| match e {
            Edge::None => "",
            Edge::Raised { .. } => "raised",
            Edge::Cleared { .. } => "cleared",
        };
        let stuck_fields = if scored.stuck_edge == Edge::None {
            String::new()
        } else {
            self.flat_fields(scored.stuck_features)
        };
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            quote(&reading.device),
            crate::time::format_ts(reading.ts),
            quote(self.model),
            scored.score,
            scored.forecast_score,
            scored.deviation_score,
            scored.likelihood,
            scored.over_line,
            scored.is_anomaly,
            edge(scored.edge),
            quote(top),
            top_value,
            quote(&self.explain(contrib, 3)),
            edge(scored.stuck_edge),
            quote(&stuck_fields),
        );
        for v in &batch.forecast(i)[..self.horizon * self.features.len() * 3] {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
}

/// An alarm's edge, to be written as an `anomaly_event` point.
struct Event<'a> {
    /// The `kind` tag: `anomaly` (the detector's alarm) or `stuck` (a stuck sensor).
    kind: &'static str,
    edge: Edge,
    /// Highest score of the alarm (anomaly alarms).
    peak: Option<f32>,
    top_fields: &'a str,
    /// `contrib_<feature>` fields (none for stuck sensors).
    contributions: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Schema, parse_line_protocol};

    fn shortest_f32(v: f32) -> String {
        let mut s = String::new();
        push_f32(&mut s, v);
        s
    }

    fn shortest_f64(v: f64) -> String {
        let mut s = String::new();
        push_f64(&mut s, v);
        s
    }

    /// Every 4099th f32 bit pattern (a prime stride, so every exponent and many mantissas),
    /// the edges, and f64s across the whole range: the digits ryu wrote before.
    #[test]
    fn floats_are_written_as_ryu_wrote_them() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            1e13,
            1e-7,
            123456.79,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        let strided = (0..=u32::MAX).step_by(4099).map(f32::from_bits);
        for v in edges.into_iter().chain(strided).filter(|v| v.is_finite()) {
            assert_eq!(
                shortest_f32(v),
                ryu::Buffer::new().format_finite(v),
                "{:08x}",
                v.to_bits()
            );
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                assert_eq!(
                    shortest_f64(v),
                    ryu::Buffer::new().format_finite(v),
                    "{x:016x}"
                );
            }
        }
        assert_eq!(shortest_f32(f32::NAN), "0");
        assert_eq!(shortest_f64(f64::INFINITY), "0");
    }

    /// The same over all 2³² f32 bit patterns, split over the cores (minutes in release, far
    /// more in a debug build: `scripts/test.sh` runs it, `cargo test --release --lib --
    /// --ignored every_f32` alone).
    #[test]
    #[ignore = "exhaustive; minutes"]
    fn every_f32_is_written_as_ryu_wrote_it() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let share = (1u64 << 32).div_ceil(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    let (mut ours, mut theirs) = (String::new(), ryu::Buffer::new());
                    for bits in t * share..((t + 1) * share).min(1 << 32) {
                        let v = f32::from_bits(bits as u32);
                        if v.is_finite() {
                            ours.clear();
                            push_f32(&mut ours, v);
                            assert_eq!(ours, theirs.format_finite(v), "{bits:08x}");
                        }
                    }
                });
            }
        });
    }

    fn scored(edge: Edge) -> Scored {
        Scored {
            score: 0.5,
            surprisal: std::f64::consts::LN_2,
            forecast_score: 0.4,
            deviation_score: 0.3,
            likelihood: 0.25,
            over_line: true,
            is_anomaly: true,
            edge,
            peak: 0.99,
            forecast_stat: Some(1.0),
            deviation_stat: None,
            top_feature: 1,
            step_ns: 60_000_000_000,
            cold: false,
            maintenance: false,
            stuck_edge: Edge::None,
            stuck_features: 0,
        }
    }

    fn all() -> OutputConfig {
        OutputConfig {
            readings: false,
            horizons: crate::config::Horizons::Named(crate::config::HorizonSet::All),
            ..OutputConfig::default()
        }
    }

    fn batch_of(edge: Edge, horizon: usize) -> BatchOutput {
        BatchOutput::assembled(
            vec![Outcome::Scored(scored(edge))],
            (0..horizon * 6).map(|i| i as f32 * 0.5).collect(),
            vec![0.25, -0.75],
            vec![0.0, 0.0],
        )
    }

    /// `put` appends the bytes `push_str` does, at every length it copies inline and past
    /// it, onto every length of text already there (so at every alignment), with and without
    /// room to spare.
    #[test]
    fn put_appends_what_push_str_appends() {
        let source: String = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .cycle()
            .take(80)
            .collect();
        for before in 0..40 {
            for n in 0..=source.len() {
                let piece = &source[source.len() - n..];
                let mut want = "x".repeat(before);
                let mut got = String::with_capacity(before + (n % 3) * 50);
                got.push_str(&want);
                want.push_str(piece);
                put(&mut got, piece);
                assert_eq!(got, want, "{before} + {n}");
            }
        }
        let mut got = String::from("x");
        put(&mut got, "Grüße, 温度=1");
        assert_eq!(got, "xGrüße, 温度=1");
    }

    /// Tags and string fields without anything to escape are appended as they are; with it,
    /// escaped: both ways give the escaping the character-by-character path gives.
    #[test]
    fn tags_and_string_fields_escape_only_what_they_must() {
        let mut out = String::new();
        push_tag(&mut out, "pump-7 a,b=c\\d\ne");
        assert_eq!(out, "pump-7\\ a\\,b\\=c\\\\d\\ne");
        out.clear();
        push_tag(&mut out, "Grüße-温度_01");
        assert_eq!(out, "Grüße-温度_01");
        out.clear();
        push_str_field(&mut out, "say \"hi\" \\ bye");
        assert_eq!(out, "\"say \\\"hi\\\" \\\\ bye\"");
        out.clear();
        push_str_field(&mut out, "plain, = text");
        assert_eq!(out, "\"plain, = text\"");
    }

    #[test]
    fn line_protocol_round_trips_with_escaping() {
        let features = vec!["temp".to_string(), "vib ration".to_string()];
        let output = all();
        let fmt = PointFormat::new("pumps", "v1", &features, 2, &output);
        let reading = Reading {
            device: "pump 7,a=b".into(),
            ts: 1_000_000_000_000_000_000,
            values: vec![1.0, 2.0],
        };
        let batch = batch_of(Edge::None, 2);
        let mut out = String::new();
        let n = fmt.write_line_protocol(&mut out, &reading, &batch, 0);
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), fmt.volume().points);
        assert_eq!(n, lines.len());
        let first = parse_line_protocol(lines[0]).expect("parses");
        assert_eq!(first.measurement, "forecast");
        assert_eq!(first.tags[1], ("device".into(), "pump 7,a=b".into()));
        assert_eq!(
            first.tags.len(),
            4,
            "stream, device, field, horizon: the model is no tag"
        );
        assert_eq!(first.timestamp, Some(1_000_000_060_000_000_000));
        assert!(
            lines[0].ends_with(",model=\"v1\" 1000000060000000000"),
            "{}",
            lines[0]
        );
        let last = parse_line_protocol(lines[3]).expect("parses");
        assert_eq!(last.tags[2], ("field".into(), "vib ration".into()));
        assert_eq!(last.tags[3], ("horizon".into(), "2".into()));
        assert_eq!(last.timestamp, Some(1_000_000_120_000_000_000));
        let anomaly = parse_line_protocol(lines[4]).expect("parses");
        assert_eq!(anomaly.measurement, "anomaly");
        assert_eq!(anomaly.tags.len(), 2);
        assert_eq!(anomaly.timestamp, Some(reading.ts));
        assert!(
            lines[4].contains("is_anomaly=true,top_field=\"vib ration\""),
            "{}",
            lines[4]
        );
        assert!(
            lines[4].contains(",contrib_temp=0.25,contrib_vib\\ ration=-0.75,model=\"v1\" "),
            "{}",
            lines[4]
        );
        // Every field is counted.
        let samples: usize = lines
            .iter()
            .map(|l| parse_line_protocol(l).expect("parses").fields.len())
            .sum();
        assert_eq!(samples, fmt.volume().samples);
        // The device tag survives a decode with the same schema conventions.
        let schema = Schema::new(vec!["score".into(), "likelihood".into()], "device".into());
        assert!(
            schema.decode_line(None, lines[4].as_bytes()).is_err(),
            "booleans are not features"
        );
    }

    /// Every kind of point, byte for byte: a change to how points are written shows here as
    /// a change made on purpose.
    #[test]
    fn line_protocol_bytes_stay_as_they_are() {
        use crate::config::{HorizonSet, Horizons};
        let features = vec!["temp".to_string(), "vib ration".to_string()];
        let reading = Reading {
            device: "pump 7,a=b".into(),
            ts: 1_000_000_000_000_000_000,
            values: vec![1.5, -2.0],
        };
        let forecasts = || (0..12).map(|i| i as f32 * 0.5 - 1.0).collect::<Vec<f32>>();
        let mut out = String::new();
        // Everything written, in maintenance, with both alarms raised.
        let every = OutputConfig {
            horizons: Horizons::Named(HorizonSet::All),
            ..OutputConfig::default()
        };
        let fmt = PointFormat::new("pumps", "v1", &features, 2, &every);
        let mut s = scored(Edge::Raised {
            start: 999_999_940_000_000_000,
        });
        s.maintenance = true;
        s.stuck_edge = Edge::Raised {
            start: 999_999_880_000_000_000,
        };
        s.stuck_features = 0b11;
        let batch = BatchOutput::assembled(
            vec![Outcome::Scored(s)],
            forecasts(),
            vec![0.25, -0.75],
            vec![0.5, -0.125],
        );
        let raised = fmt.write_line_protocol(&mut out, &reading, &batch, 0);
        // Both alarms cleared, no model version, the basic fields, no band, the last step.
        let basic = OutputConfig {
            readings: false,
            horizons: Horizons::Named(HorizonSet::Last),
            band: false,
            forecast_every: 1,
            anomaly: AnomalyFields::Basic,
        };
        let plain = PointFormat::new("pumps", "", &features, 2, &basic);
        s.maintenance = false;
        s.edge = Edge::Cleared {
            start: 999_999_940_000_000_000,
            end: 1_000_000_000_000_000_000,
        };
        s.stuck_edge = Edge::Cleared {
            start: 999_999_880_000_000_000,
            end: 1_000_000_000_000_000_000,
        };
        let batch = BatchOutput::assembled(
            vec![Outcome::Scored(s)],
            forecasts(),
            vec![0.25, -0.75],
            vec![0.5, -0.125],
        );
        let cleared = plain.write_line_protocol(&mut out, &reading, &batch, 0);
        // Nothing explained (every contribution 0): no top field.
        let batch = BatchOutput::assembled(
            vec![Outcome::Scored(scored(Edge::None))],
            forecasts(),
            vec![0.0, 0.0],
            vec![0.0, 0.0],
        );
        let unexplained = fmt.write_line_protocol(&mut out, &reading, &batch, 0);
        // Not stepped: nothing.
        let batch = BatchOutput::assembled(
            vec![Outcome::Stale { last_ts: 0 }],
            forecasts(),
            vec![0.0, 0.0],
            vec![0.0, 0.0],
        );
        let stale = fmt.write_line_protocol(&mut out, &reading, &batch, 0);
        let silent = fmt.write_silent_event(
            &mut out,
            &SilentEvent {
                reading: 0,
                device: "pump 7,a=b".into(),
                edge: Edge::Cleared {
                    start: 999_999_000_000_000_000,
                    end: 1_000_000_000_000_000_000,
                },
            },
        );
        assert_eq!(
            (raised, cleared, unexplained, stale, silent),
            (8, 5, 6, 0, 1)
        );
        let expected = [
            r#"reading,stream=pumps,device=pump\ 7\,a\=b temp=1.5,vib\ ration=-2.0 1000000000000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=temp,horizon=1 yhat=-1.0,yhat_lower=-0.5,yhat_upper=0.0,model="v1" 1000000060000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=vib\ ration,horizon=1 yhat=0.5,yhat_lower=1.0,yhat_upper=1.5,model="v1" 1000000060000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=temp,horizon=2 yhat=2.0,yhat_lower=2.5,yhat_upper=3.0,model="v1" 1000000120000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=vib\ ration,horizon=2 yhat=3.5,yhat_lower=4.0,yhat_upper=4.5,model="v1" 1000000120000000000"#,
            r#"anomaly,stream=pumps,device=pump\ 7\,a\=b score=0.5,forecast_score=0.4,deviation_score=0.3,likelihood=0.25,over_line=true,is_anomaly=true,maintenance=true,top_field="vib ration",contrib_temp=0.25,contrib_vib\ ration=-0.75,model="v1" 1000000000000000000"#,
            r#"anomaly_event,stream=pumps,device=pump\ 7\,a\=b,kind=anomaly active=true,start=999999940000000000i,peak_score=0.99,top_fields="temp high, vib ration low",contrib_temp=0.5,contrib_vib\ ration=-0.125,model="v1" 999999940000000000"#,
            r#"anomaly_event,stream=pumps,device=pump\ 7\,a\=b,kind=stuck active=true,start=999999880000000000i,top_fields="temp flat, vib ration flat",model="v1" 999999880000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=temp,horizon=2 yhat=2.0 1000000120000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=vib\ ration,horizon=2 yhat=3.5 1000000120000000000"#,
            r#"anomaly,stream=pumps,device=pump\ 7\,a\=b score=0.5,likelihood=0.25,is_anomaly=true,top_field="vib ration" 1000000000000000000"#,
            r#"anomaly_event,stream=pumps,device=pump\ 7\,a\=b,kind=anomaly active=false,start=999999940000000000i,end=1000000000000000000i,duration_s=60.0,peak_score=0.99,top_fields="temp high, vib ration low",contrib_temp=0.5,contrib_vib\ ration=-0.125 999999940000000000"#,
            r#"anomaly_event,stream=pumps,device=pump\ 7\,a\=b,kind=stuck active=false,start=999999880000000000i,end=1000000000000000000i,duration_s=120.0,top_fields="temp flat, vib ration flat" 999999880000000000"#,
            r#"reading,stream=pumps,device=pump\ 7\,a\=b temp=1.5,vib\ ration=-2.0 1000000000000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=temp,horizon=1 yhat=-1.0,yhat_lower=-0.5,yhat_upper=0.0,model="v1" 1000000060000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=vib\ ration,horizon=1 yhat=0.5,yhat_lower=1.0,yhat_upper=1.5,model="v1" 1000000060000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=temp,horizon=2 yhat=2.0,yhat_lower=2.5,yhat_upper=3.0,model="v1" 1000000120000000000"#,
            r#"forecast,stream=pumps,device=pump\ 7\,a\=b,field=vib\ ration,horizon=2 yhat=3.5,yhat_lower=4.0,yhat_upper=4.5,model="v1" 1000000120000000000"#,
            r#"anomaly,stream=pumps,device=pump\ 7\,a\=b score=0.5,forecast_score=0.4,deviation_score=0.3,likelihood=0.25,over_line=true,is_anomaly=true,top_field="",contrib_temp=0.0,contrib_vib\ ration=0.0,model="v1" 1000000000000000000"#,
            r#"anomaly_event,stream=pumps,device=pump\ 7\,a\=b,kind=silent active=false,start=999999000000000000i,end=1000000000000000000i,duration_s=1000.0,top_fields="",model="v1" 999999000000000000"#,
        ];
        assert_eq!(out, format!("{}\n", expected.join("\n")));
    }

    #[test]
    fn output_controls_pick_steps_band_fields_readings_and_thin_forecasts() {
        use crate::config::{HorizonSet, Horizons};
        let features = vec!["temp".to_string(), "flow".to_string()];
        let output = OutputConfig {
            readings: true,
            horizons: Horizons::Named(HorizonSet::Ends),
            band: false,
            forecast_every: 1,
            anomaly: AnomalyFields::Basic,
        };
        let fmt = PointFormat::new("pumps", "v1", &features, 3, &output);
        let reading = Reading {
            device: "p".into(),
            ts: 600_000_000_000,
            values: vec![1.5, -2.0],
        };
        let mut out = String::new();
        let n = fmt.write_line_protocol(&mut out, &reading, &batch_of(Edge::None, 3), 0);
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(n, 1 + 2 * 2 + 1, "{out}");
        assert_eq!(
            fmt.volume(),
            Volume {
                points: 6,
                samples: 2 + 4 * 2 + 5
            }
        );
        assert_eq!(
            lines[0],
            "reading,stream=pumps,device=p temp=1.5,flow=-2.0 600000000000"
        );
        let horizons: Vec<_> = lines[1..5]
            .iter()
            .map(|l| parse_line_protocol(l).expect("parses").tags[3].1.clone())
            .collect();
        assert_eq!(horizons, ["1", "1", "3", "3"]);
        assert!(!out.contains("yhat_lower"), "{out}");
        assert!(
            lines[5].starts_with("anomaly,stream=pumps,device=p score=0.5,likelihood=")
                && !lines[5].contains("contrib_")
                && lines[5].contains("model=\"v1\""),
            "{}",
            lines[5]
        );
        // Every 3rd reading's forecasts, by event time: readings 60 s apart.
        let thin = OutputConfig {
            forecast_every: 3,
            readings: false,
            ..output.clone()
        };
        let fmt = PointFormat::new("pumps", "v1", &features, 3, &thin);
        let with_forecasts: Vec<i64> = (0..9)
            .filter(|k| {
                let r = Reading {
                    ts: 600_000_000_000 + k * 60_000_000_000,
                    ..reading.clone()
                };
                let mut out = String::new();
                fmt.write_line_protocol(&mut out, &r, &batch_of(Edge::None, 3), 0) > 1
            })
            .collect();
        assert_eq!(with_forecasts.len(), 3, "{with_forecasts:?}");
        assert_eq!(with_forecasts[1] - with_forecasts[0], 3);
    }

    #[test]
    fn alarm_edges_write_one_event_point_at_the_alarm_start() {
        let features = vec!["pressure".to_string(), "flow".to_string()];
        let output = all();
        let fmt = PointFormat::new("pumps", "v1", &features, 1, &output);
        let reading = Reading {
            device: "pump-7".into(),
            ts: 2_000,
            values: vec![1.0, 2.0],
        };
        let mut points = Vec::new();
        for edge in [
            Edge::Raised { start: 1_000 },
            Edge::Cleared {
                start: 1_000,
                end: 3_000_001_000,
            },
        ] {
            let batch = BatchOutput::assembled(
                vec![Outcome::Scored(scored(edge))],
                vec![0.0; 6],
                vec![-0.3, -0.7],
                vec![-0.4, -0.6],
            );
            let mut out = String::new();
            assert_eq!(fmt.write_line_protocol(&mut out, &reading, &batch, 0), 4);
            let line = out.lines().last().expect("event line").to_string();
            let p = parse_line_protocol(&line).expect("parses");
            assert_eq!(p.measurement, "anomaly_event");
            assert_eq!(p.timestamp, Some(1_000), "keyed by the alarm's start");
            assert!(
                line.contains("top_fields=\"flow low, pressure low\""),
                "{line}"
            );
            points.push(line);
        }
        assert!(
            points[0].contains("active=true,start=1000i,peak_score="),
            "{}",
            points[0]
        );
        assert!(
            points[1].contains("active=false,start=1000i,end=3000001000i,duration_s=3.0,"),
            "{}",
            points[1]
        );
    }

    #[test]
    fn a_verdict_lands_on_its_alarms_series_and_timestamp() {
        let cfg = OutputConfig::default();
        let features = ["p".to_string()];
        let fmt = PointFormat::new("pump s", "v1", &features, 1, &cfg);
        let mut event = String::new();
        let e = SilentEvent {
            device: "p 1".into(),
            reading: 0,
            edge: Edge::Raised {
                start: 1_795_000_000_000_000_000,
            },
        };
        fmt.write_silent_event(&mut event, &e);
        let label = crate::labels::Label {
            stream: "pump s".into(),
            device: "p 1".into(),
            kind: "silent".into(),
            at: "2026-11-18T11:06:40Z".into(),
            until: None,
            verdict: crate::labels::Verdict::False,
            by: "ana".into(),
            note: "valve \"A\"\nclosed".into(),
            recorded_at: "1795000001000000000".into(),
        };
        let mut v = String::new();
        write_verdict(&mut v, &label);
        let series = |l: &str| l.split(' ').next().map(String::from);
        let ts = |l: &str| l.trim_end().rsplit(' ').next().map(String::from);
        assert_eq!(
            series(&v.replace("\\ ", "_")),
            series(&event.replace("\\ ", "_"))
        );
        assert_eq!(ts(&v), ts(&event));
        assert_eq!(
            v,
            "anomaly_event,stream=pump\\ s,device=p\\ 1,kind=silent verdict=\"false\",labelled_by=\"ana\",label_note=\"valve \\\"A\\\" closed\",labelled_at=1795000001000000000i 1795000000000000000\n"
        );
    }

    #[test]
    fn a_csv_row_fits_the_header_and_names_a_stuck_sensor() {
        let cfg = all();
        let features = ["p".to_string(), "q".to_string()];
        let fmt = PointFormat::new("s", "v1", &features, 1, &cfg);
        let mut b = batch_of(Edge::None, 1);
        if let Outcome::Scored(s) = &mut b.outcomes[0] {
            s.stuck_edge = Edge::Raised { start: 5 };
            s.stuck_features = 0b10;
        }
        let r = crate::decode::Reading {
            device: "d".into(),
            ts: 1_795_000_000_000_000_000,
            values: vec![1.0, 2.0],
        };
        let mut text = fmt.csv_header();
        text.push('\n');
        fmt.write_csv_row(&mut text, &r, &b, 0);
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let header = rdr.headers().expect("header").clone();
        let row = rdr.records().next().expect("a row").expect("parses");
        assert_eq!(row.len(), header.len());
        let at = |name: &str| &row[header.iter().position(|h| h == name).expect(name)];
        assert_eq!(at("stuck"), "raised");
        assert_eq!(at("stuck_fields"), "q flat");
        assert_eq!(at("alarm"), "");
        assert_eq!(at("explanation"), "q low, p high");
    }
}
