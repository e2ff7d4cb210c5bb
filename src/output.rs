//! Output points (DESIGN.md §5): InfluxDB line protocol and CSV renderings of a stepped reading.
//!
//! Keeps invariant §3.2 (replays are harmless): every point carries the reading's event time
//! (forecasts: the time they forecast) and a tag set fixed by stream, device, field, horizon
//! and model version, so writing the same reading again overwrites the same points.

use crate::decode::Reading;
use crate::engine::Scored;
use std::fmt::Write;

/// Writes a tag key or value with line-protocol escaping (comma, equals sign, space).
fn push_tag(out: &mut String, s: &str) {
    for ch in s.chars() {
        if matches!(ch, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        if ch == '\n' {
            out.push_str("\\n");
        } else {
            out.push(ch);
        }
    }
}

/// Writes a string field value with its quotes escaped.
fn push_str_field(out: &mut String, s: &str) {
    out.push('"');
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
    /// Stream name (the `stream` tag).
    pub stream: &'a str,
    /// Model version (the `model` tag).
    pub model: &'a str,
    /// Feature names in model order.
    pub features: &'a [String],
    /// Forecast steps.
    pub horizon: usize,
}

impl PointFormat<'_> {
    /// Points per stepped reading: one `anomaly` and `horizon × features` `forecast` points.
    pub fn points_per_reading(&self) -> usize {
        1 + self.horizon * self.features.len()
    }

    /// Appends the line-protocol points of a reading to `out`, one per line.
    pub fn write_line_protocol(
        &self,
        out: &mut String,
        reading: &Reading,
        scored: &Scored,
        forecast: &[f32],
    ) {
        let nf = self.features.len();
        for h in 0..self.horizon {
            let target = reading
                .ts
                .saturating_add((h as i64 + 1).saturating_mul(scored.step_ns));
            for (f, name) in self.features.iter().enumerate() {
                let k = (h * nf + f) * 3;
                out.push_str("forecast,stream=");
                push_tag(out, self.stream);
                out.push_str(",device=");
                push_tag(out, &reading.device);
                out.push_str(",field=");
                push_tag(out, name);
                let _ = write!(out, ",horizon={},model=", h + 1);
                push_tag(out, self.model);
                let _ = writeln!(
                    out,
                    " yhat={},yhat_lower={},yhat_upper={} {}",
                    forecast[k],
                    forecast[k + 1],
                    forecast[k + 2],
                    target
                );
            }
        }
        out.push_str("anomaly,stream=");
        push_tag(out, self.stream);
        out.push_str(",device=");
        push_tag(out, &reading.device);
        out.push_str(",model=");
        push_tag(out, self.model);
        let _ = write!(
            out,
            " score={},likelihood={},is_anomaly={},top_field=",
            scored.score, scored.likelihood, scored.is_anomaly
        );
        let top = if scored.cold {
            ""
        } else {
            self.features[scored.top_feature].as_str()
        };
        push_str_field(out, top);
        let _ = writeln!(out, " {}", reading.ts);
    }

    /// The CSV header matching [`PointFormat::write_csv_row`].
    pub fn csv_header(&self) -> String {
        let mut s = String::from(
            "device,ts,model,score,likelihood,is_anomaly,top_field,value_of_top_field",
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

    /// One CSV row per stepped reading (RFC 3339 timestamps).
    pub fn write_csv_row(
        &self,
        out: &mut String,
        reading: &Reading,
        scored: &Scored,
        forecast: &[f32],
    ) {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let top = if scored.cold {
            ""
        } else {
            self.features[scored.top_feature].as_str()
        };
        let top_value = if scored.cold {
            String::new()
        } else {
            reading.values[scored.top_feature].to_string()
        };
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{}",
            quote(&reading.device),
            crate::decode::format_ts(reading.ts),
            quote(self.model),
            scored.score,
            scored.likelihood,
            scored.is_anomaly,
            quote(top),
            top_value
        );
        for v in &forecast[..self.horizon * self.features.len() * 3] {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Schema, parse_line_protocol};

    #[test]
    fn line_protocol_round_trips_with_escaping() {
        let features = vec!["temp".to_string(), "vib ration".to_string()];
        let fmt = PointFormat {
            stream: "pumps",
            model: "v1",
            features: &features,
            horizon: 2,
        };
        let reading = Reading {
            device: "pump 7,a=b".into(),
            ts: 1_000_000_000_000_000_000,
            values: vec![1.0, 2.0],
        };
        let scored = Scored {
            score: 0.5,
            likelihood: 0.25,
            is_anomaly: true,
            top_feature: 1,
            step_ns: 60_000_000_000,
            cold: false,
        };
        let forecast: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let mut out = String::new();
        fmt.write_line_protocol(&mut out, &reading, &scored, &forecast);
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), fmt.points_per_reading());
        let first = parse_line_protocol(lines[0]).expect("parses");
        assert_eq!(first.measurement, "forecast");
        assert_eq!(first.tags[1], ("device".into(), "pump 7,a=b".into()));
        assert_eq!(first.timestamp, Some(1_000_000_060_000_000_000));
        let last = parse_line_protocol(lines[3]).expect("parses");
        assert_eq!(last.tags[2], ("field".into(), "vib ration".into()));
        assert_eq!(last.tags[3], ("horizon".into(), "2".into()));
        assert_eq!(last.timestamp, Some(1_000_000_120_000_000_000));
        let anomaly = parse_line_protocol(lines[4]).expect("parses");
        assert_eq!(anomaly.measurement, "anomaly");
        assert_eq!(anomaly.timestamp, Some(reading.ts));
        assert!(
            lines[4].contains("is_anomaly=true,top_field=\"vib ration\""),
            "{}",
            lines[4]
        );
        // The device tag survives a decode with the same schema conventions.
        let schema = Schema::new(vec!["score".into(), "likelihood".into()], "device".into());
        assert!(
            schema.decode_line(None, lines[4].as_bytes()).is_err(),
            "booleans are not features"
        );
    }
}
