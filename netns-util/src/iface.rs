//! What an interface inside a network namespace looks like: addresses, MAC
//! and counters, as podman shows them in inspect and stats.

use std::net::IpAddr;

use nix::sys::socket::{AddressFamily, SockaddrLike};
use serde::Serialize;

use crate::ns::{Netns, NetnsError};

/// Traffic counters, as in `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

/// One interface as seen from inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceInfo {
    /// The interface name.
    pub name: String,
    /// The MAC address, `aa:bb:cc:dd:ee:ff`, if it has one.
    pub mac: Option<String>,
    /// Whether the interface is up.
    pub up: bool,
    /// Addresses with their prefix lengths (`10.0.2.100/24`, `fd00::...`).
    pub addresses: Vec<(IpAddr, u8)>,
    /// The counters.
    pub counters: Counters,
}

/// A failure to read an interface.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// getifaddrs failed.
    #[error("failed to list the addresses in network namespace {path}: {source}")]
    Addresses {
        /// The namespace path.
        path: std::path::PathBuf,
        /// The error.
        source: nix::Error,
    },
    /// /proc/net/dev could not be read.
    #[error("failed to read interface counters in network namespace {path}: {source}")]
    Counters {
        /// The namespace path.
        path: std::path::PathBuf,
        /// The error.
        source: procfs::ProcError,
    },
    /// No such interface.
    #[error("network namespace {path} has no interface {name:?}")]
    NoSuchInterface {
        /// The namespace path.
        path: std::path::PathBuf,
        /// The interface name.
        name: String,
    },
}

/// Reads interface `name` inside `ns`.
pub fn interface_info(ns: &Netns, name: &str) -> Result<InterfaceInfo, IfaceError> {
    let path = ns.path().to_owned();
    ns.run(|| read_here(name, &path))?
}

/// Runs on a thread that has joined the namespace: getifaddrs asks netlink,
/// whose socket belongs to this thread's namespace, and the counters come
/// from this thread's own `/proc/self/task/TID/net/dev`.
fn read_here(name: &str, path: &std::path::Path) -> Result<InterfaceInfo, IfaceError> {
    let mut found = false;
    let mut up = false;
    let mut mac = None;
    let mut addresses = Vec::new();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| IfaceError::Addresses {
        path: path.to_owned(),
        source,
    })?;
    for ifa in addrs.filter(|a| a.interface_name == name) {
        found = true;
        up |= ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let Some(addr) = ifa.address else { continue };
        match addr.family() {
            Some(AddressFamily::Packet) => {
                if let Some(ll) = addr.as_link_addr().and_then(|l| l.addr()) {
                    mac = Some(
                        ll.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    );
                }
            }
            Some(AddressFamily::Inet) => {
                if let Some(sin) = addr.as_sockaddr_in() {
                    let prefix = ifa
                        .netmask
                        .and_then(|m| m.as_sockaddr_in().map(|m| u32::from(m.ip()).count_ones()))
                        .unwrap_or(32);
                    addresses.push((IpAddr::V4(sin.ip()), prefix as u8));
                }
            }
            Some(AddressFamily::Inet6) => {
                if let Some(sin6) = addr.as_sockaddr_in6() {
                    let prefix = ifa
                        .netmask
                        .and_then(|m| m.as_sockaddr_in6().map(|m| u128::from(m.ip()).count_ones()))
                        .unwrap_or(128);
                    addresses.push((IpAddr::V6(sin6.ip()), prefix as u8));
                }
            }
            _ => {}
        }
    }
    if !found {
        return Err(IfaceError::NoSuchInterface {
            path: path.to_owned(),
            name: name.to_owned(),
        });
    }
    let tid = nix::unistd::gettid();
    let counters_err = |source| IfaceError::Counters {
        path: path.to_owned(),
        source,
    };
    let task = procfs::process::Process::new_with_root(format!("/proc/self/task/{tid}").into())
        .map_err(counters_err)?;
    let dev = task.dev_status().map_err(counters_err)?;
    let counters = dev
        .get(name)
        .map(|d| Counters {
            rx_bytes: d.recv_bytes,
            rx_packets: d.recv_packets,
            rx_errors: d.recv_errs,
            rx_dropped: d.recv_drop,
            tx_bytes: d.sent_bytes,
            tx_packets: d.sent_packets,
            tx_errors: d.sent_errs,
            tx_dropped: d.sent_drop,
        })
        .unwrap_or_default();
    Ok(InterfaceInfo {
        name: name.to_owned(),
        mac,
        up,
        addresses,
        counters,
    })
}
