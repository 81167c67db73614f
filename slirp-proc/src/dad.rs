//! The IPv6 `accept_dad` toggle: off while slirp4netns creates the tap device
//! (so its address is not "tentative" for 1-2 s), then restored.

use std::path::PathBuf;

use netns_util::{Netns, NetnsError};

const ACCEPT_DAD: &str = "/proc/sys/net/ipv6/conf/default/accept_dad";

/// A failure to read or write `accept_dad`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DadError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Reading or writing the sysctl failed.
    #[error("failed to {action} {ACCEPT_DAD} in network namespace {}: {error}", netns.display())]
    Sysctl {
        /// `read` or `write`.
        action: &'static str,
        /// The namespace path (`/proc/thread-self/ns/net` when the caller
        /// was already inside).
        netns: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl DadError {
    fn in_netns(self, path: &std::path::Path) -> Self {
        match self {
            DadError::Sysctl { action, error, .. } => DadError::Sysctl {
                action,
                netns: path.to_owned(),
                error,
            },
            other => other,
        }
    }
}

fn sysctl_error(action: &'static str, error: std::io::Error) -> DadError {
    DadError::Sysctl {
        action,
        netns: PathBuf::from("/proc/thread-self/ns/net"),
        error,
    }
}

/// Sets `accept_dad` to 0 in the calling thread's network namespace and
/// returns the value it had, or `None` when IPv6 is off in the kernel (no
/// such file) or it was 0 already. For a process that is inside the
/// namespace already (slirpnet's namespace child); [`AcceptDadGuard`] does
/// the same from outside.
///
/// # Errors
///
/// The sysctl cannot be read or written.
pub fn disable_here() -> Result<Option<String>, DadError> {
    match std::fs::read_to_string(ACCEPT_DAD) {
        Ok(v) => {
            let v = v.trim().to_owned();
            if v == "0" {
                return Ok(None);
            }
            std::fs::write(ACCEPT_DAD, "0").map_err(|e| sysctl_error("write", e))?;
            Ok(Some(v))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(sysctl_error("read", e)),
    }
}

/// Writes `original` (from [`disable_here`]) back in the calling thread's
/// network namespace.
///
/// # Errors
///
/// The sysctl cannot be written.
pub fn restore_here(original: &str) -> Result<(), DadError> {
    std::fs::write(ACCEPT_DAD, original).map_err(|e| sysctl_error("write", e))
}

/// Holds `accept_dad` at 0 in a namespace and writes the original value
/// back on [`restore`](AcceptDadGuard::restore) or drop.
#[derive(Debug)]
pub struct AcceptDadGuard {
    netns: Netns,
    original: String,
    restored: bool,
}

impl AcceptDadGuard {
    /// Sets `accept_dad` to 0 inside `netns`, remembering the value. `None`
    /// when IPv6 is off in the kernel (no such file) or it is already 0.
    ///
    /// # Errors
    ///
    /// The namespace cannot be entered, or the sysctl read or written.
    pub fn disable(netns: Netns) -> Result<Option<Self>, DadError> {
        let path = netns.path().to_owned();
        let original = netns.run(|| disable_here().map_err(|e| e.in_netns(&path)))??;
        Ok(original.map(|original| AcceptDadGuard {
            netns,
            original,
            restored: false,
        }))
    }

    /// The value that will be written back.
    pub fn original(&self) -> &str {
        &self.original
    }

    /// Writes the original value back now.
    ///
    /// # Errors
    ///
    /// The namespace cannot be entered or the sysctl written.
    pub fn restore(mut self) -> Result<(), DadError> {
        self.restored = true;
        self.write_back()
    }

    fn write_back(&self) -> Result<(), DadError> {
        let path = self.netns.path().to_owned();
        self.netns
            .run(|| restore_here(&self.original).map_err(|e| e.in_netns(&path)))?
    }
}

impl Drop for AcceptDadGuard {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = self.write_back() {
                tracing::warn!(error = %e, "could not restore accept_dad");
            }
        }
    }
}
