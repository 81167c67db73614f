//! A host port for a mapping that names none, as podman picks one for
//! `-p 80`: [`free_host_port`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use slirp_opts::{PortError, PortMapping, Protocol};

/// Why no host port could be picked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostPortError {
    /// A range of container ports needs its host ports named.
    #[error("a container port range needs host ports too, e.g. 8080-8081:80-81")]
    Range,
    /// The mapping's address or protocols are invalid.
    #[error(transparent)]
    Mapping(#[from] PortError),
    /// A socket to find a port with could not be bound.
    #[error("cannot bind {addr} to find a free port: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (in the message; not also its source).
        error: io::Error,
    },
    /// Every port tried was taken for one of the protocols.
    #[error("found no host port free for {protocol}")]
    NoneFree {
        /// The mapping's protocols.
        protocol: String,
    },
}

/// A host port free now, on the mapping's host address, for every protocol
/// of `m` (a port the kernel picks for the first, checked for the others).
///
/// # Errors
///
/// `m` is a range ([`HostPortError::Range`]) or invalid, no socket can be
/// bound there, or no port was free for all its protocols in 32 tries.
pub fn free_host_port(m: &PortMapping) -> Result<u16, HostPortError> {
    if m.range > 1 {
        return Err(HostPortError::Range);
    }
    let ip = m.host_addr()?.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let protos = m.protocols()?;
    let bind = |proto: Protocol, port: u16| {
        let addr = SocketAddr::new(ip, port);
        let bound = match proto {
            Protocol::Tcp => TcpListener::bind(addr).and_then(|s| s.local_addr()),
            Protocol::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
        };
        bound
            .map(|a| a.port())
            .map_err(|error| HostPortError::Bind { addr, error })
    };
    for _ in 0..32 {
        let first = bind(protos[0], 0)?;
        if protos.iter().all(|&p| bind(p, first).is_ok()) {
            return Ok(first);
        }
    }
    Err(HostPortError::NoneFree {
        protocol: m.protocol.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_free_for_every_protocol() {
        let mut m = slirp_opts::parse_port_spec("127.0.0.1::80/tcp,udp").unwrap();
        assert_eq!(m.host_port, 0);
        m.host_port = free_host_port(&m).unwrap();
        assert_ne!(m.host_port, 0);
        assert_eq!(m.expand().unwrap().len(), 2);
        let range = slirp_opts::parse_port_spec("80-81").unwrap();
        assert!(matches!(free_host_port(&range), Err(HostPortError::Range)));
    }
}
