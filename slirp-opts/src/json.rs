//! JSON decoding with Go's `encoding/json` leniency, for documents podman writes.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Decodes `T` from JSON the way Go would decode the same struct: object keys
/// match field names case-insensitively, unknown keys are ignored, and `null`
/// leaves a field at its default.
///
/// `T`'s field names must be lowercase for deserialization (use
/// `#[serde(rename(deserialize = "..."))]`) and absent fields need defaults.
///
/// ```
/// let m: slirp_opts::PortMapping = slirp_opts::from_go_json(
///     r#"{"Host_Port":8080,"CONTAINER_PORT":80,"range":1,"protocol":null,"x":1}"#,
/// ).unwrap();
/// assert_eq!((m.host_port, m.container_port, m.protocol.as_str()), (8080, 80, ""));
/// ```
pub fn from_go_json<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    let value: Value = serde_json::from_str(text)?;
    serde_json::from_value(fold_keys(value))
}

/// Lowercases every object key and drops `null` members, recursively.
fn fold_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_lowercase(), fold_keys(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(fold_keys).collect()),
        other => other,
    }
}
