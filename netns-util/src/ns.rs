//! Opening a network namespace file and running work inside it.

use std::any::Any;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use caps::Capability;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::privilege::{has_cap, PrivilegeError};

/// A failure to open or enter a network namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The path cannot be opened.
    #[error("failed to open network namespace {path}: {error}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The file is not a namespace file: `found` says what it is instead
    /// ("a FIFO", "a directory", "a regular file", ...).
    #[error(
        "{path} is not a namespace file but {found} (expected a file like /run/netns/NAME or /proc/PID/ns/net)"
    )]
    NotANamespace {
        /// The path.
        path: PathBuf,
        /// What the path is.
        found: &'static str,
    },
    /// The file is a namespace, but not a network namespace.
    #[error("{path} is a namespace, but not a network namespace")]
    NotANetworkNamespace {
        /// The path.
        path: PathBuf,
    },
    /// `setns` was refused for lack of privilege.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// `setns` failed otherwise.
    #[error("failed to join network namespace {path}: {error}")]
    Join {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The open namespace file cannot be looked at ([`Netns::id`]).
    #[error("failed to stat network namespace {path}: {error}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The thread that would enter the namespace could not be started.
    #[error("failed to start a thread for network namespace {path}: {error}")]
    Spawn {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The user namespace that owns it cannot be joined (by the child that
    /// [`Netns::open_inside`] forks for a rootless caller).
    #[error("failed to join user namespace {path}: {error}")]
    JoinUserns {
        /// The user namespace's path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The child that joins the namespaces for [`Netns::open_inside`]
    /// cannot be made, or ended without an answer.
    #[error("failed to fork a child for network namespace {path}: {error}")]
    Fork {
        /// The network namespace's path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// A socket or file cannot be made inside ([`Netns::open_inside`]).
    #[error("failed to make {what} in network namespace {path}: {error}")]
    Inside {
        /// The network namespace's path.
        path: PathBuf,
        /// What was being made.
        what: String,
        /// The error.
        error: io::Error,
    },
    /// The thread inside the namespace panicked.
    #[error("the thread in network namespace {path} panicked: {message}")]
    Panicked {
        /// The path.
        path: PathBuf,
        /// The panic's message.
        message: String,
    },
}

// NS_GET_NSTYPE (linux/nsfs.h): _IO(0xb7, 0x3), returns the CLONE_NEW* type.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// An open network namespace file.
#[derive(Debug)]
pub struct Netns {
    file: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` (close-on-exec) and checks that it is a network namespace.
    ///
    /// Never blocks: what is not a regular file (a FIFO, a socket, a
    /// device, a directory) is refused from its `stat` before any open, and
    /// the open itself is non-blocking in case the path changes in between.
    /// Opening needs no privilege beyond read access to the file.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Open`] when the path cannot be read,
    /// [`NetnsError::NotANamespace`] when it is not a namespace file, and
    /// [`NetnsError::NotANetworkNamespace`] for another kind of namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let path = path.as_ref().to_owned();
        let open_err = |error| NetnsError::Open {
            path: path.clone(),
            error,
        };
        let meta = std::fs::metadata(&path).map_err(open_err)?;
        let ft = meta.file_type();
        let found = if ft.is_fifo() {
            Some("a FIFO")
        } else if ft.is_socket() {
            Some("a socket")
        } else if ft.is_dir() {
            Some("a directory")
        } else if ft.is_char_device() || ft.is_block_device() {
            Some("a device")
        } else {
            None
        };
        if let Some(found) = found {
            return Err(NetnsError::NotANamespace { path, found });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(&path)
            .map_err(open_err)?;
        let fs = fstatfs(&file).map_err(|e| open_err(e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            let found = if file.metadata().is_ok_and(|m| m.is_dir()) {
                "a directory"
            } else {
                "a regular file"
            };
            return Err(NetnsError::NotANamespace { path, found });
        }
        match nstype(file.as_fd()) {
            Ok(t) if t == CloneFlags::CLONE_NEWNET.bits() => {}
            Ok(_) => return Err(NetnsError::NotANetworkNamespace { path }),
            Err(_) => {
                return Err(NetnsError::NotANamespace {
                    path,
                    found: "a file of nsfs that is no namespace",
                })
            }
        }
        Ok(Netns {
            file: file.into(),
            path,
        })
    }

    /// The namespace of the calling thread (`/proc/thread-self/ns/net`).
    ///
    /// # Errors
    ///
    /// As [`Netns::open`]; in practice only when `/proc` is not mounted.
    pub fn current() -> Result<Self, NetnsError> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on a new thread that has joined this namespace, and
    /// returns what it made. The calling thread never changes namespace.
    ///
    /// The thread ends when `work` returns; sockets it opened and children it
    /// spawned stay in the namespace.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Privilege`] without CAP_SYS_ADMIN over the namespace,
    /// [`NetnsError::Join`] when `setns` fails otherwise,
    /// [`NetnsError::Spawn`] when no thread can be started, and
    /// [`NetnsError::Panicked`] when `work` panics. `work` runs only once
    /// the thread is inside.
    pub fn run<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    self.join_current_thread()?;
                    Ok(work())
                })
                .map_err(|error| NetnsError::Spawn {
                    path: self.path.clone(),
                    error,
                })?;
            handle.join().map_err(|panic| NetnsError::Panicked {
                path: self.path.clone(),
                message: panic_message(&panic),
            })?
        })
    }

    /// Starts a long-lived thread named `name` that joins this namespace and
    /// then runs `work`. Returns once the thread is inside (or failed to get
    /// there), so a missing privilege is reported here, not later. The
    /// handle yields `None` only when joining failed (and `work` never ran).
    ///
    /// # Errors
    ///
    /// [`NetnsError::Open`] when the namespace file cannot be duplicated for
    /// the thread, and otherwise as [`Netns::run`] (a panic of `work` itself
    /// comes out of the handle's `join`, not here).
    pub fn spawn<T, F>(
        &self,
        name: &str,
        work: F,
    ) -> Result<std::thread::JoinHandle<Option<T>>, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.file.try_clone().map_err(|error| NetnsError::Open {
            path: self.path.clone(),
            error,
        })?;
        let owned = Netns {
            file,
            path: self.path.clone(),
        };
        let (joined_tx, joined_rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let joined = owned.join_current_thread();
                let ok = joined.is_ok();
                let _ = joined_tx.send(joined);
                drop(owned);
                // On failure the caller gets the error; the work must not
                // run outside the namespace.
                ok.then(work)
            })
            .map_err(|error| NetnsError::Spawn {
                path: self.path.clone(),
                error,
            })?;
        match joined_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            // The thread ended without a word: it panicked while joining.
            Err(_) => Err(NetnsError::Panicked {
                path: self.path.clone(),
                message: match handle.join() {
                    Err(panic) => panic_message(&panic),
                    Ok(_) => "it ended before joining the namespace".into(),
                },
            }),
        }
    }

    /// Moves the calling thread into this namespace for good. Meant for a
    /// thread that lives only to do work there.
    fn join_current_thread(&self) -> Result<(), NetnsError> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| self.join_error(errno))
    }

    /// What a failed `setns` into this namespace means.
    pub(crate) fn join_error(&self, errno: Errno) -> NetnsError {
        let action = || format!("joining network namespace {}", self.path.display());
        match errno {
            // setns(2) into a network namespace checks both the target's
            // owner and the caller's own user namespace: owning the target
            // (rootless) is not enough without the second.
            Errno::EPERM if !has_cap(Capability::CAP_SYS_ADMIN) => {
                NetnsError::Privilege(PrivilegeError::new(
                    action(),
                    Capability::CAP_SYS_ADMIN,
                    "in this process's own user namespace as well as in the namespace's owning one (a process that owns the namespace but lacks it there cannot join it; a helper process that first joins the owning user namespace can)",
                ))
            }
            Errno::EPERM => NetnsError::Privilege(PrivilegeError::new(
                action(),
                Capability::CAP_SYS_ADMIN,
                "in the namespace's owning user namespace (this process has it only in its own)",
            )),
            Errno::EINVAL => NetnsError::NotANetworkNamespace {
                path: self.path.clone(),
            },
            errno => NetnsError::Join {
                path: self.path.clone(),
                error: errno.into(),
            },
        }
    }

    /// The `(device, inode)` identity of the namespace: two `Netns` are the
    /// same namespace exactly when their ids are equal.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Stat`] when `fstat` fails on the open file.
    pub fn id(&self) -> Result<(u64, u64), NetnsError> {
        let st = nix::sys::stat::fstat(&self.file).map_err(|e| NetnsError::Stat {
            path: self.path.clone(),
            error: e.into(),
        })?;
        Ok((st.st_dev, st.st_ino))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[allow(unsafe_code)]
fn nstype(fd: BorrowedFd<'_>) -> nix::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the file's
    // namespace type; `fd` is a valid open descriptor for the whole call.
    unsafe { ns_get_nstype(fd.as_raw_fd()) }
}

/// The text a panic was raised with.
pub(crate) fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_of_every_payload() {
        let payload: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&payload), "boom");
        let payload: Box<dyn Any + Send> = Box::new(format!("boom {}", 2));
        assert_eq!(panic_message(&payload), "boom 2");
        let payload: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&payload), "(a panic without a message)");
    }
}
