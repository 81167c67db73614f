//! The reload socket: `<TmpDir>/rp/<ContainerID>`, SOCK_SEQPACKET. After a
//! network connect or disconnect podman sends the new child IP as a JSON
//! string; every forward is pointed there and the answer is `OK` or the error.
//!
//! The path may be longer than a `sockaddr_un` holds, so it is bound and
//! connected through `/proc/self/fd/<dirfd>/<id>` with an `O_PATH` dirfd.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::socket::{bind, connect, listen, recv, send, setsockopt, sockopt, Backlog, MsgFlags};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;

use crate::seqpacket::{self, open_dir, seqpacket, short_addr, SocketFile};
use crate::target::ChildIp;
use slirp_opts::rootlessport::parse_child_ip;

/// A failure to set up or use the reload socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The directory could not be made.
    #[error("failed to create the reload socket directory {path}: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error (or why the directory cannot be used).
        error: io::Error,
    },
    /// A socket call failed.
    #[error("failed to {action} reload socket {path}: {error}")]
    Socket {
        /// What was done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The forwarder answered with an error.
    #[error("port reloading failed: {0}")]
    Refused(String),
}

/// The reload socket's path for a container.
pub fn reload_socket_path(tmp_dir: &Path, container_id: &str) -> PathBuf {
    tmp_dir.join("rp").join(container_id)
}

/// The listening reload socket; the file is removed on drop.
#[derive(Debug)]
pub struct ReloadServer {
    listener: OwnedFd,
    file: SocketFile,
}

impl ReloadServer {
    /// Creates `<tmp_dir>/rp` (mode 0700) and listens at `<tmp_dir>/rp/<id>`.
    ///
    /// `rp` is never followed if it is a symbolic link (nor is anything
    /// chmodded through one): it must be a directory of its own.
    ///
    /// # Errors
    ///
    /// [`ReloadError::Dir`] when `rp` cannot be made or is not a plain
    /// directory, [`ReloadError::Socket`] when the socket cannot be bound.
    pub fn bind(tmp_dir: &Path, container_id: &str) -> Result<Self, ReloadError> {
        let dir = tmp_dir.join("rp");
        let dir_err = |error| ReloadError::Dir {
            path: dir.clone(),
            error,
        };
        std::fs::create_dir_all(tmp_dir).map_err(dir_err)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(dir_err(e)),
        }
        // O_NOFOLLOW: a symlink at `rp` fails here (ELOOP) instead of
        // letting us chmod, and bind in, whatever it points at.
        let dirfd = open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            // O_DIRECTORY with O_NOFOLLOW reports a symlink as ENOTDIR.
            let link = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink());
            dir_err(match e {
                _ if link => io::Error::other(
                    "it is a symbolic link; refusing to follow it (remove it, or point TmpDir elsewhere)",
                ),
                nix::Error::ENOTDIR => io::Error::other("it exists and is not a directory"),
                e => e.into(),
            })
        })?;
        nix::sys::stat::fchmod(&dirfd, Mode::from_bits_truncate(0o700))
            .map_err(|e| dir_err(e.into()))?;
        let path = dir.join(container_id);
        let fail = |action, error: nix::Error| ReloadError::Socket {
            action,
            path: path.clone(),
            error: error.into(),
        };
        // A stale socket from an earlier run would make bind fail.
        let _ = nix::unistd::unlinkat(
            &dirfd,
            container_id,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let listener = seqpacket().map_err(|e| fail("create", e))?;
        let addr = short_addr(&dirfd, container_id).map_err(|e| fail("address", e))?;
        bind(listener.as_raw_fd(), &addr).map_err(|e| fail("bind", e))?;
        let server = ReloadServer {
            listener,
            file: SocketFile(path.clone()),
        };
        listen(&server.listener, Backlog::MAXCONN).map_err(|e| fail("listen on", e))?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }

    /// Serves requests on a thread of its own, setting `child_ip`. The
    /// returned guard stops the thread and removes the socket file on drop.
    ///
    /// # Errors
    ///
    /// The listener cannot be duplicated or the thread started.
    pub fn serve(self, child_ip: ChildIp) -> Result<ReloadGuard, ReloadError> {
        let path = self.file.0.clone();
        let ReloadServer { listener, file } = self;
        let stopper = seqpacket::serve(
            listener,
            "rootlessport-reload",
            b"rootless port failed to decode ports: too many reload requests at once",
            move |conn| answer(conn, &child_ip),
        )
        .map_err(|error| ReloadError::Socket {
            action: "serve",
            path: path.clone(),
            error,
        })?;
        Ok(ReloadGuard {
            _stopper: stopper,
            file,
        })
    }
}

/// Stops the reload thread and removes the socket file when dropped.
#[derive(Debug)]
pub struct ReloadGuard {
    /// Declared first: the thread stops before the file goes.
    _stopper: slirp_api::control::Stopper,
    file: SocketFile,
}

impl ReloadGuard {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

/// Reads one request and answers `OK` or the error.
fn answer(conn: &OwnedFd, child_ip: &ChildIp) {
    let answer = match handle(conn, child_ip) {
        Ok(()) => "OK".to_owned(),
        Err(text) => text,
    };
    seqpacket::send_answer(conn, answer.as_bytes());
}

fn handle(conn: &OwnedFd, child_ip: &ChildIp) -> Result<(), String> {
    let request = seqpacket::read_request(conn, 4096)
        .map_err(|e| format!("rootless port failed to decode ports: {e}"))?;
    let ip: String = serde_json::from_slice(&request)
        .map_err(|e| format!("rootless port failed to decode ports: {e}"))?;
    let ip = parse_child_ip(&ip).map_err(|e| format!("rootless port failed to add port: {e}"))?;
    child_ip.set(ip);
    tracing::info!(%ip, "reloaded the child IP");
    Ok(())
}

/// Sends a new child IP to the forwarder of `container_id`, as podman does
/// after `podman network connect` or `disconnect`.
///
/// # Errors
///
/// [`ReloadError::Socket`] when the socket cannot be reached or answers
/// nothing, [`ReloadError::Refused`] with the forwarder's own error text.
pub fn reload(tmp_dir: &Path, container_id: &str, child_ip: &str) -> Result<(), ReloadError> {
    let dir = tmp_dir.join("rp");
    let path = dir.join(container_id);
    let fail = |action, error: nix::Error| ReloadError::Socket {
        action,
        path: path.clone(),
        error: error.into(),
    };
    let dirfd = open_dir(&dir).map_err(|e| fail("open the directory of", e))?;
    let conn = seqpacket().map_err(|e| fail("create", e))?;
    let addr = short_addr(&dirfd, container_id).map_err(|e| fail("address", e))?;
    connect(conn.as_raw_fd(), &addr).map_err(|e| fail("connect to", e))?;
    let _ = setsockopt(&conn, sockopt::ReceiveTimeout, &TimeVal::new(10, 0));
    let body = format!("{}\n", serde_json::Value::from(child_ip));
    send(conn.as_raw_fd(), body.as_bytes(), MsgFlags::MSG_NOSIGNAL)
        .map_err(|e| fail("send to", e))?;
    let mut buf = [0u8; 4096];
    let n = recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| fail("read the answer from", e))?;
    let answer = String::from_utf8_lossy(&buf[..n]);
    if answer == "OK" {
        Ok(())
    } else {
        Err(ReloadError::Refused(answer.into_owned()))
    }
}
