//! podman's `-p` syntax:
//! `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO[,PROTO]]`.

use std::net::IpAddr;

use crate::portctl::PortKey;
use crate::ports::{parse_protocols, Forward, PortMapping, PortProblem, PortSide};

/// A `-p` value that cannot be parsed.
///
/// Its message includes the problem's text; `problem` is not also its
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port spec {spec:?}: {problem}")]
#[non_exhaustive]
pub struct SpecError {
    /// The value given.
    pub spec: String,
    /// What is wrong with it.
    pub problem: SpecProblem,
}

impl SpecError {
    /// `spec`, refused because of `problem`.
    pub fn new(spec: impl Into<String>, problem: SpecProblem) -> Self {
        SpecError {
            spec: spec.into(),
            problem,
        }
    }
}

/// What is wrong with a `-p` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecProblem {
    /// Nothing follows the `/`.
    #[error("empty protocol after '/'")]
    EmptyProtocol,
    /// The protocol list or the host address is refused, as it would be in a
    /// [`PortMapping`].
    #[error("{0}")]
    Mapping(PortProblem),
    /// A `[` without its `]`.
    #[error("missing ']' after the IPv6 host address")]
    MissingBracket,
    /// Something other than `:` follows the `]`.
    #[error("expected ':' after the bracketed host address")]
    MissingColonAfterBracket,
    /// More than three `:`-separated parts: most likely an IPv6 host address
    /// without brackets.
    #[error("too many ':' (put an IPv6 host address in brackets: [::1]:8080:80)")]
    UnbracketedIpv6,
    /// A `:` in the container ports, after a bracketed host address.
    #[error("too many ':'")]
    TooManyColons,
    /// A host address with nothing but a container port after it.
    #[error("expected HOST_PORT:CONTAINER_PORT after the host address")]
    MissingHostPort,
    /// An empty port, such as in `80-`.
    #[error("missing {side} port")]
    MissingPort {
        /// The host or the container side.
        side: PortSide,
    },
    /// Port 0.
    #[error("{side} port must not be 0")]
    PortZero {
        /// The host or the container side.
        side: PortSide,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("{side} port {text:?} is not a number from 1 to 65535")]
    InvalidPort {
        /// The host or the container side.
        side: PortSide,
        /// The text given.
        text: String,
    },
    /// A range whose end is before its start.
    #[error("{side} port range {start}-{end} ends before it starts")]
    BackwardRange {
        /// The host or the container side.
        side: PortSide,
        /// The first port given.
        start: u16,
        /// The last port given.
        end: u16,
    },
    /// More than one protocol where one forward is named.
    #[error("name one protocol")]
    TooManyProtocols,
    /// A range where one forward is named.
    #[error("name one port, not a range")]
    PortRange,
    /// Host and container ranges of different lengths.
    #[error("host range has {host} ports but container range has {container}")]
    RangeMismatch {
        /// How many host ports.
        host: u16,
        /// How many container ports.
        container: u16,
    },
}

/// Parses one `-p` value into a [`PortMapping`].
///
/// Without a host port the mapping's `host_port` is 0 (to be assigned by the
/// caller, as podman picks a free one). IPv6 host addresses go in brackets.
///
/// ```
/// use slirp_opts::{parse_port_spec, PortSide, SpecProblem};
///
/// let m = parse_port_spec("127.0.0.1:8080-8081:80-81/tcp,udp").unwrap();
/// assert_eq!((m.host_ip.as_str(), m.host_port, m.container_port, m.range), ("127.0.0.1", 8080, 80, 2));
/// assert_eq!(m.protocol, "tcp,udp");
///
/// let m = parse_port_spec("[::1]:8080:80").unwrap();
/// assert_eq!((m.host_ip.as_str(), m.protocol.as_str()), ("::1", "tcp"));
///
/// let err = parse_port_spec("8080:0").unwrap_err();
/// assert_eq!(err.problem, SpecProblem::PortZero { side: PortSide::Container });
/// assert_eq!(err.to_string(), r#"invalid port spec "8080:0": container port must not be 0"#);
/// ```
///
/// # Errors
///
/// A [`SpecError`] carrying the value and the [`SpecProblem`] found.
pub fn parse_port_spec(spec: &str) -> Result<PortMapping, SpecError> {
    parse(spec).map_err(|problem| SpecError {
        spec: spec.to_owned(),
        problem,
    })
}

/// Parses one `-p` value that names its host ports and checks it into the
/// forwards it makes: one per protocol per port ([`PortMapping::expand`]).
///
/// ```
/// use slirp_opts::{parse_forwards, PortProblem, SpecProblem};
///
/// let fwd = parse_forwards("[::1]:8080-8081:80-81/udp")?;
/// assert_eq!(fwd.len(), 2);
/// assert_eq!(fwd[1].to_string(), "[::1]:8081 -> 81/udp");
/// let err = parse_forwards("80").unwrap_err();
/// assert_eq!(err.problem, SpecProblem::Mapping(PortProblem::HostPortZero));
/// # Ok::<(), slirp_opts::SpecError>(())
/// ```
///
/// # Errors
///
/// A [`SpecError`] carrying the value: it does not parse, or names no host
/// port ([`PortProblem::HostPortZero`] in [`SpecProblem::Mapping`]).
pub fn parse_forwards(spec: &str) -> Result<Vec<Forward>, SpecError> {
    parse_port_spec(spec)?.expand().map_err(|e| SpecError {
        spec: spec.to_owned(),
        problem: SpecProblem::Mapping(e.problem),
    })
}

impl std::str::FromStr for PortKey {
    type Err = SpecError;

    /// Parses a forward's host side as [`PortKey`]'s `Display` writes it:
    /// `[HOST_IP:]HOST_PORT[/PROTO]` (all addresses without an address or
    /// with `*`; IPv6 in brackets; tcp without a protocol).
    ///
    /// ```
    /// use slirp_opts::{PortKey, Protocol};
    ///
    /// let key: PortKey = "127.0.0.1:18501/udp".parse()?;
    /// assert_eq!((key.proto, key.host_port), (Protocol::Udp, 18501));
    /// assert_eq!("*:80/tcp".parse::<PortKey>()?, "80".parse::<PortKey>()?);
    /// assert_eq!("[::1]:80/tcp".parse::<PortKey>()?.to_string(), "[::1]:80/tcp");
    /// # Ok::<(), slirp_opts::SpecError>(())
    /// ```
    fn from_str(text: &str) -> Result<Self, SpecError> {
        parse_key(text).map_err(|problem| SpecError {
            spec: text.to_owned(),
            problem,
        })
    }
}

fn parse_key(text: &str) -> Result<PortKey, SpecProblem> {
    let (rest, proto) = match text.rsplit_once('/') {
        Some((_, "")) => return Err(SpecProblem::EmptyProtocol),
        Some((rest, proto)) => (rest, proto),
        None => (text, "tcp"),
    };
    let protos = parse_protocols(proto).map_err(SpecProblem::Mapping)?;
    let [proto] = protos[..] else {
        return Err(SpecProblem::TooManyProtocols);
    };
    let (ip, port) = match rest.rsplit_once(':') {
        None => (None, rest),
        Some((ip, port)) => {
            let bare = match ip.strip_prefix('[') {
                Some(inner) => inner.strip_suffix(']').ok_or(SpecProblem::MissingBracket)?,
                None if ip.contains(':') => return Err(SpecProblem::UnbracketedIpv6),
                None => ip,
            };
            (Some(bare), port)
        }
    };
    let host_ip = match ip {
        None | Some("*") => None,
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| SpecProblem::Mapping(PortProblem::InvalidHostIp(ip.to_owned())))?,
        ),
    };
    let (host_port, count) = parse_span(port, PortSide::Host)?;
    if count != 1 {
        return Err(SpecProblem::PortRange);
    }
    Ok(PortKey {
        proto,
        host_ip,
        host_port,
    })
}

fn parse(spec: &str) -> Result<PortMapping, SpecProblem> {
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, proto),
        None => (spec, "tcp"),
    };
    if protocol.is_empty() {
        return Err(SpecProblem::EmptyProtocol);
    }
    parse_protocols(protocol).map_err(SpecProblem::Mapping)?;

    // Split off an IP in brackets first; it may contain ':'.
    let (host_ip, ports): (Option<&str>, &str) = if let Some(inner) = rest.strip_prefix('[') {
        let (ip, after) = inner.split_once(']').ok_or(SpecProblem::MissingBracket)?;
        let after = after
            .strip_prefix(':')
            .ok_or(SpecProblem::MissingColonAfterBracket)?;
        (Some(ip), after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => (Some(parts[0]), &rest[parts[0].len() + 1..]),
            _ => return Err(SpecProblem::UnbracketedIpv6),
        }
    };
    let (host_ports, container_ports) = match ports.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None if host_ip.is_some() => return Err(SpecProblem::MissingHostPort),
        None => (None, ports),
    };
    if container_ports.contains(':') {
        return Err(SpecProblem::TooManyColons);
    }

    let host_ip = match host_ip {
        None | Some("") => String::new(),
        Some(ip) => {
            let addr: IpAddr = ip
                .parse()
                .map_err(|_| SpecProblem::Mapping(PortProblem::InvalidHostIp(ip.to_owned())))?;
            addr.to_string()
        }
    };
    let (container_port, container_len) = parse_span(container_ports, PortSide::Container)?;
    let (host_port, range) = match host_ports {
        None | Some("") => (0, container_len),
        Some(h) => {
            let (start, len) = parse_span(h, PortSide::Host)?;
            if len != container_len {
                return Err(SpecProblem::RangeMismatch {
                    host: len,
                    container: container_len,
                });
            }
            (start, len)
        }
    };
    Ok(PortMapping {
        host_ip,
        container_port,
        host_port,
        range,
        protocol: protocol.to_owned(),
    })
}

/// Parses `PORT` or `START-END` into (start, count).
fn parse_span(text: &str, side: PortSide) -> Result<(u16, u16), SpecProblem> {
    let port = |s: &str| -> Result<u16, SpecProblem> {
        match s.parse::<u16>() {
            Ok(0) => Err(SpecProblem::PortZero { side }),
            Ok(p) => Ok(p),
            Err(_) if s.is_empty() => Err(SpecProblem::MissingPort { side }),
            Err(_) => Err(SpecProblem::InvalidPort {
                side,
                text: s.to_owned(),
            }),
        }
    };
    match text.split_once('-') {
        None => Ok((port(text)?, 1)),
        Some((a, b)) => {
            let (start, end) = (port(a)?, port(b)?);
            if end < start {
                return Err(SpecProblem::BackwardRange { side, start, end });
            }
            Ok((start, end - start + 1))
        }
    }
}
