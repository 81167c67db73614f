//! JSON decoding with Go's `encoding/json` rules, for documents podman writes.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, SeqAccess};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// Decodes `T` from JSON the way Go's `encoding/json` decodes the same
/// struct:
/// - object keys match field names case-insensitively (Unicode simple
///   folding), and when several keys match one field the last one in the
///   document wins;
/// - unknown keys are ignored, and `null` leaves a field as it was;
/// - a struct must be given as an object (serde would also take an array of
///   its fields in order; Go refuses that).
///
/// `T`'s field names must be lowercase for deserialization (use
/// `#[serde(rename(deserialize = "..."))]`) and absent fields need defaults.
///
/// ```
/// let m: slirp_opts::PortMapping = slirp_opts::from_go_json(
///     r#"{"Host_Port":8080,"CONTAINER_PORT":80,"range":1,"protocol":null,"x":1}"#,
/// ).unwrap();
/// assert_eq!((m.host_port, m.container_port, m.protocol.as_str()), (8080, 80, ""));
/// // The last matching key wins, as in Go.
/// let m: slirp_opts::PortMapping =
///     slirp_opts::from_go_json(r#"{"host_port":1,"HOST_PORT":2}"#).unwrap();
/// assert_eq!(m.host_port, 2);
/// // A struct given as an array is refused, as in Go.
/// assert!(slirp_opts::from_go_json::<Vec<slirp_opts::PortMapping>>(r#"[["", 80, 8080, 1, "tcp"]]"#).is_err());
/// ```
///
/// # Errors
///
/// The text is not JSON, or does not have `T`'s shape and types.
pub fn from_go_json<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    let Ordered(value) = serde_json::from_str(text)?;
    T::deserialize(GoValue(value))
}

/// Go's case folding for field names: lowercase, with the two letters
/// whose simple folding reaches ASCII (`ſ` is `s`, the Kelvin sign is `k`).
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ſ' { 's' } else { c })
        .collect()
}

/// A JSON value read in document order, objects folded as Go matches them:
/// keys lowercased, `null` members dropped (a no-op in Go), and of keys
/// that fold alike the last one kept.
struct Ordered(Value);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor).map(Ordered)
    }
}

struct OrderedVisitor;

impl<'de> de::Visitor<'de> for OrderedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Ordered(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((key, Ordered(v))) = map.next_entry::<String, Ordered>()? {
            if !v.is_null() {
                out.insert(fold(&key), v);
            }
        }
        Ok(Value::Object(out))
    }
}

/// A deserializer over a folded value that, unlike `serde_json::Value`'s,
/// refuses to read a struct from an array, at any depth.
struct GoValue(Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for GoValue {
    type Deserializer = GoValue;
    fn into_deserializer(self) -> GoValue {
        self
    }
}

impl<'de> Deserializer<'de> for GoValue {
    type Error = serde_json::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(GoValue));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => {
                let mut access =
                    MapDeserializer::new(map.into_iter().map(|(k, v)| (k, GoValue(v))));
                let out = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(out)
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::custom(format_args!(
                "cannot decode {} into {name}: expected a JSON object",
                kind(&other)
            ))),
        }
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
