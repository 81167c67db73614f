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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sys::socket::{
    accept4, bind, connect, listen, recv, send, setsockopt, socket, sockopt, AddressFamily,
    Backlog, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;

use crate::target::Target;
use slirp_opts::rootlessport::parse_child_ip;

/// How long one reload client may take to send its request.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Reload requests served at once; more are answered with an error at once.
const MAX_IN_FLIGHT: usize = 256;

/// A failure to set up or use the reload socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The directory could not be made.
    #[error("failed to create the reload socket directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A socket call failed.
    #[error("failed to {action} reload socket {path}: {source}")]
    Socket {
        /// What was done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: nix::Error,
    },
    /// The forwarder answered with an error.
    #[error("port reloading failed: {0}")]
    Refused(String),
}

/// The reload socket's path for a container.
pub fn socket_path(tmp_dir: &Path, container_id: &str) -> PathBuf {
    tmp_dir.join("rp").join(container_id)
}

/// `/proc/self/fd/N/<name>` for an O_PATH dirfd: any length of directory fits.
fn short_addr(dir: &OwnedFd, name: &str) -> nix::Result<UnixAddr> {
    UnixAddr::new(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()).as_str())
}

fn open_dir(dir: &Path) -> nix::Result<OwnedFd> {
    open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// A close-on-exec SEQPACKET socket.
fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Removes the socket file when dropped, from the moment it is bound.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
        let dir_err = |source| ReloadError::Dir {
            path: dir.clone(),
            source,
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
        let fail = |action, source| ReloadError::Socket {
            action,
            path: path.clone(),
            source,
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

    /// Serves requests on a thread of its own, retargeting `target`. The
    /// returned guard stops the thread and removes the socket file on drop.
    ///
    /// # Errors
    ///
    /// The listener cannot be duplicated or the thread started.
    pub fn serve(self, target: Target) -> Result<ReloadGuard, ReloadError> {
        let path = self.file.0.clone();
        let waker = self.listener.try_clone().map_err(|e| ReloadError::Socket {
            action: "duplicate",
            path: path.clone(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        let ReloadServer { listener, file } = self;
        std::thread::Builder::new()
            .name("rootlessport-reload".into())
            .spawn(move || {
                let in_flight = Arc::new(AtomicUsize::new(0));
                loop {
                    let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                        Ok(fd) => owned(fd),
                        Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                        // Out of fds or memory for a moment: try again shortly.
                        Err(nix::Error::EMFILE | nix::Error::ENFILE | nix::Error::ENOMEM | nix::Error::ENOBUFS) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        // Shut down by the guard (EINVAL), or broken: stop serving.
                        Err(_) => return,
                    };
                    // Each client on a thread of its own with its own
                    // deadline: one that connects and never sends delays
                    // nobody else.
                    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        let _ = send(conn.as_raw_fd(), b"rootless port failed to decode ports: too many reload requests at once", MsgFlags::MSG_NOSIGNAL);
                        continue;
                    }
                    let (target, counter) = (target.clone(), in_flight.clone());
                    let spawned = std::thread::Builder::new()
                        .name("rootlessport-reload-client".into())
                        .stack_size(64 << 10)
                        .spawn(move || {
                            answer(&conn, &target);
                            counter.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })
            .map_err(|e| ReloadError::Socket {
                action: "start a thread for",
                path: path.clone(),
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        Ok(ReloadGuard { file, waker })
    }
}

/// Stops the reload thread and removes the socket file when dropped.
#[derive(Debug)]
pub struct ReloadGuard {
    file: SocketFile,
    waker: OwnedFd,
}

impl ReloadGuard {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

impl Drop for ReloadGuard {
    fn drop(&mut self) {
        // Wakes the blocked accept with EINVAL.
        let _ =
            nix::sys::socket::shutdown(self.waker.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        // `file` removes the socket file as it drops.
    }
}

#[allow(unsafe_code)]
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads one request (within [`CLIENT_DEADLINE`]) and answers it.
fn answer(conn: &OwnedFd, target: &Target) {
    let _ = setsockopt(
        conn,
        sockopt::ReceiveTimeout,
        &TimeVal::new(CLIENT_DEADLINE.as_secs() as i64, 0),
    );
    let _ = setsockopt(
        conn,
        sockopt::SendTimeout,
        &TimeVal::new(CLIENT_DEADLINE.as_secs() as i64, 0),
    );
    let answer = match handle(conn, target) {
        Ok(()) => "OK".to_owned(),
        Err(text) => text,
    };
    let _ = send(conn.as_raw_fd(), answer.as_bytes(), MsgFlags::MSG_NOSIGNAL);
}

fn handle(conn: &OwnedFd, target: &Target) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    let n = recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("rootless port failed to decode ports: {e}"))?;
    let ip: String = serde_json::from_slice(&buf[..n])
        .map_err(|e| format!("rootless port failed to decode ports: {e}"))?;
    let ip = parse_child_ip(&ip).map_err(|e| format!("rootless port failed to add port: {e}"))?;
    target.set(ip);
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
    let fail = |action, source| ReloadError::Socket {
        action,
        path: path.clone(),
        source,
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
