//! Waiting for the API socket file to appear while watching the process that
//! is meant to create it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the socket path is looked at.
const POLL: Duration = Duration::from_millis(5);

/// The socket did not appear. The message of each variant is complete;
/// [`source`](std::error::Error::source) returns `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("failed to look at slirp4netns API socket {path}: {error}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// Waits until a socket exists at `path`.
///
/// `exited(wait)` is called between looks: it may block for up to `wait`
/// (with a pidfd, a `poll` on it) and returns `Some(description)` as soon as
/// the process has ended, which ends the wait at once with
/// [`WaitError::ProcessExited`].
///
/// ```
/// use std::time::Duration;
///
/// let dir = std::env::temp_dir().join(format!("slirp-api-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("api.sock");
/// let _listener = std::os::unix::net::UnixListener::bind(&path)?;
/// // A real watcher waits on the slirp4netns process for up to `_wait` and
/// // returns how it ended, such as Some("exit status 1".into()).
/// slirp_api::wait_for_socket(&path, Duration::from_secs(1), |_wait| None)?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`WaitError::ProcessExited`] as soon as `exited` reports an end,
/// [`WaitError::Timeout`] when `timeout` passes, [`WaitError::NotASocket`]
/// when something else is at `path`, and [`WaitError::Stat`] when `path`
/// cannot be looked at.
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
            Err(error) => {
                return Err(WaitError::Stat {
                    path: path.to_owned(),
                    error,
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
