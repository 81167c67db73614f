//! What to run ([`NsCommand`]) and how to isolate it ([`NsOptions`]).

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use caps::Capability;

/// The command to run: program, arguments, environment, working directory
/// and standard streams, like `std::process::Command` (which cannot be
/// used: see the module docs). The program is looked up in PATH (the
/// command's own PATH, when set) before anything starts. The command gets
/// no other file descriptor of this process.
///
/// It keeps the fds given for the standard streams (it can be spawned
/// again): drop it after spawning to see EOF on a pipe once the command
/// ends.
#[derive(Debug)]
pub struct NsCommand {
    pub(super) program: OsString,
    pub(super) args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    pub(super) current_dir: Option<PathBuf>,
    pub(super) stdio: [Option<OwnedFd>; 3],
}

impl NsCommand {
    /// Runs `program`, with this process's environment, working directory
    /// and standard streams.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        NsCommand {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            stdio: [None, None, None],
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts from an empty environment instead of this process's.
    pub fn env_clear(&mut self) -> &mut Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Runs the command in `dir`.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The command's standard input (default: this process's).
    pub fn stdin(&mut self, fd: impl Into<OwnedFd>) -> &mut Self {
        self.stdio[0] = Some(fd.into());
        self
    }

    /// The command's standard output (default: this process's).
    pub fn stdout(&mut self, fd: impl Into<OwnedFd>) -> &mut Self {
        self.stdio[1] = Some(fd.into());
        self
    }

    /// The command's standard error (default: this process's).
    pub fn stderr(&mut self, fd: impl Into<OwnedFd>) -> &mut Self {
        self.stdio[2] = Some(fd.into());
        self
    }

    /// The program, as given.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// The environment the command gets.
    pub(super) fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = if self.env_clear {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        for (key, value) in &self.env {
            env.retain(|(k, _)| k != key);
            if let Some(value) = value {
                env.push((key.clone(), value.clone()));
            }
        }
        env
    }
}

/// How to isolate the command. [`NsOptions::new`] (or
/// [`Plan::ns_options`](crate::Plan::ns_options), which adds the network's
/// DNS and IPv6) gives the usual settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NsOptions {
    /// Make a user namespace too, mapping the caller's uid and gid to root
    /// in it: what a caller without CAP_SYS_ADMIN needs (the default then).
    pub user_namespace: bool,
    /// Bind a resolv.conf naming these over `/etc/resolv.conf`, in the
    /// command's mount namespace only. Empty: leave it as it is.
    pub nameservers: Vec<IpAddr>,
    /// Hold IPv6 `accept_dad` at 0 in the new network namespace until the
    /// go, so that the addresses slirp4netns configures are usable at once.
    pub hold_accept_dad: bool,
    /// Mount a `/proc` for the new PID namespace (the mount namespace is
    /// private, so only the command sees it): then `/proc` shows the
    /// command's own processes and `/proc/self` is right. When the kernel
    /// refuses (rootless, where `/proc` is partly hidden, as in some
    /// containers), `/proc` stays as it was and a warning says so.
    pub mount_proc: bool,
}

impl Default for NsOptions {
    fn default() -> Self {
        NsOptions::new()
    }
}

impl NsOptions {
    /// A user namespace when this process lacks CAP_SYS_ADMIN, no
    /// resolv.conf, `accept_dad` left alone, `/proc` mounted.
    pub fn new() -> Self {
        NsOptions {
            user_namespace: !netns_util::has_cap(Capability::CAP_SYS_ADMIN),
            nameservers: Vec::new(),
            hold_accept_dad: false,
            mount_proc: true,
        }
    }
}
