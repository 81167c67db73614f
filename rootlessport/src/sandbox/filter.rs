//! The seccomp filter: every system call the forwarder makes once it
//! serves, grouped by the code path that needs it (ARCHITECTURE.md lists
//! the same groups). Whatever is not listed traps (SIGSYS, see
//! `denial.rs`); `clone3` fails with ENOSYS instead, so that glibc starts
//! threads with `clone`, whose flags the filter can read.
//!
//! Found with `strace -f` over the end-to-end tests and by reading the
//! code; a few close relatives of what is used (`accept` beside `accept4`,
//! `dup3` beside `dup`) are allowed on purpose, so that a small change in
//! the event loop or the standard library does not kill the forwarder.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use syscalls::Sysno;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The system calls allowed whatever their arguments, by who needs them.
const ALWAYS: &[(&str, &[Sysno])] = &[
    (
        "moving bytes (TCP splice and read/write, UDP batches, pipes of the exit fd, log lines)",
        &[
            Sysno::read,
            Sysno::write,
            Sysno::readv,
            Sysno::writev,
            Sysno::splice,
            Sysno::pipe2,
            Sysno::recvfrom,
            Sysno::sendto,
            Sysno::recvmsg,
            Sysno::sendmsg,
            Sysno::recvmmsg,
            Sysno::sendmmsg,
            Sysno::close,
            Sysno::shutdown,
            Sysno::fcntl,
            Sysno::dup,
            Sysno::dup3,
            Sysno::lseek,
        ],
    ),
    (
        "sockets (listeners added live, connections into the namespace, source addresses, reload and control clients, netlink)",
        &[
            Sysno::bind,
            Sysno::listen,
            Sysno::connect,
            Sysno::accept,
            Sysno::accept4,
            Sysno::getsockname,
            Sysno::getpeername,
            Sysno::getsockopt,
            Sysno::setsockopt,
        ],
    ),
    (
        "the event loop (tokio: epoll, its waker, timers)",
        &[
            Sysno::epoll_create1,
            Sysno::epoll_ctl,
            Sysno::epoll_pwait,
            Sysno::epoll_pwait2,
            Sysno::eventfd2,
            Sysno::ppoll,
            Sysno::clock_gettime,
            Sysno::clock_getres,
            Sysno::gettimeofday,
            Sysno::clock_nanosleep,
            Sysno::nanosleep,
        ],
    ),
    (
        "threads (reload and control clients start, every thread ends) and locks",
        &[
            Sysno::futex,
            Sysno::set_robust_list,
            Sysno::get_robust_list,
            Sysno::rseq,
            Sysno::set_tid_address,
            Sysno::sched_yield,
            Sysno::sched_getaffinity,
            Sysno::gettid,
            Sysno::getpid,
            Sysno::exit,
            Sysno::exit_group,
        ],
    ),
    (
        "memory (the allocator, thread stacks)",
        &[Sysno::brk, Sysno::munmap, Sysno::mremap, Sysno::madvise],
    ),
    (
        "signals (the SIGTERM thread, signal frames, the panic and abort path)",
        &[
            Sysno::rt_sigaction,
            Sysno::rt_sigprocmask,
            Sysno::rt_sigreturn,
            Sysno::rt_sigtimedwait,
            Sysno::sigaltstack,
            Sysno::restart_syscall,
        ],
    ),
    (
        "files (the sysctl a refused live low port quotes, read from an fd opened at start; removing the reload and control sockets; Landlock decides which paths)",
        &[
            Sysno::pread64,
            Sysno::fstat,
            Sysno::statx,
            Sysno::fstatfs,
            Sysno::unlinkat,
            Sysno::getrandom,
            Sysno::getuid,
            Sysno::geteuid,
            Sysno::getgid,
            Sysno::getegid,
        ],
    ),
];

/// x86_64's older names for what aarch64 only has in the newer form.
#[cfg(target_arch = "x86_64")]
const ALWAYS_X86_64: &[Sysno] = &[
    Sysno::epoll_wait,
    Sysno::poll,
    Sysno::newfstatat,
    Sysno::unlink,
    Sysno::getrlimit,
    Sysno::setrlimit,
    Sysno::pipe,
    Sysno::dup2,
    Sysno::time,
];
#[cfg(target_arch = "aarch64")]
const ALWAYS_AARCH64: &[Sysno] = &[Sysno::fstatat, Sysno::getrlimit, Sysno::setrlimit];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

fn cond32(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conditions)
}

/// The system calls allowed only with some arguments.
// The ioctl requests are c_ulong with glibc, c_int with musl.
#[allow(clippy::unnecessary_cast)]
fn conditional(pid: i32) -> Result<Vec<(Sysno, Vec<SeccompRule>)>, BackendError> {
    use SeccompCmpOp::{Eq, MaskedEq};
    let pid = u64::from(pid.unsigned_abs());
    let exec = libc::PROT_EXEC as u64;
    // Read-only opens, never creating, truncating or making a temp file.
    let writes = (libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_TRUNC
        | libc::O_APPEND
        | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u64;
    let thread = libc::CLONE_THREAD as u64;
    let out = vec![
        // Threads only: no fork, no vfork, no new namespaces.
        (
            Sysno::clone,
            vec![rule(vec![cond(0, MaskedEq(thread), thread)?])?],
        ),
        // No executable memory: code is mapped once, at start.
        (Sysno::mmap, vec![rule(vec![cond(2, MaskedEq(exec), 0)?])?]),
        (
            Sysno::mprotect,
            vec![rule(vec![cond(2, MaskedEq(exec), 0)?])?],
        ),
        (
            Sysno::openat,
            vec![rule(vec![cond32(2, MaskedEq(writes), 0)?])?],
        ),
        // Signals only to our own threads (abort, thread-directed wakeups).
        (Sysno::tgkill, vec![rule(vec![cond32(0, Eq, pid)?])?]),
        // Our own limits only (the UDP flow limit reads them).
        (Sysno::prlimit64, vec![rule(vec![cond32(0, Eq, 0)?])?]),
        // Thread names, and the allocator naming its mappings.
        (
            Sysno::prctl,
            [
                libc::PR_SET_NAME,
                libc::PR_GET_NAME,
                libc::PR_SET_VMA,
                libc::PR_GET_NO_NEW_PRIVS,
                // Only ever tightens; seccompiler sets it before each program.
                libc::PR_SET_NO_NEW_PRIVS,
                libc::PR_CAPBSET_READ,
                libc::PR_GET_DUMPABLE,
            ]
            .into_iter()
            .map(|op| rule(vec![cond32(0, Eq, op as u64)?]))
            .collect::<Result<_, _>>()?,
        ),
        // Non-blocking and close-on-exec switches, and how much is queued.
        (
            Sysno::ioctl,
            [
                libc::FIONBIO,
                libc::FIOCLEX,
                libc::FIONCLEX,
                libc::FIONREAD,
                libc::TIOCOUTQ,
            ]
            .into_iter()
            .map(|op| rule(vec![cond32(1, Eq, op as u64)?]))
            .collect::<Result<_, _>>()?,
        ),
        // The families already in use: IPv4, IPv6, unix (the control and
        // reload sockets) and routing netlink (client addresses).
        (
            Sysno::socket,
            vec![
                rule(vec![cond32(0, Eq, libc::AF_INET as u64)?])?,
                rule(vec![cond32(0, Eq, libc::AF_INET6 as u64)?])?,
                rule(vec![cond32(0, Eq, libc::AF_UNIX as u64)?])?,
                rule(vec![
                    cond32(0, Eq, libc::AF_NETLINK as u64)?,
                    cond32(2, Eq, libc::NETLINK_ROUTE as u64)?,
                ])?,
            ],
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    let out = {
        let mut out = out;
        out.push((
            Sysno::open,
            vec![rule(vec![cond32(1, MaskedEq(writes), 0)?])?],
        ));
        out
    };
    Ok(out)
}

/// Every system call the filter lets through (with or without argument
/// checks), for tests and the documentation.
pub(crate) fn allowed() -> Vec<&'static str> {
    let mut all: Vec<Sysno> = ALWAYS.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    #[cfg(target_arch = "x86_64")]
    all.extend_from_slice(ALWAYS_X86_64);
    #[cfg(target_arch = "aarch64")]
    all.extend_from_slice(ALWAYS_AARCH64);
    if let Ok(conditional) = conditional(0) {
        all.extend(conditional.into_iter().map(|(s, _)| s));
    }
    all.sort_by_key(|s| s.id());
    all.dedup();
    all.iter().map(|s| s.name()).collect()
}

/// Installs both programs on every thread (TSYNC); `true`: installed.
///
/// # Errors
///
/// The filter could not be compiled or the kernel refused it.
pub(crate) fn apply_all_threads(pid: i32) -> Result<bool, String> {
    let programs = programs(pid).map_err(|e| format!("cannot compile it: {e}"))?;
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// The name of system call `nr` (a table lookup: no allocation, no lock,
/// so the SIGSYS handler may call it).
pub(crate) fn name(nr: i64) -> Option<&'static str> {
    usize::try_from(nr)
        .ok()
        .and_then(Sysno::new)
        .map(|s| s.name())
}

/// The two programs to install, in order: `clone3` to ENOSYS, then the
/// allow list (everything else traps; installed last, as it denies
/// `seccomp` itself). The kernel runs both on every call and keeps the
/// stricter answer, so the allow list lets `clone3` through.
///
/// `pid` is the process whose threads `tgkill` may signal.
fn programs(pid: i32) -> Result<[BpfProgram; 2], BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for sysno in ALWAYS.iter().flat_map(|(_, s)| s.iter()) {
        rules.insert(i64::from(sysno.id()), Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    for sysno in ALWAYS_X86_64 {
        rules.insert(i64::from(sysno.id()), Vec::new());
    }
    #[cfg(target_arch = "aarch64")]
    for sysno in ALWAYS_AARCH64 {
        rules.insert(i64::from(sysno.id()), Vec::new());
    }
    for (sysno, conditions) in conditional(pid)? {
        rules.insert(i64::from(sysno.id()), conditions);
    }
    // Passes the allow list; answered by the second program.
    rules.insert(i64::from(Sysno::clone3.id()), Vec::new());
    let allow = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, ARCH)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(i64::from(Sysno::clone3.id()), Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )?;
    Ok([clone3.try_into()?, allow.try_into()?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_names_what_it_allows() {
        let [clone3, allow] = programs(std::process::id() as i32).unwrap();
        assert!(!allow.is_empty() && !clone3.is_empty());
        let names = allowed();
        assert_eq!(name(i64::from(Sysno::execve.id())), Some("execve"));
        assert_eq!(name(-1), None);
        for needed in [
            "splice", "recvmmsg", "sendmmsg", "accept4", "futex", "clone",
        ] {
            assert!(names.contains(&needed), "{needed} missing: {names:?}");
        }
        for never in [
            "execve", "execveat", "fork", "vfork", "ptrace", "setns", "unshare",
        ] {
            assert!(!names.contains(&never), "{never} allowed");
        }
    }
}
