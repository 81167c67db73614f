//! The server: binding without clobbering, the accept loop (cap and
//! back-off), and one client's request, deadline and reply.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use serde::de::DeserializeOwned;

use super::accept::{serve_clients, Stopper};
use super::wire::{ControlReply, MAX_CLIENTS, MAX_REQUEST, REQUEST_DEADLINE};
use crate::stream::{self, ReadError};

/// A failure to set up a control socket. Each message is complete: the
/// cause ends it, and [`source`](std::error::Error::source) is `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Something that is not a socket is at the path; it was left alone.
    #[error("refusing to replace {path}: it is {kind}, not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there (`a regular file`, `a symbolic link`, ...).
        kind: &'static str,
    },
    /// A server answers at the path already.
    #[error("{path} is in use: a server answers there")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// A socket call failed.
    #[error("failed to {action} control socket {path}: {error}")]
    Socket {
        /// What was done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
}

/// A control socket served on threads of its own. Dropping it stops
/// serving and removes the socket (if it is still the one it bound).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// The socket file's device and inode, to remove only ours.
    file: (u64, u64),
    stopper: Stopper,
}

impl ControlServer {
    /// Listens at `path` (mode 0600) and answers each request with
    /// `handler`. `service` names what is served in refusals (`user 1000
    /// may not use this session ...`) and in thread names.
    ///
    /// The socket is bound and made private under a hidden name beside
    /// `path` (`.NAME.new`), then renamed into place: a client never finds
    /// it bound but not yet listening (which it would take for a dead
    /// server's). Only a stale socket at `path` (nobody listens) is
    /// replaced; anything else there is an error naming it, and is left as
    /// it is.
    ///
    /// # Errors
    ///
    /// [`ServeError::NotASocket`] when a file, symbolic link, directory or
    /// the like is at `path`, [`ServeError::InUse`] when a server answers
    /// there, [`ServeError::Socket`] when a socket call fails.
    pub fn start<Req, Rep, F>(
        path: &Path,
        service: &'static str,
        handler: F,
    ) -> Result<Self, ServeError>
    where
        Req: DeserializeOwned,
        Rep: ControlReply,
        F: Fn(Req) -> Rep + Send + Sync + 'static,
    {
        let fail = |action, error| ServeError::Socket {
            action,
            path: path.to_owned(),
            error,
        };
        let name = path
            .file_name()
            .ok_or_else(|| fail("name", io::Error::other("the path has no file name")))?;
        let staging = path.with_file_name(format!(".{}.new", name.to_string_lossy()));
        check_replaceable(&staging)?;
        let _ = std::fs::remove_file(&staging);
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| fail("create", e.into()))?;
        let addr = UnixAddr::new(&staging).map_err(|e| fail("address", e.into()))?;
        bind(listener.as_raw_fd(), &addr).map_err(|e| fail("bind", e.into()))?;
        let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail("set the mode of", e))
            .and_then(|()| {
                listen(&listener, Backlog::MAXCONN).map_err(|e| fail("listen on", e.into()))
            })
            .and_then(|()| check_replaceable(path))
            .and_then(|()| std::fs::rename(&staging, path).map_err(|e| fail("place", e)))
            .and_then(|()| std::fs::symlink_metadata(path).map_err(|e| fail("stat", e)));
        let meta = match placed {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                return Err(e);
            }
        };
        let me = nix::unistd::geteuid().as_raw();
        let busy = |conn: OwnedFd| {
            let conn = UnixStream::from(conn);
            // A short reply into an empty socket buffer: it never blocks.
            let _ = conn.set_nonblocking(true);
            let refusal = Rep::error("too many requests at once; try again".into());
            reply(&conn, &refusal, Instant::now() + Duration::from_millis(100));
        };
        let serve = move |conn: OwnedFd| serve_one(&UnixStream::from(conn), service, me, &handler);
        let stopper = serve_clients(
            listener,
            &format!("{service} control"),
            MAX_CLIENTS,
            256 << 10,
            busy,
            serve,
        )
        .map_err(|e| {
            // Placed, but nobody will answer there: take it back.
            let _ = std::fs::remove_file(path);
            fail("serve", e)
        })?;
        Ok(ControlServer {
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
            stopper,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stopper.stop();
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` may be bound over: nothing there, or a socket nobody
/// listens on.
fn check_replaceable(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(ServeError::Socket {
                action: "inspect the path of",
                path: path.to_owned(),
                error,
            })
        }
    };
    let kind = meta.file_type();
    let not = |kind| {
        Err(ServeError::NotASocket {
            path: path.to_owned(),
            kind,
        })
    };
    if kind.is_symlink() {
        return not("a symbolic link");
    }
    if kind.is_file() {
        return not("a regular file");
    }
    if kind.is_dir() {
        return not("a directory");
    }
    if !kind.is_socket() {
        return not("a special file");
    }
    // A socket of another type that answers refuses us (EPROTOTYPE): it is
    // not stale either.
    match stream::connect(path, Instant::now() + Duration::from_millis(100)) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => Err(ServeError::InUse {
            path: path.to_owned(),
        }),
    }
}

/// One client: its uid checked, its request read within the deadline,
/// answered, and the reply written within a deadline of its own.
fn serve_one<Req, Rep, F>(conn: &UnixStream, service: &str, me: u32, handler: &F)
where
    Req: DeserializeOwned,
    Rep: ControlReply,
    F: Fn(Req) -> Rep,
{
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let answer = match read_request(conn, service, me, deadline) {
        Ok(req) => handler(req),
        Err(message) => Rep::error(message),
    };
    reply(conn, &answer, Instant::now() + REQUEST_DEADLINE);
}

fn read_request<Req: DeserializeOwned>(
    conn: &UnixStream,
    service: &str,
    me: u32,
    deadline: Instant,
) -> Result<Req, String> {
    let peer = getsockopt(conn, sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who is asking: {e}"))?;
    if peer.uid() != me {
        tracing::warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "a {service} control request from another user refused"
        );
        return Err(format!(
            "user {} may not use this {service} (it belongs to uid {me})",
            peer.uid()
        ));
    }
    let body = match stream::read_to_end(conn, deadline, MAX_REQUEST) {
        Ok(body) => body,
        Err(ReadError::TimedOut) => {
            return Err(format!(
                "cannot read the request: it did not end within {REQUEST_DEADLINE:?}"
            ))
        }
        Err(ReadError::TooLarge) => return Err(format!("request larger than {MAX_REQUEST} bytes")),
        Err(ReadError::Io(e, _)) => return Err(format!("cannot read the request: {e}")),
    };
    serde_json::from_slice(&body).map_err(|e| format!("malformed request: {e}"))
}

fn reply<Rep: ControlReply>(conn: &UnixStream, answer: &Rep, deadline: Instant) {
    // A reply is plain data; should it not serialize, the client sees EOF
    // and says the reply is malformed.
    let body = serde_json::to_vec(answer).unwrap_or_default();
    let _ = stream::write_all(conn, &body, deadline);
    let _ = conn.shutdown(Shutdown::Write);
}
