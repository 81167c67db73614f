//! Port mappings as podman sends them, their validation and expansion.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A transport protocol a forwarder here can carry.
///
/// Exhaustive: a match on it needs no wildcard arm, and a new protocol (SCTP,
/// should a forwarder ever carry it) would come in a breaking release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `"tcp"` or `"udp"`, as slirp4netns and podman spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which side of a port mapping a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortSide {
    /// The host's port.
    Host,
    /// The port inside the namespace (the container's).
    Container,
}

impl PortSide {
    /// `"host"` or `"container"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortSide::Host => "host",
            PortSide::Container => "container",
        }
    }
}

impl fmt::Display for PortSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a port mapping cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortProblem {
    /// `container_port` is 0.
    #[error("container port is 0")]
    ContainerPortZero,
    /// `host_port` is 0, i.e. no host port was assigned.
    #[error("host port is 0 (no host port assigned)")]
    HostPortZero,
    /// start + range - 1 is past 65535.
    #[error("{side} ports {start}-{end} run past 65535")]
    RangePastEnd {
        /// The host or the container side.
        side: PortSide,
        /// The first port.
        start: u16,
        /// The last port asked for.
        end: u32,
    },
    /// A protocol that is not tcp, udp or sctp.
    #[error("unknown protocol {0:?} (expected tcp or udp)")]
    UnknownProtocol(String),
    /// A protocol named twice.
    #[error("protocol \"{0}\" is named twice")]
    RepeatedProtocol(Protocol),
    /// SCTP, which no rootless forwarder can carry.
    #[error("sctp is not supported: neither slirp4netns nor rootlessport can forward it")]
    SctpUnsupported,
    /// The host IP is not an address literal.
    #[error("invalid host IP {0:?}")]
    InvalidHostIp(String),
    /// Another mapping already forwards the same protocol and host port.
    #[error("{forward} is also forwarded by {other}")]
    HostPortTaken {
        /// The forward claimed twice.
        forward: Forward,
        /// The earlier mapping that claims it (boxed to keep the error small).
        other: Box<PortMapping>,
    },
}

/// A port mapping that cannot be forwarded, with the mapping it came from.
///
/// Its message includes the problem's text; `problem` is not also its
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port mapping {mapping}: {problem}")]
#[non_exhaustive]
pub struct PortError {
    /// The mapping (its `Display` is podman's `-p` syntax).
    pub mapping: PortMapping,
    /// What is wrong with it.
    pub problem: PortProblem,
}

/// One port mapping, as in podman's JSON (`types.PortMapping`).
///
/// `range` consecutive ports starting at `host_port` map to the same number of
/// ports starting at `container_port`; `protocol` is a comma list.
///
/// ```
/// use slirp_opts::{PortMapping, Protocol};
///
/// let m: PortMapping = serde_json::from_str(
///     r#"{"host_ip":"","container_port":80,"host_port":8080,"range":2,"protocol":"tcp,udp"}"#,
/// ).unwrap();
/// let fwd = m.expand().unwrap();
/// assert_eq!(fwd.len(), 4);
/// assert_eq!((fwd[3].proto, fwd[3].host_port, fwd[3].container_port), (Protocol::Udp, 8081, 81));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to listen on; empty means all.
    #[serde(rename = "host_ip", default)]
    pub host_ip: String,
    /// The first port inside the namespace.
    #[serde(rename = "container_port", default)]
    pub container_port: u16,
    /// The first port on the host; 0 means none assigned yet.
    #[serde(rename = "host_port", default)]
    pub host_port: u16,
    /// How many consecutive ports; 0 exposes nothing.
    #[serde(rename = "range", default)]
    pub range: u16,
    /// Comma list of `tcp`, `udp` (and `sctp`, which is refused); empty means tcp.
    #[serde(rename = "protocol", default)]
    pub protocol: String,
}

/// One forward: one protocol, one host port, one container port. The
/// checked form of a port mapping ([`PortMapping::expand`],
/// [`parse_forwards`](crate::parse_forwards)), handed as it is to whichever
/// port handler serves it; on the wire to a forwarder it is a mapping of
/// one port ([`Forward::to_mapping`]).
///
/// ```
/// use slirp_opts::{parse_forwards, Forward, Protocol};
///
/// let fwd: Vec<Forward> = parse_forwards("127.0.0.1:8080:80/tcp,udp")?;
/// assert_eq!(fwd[1].proto, Protocol::Udp);
/// assert_eq!(fwd[1].key().to_string(), "127.0.0.1:8080/udp");
/// assert_eq!(fwd[1].to_mapping().to_string(), "127.0.0.1:8080:80/udp");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Forward {
    /// The protocol.
    #[serde(rename = "proto")]
    pub proto: Protocol,
    /// The host address; `None` means all addresses.
    #[serde(rename = "host_ip")]
    pub host_ip: Option<IpAddr>,
    /// The host port.
    #[serde(rename = "host_port")]
    pub host_port: u16,
    /// The port inside the namespace.
    #[serde(rename = "container_port")]
    pub container_port: u16,
}

impl Forward {
    /// Its host side: what a removal names.
    pub fn key(&self) -> crate::portctl::PortKey {
        crate::portctl::PortKey::from(self)
    }

    /// The forward as podman's wire type carries it: a mapping of one port
    /// and one protocol (all addresses as an empty `host_ip`).
    pub fn to_mapping(&self) -> PortMapping {
        PortMapping {
            host_ip: self.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            container_port: self.container_port,
            host_port: self.host_port,
            range: 1,
            protocol: self.proto.as_str().to_owned(),
        }
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.host_port)?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.host_port)?,
            None => write!(f, "*:{}", self.host_port)?,
        }
        write!(f, " -> {}/{}", self.container_port, self.proto)
    }
}

impl fmt::Display for PortMapping {
    /// Writes the mapping in podman's `-p` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = |start: u16| {
            let end = u32::from(start) + u32::from(self.range.max(1)) - 1;
            if self.range > 1 {
                format!("{start}-{end}")
            } else {
                start.to_string()
            }
        };
        if self.host_ip.contains(':') {
            write!(f, "[{}]:", self.host_ip)?;
        } else if !self.host_ip.is_empty() {
            write!(f, "{}:", self.host_ip)?;
        }
        if self.host_port != 0 {
            write!(f, "{}:", span(self.host_port))?;
        } else if !self.host_ip.is_empty() {
            f.write_str(":")?;
        }
        write!(f, "{}", span(self.container_port))?;
        let proto = if self.protocol.is_empty() {
            "tcp"
        } else {
            &self.protocol
        };
        write!(f, "/{proto}")
    }
}

impl PortMapping {
    fn error(&self, problem: PortProblem) -> PortError {
        PortError {
            mapping: self.clone(),
            problem,
        }
    }

    /// The protocols, in the order given; empty means tcp.
    ///
    /// # Errors
    ///
    /// [`PortProblem::UnknownProtocol`], [`PortProblem::RepeatedProtocol`]
    /// or [`PortProblem::SctpUnsupported`], in a [`PortError`] naming this
    /// mapping.
    pub fn protocols(&self) -> Result<Vec<Protocol>, PortError> {
        parse_protocols(&self.protocol).map_err(|p| self.error(p))
    }

    /// The host address, `None` for all addresses (empty, `0.0.0.0` or `::`
    /// stay distinct: only empty is `None`).
    ///
    /// # Errors
    ///
    /// [`PortProblem::InvalidHostIp`] when `host_ip` is neither empty nor
    /// an address literal.
    pub fn host_addr(&self) -> Result<Option<IpAddr>, PortError> {
        if self.host_ip.is_empty() {
            return Ok(None);
        }
        self.host_ip
            .parse()
            .map(Some)
            .map_err(|_| self.error(PortProblem::InvalidHostIp(self.host_ip.clone())))
    }

    /// Checks that the mapping can be forwarded as it stands.
    ///
    /// # Errors
    ///
    /// The first problem [`PortMapping::expand`] finds.
    pub fn validate(&self) -> Result<(), PortError> {
        self.expand().map(drop)
    }

    /// One forward per protocol per port, ports in order, protocols in the
    /// order given for each port. A range of 0 yields nothing.
    ///
    /// # Errors
    ///
    /// A [`PortError`] naming this mapping: a bad protocol list or host
    /// address (checked even when the range is 0), a container or host port
    /// of 0, or a range running past 65535.
    pub fn expand(&self) -> Result<Vec<Forward>, PortError> {
        let protos = self.protocols()?;
        let host_ip = self.host_addr()?;
        if self.range == 0 {
            return Ok(Vec::new());
        }
        if self.container_port == 0 {
            return Err(self.error(PortProblem::ContainerPortZero));
        }
        if self.host_port == 0 {
            return Err(self.error(PortProblem::HostPortZero));
        }
        for (side, start) in [
            (PortSide::Host, self.host_port),
            (PortSide::Container, self.container_port),
        ] {
            let end = u32::from(start) + u32::from(self.range) - 1;
            if end > u32::from(u16::MAX) {
                return Err(self.error(PortProblem::RangePastEnd { side, start, end }));
            }
        }
        let mut out = Vec::with_capacity(usize::from(self.range) * protos.len());
        for i in 0..self.range {
            for &proto in &protos {
                out.push(Forward {
                    proto,
                    host_ip,
                    host_port: self.host_port + i,
                    container_port: self.container_port + i,
                });
            }
        }
        Ok(out)
    }
}

/// Parses a comma list of protocols; empty means tcp.
pub(crate) fn parse_protocols(list: &str) -> Result<Vec<Protocol>, PortProblem> {
    if list.is_empty() {
        return Ok(vec![Protocol::Tcp]);
    }
    let mut out = Vec::new();
    for name in list.split(',') {
        let proto = match name {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => return Err(PortProblem::SctpUnsupported),
            _ => return Err(PortProblem::UnknownProtocol(name.to_owned())),
        };
        if out.contains(&proto) {
            return Err(PortProblem::RepeatedProtocol(proto));
        }
        out.push(proto);
    }
    Ok(out)
}

/// Expands every mapping, and checks that no two forwards claim the same
/// protocol, host address and host port.
///
/// # Errors
///
/// The first mapping's [`PortError`] from [`PortMapping::expand`], or
/// [`PortProblem::HostPortTaken`] for a mapping whose forward an earlier one
/// already makes.
pub fn expand_all(mappings: &[PortMapping]) -> Result<Vec<Forward>, PortError> {
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for m in mappings {
        for fwd in m.expand()? {
            if let Some(first) = seen.insert((fwd.proto, fwd.host_ip, fwd.host_port), m) {
                return Err(m.error(PortProblem::HostPortTaken {
                    forward: fwd,
                    other: Box::new(first.clone()),
                }));
            }
            out.push(fwd);
        }
    }
    Ok(out)
}

/// Checks that no two of `forwards` claim the same protocol, host address
/// and host port.
///
/// # Errors
///
/// [`PortProblem::HostPortTaken`] for the later of the first two that do,
/// each named as a mapping of one port.
pub fn check_forwards(forwards: &[Forward]) -> Result<(), PortError> {
    let mut seen = std::collections::HashMap::new();
    for fwd in forwards {
        if let Some(first) = seen.insert(fwd.key(), fwd) {
            let mapping = fwd.to_mapping();
            return Err(mapping.error(PortProblem::HostPortTaken {
                forward: *fwd,
                other: Box::new(first.to_mapping()),
            }));
        }
    }
    Ok(())
}
