//! Namespace calls for the child between fork and exec.
//!
//! A user namespace can be joined only by a single-threaded process, so a
//! helper that must run inside one (as rootless podman runs `rootlessport`)
//! joins it between fork and exec. The call lives here so that setns has one
//! owner in the workspace.

use std::io;
use std::os::fd::RawFd;

/// Joins the user namespace open at `userns` (an fd on `/proc/PID/ns/user`).
/// Async-signal-safe: one system call, no allocation or lock, so it may run
/// in a `pre_exec` hook.
///
/// # Errors
///
/// `setns(2)` fails: the calling process has other threads (EINVAL), lacks
/// CAP_SYS_ADMIN in the target namespace (EPERM), or `userns` is not a user
/// namespace.
#[allow(unsafe_code)]
pub fn join_userns_before_exec(userns: RawFd) -> io::Result<()> {
    // SAFETY: setns takes any integer; an fd that is not a user namespace
    // makes it fail with EINVAL, which is returned.
    let r = unsafe { nix::libc::setns(userns, nix::libc::CLONE_NEWUSER) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
