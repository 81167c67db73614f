//! What the process does when the filter denies a system call: one line
//! naming it on the stderr it started with, then it dies of SIGSYS.
//!
//! Why SECCOMP_RET_TRAP and not the alternatives: KILL_PROCESS says
//! nothing where anyone looks (an audit record at best); ERRNO lets the
//! process carry on with a failure no code path expects, which a test may
//! never notice; LOG allows. TRAP lets the handler name the call, and
//! dying of the signal afterwards is what KILL_PROCESS would have done.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use nix::libc;

/// Where the line goes (-1: nowhere).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// How a system call number is named (a table lookup: the handler calls it).
static NAMES: OnceLock<fn(i64) -> Option<&'static str>> = OnceLock::new();

/// The part of `siginfo_t` a seccomp SIGSYS fills in (64-bit layout: three
/// ints, padding, then the union, as in the kernel's `_sigsys`).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// Installs the SIGSYS handler; the line goes to a close-on-exec copy of
/// `report` (kept for the life of the process, so stderr may be pointed
/// at /dev/null afterwards) and names the call with `names`, which must
/// neither allocate nor lock.
#[allow(unsafe_code)]
pub(crate) fn install(
    report: BorrowedFd<'_>,
    names: fn(i64) -> Option<&'static str>,
) -> io::Result<()> {
    let _ = NAMES.set(names);
    let copy: OwnedFd = report.try_clone_to_owned()?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(copy);
    let old = REPORT_FD.swap(fd, Ordering::AcqRel);
    if old >= 0 {
        // SAFETY: `old` was a copy only this module owned, and nothing
        // else reads REPORT_FD but the handler, which runs only on a trap.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(old) });
    }
    // SAFETY: a zeroed sigaction is a valid starting point; the fields
    // are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa_mask is ours to fill; sigemptyset cannot fail on it.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: the handler only makes async-signal-safe system calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The line for system call `nr` (named when it has a name), written into
/// `buf` without allocating; returns its length.
pub(crate) fn line(nr: i64, name: Option<&str>, buf: &mut [u8; 256]) -> usize {
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"rootlessport: the sandbox denied system call ");
    put(name.unwrap_or("?").as_bytes());
    put(b" (");
    let mut digits = [0u8; 20];
    let mut n = nr.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if nr < 0 {
        put(b"-");
    }
    put(&digits[at..]);
    put(b"); stopping (ROOTLESSPORT_SANDBOX=0 turns the sandbox off)\n");
    len
}

#[allow(unsafe_code)]
extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers,
    // and for SIGSYS it has the `_sigsys` layout mirrored above.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let nr = i64::from(nr);
    let mut buf = [0u8; 256];
    let name = NAMES.get().and_then(|names| names(nr));
    let len = line(nr, name, &mut buf);
    let fd = REPORT_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: write(2) on our own copy of stderr from a valid buffer;
        // a failure (nobody reading any more) changes nothing.
        unsafe { libc::write(fd, buf.as_ptr().cast(), len) };
    }
    // Die of the signal, as KILL_PROCESS would: back to the default action,
    // and the signal raised again is delivered as the handler returns.
    // SAFETY: signal(2) and raise(3) are async-signal-safe.
    unsafe {
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::raise(libc::SIGSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_call_and_its_number() {
        let mut buf = [0u8; 256];
        let n = line(59, Some("execve"), &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "rootlessport: the sandbox denied system call execve (59); stopping (ROOTLESSPORT_SANDBOX=0 turns the sandbox off)\n"
        );
        let n = line(-7, None, &mut buf);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("call ? (-7)"));
    }
}
