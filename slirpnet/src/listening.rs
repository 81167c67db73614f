//! What a network namespace listens on: TCP sockets in LISTEN and unconnected
//! bound UDP sockets, of both families, from sock_diag dumps over a netlink
//! socket made inside the namespace, and the namespace's ephemeral port
//! range.
//!
//! The socket and the `ip_local_port_range` file are made inside once
//! (netns-util's `Netns::open_inside`: a thread that joins the namespace,
//! or for a rootless caller a forked child that joins its user namespace
//! first); both keep the namespace, so every scan after that runs on the
//! caller's thread. A scan is four dump requests (TCP and UDP, IPv4 and
//! IPv6), each filtered by the kernel to the states asked for, so its cost
//! follows the number of listening sockets, not of connections.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{
    SockDiagMessage, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_CLOSE, TCP_LISTEN,
};
use netns_util::{Inside, Netns};
use nix::sys::socket::{recv, send, MsgFlags};
use slirp_opts::{Protocol, Target};

/// Room for one datagram of a dump (the kernel sends at most 32 KiB).
const RECEIVE_BUFFER: usize = 64 << 10;

/// One socket a peer could be forwarded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    /// tcp (LISTEN) or udp (bound, unconnected).
    pub proto: Protocol,
    /// The local address (an IPv4-mapped IPv6 address is given as IPv4).
    pub addr: IpAddr,
    /// The local port.
    pub port: u16,
    /// An IPv6 socket that takes no IPv4 (IPV6_V6ONLY, or a specific IPv6
    /// address).
    pub v6_only: bool,
}

/// Scans one namespace's listening sockets.
pub(crate) struct Scanner {
    diag: OwnedFd,
    port_range: OwnedFd,
    /// The four dump requests, serialised once; the sequence number is
    /// written into each before it is sent.
    requests: Vec<Vec<u8>>,
    sequence: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").finish_non_exhaustive()
    }
}

impl Scanner {
    /// Makes the sock_diag socket and opens `ip_local_port_range` inside
    /// `target`'s network namespace (joining its user namespace first when
    /// given and this process lacks CAP_SYS_ADMIN).
    pub(crate) fn open(target: &Target) -> Result<Self, netns_util::NetnsError> {
        let netns = Netns::open(target.netns_path())?;
        let made = netns.open_inside(
            target.userns_path(),
            &[
                Inside::Socket {
                    domain: nix::libc::AF_NETLINK,
                    ty: nix::libc::SOCK_RAW,
                    protocol: nix::libc::NETLINK_SOCK_DIAG,
                },
                Inside::ReadOnly(c"/proc/sys/net/ipv4/ip_local_port_range"),
            ],
        )?;
        // open_inside returns one descriptor per item, in order.
        let mut made = made.into_iter();
        let (Some(diag), Some(port_range)) = (made.next(), made.next()) else {
            return Err(netns_util::NetnsError::Inside {
                path: netns.path().to_owned(),
                what: "the sock_diag socket".into(),
                error: io::Error::other("fewer descriptors than asked for"),
            });
        };
        let requests = [
            (AF_INET, IPPROTO_TCP),
            (AF_INET6, IPPROTO_TCP),
            (AF_INET, IPPROTO_UDP),
            (AF_INET6, IPPROTO_UDP),
        ]
        .into_iter()
        .map(|(family, protocol)| request(family, protocol))
        .collect();
        Ok(Scanner {
            diag,
            port_range,
            requests,
            sequence: 0,
            buf: vec![0; RECEIVE_BUFFER],
        })
    }

    /// Every listening TCP socket and bound unconnected UDP socket now,
    /// into `out` (cleared first).
    pub(crate) fn scan(&mut self, out: &mut Vec<Listener>) -> io::Result<()> {
        out.clear();
        for i in 0..self.requests.len() {
            self.sequence = self.sequence.wrapping_add(1);
            let sequence = self.sequence;
            let req = &mut self.requests[i];
            // nlmsghdr: length (4), type (2), flags (2), sequence (4).
            req[8..12].copy_from_slice(&sequence.to_ne_bytes());
            send(
                std::os::fd::AsRawFd::as_raw_fd(&self.diag),
                req,
                MsgFlags::empty(),
            )?;
            self.receive_dump(sequence, out)?;
        }
        Ok(())
    }

    fn receive_dump(&mut self, sequence: u32, out: &mut Vec<Listener>) -> io::Result<()> {
        loop {
            let n = loop {
                match recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.diag),
                    &mut self.buf,
                    MsgFlags::empty(),
                ) {
                    Ok(n) => break n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let data = &self.buf[..n.min(self.buf.len())];
            let mut at = 0;
            while at < data.len() {
                let Ok(frame) = NetlinkBuffer::new_checked(&data[at..]) else {
                    break;
                };
                let len = frame.length() as usize;
                if len == 0 || at + len > data.len() {
                    break;
                }
                let chunk = &data[at..at + len];
                at += (len + 3) & !3;
                let Ok(m) = NetlinkMessage::<SockDiagMessage>::deserialize(chunk) else {
                    continue;
                };
                if m.header.sequence_number != sequence {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        if let Some(l) = listener(&r) {
                            out.push(l);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The namespace's ephemeral port range (`ip_local_port_range`), read
    /// anew each time (it may be changed while the namespace runs).
    pub(crate) fn ephemeral_range(&self) -> io::Result<(u16, u16)> {
        let mut buf = [0u8; 64];
        let n = nix::sys::uio::pread(&self.port_range, &mut buf, 0)?;
        parse_range(&buf[..n]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "ip_local_port_range reads {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
            )
        })
    }
}

/// `"32768\t60999\n"` as (32768, 60999).
fn parse_range(text: &[u8]) -> Option<(u16, u16)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) => Some((lo, hi)),
        _ => None,
    }
}

/// A dump request for `family` x `protocol`: TCP sockets in LISTEN, UDP
/// sockets that are bound and not connected (which the kernel reports in
/// state CLOSE; connected ones are ESTABLISHED).
fn request(family: u8, protocol: u8) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let states = if protocol == IPPROTO_TCP {
        StateFlags::LISTEN
    } else {
        StateFlags::CLOSE
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn listener(r: &netlink_packet_sock_diag::inet::InetResponse) -> Option<Listener> {
    let proto = match r.header.state {
        TCP_LISTEN => Protocol::Tcp,
        // A UDP socket that is not connected.
        TCP_CLOSE => Protocol::Udp,
        _ => return None,
    };
    let port = r.header.socket_id.source_port;
    if port == 0 {
        return None;
    }
    let v6only_flag = r.nlas.iter().any(|n| matches!(n, Nla::SkV6Only(true)));
    let (addr, v6_only) = match r.header.socket_id.source_address {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), false),
            None => (IpAddr::V6(a), v6only_flag || !a.is_unspecified()),
        },
        v4 => (v4, false),
    };
    Some(Listener {
        proto,
        addr,
        port,
        v6_only,
    })
}

/// Where a listener can be reached from a forwarder, which dials the
/// namespace's own IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// On every address, or on the namespace's own IPv4 address.
    Forwardable,
    /// IPv6 only: a forwarder dialling the namespace's IPv4 address
    /// cannot reach it.
    Ipv6Only,
    /// Loopback or another address of the namespace: private to it.
    Private,
}

impl Listener {
    /// Whether a forward to the namespace's address `guest` reaches it.
    pub(crate) fn reach(&self, guest: Ipv4Addr) -> Reach {
        match self.addr {
            IpAddr::V4(a) if a.is_unspecified() || a == guest => Reach::Forwardable,
            IpAddr::V4(_) => Reach::Private,
            IpAddr::V6(a) if a.is_loopback() => Reach::Private,
            IpAddr::V6(a) if a.is_unspecified() && !self.v6_only => Reach::Forwardable,
            IpAddr::V6(a) if is_link_local(a) => Reach::Private,
            IpAddr::V6(_) => Reach::Ipv6Only,
        }
    }
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_range(b"32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range(b"1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_range(b"x"), None);
        assert_eq!(parse_range(b""), None);
    }

    #[test]
    fn what_a_forwarder_reaches() {
        let guest = Ipv4Addr::new(10, 0, 2, 100);
        let l = |addr: &str, v6_only| Listener {
            proto: Protocol::Tcp,
            addr: addr.parse().unwrap(),
            port: 80,
            v6_only,
        };
        assert_eq!(l("0.0.0.0", false).reach(guest), Reach::Forwardable);
        assert_eq!(l("10.0.2.100", false).reach(guest), Reach::Forwardable);
        assert_eq!(l("127.0.0.1", false).reach(guest), Reach::Private);
        assert_eq!(l("10.0.2.5", false).reach(guest), Reach::Private);
        assert_eq!(l("::", false).reach(guest), Reach::Forwardable);
        assert_eq!(l("::", true).reach(guest), Reach::Ipv6Only);
        assert_eq!(l("fd00::100", true).reach(guest), Reach::Ipv6Only);
        assert_eq!(l("::1", true).reach(guest), Reach::Private);
        assert_eq!(l("fe80::1", true).reach(guest), Reach::Private);
    }

    #[test]
    fn requests_are_well_formed() {
        let r = request(AF_INET6, IPPROTO_UDP);
        // nlmsghdr (16) + inet_diag_req_v2 (56)
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        // SOCK_DIAG_BY_FAMILY
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!((r[16], r[17]), (AF_INET6, IPPROTO_UDP));
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 1 << 7);
    }
}
