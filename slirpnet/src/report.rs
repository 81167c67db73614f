//! What a setup reports: [`SetupInfo`] and its [`ForwardInfo`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Serialize;
use slirp_opts::{Forward, PortHandler, PortKey};

use crate::portfwd::ForwarderInfo;

/// One forward made: the forward, and what its handler says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ForwardInfo {
    /// The forward (as JSON: its fields, beside this one's own).
    #[serde(flatten)]
    pub forward: Forward,
    /// The slirp4netns forward id, with port_handler=slirp4netns.
    pub id: Option<u32>,
    /// Made by automatic publishing (`--publish-auto`), not asked for.
    pub auto: bool,
}

impl ForwardInfo {
    /// `forward`, with the id slirp4netns gave it, if any.
    pub fn new(forward: Forward, id: Option<u32>) -> Self {
        ForwardInfo {
            forward,
            id,
            auto: false,
        }
    }

    /// What [`Network::remove_ports`](crate::Network::remove_ports) matches.
    pub fn key(&self) -> PortKey {
        self.forward.key()
    }
}

/// What the setup made (or, from [`plan`](crate::plan), will make).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SetupInfo {
    /// slirp4netns's pid (0 in a plan).
    pub pid: u32,
    /// The IPv4 subnet.
    pub subnet: String,
    /// The guest address of the tap device.
    pub guest: Ipv4Addr,
    /// The gateway (the host, seen from the namespace).
    pub gateway: Ipv4Addr,
    /// The DNS forwarder.
    pub dns: Ipv4Addr,
    /// Whether IPv6 is on.
    pub ipv6: bool,
    /// The IPv6 guest address, when IPv6 is on.
    pub guest_v6: Option<Ipv6Addr>,
    /// The IPv6 gateway.
    pub gateway_v6: Option<Ipv6Addr>,
    /// The IPv6 DNS forwarder.
    pub dns_v6: Option<Ipv6Addr>,
    /// The tap device's MTU.
    pub mtu: u32,
    /// The tap device's name.
    pub tap: String,
    /// Who forwards ports: a port forwarder (`rootlesskit`) or slirp4netns.
    pub port_handler: PortHandler,
    /// With port_handler=rootlesskit and ports: the forwarder, a binary (and
    /// its pid once started) or in-process.
    pub forwarder: Option<ForwarderInfo>,
    /// Whether the service sees clients' own addresses: always so through
    /// slirp4netns; through a port forwarder (loopback clients excepted)
    /// what it granted where it says (in-process: what the namespace
    /// allowed), else what it was asked (a binary warns itself when the
    /// namespace refuses).
    pub keep_source_ip: bool,
    /// The API socket, if any.
    pub api_socket: Option<PathBuf>,
    /// The forwards.
    pub forwards: Vec<ForwardInfo>,
    /// With automatic publishing (`--publish-auto`): the host address the
    /// namespace's listening ports are forwarded on.
    pub publish_auto: Option<IpAddr>,
    /// What will not work as the options stand, and how to fix it.
    pub warnings: Vec<String>,
}
