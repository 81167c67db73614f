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

mod command;
mod error;
mod init;

pub use command::{NsCommand, NsOptions};
pub use error::{NsStep, SpawnError};

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use slirp_opts::Target;

use init::{init, read_record, Prepared, EXEC_FD, GO_FD, STATUS_FD, TAG_OK, TAG_WARNING};

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
