//! A running session's control socket: `slirpnet ps` and `slirpnet port`
//! talk to it to list and change the forwarded ports of a namespace that is
//! already networked.
//!
//! Each session serves `<session_dir>/<pid>.sock` (mode 0600, in a 0700
//! directory: `$XDG_RUNTIME_DIR/slirpnet`, `/run/slirpnet` for root), removed
//! when the session ends; a socket left by a crash is removed by the next
//! [`sessions`] that finds nobody answering. One JSON
//! `Request` (of `slirp_opts::portctl`) per connection, read to EOF (at
//! most [`MAX_MESSAGE`] bytes, within [`CLIENT_DEADLINE`]), one JSON
//! [`Reply`]; only the session's own user is served.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slirp_opts::portctl::{ForwardEntry, PortKey, Reply, Request, SessionStatus, MAX_MESSAGE};
use slirp_opts::PortMapping;

use crate::setup::Network;

/// How long a client may take to send its request and read the reply.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once; more are told so at once.
const MAX_CLIENTS: usize = 32;

/// A failure to serve or reach a session's control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session directory cannot be made or is not ours.
    #[error("cannot use the session directory {}: {error}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The socket cannot be bound or served.
    #[error("cannot serve the session socket {}: {error}", path.display())]
    Serve {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// No session answers there.
    #[error("no session answers at {} (is it still running?): {error}", path.display())]
    Gone {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The session took the request but did not answer in time.
    #[error("no reply from {}: {error}", path.display())]
    NoReply {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The session's reply is not one.
    #[error("malformed reply from {}: {error}", path.display())]
    Reply {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: serde_json::Error,
    },
}

/// Where this user's session sockets live: `$XDG_RUNTIME_DIR/slirpnet`,
/// else `/run/slirpnet` for root, else `<tmp>/slirpnet-<uid>`.
pub fn session_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("slirpnet"),
        None if uid.is_root() => PathBuf::from("/run/slirpnet"),
        None => std::env::temp_dir().join(format!("slirpnet-{uid}")),
    }
}

/// The control socket of session `pid`.
pub fn session_socket(pid: u32) -> PathBuf {
    session_dir().join(format!("{pid}.sock"))
}

/// Makes the session directory (0700) and checks that it is ours and
/// private, following no symlink at its last component.
fn ensure_dir(dir: &Path) -> Result<(), SessionError> {
    let fail = |error| SessionError::Dir {
        path: dir.to_owned(),
        error,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
    if !meta.is_dir() {
        return Err(fail(io::Error::other("it is not a directory")));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(fail(io::Error::other(format!(
            "it belongs to uid {}, not to us",
            meta.uid()
        ))));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

/// A session's network, shared between the session and its control socket;
/// `None` once the session is ending.
pub type SharedNetwork = Arc<Mutex<Option<Network>>>;

/// Serves a session's control socket on threads of its own. Dropping it
/// stops serving and removes the socket.
#[derive(Debug)]
pub struct SessionServer {
    path: PathBuf,
    waker: UnixListener,
}

impl SessionServer {
    /// Serves [`session_socket(pid)`](session_socket) for `network`, the
    /// session of process `pid` (ours).
    ///
    /// # Errors
    ///
    /// The directory or the socket cannot be made.
    pub fn start(network: SharedNetwork, pid: u32) -> Result<Self, SessionError> {
        let dir = session_dir();
        ensure_dir(&dir)?;
        let path = session_socket(pid);
        let fail = |error| SessionError::Serve {
            path: path.clone(),
            error,
        };
        // Bound and made private under a name `sessions` skips, then renamed
        // into place (replacing a socket left by a killed session of a
        // reused pid): a `ps` meanwhile never finds it bound but not yet
        // listening, which it would take for a dead session's and remove.
        let staging = dir.join(format!(".{pid}.sock.new"));
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging).map_err(fail)?;
        let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&staging, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(fail(e));
        }
        let server = SessionServer {
            path: path.clone(),
            waker: listener.try_clone().map_err(fail)?,
        };
        let me = nix::unistd::geteuid().as_raw();
        std::thread::Builder::new()
            .name("slirpnet-session".into())
            .spawn(move || accept_loop(listener, network, pid, me))
            .map_err(fail)?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SessionServer {
    fn drop(&mut self) {
        // Wakes the accept loop (EINVAL), which then ends.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.waker),
            nix::sys::socket::Shutdown::Both,
        );
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, network: SharedNetwork, pid: u32, me: u32) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            // Shut down by the server's drop.
            Err(_) => return,
        };
        let _ = conn.set_read_timeout(Some(CLIENT_DEADLINE));
        let _ = conn.set_write_timeout(Some(CLIENT_DEADLINE));
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::AcqRel);
            write_reply(&mut conn, &error("too many requests at once; try again"));
            continue;
        }
        let (network, busy) = (network.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("slirpnet-session-client".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let reply = respond(&mut conn, &network, pid, me);
                write_reply(&mut conn, &reply);
                busy.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            tracing::warn!("cannot start a thread for a session client");
        }
    }
}

fn error(message: impl Into<String>) -> Reply {
    Reply::Error {
        message: message.into(),
    }
}

fn write_reply(conn: &mut UnixStream, reply: &Reply) {
    // A reply is plain data; serializing it cannot fail.
    let _ = conn.write_all(&serde_json::to_vec(reply).unwrap_or_default());
}

/// Reads one request (to EOF, bounded) and answers it.
fn respond(conn: &mut UnixStream, network: &SharedNetwork, pid: u32, me: u32) -> Reply {
    match nix::sys::socket::getsockopt(&*conn, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(peer) if peer.uid() == me => {}
        Ok(peer) => {
            tracing::warn!(
                uid = peer.uid(),
                "a session request from another user refused"
            );
            return error(format!(
                "user {} may not use this session (it belongs to uid {me})",
                peer.uid()
            ));
        }
        Err(e) => return error(format!("cannot tell who is asking: {e}")),
    }
    let mut body = Vec::new();
    match (&mut *conn)
        .take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > MAX_MESSAGE => {
            return error(format!("request larger than {MAX_MESSAGE} bytes"))
        }
        Ok(_) => {}
        Err(e) => return error(format!("cannot read the request: {e}")),
    }
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(format!("malformed request: {e}")),
    };
    let mut guard = network.lock().unwrap_or_else(|p| p.into_inner());
    let Some(net) = guard.as_mut() else {
        return error("the session is ending");
    };
    let result = match request {
        Request::Session => {
            return match net.forwards() {
                Ok(_) => Reply::Session(status(net, pid)),
                Err(e) => error(e.to_string()),
            }
        }
        Request::List => net.forwards().map(drop),
        Request::Add { mappings } => add(net, &mappings),
        Request::Remove { ports } => remove(net, &ports),
        _ => return error("unsupported request"),
    };
    match result {
        Ok(()) => Reply::Ok {
            forwards: entries(net),
        },
        Err(e) => error(e.to_string()),
    }
}

fn add(net: &mut Network, mappings: &[PortMapping]) -> Result<(), crate::PortChangeError> {
    net.add_ports(mappings).map(drop)
}

fn remove(net: &mut Network, ports: &[PortKey]) -> Result<(), crate::PortChangeError> {
    net.remove_ports(ports).map(drop)
}

fn entries(net: &Network) -> Vec<ForwardEntry> {
    net.info()
        .forwards
        .iter()
        .map(|f| ForwardEntry {
            auto: f.auto,
            ..ForwardEntry::from(&f.forward())
        })
        .collect()
}

fn status(net: &Network, pid: u32) -> SessionStatus {
    let info = net.info();
    let forwarder = info.forwarder.as_ref().map(|f| match f {
        crate::ForwarderInfo::Binary { path, .. } => path.display().to_string(),
        _ => "in-process".to_owned(),
    });
    SessionStatus::new(
        pid,
        net.target().netns_path().display().to_string(),
        info.port_handler.clone(),
        forwarder,
        info.pid,
        entries(net),
    )
}

/// Sends `req` to the session socket at `path`; the reply, within
/// [`CLIENT_DEADLINE`].
///
/// # Errors
///
/// Nobody answers there, or the reply is malformed.
pub fn request(path: &Path, req: &Request) -> Result<Reply, SessionError> {
    let gone = |error| SessionError::Gone {
        path: path.to_owned(),
        error,
    };
    let mut conn = UnixStream::connect(path).map_err(gone)?;
    let no_reply = |error| SessionError::NoReply {
        path: path.to_owned(),
        error,
    };
    conn.set_read_timeout(Some(CLIENT_DEADLINE))
        .map_err(no_reply)?;
    conn.set_write_timeout(Some(CLIENT_DEADLINE))
        .map_err(no_reply)?;
    // A request is plain data; serializing it cannot fail.
    let sent = conn
        .write_all(&serde_json::to_vec(req).unwrap_or_default())
        .and_then(|()| conn.shutdown(std::net::Shutdown::Write));
    // A session may answer without reading the request (another user's,
    // too many at once) and close with it unread: our write then fails
    // (EPIPE) or the read after its reply is reset (ECONNRESET). The reply
    // still counts; only a write that timed out means no reply will come.
    let sent = match sent {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(no_reply(e))
        }
        other => other,
    };
    let mut body = Vec::new();
    let read = (&conn).take(MAX_MESSAGE as u64).read_to_end(&mut body);
    match serde_json::from_slice(&body) {
        Ok(reply) => Ok(reply),
        Err(error) => match sent.and(read) {
            Err(e) => Err(no_reply(e)),
            Ok(_) => Err(SessionError::Reply {
                path: path.to_owned(),
                error,
            }),
        },
    }
}

/// Every running session of this user that answers, by pid. A socket
/// nobody answers (its session was killed) is removed.
pub fn sessions() -> Vec<SessionStatus> {
    let Ok(dir) = std::fs::read_dir(session_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        let is_session = path.extension().is_some_and(|e| e == "sock")
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.parse::<u32>().is_ok());
        if !is_session {
            continue;
        }
        match request(&path, &Request::Session) {
            Ok(Reply::Session(status)) => out.push(status),
            // Refused or missing: nobody listens (a killed session). A
            // session that is only slow is left alone.
            Err(SessionError::Gone { .. }) => {
                tracing::debug!(path = %path.display(), "removing a dead session's socket");
                let _ = std::fs::remove_file(&path);
            }
            other => tracing::warn!(path = %path.display(), ?other, "a session answered oddly"),
        }
    }
    out.sort_by_key(|s| s.pid);
    out
}
