//! Waiting for the API socket file to appear while watching the process that
//! is meant to create it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the socket path is looked at.
const POLL: Duration = Duration::from_millis(5);

/// The socket did not appear.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The process that should create the socket is gone.
    #[error("slirp4netns exited before creating its API socket {path}: {reason}")]
    ProcessExited {
        /// The socket path.
        path: PathBuf,
        /// How the process ended, as the watcher described it.
        reason: String,
    },
    /// The deadline passed.
    #[error("slirp4netns API socket {path} did not appear within {timeout:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// Something that is not a socket is at the path.
    #[error("{path} exists but is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path cannot be looked at.
    #[error("failed to look at slirp4netns API socket {path}: {source}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Waits until a socket exists at `path`.
///
/// `exited(wait)` is called between looks: it may block for up to `wait`
/// (with a pidfd, a `poll` on it) and returns `Some(description)` as soon as
/// the process has ended, which ends the wait at once with
/// [`WaitError::ProcessExited`].
pub fn wait_for_socket(
    path: &Path,
    timeout: Duration,
    mut exited: impl FnMut(Duration) -> Option<String>,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => return Ok(()),
            Ok(_) => {
                return Err(WaitError::NotASocket {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WaitError::Stat {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(WaitError::Timeout {
                path: path.to_owned(),
                timeout,
            });
        };
        let step = left.min(POLL);
        let started = Instant::now();
        if let Some(reason) = exited(step) {
            return Err(WaitError::ProcessExited {
                path: path.to_owned(),
                reason,
            });
        }
        // A watcher that cannot block (try_wait) must not turn this into a spin.
        if let Some(rest) = step.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
