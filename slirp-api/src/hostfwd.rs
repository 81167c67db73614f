//! The forwards: what `add_hostfwd` takes and what `list_hostfwd` reports.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use slirp_opts::Protocol;

/// A host port forward to add.
///
/// ```
/// use slirp_api::{HostFwd, Protocol};
///
/// let fwd = HostFwd::new(Protocol::Tcp, 8080, 80)
///     .with_host_addr("127.0.0.1".parse().unwrap())
///     .with_guest_addr("10.0.2.100".parse().unwrap());
/// assert_eq!(fwd.host_addr, Some("127.0.0.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostFwd {
    /// tcp or udp.
    pub proto: Protocol,
    /// The host address to listen on; `None` means 0.0.0.0. slirp4netns takes IPv4 only.
    pub host_addr: Option<Ipv4Addr>,
    /// The host port (not 0).
    pub host_port: u16,
    /// The address in the namespace; `None` means slirp4netns's guest address.
    pub guest_addr: Option<Ipv4Addr>,
    /// The port in the namespace (not 0).
    pub guest_port: u16,
}

impl HostFwd {
    /// A forward from all host addresses to the guest address.
    pub fn new(proto: Protocol, host_port: u16, guest_port: u16) -> Self {
        HostFwd {
            proto,
            host_addr: None,
            host_port,
            guest_addr: None,
            guest_port,
        }
    }

    /// Listens on `addr` only.
    pub fn with_host_addr(mut self, addr: Ipv4Addr) -> Self {
        self.host_addr = Some(addr);
        self
    }

    /// Forwards to `addr` in the namespace instead of the guest address.
    pub fn with_guest_addr(mut self, addr: Ipv4Addr) -> Self {
        self.guest_addr = Some(addr);
        self
    }
}

/// One forward as `list_hostfwd` reports it. slirp4netns may report more in
/// the future, so it is built only by this crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostFwdEntry {
    /// The id `add_hostfwd` returned.
    #[serde(rename = "id")]
    pub id: u32,
    /// tcp or udp.
    #[serde(rename = "proto")]
    pub proto: Protocol,
    /// The host address.
    #[serde(rename = "host_addr")]
    pub host_addr: Ipv4Addr,
    /// The host port.
    #[serde(rename = "host_port")]
    pub host_port: u16,
    /// The guest address.
    #[serde(rename = "guest_addr")]
    pub guest_addr: Ipv4Addr,
    /// The guest port.
    #[serde(rename = "guest_port")]
    pub guest_port: u16,
}
