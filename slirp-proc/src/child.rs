//! Setting up a child between fork and exec: fds at fixed numbers and
//! nothing else, a clean signal mask, namespaces.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// What a child gets between fork and exec.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// (parent fd, child fd number): at most 8, at numbers 3 to 63. The
    /// parent fds must stay open until `spawn` returns.
    pub fds: Vec<(RawFd, i32)>,
    /// Signal the child gets when the thread that spawned it dies.
    pub death_signal: Option<Signal>,
    /// A new mount namespace, made a recursive slave of ours.
    pub new_mount_ns: bool,
    /// A user namespace to join first (an fd open on `/proc/PID/ns/user`,
    /// kept open until `spawn` returns): for a helper that must then enter a
    /// network namespace owned by it, as rootless podman runs rootlessport.
    pub join_userns: Option<RawFd>,
}

/// Arranges, between fork and exec: the fds at their numbers without
/// close-on-exec, every other fd above them closed at exec, an empty signal
/// mask, the parent-death signal, the user namespace to join and a new mount
/// namespace, as `setup` asks.
#[allow(unsafe_code)]
pub fn install_child_setup(command: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        fds,
        death_signal,
        new_mount_ns,
        join_userns,
    } = setup;
    let highest = fds.iter().map(|&(_, n)| n).max().unwrap_or(2);
    assert!(
        fds.len() <= 8 && (3..64).contains(&highest),
        "at most 8 passed fds, at numbers 3 to 63"
    );
    let hook = move || -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r)
            }
        };
        // Move every source above all target numbers first, so that placing
        // one cannot overwrite another (F_DUPFD_CLOEXEC: the copies close at exec).
        let mut moved = [(0, 0); 8];
        for (slot, &(src, dst)) in moved.iter_mut().zip(fds.iter()) {
            // SAFETY: fcntl on an fd the parent kept open across fork.
            *slot = (
                check(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, highest + 1) })?,
                dst,
            );
        }
        for &(src, dst) in moved.iter().take(fds.len()) {
            // SAFETY: dup2 of a valid fd onto a number; the result lacks
            // FD_CLOEXEC, so it survives exec.
            check(unsafe { libc::dup2(src, dst) })?;
        }
        // Everything above the passed fds is closed at exec, whoever opened
        // it without O_CLOEXEC. (CLOSE_RANGE_CLOEXEC keeps std's own exec-error
        // pipe working until exec.) Kernels before 5.11 lack it; then
        // O_CLOEXEC everywhere in this process is what keeps fds in.
        // SAFETY: close_range only changes fd flags in this (child) process.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                (highest + 1) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            )
        };
        // A caller that handles signals through a signalfd has them blocked;
        // std passes the mask on at exec, and a child with SIGTERM blocked
        // would ignore it. Start with an empty mask.
        // SAFETY: sigemptyset fills a local set; sigprocmask only changes this
        // (single-threaded, child) process's mask.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))?;
        }
        if let Some(sig) = death_signal {
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number.
            check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) })?;
        }
        if let Some(userns) = join_userns {
            // The parent keeps the fd open until spawn returns; the child is
            // single-threaded, as joining a user namespace requires.
            netns_util::join_userns_before_exec(userns)?;
        }
        if new_mount_ns {
            // SAFETY: unshare in the single-threaded child.
            check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            // The copy keeps shared propagation: slirp4netns's sandbox
            // unmounts (pivot_root) would then unmount the host's mounts too,
            // /run/netns/* among them. As a slave it still sees new host
            // mounts, but nothing it does goes back.
            // SAFETY: mount(2) with static NUL-terminated strings and no data.
            check(unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                )
            })?;
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe system calls (fcntl, dup2, close_range, sigprocmask,
    // prctl, setns through netns-util, unshare, mount) on a fixed-size array:
    // it does not allocate or lock.
    unsafe {
        command.pre_exec(hook);
    }
}
