//! JSON messages read straight from the payload, keeping only what the schema asks for (the
//! device id, `ts`, the `values` features) and borrowing strings from the payload: a message
//! of the plain shape by a scanner ([`scan`]), any other by one serde visitor that walks the
//! object once (strings with escapes are then copied). No `serde_json::Value` tree is built.
//!
//! The outcome is the one of parsing into a `Value` and reading that: a syntax error anywhere
//! in the payload wins over what is wrong with its content (nothing is judged before the
//! payload has been read to its end), a repeated key keeps its last value, nesting obeys the
//! same recursion limit, and among bad `values` entries the first in key order is reported
//! (a `Value` object is a map sorted by key: serde_json's `preserve_order` is off).

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// What the reader needs to know of a stream's schema (the decoder's `Schema` implements it;
/// this module does not reach back up for it).
pub(super) trait Fields {
    /// One value per feature, each NaN ("absent") until set.
    fn absent(&self) -> Vec<f32>;
    /// Index of a feature, looked for first at `hint`.
    fn position(&self, key: &str, hint: usize) -> Option<usize>;
    /// Name of feature `i`.
    fn name(&self, i: usize) -> &str;
    /// The key that names the device.
    fn device_key(&self) -> &str;
}

/// Why a `values` object cannot be read: the first bad or unknown entry in key order.
#[derive(Debug)]
pub(super) struct Unusable {
    /// The entry's key.
    pub feature: String,
    /// What is wrong with its value; `None`: the key is not a feature.
    pub why: Option<Bad>,
}

/// The top-level fields a message may have, each as its last occurrence left it.
#[derive(Debug, Default)]
pub(super) struct Message<'de> {
    /// The schema's device key.
    pub device: Option<Json<'de>>,
    /// `ts`.
    pub ts: Option<Json<'de>>,
    /// `values`.
    pub values: Option<Json<'de>>,
    /// What the last `values` object set.
    pub features: Option<Features<'de>>,
}

impl<'de> Message<'de> {
    /// Keeps a top-level field if it is one of the three. A device key that is also `ts` or
    /// `values` has its value read as both.
    fn keep(&mut self, key: &str, value: Json<'de>, device_key: &str) {
        if key == device_key {
            if key != "ts" && key != "values" {
                self.device = Some(value);
                return;
            }
            self.device = Some(value.clone());
        }
        match key {
            "ts" => self.ts = Some(value),
            "values" => self.values = Some(value),
            _ => {}
        }
    }
}

/// Parses a payload; `None` when it is valid JSON but not an object.
pub(super) fn parse<'de>(
    schema: &dyn Fields,
    payload: &'de [u8],
) -> Result<Option<Message<'de>>, serde_json::Error> {
    if let Some(message) = scan(schema, payload) {
        return Ok(Some(message));
    }
    // A payload that is not UTF-8 is read as bytes, so that the error is the one found there.
    match std::str::from_utf8(payload) {
        Ok(text) => read(schema, serde_json::Deserializer::from_str(text)),
        Err(_) => read(schema, serde_json::Deserializer::from_slice(payload)),
    }
}

/// The plain shape nearly every message has, read in one pass without serde: an object whose
/// members are strings, numbers and a `values` object of numbers, with no escapes in its
/// strings, integers of at most 19 digits (a nanosecond timestamp has 19) and other numbers of
/// at most 18 digits with a decimal exponent of at most 22. `None` for anything else
/// (including every error), which [`read`] then reads (and reports) as before.
///
/// It reads bytes: outside strings only ASCII is taken, and a string is checked to be UTF-8
/// where it holds a byte past ASCII ([`Scanner::string`]), so a payload it takes is UTF-8
/// throughout, and most payloads are not checked a second time as a whole (that check was
/// ≈ 0.75 % of `serve`'s CPU; a JSON message decodes ≈ 2 % faster, `benches/decode.rs`).
///
/// What it gives is what [`read`] gives for the same text, bit for bit: numbers are made as
/// serde_json makes them (the significand's digits as a `u64`, then one multiplication or
/// division by an exact power of ten), and the members go through the same
/// [`Message::keep`] and [`Features::set`], so repeated keys and the schema's lookups behave
/// the same. `tests::the_plain_shape_reads_as_serde_json_reads_it` holds it to that.
fn scan<'de>(schema: &dyn Fields, payload: &'de [u8]) -> Option<Message<'de>> {
    let mut s = Scanner {
        bytes: payload,
        at: 0,
    };
    let mut message = Message::default();
    s.open()?;
    if !s.close() {
        loop {
            let key = s.string()?;
            s.colon()?;
            let value = if key == "values" {
                s.open()?;
                let mut features = Features::new(schema);
                if !s.close() {
                    loop {
                        let feature = s.string()?;
                        s.colon()?;
                        let value = s.number()?;
                        features.set(schema, Cow::Borrowed(feature), &value);
                        if s.next_member()? {
                            break;
                        }
                    }
                }
                message.features = Some(features);
                Json::Object
            } else if s.peek()? == b'"' {
                Json::Str(Cow::Borrowed(s.string()?))
            } else {
                s.number()?
            };
            message.keep(key, value, schema.device_key());
            if s.next_member()? {
                break;
            }
        }
    }
    s.skip_space();
    (s.at == payload.len()).then_some(message)
}

/// A cursor over a payload for [`scan`]; every method gives `None` where the text leaves the
/// plain shape.
struct Scanner<'de> {
    bytes: &'de [u8],
    at: usize,
}

/// The powers of ten that are exact as `f64`, as serde_json's table has them (and as the
/// line-protocol reader divides by them).
pub(super) const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl<'de> Scanner<'de> {
    /// JSON's whitespace, as serde_json skips it.
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.at).copied()
    }

    /// Takes `b` after whitespace.
    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    fn open(&mut self) -> Option<()> {
        self.expect(b'{')
    }

    fn colon(&mut self) -> Option<()> {
        self.expect(b':')
    }

    /// Takes a `}` if one comes next.
    fn close(&mut self) -> bool {
        self.expect(b'}').is_some()
    }

    /// After a member: `true` at the object's end, `false` before the next member.
    fn next_member(&mut self) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(false)
            }
            b'}' => {
                self.at += 1;
                Some(true)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters (serde_json refuses the latter), and
    /// UTF-8: checked where a byte past ASCII is seen on the way to the closing quote.
    fn string(&mut self) -> Option<&'de str> {
        self.expect(b'"')?;
        let start = self.at;
        let mut seen = 0u8;
        let len = self.bytes[start..].iter().position(|&b| {
            seen |= b;
            b == b'"' || b == b'\\' || b < 0x20
        })?;
        let end = start + len;
        (self.bytes[end] == b'"').then_some(())?;
        self.at = end + 1;
        let text = &self.bytes[start..end];
        if seen.is_ascii() {
            // SAFETY: every byte of `text` is ASCII (`seen` is all of them or'ed together).
            Some(unsafe { std::str::from_utf8_unchecked(text) })
        } else {
            std::str::from_utf8(text).ok()
        }
    }

    /// Digits, at most `room` of them (at most 19 in all, which cannot overflow a `u64`),
    /// accumulated into `significand`; how many.
    fn digits(&mut self, significand: &mut u64, room: &mut u32) -> Option<u32> {
        let mut n = 0;
        while let Some(&c @ b'0'..=b'9') = self.bytes.get(self.at) {
            *room = room.checked_sub(1)?;
            *significand = *significand * 10 + u64::from(c - b'0');
            self.at += 1;
            n += 1;
        }
        Some(n)
    }

    /// A number as serde_json reads it into a `Value`: an integer as `u64` or `i64` (`-0` as
    /// the float −0), anything with a fraction or an exponent as the `f64` its parts make.
    /// Inlined: returned from a call, the value went through memory in pieces and was read
    /// back whole, and the CPU could not forward those stores (inlined, a JSON message decodes
    /// ≈ 4 % faster, `benches/decode.rs`).
    #[inline(always)]
    fn number(&mut self) -> Option<Json<'de>> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let (mut significand, mut room) = (0u64, 19u32);
        let leading_zero = self.bytes.get(self.at) == Some(&b'0');
        let whole = self.digits(&mut significand, &mut room)?;
        if whole == 0 || (leading_zero && whole > 1) {
            return None;
        }
        let mut exponent = 0i32;
        let mut float = false;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            let fraction = self.digits(&mut significand, &mut room)?;
            if fraction == 0 {
                return None;
            }
            exponent = -(fraction as i32);
            float = true;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            let sign = match self.bytes.get(self.at) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            if sign != 0 {
                self.at += 1;
            }
            let (mut exp, mut exp_room) = (0u64, 4u32);
            if self.digits(&mut exp, &mut exp_room)? == 0 {
                return None;
            }
            exponent += if sign < 0 { -(exp as i32) } else { exp as i32 };
            float = true;
        }
        if !float {
            if !negative {
                return Some(Json::Number(significand.into()));
            }
            // As serde_json does: `-0`, and a magnitude past `i64`, become floats.
            let neg = (significand as i64).wrapping_neg();
            return Some(Json::Number(if neg >= 0 {
                serde_json::Number::from_f64(-(significand as f64))?
            } else {
                neg.into()
            }));
        }
        // A float's significand goes to `f64` through `i64` below: at most 18 digits.
        if room == 0 {
            return None;
        }
        let pow = *EXACT_POW10.get(exponent.unsigned_abs() as usize)?;
        // Below 10¹⁸ (18 digits), so within `i64`, whose conversion is one instruction and
        // rounds as the `u64` one does.
        let mut f = significand as i64 as f64;
        if exponent >= 0 {
            f *= pow;
        } else {
            f /= pow;
        }
        serde_json::Number::from_f64(if negative { -f } else { f }).map(Json::Number)
    }
}

fn read<'de, R: serde_json::de::Read<'de>>(
    schema: &dyn Fields,
    mut de: serde_json::Deserializer<R>,
) -> Result<Option<Message<'de>>, serde_json::Error> {
    let mut message = Message::default();
    // Filled in place: a message is too big to pass back through serde's results cheaply.
    let is_object = (&mut de).deserialize_any(Top(schema, &mut message))?;
    de.end()?;
    Ok(is_object.then_some(message))
}

/// A JSON value as decoding keeps it: scalars, arrays and objects by kind only (a `values`
/// object's features go to [`Message::features`]).
#[derive(Debug, Clone)]
pub(super) enum Json<'de> {
    Null,
    Bool,
    Number(serde_json::Number),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Json<'_> {
    /// What it is, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Number(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array => "an array",
            Json::Object => "an object",
        }
    }
}

/// The features a `values` object sets; a repeated key keeps its last value.
#[derive(Debug)]
pub(super) struct Features<'de> {
    /// One per schema feature; NaN where absent or unusable (see `bad`).
    values: Vec<f32>,
    /// The features whose last value is unusable, and why.
    bad: Vec<(usize, Bad)>,
    /// The least unknown key (in key order).
    unknown: Option<Cow<'de, str>>,
    /// Where the next key is looked for first: messages usually list features in schema order.
    next: usize,
}

/// Why a feature's value is unusable.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bad {
    NotFinite,
    WrongType(&'static str),
}

impl<'de> Features<'de> {
    fn new(schema: &dyn Fields) -> Self {
        Self {
            values: schema.absent(),
            bad: Vec::new(),
            unknown: None,
            next: 0,
        }
    }

    fn set(&mut self, schema: &dyn Fields, key: Cow<'de, str>, value: &Json<'de>) {
        let Some(i) = schema.position(&key, self.next) else {
            if self.unknown.as_deref().is_none_or(|u| *key < *u) {
                self.unknown = Some(key);
            }
            return;
        };
        self.next = i + 1;
        match finite(value) {
            Ok(x) => {
                self.values[i] = x;
                if !self.bad.is_empty() {
                    self.bad.retain(|&(j, _)| j != i);
                }
            }
            Err(why) => self.mark(i, why),
        }
    }

    fn mark(&mut self, i: usize, why: Bad) {
        self.values[i] = f32::NAN;
        self.bad.retain(|&(j, _)| j != i);
        self.bad.push((i, why));
    }

    /// The values in schema order (NaN where absent), or the first bad entry in key order.
    pub fn into_values(self, schema: &dyn Fields) -> Result<Vec<f32>, Unusable> {
        let bad = self.bad.iter().map(|&(i, why)| (schema.name(i), Some(why)));
        let unknown = self.unknown.as_deref().map(|key| (key, None));
        match bad.chain(unknown).min_by(|a, b| a.0.cmp(b.0)) {
            None => Ok(self.values),
            Some((name, why)) => Err(Unusable {
                feature: name.to_string(),
                why,
            }),
        }
    }
}

/// A feature's value as an `f32`, finite both as read (`f64`) and as kept.
fn finite(value: &Json) -> Result<f32, Bad> {
    let Json::Number(n) = value else {
        return Err(Bad::WrongType(value.kind()));
    };
    let x = n.as_f64().ok_or(Bad::NotFinite)?;
    let f = x as f32;
    if x.is_finite() && f.is_finite() {
        Ok(f)
    } else {
        Err(Bad::NotFinite)
    }
}

/// An object key, borrowed from the payload unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads any JSON value as a [`Json`]. With a schema, an object is also read as the features
/// it sets, kept in the slot given. Arrays and objects are walked with `deserialize_any`, as a
/// `Value` is, so that serde_json's recursion limit applies the same way (`IgnoredAny` would
/// skip any depth).
struct Any<'a, 'de>(Option<(&'a dyn Fields, &'a mut Option<Features<'de>>)>);

impl<'de> DeserializeSeed<'de> for Any<'_, 'de> {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Any<'_, 'de> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        // As `Value` does: a float that is not finite (which serde_json never yields) is null.
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        while seq.next_element_seed(Any(None))?.is_some() {}
        Ok(Json::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let Some((schema, slot)) = self.0 else {
            while map.next_key::<IgnoredAny>()?.is_some() {
                map.next_value_seed(Any(None))?;
            }
            return Ok(Json::Object);
        };
        let mut features = Features::new(schema);
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value_seed(Any(None))?;
            features.set(schema, key, &value);
        }
        *slot = Some(features);
        Ok(Json::Object)
    }
}

/// Reads the payload's top-level value: an object into the [`Message`] given (`true`),
/// anything else is skipped (`false`).
struct Top<'a, 'de>(&'a dyn Fields, &'a mut Message<'de>);

impl<'de> Visitor<'de> for Top<'_, 'de> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Any(None).visit_seq(seq).map(|_| false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Top(schema, message) = self;
        while let Some(Key(key)) = map.next_key()? {
            let features = (key == "values").then_some((schema, &mut message.features));
            let value = map.next_value_seed(Any(features))?;
            message.keep(&key, value, schema.device_key());
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's schema as the reader sees it.
    struct Schema(Vec<&'static str>);

    impl Fields for Schema {
        fn absent(&self) -> Vec<f32> {
            vec![f32::NAN; self.0.len()]
        }
        fn position(&self, key: &str, hint: usize) -> Option<usize> {
            (hint..self.0.len())
                .chain(0..hint)
                .find(|&i| self.0[i] == key)
        }
        fn name(&self, i: usize) -> &str {
            self.0[i]
        }
        fn device_key(&self) -> &str {
            "device"
        }
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// A number's text: mostly what producers write, with the forms at and past the plain
    /// shape's limits (18 digits, exponent 22) and invalid ones.
    fn number(rng: &mut Rng) -> String {
        match rng.below(12) {
            0 => rng
                .pick(&[
                    "0", "-0", "0.0", "-0.0", "00", "01", "-", "1.", ".5", "+1", "1e", "1e+",
                    "--1", "0x10", "1.5.2", "NaN", "Infinity", "1_0",
                ])
                .to_string(),
            1 => format!("{}", rng.next() as i64 >> rng.below(64)),
            2 => format!("{}", rng.next() >> rng.below(64)),
            3 => format!("{}", f64::from_bits(rng.next())),
            4 => format!("{:e}", f64::from_bits(rng.next()) as f32),
            5 => {
                let digits = 1 + rng.below(22);
                let s: String = (0..digits)
                    .map(|_| char::from(b'0' + rng.below(10) as u8))
                    .collect();
                let cut = rng.below(digits);
                let s = if cut == 0 {
                    s
                } else {
                    format!("{}.{}", &s[..cut], &s[cut..])
                };
                format!("{}{s}", if rng.below(3) == 0 { "-" } else { "" })
            }
            6 => format!(
                "{}e{}{}",
                rng.below(100_000),
                rng.pick(&["", "+", "-"]),
                rng.below(30)
            ),
            7 => format!(
                "{}.{}E-{}",
                rng.below(1000),
                rng.below(100_000),
                rng.below(310)
            ),
            8 => format!("{}e{:04}", rng.below(10), rng.below(40)),
            _ => format!(
                "{}",
                (rng.next() as f32 / u32::MAX as f32 - 0.5) * 10f32.powi(rng.below(12) as i32 - 4)
            ),
        }
    }

    /// A string's text: plain, with escapes, with a control character, or not UTF-8-safe to cut.
    fn string(rng: &mut Rng) -> String {
        rng.pick(&[
            "\"pump-7\"",
            "\"\"",
            "\"Grüße 温度\"",
            "\"a\\\"b\"",
            "\"a\\u0041\"",
            "\"tab\there\"",
            "\"line\\nbreak\"",
            "\"unterminated",
            "\"vibration\"",
            "\"temp\"",
            "\"device\"",
            "\"values\"",
            "\"ts\"",
        ])
        .to_string()
    }

    fn space(rng: &mut Rng) -> &'static str {
        if rng.below(3) == 0 {
            rng.pick(&[" ", "\n", "\t ", "\r\n  ", "\u{a0}", "\u{b}"])
        } else {
            ""
        }
    }

    /// A message: the plain shape most of the time, with members repeated, unknown, of other
    /// kinds, missing, and the text around them broken now and then.
    fn message(rng: &mut Rng) -> String {
        let mut members = Vec::new();
        for _ in 0..rng.below(6) {
            let key = match rng.below(8) {
                0..=2 => "\"values\"".to_string(),
                3 | 4 => "\"device\"".to_string(),
                5 => "\"ts\"".to_string(),
                _ => string(rng),
            };
            let value = if key == "\"values\"" && rng.below(6) != 0 {
                let mut fields = Vec::new();
                for _ in 0..rng.below(6) {
                    let k = if rng.below(5) == 0 {
                        string(rng)
                    } else {
                        format!("\"{}\"", rng.pick(&["vibration", "temp", "flow", "rpm"]))
                    };
                    let v = match rng.below(10) {
                        0 => rng
                            .pick(&["null", "true", "\"1.5\"", "[1]", "{}", "1e999", "-1e999"])
                            .to_string(),
                        _ => number(rng),
                    };
                    fields.push(format!(
                        "{}{k}{}:{}{v}{}",
                        space(rng),
                        space(rng),
                        space(rng),
                        space(rng)
                    ));
                }
                format!("{{{}{}}}", fields.join(","), space(rng))
            } else {
                match rng.below(8) {
                    0 => string(rng),
                    1 => rng
                        .pick(&[
                            "null",
                            "true",
                            "false",
                            "[1, {\"a\": 2}]",
                            "{\"x\": {\"y\": 1}}",
                        ])
                        .to_string(),
                    _ => number(rng),
                }
            };
            members.push(format!(
                "{}{key}{}:{}{value}{}",
                space(rng),
                space(rng),
                space(rng),
                space(rng)
            ));
        }
        let mut text = format!("{}{{{}}}{}", space(rng), members.join(","), space(rng));
        match rng.below(30) {
            0 => text.push('x'),
            1 => text.push_str("{}"),
            2 => text = text.replacen(',', ",,", 1),
            3 => text = text.replacen('}', ",}", 1),
            4 => {
                text.pop();
            }
            5 => text = text.replacen(':', "", 1),
            _ => {}
        }
        text
    }

    /// Whatever the text, the plain-shape reader either declines it or gives exactly what
    /// serde_json's reader gives (compared through `Debug`, which writes every float's
    /// shortest exact form). It takes the plain messages below, and a good share of the
    /// generated ones (most of which are not plain somewhere).
    #[test]
    fn the_plain_shape_reads_as_serde_json_reads_it() {
        let schema = Schema(vec!["vibration", "temp", "flow"]);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut taken = 0;
        for _ in 0..200_000 {
            let text = message(&mut rng);
            let Some(fast) = scan(&schema, text.as_bytes()) else {
                continue;
            };
            taken += 1;
            let slow = read(&schema, serde_json::Deserializer::from_str(&text));
            assert_eq!(
                format!("{:?}", Ok::<_, String>(Some(fast))),
                format!("{:?}", slow.map_err(|e| e.to_string())),
                "{text}"
            );
        }
        for text in [
            r#"{"device":"pump-7","ts":1795748248123,"values":{"vibration":0.1234,"temp":71.31,"flow":13.52}}"#,
            "{ \"device\" : \"pump-7\" ,\n \"ts\" : 1795748248123 , \"values\" : { \"vibration\" : -1.5e-3 } }\n",
            r#"{"ts":1795748248123,"values":{}}"#,
            r#"{"device":"pump-7","ts":1795748248123456789,"values":{"flow":-0}}"#,
            r#"{"device":-9300000000000000000,"ts":-0,"values":{"temp":12345678901234567e-22}}"#,
            r#"{"device":"pümpe-7 ✓","ts":1795748248123,"values":{"temp":71.31}}"#,
            "{}",
        ] {
            let fast = scan(&schema, text.as_bytes()).expect(text);
            let slow = read(&schema, serde_json::Deserializer::from_str(text)).expect(text);
            assert_eq!(format!("{:?}", Some(fast)), format!("{slow:?}"), "{text}");
        }
        assert!(
            taken > 20_000,
            "the plain-shape reader took only {taken} of 200000"
        );
    }

    /// A payload that is not UTF-8 is declined by the plain-shape reader wherever the bad
    /// bytes are (in a string, a key, or outside strings), and `parse` reports serde_json's
    /// error for it, as reading the bytes gives.
    #[test]
    fn a_payload_that_is_not_utf8_is_reported_as_serde_json_reports_it() {
        let schema = Schema(vec!["vibration", "temp", "flow"]);
        for payload in [
            &b"{\"device\":\"p\xffx\",\"ts\":1,\"values\":{}}"[..],
            b"{\"device\":\"p\xc3\",\"ts\":1,\"values\":{}}",
            b"{\"ts\":1,\"values\":{\"te\xe2\x82mp\":1.5}}",
            b"{\"ts\":1,\"values\":{}}\xff",
        ] {
            assert!(scan(&schema, payload).is_none(), "{payload:?}");
            let slow = read(&schema, serde_json::Deserializer::from_slice(payload));
            assert_eq!(
                format!("{:?}", parse(&schema, payload).map_err(|e| e.to_string())),
                format!("{:?}", slow.map_err(|e| e.to_string())),
            );
            assert!(parse(&schema, payload).is_err(), "{payload:?}");
        }
    }
}
