//! Address math for the slirp4netns subnet.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// slirp4netns's default IPv4 network, 10.0.2.0/24.
pub const DEFAULT_SUBNET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 0, 2, 0), 24) {
    Ok(net) => net,
    Err(_) => panic!("10.0.2.0/24 is a valid network"),
};

/// Offset of the gateway (the host side) from the network address.
pub const GATEWAY_OFFSET: u32 = 2;
/// Offset of the DNS forwarder.
pub const DNS_OFFSET: u32 = 3;
/// Offset of the first DHCP lease.
pub const DHCP_START_OFFSET: u32 = 15;
/// Offset of the last DHCP lease.
pub const DHCP_END_OFFSET: u32 = 30;
/// Offset of the guest address `-c` configures on the tap device.
pub const GUEST_OFFSET: u32 = 100;

/// The fixed IPv6 network slirp4netns uses with `--enable-ipv6`.
pub const IPV6_SUBNET: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 64)
{
    Ok(net) => net,
    Err(_) => panic!("fd00::/64 is a valid network"),
};
/// The IPv6 gateway, fd00::2.
pub const IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The IPv6 DNS forwarder, fd00::3.
pub const IPV6_DNS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
/// The IPv6 guest address, fd00::100.
pub const IPV6_GUEST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

/// An address that cannot be derived from the subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// network + offset does not fit in 32 bits.
    #[error("address at offset +{offset} of {subnet} overflows IPv4")]
    Overflow {
        /// The subnet.
        subnet: Subnet,
        /// The offset asked for.
        offset: u32,
    },
    /// network + offset is not a host address of the subnet.
    #[error(
        "address at offset +{offset} of {subnet} ({addr}) is outside the subnet; use a larger cidr"
    )]
    OutsideSubnet {
        /// The subnet.
        subnet: Subnet,
        /// The offset asked for.
        offset: u32,
        /// The address that came out.
        addr: Ipv4Addr,
    },
}

/// The slirp4netns IPv4 subnet and the addresses derived from it.
///
/// ```
/// use slirp_opts::Subnet;
///
/// let s = Subnet::default();
/// assert_eq!(s.guest().unwrap().to_string(), "10.0.2.100");
/// assert_eq!(s.gateway().unwrap().to_string(), "10.0.2.2");
/// assert_eq!(s.dns().unwrap().to_string(), "10.0.2.3");
///
/// let small = Subnet::new("10.9.0.0/28".parse().unwrap());
/// assert!(small.guest().is_err()); // a /28 has no +100
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(Ipv4Net);

impl Default for Subnet {
    fn default() -> Self {
        Subnet(DEFAULT_SUBNET)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Subnet {
    /// The subnet of `net`; host bits are cleared.
    pub fn new(net: Ipv4Net) -> Self {
        Subnet(net.trunc())
    }

    /// The subnet for an optional `cidr` option (default 10.0.2.0/24).
    pub fn from_cidr(cidr: Option<Ipv4Net>) -> Self {
        cidr.map(Subnet::new).unwrap_or_default()
    }

    /// The network, host bits clear.
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// network + `offset`, which must be a host address of the subnet (not the
    /// network or broadcast address).
    ///
    /// # Errors
    ///
    /// [`AddrError::Overflow`] past 255.255.255.255, and
    /// [`AddrError::OutsideSubnet`] for offset 0, the broadcast address, or
    /// an address beyond the subnet.
    pub fn nth(&self, offset: u32) -> Result<Ipv4Addr, AddrError> {
        let base = u32::from(self.0.network());
        let addr = base.checked_add(offset).ok_or(AddrError::Overflow {
            subnet: *self,
            offset,
        })?;
        let addr = Ipv4Addr::from(addr);
        let is_host = self.0.contains(&addr)
            && (self.0.prefix_len() >= 31
                || (addr != self.0.network() && addr != self.0.broadcast()));
        if offset == 0 || !is_host {
            return Err(AddrError::OutsideSubnet {
                subnet: *self,
                offset,
                addr,
            });
        }
        Ok(addr)
    }

    /// The guest address (+100) that `-c` configures.
    ///
    /// # Errors
    ///
    /// When the subnet cannot hold it (see [`Subnet::nth`]).
    pub fn guest(&self) -> Result<Ipv4Addr, AddrError> {
        self.nth(GUEST_OFFSET)
    }

    /// The gateway (+2), which is also the host as seen from the namespace.
    ///
    /// # Errors
    ///
    /// When the subnet cannot hold it (see [`Subnet::nth`]).
    pub fn gateway(&self) -> Result<Ipv4Addr, AddrError> {
        self.nth(GATEWAY_OFFSET)
    }

    /// The DNS forwarder (+3).
    ///
    /// # Errors
    ///
    /// When the subnet cannot hold it (see [`Subnet::nth`]).
    pub fn dns(&self) -> Result<Ipv4Addr, AddrError> {
        self.nth(DNS_OFFSET)
    }

    /// The DHCP lease range (+15 ..= +30).
    ///
    /// # Errors
    ///
    /// When the subnet cannot hold it (see [`Subnet::nth`]).
    pub fn dhcp_range(&self) -> Result<(Ipv4Addr, Ipv4Addr), AddrError> {
        Ok((self.nth(DHCP_START_OFFSET)?, self.nth(DHCP_END_OFFSET)?))
    }
}
