//! Sockets and files made inside a network namespace and handed back, also
//! from a process that cannot join the namespace's user namespace itself.
//!
//! A socket (and a `/proc/sys/net` file) keeps the namespace it was made
//! in, so a caller that only needs a few descriptors from inside never has
//! to be there. With CAP_SYS_ADMIN over the namespace they are made on a
//! thread that joins it ([`Netns::run`]). A rootless caller outside the
//! namespace's user namespace cannot join that user namespace while it has
//! threads, so a forked child (single-threaded by construction) joins the
//! user namespace, then the network namespace, makes them and sends them
//! back over a socket pair; between fork and exit it only makes system
//! calls, no allocation and no lock.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use caps::Capability;
use nix::errno::Errno;

use crate::ns::{Netns, NetnsError};
use crate::privilege::has_cap;

/// The most descriptors one [`Netns::open_inside`] makes.
pub const MAX_INSIDE: usize = 8;

/// Something [`Netns::open_inside`] makes inside a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inside {
    /// `socket(domain, ty | SOCK_CLOEXEC, protocol)` (the `libc` constants).
    Socket {
        /// `AF_*`.
        domain: i32,
        /// `SOCK_*`.
        ty: i32,
        /// The protocol (`NETLINK_SOCK_DIAG`, ...).
        protocol: i32,
    },
    /// A file opened read-only, such as a `/proc/sys/net/...` file, which
    /// shows the namespace it was opened in.
    ReadOnly(&'static CStr),
}

impl std::fmt::Display for Inside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inside::Socket {
                domain,
                ty,
                protocol,
            } => write!(f, "socket({domain}, {ty}, {protocol})"),
            Inside::ReadOnly(path) => write!(f, "{}", path.to_string_lossy()),
        }
    }
}

/// Makes `item` on the calling thread; a raw descriptor (close-on-exec) or
/// the errno. Only system calls: safe between fork and exit.
#[allow(unsafe_code)]
fn make_raw(item: &Inside) -> Result<RawFd, i32> {
    let fd = match item {
        Inside::Socket {
            domain,
            ty,
            protocol,
        } => {
            // SAFETY: socket(2) takes plain integers and returns a new
            // descriptor or -1.
            unsafe { nix::libc::socket(*domain, *ty | nix::libc::SOCK_CLOEXEC, *protocol) }
        }
        // SAFETY: the path is a valid NUL-terminated string for the call.
        Inside::ReadOnly(path) => unsafe {
            nix::libc::open(path.as_ptr(), nix::libc::O_RDONLY | nix::libc::O_CLOEXEC)
        },
    };
    if fd < 0 {
        Err(Errno::last_raw())
    } else {
        Ok(fd)
    }
}

#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just made by this process and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What the child reports when a step fails: its index (0 the user
/// namespace, 1 the network namespace, 2.. the items) and the errno.
const STEP_DONE: u32 = u32::MAX;

impl Netns {
    /// Makes `items` inside this namespace and returns them in order, each
    /// close-on-exec. With `userns` (the user namespace that owns it, for a
    /// rootless caller) and without CAP_SYS_ADMIN here, a forked child
    /// joins `userns` first; otherwise a thread joins the namespace
    /// ([`Netns::run`]).
    ///
    /// # Errors
    ///
    /// More than [`MAX_INSIDE`] items ([`NetnsError::Inside`] with EINVAL),
    /// the user namespace cannot be opened ([`NetnsError::Open`]) or
    /// joined ([`NetnsError::JoinUserns`]), the namespace cannot be joined
    /// (as [`Netns::run`]), the child cannot be forked
    /// ([`NetnsError::Fork`]), or an item cannot be made
    /// ([`NetnsError::Inside`]).
    pub fn open_inside(
        &self,
        userns: Option<&Path>,
        items: &[Inside],
    ) -> Result<Vec<OwnedFd>, NetnsError> {
        if items.len() > MAX_INSIDE {
            return Err(self.inside_error(&items[MAX_INSIDE], Errno::EINVAL as i32));
        }
        match userns {
            Some(userns) if !has_cap(Capability::CAP_SYS_ADMIN) => self.fork_inside(userns, items),
            _ => self.run(|| {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match make_raw(item) {
                        Ok(fd) => out.push(own(fd)),
                        Err(errno) => return Err(self.inside_error(item, errno)),
                    }
                }
                Ok(out)
            })?,
        }
    }

    fn inside_error(&self, item: &Inside, errno: i32) -> NetnsError {
        NetnsError::Inside {
            path: self.path().to_owned(),
            what: item.to_string(),
            error: io::Error::from_raw_os_error(errno),
        }
    }

    #[allow(unsafe_code)]
    fn fork_inside(&self, userns: &Path, items: &[Inside]) -> Result<Vec<OwnedFd>, NetnsError> {
        use nix::sys::socket::{
            recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
        };
        let user = std::fs::File::open(userns).map_err(|error| NetnsError::Open {
            path: userns.to_owned(),
            error,
        })?;
        let fork_error = |error: io::Error| NetnsError::Fork {
            path: self.path().to_owned(),
            error,
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| fork_error(e.into()))?;
        let netns_fd = std::os::fd::AsFd::as_fd(self).as_raw_fd();
        // SAFETY: the child only makes system calls (setns, socket, open,
        // sendmsg, _exit) on memory prepared before the fork, so no lock
        // another thread held at the fork is ever taken in it.
        match unsafe { nix::libc::fork() } {
            -1 => Err(fork_error(io::Error::last_os_error())),
            0 => child(user.as_raw_fd(), netns_fd, theirs.as_raw_fd(), items),
            pid => {
                drop(theirs);
                let mut data = [0u8; 8];
                let mut iov = [io::IoSliceMut::new(&mut data)];
                let mut space = nix::cmsg_space!([RawFd; MAX_INSIDE]);
                let received = recvmsg::<()>(
                    ours.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                );
                let mut fds = Vec::new();
                let got = match received {
                    Ok(msg) => {
                        for c in msg.cmsgs().into_iter().flatten() {
                            if let ControlMessageOwned::ScmRights(list) = c {
                                fds.extend(list.into_iter().map(own));
                            }
                        }
                        Ok(msg.bytes)
                    }
                    Err(e) => Err(e),
                };
                let mut status = 0;
                // SAFETY: reaps our own child; `status` is a valid pointer.
                while unsafe { nix::libc::waitpid(pid, &mut status, 0) } < 0
                    && Errno::last() == Errno::EINTR
                {}
                let step = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                let errno = i32::from_ne_bytes([data[4], data[5], data[6], data[7]]);
                match got {
                    Ok(8) if step == STEP_DONE && fds.len() == items.len() => Ok(fds),
                    Ok(8) if step == 0 => Err(NetnsError::JoinUserns {
                        path: userns.to_owned(),
                        error: io::Error::from_raw_os_error(errno),
                    }),
                    Ok(8) if step == 1 => Err(self.join_error(Errno::from_raw(errno))),
                    Ok(8) if (step as usize) < items.len() + 2 => {
                        Err(self.inside_error(&items[step as usize - 2], errno))
                    }
                    Ok(_) => Err(fork_error(io::Error::other(format!(
                        "the child ended without an answer (wait status {status})"
                    )))),
                    Err(e) => Err(fork_error(e.into())),
                }
            }
        }
    }
}

/// The forked child: joins the namespaces, makes the items, sends them (or
/// the failed step and its errno) and exits. System calls only.
#[allow(unsafe_code)]
fn child(userns: RawFd, netns: RawFd, sock: RawFd, items: &[Inside]) -> ! {
    let mut fds = [0 as RawFd; MAX_INSIDE];
    let mut step: u32 = 0;
    let mut errno = 0;
    // SAFETY: setns takes plain integers.
    if unsafe { nix::libc::setns(userns, nix::libc::CLONE_NEWUSER) } < 0 {
        errno = Errno::last_raw();
    } else {
        step = 1;
        // SAFETY: as above.
        if unsafe { nix::libc::setns(netns, nix::libc::CLONE_NEWNET) } < 0 {
            errno = Errno::last_raw();
        } else {
            step = STEP_DONE;
            for (i, item) in items.iter().enumerate() {
                match make_raw(item) {
                    Ok(fd) => fds[i] = fd,
                    Err(e) => {
                        step = 2 + i as u32;
                        errno = e;
                        break;
                    }
                }
            }
        }
    }
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&step.to_ne_bytes());
    data[4..].copy_from_slice(&errno.to_ne_bytes());
    let mut iov = nix::libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Aligned room for one SCM_RIGHTS header and MAX_INSIDE descriptors.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid (no name, no control).
    let mut msg: nix::libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let n = if step == STEP_DONE { items.len() } else { 0 };
    if n > 0 {
        let bytes = (n * std::mem::size_of::<RawFd>()) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic only.
        msg.msg_controllen = unsafe { nix::libc::CMSG_SPACE(bytes) } as _;
        // SAFETY: `control` is aligned and large enough for one header and
        // MAX_INSIDE descriptors (checked by the caller), so the header and
        // its data lie inside it.
        unsafe {
            let cmsg = nix::libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = nix::libc::SOL_SOCKET;
            (*cmsg).cmsg_type = nix::libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = nix::libc::CMSG_LEN(bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                nix::libc::CMSG_DATA(cmsg),
                bytes as usize,
            );
        }
    }
    // SAFETY: `msg` points at live buffers; _exit ends the child without
    // running anything of the parent's (no atexit, no destructors).
    unsafe {
        nix::libc::sendmsg(sock, &msg, 0);
        nix::libc::_exit(0)
    }
}
