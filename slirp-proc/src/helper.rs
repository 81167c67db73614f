//! Helpers started the way podman starts `rootlessport`: a configuration on
//! stdin, the exit pipe's read end at fd 3, the ready pipe's write end at
//! fd 4, one error line on stdout when it fails before ready.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::child::{install_child_setup, ChildSetup};
use crate::exit::Exit;
use crate::pidfd::{wait_ready_or_death, ReadyWait};
use crate::watched::Watched;

/// The fd number of the exit pipe in the helper (podman's `ExitFD`).
pub const HELPER_EXIT_FD: i32 = 3;
/// The fd number of the ready pipe in the helper (podman's `ReadyFD`).
pub const HELPER_READY_FD: i32 = 4;
/// Most of a failing helper's stdout that is kept for the error.
const LINE_LIMIT: u64 = 64 * 1024;

/// Where the helper's stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HelperStderr {
    /// Ours (podman passes its own).
    #[default]
    Inherit,
    /// /dev/null.
    Null,
}

/// What to start and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HelperCommand {
    /// The binary.
    pub program: PathBuf,
    /// `argv[0]`; podman passes the bare helper name.
    pub arg0: OsString,
    /// Bytes written to its stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// Where its stderr goes.
    pub stderr: HelperStderr,
    /// A user namespace (a `/proc/PID/ns/user` path) it joins before exec,
    /// as podman's helpers run in the rootless user namespace.
    pub join_userns: Option<PathBuf>,
    /// How long to wait for the ready byte.
    pub ready_timeout: Duration,
}

impl HelperCommand {
    /// `program` started as `arg0` with `stdin`, stderr inherited, and a
    /// 30 s ready timeout.
    ///
    /// It gets no other arguments: as podman's helpers, it reads everything
    /// from stdin. A program that is its own helper (podman re-executes
    /// itself as `rootlessport`) tells the two apart by `argv[0]`, as
    /// `examples/helper.rs` does.
    pub fn new(program: impl Into<PathBuf>, arg0: impl Into<OsString>, stdin: Vec<u8>) -> Self {
        HelperCommand {
            program: program.into(),
            arg0: arg0.into(),
            stdin,
            env: Vec::new(),
            stderr: HelperStderr::Inherit,
            join_userns: None,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// Starts it and waits until it is ready, has failed, or the timeout
    /// passes. Only fds 0, 1, 2, 3 and 4 reach it; it gets its own process
    /// group. On any error nothing is left running.
    ///
    /// # Errors
    ///
    /// The pipes or the process could not be made, it failed before ready
    /// ([`HelperError::Failed`] with its stdout line), wrote another byte
    /// than `1`, or was not ready within the timeout.
    pub fn start(&self) -> Result<Helper, HelperError> {
        let program = self.program.clone();
        let spawn_err = |error| HelperError::Spawn {
            program: program.clone(),
            error,
        };
        let (exit_r, exit_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let userns = match &self.join_userns {
            Some(path) => Some(File::open(path).map_err(|error| HelperError::UserNs {
                path: path.clone(),
                error,
            })?),
            None => None,
        };
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.arg0)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match self.stderr {
                HelperStderr::Inherit => Stdio::inherit(),
                HelperStderr::Null => Stdio::null(),
            })
            .process_group(0);
        install_child_setup(
            &mut cmd,
            ChildSetup {
                fds: vec![
                    (exit_r.as_raw_fd(), HELPER_EXIT_FD),
                    (ready_w.as_raw_fd(), HELPER_READY_FD),
                ],
                join_userns: userns.as_ref().map(|f| f.as_raw_fd()),
                ..Default::default()
            },
        );
        let started = Instant::now();
        let child = cmd.spawn().map_err(spawn_err)?;
        drop((exit_r, ready_w, userns));
        let mut proc = Watched::new(child).map_err(|(pid, error)| HelperError::Watch {
            program: self.program.clone(),
            pid,
            error,
        })?;
        // Read its stdout from the start: a helper whose error is longer
        // than a pipe holds would otherwise block writing it, and never end.
        let stdout = proc.child.stdout.take().map(collect_line);
        let mut helper = Helper {
            program: self.program.clone(),
            proc,
            exit_pipe: Some(exit_w),
            ready_after: Duration::ZERO,
            stdout,
        };
        if let Some(mut stdin) = helper.proc.child.stdin.take() {
            // A helper that fails may exit before reading it all (EPIPE);
            // its stdout line then says why.
            let _ = stdin.write_all(&self.stdin);
        }
        match wait_ready_or_death(ready_r, &helper.proc.pidfd(), self.ready_timeout) {
            ReadyWait::Ready => {
                helper.ready_after = started.elapsed();
                // After ready its stdout is of no more use (podman's helper
                // points it at /dev/null); the reader drains it until then.
                helper.stdout.take();
                Ok(helper)
            }
            ReadyWait::Ended => {
                // The line is complete once the process is gone.
                let exit = helper.proc.reap_ending(Duration::from_secs(5));
                let line = helper.stdout_text();
                Err(HelperError::Failed {
                    program: helper.program.clone(),
                    line,
                    exit,
                })
            }
            ReadyWait::BadByte(byte) => {
                helper.proc.kill_and_reap();
                Err(HelperError::BadReadyByte {
                    program: helper.program.clone(),
                    byte,
                })
            }
            ReadyWait::TimedOut => {
                helper.proc.kill_and_reap();
                Err(HelperError::Timeout {
                    program: helper.program.clone(),
                    timeout: self.ready_timeout,
                })
            }
            ReadyWait::Failed(error) => {
                helper.proc.kill_and_reap();
                Err(HelperError::Wait {
                    program: helper.program.clone(),
                    error,
                })
            }
        }
    }
}

/// A failure to start a helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperError {
    /// The pipes could not be made or the binary could not be executed.
    #[error("failed to start {}: {error}", program.display())]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The user namespace to join could not be opened.
    #[error("failed to open the user namespace {}: {error}", path.display())]
    UserNs {
        /// Its path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// No pidfd for the new process.
    #[error("failed to watch {} (pid {pid}): {error}", program.display())]
    Watch {
        /// The binary.
        program: PathBuf,
        /// Its pid.
        pid: u32,
        /// The error.
        error: io::Error,
    },
    /// It ended before ready; `line` is what it printed on stdout.
    #[error("{} failed: {} ({exit})", program.display(), if line.is_empty() { "it printed nothing" } else { line.as_str() })]
    Failed {
        /// The binary.
        program: PathBuf,
        /// Its stdout, trimmed (podman's one error line).
        line: String,
        /// How it ended.
        exit: Exit,
    },
    /// It wrote something other than `1` to the ready pipe (it was killed).
    #[error("{} wrote {byte:#04x} to the ready pipe instead of '1'", program.display())]
    BadReadyByte {
        /// The binary.
        program: PathBuf,
        /// The byte.
        byte: u8,
    },
    /// Not ready in time (it was killed).
    #[error("{} did not become ready within {timeout:?}", program.display())]
    Timeout {
        /// The binary.
        program: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// Waiting failed (it was killed).
    #[error("failed while waiting for {} to be ready: {error}", program.display())]
    Wait {
        /// The binary.
        program: PathBuf,
        /// The error.
        error: io::Error,
    },
}

/// A running helper. Dropping it closes the exit pipe, waits up to 2 s,
/// kills it if need be, and reaps it.
#[derive(Debug)]
pub struct Helper {
    program: PathBuf,
    proc: Watched,
    exit_pipe: Option<OwnedFd>,
    ready_after: Duration,
    /// The first [`LINE_LIMIT`] bytes of its stdout, once it is closed.
    stdout: Option<mpsc::Receiver<Vec<u8>>>,
}

/// Reads `out` on a thread of its own until EOF, keeping the first
/// [`LINE_LIMIT`] bytes and discarding the rest.
fn collect_line(out: std::process::ChildStdout) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("helper-stdout".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let mut out = out;
            let mut kept = Vec::new();
            let _ = (&mut out).take(LINE_LIMIT).read_to_end(&mut kept);
            let _ = io::copy(&mut out, &mut io::sink());
            let _ = tx.send(kept);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to read a helper's stdout");
    }
    rx
}

impl Helper {
    /// The binary it runs.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// How long it took from spawn to the ready byte.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Whether it has exited, waiting up to `timeout`; reaps it if so.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<Exit> {
        self.proc.exited_within(timeout)
    }

    /// Stops it as podman does, by closing the exit pipe; waits up to
    /// `grace`, then SIGKILL; always reaps. `Ok` when it exited by itself.
    ///
    /// # Errors
    ///
    /// `Err` with how it ended when it had to be killed.
    pub fn stop(mut self, grace: Duration) -> Result<Exit, Exit> {
        self.stop_inner(grace)
    }

    fn stop_inner(&mut self, grace: Duration) -> Result<Exit, Exit> {
        self.exit_pipe.take();
        if let Some(exit) = self.exited_within(grace) {
            return Ok(exit);
        }
        tracing::warn!(
            pid = self.pid(),
            program = %self.program.display(),
            "the helper did not stop within {grace:?} of its exit pipe closing; killing it"
        );
        Err(self.proc.kill_and_reap())
    }

    /// What it printed, once it has ended. A process it left behind that
    /// still holds the pipe gets a second, then the text so far is lost.
    fn stdout_text(&mut self) -> String {
        let buf = self
            .stdout
            .take()
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&buf).trim().to_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.proc.exited().is_none() {
            let _ = self.stop_inner(Duration::from_secs(2));
        }
    }
}
