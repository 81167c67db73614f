//! The process's fd limit: what the program raises at start. The library
//! itself never changes process limits; it reads the soft limit to bound
//! its UDP flows.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft limit on open files to the hard limit, as the Go
/// runtime does at the start of every Go program (podman's own helper
/// included): podman starts the helper with `nofile` soft 1024, which a
/// few hundred clients would use up. Returns the soft limit now.
///
/// A program calls this once at start, before any thread exists; the
/// library never does, so an embedding process keeps its own limits.
///
/// # Errors
///
/// The limit could not be read or set (the soft limit stays as it was).
pub fn raise_fd_limit() -> Result<u64, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}
