//! `slirpnet __child`: the process `run` starts, which becomes the command.
//!
//! It is a fresh exec of our own binary, so it is single-threaded and may
//! unshare user and mount namespaces. Protocol with the parent: it writes
//! `ok` (or `error: ...`) on fd 3 once its namespaces exist, then waits for
//! the byte `1` on fd 4 (EOF: the parent gave up, exit quietly), then points
//! /etc/resolv.conf at slirp4netns's DNS in its private mount namespace, asks
//! for SIGKILL when slirpnet dies, and execs the command.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Args;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

const ACCEPT_DAD: &str = "/proc/sys/net/ipv6/conf/default/accept_dad";

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
        if let Err(e) = std::fs::write(ACCEPT_DAD, original) {
            eprintln!("slirpnet: warning: could not restore {ACCEPT_DAD}: {e}");
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
    match std::fs::read_to_string(ACCEPT_DAD) {
        Ok(v) if v.trim() != "0" => {
            std::fs::write(ACCEPT_DAD, "0")
                .map_err(|e| format!("failed to write {ACCEPT_DAD}: {e}"))?;
            Ok(Some(v.trim().to_owned()))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("failed to read {ACCEPT_DAD}: {e}")),
    }
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
