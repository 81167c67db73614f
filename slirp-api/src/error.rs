//! What can go wrong talking to the API socket.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A failed API call. Each variant names the operation (`add_hostfwd`, ...);
/// those that failed on the socket itself also name its path.
///
/// The message of each variant is complete: where an I/O or JSON error is the
/// cause, the message ends with its text, and
/// [`source`](std::error::Error::source) returns `None` (the cause is the
/// variant's `error` field, or inside its [`ReplyProblem`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A forward with port 0, refused before anything is sent.
    #[error(
        "invalid add_hostfwd request: ports must not be 0 (host port {host_port}, guest port {guest_port})"
    )]
    ZeroPort {
        /// The host port asked for.
        host_port: u16,
        /// The guest port asked for.
        guest_port: u16,
    },
    /// The request does not fit in slirp4netns's single read.
    #[error("{op} request is {len} bytes; the slirp4netns API accepts at most {limit}")]
    RequestTooLarge {
        /// The operation.
        op: String,
        /// The request's length.
        len: usize,
        /// The most slirp4netns reads ([`MAX_REQUEST`](crate::MAX_REQUEST)).
        limit: usize,
    },
    /// Connecting to the socket failed.
    #[error("failed to connect to slirp4netns API socket {path}: {error}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The deadline passed.
    #[error("{op} on slirp4netns API socket {path} timed out after {timeout:?} ({stage})")]
    Timeout {
        /// The operation.
        op: String,
        /// The socket path.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
        /// What was under way.
        stage: Stage,
    },
    /// Writing the request failed.
    #[error("failed to send {op} request to slirp4netns API socket {path}: {error}")]
    Send {
        /// The operation.
        op: String,
        /// The socket path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Reading the reply failed.
    #[error("failed to read {op} reply from slirp4netns API socket {path}: {error}")]
    Receive {
        /// The operation.
        op: String,
        /// The socket path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// slirp4netns answered with an error.
    #[error("slirp4netns refused {op}: {desc}")]
    Refused {
        /// The operation.
        op: String,
        /// slirp4netns's own text, such as `bad request: add_hostfwd: slirp_add_hostfwd failed`.
        desc: String,
    },
    /// The reply is not what the protocol promises.
    #[error("malformed {op} reply from slirp4netns: {problem}: {reply:?}")]
    MalformedReply {
        /// The operation.
        op: String,
        /// What is wrong with it.
        problem: ReplyProblem,
        /// The reply (cut to 256 bytes).
        reply: String,
    },
}

/// What a call was doing when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Connecting (a full backlog makes a connect wait).
    Connecting,
    /// Writing the request.
    Sending,
    /// Waiting for and reading the reply.
    ReadingReply,
}

impl Stage {
    /// `"connecting"`, `"sending"` or `"reading the reply"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::Sending => "sending",
            Stage::ReadingReply => "reading the reply",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What is wrong with a reply ([`ApiError::MalformedReply`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyProblem {
    /// Nothing came back.
    #[error("empty reply (slirp4netns closed the connection without answering)")]
    Empty,
    /// More came back than any reply is.
    #[error("reply is larger than {limit} bytes")]
    TooLarge {
        /// The most that is read.
        limit: u64,
    },
    /// The reply is not JSON.
    #[error("not JSON ({0})")]
    NotJson(serde_json::Error),
    /// The reply is JSON but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// An `add_hostfwd` reply without `return.id`.
    #[error("no return.id")]
    NoId,
    /// An `add_hostfwd` reply whose id is not a positive 32-bit integer.
    #[error("return.id is not a positive 32-bit integer")]
    BadId,
    /// A `list_hostfwd` reply without `entries`.
    #[error("no entries")]
    NoEntries,
    /// A `list_hostfwd` reply whose entries do not have the promised shape.
    #[error("bad entries ({0})")]
    BadEntries(serde_json::Error),
    /// A reply without the `return` object.
    #[error("no return object")]
    NoReturnObject,
}
