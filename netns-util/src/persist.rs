//! Persistent network namespaces bind-mounted at a path, like `ip netns add`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caps::Capability;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::privilege::{require_cap, PrivilegeError};

/// A failure to create or remove a persistent namespace.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Missing privilege.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// Something already exists at the path.
    #[error("{path} already exists")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// Creating the directory or the mount point failed.
    #[error("failed to create {path}: {source}")]
    CreateFile {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// unshare(CLONE_NEWNET) failed.
    #[error("failed to create a network namespace: {0}")]
    Unshare(Errno),
    /// The bind mount failed.
    #[error("failed to bind-mount the new network namespace at {path}: {source}")]
    Mount {
        /// The path.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// Unmounting failed.
    #[error("failed to unmount network namespace {path}: {source}")]
    Unmount {
        /// The path.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// Removing the mount point failed.
    #[error("failed to remove {path}: {source}")]
    Remove {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The worker thread failed.
    #[error("the thread creating network namespace {path} panicked")]
    Thread {
        /// The path.
        path: PathBuf,
    },
}

/// Creates a new network namespace and bind-mounts it at `path` (creating
/// the parent directory), so it outlives this process. On failure nothing is
/// left at `path`.
pub fn create_persistent(path: &Path) -> Result<(), PersistError> {
    require_cap(
        Capability::CAP_SYS_ADMIN,
        format!("creating network namespace {}", path.display()),
        "(run as root, or inside a user namespace you own)",
    )?;
    if path.symlink_metadata().is_ok() {
        return Err(PersistError::Exists {
            path: path.to_owned(),
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PersistError::CreateFile {
            path: parent.to_owned(),
            source,
        })?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => PersistError::Exists {
                path: path.to_owned(),
            },
            _ => PersistError::CreateFile {
                path: path.to_owned(),
                source,
            },
        })?;
    // A thread of its own unshares its network namespace (allowed in a
    // multi-threaded process, unlike mount or user namespaces) and binds it.
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(PersistError::Unshare)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| PersistError::Mount {
                path: path.to_owned(),
                source,
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(PersistError::Thread {
                path: path.to_owned(),
            })
        })
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts (lazily) and removes a namespace made by [`create_persistent`]
/// (or `ip netns add`), retrying the removal for up to 2 s while it is busy.
pub fn remove_persistent(path: &Path) -> Result<(), PersistError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {} // EINVAL: not a mount point (any more)
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EPERM) => {
            return Err(PersistError::Privilege(PrivilegeError {
                action: format!("unmounting network namespace {}", path.display()),
                cap: Capability::CAP_SYS_ADMIN.to_string(),
                scope: "in the mount namespace's owning user namespace",
            }))
        }
        Err(source) => {
            return Err(PersistError::Unmount {
                path: path.to_owned(),
                source,
            })
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_file(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(Errno::EBUSY as i32) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(PersistError::Remove {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}
