//! Decoding readings: JSON and InfluxDB line protocol messages (docs/ARCHITECTURE.md §5), and CSV or
//! either message format in files.
//!
//! Keeps invariant §3.4 (bad input is contained) at the edge: every failure is a
//! [`DecodeError`] with a stable `reason()` (a metric label) and a message that names the
//! field, so callers can count it, log it and dead-letter it without ever panicking.

mod json;

use crate::config::{Format, StreamConfig};
use crate::time::{TimeError, check_ts_range, epoch_by_magnitude, parse_ts_text};
use json::Json;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

/// One sensor reading, validated against its stream's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device id.
    pub device: String,
    /// Event time, nanoseconds since the Unix epoch.
    pub ts: i64,
    /// One finite value per schema feature, in schema order.
    pub values: Vec<f32>,
}

/// Longest accepted device id: ids are kept per device in memory and written as tags.
pub const MAX_DEVICE_ID_BYTES: usize = 256;

/// Why a message or line could not become a [`Reading`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON, or not an object of the expected shape.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Not valid line protocol.
    #[error("invalid line protocol: {0}")]
    InvalidLineProtocol(#[from] LineProtocolError),
    /// Not a valid CSV record.
    #[error("invalid CSV: {0}")]
    InvalidCsv(String),
    /// No device id in the key or the payload.
    #[error("missing device id (no message key and no {0:?} field or tag)")]
    MissingDevice(String),
    /// A device id that is too long or has control characters.
    #[error("invalid device id: {0}")]
    InvalidDevice(String),
    /// No timestamp.
    #[error("missing timestamp")]
    MissingTimestamp,
    /// A timestamp that does not parse or lies outside 1990..2200.
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    /// A feature value of the wrong type.
    #[error("feature {feature:?} has the wrong type: {found}")]
    WrongType {
        /// Feature.
        feature: String,
        /// What was found instead of a number.
        found: String,
    },
    /// NaN or ±inf.
    #[error("feature {0:?} is not a finite number")]
    NotFinite(String),
    /// A feature the stream's schema does not list.
    #[error("unknown feature {feature:?} (the stream's features are {known})")]
    UnknownFeature {
        /// Feature.
        feature: String,
        /// The schema's features, comma-separated.
        known: String,
    },
    /// A schema feature absent from the reading.
    #[error("missing feature {0:?}")]
    MissingFeature(String),
    /// A timestamp further ahead of the wall clock than allowed.
    #[error(
        "timestamp {ts} is {ahead_s:.0} s ahead of the wall clock (allowed: {allowed_s:.0} s, engine.max_future)"
    )]
    FutureTimestamp {
        /// The reading's time (RFC 3339).
        ts: String,
        /// Seconds ahead.
        ahead_s: f64,
        /// Seconds allowed.
        allowed_s: f64,
    },
    /// Payload larger than allowed.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
}

impl From<TimeError> for DecodeError {
    fn from(e: TimeError) -> Self {
        DecodeError::BadTimestamp(e.0)
    }
}

impl DecodeError {
    /// A short, stable label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::InvalidLineProtocol(_) => "invalid_line_protocol",
            DecodeError::InvalidCsv(_) => "invalid_csv",
            DecodeError::MissingDevice(_) => "missing_device",
            DecodeError::InvalidDevice(_) => "invalid_device",
            DecodeError::MissingTimestamp => "missing_timestamp",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::NotFinite(_) => "not_finite",
            DecodeError::UnknownFeature { .. } => "unknown_feature",
            DecodeError::MissingFeature(_) => "missing_feature",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::FutureTimestamp { .. } => "future_timestamp",
        }
    }
}

/// A stream's schema: feature names in model order and where the device id lives.
#[derive(Debug, Clone)]
pub struct Schema {
    features: Vec<String>,
    index: HashMap<String, usize>,
    /// No feature is listed twice, so a name found at a position has that index.
    unique: bool,
    device_key: String,
}

impl json::Fields for Schema {
    fn absent(&self) -> Vec<f32> {
        Schema::absent(self)
    }
    fn position(&self, key: &str, hint: usize) -> Option<usize> {
        Schema::position(self, key, hint)
    }
    fn name(&self, i: usize) -> &str {
        &self.features[i]
    }
    fn device_key(&self) -> &str {
        &self.device_key
    }
}

impl Schema {
    /// Schema of a configured stream.
    pub fn from_stream(stream: &StreamConfig) -> Self {
        Self::new(stream.features.clone(), stream.device_key.clone())
    }

    /// Schema from feature names and the device field/tag name.
    pub fn new(features: Vec<String>, device_key: String) -> Self {
        let index = features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i))
            .collect::<HashMap<_, _>>();
        Self {
            unique: index.len() == features.len(),
            features,
            index,
            device_key,
        }
    }

    /// Feature names in order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// A feature's index; the one at `hint` is tried first, a comparison being cheaper than
    /// hashing when messages list features in schema order.
    fn position(&self, feature: &str, hint: usize) -> Option<usize> {
        match self.features.get(hint) {
            Some(f) if self.unique && f == feature => Some(hint),
            _ => self.index.get(feature).copied(),
        }
    }

    /// The error of a `values` entry the JSON reader could not use.
    fn unusable(&self, u: json::Unusable) -> DecodeError {
        match u.why {
            None => self.unknown(&u.feature),
            Some(json::Bad::NotFinite) => DecodeError::NotFinite(u.feature),
            Some(json::Bad::WrongType(found)) => DecodeError::WrongType {
                feature: u.feature,
                found: found.into(),
            },
        }
    }

    fn unknown(&self, feature: &str) -> DecodeError {
        DecodeError::UnknownFeature {
            feature: feature.to_string(),
            known: self.features.join(", "),
        }
    }

    /// One value per feature, each NaN until [`Schema::set`] stores it (it stores only finite
    /// values, so NaN means "absent" and the vector becomes the reading's as it is).
    fn absent(&self) -> Vec<f32> {
        vec![f32::NAN; self.features.len()]
    }

    fn finish(
        &self,
        device: Option<String>,
        ts: Option<i64>,
        values: Vec<f32>,
    ) -> Result<Reading, DecodeError> {
        let device = device
            .filter(|d| !d.is_empty())
            .ok_or_else(|| DecodeError::MissingDevice(self.device_key.clone()))?;
        if device.len() > MAX_DEVICE_ID_BYTES || device.chars().any(char::is_control) {
            let shown: String = device.chars().take(40).collect();
            return Err(DecodeError::InvalidDevice(format!(
                "{shown:?}… must be at most {MAX_DEVICE_ID_BYTES} bytes without control characters"
            )));
        }
        let ts = ts.ok_or(DecodeError::MissingTimestamp)?;
        check_ts_range(ts)?;
        if let Some(i) = values.iter().position(|v| v.is_nan()) {
            return Err(DecodeError::MissingFeature(self.features[i].clone()));
        }
        Ok(Reading { device, ts, values })
    }

    fn set(&self, values: &mut [f32], feature: &str, v: f64) -> Result<(), DecodeError> {
        let i = *self
            .index
            .get(feature)
            .ok_or_else(|| self.unknown(feature))?;
        self.store(values, i, feature, v)
    }

    /// Stores feature `i`'s value if it is finite both as read (`f64`) and as kept (`f32`).
    fn store(
        &self,
        values: &mut [f32],
        i: usize,
        feature: &str,
        v: f64,
    ) -> Result<(), DecodeError> {
        let f = v as f32;
        if !v.is_finite() || !f.is_finite() {
            return Err(DecodeError::NotFinite(feature.to_string()));
        }
        values[i] = f;
        Ok(())
    }

    /// Decodes a JSON message `{"device":…,"ts":…,"values":{…}}`; `key` (the Kafka message key)
    /// is the device id unless the payload names one.
    pub fn decode_json(&self, key: Option<&str>, payload: &[u8]) -> Result<Reading, DecodeError> {
        let message = json::parse(self, payload)
            .map_err(|e| DecodeError::InvalidJson(e.to_string()))?
            .ok_or_else(|| DecodeError::InvalidJson("expected a JSON object".into()))?;
        let device = match message.device {
            Some(Json::Str(s)) => Some(s.into_owned()),
            Some(Json::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(DecodeError::InvalidJson(format!(
                    "{:?} must be a string, found {}",
                    self.device_key,
                    other.kind()
                )));
            }
            None => key.map(str::to_string),
        };
        let ts = json_ts(message.ts)?;
        let values = match (message.values, message.features) {
            (Some(Json::Object), Some(features)) => {
                features.into_values(self).map_err(|u| self.unusable(u))?
            }
            (Some(other), _) => {
                return Err(DecodeError::InvalidJson(format!(
                    "\"values\" must be an object, found {}",
                    other.kind()
                )));
            }
            (None, _) => {
                return Err(DecodeError::InvalidJson("missing \"values\" object".into()));
            }
        };
        self.finish(device, ts, values)
    }

    /// Decodes one InfluxDB line-protocol line as Telegraf's Kafka output writes it:
    /// `measurement,device=pump-7 vibration=0.12,temp=71.3 1795748248000000000`
    /// (timestamp in nanoseconds). The device comes from the `device_key` tag, else `key`.
    pub fn decode_line(&self, key: Option<&str>, line: &[u8]) -> Result<Reading, DecodeError> {
        let text = std::str::from_utf8(line).map_err(|_| LineProtocolError::NotUtf8)?;
        let line = text.trim_end_matches(['\n', '\r']);
        let mut device = None;
        let (mut values, mut next, mut error) = (self.absent(), 0, None);
        // A bad field is reported only once the whole line has parsed, as a syntax error
        // further on wins; the first bad field in line order is the one reported.
        let (_, ts) = scan_line(
            line,
            |k, v| {
                if device.is_none() && k == self.device_key.as_str() {
                    device = Some(v);
                }
            },
            |name, value| {
                if error.is_none() {
                    error = self.line_field(&mut values, &mut next, &name, value).err();
                }
            },
        )?;
        if let Some(e) = error {
            return Err(e);
        }
        let device = device
            .map(Cow::into_owned)
            .or_else(|| key.map(str::to_string));
        self.finish(device, ts, values)
    }

    /// Stores one line-protocol field; `next` is where the next field is looked for first.
    fn line_field(
        &self,
        values: &mut [f32],
        next: &mut usize,
        name: &str,
        value: LpValue,
    ) -> Result<(), DecodeError> {
        let i = self
            .position(name, *next)
            .ok_or_else(|| self.unknown(name))?;
        *next = i + 1;
        match value {
            LpValue::Number(x) => self.store(values, i, name, x),
            other => Err(DecodeError::WrongType {
                feature: name.to_string(),
                found: other.kind().into(),
            }),
        }
    }
}

/// A JSON message's timestamp: RFC 3339 or integer epoch text, or an integer epoch.
fn json_ts(ts: Option<Json<'_>>) -> Result<Option<i64>, DecodeError> {
    match ts {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => Ok(Some(parse_ts_text(&s)?)),
        Some(Json::Number(n)) => {
            let epoch = n
                .as_i64()
                .ok_or_else(|| DecodeError::BadTimestamp(format!("{n} is not an integer epoch")))?;
            Ok(Some(epoch_by_magnitude(epoch)?))
        }
        Some(other) => Err(DecodeError::BadTimestamp(format!(
            "expected a string or integer, found {}",
            other.kind()
        ))),
    }
}

/// A field value of line protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum LpValue {
    /// Float, integer (`i`) or unsigned (`u`).
    Number(f64),
    /// `t`, `true`, `f`, `false`, …
    Bool(bool),
    /// Double-quoted string.
    Str(String),
}

impl LpValue {
    fn kind(&self) -> &'static str {
        match self {
            LpValue::Number(_) => "a number",
            LpValue::Bool(_) => "a boolean",
            LpValue::Str(_) => "a string",
        }
    }
}

/// A parsed line-protocol line.
#[derive(Debug, Clone, PartialEq)]
pub struct LineProtocol {
    /// Measurement.
    pub measurement: String,
    /// Tags in order.
    pub tags: Vec<(String, String)>,
    /// Fields in order.
    pub fields: Vec<(String, LpValue)>,
    /// Timestamp (nanoseconds), if present.
    pub timestamp: Option<i64>,
}

/// Where an unescaped token of line protocol ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// A measurement or tag value: at `,` or space.
    Value,
    /// A tag or field key: also at `=`.
    Key,
}

impl End {
    fn chars(self) -> &'static [char] {
        match self {
            End::Value => &[',', ' '],
            End::Key => &['=', ',', ' '],
        }
    }
}

/// Reads up to an unescaped delimiter; backslash escapes the next character. Borrows from `s`
/// unless there is a backslash to deal with.
#[inline]
fn take_escaped(s: &str, end: End) -> (Cow<'_, str>, &str) {
    // Delimiters and `\` are ASCII, and UTF-8 never has an ASCII byte inside a character.
    let special =
        |&b: &u8| matches!(b, b',' | b' ' | b'\\') || matches!((end, b), (End::Key, b'='));
    match s.as_bytes().iter().position(special) {
        None => (Cow::Borrowed(s), ""),
        Some(i) if s.as_bytes()[i] != b'\\' => (Cow::Borrowed(&s[..i]), &s[i..]),
        Some(_) => {
            let (owned, rest) = take_escaped_owned(s, end.chars());
            (Cow::Owned(owned), rest)
        }
    }
}

/// [`take_escaped`] where an escape has to be removed.
fn take_escaped_owned<'a>(s: &'a str, stops: &[char]) -> (String, &'a str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, n))
                    if stops.contains(&n) || n == '\\' || n == '=' || n == ',' || n == ' ' =>
                {
                    out.push(n)
                }
                Some((_, n)) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else if stops.contains(&c) {
            return (out, &s[i..]);
        } else {
            out.push(c);
        }
    }
    (out, "")
}

/// What is wrong with a line of line protocol.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineProtocolError {
    /// The bytes are not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// Blank.
    #[error("empty line")]
    Empty,
    /// It starts with a comma or space.
    #[error("missing measurement")]
    NoMeasurement,
    /// A tag without `=`.
    #[error("tag {0:?} has no '='")]
    TagWithoutValue(String),
    /// A tag with an empty key or value.
    #[error("empty tag key or value near {0:?}")]
    EmptyTag(String),
    /// Nothing after the measurement and tags.
    #[error("missing fields")]
    NoFields,
    /// A field without `=`.
    #[error("field {0:?} has no '='")]
    FieldWithoutValue(String),
    /// A field with an empty key.
    #[error("empty field key")]
    EmptyFieldKey,
    /// A string field without its closing quote.
    #[error("field {0:?}: unterminated string")]
    UnterminatedString(String),
    /// A field value that is not a number, boolean or string.
    #[error("field {field:?}: {raw:?} is not a number, boolean or string")]
    NotAValue {
        /// The field.
        field: String,
        /// Its value as written.
        raw: String,
    },
    /// A field marked integer (`i`, `u`) that is not one.
    #[error("field {field:?}: {raw:?} is not an integer")]
    NotAnInteger {
        /// The field.
        field: String,
        /// Its value as written.
        raw: String,
    },
    /// A timestamp that is not an integer.
    #[error("timestamp {0:?} is not an integer")]
    BadTimestamp(String),
}

/// Parses one line of InfluxDB line protocol.
pub fn parse_line_protocol(line: &str) -> Result<LineProtocol, LineProtocolError> {
    let (mut tags, mut fields) = (Vec::new(), Vec::new());
    let (measurement, timestamp) = scan_line(
        line,
        |k, v| tags.push((k.into_owned(), v.into_owned())),
        |k, v| fields.push((k.into_owned(), v)),
    )?;
    Ok(LineProtocol {
        measurement: measurement.into_owned(),
        tags,
        fields,
        timestamp,
    })
}

/// Reads one line of line protocol, handing each tag and field to `tag` and `field` in line
/// order (names and tag values borrowed from the line unless escaped); returns the
/// measurement and the timestamp.
fn scan_line<'a>(
    line: &'a str,
    mut tag: impl FnMut(Cow<'a, str>, Cow<'a, str>),
    mut field: impl FnMut(Cow<'a, str>, LpValue),
) -> Result<(Cow<'a, str>, Option<i64>), LineProtocolError> {
    use LineProtocolError as E;
    if line.trim().is_empty() {
        return Err(E::Empty);
    }
    let (measurement, mut rest) = take_escaped(line, End::Value);
    if measurement.is_empty() {
        return Err(E::NoMeasurement);
    }
    while let Some(r) = rest.strip_prefix(',') {
        let (k, r) = take_escaped(r, End::Key);
        let Some(r) = r.strip_prefix('=') else {
            return Err(E::TagWithoutValue(k.into_owned()));
        };
        let (v, r) = take_escaped(r, End::Value);
        if k.is_empty() || v.is_empty() {
            return Err(E::EmptyTag(k.into_owned()));
        }
        tag(k, v);
        rest = r;
    }
    let mut rest = rest
        .strip_prefix(' ')
        .ok_or(E::NoFields)?
        .trim_start_matches(' ');
    loop {
        let (k, r) = take_escaped(rest, End::Key);
        let Some(r) = r.strip_prefix('=') else {
            return Err(E::FieldWithoutValue(k.into_owned()));
        };
        if k.is_empty() {
            return Err(E::EmptyFieldKey);
        }
        let (value, r) = match r.strip_prefix('"') {
            Some(q) => quoted_value(&k, q)?,
            None => unquoted_value(&k, r)?,
        };
        field(k, value);
        match r.strip_prefix(',') {
            Some(r) => rest = r,
            None => {
                rest = r;
                break;
            }
        }
    }
    let ts_text = rest.trim();
    if ts_text.is_empty() {
        return Ok((measurement, None));
    }
    let ts = ts_text
        .parse::<i64>()
        .map_err(|_| E::BadTimestamp(ts_text.to_string()))?;
    Ok((measurement, Some(ts)))
}

/// A string field's value, `q` starting after its opening quote; backslash escapes any
/// character. Returns the rest of the line after the closing quote.
fn quoted_value<'a>(field: &str, q: &'a str) -> Result<(LpValue, &'a str), LineProtocolError> {
    let mut s = String::new();
    let mut it = q.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = it.next() {
                    s.push(n);
                }
            }
            '"' => return Ok((LpValue::Str(s), &q[i + 1..])),
            c => s.push(c),
        }
    }
    Err(LineProtocolError::UnterminatedString(field.to_string()))
}

/// A number or boolean field's value, up to the next `,` or space, and the rest of the line.
fn unquoted_value<'a>(field: &str, r: &'a str) -> Result<(LpValue, &'a str), LineProtocolError> {
    let end = r
        .bytes()
        .position(|b| b == b',' || b == b' ')
        .unwrap_or(r.len());
    let raw = &r[..end];
    let value = match raw {
        "t" | "T" | "true" | "True" | "TRUE" => LpValue::Bool(true),
        "f" | "F" | "false" | "False" | "FALSE" => LpValue::Bool(false),
        _ => {
            let num = raw.strip_suffix(['i', 'u']).unwrap_or(raw);
            let parsed = match plain_f64(num) {
                Some(x) => Ok(x),
                None => num.parse(),
            };
            let x: f64 = parsed.map_err(|_| LineProtocolError::NotAValue {
                field: field.to_string(),
                raw: raw.to_string(),
            })?;
            if raw.ends_with(['i', 'u'])
                && num.parse::<i64>().is_err()
                && num.parse::<u64>().is_err()
            {
                return Err(LineProtocolError::NotAnInteger {
                    field: field.to_string(),
                    raw: raw.to_string(),
                });
            }
            LpValue::Number(x)
        }
    };
    Ok((value, &r[end..]))
}

/// `num` as `str::parse::<f64>` reads it, for the plain decimals readings are written in
/// (`-?digits[.[digits]]`, at most 15 digits in all); `None` for anything else, which `parse`
/// then reads. With at most 15 digits the significand is exact in an `f64`, and so is a power
/// of ten up to 10¹⁵: one division rounds the quotient correctly, as `parse` does (a line of
/// `benches/decode.rs` decodes ≈ 27 % faster for it).
fn plain_f64(num: &str) -> Option<f64> {
    let b = num.as_bytes();
    let (negative, body) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    let (mut significand, mut digits, mut point) = (0u64, 0usize, None);
    for (i, &c) in body.iter().enumerate() {
        match c {
            b'0'..=b'9' if digits < 15 => {
                significand = significand * 10 + u64::from(c - b'0');
                digits += 1;
            }
            b'.' if point.is_none() && i > 0 => point = Some(i),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let fraction = point.map_or(0, |p| body.len() - p - 1);
    // Below 10¹⁵: exact as an `i64` and as an `f64` (one instruction from `i64`).
    let f = significand as i64 as f64 / json::EXACT_POW10[fraction];
    Some(if negative { -f } else { f })
}

/// A file of readings could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// I/O.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A CSV header that does not fit the schema.
    #[error("{path}:1: {message}")]
    Header {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No readings in the file.
    #[error("{path}: the file contains no readings")]
    Empty {
        /// File.
        path: PathBuf,
    },
}

/// A line of a file that was skipped.
#[derive(Debug, Clone)]
pub struct LineError {
    /// File.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub error: DecodeError,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.error)
    }
}

/// Readings of a file with the line each came from, plus the lines that failed.
#[derive(Debug, Default)]
pub struct FileReadings {
    /// `(line, reading)` in file order.
    pub readings: Vec<(usize, Reading)>,
    /// Lines that could not be decoded.
    pub errors: Vec<LineError>,
}

/// File formats for `train` and `replay` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON lines (docs/ARCHITECTURE.md §5).
    JsonLines,
    /// CSV with the header `device,ts,<feature>...`.
    Csv,
    /// InfluxDB line protocol.
    LineProtocol,
}

impl FileFormat {
    /// By extension (`.csv`, `.lp`/`.line`, `.json`/`.jsonl`/`.ndjson`), else by the first line.
    pub fn detect(path: &Path, first_line: &str) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => FileFormat::Csv,
            Some("lp" | "line") => FileFormat::LineProtocol,
            Some("json" | "jsonl" | "ndjson") => FileFormat::JsonLines,
            _ if first_line.trim_start().starts_with('{') => FileFormat::JsonLines,
            _ if first_line.split(',').next().map(str::trim) == Some("device") => FileFormat::Csv,
            _ => FileFormat::LineProtocol,
        }
    }
}

/// Reads a file of readings. Bad lines are collected in [`FileReadings::errors`] (each names
/// the file and line); an unreadable file, a bad CSV header or a file with no readings at all
/// is a [`FileError`].
pub fn read_file(path: &Path, schema: &Schema) -> Result<FileReadings, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut out = FileReadings::default();
    match FileFormat::detect(path, first) {
        FileFormat::Csv => read_csv(path, &text, schema, &mut out)?,
        format => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                let result = match format {
                    FileFormat::JsonLines => schema.decode_json(None, line.as_bytes()),
                    _ => schema.decode_line(None, line.as_bytes()),
                };
                match result {
                    Ok(r) => out.readings.push((i + 1, r)),
                    Err(error) => out.errors.push(LineError {
                        path: path.to_path_buf(),
                        line: i + 1,
                        error,
                    }),
                }
            }
        }
    }
    if out.readings.is_empty() && out.errors.is_empty() {
        return Err(FileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

fn read_csv(
    path: &Path,
    text: &str,
    schema: &Schema,
    out: &mut FileReadings,
) -> Result<(), FileError> {
    let header_err = |message: String| FileError::Header {
        path: path.to_path_buf(),
        message,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| header_err(format!("bad CSV header: {e}")))?
        .clone();
    let names: Vec<&str> = headers.iter().map(str::trim).collect();
    if names.first() != Some(&"device") || names.get(1) != Some(&"ts") {
        return Err(header_err(format!(
            "the header must start with \"device,ts\" followed by features, found {:?}",
            names.join(",")
        )));
    }
    let mut columns = Vec::new();
    for name in &names[2..] {
        match schema.index.get(*name) {
            Some(&i) => columns.push(i),
            None => return Err(header_err(schema.unknown(name).to_string())),
        }
    }
    for (i, f) in schema.features.iter().enumerate() {
        if !columns.contains(&i) {
            return Err(header_err(format!("missing feature column {f:?}")));
        }
    }
    for record in rdr.records() {
        let (line, result) = match record {
            Err(e) => (
                e.position().map(|p| p.line() as usize).unwrap_or(0),
                Err(DecodeError::InvalidCsv(e.to_string())),
            ),
            Ok(rec) => {
                let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
                (line, decode_csv_record(&rec, &columns, schema))
            }
        };
        match result {
            Ok(r) => out.readings.push((line, r)),
            Err(error) => out.errors.push(LineError {
                path: path.to_path_buf(),
                line,
                error,
            }),
        }
    }
    Ok(())
}

fn decode_csv_record(
    rec: &csv::StringRecord,
    columns: &[usize],
    schema: &Schema,
) -> Result<Reading, DecodeError> {
    if rec.len() != columns.len() + 2 {
        return Err(DecodeError::InvalidCsv(format!(
            "expected {} columns, found {}",
            columns.len() + 2,
            rec.len()
        )));
    }
    let device = Some(rec[0].trim().to_string());
    let ts_text = rec[1].trim();
    let ts = if ts_text.is_empty() {
        None
    } else {
        Some(parse_ts_text(ts_text)?)
    };
    let mut values = schema.absent();
    for (col, &fi) in columns.iter().enumerate() {
        let raw = rec[col + 2].trim();
        let name = &schema.features[fi];
        if raw.is_empty() {
            return Err(DecodeError::MissingFeature(name.clone()));
        }
        let x: f64 = raw.parse().map_err(|_| DecodeError::WrongType {
            feature: name.clone(),
            found: format!("{raw:?}"),
        })?;
        schema.set(&mut values, name, x)?;
    }
    schema.finish(device, ts, values)
}

/// Stream lookup by topic and decoding of one message.
pub struct Decoder {
    by_topic: HashMap<String, usize>,
    schemas: Vec<Schema>,
    formats: Vec<Format>,
    max_payload: usize,
    max_future_ns: i64,
    /// The wall clock's last read plus `max_future_ns`, so that a message need not read the
    /// clock: [`Decoder::beyond_limit`].
    limit: AtomicI64,
    /// Messages judged against `limit` since the clock was last read.
    unread: AtomicU32,
}

/// Messages judged against a cached clock read before the clock is read again anyway (so
/// that a wall clock stepped back is followed soon).
const CLOCK_READ_EVERY: u32 = 1024;

/// A decoded message.
pub struct Decoded {
    /// Stream index.
    pub stream: usize,
    /// Its readings (one for JSON; one per line for line protocol).
    pub readings: Readings,
}

/// A message's readings: a JSON message's one is kept without a `Vec` (an allocation and a
/// free per message, on the path of every reading), a line-protocol message's lines in one.
#[derive(Debug)]
pub struct Readings {
    one: Option<Reading>,
    lines: Vec<Reading>,
}

impl Readings {
    fn one(reading: Reading) -> Self {
        Self {
            one: Some(reading),
            lines: Vec::new(),
        }
    }

    fn lines(lines: Vec<Reading>) -> Self {
        Self { one: None, lines }
    }

    /// How many readings the message held.
    pub fn len(&self) -> usize {
        usize::from(self.one.is_some()) + self.lines.len()
    }

    /// Whether it held none (a decoded message holds one at least).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The readings in the message's order.
    pub fn iter(&self) -> impl Iterator<Item = &Reading> {
        self.one.iter().chain(&self.lines)
    }
}

impl IntoIterator for Readings {
    type Item = Reading;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Reading>, std::vec::IntoIter<Reading>>;

    fn into_iter(self) -> Self::IntoIter {
        self.one.into_iter().chain(self.lines)
    }
}

/// Why a message is a dead letter.
#[derive(Debug)]
pub struct Rejected {
    /// Metric label.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

impl Decoder {
    /// For the configured streams; readings stamped more than `max_future_ns` ahead of the
    /// wall clock are refused (`future_timestamp`).
    pub fn new(streams: &[StreamConfig], max_payload: usize, max_future_ns: i64) -> Self {
        Self {
            by_topic: streams
                .iter()
                .enumerate()
                .map(|(i, s)| (s.topic.clone(), i))
                .collect(),
            schemas: streams.iter().map(Schema::from_stream).collect(),
            formats: streams.iter().map(|s| s.format).collect(),
            max_payload,
            max_future_ns,
            limit: AtomicI64::new(i64::MIN),
            unread: AtomicU32::new(0),
        }
    }

    /// The wall clock now where `ts` lies more than `engine.max_future` ahead of it, else
    /// `None`: the reading is in time. The wall clock moves on, so a timestamp within the limit
    /// of an earlier read is within today's; only one beyond it, or every
    /// [`CLOCK_READ_EVERY`]th message, reads the clock again.
    fn beyond_limit(&self, ts: i64) -> Option<i64> {
        let fresh = self.unread.fetch_add(1, Ordering::Relaxed) >= CLOCK_READ_EVERY;
        if !fresh && ts <= self.limit.load(Ordering::Relaxed) {
            return None;
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let limit = now.saturating_add(self.max_future_ns);
        self.limit.store(limit, Ordering::Relaxed);
        self.unread.store(0, Ordering::Relaxed);
        (ts > limit).then_some(now)
    }

    /// Decodes a message (`key` is the device id unless the payload names one).
    pub fn decode(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Decoded, Rejected> {
        let reject = |e: DecodeError| Rejected {
            reason: e.reason(),
            message: e.to_string(),
        };
        let stream = *self.by_topic.get(topic).ok_or_else(|| Rejected {
            reason: "unknown_stream",
            message: format!("no stream is configured for topic {topic:?}"),
        })?;
        let payload = payload.unwrap_or_default();
        if payload.len() > self.max_payload {
            return Err(reject(DecodeError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            }));
        }
        let key = match key {
            Some(k) => Some(std::str::from_utf8(k).map_err(|_| Rejected {
                reason: "invalid_key",
                message: "message key is not UTF-8".into(),
            })?),
            None => None,
        };
        let schema = &self.schemas[stream];
        let readings = match self.formats[stream] {
            Format::Json => Readings::one(schema.decode_json(key, payload).map_err(reject)?),
            Format::Line => {
                let mut out = Vec::new();
                for line in payload.split(|b| *b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    out.push(schema.decode_line(key, line).map_err(reject)?);
                }
                if out.is_empty() {
                    return Err(Rejected {
                        reason: "invalid_line_protocol",
                        message: "empty message".into(),
                    });
                }
                Readings::lines(out)
            }
        };
        // A reading from the future would make every later reading of its device stale
        // until the clock caught up: refuse it here (naming the message's newest reading).
        let newest = readings.iter().max_by_key(|r| r.ts);
        if let Some(r) = newest
            && let Some(now) = self.beyond_limit(r.ts)
        {
            return Err(reject(DecodeError::FutureTimestamp {
                ts: crate::time::format_ts(r.ts),
                ahead_s: (r.ts - now) as f64 / 1e9,
                allowed_s: self.max_future_ns as f64 / 1e9,
            }));
        }
        Ok(Decoded { stream, readings })
    }
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(vec!["vibration".into(), "temp".into()], "device".into())
    }

    /// Every plain decimal `plain_f64` takes is read to the bits `parse` gives, and it takes
    /// the usual ones: digits around a point, signs, leading and trailing zeros, up to and past
    /// its 15 digits, and what is not a plain decimal at all.
    #[test]
    fn plain_decimals_read_as_parse_reads_them() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut taken = 0;
        for _ in 0..500_000 {
            let mut text = String::new();
            if next(3) == 0 {
                text.push('-');
            }
            let len = 1 + next(19) as usize;
            let point = next(len as u64 + 3) as usize;
            for i in 0..len {
                if i == point {
                    text.push('.');
                }
                text.push(char::from(b'0' + next(10) as u8));
            }
            if next(40) == 0 {
                text.push(['.', 'e', '-', '+', 'x'][next(5) as usize]);
            }
            let want = text.parse::<f64>().ok();
            if let Some(got) = plain_f64(&text) {
                taken += 1;
                assert_eq!(Some(got.to_bits()), want.map(f64::to_bits), "{text}");
            }
        }
        for text in [
            "0",
            "-0",
            "-0.0",
            "1.",
            "71.31",
            "0.1234",
            "229.8",
            "123456789012345",
        ] {
            assert_eq!(
                plain_f64(text).map(f64::to_bits),
                Some(text.parse::<f64>().unwrap().to_bits()),
                "{text}"
            );
        }
        for text in [
            "",
            "-",
            ".5",
            "1e5",
            "+1",
            "1.2.3",
            "inf",
            "NaN",
            "1234567890123456",
            "1_0",
        ] {
            assert_eq!(plain_f64(text), None, "{text}");
        }
        assert!(taken > 200_000, "took only {taken} of 500000");
    }

    #[test]
    fn json_with_every_timestamp_form() {
        let s = schema();
        let base = 1_795_748_248_000_000_000i64;
        for ts in [
            "\"2026-11-27T02:57:28Z\"",
            "1795748248",
            "1795748248000",
            "1795748248000000",
            "1795748248000000000",
        ] {
            let msg = format!(
                r#"{{"device":"pump-7","ts":{ts},"values":{{"vibration":0.12,"temp":71.3}}}}"#
            );
            let r = s.decode_json(None, msg.as_bytes()).expect(ts);
            assert_eq!(
                r,
                Reading {
                    device: "pump-7".into(),
                    ts: base,
                    values: vec![0.12, 71.3]
                },
                "{ts}"
            );
        }
        let r = s
            .decode_json(
                Some("from-key"),
                br#"{"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
            )
            .expect("key");
        assert_eq!(r.device, "from-key");
    }

    #[test]
    fn json_errors_name_what_is_wrong() {
        let s = schema();
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "invalid_json"),
            (b"[1,2]", "invalid_json"),
            (
                br#"{"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
                "missing_device",
            ),
            (
                br#"{"device":"d","values":{"vibration":1,"temp":2}}"#,
                "missing_timestamp",
            ),
            (
                br#"{"device":"d","ts":"yesterday","values":{"vibration":1,"temp":2}}"#,
                "bad_timestamp",
            ),
            (
                br#"{"device":"d","ts":5,"values":{"vibration":1,"temp":2}}"#,
                "bad_timestamp",
            ),
            (
                br#"{"device":"d","ts":1795748248000,"values":{"vibration":"high","temp":2}}"#,
                "wrong_type",
            ),
            (
                br#"{"device":"d","ts":1795748248000,"values":{"vibration":1e39,"temp":2}}"#,
                "not_finite",
            ),
            (
                br#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2,"rpm":3}}"#,
                "unknown_feature",
            ),
            (
                br#"{"device":"d","ts":1795748248000,"values":{"vibration":1}}"#,
                "missing_feature",
            ),
        ];
        for (msg, reason) in cases {
            let err = s.decode_json(None, msg).expect_err(reason);
            assert_eq!(
                err.reason(),
                *reason,
                "{}: {err}",
                String::from_utf8_lossy(msg)
            );
        }
        let err = s
            .decode_json(
                None,
                br#"{"device":"d","ts":1795748248000,"values":{"vibration":1}}"#,
            )
            .unwrap_err();
        assert!(err.to_string().contains("temp"), "{err}");
    }

    #[test]
    fn line_protocol_as_telegraf_writes_it() {
        let s = schema();
        let r = s
            .decode_line(
                None,
                b"pump,device=pump-7,site=a vibration=0.12,temp=71i 1795748248000000000\n",
            )
            .expect("valid");
        assert_eq!(
            r,
            Reading {
                device: "pump-7".into(),
                ts: 1_795_748_248_000_000_000,
                values: vec![0.12, 71.0]
            }
        );
        let lp = parse_line_protocol(r#"my\ meas,tag\,k=v\ 1 s="a \"q\"",b=t,n=-1.5e3"#)
            .expect("escapes");
        assert_eq!(lp.measurement, "my meas");
        assert_eq!(lp.tags, [("tag,k".to_string(), "v 1".to_string())]);
        assert_eq!(lp.fields[0].1, LpValue::Str("a \"q\"".into()));
        assert_eq!(lp.fields[1].1, LpValue::Bool(true));
        assert_eq!(lp.fields[2].1, LpValue::Number(-1500.0));
        assert_eq!(lp.timestamp, None);
    }

    #[test]
    fn line_protocol_errors() {
        let s = schema();
        for (line, reason) in [
            ("pump,device=d", "invalid_line_protocol"),
            (
                "pump,device=d vibration=abc,temp=1 1795748248000000000",
                "invalid_line_protocol",
            ),
            ("pump,device=d vibration=1,temp=1", "missing_timestamp"),
            (
                "pump vibration=1,temp=1 1795748248000000000",
                "missing_device",
            ),
            (
                "pump,device=d vibration=\"x\",temp=1 1795748248000000000",
                "wrong_type",
            ),
            (
                "pump,device=d vibration=1,temp=inf 1795748248000000000",
                "not_finite",
            ),
            (
                "pump,device=d vibration=1,temp=NaN 1795748248000000000",
                "not_finite",
            ),
            (
                "pump,device=d vibration=1 1795748248000000000",
                "missing_feature",
            ),
            (
                "pump,device=d vibration=1,temp=1,x=2 1795748248000000000",
                "unknown_feature",
            ),
            ("pump,device=d vibration=1,temp=1 12", "bad_timestamp"),
        ] {
            let err = s.decode_line(None, line.as_bytes()).expect_err(line);
            assert_eq!(err.reason(), reason, "{line}: {err}");
        }
    }

    #[test]
    fn files_report_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = schema();
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "device,ts,temp,vibration\nd1,1795748248000,1.0,2.0\nd1,1795748249000,nan,2.0\nd1,oops,1,2\nd1,1795748250000,1\n").expect("write");
        let fr = read_file(&csv, &s).expect("reads");
        assert_eq!(fr.readings.len(), 1);
        assert_eq!(
            fr.readings[0].1.values,
            vec![2.0, 1.0],
            "columns are mapped by name"
        );
        let lines: Vec<_> = fr
            .errors
            .iter()
            .map(|e| (e.line, e.error.reason()))
            .collect();
        assert_eq!(
            lines,
            [(3, "not_finite"), (4, "bad_timestamp"), (5, "invalid_csv")]
        );
        assert!(
            fr.errors[0]
                .to_string()
                .starts_with(&format!("{}:3:", csv.display()))
        );

        let bad_header = dir.path().join("h.csv");
        std::fs::write(&bad_header, "device,ts,temp,rpm\n").expect("write");
        let err = read_file(&bad_header, &s).unwrap_err().to_string();
        assert!(err.contains("h.csv:1") && err.contains("rpm"), "{err}");

        let empty = dir.path().join("e.jsonl");
        std::fs::write(&empty, "\n\n").expect("write");
        assert!(matches!(
            read_file(&empty, &s),
            Err(FileError::Empty { .. })
        ));

        let json = dir.path().join("in.jsonl");
        std::fs::write(&json, "{\"device\":\"a\",\"ts\":1795748248000,\"values\":{\"vibration\":1,\"temp\":2}}\n{broken\n").expect("write");
        let fr = read_file(&json, &s).expect("reads");
        assert_eq!(
            (
                fr.readings.len(),
                fr.errors[0].line,
                fr.errors[0].error.reason()
            ),
            (1, 2, "invalid_json")
        );
        assert!(matches!(
            read_file(&dir.path().join("missing.csv"), &s),
            Err(FileError::Io { .. })
        ));
    }

    #[test]
    fn decoder_routes_by_topic_and_rejects_with_reasons() {
        let streams = vec![
            StreamConfig {
                name: "a".into(),
                topic: "t.a".into(),
                format: Format::Json,
                features: vec!["x".into()],
                ..StreamConfig::default()
            },
            StreamConfig {
                name: "b".into(),
                topic: "t.b".into(),
                format: Format::Line,
                features: vec!["x".into()],
                ..StreamConfig::default()
            },
        ];
        let d = Decoder::new(&streams, 200, 300_000_000_000);
        let ok = d
            .decode(
                "t.a",
                Some(b"dev-1"),
                Some(br#"{"ts":1795000000000,"values":{"x":1.5}}"#),
            )
            .expect("json");
        let devices = |r: &Readings| r.iter().map(|r| r.device.clone()).collect::<Vec<_>>();
        assert_eq!(
            (ok.stream, devices(&ok.readings)),
            (0, vec!["dev-1".into()])
        );
        let ok = d
            .decode(
                "t.b",
                None,
                Some(b"m,device=d1 x=1 1795000000000000000\nm,device=d1 x=2 1795000001000000000\n"),
            )
            .expect("lines");
        assert_eq!((ok.stream, ok.readings.len()), (1, 2));
        let values: Vec<f32> = ok.readings.into_iter().map(|r| r.values[0]).collect();
        assert_eq!(values, [1.0, 2.0]);
        for (topic, payload, reason) in [
            ("t.c", &b"{}"[..], "unknown_stream"),
            ("t.a", &[b'x'; 300][..], "too_large"),
            ("t.a", &b"{"[..], "invalid_json"),
            (
                "t.b",
                &b"m,device=d x=1 1795000000000000000\nbroken"[..],
                "invalid_line_protocol",
            ),
            ("t.b", &b"\n"[..], "invalid_line_protocol"),
            (
                "t.b",
                &b"m,device=d x=1 4102444800000000000"[..],
                "future_timestamp",
            ),
        ] {
            let err = d.decode(topic, None, Some(payload)).err().expect(reason);
            assert_eq!(err.reason, reason, "{}", err.message);
        }
        assert_eq!(
            d.decode("t.a", Some(&[0xff, 0xfe]), Some(b"{}"))
                .err()
                .expect("key")
                .reason,
            "invalid_key"
        );
    }

    #[test]
    fn the_future_limit_holds_between_clock_reads() {
        let streams = [StreamConfig {
            name: "b".into(),
            topic: "t.b".into(),
            format: Format::Line,
            features: vec!["x".into()],
            ..StreamConfig::default()
        }];
        let d = Decoder::new(&streams, 1 << 16, 60_000_000_000);
        let now = chrono::Utc::now().timestamp_nanos_opt().expect("now");
        let line = |ts: i64| format!("m,device=d x=1 {ts}");
        let reason = |payload: String| d.decode("t.b", None, Some(payload.as_bytes())).err();
        // Across several cached clock reads: 50 s ahead passes, 2 min ahead never does.
        for i in 0..3 * CLOCK_READ_EVERY {
            assert!(reason(line(now + 50_000_000_000)).is_none(), "message {i}");
            if i % 97 == 0 {
                let err = reason(line(now + 120_000_000_000)).expect("refused");
                assert_eq!(err.reason, "future_timestamp", "message {i}");
            }
        }
        // The reading named is the one ahead, not the first of the message.
        let err =
            reason(format!("{}\n{}", line(now), line(now + 3_600_000_000_000))).expect("refused");
        assert_eq!(err.reason, "future_timestamp");
        assert!(
            err.message.contains("3600 s ahead") || err.message.contains("3599 s ahead"),
            "{}",
            err.message
        );
    }
}
