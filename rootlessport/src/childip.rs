//! Choosing the child IP from a container's network status, in a stable order.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

/// One address of an interface, as in podman's network status
/// (`{"ipnet":"10.88.0.5/16","gateway":"10.88.0.1"}`).
#[derive(Debug, Clone, Deserialize)]
pub struct NetAddress {
    /// The address with its prefix.
    #[serde(rename = "ipnet")]
    pub ipnet: String,
}

/// One interface of a network status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetInterface {
    /// Its addresses, in podman's order.
    #[serde(rename = "subnets", default)]
    pub subnets: Vec<NetAddress>,
}

/// A container's status on one network.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusBlock {
    /// Interfaces by name.
    #[serde(rename = "interfaces", default)]
    pub interfaces: BTreeMap<String, NetInterface>,
}

/// The address rootlessport should forward to: the first IPv4 address, else
/// the first IPv6 one, walking networks and interfaces by name (podman walks
/// a Go map, so its pick can change from run to run; this one cannot).
///
/// ```
/// use std::collections::BTreeMap;
/// use rootlessport::{child_ip_from_status, StatusBlock};
///
/// let status: BTreeMap<String, StatusBlock> = serde_json::from_str(r#"{
///   "net-b": {"interfaces": {"eth0": {"subnets": [{"ipnet": "10.89.0.7/24"}]}}},
///   "net-a": {"interfaces": {"eth0": {"subnets": [{"ipnet": "fd00:1::5/64"}, {"ipnet": "10.88.0.5/16"}]}}}
/// }"#).unwrap();
/// assert_eq!(child_ip_from_status(&status).unwrap().to_string(), "10.88.0.5");
/// ```
pub fn child_ip_from_status(networks: &BTreeMap<String, StatusBlock>) -> Option<IpAddr> {
    let addrs = || {
        networks
            .values()
            .flat_map(|n| n.interfaces.values())
            .flat_map(|i| i.subnets.iter())
            .filter_map(|s| {
                let ip = s.ipnet.split('/').next()?;
                ip.parse::<IpAddr>().ok()
            })
            .filter(|ip| !ip.is_loopback())
    };
    addrs()
        .find(IpAddr::is_ipv4)
        .or_else(|| addrs().find(IpAddr::is_ipv6))
}
