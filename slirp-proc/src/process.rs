//! Spawning slirp4netns, waiting for it to be ready, and owning it after.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns_util::{Capability, Netns, PrivilegeError};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use slirp_opts::{build_args, ArgvError, Features, Invocation, NetworkOptions};

use crate::child::{install_child_setup, ChildSetup};
use crate::dad::{AcceptDadGuard, DadError};
use crate::exit::{signal_name, Exit};
use crate::pidfd::{wait_ready_or_death, ReadyWait};
use crate::watched::Watched;

/// How long [`Slirp`]'s drop waits after closing the exit pipe before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// What to start.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SlirpCommand {
    /// The slirp4netns binary.
    pub binary: PathBuf,
    /// The network options.
    pub options: NetworkOptions,
    /// What the binary supports.
    pub features: Features,
    /// Target, tap name, fd numbers, API socket.
    pub invocation: Invocation,
    /// Start it in a new mount namespace. Needed with `--enable-sandbox`
    /// (slirp4netns PR #153: its pivot_root wants a mount namespace of its
    /// own); needs CAP_SYS_ADMIN. [`SlirpCommand::new`] sets it when the argv
    /// has `--enable-sandbox`. Rootless, also set
    /// [`SlirpCommand::join_userns`], or the start fails with
    /// [`StartError::Privilege`].
    pub new_mount_ns: bool,
    /// Signal slirp4netns gets when the thread that started it dies.
    pub parent_death_signal: Option<Signal>,
    /// A user namespace (a `/proc/PID/ns/user` path) it joins before exec,
    /// and before the new mount namespace is made: rootless, that mount
    /// namespace is then its own (owned by the joined user namespace), so
    /// `--enable-sandbox` works as it does when podman starts slirp4netns
    /// from its rootless user namespace.
    pub join_userns: Option<PathBuf>,
    /// Turn IPv6 `accept_dad` off in the target namespace while it starts
    /// (only when IPv6 is on; needs the right to enter the namespace, so a
    /// rootless caller outside the namespace's user namespace sets it to
    /// `false`, or the start fails with [`StartError::Netns`]'s
    /// [`NetnsError::Privilege`](netns_util::NetnsError::Privilege)).
    pub toggle_accept_dad: bool,
    /// How long to wait for the ready byte.
    pub ready_timeout: Duration,
}

impl SlirpCommand {
    /// The usual command: a new mount namespace exactly when the sandbox is
    /// on, accept_dad toggled when IPv6 is on, 30 s to become ready.
    ///
    /// `features` is what the binary supports: [`Features::from_help`] of
    /// what `slirp4netns --help` prints (run it with
    /// [`output_within`](crate::output_within)), or [`Features::all`] for
    /// slirp4netns 1.1 and newer. `examples/start_slirp.rs` shows the whole
    /// start, root and rootless.
    pub fn new(
        binary: impl Into<PathBuf>,
        options: NetworkOptions,
        features: Features,
        invocation: Invocation,
    ) -> Self {
        let new_mount_ns = !options.no_pivot_root && features.enable_sandbox;
        let toggle_accept_dad = options.enable_ipv6;
        SlirpCommand {
            binary: binary.into(),
            options,
            features,
            invocation,
            new_mount_ns,
            parent_death_signal: None,
            join_userns: None,
            toggle_accept_dad,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// The full argv after the binary.
    ///
    /// # Errors
    ///
    /// An option needs a feature the binary lacks, or the API socket path is
    /// too long.
    pub fn args(&self) -> Result<Vec<OsString>, ArgvError> {
        build_args(&self.options, &self.features, &self.invocation)
    }
}

fn describe_log(log: &str) -> String {
    if log.is_empty() {
        "(no output)".into()
    } else {
        log.into()
    }
}

/// slirp4netns could not be started or did not become ready. Whatever was
/// started is stopped and reaped before this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The argv cannot be built.
    #[error(transparent)]
    Args(#[from] ArgvError),
    /// A pipe could not be made.
    #[error("failed to create the {which} pipe for slirp4netns: {error}")]
    Pipe {
        /// `ready` or `exit`.
        which: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// The log file could not be made.
    #[error("failed to create the slirp4netns log file: {0}")]
    Log(io::Error),
    /// The accept_dad toggle failed.
    #[error(transparent)]
    Dad(#[from] DadError),
    /// The target namespace could not be opened for the accept_dad toggle.
    #[error(transparent)]
    Netns(#[from] netns_util::NetnsError),
    /// The new mount namespace `--enable-sandbox` needs was refused for
    /// lack of CAP_SYS_ADMIN (rootless without
    /// [`SlirpCommand::join_userns`]).
    #[error(transparent)]
    Privilege(PrivilegeError),
    /// The user namespace to join could not be opened.
    #[error("failed to open the user namespace {path} for slirp4netns: {error}")]
    UserNs {
        /// Its path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// exec failed.
    #[error("failed to start {binary}: {error}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// pidfd_open failed.
    #[error("failed to watch slirp4netns (pid {pid}): {error}")]
    Watch {
        /// The pid.
        pid: u32,
        /// The error.
        error: io::Error,
    },
    /// It exited before it was ready.
    #[error("slirp4netns failed: {} ({exit})", describe_log(.log))]
    Failed {
        /// How it exited.
        exit: Exit,
        /// What it printed.
        log: String,
    },
    /// A signal killed it before it was ready.
    #[error("slirp4netns killed by signal {signal} ({}): {}", signal_name(*.signal), describe_log(.log))]
    Killed {
        /// The signal number.
        signal: i32,
        /// What it printed.
        log: String,
    },
    /// It did not become ready in time (it was killed).
    #[error("slirp4netns did not become ready within {timeout:?}; its output: {}", describe_log(.log))]
    Timeout {
        /// The deadline.
        timeout: Duration,
        /// What it printed.
        log: String,
    },
    /// It wrote something other than `1` to the ready pipe.
    #[error("slirp4netns wrote {byte:#04x} to the ready pipe instead of '1'")]
    BadReadyByte {
        /// The byte.
        byte: u8,
    },
    /// Waiting failed.
    #[error("failed while waiting for slirp4netns to be ready: {0}")]
    Wait(io::Error),
}

/// A running slirp4netns. Dropping it closes the exit pipe, waits up to 2 s,
/// kills it if needed, and reaps it.
#[derive(Debug)]
pub struct Slirp {
    proc: Watched,
    exit_pipe: Option<OwnedFd>,
    log: File,
}

impl Slirp {
    /// Starts slirp4netns and waits until it has written its ready byte.
    ///
    /// # Errors
    ///
    /// The argv, pipes, log file or accept_dad toggle failed, the new mount
    /// namespace was refused ([`StartError::Privilege`]), it could not
    /// be executed, or it died, was killed or timed out before ready (with
    /// its output). Whatever was started is stopped and reaped first.
    pub fn start(cmd: &SlirpCommand) -> Result<Slirp, StartError> {
        let args = cmd.args()?;
        let inv = &cmd.invocation;

        let dad_guard = if cmd.toggle_accept_dad && cmd.options.enable_ipv6 {
            AcceptDadGuard::disable(Netns::open(inv.target.netns_path())?)?
        } else {
            None
        };

        let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).map_err(|errno| StartError::Pipe {
            which: "ready",
            error: errno.into(),
        })?;
        let exit_pipe = match inv.exit_fd {
            Some(_) => Some(pipe2(OFlag::O_CLOEXEC).map_err(|errno| StartError::Pipe {
                which: "exit",
                error: errno.into(),
            })?),
            None => None,
        };
        let userns = match &cmd.join_userns {
            Some(path) => Some(File::open(path).map_err(|error| StartError::UserNs {
                path: path.clone(),
                error,
            })?),
            None => None,
        };
        // Unlinked at once: only the fds keep it, and nothing is left behind.
        let log = tempfile::tempfile().map_err(StartError::Log)?;
        let out = log.try_clone().map_err(StartError::Log)?;
        let err = log.try_clone().map_err(StartError::Log)?;

        let mut command = Command::new(&cmd.binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let mut child_fds = vec![(ready_w.as_raw_fd(), inv.ready_fd)];
        if let (Some((exit_r, _)), Some(n)) = (&exit_pipe, inv.exit_fd) {
            child_fds.push((exit_r.as_raw_fd(), n));
        }
        install_child_setup(
            &mut command,
            ChildSetup {
                fds: child_fds,
                death_signal: cmd.parent_death_signal,
                new_mount_ns: cmd.new_mount_ns,
                join_userns: userns.as_ref().map(|f| f.as_raw_fd()),
            },
        );
        tracing::debug!(binary = %cmd.binary.display(), ?args, "starting slirp4netns");
        let child = command.spawn().map_err(|error| {
            // The new mount namespace (for --enable-sandbox) is refused
            // without CAP_SYS_ADMIN over this process's user namespace.
            if error.raw_os_error() == Some(libc::EPERM)
                && cmd.new_mount_ns
                && cmd.join_userns.is_none()
            {
                StartError::Privilege(PrivilegeError::new(
                    format!(
                        "starting {} in a new mount namespace (for --enable-sandbox)",
                        cmd.binary.display()
                    ),
                    Capability::CAP_SYS_ADMIN,
                    "(rootless: set SlirpCommand::join_userns to the target's user namespace, such as Target::userns_path, and the mount namespace is made there; or set NetworkOptions::no_pivot_root)",
                ))
            } else {
                StartError::Spawn {
                    binary: cmd.binary.clone(),
                    error,
                }
            }
        })?;
        // Our copies of the child's ends go now: a dead child then gives EOF
        // on the ready pipe, and the exit pipe's only reader is slirp4netns.
        drop(ready_w);
        let exit_pipe = exit_pipe.map(|(exit_r, exit_w)| {
            drop(exit_r);
            exit_w
        });
        let proc = Watched::new(child).map_err(|(pid, error)| StartError::Watch { pid, error })?;
        let pid = proc.pid();
        let mut slirp = Slirp {
            proc,
            exit_pipe,
            log,
        };
        let ready = slirp.wait_ready(ready_r, cmd.ready_timeout);
        if let Some(guard) = dad_guard {
            if let Err(e) = guard.restore() {
                tracing::warn!(error = %e, "could not restore accept_dad");
            }
        }
        ready?;
        tracing::debug!(pid, "slirp4netns is ready");
        Ok(slirp)
    }

    /// Waits for the ready byte, a death, or the deadline, whichever is first.
    fn wait_ready(&mut self, ready_r: OwnedFd, timeout: Duration) -> Result<(), StartError> {
        match wait_ready_or_death(ready_r, &self.proc.pidfd(), timeout) {
            ReadyWait::Ready => Ok(()),
            ReadyWait::Ended => Err(self.death_error()),
            ReadyWait::BadByte(byte) => {
                self.kill_and_reap();
                Err(StartError::BadReadyByte { byte })
            }
            ReadyWait::TimedOut => {
                self.kill_and_reap();
                Err(StartError::Timeout {
                    timeout,
                    log: self.log_text(),
                })
            }
            ReadyWait::Failed(e) => {
                self.kill_and_reap();
                Err(StartError::Wait(e))
            }
        }
    }

    /// Reaps a process that has ended or is ending (waiting at most 5 s,
    /// then killing) and describes how it ended.
    fn death_error(&mut self) -> StartError {
        let exit = self.proc.reap_ending(Duration::from_secs(5));
        let log = self.log_text();
        match exit {
            Exit::Signal(signal) => StartError::Killed { signal, log },
            exit => StartError::Failed { exit, log },
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// A pidfd for the process: readable once it has exited. For callers
    /// that watch it together with other events.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.proc.pidfd()
    }

    /// What slirp4netns has printed so far, trimmed.
    pub fn log_text(&self) -> String {
        let mut buf = Vec::new();
        let mut offset = 0u64;
        let mut chunk = [0u8; 8192];
        // Cap what is kept: a chatty slirp4netns must not fill memory.
        while buf.len() < 1 << 20 {
            match self.log.read_at(&mut chunk, offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    offset += n as u64;
                }
            }
        }
        String::from_utf8_lossy(&buf).trim().to_owned()
    }

    /// Whether it has exited, waiting up to `timeout`; reaps it if so.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<Exit> {
        self.proc.exited_within(timeout)
    }

    /// Blocks until it exits, and reaps it.
    pub fn wait(&mut self) -> Exit {
        self.proc.reap()
    }

    /// Waits until slirp4netns has done no I/O for `quiet` (at most `max`),
    /// so that data still in flight between the namespace and the host (a
    /// reply sent just before the last process in the namespace exited) gets
    /// out before it is stopped. Returns how long it waited.
    pub fn drain(&mut self, quiet: Duration, max: Duration) -> Duration {
        let started = Instant::now();
        let io = |pid: u32| {
            procfs::process::Process::new(pid as i32)
                .and_then(|p| p.io())
                .map(|io| io.rchar + io.wchar)
                .ok()
        };
        let mut last = io(self.pid());
        let mut last_change = Instant::now();
        while started.elapsed() < max && self.proc.exited().is_none() {
            let step = quiet.min(Duration::from_millis(10));
            if self.exited_within(step).is_some() {
                break;
            }
            let now = io(self.pid());
            if now.is_none() {
                break; // /proc/PID/io is not readable: nothing to measure
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                break;
            }
        }
        started.elapsed()
    }

    /// Stops it: closes the exit pipe (or sends SIGTERM without one), waits
    /// up to `grace`, then SIGKILL; always reaps.
    pub fn stop(mut self, grace: Duration) -> Exit {
        self.stop_inner(grace)
    }

    fn stop_inner(&mut self, grace: Duration) -> Exit {
        if let Some(exit) = self.proc.exited() {
            return exit;
        }
        if self.exit_pipe.take().is_none() {
            let _ = kill(Pid::from_raw(self.proc.pid() as i32), Signal::SIGTERM);
        }
        if self.proc.exited_within(grace).is_none() {
            tracing::warn!(
                pid = self.pid(),
                "slirp4netns did not stop in {grace:?}; killing it"
            );
        }
        self.proc.kill_and_reap()
    }

    fn kill_and_reap(&mut self) {
        self.proc.kill_and_reap();
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        self.stop_inner(DROP_GRACE);
    }
}
