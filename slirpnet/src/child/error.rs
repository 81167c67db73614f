//! Why a command could not be started in its namespaces: [`SpawnError`],
//! naming the init's step ([`NsStep`]) that failed.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use nix::errno::Errno;

/// A step of the namespace child, as its failures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NsStep {
    /// Placing its file descriptors.
    Fds,
    /// Blocking signals and opening its signalfd.
    Signals,
    /// Writing `deny` to `/proc/self/setgroups`.
    Setgroups,
    /// Writing `/proc/self/uid_map`.
    UidMap,
    /// Writing `/proc/self/gid_map`.
    GidMap,
    /// Making every mount private.
    PrivateMounts,
    /// Holding IPv6 `accept_dad` at 0.
    AcceptDad,
    /// Mounting `/proc` for the new PID namespace.
    MountProc,
    /// Binding the resolv.conf.
    ResolvConf,
    /// Forking the command.
    Fork,
    /// Changing to the command's directory.
    ChangeDir,
    /// Executing the command.
    Exec,
}

const STEPS: [NsStep; 12] = [
    NsStep::Fds,
    NsStep::Signals,
    NsStep::Setgroups,
    NsStep::UidMap,
    NsStep::GidMap,
    NsStep::PrivateMounts,
    NsStep::AcceptDad,
    NsStep::MountProc,
    NsStep::ResolvConf,
    NsStep::Fork,
    NsStep::ChangeDir,
    NsStep::Exec,
];

impl NsStep {
    pub(super) fn code(self) -> u8 {
        STEPS.iter().position(|s| *s == self).unwrap_or(0) as u8
    }

    pub(super) fn from_code(code: u8) -> NsStep {
        STEPS.get(code as usize).copied().unwrap_or(NsStep::Fds)
    }
}

impl fmt::Display for NsStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NsStep::Fds => "place its file descriptors",
            NsStep::Signals => "block signals",
            NsStep::Setgroups => "write /proc/self/setgroups",
            NsStep::UidMap => "write /proc/self/uid_map",
            NsStep::GidMap => "write /proc/self/gid_map",
            NsStep::PrivateMounts => "make its mounts private",
            NsStep::AcceptDad => "set IPv6 accept_dad",
            NsStep::MountProc => "mount /proc for its PID namespace",
            NsStep::ResolvConf => "bind a resolv.conf over /etc/resolv.conf",
            NsStep::Fork => "fork the command",
            NsStep::ChangeDir => "change to the command's directory",
            NsStep::Exec => "execute the command",
        })
    }
}

/// A failure to start the command in its namespaces. Nothing is left
/// running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The program is not in PATH (or the named file does not exist).
    #[error("failed to run {}: not found{}", .program.display(), if .program.components().count() > 1 { "" } else { " in PATH" })]
    NotFound {
        /// The program.
        program: PathBuf,
    },
    /// An argument, environment variable or path holds a NUL byte.
    #[error("the command's {what} holds a NUL byte")]
    Nul {
        /// Which: program, argument, environment, directory, resolv.conf path.
        what: &'static str,
    },
    /// A pipe to the namespace child.
    #[error("failed to create a pipe to the namespace child: {0}")]
    Pipe(Errno),
    /// The resolv.conf for the namespace.
    #[error("failed to write the resolv.conf for the namespace: {0}")]
    ResolvConf(io::Error),
    /// clone(2) refused the namespaces.
    #[error("failed to create namespaces for the command: {error}{}", if *.user_namespace {
        " (are unprivileged user namespaces enabled? see sysctl kernel.unprivileged_userns_clone and user.max_user_namespaces)"
    } else { "" })]
    Clone {
        /// Whether a user namespace was asked for.
        user_namespace: bool,
        /// The error.
        error: Errno,
    },
    /// A step inside the new namespaces failed.
    #[error("the namespace child failed to {step}: {error}")]
    Setup {
        /// The step.
        step: NsStep,
        /// The error.
        error: io::Error,
    },
    /// The namespace child ended without a report.
    #[error("the namespace child ended ({status}) before its namespaces were ready")]
    Ended {
        /// How it ended.
        status: ExitStatus,
    },
    /// The go could not be sent.
    #[error("the namespace child is gone: {0}")]
    Go(io::Error),
    /// The go was sent already.
    #[error("the command was started already")]
    AlreadyStarted,
    /// The command could not be started in its namespaces (its exit status
    /// is then 127 for a missing file, else 126, as a shell's).
    #[error("failed to run {}: {step}: {error}", .program.display())]
    Command {
        /// The program.
        program: PathBuf,
        /// Changing directory or executing.
        step: NsStep,
        /// The error.
        error: io::Error,
    },
    /// Waiting for the namespace child.
    #[error("failed to wait for the namespace child: {0}")]
    Wait(Errno),
}
