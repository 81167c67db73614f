//! Confining every thread, not just the caller: no_new_privs, the Landlock
//! domain and the capability sets belong to a thread, and the forwarder's
//! threads (namespace sockets, routes, reload, control, SIGTERM) are
//! already running when it confines itself. (The seccomp filter is the
//! exception: the kernel copies it to every thread with TSYNC.)
//!
//! Each other thread gets a real-time signal whose handler confines the
//! thread it runs on, with raw system calls only (async-signal-safe, no
//! allocation, errno saved), and acknowledges with its thread id. The
//! caller signals every thread it finds in `/proc/self/task` until a pass
//! finds none new (a thread started meanwhile by a confined thread is
//! confined from birth: it inherits its creator's credentials), waits for
//! every acknowledgement (a thread that ended needs none), checks each
//! thread's `status`, and confines itself last.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::libc;

/// How long the other threads may take to confine themselves.
const WAIT: Duration = Duration::from_secs(5);
/// Acknowledgements kept (one per thread signalled).
const SLOTS: usize = 1024;

/// CAP_SETPCAP: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;

/// What every thread is to keep, and the Landlock ruleset (-1: none).
static KEEP: AtomicU64 = AtomicU64::new(0);
static LANDLOCK: AtomicI32 = AtomicI32::new(-1);
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
/// The first errno a thread failed with (0: none).
static FAILED: AtomicI32 = AtomicI32::new(0);
/// Thread ids of the threads that confined themselves.
static ACKED: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static ACKS: AtomicUsize = AtomicUsize::new(0);

/// The capability sets of a thread, as `capget(2)` reports them.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

const CAP_V3: u32 = 0x2008_0522;

#[allow(unsafe_code)]
fn capget() -> Result<u64, i32> {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) writes two CapData for version 3 into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

#[allow(unsafe_code)]
fn errno() -> i32 {
    // SAFETY: errno is thread-local and always readable.
    unsafe { *libc::__errno_location() }
}

/// Confines the calling thread: no_new_privs, the Landlock domain, then
/// every capability not in KEEP dropped from the bounding, ambient,
/// inheritable, permitted and effective sets. Raw system calls only.
#[allow(unsafe_code)]
fn confine_current() -> Result<(), i32> {
    let keep = KEEP.load(Ordering::Acquire);
    // SAFETY: prctl(2) with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(errno());
    }
    let ruleset = LANDLOCK.load(Ordering::Acquire);
    if ruleset >= 0 {
        // SAFETY: landlock_restrict_self(2) on a ruleset fd we keep open
        // until every thread is done.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) } != 0 {
            return Err(errno());
        }
    }
    let permitted = capget()?;
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..=LAST_CAP.load(Ordering::Acquire).min(63) {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl(2) with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
                    && errno() != libc::EINVAL
                {
                    return Err(errno());
                }
            }
        }
    }
    // SAFETY: prctl(2) with integer arguments; EINVAL on kernels before 4.3.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
        && errno() != libc::EINVAL
    {
        return Err(errno());
    }
    let left = keep & permitted;
    let data = [
        CapData {
            effective: left as u32,
            permitted: left as u32,
            inheritable: 0,
        },
        CapData {
            effective: (left >> 32) as u32,
            permitted: (left >> 32) as u32,
            inheritable: 0,
        },
    ];
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: capset(2) reads two CapData for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

#[allow(unsafe_code)]
extern "C" fn on_signal(_signo: libc::c_int) {
    let saved = errno();
    if let Err(e) = confine_current() {
        let _ = FAILED.compare_exchange(0, e, Ordering::AcqRel, Ordering::Acquire);
    }
    // SAFETY: gettid(2) has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let slot = ACKS.fetch_add(1, Ordering::AcqRel);
    if slot < SLOTS {
        ACKED[slot].store(tid, Ordering::Release);
    }
    // SAFETY: restores this thread's errno, as a handler must.
    unsafe { *libc::__errno_location() = saved };
}

fn acked() -> BTreeSet<i32> {
    let n = ACKS.load(Ordering::Acquire).min(SLOTS);
    ACKED[..n]
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .collect()
}

fn tasks() -> io::Result<BTreeSet<i32>> {
    std::fs::read_dir("/proc/self/task")?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().parse().unwrap_or(0)))
        .collect()
}

fn alive(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// The highest capability the kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Confines every thread of the process (see the module's text): drops
/// every capability outside `keep` (a mask of capability numbers), sets
/// no_new_privs, and restricts each thread with the Landlock `ruleset`
/// when there is one. Once per process.
///
/// # Errors
///
/// A thread failed to confine itself (its errno), or did not within 5 s.
/// Returns the capabilities left (those of `keep` the process had).
#[allow(unsafe_code)]
pub(crate) fn confine_all(keep: u64, ruleset: Option<RawFd>) -> io::Result<u64> {
    KEEP.store(keep, Ordering::Release);
    LANDLOCK.store(ruleset.unwrap_or(-1), Ordering::Release);
    LAST_CAP.store(last_cap(), Ordering::Release);
    let signal = libc::SIGRTMIN();
    // SAFETY: a zeroed sigaction is valid; the fields are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as *const () as usize;
    // Blocking calls on the other threads carry on after the handler.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: sa_mask is ours to fill.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: a zeroed sigaction to receive the old one.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: the handler makes only async-signal-safe system calls.
    if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let result = signal_others(signal);
    // SAFETY: puts back what was there.
    unsafe { libc::sigaction(signal, &old, std::ptr::null_mut()) };
    result?;
    match FAILED.load(Ordering::Acquire) {
        0 => {}
        e => return Err(io::Error::from_raw_os_error(e)),
    }
    check_others(keep)?;
    confine_current().map_err(io::Error::from_raw_os_error)?;
    capget().map_err(io::Error::from_raw_os_error)
}

#[allow(unsafe_code)]
fn signal_others(signal: i32) -> io::Result<()> {
    // SAFETY: getpid(2) and gettid(2) have no arguments and cannot fail.
    let (pid, me) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) };
    let mut signalled = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let fresh: Vec<i32> = tasks()?
            .into_iter()
            .filter(|t| *t != me && !signalled.contains(t))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        for tid in fresh {
            signalled.insert(tid);
            // SAFETY: tgkill(2) to a thread of our own process.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
        }
        loop {
            let acked = acked();
            let pending: Vec<i32> = signalled
                .iter()
                .copied()
                .filter(|t| !acked.contains(t) && alive(*t))
                .collect();
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "threads {pending:?} did not confine themselves within {WAIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// What a thread's `status` says of it, for the check.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadState {
    pub(crate) no_new_privs: bool,
    pub(crate) effective: u64,
    pub(crate) permitted: u64,
    pub(crate) inheritable: u64,
    pub(crate) ambient: u64,
}

/// Reads the fields the sandbox sets from a `/proc/.../status` text.
pub(crate) fn parse_status(text: &str) -> ThreadState {
    let mut state = ThreadState::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let hex = || u64::from_str_radix(value, 16).unwrap_or(u64::MAX);
        match key {
            "NoNewPrivs" => state.no_new_privs = value == "1",
            "CapEff" => state.effective = hex(),
            "CapPrm" => state.permitted = hex(),
            "CapInh" => state.inheritable = hex(),
            "CapAmb" => state.ambient = hex(),
            _ => {}
        }
    }
    state
}

/// Every other thread that still runs: no_new_privs, and no capability
/// outside `keep`.
fn check_others(keep: u64) -> io::Result<()> {
    // SAFETY: gettid(2) cannot fail.
    #[allow(unsafe_code)]
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    for tid in tasks()? {
        if tid == me {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
            continue; // ended meanwhile
        };
        let state = parse_status(&text);
        let extra = (state.effective | state.permitted | state.inheritable | state.ambient) & !keep;
        if !state.no_new_privs || extra != 0 {
            return Err(io::Error::other(format!(
                "thread {tid} is not confined: {state:?}"
            )));
        }
    }
    Ok(())
}
