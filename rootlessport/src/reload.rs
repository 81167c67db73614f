//! The reload socket: `<TmpDir>/rp/<ContainerID>`, SOCK_SEQPACKET. After a
//! network connect or disconnect podman sends the new child IP as a JSON
//! string; every forward is pointed there and the answer is `OK` or the error.
//!
//! The path may be longer than a `sockaddr_un` holds, so it is bound and
//! connected through `/proc/self/fd/<dirfd>/<id>` with an `O_PATH` dirfd.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::socket::{
    accept4, bind, connect, listen, recv, send, setsockopt, socket, sockopt, AddressFamily,
    Backlog, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;

use crate::config::parse_child_ip;
use crate::target::Target;

/// A failure to set up or use the reload socket.
#[derive(Debug, thiserror::Error)]
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

/// A SEQPACKET socket and the short address of `<dir>/<name>`. The dirfd is
/// returned too: the address names it, so it must stay open until bind or
/// connect.
fn seqpacket_at(
    dir: &Path,
    name: &str,
) -> Result<(OwnedFd, OwnedFd, UnixAddr), (&'static str, nix::Error)> {
    let dirfd = open_dir(dir).map_err(|e| ("open the directory of", e))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| ("create", e))?;
    let addr = short_addr(&dirfd, name).map_err(|e| ("address", e))?;
    Ok((dirfd, sock, addr))
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
    pub fn bind(tmp_dir: &Path, container_id: &str) -> Result<Self, ReloadError> {
        let dir = tmp_dir.join("rp");
        let dir_err = |source| ReloadError::Dir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let path = dir.join(container_id);
        let fail = |action, source| ReloadError::Socket {
            action,
            path: path.clone(),
            source,
        };
        // A stale socket from an earlier run would make bind fail.
        let _ = std::fs::remove_file(&path);
        let (_dirfd, listener, addr) =
            seqpacket_at(&dir, container_id).map_err(|(action, e)| fail(action, e))?;
        bind(listener.as_raw_fd(), &addr).map_err(|e| fail("bind", e))?;
        let server = ReloadServer {
            listener,
            file: SocketFile(path.clone()),
        };
        listen(
            &server.listener,
            Backlog::new(8).unwrap_or(Backlog::MAXCONN),
        )
        .map_err(|e| fail("listen on", e))?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }

    /// Serves requests on a thread of its own, retargeting `target`. The
    /// returned guard stops the thread and removes the socket file on drop.
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
            .spawn(move || loop {
                let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => owned(fd),
                    Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                    // Shut down by the guard (EINVAL), or broken: stop serving.
                    Err(_) => return,
                };
                let _ = setsockopt(&conn, sockopt::ReceiveTimeout, &TimeVal::new(5, 0));
                let answer = match handle(&conn, &target) {
                    Ok(()) => "OK".to_owned(),
                    Err(text) => text,
                };
                let _ = send(conn.as_raw_fd(), answer.as_bytes(), MsgFlags::MSG_NOSIGNAL);
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
pub fn reload(tmp_dir: &Path, container_id: &str, child_ip: &str) -> Result<(), ReloadError> {
    let dir = tmp_dir.join("rp");
    let path = dir.join(container_id);
    let fail = |action, source| ReloadError::Socket {
        action,
        path: path.clone(),
        source,
    };
    let (_dirfd, conn, addr) =
        seqpacket_at(&dir, container_id).map_err(|(action, e)| fail(action, e))?;
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
