//! The IPv6 `accept_dad` toggle: off while slirp4netns creates the tap device
//! (so its address is not "tentative" for 1-2 s), then restored.

use std::path::PathBuf;

use netns_util::{Netns, NetnsError};

const ACCEPT_DAD: &str = "/proc/sys/net/ipv6/conf/default/accept_dad";

/// A failure to read or write `accept_dad`.
#[derive(Debug, thiserror::Error)]
pub enum DadError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Reading or writing the sysctl failed.
    #[error("failed to {action} {ACCEPT_DAD} in network namespace {netns}: {source}")]
    Sysctl {
        /// `read` or `write`.
        action: &'static str,
        /// The namespace path.
        netns: PathBuf,
        /// The error.
        source: std::io::Error,
    },
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
    pub fn disable(netns: Netns) -> Result<Option<Self>, DadError> {
        let path = netns.path().to_owned();
        let original = netns.run(|| match std::fs::read_to_string(ACCEPT_DAD) {
            Ok(v) => {
                let v = v.trim().to_owned();
                if v != "0" {
                    std::fs::write(ACCEPT_DAD, "0").map_err(|source| DadError::Sysctl {
                        action: "write",
                        netns: path.clone(),
                        source,
                    })?;
                }
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DadError::Sysctl {
                action: "read",
                netns: path.clone(),
                source,
            }),
        })??;
        Ok(match original {
            Some(v) if v != "0" => Some(AcceptDadGuard {
                netns,
                original: v,
                restored: false,
            }),
            _ => None,
        })
    }

    /// The value that will be written back.
    pub fn original(&self) -> &str {
        &self.original
    }

    /// Writes the original value back now.
    pub fn restore(mut self) -> Result<(), DadError> {
        self.restored = true;
        self.write_back()
    }

    fn write_back(&self) -> Result<(), DadError> {
        let path = self.netns.path().to_owned();
        self.netns.run(|| {
            std::fs::write(ACCEPT_DAD, &self.original).map_err(|source| DadError::Sysctl {
                action: "write",
                netns: path,
                source,
            })
        })?
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
