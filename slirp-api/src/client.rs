//! The client: requests, and the connection discipline slirp4netns needs.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{ApiError, ReplyProblem, Stage};
use crate::hostfwd::{HostFwd, HostFwdEntry};
use crate::reply;
use crate::stream::{self, is_timeout, remaining};

/// The largest request slirp4netns reads (it does one `read` of 4096 bytes and
/// treats a full buffer as too large).
pub const MAX_REQUEST: usize = 4095;
/// The deadline for a whole call when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest reply read before giving up on a runaway peer.
const MAX_REPLY: u64 = 16 << 20;

/// A client for one slirp4netns API socket. Each call opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the socket at `path`, with [`DEFAULT_TIMEOUT`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the deadline for each whole call (connect, send, reply).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a forward and returns its id.
    ///
    /// # Errors
    ///
    /// [`ApiError::ZeroPort`] before sending anything, the errors of
    /// [`Client::execute`], and [`ApiError::MalformedReply`] when the reply
    /// has no positive id.
    pub fn add_hostfwd(&self, fwd: &HostFwd) -> Result<u32, ApiError> {
        const OP: &str = "add_hostfwd";
        if fwd.host_port == 0 || fwd.guest_port == 0 {
            return Err(ApiError::ZeroPort {
                host_port: fwd.host_port,
                guest_port: fwd.guest_port,
            });
        }
        let mut args = json!({
            // Always sent: a request without proto crashes slirp4netns.
            "proto": fwd.proto.as_str(),
            "host_addr": fwd.host_addr.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
            "host_port": fwd.host_port,
            "guest_port": fwd.guest_port,
        });
        if let Some(guest) = fwd.guest_addr {
            args["guest_addr"] = guest.to_string().into();
        }
        let reply = self.execute(&json!({"execute": OP, "arguments": args}))?;
        reply::add_id(OP, &reply)
    }

    /// Lists the forwards. Accepts both the bare `{"entries":[...]}` that
    /// slirp4netns sends and the `{"return":{"entries":[...]}}` its man page shows.
    ///
    /// # Errors
    ///
    /// The errors of [`Client::execute`], and [`ApiError::MalformedReply`]
    /// when the entries are missing or not forwards.
    pub fn list_hostfwd(&self) -> Result<Vec<HostFwdEntry>, ApiError> {
        const OP: &str = "list_hostfwd";
        let reply = self.execute(&json!({"execute": OP}))?;
        reply::entries(OP, &reply)
    }

    /// Removes the forward with this id.
    ///
    /// # Errors
    ///
    /// The errors of [`Client::execute`] ([`ApiError::Refused`] for an id
    /// slirp4netns does not know), and [`ApiError::MalformedReply`] when the
    /// reply has no `return` object.
    pub fn remove_hostfwd(&self, id: u32) -> Result<(), ApiError> {
        const OP: &str = "remove_hostfwd";
        let reply = self.execute(&json!({"execute": OP, "arguments": {"id": id}}))?;
        reply::empty_return(OP, &reply)
    }

    /// Sends any request and returns the reply object once it is known not to
    /// be an error. The operation's name is taken from `execute`.
    ///
    /// ```no_run
    /// use slirp_api::serde_json::json;
    ///
    /// let client = slirp_api::Client::new("/run/user/1000/slirp.sock");
    /// let reply = client.execute(&json!({"execute": "list_hostfwd"}))?;
    /// println!("{reply}");
    /// # Ok::<(), slirp_api::ApiError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ApiError::RequestTooLarge`] before sending anything,
    /// [`ApiError::Connect`], [`ApiError::Send`] and [`ApiError::Receive`]
    /// for the socket's errors, [`ApiError::Timeout`] when the deadline
    /// passes, [`ApiError::Refused`] for slirp4netns's error reply, and
    /// [`ApiError::MalformedReply`] for a reply that is not a JSON object.
    pub fn execute(&self, request: &Value) -> Result<Value, ApiError> {
        let op = request
            .get("execute")
            .and_then(Value::as_str)
            .unwrap_or("request")
            .to_owned();
        let body = request.to_string();
        let raw = self.round_trip(&op, body.as_bytes())?;
        reply::parse(&op, &raw)
    }

    /// One connection: connect, one write, shutdown(SHUT_WR), read to EOF.
    fn round_trip(&self, op: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        if body.len() > MAX_REQUEST {
            return Err(ApiError::RequestTooLarge {
                op: op.into(),
                len: body.len(),
                limit: MAX_REQUEST,
            });
        }
        let deadline = Instant::now() + self.timeout;
        let timeout = |stage| ApiError::Timeout {
            op: op.into(),
            path: self.path.clone(),
            timeout: self.timeout,
            stage,
        };
        let mut stream = stream::connect(&self.path, deadline).map_err(|e| match e.kind() {
            ErrorKind::TimedOut => timeout(Stage::Connecting),
            _ => ApiError::Connect {
                path: self.path.clone(),
                error: e,
            },
        })?;

        let send_err = |error| ApiError::Send {
            op: op.into(),
            path: self.path.clone(),
            error,
        };
        stream
            .set_write_timeout(Some(
                remaining(deadline).ok_or_else(|| timeout(Stage::Sending))?,
            ))
            .map_err(send_err)?;
        match stream.write(body) {
            Ok(n) if n == body.len() => {}
            Ok(n) => {
                return Err(send_err(io::Error::new(
                    ErrorKind::WriteZero,
                    format!("only {n} of {} bytes went out in one write", body.len()),
                )))
            }
            Err(e) if is_timeout(&e) => return Err(timeout(Stage::Sending)),
            Err(e) => return Err(send_err(e)),
        }
        stream.shutdown(Shutdown::Write).map_err(send_err)?;

        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = remaining(deadline).ok_or_else(|| timeout(Stage::ReadingReply))?;
            stream
                .set_read_timeout(Some(left))
                .map_err(|error| ApiError::Receive {
                    op: op.into(),
                    path: self.path.clone(),
                    error,
                })?;
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(reply),
                Ok(n) => {
                    reply.extend_from_slice(&chunk[..n]);
                    if reply.len() as u64 > MAX_REPLY {
                        return Err(ApiError::MalformedReply {
                            op: op.into(),
                            problem: ReplyProblem::TooLarge { limit: MAX_REPLY },
                            reply: reply::excerpt(&reply),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(timeout(Stage::ReadingReply)),
                Err(error) => {
                    return Err(ApiError::Receive {
                        op: op.into(),
                        path: self.path.clone(),
                        error,
                    })
                }
            }
        }
    }
}
