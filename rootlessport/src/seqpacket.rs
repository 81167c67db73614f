//! A small request/answer server on SOCK_SEQPACKET unix sockets, for the
//! reload socket as podman's protocol has it: one request per connection
//! (one record, so the read deadline is the whole request's), each client
//! on a short thread of its own with its own deadline, so a client that
//! connects and never sends delays nobody. Our own control socket is
//! slirp-api's (`slirp_api::control`), not this.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sys::socket::{
    accept4, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;

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

#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
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

/// Serves `listener` on a thread named `name`: each accepted client, under
/// [`CLIENT_DEADLINE`] for its reads and writes, goes to `answer` on a
/// short thread of its own; past [`MAX_IN_FLIGHT`] at once a client gets
/// `busy` at once. Returns a duplicate of the listener: shutting it down
/// (SHUT_RDWR) stops the thread.
pub(crate) fn serve(
    listener: OwnedFd,
    name: &str,
    busy: &'static [u8],
    answer: impl Fn(&OwnedFd) + Send + Sync + 'static,
) -> io::Result<OwnedFd> {
    let waker = listener.try_clone()?;
    let answer = Arc::new(answer);
    let client_name = format!("{name}-client");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let in_flight = Arc::new(AtomicUsize::new(0));
            loop {
                let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => owned(fd),
                    Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                    // Out of fds or memory for a moment: try again shortly.
                    Err(
                        nix::Error::EMFILE
                        | nix::Error::ENFILE
                        | nix::Error::ENOMEM
                        | nix::Error::ENOBUFS,
                    ) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    // Shut down through the waker (EINVAL), or broken.
                    Err(_) => return,
                };
                let deadline = TimeVal::new(CLIENT_DEADLINE.as_secs() as i64, 0);
                let _ = setsockopt(&conn, sockopt::ReceiveTimeout, &deadline);
                let _ = setsockopt(&conn, sockopt::SendTimeout, &deadline);
                if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    send_answer(&conn, busy);
                    continue;
                }
                let (answer, counter) = (answer.clone(), in_flight.clone());
                let spawned = std::thread::Builder::new()
                    .name(client_name.clone())
                    .stack_size(128 << 10)
                    .spawn(move || {
                        answer(&conn);
                        counter.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(waker)
}

/// Stops a [`serve`] thread through its waker.
pub(crate) fn stop(waker: &OwnedFd) {
    // Wakes the blocked accept with EINVAL.
    let _ = nix::sys::socket::shutdown(waker.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}
