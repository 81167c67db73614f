//! What an interface inside a network namespace looks like: addresses, MAC
//! and counters, as podman shows them in inspect and stats.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::sys::socket::{AddressFamily, SockaddrLike};
use serde::Serialize;

use crate::ns::{Netns, NetnsError};

/// Traffic counters, as in `/proc/net/dev`.
///
/// More counters may be added, so it cannot be built with a struct literal
/// outside this crate (start from [`Counters::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
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

/// One interface as seen from inside its namespace, made by
/// [`interface_info`]. More facts may be added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum IfaceError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// getifaddrs failed.
    #[error("failed to list the addresses in network namespace {path}: {error}")]
    Addresses {
        /// The namespace path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// `/proc/thread-self/net/dev` could not be read.
    #[error("failed to read interface counters in network namespace {path}: {error}")]
    Counters {
        /// The namespace path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// No such interface.
    #[error("network namespace {path} has no interface {name:?}")]
    NoSuchInterface {
        /// The namespace path.
        path: PathBuf,
        /// The interface name.
        name: String,
    },
}

/// Reads interface `name` inside `ns`, on a thread that joins it (see
/// [`Netns::run`]).
///
/// # Errors
///
/// [`IfaceError::Netns`] when the namespace cannot be entered (such as
/// without CAP_SYS_ADMIN), [`IfaceError::NoSuchInterface`],
/// [`IfaceError::Addresses`] and [`IfaceError::Counters`] when the kernel's
/// answers cannot be read.
pub fn interface_info(ns: &Netns, name: &str) -> Result<InterfaceInfo, IfaceError> {
    let path = ns.path().to_owned();
    ns.run(|| read_here(name, &path))?
}

/// Runs on a thread that has joined the namespace: getifaddrs asks netlink,
/// whose socket belongs to this thread's namespace, and the counters come
/// from this thread's own `/proc/self/task/TID/net/dev`.
fn read_here(name: &str, path: &Path) -> Result<InterfaceInfo, IfaceError> {
    let mut found = false;
    let mut up = false;
    let mut mac = None;
    let mut addresses = Vec::new();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|errno| IfaceError::Addresses {
        path: path.to_owned(),
        error: errno.into(),
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
    let counters_err = |error| IfaceError::Counters {
        path: path.to_owned(),
        error,
    };
    // thread-self: this thread's namespace, not the process's.
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").map_err(counters_err)?;
    let counters = counters_in(&dev, name)
        .map_err(|line| {
            counters_err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected line in /proc/thread-self/net/dev: {line:?}"),
            ))
        })?
        .unwrap_or_default();
    Ok(InterfaceInfo {
        name: name.to_owned(),
        mac,
        up,
        addresses,
        counters,
    })
}

/// The counters of `name` in the text of `/proc/net/dev`: `None` when it has
/// no line, `Err(line)` for a line of `name` that is not 16 numbers.
fn counters_in<'a>(dev: &'a str, name: &str) -> Result<Option<Counters>, &'a str> {
    // Two header lines, then `NAME: rx(8 fields) tx(8 fields)`. Interface
    // names cannot contain ':' or whitespace.
    for line in dev.lines().skip(2) {
        let Some((iface, numbers)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() != name {
            continue;
        }
        let fields: Vec<u64> = numbers
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| line)?;
        let &[rx_bytes, rx_packets, rx_errors, rx_dropped, _, _, _, _, tx_bytes, tx_packets, tx_errors, tx_dropped, _, _, _, _] =
            fields.as_slice()
        else {
            return Err(line);
        };
        return Ok(Some(Counters {
            rx_bytes,
            rx_packets,
            rx_errors,
            rx_dropped,
            tx_bytes,
            tx_packets,
            tx_errors,
            tx_dropped,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1200      12    0    0    0     0          0         0     1200      12    0    0    0     0       0          0
  tap0: 5000 40 1 2 0 0 0 3 7000 50 4 5 0 0 0 0
eth0:1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16
";

    #[test]
    fn counters_from_proc_net_dev() {
        assert_eq!(
            counters_in(DEV, "tap0"),
            Ok(Some(Counters {
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 4,
                tx_dropped: 5,
            }))
        );
        let lo = counters_in(DEV, "lo").unwrap().unwrap();
        assert_eq!((lo.rx_bytes, lo.tx_packets), (1200, 12));
        // No space after the colon, as older kernels wrote it.
        let eth0 = counters_in(DEV, "eth0").unwrap().unwrap();
        assert_eq!((eth0.rx_bytes, eth0.tx_bytes, eth0.tx_dropped), (1, 9, 12));
        // A name is matched whole, and the header is not an interface.
        assert_eq!(counters_in(DEV, "tap"), Ok(None));
        assert_eq!(counters_in(DEV, "face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed"), Ok(None));
        assert_eq!(counters_in("", "lo"), Ok(None));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        let dev = "h1\nh2\n  lo: 1 2 3\n";
        assert_eq!(counters_in(dev, "lo"), Err("  lo: 1 2 3"));
        let dev = "h1\nh2\n  lo: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        assert!(counters_in(dev, "lo").is_err());
        // Other interfaces' lines are not looked at.
        assert_eq!(counters_in(dev, "tap0"), Ok(None));
    }
}
