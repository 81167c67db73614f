//! The namespace's init, in the cloned process: only system calls on data
//! prepared before the clone ([`Prepared`]), reporting on a pipe whose
//! records the caller reads with [`read_record`].

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::RawFd;

use nix::errno::Errno;

use super::error::NsStep;

/// Where init keeps its report pipe, its go pipe and the command's exec
/// error pipe.
pub(super) const STATUS_FD: RawFd = 3;
pub(super) const GO_FD: RawFd = 4;
pub(super) const EXEC_FD: RawFd = 5;

/// Report tags: namespaces ready, a failure (init exits), a warning.
pub(super) const TAG_OK: u8 = b'K';
pub(super) const TAG_ERROR: u8 = b'E';
pub(super) const TAG_WARNING: u8 = b'W';

/// Everything the cloned process reads, prepared before the clone: it
/// allocates nothing.
pub(super) struct Prepared {
    pub(super) user_namespace: bool,
    pub(super) maps: [(CString, Vec<u8>); 3],
    pub(super) resolv: Option<(CString, CString)>,
    pub(super) accept_dad: bool,
    pub(super) mount_proc: bool,
    /// (fd in the caller, number in init); -1: leave that number alone.
    pub(super) fds: [(RawFd, RawFd); 6],
    pub(super) program: CString,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    pub(super) cwd: Option<CString>,
}

/// One report: tag, step, errno.
pub(super) fn read_record(from: &mut File) -> Option<(u8, u8, i32)> {
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
pub(super) fn init(p: &Prepared) -> isize {
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
