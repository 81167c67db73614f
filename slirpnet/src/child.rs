//! `slirpnet __child`: the process `run` starts, which becomes the command,
//! and [`NsChild`], the parent's side of it. Both ends of the protocol live
//! here.
//!
//! It is a fresh exec of our own binary, so it is single-threaded and may
//! unshare user and mount namespaces. Protocol with the parent: it writes
//! `ok` (or `error: ...`) on [`STATUS_FD`] once its namespaces exist, then
//! waits for the byte `1` on [`GO_FD`] (EOF: the parent gave up, exit
//! quietly), then points /etc/resolv.conf at slirp4netns's DNS in its private
//! mount namespace, asks for SIGKILL when slirpnet dies, and execs the
//! command.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use clap::Args;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// The child's fd for its report (`ok` or `error: ...`).
pub const STATUS_FD: i32 = 3;
/// The child's fd for the parent's go (the byte `1`).
pub const GO_FD: i32 = 4;

#[derive(Debug, Args)]
pub struct ChildArgs {
    /// Where to report.
    #[arg(long)]
    status_fd: i32,
    /// Where the go comes from.
    #[arg(long)]
    go_fd: i32,
    /// Make a user namespace mapping root to UID:GID.
    #[arg(long, value_name = "UID:GID")]
    map: Option<String>,
    /// Hold IPv6 accept_dad at 0 until the go.
    #[arg(long)]
    ipv6: bool,
    /// Bind this file over /etc/resolv.conf.
    #[arg(long)]
    resolv: Option<PathBuf>,
    /// The command.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

#[allow(unsafe_code)]
fn take_fd(fd: i32) -> File {
    // SAFETY: the parent placed these pipe ends at these numbers for this
    // process (install_child_setup) and nothing else here owns them; taking
    // ownership makes them close before the command is exec'd.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn main(args: ChildArgs) -> ExitCode {
    let parent = nix::unistd::getppid();
    let mut status = take_fd(args.status_fd);
    let mut go = take_fd(args.go_fd);
    let dad = match make_namespaces(&args) {
        Ok(dad) => dad,
        Err(e) => {
            let _ = writeln!(status, "error: {e}");
            return ExitCode::from(125);
        }
    };
    if writeln!(status, "ok").is_err() {
        return ExitCode::from(125);
    }
    drop(status);
    let mut byte = [0u8; 1];
    let went = matches!(go.read(&mut byte), Ok(1) if byte[0] == b'1');
    drop(go);
    if !went {
        if let Some(resolv) = &args.resolv {
            let _ = std::fs::remove_file(resolv);
        }
        return ExitCode::from(125); // the parent reports why
    }
    if let Some(original) = dad {
        if let Err(e) = slirp_proc::restore_accept_dad_here(&original) {
            eprintln!("slirpnet: warning: {e}");
        }
    }
    if let Some(resolv) = &args.resolv {
        if let Err(e) = bind_resolv_conf(resolv) {
            eprintln!("slirpnet: warning: /etc/resolv.conf left as it is: {e}");
        }
        // The bind mount holds the inode: the name can go now, so nothing is
        // left in /tmp even if slirpnet itself is killed.
        let _ = std::fs::remove_file(resolv);
    }
    // The command's network lives only as long as slirpnet: if slirpnet is
    // killed, the command goes too (as with `unshare --kill-child`) instead
    // of running on without network. Set last, as a change of credentials
    // (the user namespace) clears it; kept across exec.
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != parent
    {
        return ExitCode::from(125); // slirpnet is gone already
    }
    let err = Command::new(&args.command[0])
        .args(&args.command[1..])
        .exec();
    eprintln!(
        "slirpnet: failed to run {}: {err}",
        Path::new(&args.command[0]).display()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// New network and mount namespaces (and a user namespace when asked),
/// mounts made private, accept_dad held at 0. Returns accept_dad's old value.
fn make_namespaces(args: &ChildArgs) -> Result<Option<String>, String> {
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if args.map.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| {
        format!(
            "failed to create namespaces: {e}{}",
            if args.map.is_some() {
                " (are unprivileged user namespaces enabled? see sysctl kernel.unprivileged_userns_clone and user.max_user_namespaces)"
            } else {
                ""
            }
        )
    })?;
    if let Some(map) = &args.map {
        let (uid, gid) = map
            .split_once(':')
            .ok_or_else(|| format!("bad --map {map:?}"))?;
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(|e| format!("failed to write {file}: {e}"))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    // Our mounts (resolv.conf) must not leak back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("failed to make mounts private: {e}"))?;
    if !args.ipv6 {
        return Ok(None);
    }
    slirp_proc::disable_accept_dad_here().map_err(|e| e.to_string())
}

fn bind_resolv_conf(source: &Path) -> Result<(), String> {
    // /etc/resolv.conf is often a symlink (systemd-resolved): bind over its target.
    let target = std::fs::canonicalize("/etc/resolv.conf")
        .map_err(|e| format!("cannot resolve /etc/resolv.conf: {e}"))?;
    mount(
        Some(source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "failed to bind {} over {}: {e}",
            source.display(),
            target.display()
        )
    })
}

/// The parent's side: the child that becomes the command, started as
/// `slirpnet __child`. It makes the namespaces, reports on [`STATUS_FD`],
/// waits for a go on [`GO_FD`], then execs.
pub struct NsChild {
    proc: std::process::Child,
    status: BufReader<File>,
    go: Option<File>,
}

impl NsChild {
    /// Starts `command` in new namespaces (a user namespace mapping us to
    /// root when `rootless`), accept_dad held at 0 until the go when `ipv6`,
    /// `resolv` bound over /etc/resolv.conf.
    pub fn spawn(
        command: &[OsString],
        rootless: bool,
        ipv6: bool,
        resolv: Option<&Path>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let exe = std::env::current_exe().context("cannot find the slirpnet binary to re-run")?;
        let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC)?;
        let mut cmd = Command::new(exe);
        cmd.arg("__child")
            .arg(format!("--status-fd={STATUS_FD}"))
            .arg(format!("--go-fd={GO_FD}"));
        if rootless {
            let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
            cmd.arg(format!("--map={uid}:{gid}"));
        }
        if ipv6 {
            cmd.arg("--ipv6");
        }
        if let Some(path) = resolv {
            cmd.arg("--resolv").arg(path);
        }
        cmd.arg("--").args(command).stdin(Stdio::inherit());
        slirp_proc::install_child_setup(
            &mut cmd,
            slirp_proc::ChildSetup {
                fds: vec![(status_w.as_raw_fd(), STATUS_FD), (go_r.as_raw_fd(), GO_FD)],
                ..Default::default()
            },
        );
        let proc = cmd.spawn().context("failed to start the namespace child")?;
        drop(status_w);
        drop(go_r);
        Ok(NsChild {
            proc,
            status: BufReader::new(File::from(status_r)),
            go: Some(File::from(go_w)),
        })
    }

    /// Its pid: its namespaces are `/proc/PID/ns/*`.
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Waits for the child's report that its namespaces exist.
    pub fn wait_namespaces(&mut self) -> anyhow::Result<()> {
        let mut line = String::new();
        self.status.read_line(&mut line)?;
        if line.trim() == "ok" {
            return Ok(());
        }
        let status = self.proc.wait()?;
        match line.trim().strip_prefix("error: ") {
            Some(msg) => anyhow::bail!("{msg}"),
            None => {
                anyhow::bail!("the namespace child exited ({status}) before making its namespaces")
            }
        }
    }

    /// Lets the child exec the command.
    pub fn go(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut go = self.go.take().context("the go was sent already")?;
        go.write_all(b"1").context("the namespace child is gone")?;
        Ok(())
    }

    /// Whether the command has exited (reaping it if so).
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.proc.try_wait()
    }

    /// Closes the go pipe without a go (the child exits) and reaps it.
    pub fn abort(&mut self) {
        self.go.take();
        let _ = self.proc.wait();
    }
}
