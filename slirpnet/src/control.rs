//! The client side of the control sockets: rootlessport's (ours, when it
//! serves one) and a slirpnet session's. One JSON request per connection
//! over SOCK_SEQPACKET, one JSON reply, all under one deadline.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    connect, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::TimeVal;
use slirp_opts::portctl::{Reply, Request, MAX_MESSAGE};

/// A failed control request, naming the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nobody answers there (the session or forwarder is gone).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The request could not be sent.
    #[error("cannot send to {}: {source}", path.display())]
    Send {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No reply came (in time).
    #[error("no reply from {}: {source}", path.display())]
    Receive {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The reply is not one.
    #[error("malformed reply from {}: {source}", path.display())]
    Decode {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// Sends `req` to the control socket at `path` and returns the reply,
/// within `timeout` for each of connect, send and receive.
///
/// # Errors
///
/// The socket does not answer, or the reply is malformed.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Reply, ControlError> {
    let connect_err = |source: io::Error| ControlError::Connect {
        path: path.to_owned(),
        source,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| connect_err(e.into()))?;
    let limit = TimeVal::new(
        timeout.as_secs() as i64,
        timeout.subsec_micros() as nix::libc::suseconds_t,
    );
    let _ = setsockopt(&sock, sockopt::SendTimeout, &limit);
    let _ = setsockopt(&sock, sockopt::ReceiveTimeout, &limit);
    let addr = UnixAddr::new(path).map_err(|e| connect_err(e.into()))?;
    connect(sock.as_raw_fd(), &addr).map_err(|e| connect_err(e.into()))?;
    // A request is plain data; serializing it cannot fail.
    let body = serde_json::to_vec(req).unwrap_or_default();
    send(sock.as_raw_fd(), &body, MsgFlags::MSG_NOSIGNAL).map_err(|e| ControlError::Send {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n =
        recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| ControlError::Receive {
            path: path.to_owned(),
            source: e.into(),
        })?;
    serde_json::from_slice(&buf[..n]).map_err(|source| ControlError::Decode {
        path: path.to_owned(),
        source,
    })
}
