//! Unix stream sockets under a deadline: connecting without blocking on a
//! full backlog, reading to EOF and writing everything, each bounded by one
//! instant rather than by a timeout per call (a peer that trickles a byte
//! at a time still meets the deadline).

use std::io::{self, ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect as connect_fd, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// Time left until `deadline`; `None` once it has passed.
pub(crate) fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Whether `e` is a socket timeout (SO_RCVTIMEO / SO_SNDTIMEO expired).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Connects to `path` without blocking past `deadline`: a unix stream
/// connect blocks while the listener's backlog is full, so a non-blocking
/// one is retried. The stream returned is blocking and close-on-exec; a
/// connect that runs out of time fails with [`ErrorKind::TimedOut`].
pub(crate) fn connect(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let mut pause = Duration::from_millis(1);
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match connect_fd(fd.as_raw_fd(), &addr) {
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

/// Why [`read_to_end`] stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The deadline passed before EOF.
    TimedOut,
    /// More than the limit came.
    TooLarge,
    /// The socket failed; what came before is kept.
    Io(io::Error, Vec<u8>),
}

/// Reads `stream` to EOF, at most `limit` bytes, by `deadline`.
pub(crate) fn read_to_end(
    stream: &UnixStream,
    deadline: Instant,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let left = remaining(deadline).ok_or(ReadError::TimedOut)?;
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return Err(ReadError::Io(e, body));
        }
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Ok(body),
            Ok(n) => {
                body.extend_from_slice(&chunk[..n]);
                if body.len() > limit {
                    return Err(ReadError::TooLarge);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(ReadError::TimedOut),
            Err(e) => return Err(ReadError::Io(e, body)),
        }
    }
}

/// Writes all of `data` to `stream` by `deadline`; a deadline that passes
/// fails with [`ErrorKind::TimedOut`].
pub(crate) fn write_all(stream: &UnixStream, data: &[u8], deadline: Instant) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let left = remaining(deadline).ok_or_else(|| io::Error::from(ErrorKind::TimedOut))?;
        stream.set_write_timeout(Some(left))?;
        // MSG_NOSIGNAL: a peer that went away is an error, not SIGPIPE.
        match send(stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Err(ErrorKind::TimedOut.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
