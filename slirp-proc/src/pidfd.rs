//! pidfd_open(2) and waiting on it.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Opens a pidfd for `pid` (close-on-exec). See
/// [pidfd_open(2)](https://man7.org/linux/man-pages/man2/pidfd_open.2.html).
#[allow(unsafe_code)]
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or
    // -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else
    // owns it; pidfds are always close-on-exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits up to `timeout` for the process behind `pidfd` to exit; `true` once
/// it has (it is not reaped).
pub(crate) fn exited_within(pidfd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// How waiting for a ready byte ended.
#[derive(Debug)]
pub(crate) enum ReadyWait {
    /// The byte `1` arrived.
    Ready,
    /// Another byte arrived.
    BadByte(u8),
    /// The process ended (or closed the pipe without writing), so it is ending.
    Ended,
    /// Neither within the timeout.
    TimedOut,
    /// poll or read failed.
    Failed(io::Error),
}

/// Waits for the ready byte on `ready`, the death of the process behind
/// `pidfd`, or `timeout`, whichever comes first.
pub(crate) fn wait_ready_or_death(
    ready: OwnedFd,
    pidfd: &impl AsFd,
    timeout: Duration,
) -> ReadyWait {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    let mut ready = std::fs::File::from(ready);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return ReadyWait::TimedOut;
        }
        let mut fds = [
            PollFd::new(ready.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return ReadyWait::Failed(e.into()),
        }
        let ready_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let died = fds[1].revents().is_some_and(|r| !r.is_empty());
        if ready_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            let mut byte = [0u8; 1];
            match ready.read(&mut byte) {
                Ok(1) if byte[0] == b'1' => return ReadyWait::Ready,
                Ok(1) => return ReadyWait::BadByte(byte[0]),
                // EOF: it closed the pipe without the byte, so it is ending.
                Ok(_) => return ReadyWait::Ended,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadyWait::Failed(e),
            }
        }
        if died {
            return ReadyWait::Ended;
        }
    }
}
