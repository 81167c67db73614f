//! Starting and supervising slirp4netns.
//!
//! [`Slirp::start`] spawns slirp4netns with exactly two extra descriptors (the
//! ready pipe's write end and the exit pipe's read end, at the fd numbers the
//! [`Invocation`] names), its output in an unlinked log
//! file, in its own process group, and waits until it is ready. A death while
//! waiting is seen at once through a pidfd, not at the next tick of a timer.
//! The returned [`Slirp`] owns the process: dropping it stops and reaps it.
//!
//! [`HelperCommand::start`] starts a helper the way podman starts
//! `rootlessport` (configuration on stdin, exit pipe at fd 3, ready pipe at
//! fd 4, one error line on stdout), with the same immediate death detection.
//! [`output_within`] runs a short command under a deadline.
//!
//! ```
//! use std::process::Command;
//! use std::time::Duration;
//!
//! let mut cmd = Command::new("sh");
//! cmd.args(["-c", "echo ready"]);
//! let out = slirp_proc::output_within(cmd, Duration::from_secs(10))?;
//! assert_eq!(out.stdout, b"ready\n");
//! // A command that hangs is killed, with its process group.
//! let mut hung = Command::new("sleep");
//! hung.arg("60");
//! assert!(matches!(
//!     slirp_proc::output_within(hung, Duration::from_millis(100)),
//!     Err(slirp_proc::RunError::TimedOut { .. })
//! ));
//! # Ok::<(), slirp_proc::RunError>(())
//! ```
//!
//! # Re-exports
//!
//! Foreign types in this crate's API can be named through it, so a user
//! needs no other dependency: [`SlirpCommand::new`]'s [`NetworkOptions`],
//! [`Features`] and [`Invocation`] (with its [`Target`]) and
//! [`StartError::Args`]'s [`ArgvError`] are `slirp-opts`'s (the whole crate
//! is [`slirp_opts`]); [`StartError::Netns`]'s [`NetnsError`] and
//! [`AcceptDadGuard::disable`]'s [`Netns`] and [`StartError::Privilege`]'s
//! [`PrivilegeError`] (with its [`Capability`]) are `netns-util`'s (the whole
//! crate is [`netns_util`]); [`SlirpCommand::parent_death_signal`]'s
//! [`Signal`] is nix's.
//!
//! # Errors
//!
//! Each error's message is complete: when a system call fails, the message
//! ends with the OS error's text, kept in the variant's `error` field (a
//! [`std::io::Error`]), and [`source`](std::error::Error::source) returns
//! `None`, so a printer that walks the chain (such as anyhow's `{:#}`) does
//! not repeat it. Show them with `Display`: a `main` that returns the error
//! prints its `Debug` form instead. Variants marked `#[error(transparent)]` are the inner
//! error itself.

mod child;
mod dad;
mod exit;
mod helper;
mod pidfd;
mod process;
mod run;
mod watched;

pub use child::{install_child_setup, ChildSetup};
pub use dad::{
    disable_here as disable_accept_dad_here, restore_here as restore_accept_dad_here,
    AcceptDadGuard, DadError,
};
pub use exit::Exit;
pub use helper::{
    Helper, HelperCommand, HelperError, HelperStderr, HELPER_EXIT_FD, HELPER_READY_FD,
};
pub use process::{Slirp, SlirpCommand, StartError};
pub use run::{output_within, RunError};

pub use netns_util;
pub use netns_util::{Capability, Netns, NetnsError, PrivilegeError};
pub use nix::sys::signal::Signal;
pub use slirp_opts;
pub use slirp_opts::{ArgvError, Features, Invocation, NetworkOptions, Target};
