//! The forwarder confines itself once it serves (the `rootlessport`
//! program does, before it reports ready; a library user opts in): on
//! every thread, `no_new_privs`, every capability it no longer needs
//! dropped from all sets, a seccomp filter that allows only the system
//! calls it makes (everything else: SIGSYS, one line naming the call,
//! death), and, where the kernel has Landlock, no filesystem access beyond
//! removing its own sockets.
//!
//! Order matters: Landlock and the capabilities need system calls the
//! filter then denies (`landlock_restrict_self`, `capset`, `prctl`), so
//! the filter comes last; it reaches every thread through TSYNC.
//!
//! [`confine`] cannot be undone, and it confines the whole process: a
//! program that merely embeds the forwarder (slirpnet's in-process
//! forwarder) must not call it.

mod denial;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod filter;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[path = "no_filter.rs"]
mod filter;
mod threads;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, ABI,
};

/// The environment variable that turns the program's sandbox off (`0`),
/// for debugging (named once, in slirp-opts).
pub use slirp_opts::rootlessport::SANDBOX_ENV;

/// CAP_NET_BIND_SERVICE.
const CAP_NET_BIND_SERVICE: u32 = 10;
/// CAP_NET_ADMIN.
const CAP_NET_ADMIN: u32 = 12;

/// What the confined process keeps.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Policy {
    net_admin: bool,
    net_bind_service: bool,
    removable_in: Vec<PathBuf>,
}

impl Policy {
    /// Nothing kept: no capability, no file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep CAP_NET_ADMIN (where the process has it): keeping client
    /// addresses adds and removes routes in the namespace, and makes
    /// IP_TRANSPARENT sockets, while it serves.
    #[must_use]
    pub fn keep_net_admin(mut self, keep: bool) -> Self {
        self.net_admin = keep;
        self
    }

    /// Keep CAP_NET_BIND_SERVICE (where the process has it): a port below
    /// `ip_unprivileged_port_start` may be added while it serves.
    #[must_use]
    pub fn keep_net_bind_service(mut self, keep: bool) -> Self {
        self.net_bind_service = keep;
        self
    }

    /// Files directly in `dir` may be removed (the reload socket's and the
    /// control socket's directories: each socket is removed at exit).
    #[must_use]
    pub fn remove_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.removable_in.push(dir.into());
        self
    }

    /// The capability mask to keep.
    fn keep(&self) -> u64 {
        u64::from(self.net_admin) << CAP_NET_ADMIN
            | u64::from(self.net_bind_service) << CAP_NET_BIND_SERVICE
    }
}

/// What [`confine`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confinement {
    /// Whether Landlock limits the filesystem (false: the kernel has none).
    pub landlock: bool,
    /// The capabilities still effective, by name.
    pub kept: Vec<&'static str>,
}

/// A failure to confine. The process is then partly confined: stop it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The SIGSYS handler could not be installed.
    #[error("failed to install the SIGSYS handler: {error}")]
    Handler {
        /// The OS error.
        error: io::Error,
    },
    /// The Landlock ruleset could not be made.
    #[error("failed to build the Landlock ruleset: {0}")]
    Landlock(String),
    /// A thread could not drop its capabilities or restrict itself.
    #[error("failed to confine every thread: {error}")]
    Threads {
        /// The OS error.
        error: io::Error,
    },
    /// The kernel refused the seccomp filter.
    #[error(
        "failed to install the seccomp filter (set ROOTLESSPORT_SANDBOX=0 to run without it): {0}"
    )]
    Seccomp(String),
}

/// The system calls the filter allows (with or without argument checks),
/// by name, on this architecture.
pub fn allowed_syscalls() -> Vec<&'static str> {
    filter::allowed()
}

/// Installs the SIGSYS handler (its line goes to a copy of `report`) and
/// the seccomp filter on every thread of the process, alone: no Landlock,
/// capabilities untouched. [`confine`] does this last; tests use it to
/// show that the filter stops what the forwarder never does.
///
/// # Errors
///
/// The handler or the filter could not be installed.
pub fn install_filter(report: impl AsFd) -> Result<(), SandboxError> {
    denial::install(report.as_fd(), filter::name)
        .map_err(|error| SandboxError::Handler { error })?;
    apply_filter()
}

fn apply_filter() -> Result<(), SandboxError> {
    let installed =
        filter::apply_all_threads(std::process::id() as i32).map_err(SandboxError::Seccomp)?;
    if !installed {
        tracing::warn!(
            arch = std::env::consts::ARCH,
            "no seccomp filter for this architecture: confined without one"
        );
    }
    Ok(())
}

/// Confines the whole process, every thread, for good: no_new_privs,
/// capabilities outside `policy` dropped from every set (bounding and
/// ambient included), Landlock where the kernel has it, then the seccomp
/// filter. A denied system call is named in one line on a copy of
/// `report` (the program's stderr as it started).
///
/// # Errors
///
/// Any step failed; the process is then partly confined and should stop.
pub fn confine(policy: &Policy, report: impl AsFd) -> Result<Confinement, SandboxError> {
    denial::install(report.as_fd(), filter::name)
        .map_err(|error| SandboxError::Handler { error })?;
    let ruleset = landlock_ruleset(policy)?;
    if ruleset.is_none() {
        tracing::debug!(
            "no Landlock in this kernel: the filesystem is limited by the seccomp filter only"
        );
    }
    let landlock = ruleset.is_some();
    let kept = threads::confine_all(policy.keep(), ruleset.as_ref().map(AsRawFd::as_raw_fd))
        .map_err(|error| SandboxError::Threads { error })?;
    drop(ruleset);
    apply_filter()?;
    Ok(Confinement {
        landlock,
        kept: [
            (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
        ]
        .into_iter()
        .filter(|(cap, _)| kept & (1 << cap) != 0)
        .map(|(_, name)| name)
        .collect(),
    })
}

/// The Landlock ruleset for `policy`, or `None` where the kernel has no
/// Landlock. Everything the kernel's Landlock can restrict on files is
/// handled; the only rules allow removing files in the policy's
/// directories.
fn landlock_ruleset(policy: &Policy) -> Result<Option<OwnedFd>, SandboxError> {
    let fail = |e: &dyn std::fmt::Display| SandboxError::Landlock(e.to_string());
    // Applied to each thread by `threads.rs`, from its fd.
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI::V6))
        .map_err(|e| fail(&e))?
        .create()
        .map_err(|e| fail(&e))?;
    for dir in &policy.removable_in {
        ruleset = add_path(ruleset, dir, AccessFs::RemoveFile.into()).map_err(|e| fail(&e))?;
    }
    Ok(ruleset.into())
}

/// Adds a rule for `path`; a path that does not exist is left out.
fn add_path(
    ruleset: landlock::RulesetCreated,
    path: &Path,
    access: landlock::BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    match PathFd::new(path) {
        Ok(fd) => ruleset.add_rule(PathBeneath::new(fd, access)),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "not in the Landlock ruleset");
            Ok(ruleset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Set in the child that installs the filter and tries one thing.
    const CHILD: &str = "ROOTLESSPORT_FILTER_TEST_CHILD";
    const ME: &str = "sandbox::tests::the_filter_stops_what_the_forwarder_never_does";

    /// In the child: the filter, then what the forwarder does (a thread,
    /// a read-only open), then `what`, which it never does.
    #[allow(unsafe_code)]
    fn child(what: &str) {
        install_filter(std::io::stderr()).unwrap();
        // Threads still start (clone3 answers ENOSYS, glibc falls back to
        // clone with CLONE_THREAD) and read-only opens pass (Landlock, not
        // seccomp, limits those).
        std::thread::spawn(|| ()).join().unwrap();
        std::fs::read_to_string("/proc/self/status").unwrap();
        eprintln!("allowed: ok");
        match what {
            "execve" => {
                let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
            }
            "open" => {
                let _ =
                    std::fs::File::create(std::env::temp_dir().join("rootlessport-filter-test"));
            }
            "fork" => {
                // SAFETY: a child, should one be made, only calls _exit.
                if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                    // SAFETY: _exit(2) ends the child at once.
                    unsafe { nix::libc::_exit(0) }
                }
            }
            "spawn" => {
                let _ = Command::new("/bin/true").status();
            }
            _ => {}
        }
        eprintln!("not stopped: {what}");
        std::process::exit(0);
    }

    #[test]
    fn the_filter_stops_what_the_forwarder_never_does() {
        if let Ok(what) = std::env::var(CHILD) {
            child(&what);
            return;
        }
        let exe = std::env::current_exe().unwrap();
        // posix_spawn blocks every signal around its clone: the kernel then
        // kills at once, without the line.
        for (what, call) in [
            ("execve", Some("execve")),
            ("open", Some("openat")),
            ("fork", Some("clone")),
            ("spawn", None),
        ] {
            let out = Command::new(&exe)
                .args(["--exact", ME, "--nocapture", "--test-threads=1"])
                .env(CHILD, what)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.signal(),
                Some(nix::libc::SIGSYS),
                "{what}: {:?}, stderr: {stderr}",
                out.status
            );
            assert!(stderr.contains("allowed: ok"), "{what}: {stderr}");
            if let Some(call) = call {
                let line = format!("rootlessport: the sandbox denied system call {call} (");
                assert_eq!(
                    stderr.lines().filter(|l| l.starts_with(&line)).count(),
                    1,
                    "{what}: {stderr}"
                );
            }
            assert!(!stderr.contains("not stopped"), "{what}: {stderr}");
        }
    }

    #[test]
    fn the_allow_list_is_what_the_forwarder_needs() {
        let allowed = allowed_syscalls();
        for needed in [
            "splice",
            "recvmmsg",
            "sendmmsg",
            "accept4",
            "epoll_ctl",
            "futex",
            "clone",
            "exit",
            "sendto",
            "recvfrom",
            "socket",
            "bind",
            "connect",
            "unlinkat",
        ] {
            assert!(allowed.contains(&needed), "{needed} missing: {allowed:?}");
        }
        for never in [
            "execve",
            "execveat",
            "fork",
            "vfork",
            "ptrace",
            "setns",
            "unshare",
            "mount",
            "capset",
            "setuid",
            "kill",
            "process_vm_writev",
            "bpf",
            "io_uring_setup",
        ] {
            assert!(!allowed.contains(&never), "{never} allowed");
        }
    }
}
