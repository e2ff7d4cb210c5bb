//! Event times: nanoseconds since the epoch, the range a reading's time may lie in, and their
//! text forms (RFC 3339 or an integer epoch in s, ms, µs or ns, told apart by size).
//!
//! The lowest layer: configuration, decoding and the offline tools all read and print times
//! with these functions, so a time means the same everywhere.

/// Earliest accepted event time (1990-01-01T00:00:00Z): older is treated as absurd.
pub const MIN_TS: i64 = 631_152_000_000_000_000;
/// Latest accepted event time (2200-01-01T00:00:00Z).
pub const MAX_TS: i64 = 7_258_118_400_000_000_000;

/// A timestamp that does not parse or lies outside 1990..2200.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(pub String);

pub fn check_ts_range(ts: i64) -> Result<(), TimeError> {
    if (MIN_TS..MAX_TS).contains(&ts) {
        Ok(())
    } else {
        Err(TimeError(format!(
            "{ts} ns since the epoch is outside 1990-01-01..2200-01-01"
        )))
    }
}

/// Integer epoch in seconds, milliseconds, microseconds or nanoseconds, told apart by size.
pub fn epoch_by_magnitude(v: i64) -> Result<i64, TimeError> {
    let a = v.unsigned_abs();
    let ns = if a < 100_000_000_000 {
        v.checked_mul(1_000_000_000)
    } else if a < 100_000_000_000_000 {
        v.checked_mul(1_000_000)
    } else if a < 100_000_000_000_000_000 {
        v.checked_mul(1_000)
    } else {
        Some(v)
    };
    let ns = ns.ok_or_else(|| TimeError(format!("{v} overflows")))?;
    check_ts_range(ns)?;
    Ok(ns)
}

/// RFC 3339 text (`2026-11-27T03:00:00Z`) or an integer epoch written as text.
pub fn parse_ts_text(s: &str) -> Result<i64, TimeError> {
    let t = s.trim();
    if let Ok(v) = t.parse::<i64>() {
        return epoch_by_magnitude(v);
    }
    let dt = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
        TimeError(format!(
            "{t:?} is neither RFC 3339 nor an integer epoch ({e})"
        ))
    })?;
    let ns = dt
        .timestamp_nanos_opt()
        .ok_or_else(|| TimeError(format!("{t:?} is out of range")))?;
    check_ts_range(ns)?;
    Ok(ns)
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC).
pub fn format_ts(ts: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}
