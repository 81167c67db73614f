//! Host-side listeners: dual-stack for all addresses, the privileged-port hint.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{setsockopt, sockopt};
use slirp_opts::{Forward, Protocol};
use socket2::{Domain, Socket, Type};

/// A host port that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A port below ip_unprivileged_port_start, without the privilege.
    #[error("cannot expose privileged port {port}, you can add 'net.ipv4.ip_unprivileged_port_start={port}' to /etc/sysctl.conf (currently {start}), or choose a larger port number (>= {start}): {}", describe(.error))]
    Privileged {
        /// The port.
        port: u16,
        /// The current ip_unprivileged_port_start.
        start: String,
        /// The bind error.
        error: io::Error,
    },
    /// Any other failure, with what was being listened on.
    #[error("failed to listen on {proto} {addr}: {}", describe(.error))]
    Bind {
        /// tcp or udp.
        proto: Protocol,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: io::Error,
    },
}

/// The listening socket for one forward. With no host address (or 0.0.0.0)
/// it is one dual-stack `[::]` socket, so IPv6 clients get in too; where the
/// host has no IPv6 it falls back to 0.0.0.0.
pub fn listen(fwd: &Forward) -> Result<Socket, ListenError> {
    let all = match fwd.host_ip {
        None => true,
        Some(IpAddr::V4(v4)) => v4.is_unspecified(),
        Some(IpAddr::V6(_)) => false,
    };
    if all {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), fwd.host_port);
        match bind(fwd.proto, v6, true) {
            Ok(s) => return Ok(s),
            // No IPv6 on this host: IPv4 only.
            Err(ListenError::Bind { error, .. }) if no_ipv6(&error) => {}
            Err(e) => return Err(e),
        }
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), fwd.host_port);
        return bind(fwd.proto, v4, false);
    }
    let ip = fwd.host_ip.expect("not all addresses");
    bind(fwd.proto, SocketAddr::new(ip, fwd.host_port), false)
}

fn bind(proto: Protocol, addr: SocketAddr, dual_stack: bool) -> Result<Socket, ListenError> {
    let fail = |source: io::Error| classify(proto, addr, source);
    let ty = match proto {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let socket =
        Socket::new(Domain::for_address(addr), ty.nonblocking().cloexec(), None).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack).map_err(fail)?;
    }
    if proto == Protocol::Udp && addr.ip().is_unspecified() {
        // Replies must leave from the address each client sent to, which a
        // wildcard socket learns only from IP_PKTINFO / IPV6_PKTINFO.
        let set = if addr.is_ipv6() {
            setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)
        } else {
            setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)
        };
        set.map_err(|e| fail(e.into()))?;
    }
    if proto == Protocol::Tcp {
        // As any server: a restarted forwarder must not wait out TIME_WAIT.
        socket.set_reuse_address(true).map_err(fail)?;
        // Accepted sockets inherit it: no setsockopt per connection.
        socket.set_tcp_nodelay(true).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    if proto == Protocol::Tcp {
        socket.listen(4096).map_err(fail)?;
    }
    Ok(socket)
}

/// A system error's own text ("Address already in use"), without the
/// " (os error 98)" that `io::Error` adds.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

fn no_ipv6(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(e.raw_os_error(), Some(c) if c == Errno::EAFNOSUPPORT as i32 || c == Errno::EADDRNOTAVAIL as i32)
}

/// The sysctl a refused low port quotes.
const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// The sysctl, opened once: a sandboxed forwarder can no longer open it
/// (and a Landlock rule on a /proc/sys file stops matching once the kernel
/// drops the file's inode), but it may read an fd it holds.
static PORT_START_FILE: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();

/// Opens the sysctl for [`unprivileged_port_start`] now (before the
/// sandbox; the forwarder's start does it).
pub(crate) fn open_unprivileged_port_start() {
    PORT_START_FILE.get_or_init(|| std::fs::File::open(UNPRIVILEGED_PORT_START).ok());
}

/// `ip_unprivileged_port_start` as it is now, through the fd opened at
/// start when there is one.
fn unprivileged_port_start() -> Option<String> {
    use std::os::unix::fs::FileExt;
    let read = |file: &std::fs::File| {
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    };
    match PORT_START_FILE.get() {
        Some(Some(file)) => read(file),
        _ => read(&std::fs::File::open(UNPRIVILEGED_PORT_START).ok()?),
    }
}

fn classify(proto: Protocol, addr: SocketAddr, error: io::Error) -> ListenError {
    let denied = matches!(error.kind(), io::ErrorKind::PermissionDenied)
        || error.raw_os_error() == Some(nix::errno::Errno::EPERM as i32);
    if denied {
        let start = unprivileged_port_start().unwrap_or_else(|| "1024".into());
        if start.parse::<u16>().is_ok_and(|s| addr.port() < s) {
            return ListenError::Privileged {
                port: addr.port(),
                start,
                error,
            };
        }
    }
    ListenError::Bind { proto, addr, error }
}
