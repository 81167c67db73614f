//! The reload socket's SOCK_SEQPACKET plumbing, as podman's protocol has
//! it: one request per connection (one record, so the read deadline is the
//! whole request's) and one answer, each client on a short thread of its
//! own (slirp-api's accept loop, shared with our control sockets) with its
//! own deadline, so a client that connects and never sends delays nobody.
//! Our own control socket is slirp-api's (`slirp_api::control`), not this.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sys::socket::{
    recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;
use slirp_api::control::Stopper;

/// How long one client may take to send its request and read the answer.
pub(crate) const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once; more get `busy` at once.
const MAX_IN_FLIGHT: usize = 256;

/// `/proc/self/fd/N/<name>` for a dirfd: any length of directory fits.
pub(crate) fn short_addr(dir: &OwnedFd, name: &str) -> nix::Result<UnixAddr> {
    UnixAddr::new(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()).as_str())
}

/// An O_PATH fd on a directory, for [`short_addr`].
pub(crate) fn open_dir(dir: &Path) -> nix::Result<OwnedFd> {
    open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// A close-on-exec SEQPACKET socket.
pub(crate) fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Removes the socket file when dropped, from the moment it is bound.
#[derive(Debug)]
pub(crate) struct SocketFile(pub(crate) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads one request of at most `limit` bytes from `conn`.
pub(crate) fn read_request(conn: &OwnedFd, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; limit];
    let n = recv(conn.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC).map_err(io::Error::from)?;
    if n > limit {
        return Err(io::Error::other(format!(
            "request of {n} bytes; at most {limit} are accepted"
        )));
    }
    buf.truncate(n);
    Ok(buf)
}

/// Sends one answer (a full socket buffer or a gone client loses it).
pub(crate) fn send_answer(conn: &OwnedFd, answer: &[u8]) {
    let _ = send(conn.as_raw_fd(), answer, MsgFlags::MSG_NOSIGNAL);
}

/// Serves `listener` on a thread named `name` (slirp-api's accept loop,
/// shared with our control sockets): each accepted client, under
/// [`CLIENT_DEADLINE`] for its read and write, goes to `answer` on a short
/// thread of its own; past [`MAX_IN_FLIGHT`] at once a client gets `busy`
/// at once. Dropping the returned [`Stopper`] stops the thread.
pub(crate) fn serve(
    listener: OwnedFd,
    name: &str,
    busy: &'static [u8],
    answer: impl Fn(&OwnedFd) + Send + Sync + 'static,
) -> io::Result<Stopper> {
    let deadline = TimeVal::new(CLIENT_DEADLINE.as_secs() as i64, 0);
    let limit = move |conn: &OwnedFd| {
        let _ = setsockopt(conn, sockopt::ReceiveTimeout, &deadline);
        let _ = setsockopt(conn, sockopt::SendTimeout, &deadline);
    };
    slirp_api::control::serve_clients(
        listener,
        name,
        MAX_IN_FLIGHT,
        128 << 10,
        move |conn| {
            limit(&conn);
            send_answer(&conn, busy);
        },
        move |conn| {
            limit(&conn);
            answer(&conn);
        },
    )
}
