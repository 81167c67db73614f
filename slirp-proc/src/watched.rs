//! A child process with a pidfd: death seen at once, reaped exactly once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Child;
use std::time::Duration;

use crate::exit::Exit;
use crate::pidfd::{exited_within, pidfd_open};

/// A spawned child and a pidfd for it; remembers how it ended once reaped.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) child: Child,
    pidfd: OwnedFd,
    exited: Option<Exit>,
}

impl Watched {
    /// Opens a pidfd for `child`. When that fails the child is killed and
    /// reaped, and the error returned with its pid.
    pub(crate) fn new(mut child: Child) -> Result<Self, (u32, io::Error)> {
        let pid = child.id();
        match pidfd_open(pid) {
            Ok(pidfd) => Ok(Watched {
                child,
                pidfd,
                exited: None,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err((pid, e))
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How it ended, if it has been reaped.
    pub(crate) fn exited(&self) -> Option<Exit> {
        self.exited.clone()
    }

    /// Whether it has exited, waiting up to `timeout`; reaps it if so.
    pub(crate) fn exited_within(&mut self, timeout: Duration) -> Option<Exit> {
        if self.exited.is_none() && exited_within(&self.pidfd, timeout).unwrap_or(false) {
            self.reap();
        }
        self.exited.clone()
    }

    /// SIGKILL unless already reaped.
    pub(crate) fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
        }
    }

    pub(crate) fn kill_and_reap(&mut self) -> Exit {
        self.kill();
        self.reap()
    }

    /// For a process that has ended or is ending: waits at most `limit`,
    /// then kills; reaps and says how it ended.
    pub(crate) fn reap_ending(&mut self, limit: Duration) -> Exit {
        if self.exited_within(limit).is_none() {
            self.kill();
        }
        self.reap()
    }

    /// Blocks until it exits, reaps it, and gives its raw status (`None`
    /// when it was already reaped elsewhere).
    pub(crate) fn child_status(&mut self) -> Option<std::process::ExitStatus> {
        loop {
            match self.child.wait() {
                Ok(status) => {
                    self.exited = Some(Exit::from_status(status));
                    return Some(status);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    /// Blocks until it exits and reaps it (once; later calls repeat the exit).
    pub(crate) fn reap(&mut self) -> Exit {
        if let Some(exit) = &self.exited {
            return exit.clone();
        }
        let exit = loop {
            match self.child.wait() {
                Ok(status) => break Exit::from_status(status),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECHILD: someone else reaped it; nothing is left to wait for.
                Err(_) => break Exit::Code(-1),
            }
        };
        self.exited = Some(exit.clone());
        exit
    }
}
