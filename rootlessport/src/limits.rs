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
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(hard);
    }
    // An unlimited hard limit: the kernel takes at most fs.nr_open.
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(soft)
        .min(hard);
    if most > soft {
        setrlimit(Resource::RLIMIT_NOFILE, most, hard)?;
    }
    Ok(most.max(soft))
}
