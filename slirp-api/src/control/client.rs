//! The client: one request, one reply, under one deadline.

use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{MAX_REPLY, MAX_REQUEST};
use crate::error::Stage;
use crate::stream::{self, ReadError};

/// A failed control request, naming the socket. Each message is complete:
/// the cause ends it, and [`source`](std::error::Error::source) is `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The request could not be written as JSON.
    #[error("cannot encode a request for {path}: {error}")]
    Encode {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: serde_json::Error,
    },
    /// The request is larger than a server reads; nothing was sent.
    #[error("a request of {len} bytes for {path} is too large (at most {limit})")]
    RequestTooLarge {
        /// The socket.
        path: PathBuf,
        /// The request's length.
        len: usize,
        /// The most a server reads ([`MAX_REQUEST`]).
        limit: usize,
    },
    /// Nobody answers there (the session or forwarder is gone).
    #[error("cannot connect to {path}: {error}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The deadline passed.
    #[error("no reply from {path} within {timeout:?} ({stage})")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
        /// What was under way.
        stage: Stage,
    },
    /// The request could not be sent, and no reply came.
    #[error("cannot send to {path}: {error}")]
    Send {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Reading the reply failed.
    #[error("cannot read the reply from {path}: {error}")]
    Receive {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The reply is larger than any reply is.
    #[error("the reply from {path} is larger than {limit} bytes")]
    ReplyTooLarge {
        /// The socket.
        path: PathBuf,
        /// The most that is read ([`MAX_REPLY`]).
        limit: usize,
    },
    /// The reply is not one.
    #[error("malformed reply from {path}: {error}")]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: serde_json::Error,
    },
}

/// Sends `req` to the control socket at `path` and returns its reply,
/// all within `timeout` (connecting, sending, and the server's work and
/// reply). A reply of any size (up to [`MAX_REPLY`]) is read to its end.
///
/// # Errors
///
/// [`ControlError::RequestTooLarge`] (over [`MAX_REQUEST`]) before
/// connecting; [`ControlError::Connect`] when nobody listens there;
/// [`ControlError::Timeout`] when the deadline passes; the socket's
/// failures; and [`ControlError::Malformed`] for a reply that is not a
/// `Rep`.
pub fn request<Req, Rep>(path: &Path, req: &Req, timeout: Duration) -> Result<Rep, ControlError>
where
    Req: Serialize + ?Sized,
    Rep: DeserializeOwned,
{
    let deadline = Instant::now() + timeout;
    let path_buf = || path.to_owned();
    let timed_out = |stage| ControlError::Timeout {
        path: path_buf(),
        timeout,
        stage,
    };
    let body = serde_json::to_vec(req).map_err(|error| ControlError::Encode {
        path: path_buf(),
        error,
    })?;
    if body.len() > MAX_REQUEST {
        return Err(ControlError::RequestTooLarge {
            path: path_buf(),
            len: body.len(),
            limit: MAX_REQUEST,
        });
    }
    let conn = stream::connect(path, deadline).map_err(|error| match error.kind() {
        ErrorKind::TimedOut => timed_out(Stage::Connecting),
        _ => ControlError::Connect {
            path: path_buf(),
            error,
        },
    })?;
    let sent =
        stream::write_all(&conn, &body, deadline).and_then(|()| conn.shutdown(Shutdown::Write));
    // A server may answer without reading the request (another user's, too
    // many at once, too large) and close with it unread: our write then
    // fails (EPIPE) or the read after its reply is reset (ECONNRESET). The
    // reply still counts; only a write that ran out of time means no reply
    // will come.
    if let Err(e) = &sent {
        if e.kind() == ErrorKind::TimedOut {
            return Err(timed_out(Stage::Sending));
        }
    }
    let (reply, failure) = match stream::read_to_end(&conn, deadline, MAX_REPLY) {
        Ok(reply) => (reply, None),
        Err(ReadError::Io(e, reply)) => (reply, Some(e)),
        Err(ReadError::TimedOut) => return Err(timed_out(Stage::ReadingReply)),
        Err(ReadError::TooLarge) => {
            return Err(ControlError::ReplyTooLarge {
                path: path_buf(),
                limit: MAX_REPLY,
            })
        }
    };
    match serde_json::from_slice(&reply) {
        Ok(reply) => Ok(reply),
        Err(error) => Err(match (sent, failure) {
            (Err(error), _) => ControlError::Send {
                path: path_buf(),
                error,
            },
            (Ok(()), Some(error)) => ControlError::Receive {
                path: path_buf(),
                error,
            },
            (Ok(()), None) => ControlError::Malformed {
                path: path_buf(),
                error,
            },
        }),
    }
}
