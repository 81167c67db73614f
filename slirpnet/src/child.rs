//! A command in namespaces of its own: [`NsCommand`] says what to run,
//! [`NsOptions`] how to isolate it, and [`NsChild`] owns the result until
//! nothing of it is left.
//!
//! # Theory of operation
//!
//! [`NsChild::spawn`] clones one process straight into new network, mount
//! and PID namespaces (`clone(2)`; rootless also a new user namespace that
//! maps the caller to root). That process is pid 1 of the new PID
//! namespace, its init (named `slirpnet-init`), and never execs. It writes the user namespace's
//! maps, makes every mount private, holds IPv6 `accept_dad` at 0, mounts a
//! `/proc` for the new PID namespace, binds a resolv.conf over
//! `/etc/resolv.conf`, and reports on a pipe. The caller networks the
//! namespace (slirp4netns joins `/proc/PID/ns/net`) and sends a go
//! ([`NsChild::go`]) on a second pipe; then init puts `accept_dad` back,
//! forks the command (pid 2) and execs it. From then on init only waits:
//!
//! - a signal a process sent to it (slirpnet forwarding its own SIGTERM,
//!   say) is passed on to the command: pid 1 ignores signals it has no
//!   handler for, so init blocks every signal and reads them from a
//!   signalfd; a signal a terminal sent reached the command already (same
//!   process group) and is not sent twice;
//! - when the command exits, init writes its wait status on the report pipe
//!   and exits; the kernel then kills every other process of the namespace
//!   (whatever the command left in the background, however it detached);
//! - when the go pipe's write end closes, the caller is gone (it exited or
//!   was killed, even with SIGKILL: the kernel closes its fds), and init
//!   exits, which ends the namespace the same way.
//!
//! So nothing the command started outlives the command, the [`NsChild`], or
//! the calling process. The lifeline is a pipe and not `PR_SET_PDEATHSIG`,
//! which fires when the *thread* that spawned the child ends, not the
//! process: a library cannot know how long its caller's threads live.
//!
//! Why a clone that never execs, rather than a re-exec or a pre-exec hook
//! of `std::process::Command`: a library cannot count on any binary of its
//! own being installed; re-executing the caller's program with a marker
//! would make every program that uses the library call a hook first thing
//! in `main` (and breaks in test harnesses and plugins, which cannot);
//! `Command::spawn` returns only once the command has exec'd, but the
//! command must wait for its network, and `unshare(CLONE_NEWPID)` in a hook
//! would add a process between the caller and the namespace. The price is
//! that the cloned process, a copy of a possibly multi-threaded caller,
//! must only make system calls until the command's exec: everything it
//! needs (paths, maps, argv, environment) is prepared before the clone, the
//! program is looked up in PATH beforehand, and failures travel as a step
//! number and an errno, which [`SpawnError`] turns into text.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use caps::Capability;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use slirp_opts::Target;

/// Where init keeps its report pipe, its go pipe and the command's exec
/// error pipe.
const STATUS_FD: RawFd = 3;
const GO_FD: RawFd = 4;
const EXEC_FD: RawFd = 5;

/// Report tags: namespaces ready, a failure (init exits), a warning.
const TAG_OK: u8 = b'K';
const TAG_ERROR: u8 = b'E';
const TAG_WARNING: u8 = b'W';

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
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
    stdio: [Option<OwnedFd>; 3],
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
    fn environment(&self) -> Vec<(OsString, OsString)> {
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
    fn code(self) -> u8 {
        STEPS.iter().position(|s| *s == self).unwrap_or(0) as u8
    }

    fn from_code(code: u8) -> NsStep {
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

/// A command in namespaces of its own, through their init (see the module
/// docs). Dropping it kills the namespace's every process and reaps init;
/// if the calling process dies, even by SIGKILL, the same happens.
#[derive(Debug)]
pub struct NsChild {
    pid: Pid,
    user_namespace: bool,
    program: PathBuf,
    status: File,
    go: File,
    exec_errors: Option<File>,
    went: bool,
    exited: Option<ExitStatus>,
    warnings: Vec<String>,
}

/// Everything the cloned process reads, prepared before the clone: it
/// allocates nothing.
struct Prepared {
    user_namespace: bool,
    maps: [(CString, Vec<u8>); 3],
    resolv: Option<(CString, CString)>,
    accept_dad: bool,
    mount_proc: bool,
    /// (fd in the caller, number in init); -1: leave that number alone.
    fds: [(RawFd, RawFd); 6],
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
}

fn cstring(bytes: impl Into<Vec<u8>>, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what })
}

/// The file `program` names: itself when it holds a slash, else the first
/// executable of that name in `path`.
fn find_program(program: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let given = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return given.exists().then(|| given.to_owned());
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path)
        .map(|dir| dir.join(given))
        .find(|p| crate::binary::is_executable(p))
}

/// A resolv.conf naming `nameservers`, readable by all (the command may
/// drop privileges), in the temporary directory.
fn resolv_conf(nameservers: &[IpAddr]) -> io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("slirpnet-resolv-")
        .tempfile()?;
    for ns in nameservers {
        writeln!(file, "nameserver {ns}")?;
    }
    file.flush()?;
    std::fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    Ok(file)
}

fn status_of(ws: WaitStatus) -> Option<ExitStatus> {
    match ws {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, sig, core) => Some(ExitStatus::from_raw(
            sig as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

impl NsChild {
    /// Starts `command` in new network, mount and PID namespaces (and a
    /// user namespace with `ns.user_namespace`), and returns once they are
    /// ready for networking ([`NsChild::target`]); the command runs after
    /// [`NsChild::go`].
    ///
    /// # Errors
    ///
    /// The program is not found, a string holds a NUL byte, the pipes or
    /// the resolv.conf cannot be made, the kernel refuses the namespaces
    /// (rootless: unprivileged user namespaces are off), or a step inside
    /// them fails ([`SpawnError::Setup`] names it). Nothing is left running.
    #[allow(unsafe_code)]
    pub fn spawn(command: &NsCommand, ns: &NsOptions) -> Result<NsChild, SpawnError> {
        let env = command.environment();
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let program =
            find_program(&command.program, path_var).ok_or_else(|| SpawnError::NotFound {
                program: PathBuf::from(&command.program),
            })?;
        let args: Vec<CString> = std::iter::once(&command.program)
            .chain(&command.args)
            .map(|a| cstring(a.as_bytes(), "argument"))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = env
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                cstring(kv, "environment")
            })
            .collect::<Result<_, _>>()?;
        let cwd = match &command.current_dir {
            Some(dir) => Some(cstring(dir.as_os_str().as_bytes(), "directory")?),
            None => None,
        };
        let resolv_file = if ns.nameservers.is_empty() {
            None
        } else {
            Some(resolv_conf(&ns.nameservers).map_err(SpawnError::ResolvConf)?)
        };
        let mut warnings = Vec::new();
        let resolv = match &resolv_file {
            // /etc/resolv.conf is often a symlink (systemd-resolved): bind
            // over its target.
            Some(file) => match std::fs::canonicalize("/etc/resolv.conf") {
                Ok(target) => Some((
                    cstring(file.path().as_os_str().as_bytes(), "resolv.conf path")?,
                    cstring(target.into_os_string().into_vec(), "resolv.conf path")?,
                )),
                Err(e) => {
                    warnings.push(format!(
                        "/etc/resolv.conf left as it is: cannot resolve it: {e}"
                    ));
                    None
                }
            },
            None => None,
        };
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        let maps = [
            (c"/proc/self/setgroups".to_owned(), b"deny".to_vec()),
            (
                c"/proc/self/uid_map".to_owned(),
                format!("0 {uid} 1").into_bytes(),
            ),
            (
                c"/proc/self/gid_map".to_owned(),
                format!("0 {gid} 1").into_bytes(),
            ),
        ];

        let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
        let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
        let (exec_r, exec_w) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
        let stdio = |i: usize| command.stdio[i].as_ref().map_or(-1, |fd| fd.as_raw_fd());
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let prepared = Prepared {
            user_namespace: ns.user_namespace,
            maps,
            resolv,
            accept_dad: ns.hold_accept_dad,
            mount_proc: ns.mount_proc,
            fds: [
                (stdio(0), 0),
                (stdio(1), 1),
                (stdio(2), 2),
                (status_w.as_raw_fd(), STATUS_FD),
                (go_r.as_raw_fd(), GO_FD),
                (exec_w.as_raw_fd(), EXEC_FD),
            ],
            program: cstring(program.as_os_str().as_bytes(), "program")?,
            argv,
            envp,
            cwd,
        };
        let mut flags =
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
        if ns.user_namespace {
            flags |= CloneFlags::CLONE_NEWUSER;
        }
        let mut stack = vec![0u8; 256 * 1024];
        // SAFETY: the child is a copy of this process (no CLONE_VM) running
        // on its own copy of `stack`, which is large for what it does; it
        // only reads `prepared` (its copy) and makes system calls, never
        // allocating, locking or unwinding (see `init`), so whatever other
        // threads of this process held at the clone cannot block it.
        let pid = unsafe {
            nix::sched::clone(
                Box::new(|| init(&prepared)),
                &mut stack,
                flags,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|error| SpawnError::Clone {
            user_namespace: ns.user_namespace,
            error,
        })?;
        drop((status_w, go_r, exec_w));
        let mut child = NsChild {
            pid,
            user_namespace: ns.user_namespace,
            program,
            status: File::from(status_r),
            go: File::from(go_w),
            exec_errors: Some(File::from(exec_r)),
            went: false,
            exited: None,
            warnings,
        };
        loop {
            match read_record(&mut child.status) {
                Some((TAG_OK, _, _)) => break,
                Some((TAG_WARNING, step, errno)) => {
                    let text = format!(
                        "the namespace child could not {}: {}{}",
                        NsStep::from_code(step),
                        io::Error::from_raw_os_error(errno),
                        if NsStep::from_code(step) == NsStep::MountProc {
                            "; /proc shows the host's PID namespace"
                        } else {
                            "; /etc/resolv.conf left as it is"
                        }
                    );
                    child.warnings.push(text);
                }
                Some((_, step, errno)) => {
                    let _ = child.wait();
                    return Err(SpawnError::Setup {
                        step: NsStep::from_code(step),
                        error: io::Error::from_raw_os_error(errno),
                    });
                }
                None => {
                    let status = child.wait().map_err(SpawnError::Wait)?;
                    return Err(SpawnError::Ended { status });
                }
            }
        }
        // The bind mount holds the file: its name can go now, so nothing is
        // left in the temporary directory even if this process is killed.
        drop(resolv_file);
        for w in &child.warnings {
            tracing::warn!("{w}");
        }
        Ok(child)
    }

    /// Init's pid, as this process sees it: its namespaces are
    /// `/proc/PID/ns/*`.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// The namespace to network, for [`Plan::start`](crate::Plan::start):
    /// its network namespace and, with a user namespace, that too.
    pub fn target(&self) -> Target {
        Target::of_process(self.pid(), self.user_namespace)
    }

    /// Whether the namespaces include a user namespace.
    pub fn user_namespace(&self) -> bool {
        self.user_namespace
    }

    /// What did not work but did not stop the command (also logged).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Lets the command run, and returns once it has been executed.
    ///
    /// # Errors
    ///
    /// The go was sent already, the namespace child is gone, or the command
    /// could not be executed ([`SpawnError::Command`]; it then exits with
    /// 127 or 126 and [`NsChild::wait`] reports that).
    pub fn go(&mut self) -> Result<(), SpawnError> {
        if self.went {
            return Err(SpawnError::AlreadyStarted);
        }
        self.went = true;
        // The write end stays open: it is the command's lifeline.
        self.go.write_all(b"1").map_err(SpawnError::Go)?;
        let mut errors = self.exec_errors.take().ok_or(SpawnError::AlreadyStarted)?;
        // EOF once the command has exec'd (the pipe is close-on-exec) or
        // init has gone; a record when executing failed.
        match read_record(&mut errors) {
            Some((_, step, errno)) => Err(SpawnError::Command {
                program: self.program.clone(),
                step: NsStep::from_code(step),
                error: io::Error::from_raw_os_error(errno),
            }),
            None => Ok(()),
        }
    }

    /// Sends `signal` to init, which passes it on to the command (SIGKILL
    /// ends the whole namespace at once). Nothing is sent once it has been
    /// reaped.
    ///
    /// # Errors
    ///
    /// kill(2) failed.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        if self.exited.is_some() {
            return Ok(());
        }
        kill(self.pid, signal)
    }

    /// The command's exit status once init has exited (reaping it), without
    /// blocking.
    ///
    /// # Errors
    ///
    /// waitpid(2) failed.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Errno> {
        self.reap(Some(WaitPidFlag::WNOHANG))
    }

    /// Waits for the command and the namespace's end; returns the
    /// command's exit status (or init's, when it was killed: SIGKILL).
    ///
    /// # Errors
    ///
    /// waitpid(2) failed.
    pub fn wait(&mut self) -> Result<ExitStatus, Errno> {
        loop {
            if let Some(status) = self.reap(None)? {
                return Ok(status);
            }
        }
    }

    /// Ends the namespace at once (SIGKILL to init: every process in it
    /// dies) and reaps init.
    ///
    /// # Errors
    ///
    /// waitpid(2) failed.
    pub fn kill(&mut self) -> Result<ExitStatus, Errno> {
        let _ = self.signal(Signal::SIGKILL);
        self.wait()
    }

    fn reap(&mut self, flags: Option<WaitPidFlag>) -> Result<Option<ExitStatus>, Errno> {
        if let Some(status) = self.exited {
            return Ok(Some(status));
        }
        let ws = loop {
            match waitpid(self.pid, flags) {
                Err(Errno::EINTR) => continue,
                other => break other?,
            }
        };
        let Some(init_status) = status_of(ws) else {
            return Ok(None);
        };
        // Init wrote the command's own status before exiting; nothing when
        // it was killed.
        let mut raw = [0u8; 4];
        let status = match self.status.read_exact(&mut raw) {
            Ok(()) => ExitStatus::from_raw(i32::from_ne_bytes(raw)),
            Err(_) => init_status,
        };
        self.exited = Some(status);
        Ok(Some(status))
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.kill();
        }
    }
}

/// One report: tag, step, errno.
fn read_record(from: &mut File) -> Option<(u8, u8, i32)> {
    let mut rec = [0u8; 6];
    from.read_exact(&mut rec).ok()?;
    Some((
        rec[0],
        rec[1],
        i32::from_ne_bytes([rec[2], rec[3], rec[4], rec[5]]),
    ))
}

/// The errno of the last failed call.
fn errno() -> i32 {
    Errno::last_raw()
}

/// Writes a report (init and the command only: no allocation).
#[allow(unsafe_code)]
fn report(fd: RawFd, tag: u8, step: NsStep, errno: i32) {
    let e = errno.to_ne_bytes();
    let rec = [tag, step.code(), e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) from a local array of its length.
    let _ = unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

/// Writes `data` to the file at `path` (init only).
#[allow(unsafe_code)]
fn write_file(path: &CString, data: &[u8]) -> Result<(), i32> {
    // SAFETY: open(2) with a NUL-terminated path prepared before the clone.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: write(2) from a slice of its length, to the fd just opened.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let result = if n == data.len() as isize {
        Ok(())
    } else {
        Err(errno())
    };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    result
}

/// The namespace's init: runs in the cloned process, returns its exit
/// code. Only system calls on data prepared before the clone: no
/// allocation, no lock, no panic.
#[allow(unsafe_code)]
fn init(p: &Prepared) -> isize {
    // SAFETY: sigfillset fills a local set; sigprocmask changes only this
    // single-threaded process's mask. Blocked signals are queued for pid 1
    // (unblocked ones without a handler would be dropped).
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    // Its own name in ps and pgrep, not a second copy of the caller's.
    // SAFETY: prctl(PR_SET_NAME) reads a static NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"slirpnet-init".as_ptr()) };
    if let Err(e) = place_fds(&p.fds) {
        report(p.fds[3].0, TAG_ERROR, NsStep::Fds, e);
        return 125;
    }
    let fail = |step: NsStep, e: i32| -> isize {
        report(STATUS_FD, TAG_ERROR, step, e);
        125
    };
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags; SIGCHLD must not
    // be ignored (the caller may ignore it), or the command would be
    // reaped by the kernel before init sees its status.
    unsafe {
        let dfl: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, &dfl, std::ptr::null_mut());
    }
    // SAFETY: signalfd(2) on the full set; the fd is close-on-exec.
    let sigfd = unsafe { libc::signalfd(-1, &all, libc::SFD_CLOEXEC) };
    if sigfd < 0 {
        return fail(NsStep::Signals, errno());
    }
    if p.user_namespace {
        for (i, (path, data)) in p.maps.iter().enumerate() {
            if let Err(e) = write_file(path, data) {
                let step = [NsStep::Setgroups, NsStep::UidMap, NsStep::GidMap][i.min(2)];
                return fail(step, e);
            }
        }
    }
    // Nothing mounted here may reach the caller's mount namespace.
    // SAFETY: mount(2) with static NUL-terminated strings and no data.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return fail(NsStep::PrivateMounts, errno());
    }
    // accept_dad: the fd stays open so the same file is restored at the go.
    let mut dad_fd = -1;
    let mut dad_original = [0u8; 16];
    let mut dad_len = 0usize;
    if p.accept_dad {
        // SAFETY: open(2) with a static path.
        dad_fd = unsafe {
            libc::open(
                c"/proc/sys/net/ipv6/conf/default/accept_dad".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC,
            )
        };
        if dad_fd < 0 && errno() != libc::ENOENT {
            return fail(NsStep::AcceptDad, errno());
        }
        if dad_fd >= 0 {
            // SAFETY: pread(2) into a local array of its length.
            let n = unsafe {
                libc::pread(
                    dad_fd,
                    dad_original.as_mut_ptr().cast(),
                    dad_original.len(),
                    0,
                )
            };
            // SAFETY: pwrite(2) from a static string.
            if n <= 0 || unsafe { libc::pwrite(dad_fd, c"0".as_ptr().cast(), 1, 0) } != 1 {
                return fail(NsStep::AcceptDad, errno());
            }
            dad_len = n as usize;
        }
    }
    if p.mount_proc {
        // SAFETY: mount(2) with static NUL-terminated strings and no data.
        let r = unsafe {
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if r < 0 {
            report(STATUS_FD, TAG_WARNING, NsStep::MountProc, errno());
        }
    }
    if let Some((source, target)) = &p.resolv {
        // SAFETY: mount(2) with NUL-terminated paths prepared before the clone.
        let r = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if r < 0 {
            report(STATUS_FD, TAG_WARNING, NsStep::ResolvConf, errno());
        }
    }
    report(STATUS_FD, TAG_OK, NsStep::Fds, 0);

    let mut byte = [0u8; 1];
    loop {
        // SAFETY: read(2) into a local array of its length.
        let n = unsafe { libc::read(GO_FD, byte.as_mut_ptr().cast(), 1) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n != 1 || byte[0] != b'1' {
            return 125; // the caller gave up or is gone
        }
        break;
    }
    if dad_fd >= 0 {
        // SAFETY: pwrite(2) of the bytes read above, then close(2) of its fd.
        unsafe {
            libc::pwrite(dad_fd, dad_original.as_ptr().cast(), dad_len, 0);
            libc::close(dad_fd);
        }
    }

    // A raw clone, as fork(2) but without glibc's fork handlers, which take
    // locks that another thread of the original process may have held.
    // SAFETY: clone(2) with only the exit signal and no new stack behaves
    // as fork: the child continues here on its copy of this stack.
    let command =
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    if command < 0 {
        report(EXEC_FD, TAG_ERROR, NsStep::Fork, errno());
        return 125;
    }
    if command == 0 {
        exec_command(p);
    }
    let command = command as libc::pid_t;
    // SAFETY: closing our copy of the exec error pipe: the caller's read
    // ends when the command has exec'd.
    unsafe { libc::close(EXEC_FD) };
    serve(sigfd, command)
}

/// Places the fds at their numbers: stdio without close-on-exec, init's
/// own with it; every other fd is closed.
#[allow(unsafe_code)]
fn place_fds(fds: &[(RawFd, RawFd); 6]) -> Result<(), i32> {
    let mut moved = [-1; 6];
    for (slot, &(src, _)) in moved.iter_mut().zip(fds) {
        if src >= 0 {
            // SAFETY: fcntl on an fd copied from the caller; the copy is
            // above every target number, so no placement overwrites a source.
            let fd = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 10) };
            if fd < 0 {
                return Err(errno());
            }
            *slot = fd;
        }
    }
    for (&fd, &(_, dst)) in moved.iter().zip(fds) {
        if fd >= 0 {
            let flags = if dst > 2 { libc::O_CLOEXEC } else { 0 };
            // SAFETY: dup3 of a valid fd onto a number (they differ).
            if unsafe { libc::dup3(fd, dst, flags) } < 0 {
                return Err(errno());
            }
        }
    }
    // SAFETY: close_range(2) closes fds of this process only: the copies
    // above and whatever else the caller had open (other sessions' pipes).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (EXEC_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        // Kernels before 5.9: close them one by one.
        let mut limit: libc::rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) into a local struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let max = limit.rlim_cur.min(1 << 20) as RawFd;
        for fd in EXEC_FD + 1..max {
            // SAFETY: closing fds of this process.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// The command's side of the raw clone: a clean signal state, its
/// directory, exec. Never returns.
#[allow(unsafe_code)]
fn exec_command(p: &Prepared) -> ! {
    // SAFETY: an empty mask and SIGPIPE at its default (std ignores it in
    // the caller, and an ignored signal stays ignored across exec), both
    // for this single-threaded process only.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let dfl: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
        libc::close(STATUS_FD);
        libc::close(GO_FD);
    }
    if let Some(dir) = &p.cwd {
        // SAFETY: chdir(2) with a path prepared before the clone.
        if unsafe { libc::chdir(dir.as_ptr()) } < 0 {
            report(EXEC_FD, TAG_ERROR, NsStep::ChangeDir, errno());
            // SAFETY: _exit(2) ends this process without running anything.
            unsafe { libc::_exit(126) };
        }
    }
    // SAFETY: execve(2) with NUL-terminated strings and null-terminated
    // pointer arrays prepared before the clone (still alive: this process
    // has its own copy of them).
    unsafe { libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
    let e = errno();
    report(EXEC_FD, TAG_ERROR, NsStep::Exec, e);
    // SAFETY: as above.
    unsafe { libc::_exit(if e == libc::ENOENT { 127 } else { 126 }) }
}

/// Init's loop: pass signals on to the command, reap everything, and end
/// with the command (or with the caller). Returns init's exit code.
#[allow(unsafe_code)]
fn serve(sigfd: RawFd, command: libc::pid_t) -> isize {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: GO_FD,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on a local array of its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue; // EINTR (nothing else is possible with valid fds)
        }
        if fds[1].revents != 0 {
            // The caller closed the lifeline: it is gone. Our exit takes
            // every process of the namespace along.
            return 137;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: a zeroed signalfd_siginfo is valid; read(2) fills it.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: read(2) into a local struct of its size.
        let n = unsafe {
            libc::read(
                sigfd,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            continue;
        }
        let signo = info.ssi_signo as libc::c_int;
        if signo != libc::SIGCHLD {
            // A process sent it (SI_USER, SI_QUEUE, SI_TKILL: codes <= 0);
            // a terminal's signal reached the command's process group already.
            if info.ssi_code <= 0 {
                // SAFETY: kill(2) to our own child, unreaped.
                unsafe { libc::kill(command, signo) };
            }
            continue;
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) into a local int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == command {
                let raw = status.to_ne_bytes();
                // SAFETY: write(2) from a local array of its length.
                unsafe { libc::write(STATUS_FD, raw.as_ptr().cast(), raw.len()) };
                return if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status) as isize
                } else {
                    128 + libc::WTERMSIG(status) as isize
                };
            }
        }
    }
}
