//! Parsing slirp4netns replies without ever panicking on what comes back.

use serde_json::Value;

use crate::error::{ApiError, ReplyProblem};
use crate::hostfwd::HostFwdEntry;

/// At most this much of a bad reply goes into an error.
const EXCERPT: usize = 256;

pub(crate) fn excerpt(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(EXCERPT)]);
    text.into_owned()
}

fn malformed(op: &str, problem: ReplyProblem, reply: &Value) -> ApiError {
    ApiError::MalformedReply {
        op: op.into(),
        problem,
        reply: excerpt(reply.to_string().as_bytes()),
    }
}

/// Parses the raw reply: a JSON object that is not an error reply.
pub(crate) fn parse(op: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let bad = |problem| ApiError::MalformedReply {
        op: op.into(),
        problem,
        reply: excerpt(raw),
    };
    if raw.is_empty() {
        return Err(bad(ReplyProblem::Empty));
    }
    let value: Value = serde_json::from_slice(raw).map_err(|e| bad(ReplyProblem::NotJson(e)))?;
    let Value::Object(map) = &value else {
        return Err(bad(ReplyProblem::NotAnObject));
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
        .ok_or_else(|| malformed(op, ReplyProblem::NoId, reply))?;
    id.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| malformed(op, ReplyProblem::BadId, reply))
}

/// `{"entries":[...]}` or `{"return":{"entries":[...]}}`.
pub(crate) fn entries(op: &str, reply: &Value) -> Result<Vec<HostFwdEntry>, ApiError> {
    let list = reply
        .get("entries")
        .or_else(|| reply.get("return").and_then(|r| r.get("entries")))
        .ok_or_else(|| malformed(op, ReplyProblem::NoEntries, reply))?;
    serde_json::from_value(list.clone())
        .map_err(|e| malformed(op, ReplyProblem::BadEntries(e), reply))
}

/// `{"return":{}}`.
pub(crate) fn empty_return(op: &str, reply: &Value) -> Result<(), ApiError> {
    match reply.get("return") {
        Some(Value::Object(_)) => Ok(()),
        _ => Err(malformed(op, ReplyProblem::NoReturnObject, reply)),
    }
}
