//! Requests, their replies, and the connection discipline slirp4netns needs.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use slirp_opts::Protocol;

use crate::reply;

/// The largest request slirp4netns reads (it does one `read` of 4096 bytes and
/// treats a full buffer as too large).
pub const MAX_REQUEST: usize = 4095;
/// The deadline for a whole call when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest reply read before giving up on a runaway peer.
const MAX_REPLY: u64 = 16 << 20;

/// A failed API call. Each variant names the operation (`add_hostfwd`, ...)
/// and the socket path.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is invalid before anything is sent.
    #[error("invalid {op} request: {reason}")]
    InvalidRequest {
        /// The operation.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// The request does not fit in slirp4netns's single read.
    #[error("{op} request is {len} bytes; the slirp4netns API accepts at most {MAX_REQUEST}")]
    RequestTooLarge {
        /// The operation.
        op: String,
        /// The request's length.
        len: usize,
    },
    /// Connecting to the socket failed.
    #[error("failed to connect to slirp4netns API socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
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
        /// What was under way: connecting, sending or reading the reply.
        stage: &'static str,
    },
    /// Writing the request failed.
    #[error("failed to send {op} request to slirp4netns API socket {path}: {source}")]
    Send {
        /// The operation.
        op: String,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading the reply failed.
    #[error("failed to read {op} reply from slirp4netns API socket {path}: {source}")]
    Receive {
        /// The operation.
        op: String,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
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
    #[error("malformed {op} reply from slirp4netns: {reason}: {reply:?}")]
    MalformedReply {
        /// The operation.
        op: String,
        /// What is wrong with it.
        reason: String,
        /// The reply (cut to 256 bytes).
        reply: String,
    },
}

/// A host port forward to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    /// tcp or udp.
    pub proto: Protocol,
    /// The host address to listen on; `None` means 0.0.0.0. slirp4netns takes IPv4 only.
    pub host_addr: Option<Ipv4Addr>,
    /// The host port (not 0).
    pub host_port: u16,
    /// The address in the namespace; `None` means slirp4netns's guest address.
    pub guest_addr: Option<Ipv4Addr>,
    /// The port in the namespace (not 0).
    pub guest_port: u16,
}

impl HostFwd {
    /// A forward from all host addresses to the guest address.
    pub fn new(proto: Protocol, host_port: u16, guest_port: u16) -> Self {
        HostFwd {
            proto,
            host_addr: None,
            host_port,
            guest_addr: None,
            guest_port,
        }
    }
}

/// One forward as `list_hostfwd` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFwdEntry {
    /// The id `add_hostfwd` returned.
    #[serde(rename = "id")]
    pub id: u32,
    /// tcp or udp.
    #[serde(rename = "proto")]
    pub proto: Protocol,
    /// The host address.
    #[serde(rename = "host_addr")]
    pub host_addr: Ipv4Addr,
    /// The host port.
    #[serde(rename = "host_port")]
    pub host_port: u16,
    /// The guest address.
    #[serde(rename = "guest_addr")]
    pub guest_addr: Ipv4Addr,
    /// The guest port.
    #[serde(rename = "guest_port")]
    pub guest_port: u16,
}

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
    pub fn add_hostfwd(&self, fwd: &HostFwd) -> Result<u32, ApiError> {
        const OP: &str = "add_hostfwd";
        if fwd.host_port == 0 || fwd.guest_port == 0 {
            return Err(ApiError::InvalidRequest {
                op: OP.into(),
                reason: format!(
                    "ports must not be 0 (host port {}, guest port {})",
                    fwd.host_port, fwd.guest_port
                ),
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
    pub fn list_hostfwd(&self) -> Result<Vec<HostFwdEntry>, ApiError> {
        const OP: &str = "list_hostfwd";
        let reply = self.execute(&json!({"execute": OP}))?;
        reply::entries(OP, &reply)
    }

    /// Removes the forward with this id.
    pub fn remove_hostfwd(&self, id: u32) -> Result<(), ApiError> {
        const OP: &str = "remove_hostfwd";
        let reply = self.execute(&json!({"execute": OP, "arguments": {"id": id}}))?;
        reply::empty_return(OP, &reply)
    }

    /// Sends any request and returns the reply object once it is known not to
    /// be an error. The operation's name is taken from `execute`.
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
            });
        }
        let deadline = Instant::now() + self.timeout;
        let timeout = |stage| ApiError::Timeout {
            op: op.into(),
            path: self.path.clone(),
            timeout: self.timeout,
            stage,
        };
        let mut stream = self.connect(deadline).map_err(|e| match e.kind() {
            ErrorKind::TimedOut => timeout("connecting"),
            _ => ApiError::Connect {
                path: self.path.clone(),
                source: e,
            },
        })?;

        let send_err = |source| ApiError::Send {
            op: op.into(),
            path: self.path.clone(),
            source,
        };
        stream
            .set_write_timeout(Some(remaining(deadline).ok_or_else(|| timeout("sending"))?))
            .map_err(send_err)?;
        match stream.write(body) {
            Ok(n) if n == body.len() => {}
            Ok(n) => {
                return Err(send_err(io::Error::new(
                    ErrorKind::WriteZero,
                    format!("only {n} of {} bytes went out in one write", body.len()),
                )))
            }
            Err(e) if is_timeout(&e) => return Err(timeout("sending")),
            Err(e) => return Err(send_err(e)),
        }
        stream.shutdown(Shutdown::Write).map_err(send_err)?;

        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = remaining(deadline).ok_or_else(|| timeout("reading the reply"))?;
            stream
                .set_read_timeout(Some(left))
                .map_err(|source| ApiError::Receive {
                    op: op.into(),
                    path: self.path.clone(),
                    source,
                })?;
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(reply),
                Ok(n) => {
                    reply.extend_from_slice(&chunk[..n]);
                    if reply.len() as u64 > MAX_REPLY {
                        return Err(ApiError::MalformedReply {
                            op: op.into(),
                            reason: format!("reply is larger than {MAX_REPLY} bytes"),
                            reply: reply::excerpt(&reply),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(timeout("reading the reply")),
                Err(source) => {
                    return Err(ApiError::Receive {
                        op: op.into(),
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Connects without blocking past the deadline: a unix stream connect
    /// blocks while the listener's backlog is full, so retry a non-blocking one.
    fn connect(&self, deadline: Instant) -> io::Result<UnixStream> {
        let addr = UnixAddr::new(&self.path).map_err(io::Error::from)?;
        let mut pause = Duration::from_millis(1);
        loop {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )?;
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                Ok(()) => {
                    let stream = UnixStream::from(fd);
                    stream.set_nonblocking(false)?;
                    return Ok(stream);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    let left =
                        remaining(deadline).ok_or_else(|| io::Error::from(ErrorKind::TimedOut))?;
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
