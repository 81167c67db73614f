//! Short commands with a deadline (`slirp4netns --help`): a program that
//! hangs is killed, with everything it started, instead of hanging us.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::watched::Watched;

/// A command run by [`output_within`] that did not give its output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// It could not be started.
    #[error("failed to run {command}: {error}")]
    Spawn {
        /// The command line, for messages.
        command: String,
        /// The error.
        error: io::Error,
    },
    /// It did not exit in time; it and its process group were killed.
    #[error("{command} did not exit within {limit:?}; it was killed")]
    TimedOut {
        /// The command line, for messages.
        command: String,
        /// The deadline it was given.
        limit: Duration,
    },
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured, in a
/// process group of its own) and returns its output, or kills the group
/// when it has not exited within `limit`.
///
/// # Errors
///
/// [`RunError::Spawn`] when it cannot be started, [`RunError::TimedOut`]
/// when it outlived `limit` (it is killed and reaped before this returns).
pub fn output_within(mut cmd: Command, limit: Duration) -> Result<Output, RunError> {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |error| RunError::Spawn {
        command: command.clone(),
        error,
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    // Read both pipes while waiting, so a chatty program cannot fill one
    // and stall; the readers end when the last writer is gone.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();
    let pid = child.id();
    let mut watched = Watched::new(child).map_err(|(_, e)| spawn_err(e))?;
    let finished = watched.exited_within(limit).is_some();
    if !finished {
        // The whole group: a child of its own may hold the pipes open.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = watched.child_status();
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let (stdout, stderr) = (
        outputs.next().unwrap_or_default(),
        outputs.next().unwrap_or_default(),
    );
    match status {
        Some(status) if finished => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        _ => Err(RunError::TimedOut { command, limit }),
    }
}
