//! Parsing slirp4netns replies without ever panicking on what comes back.

use serde_json::Value;

use crate::client::{ApiError, HostFwdEntry};

/// At most this much of a bad reply goes into an error.
const EXCERPT: usize = 256;

pub(crate) fn excerpt(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(EXCERPT)]);
    text.into_owned()
}

fn malformed(op: &str, reason: impl Into<String>, reply: &Value) -> ApiError {
    ApiError::MalformedReply {
        op: op.into(),
        reason: reason.into(),
        reply: excerpt(reply.to_string().as_bytes()),
    }
}

/// Parses the raw reply: a JSON object that is not an error reply.
pub(crate) fn parse(op: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let bad = |reason: String| ApiError::MalformedReply {
        op: op.into(),
        reason,
        reply: excerpt(raw),
    };
    if raw.is_empty() {
        return Err(bad(
            "empty reply (slirp4netns closed the connection without answering)".into(),
        ));
    }
    let value: Value = serde_json::from_slice(raw).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Value::Object(map) = &value else {
        return Err(bad("not a JSON object".into()));
    };
    if let Some(err) = map.get("error") {
        let desc = err
            .get("desc")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| err.to_string());
        return Err(ApiError::Refused {
            op: op.into(),
            desc,
        });
    }
    Ok(value)
}

/// `{"return":{"id":N}}` with N > 0.
pub(crate) fn add_id(op: &str, reply: &Value) -> Result<u32, ApiError> {
    let id = reply
        .get("return")
        .and_then(|r| r.get("id"))
        .ok_or_else(|| malformed(op, "no return.id", reply))?;
    id.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| malformed(op, "return.id is not a positive 32-bit integer", reply))
}

/// `{"entries":[...]}` or `{"return":{"entries":[...]}}`.
pub(crate) fn entries(op: &str, reply: &Value) -> Result<Vec<HostFwdEntry>, ApiError> {
    let list = reply
        .get("entries")
        .or_else(|| reply.get("return").and_then(|r| r.get("entries")))
        .ok_or_else(|| malformed(op, "no entries", reply))?;
    serde_json::from_value(list.clone())
        .map_err(|e| malformed(op, format!("bad entries ({e})"), reply))
}

/// `{"return":{}}`.
pub(crate) fn empty_return(op: &str, reply: &Value) -> Result<(), ApiError> {
    match reply.get("return") {
        Some(Value::Object(_)) => Ok(()),
        _ => Err(malformed(op, "no return object", reply)),
    }
}
