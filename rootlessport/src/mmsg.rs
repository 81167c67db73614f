//! Batched datagram I/O (recvmmsg/sendmmsg) over one set of buffers.
//!
//! Every header is written afresh before each call. The kernel overwrites
//! `msg_namelen` with the length of the address it stored, so a header
//! reused as it was left would cut the next, longer address (an IPv4-mapped
//! `sockaddr_in6` is 28 bytes, a `sockaddr_in` 16) and leave stale address
//! bytes behind: replies would go to an earlier client.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::libc;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 64;
/// Room for the largest datagram (65507 bytes over IPv4, 65527 over IPv6).
pub(crate) const SLOT: usize = 65536;

/// Room for one control message: an `in6_pktinfo` (the largest we use),
/// aligned as a `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Buffers for up to [`BATCH`] datagrams, their lengths and peers.
pub(crate) struct Slots {
    bufs: Vec<u8>,
    /// Length of each datagram in the batch.
    pub(crate) lens: [usize; BATCH],
    /// Where each received datagram came from (`None`: no usable address).
    pub(crate) from: [Option<SocketAddr>; BATCH],
    /// The local address each datagram was sent to, where the socket
    /// reports it (IP_PKTINFO / IPV6_RECVPKTINFO on wildcard listeners).
    pub(crate) local: [Option<IpAddr>; BATCH],
    controls: Box<[Control; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").finish_non_exhaustive()
    }
}

impl Slots {
    /// Empty slots. The buffer's pages are touched only as datagrams land.
    #[allow(unsafe_code)]
    pub(crate) fn new() -> Self {
        Slots {
            bufs: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            from: [None; BATCH],
            local: [None; BATCH],
            controls: Box::new([Control([0; 64]); BATCH]),
            // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C structs
            // for which all-zero bytes are a valid value (null pointers, zero
            // lengths, AF_UNSPEC).
            hdrs: Box::new(unsafe { zeroed() }),
            // SAFETY: as above.
            iovs: Box::new(unsafe { zeroed() }),
            // SAFETY: as above.
            names: Box::new(unsafe { zeroed() }),
        }
    }

    /// Datagram `i` of the batch.
    pub(crate) fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..i * SLOT + self.lens[i]]
    }

    /// Receives up to [`BATCH`] datagrams without blocking; their lengths
    /// and sources land in `lens` and `from`.
    #[allow(unsafe_code)]
    pub(crate) fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * SLOT + SLOT <= bufs.len(), so the offset stays
                // inside the allocation.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let hdr = &mut self.hdrs[i];
            hdr.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            // Reset on every call: the kernel shrinks it to the last address.
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = size_of::<Control>();
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by `self` (a
        // SLOT-sized iovec, a sockaddr_storage with its true size, a
        // control buffer with its true size), and
        // `self` is borrowed mutably for the whole call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.from[i] = decode(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen);
            self.local[i] = local_address(&self.hdrs[i].msg_hdr);
        }
        Ok(n)
    }

    /// Sends datagrams `range`, each to `to` (or to the connected peer when
    /// `None`), from the local address `from` when given (a wildcard
    /// listener must answer from the address the client sent to), without
    /// blocking. Returns how many went out; stops at the first that does
    /// not (a full buffer), as UDP may drop.
    #[allow(unsafe_code)]
    pub(crate) fn send(
        &mut self,
        fd: RawFd,
        range: std::ops::Range<usize>,
        to: Option<SocketAddr>,
        from: Option<IpAddr>,
    ) -> usize {
        let (name, namelen) = match to {
            Some(addr) => encode(addr),
            // SAFETY: all-zero is a valid sockaddr_storage (unused here).
            None => (unsafe { zeroed() }, 0),
        };
        let base = self.bufs.as_mut_ptr();
        let count = range.len();
        for (k, i) in range.clone().enumerate() {
            self.iovs[k] = libc::iovec {
                // SAFETY: i < BATCH, so the slot lies inside the allocation.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: self.lens[i],
            };
            self.names[k] = name;
            let hdr = &mut self.hdrs[k];
            hdr.msg_hdr.msg_name = if to.is_some() {
                (&mut self.names[k] as *mut libc::sockaddr_storage).cast()
            } else {
                std::ptr::null_mut()
            };
            hdr.msg_hdr.msg_namelen = namelen;
            hdr.msg_hdr.msg_iov = &mut self.iovs[k];
            hdr.msg_hdr.msg_iovlen = 1;
            match from {
                Some(ip) => {
                    hdr.msg_hdr.msg_control = self.controls[k].0.as_mut_ptr().cast();
                    hdr.msg_hdr.msg_controllen = size_of::<Control>();
                    hdr.msg_hdr.msg_controllen = write_pktinfo(&mut hdr.msg_hdr, ip);
                }
                None => {
                    hdr.msg_hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_hdr.msg_controllen = 0;
                }
            }
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        let mut sent = 0;
        // A connected UDP socket reports an earlier ICMP "port unreachable"
        // as ECONNREFUSED on the next send, which then sends nothing: the
        // error is consumed by that report, so try again (a few times).
        let mut refusals = 0;
        while sent < count {
            // SAFETY: headers sent..count point at live buffers in `self`
            // (iovecs of the datagrams' lengths, names of `namelen` bytes).
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECONNREFUSED) if refusals < 4 => refusals += 1,
                _ => break,
            }
        }
        sent
    }

    /// One sendmsg with UDP_SEGMENT: datagrams `range`, all `size` bytes
    /// but the last (which may be shorter but not empty), to the connected
    /// peer. `Ok(false)` when the kernel refuses GSO.
    #[allow(unsafe_code)]
    pub(crate) fn send_gso(
        &mut self,
        fd: RawFd,
        range: std::ops::Range<usize>,
        size: u16,
    ) -> io::Result<bool> {
        let base = self.bufs.as_mut_ptr();
        for (k, i) in range.clone().enumerate() {
            self.iovs[k] = libc::iovec {
                // SAFETY: i < BATCH, so the slot lies inside the allocation.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: self.lens[i],
            };
        }
        // Room for one cmsg carrying a u16, 8-byte aligned.
        let mut control = [0u64; 4];
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = self.iovs.as_mut_ptr();
        msg.msg_iovlen = range.len();
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        // SAFETY: msg_control points at `control`, which is at least
        // CMSG_SPACE(2) bytes and aligned for cmsghdr, so the first header
        // and its data fit inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
        }
        let mut refusals = 0;
        loop {
            // SAFETY: msg points at live iovecs and control data in this frame.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECONNREFUSED) if refusals < 4 => refusals += 1,
                // A full buffer drops the run, as UDP may; GSO itself works.
                Some(libc::EAGAIN | libc::ENOBUFS | libc::ECONNREFUSED) => return Ok(true),
                Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP) => {
                    return Ok(false)
                }
                _ => return Err(e),
            }
        }
    }
}

/// The local address of a received datagram, from its IP_PKTINFO or
/// IPV6_PKTINFO control message (none when the socket does not ask for
/// them). A broadcast or multicast destination is no address to answer
/// from: `ipi_spec_dst` (IPv4) is the local address then, and IPv6
/// multicast gives none.
#[allow(unsafe_code)]
fn local_address(msg: &libc::msghdr) -> Option<IpAddr> {
    if msg.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the kernel filled msg_control (msg_controllen bytes, inside
    // our Control buffer) with well-formed control messages; CMSG_FIRSTHDR
    // and CMSG_NXTHDR stay within it, and each data read is checked
    // against the message's length first.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let (level, kind, len) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len);
            let data = libc::CMSG_DATA(cmsg);
            if level == libc::IPPROTO_IP
                && kind == libc::IP_PKTINFO
                && len >= libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize
            {
                let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                return (!ip.is_unspecified()).then_some(IpAddr::V4(ip));
            }
            if level == libc::IPPROTO_IPV6
                && kind == libc::IPV6_PKTINFO
                && len >= libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize
            {
                let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                let multicast = ip.is_multicast()
                    || ip
                        .to_ipv4_mapped()
                        .is_some_and(|v4| v4.is_multicast() || v4.is_broadcast());
                return (!multicast && !ip.is_unspecified()).then_some(IpAddr::V6(ip));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// Writes a control message choosing `ip` as the source address into
/// `msg`'s control buffer (which must hold a [`Control`]); returns the
/// control length to send. IPv4 addresses go as IP_PKTINFO (IPv4 sockets),
/// IPv6 ones, IPv4-mapped included, as IPV6_PKTINFO (IPv6 sockets).
#[allow(unsafe_code)]
fn write_pktinfo(msg: &mut libc::msghdr, ip: IpAddr) -> usize {
    // SAFETY: msg_control points at a Control (64 bytes, aligned for
    // cmsghdr) and msg_controllen says so; one cmsghdr with an in_pktinfo
    // or in6_pktinfo (CMSG_SPACE of at most 40 bytes) fits inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        match ip {
            IpAddr::V4(v4) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
            }
            IpAddr::V6(v6) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
            }
        }
    }
}

/// The socket address the kernel stored, if it is an IP address.
#[allow(unsafe_code)]
fn decode(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, the
            // kernel wrote at least its size, and storage is aligned for it.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `addr` as a sockaddr_storage and its length.
#[allow(unsafe_code)]
fn encode(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let at = (&mut storage as *mut libc::sockaddr_storage).cast::<u8>();
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for any
            // socket address, sockaddr_in included.
            unsafe { std::ptr::write(at.cast::<libc::sockaddr_in>(), sin) };
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(at.cast::<libc::sockaddr_in6>(), sin6) };
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_a_round_trip_through_storage() {
        for text in ["127.0.0.3:53", "[::1]:8080", "[::ffff:127.0.0.2]:40000"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (storage, len) = encode(addr);
            assert_eq!(decode(&storage, len), Some(addr), "{text}");
        }
    }

    #[test]
    fn a_short_length_is_not_read_as_a_longer_address() {
        let (storage, _) = encode("[::ffff:127.0.0.2]:40000".parse().unwrap());
        assert_eq!(decode(&storage, 16), None);
    }
}
