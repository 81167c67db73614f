//! Persistent network namespaces bind-mounted at a path, like `ip netns add`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caps::Capability;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::ns::panic_message;
use crate::privilege::{require_cap, PrivilegeError};

/// A failure to create or remove a persistent namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("failed to create {path}: {error}")]
    CreateFile {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// unshare(CLONE_NEWNET) failed.
    #[error("failed to create a network namespace for {path}: {error}")]
    Unshare {
        /// The path it was meant for.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The bind mount failed.
    #[error("failed to bind-mount the new network namespace at {path}: {error}")]
    Mount {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Unmounting failed.
    #[error("failed to unmount network namespace {path}: {error}")]
    Unmount {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Removing the mount point failed.
    #[error("failed to remove {path}: {error}")]
    Remove {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The thread that makes the namespace could not be started.
    #[error("failed to start a thread to create network namespace {path}: {error}")]
    Spawn {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The thread that makes the namespace panicked.
    #[error("the thread creating network namespace {path} panicked: {message}")]
    Panicked {
        /// The path.
        path: PathBuf,
        /// The panic's message.
        message: String,
    },
}

/// Creates a new network namespace and bind-mounts it at `path` (creating
/// the parent directory), so it outlives this process. On failure nothing is
/// left at `path`.
///
/// The new namespace has only `lo`, and it is down: loopback there (such as
/// binding 127.0.0.1) fails until it is up, for example by running
/// `ip link set lo up` as a child spawned inside with [`Netns::run`]
/// (`examples/persistent.rs` does).
///
/// [`Netns::run`]: crate::Netns::run
///
/// # Errors
///
/// [`PersistError::Privilege`] without CAP_SYS_ADMIN, or when the bind mount
/// is refused because this process's mount namespace is not owned by its
/// user namespace (rootless: `unshare --user --map-root-user --mount`, not
/// only `--user`), [`PersistError::Exists`] when something is at `path` (it is left alone),
/// and one variant for each step that fails: [`PersistError::CreateFile`],
/// [`PersistError::Spawn`], [`PersistError::Unshare`],
/// [`PersistError::Mount`], [`PersistError::Panicked`].
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
        std::fs::create_dir_all(parent).map_err(|error| PersistError::CreateFile {
            path: parent.to_owned(),
            error,
        })?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|error| match error.kind() {
            io::ErrorKind::AlreadyExists => PersistError::Exists {
                path: path.to_owned(),
            },
            _ => PersistError::CreateFile {
                path: path.to_owned(),
                error,
            },
        })?;
    // A thread of its own unshares its network namespace (allowed in a
    // multi-threaded process, unlike mount or user namespaces) and binds it.
    let made = std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn_scoped(s, || {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|errno| PersistError::Unshare {
                    path: path.to_owned(),
                    error: errno.into(),
                })?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|errno| match errno {
                    // CAP_SYS_ADMIN in a user namespace of one's own, but the
                    // mount namespace belongs to another (`unshare -r`
                    // without `-m`).
                    Errno::EPERM => PersistError::Privilege(PrivilegeError::new(
                        format!("bind-mounting network namespace {}", path.display()),
                        Capability::CAP_SYS_ADMIN,
                        "in the user namespace that owns this process's mount namespace (rootless: make a mount namespace of your own too, as `unshare --user --map-root-user --mount` does)",
                    )),
                    errno => PersistError::Mount {
                        path: path.to_owned(),
                        error: errno.into(),
                    },
                })
            })
            .map_err(|error| PersistError::Spawn {
                path: path.to_owned(),
                error,
            })?;
        thread.join().unwrap_or_else(|panic| {
            Err(PersistError::Panicked {
                path: path.to_owned(),
                message: panic_message(&panic),
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
/// Nothing at `path` is not an error.
///
/// # Errors
///
/// [`PersistError::Privilege`] when unmounting is refused for lack of
/// CAP_SYS_ADMIN, [`PersistError::Unmount`] when it fails otherwise, and
/// [`PersistError::Remove`] when the file stays.
pub fn remove_persistent(path: &Path) -> Result<(), PersistError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {} // EINVAL: not a mount point (any more)
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EPERM) => {
            return Err(PersistError::Privilege(PrivilegeError::new(
                format!("unmounting network namespace {}", path.display()),
                Capability::CAP_SYS_ADMIN,
                "in the mount namespace's owning user namespace",
            )))
        }
        Err(errno) => {
            return Err(PersistError::Unmount {
                path: path.to_owned(),
                error: errno.into(),
            })
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_file(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(Errno::EBUSY as i32) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => {
                return Err(PersistError::Remove {
                    path: path.to_owned(),
                    error,
                })
            }
        }
    }
}
