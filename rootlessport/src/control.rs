//! Our extension to podman's helper: a control socket that adds, removes
//! and lists ports while the forwarder serves (`slirpnet port add|rm|ls`).
//! The binary serves it only when `ROOTLESSPORT_CONTROL_SOCKET` names a
//! path; as podman's helper nothing changes.
//!
//! SOCK_SEQPACKET, one JSON [`Request`] per connection and one JSON
//! [`Reply`]; only clients of our own user are served.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{bind, getsockopt, listen, sockopt, Backlog, UnixAddr};
use slirp_opts::portctl::{ForwardEntry, Reply, Request, MAX_MESSAGE};

use crate::ports::ForwarderHandle;
use crate::seqpacket::{self, seqpacket, SocketFile};

/// The environment variable that asks the binary for a control socket.
pub const CONTROL_SOCKET_ENV: &str = "ROOTLESSPORT_CONTROL_SOCKET";

/// A failure to set up the control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A socket call failed.
    #[error("failed to {action} control socket {}: {source}", path.display())]
    Socket {
        /// What was done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The control socket, served on threads of its own; removed (and no longer
/// served) when dropped.
#[derive(Debug)]
pub struct ControlServer {
    file: SocketFile,
    waker: OwnedFd,
}

impl ControlServer {
    /// Listens at `path` (mode 0600; a stale socket there is replaced) and
    /// serves requests through `handle`.
    ///
    /// # Errors
    ///
    /// The socket cannot be made, bound, listened on or served.
    pub fn start(path: &Path, handle: ForwarderHandle) -> Result<Self, ControlError> {
        let fail = |action, source: std::io::Error| ControlError::Socket {
            action,
            path: path.to_owned(),
            source,
        };
        let listener = seqpacket().map_err(|e| fail("create", e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| fail("address", e.into()))?;
        let _ = std::fs::remove_file(path);
        bind(listener.as_raw_fd(), &addr).map_err(|e| fail("bind", e.into()))?;
        let file = SocketFile(path.to_owned());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail("set the mode of", e))?;
        listen(&listener, Backlog::MAXCONN).map_err(|e| fail("listen on", e.into()))?;
        let me = nix::unistd::geteuid().as_raw();
        let waker = seqpacket::serve(
            listener,
            "rootlessport-control",
            br#"{"error":{"message":"too many requests at once"}}"#,
            move |conn| answer(conn, &handle, me),
        )
        .map_err(|e| fail("serve", e))?;
        Ok(ControlServer { file, waker })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        seqpacket::stop(&self.waker);
    }
}

fn answer(conn: &OwnedFd, handle: &ForwarderHandle, me: u32) {
    let reply = match respond(conn, handle, me) {
        Ok(forwards) => Reply::Ok {
            forwards: forwards.iter().map(ForwardEntry::from).collect(),
        },
        Err(message) => Reply::Error { message },
    };
    // A reply is plain data; serializing it cannot fail.
    let text = serde_json::to_vec(&reply).unwrap_or_default();
    seqpacket::send_answer(conn, &text);
}

fn respond(
    conn: &OwnedFd,
    handle: &ForwarderHandle,
    me: u32,
) -> Result<Vec<slirp_opts::Forward>, String> {
    let peer = getsockopt(conn, sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who is asking: {e}"))?;
    if peer.uid() != me {
        tracing::warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "control request from another user refused"
        );
        return Err(format!(
            "user {} may not change this forwarder's ports",
            peer.uid()
        ));
    }
    let request = seqpacket::read_request(conn, MAX_MESSAGE).map_err(|e| e.to_string())?;
    let request: Request =
        serde_json::from_slice(&request).map_err(|e| format!("malformed request: {e}"))?;
    match request {
        Request::List => handle.list(),
        Request::Add { mappings } => handle.add(&mappings),
        Request::Remove { ports } => handle.remove(&ports),
        _ => return Err("unsupported request".into()),
    }
    .map_err(|e| e.to_string())
}
