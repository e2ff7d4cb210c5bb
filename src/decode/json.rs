//! JSON messages read straight from the payload: one serde visitor walks the object once and
//! keeps only what the schema asks for (the device id, `ts`, the `values` features), borrowing
//! strings from the payload unless they hold escapes. No `serde_json::Value` tree is built.
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
    // Checking the payload is UTF-8 at once is cheaper than string by string; a payload that
    // is not is read as bytes, so that the error is the one found there.
    match std::str::from_utf8(payload) {
        Ok(text) => read(schema, serde_json::Deserializer::from_str(text)),
        Err(_) => read(schema, serde_json::Deserializer::from_slice(payload)),
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
