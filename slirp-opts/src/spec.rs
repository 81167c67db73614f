//! podman's `-p` syntax:
//! `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO[,PROTO]]`.

use std::net::IpAddr;

use crate::ports::{parse_protocols, PortMapping, PortProblem};

/// A `-p` value that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port spec {spec:?}: {reason}")]
pub struct SpecError {
    /// The value given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses one `-p` value into a [`PortMapping`].
///
/// Without a host port the mapping's `host_port` is 0 (to be assigned by the
/// caller, as podman picks a free one). IPv6 host addresses go in brackets.
///
/// ```
/// use slirp_opts::parse_port_spec;
///
/// let m = parse_port_spec("127.0.0.1:8080-8081:80-81/tcp,udp").unwrap();
/// assert_eq!((m.host_ip.as_str(), m.host_port, m.container_port, m.range), ("127.0.0.1", 8080, 80, 2));
/// assert_eq!(m.protocol, "tcp,udp");
///
/// let m = parse_port_spec("[::1]:8080:80").unwrap();
/// assert_eq!((m.host_ip.as_str(), m.protocol.as_str()), ("::1", "tcp"));
///
/// assert!(parse_port_spec("8080:0").is_err());
/// ```
pub fn parse_port_spec(spec: &str) -> Result<PortMapping, SpecError> {
    let fail = |reason: String| SpecError {
        spec: spec.to_owned(),
        reason,
    };
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, proto),
        None => (spec, "tcp"),
    };
    if protocol.is_empty() {
        return Err(fail("empty protocol after '/'".into()));
    }
    parse_protocols(protocol).map_err(|p| fail(p.to_string()))?;

    // Split off an IP in brackets first; it may contain ':'.
    let (host_ip, ports): (Option<&str>, &str) = if let Some(inner) = rest.strip_prefix('[') {
        let (ip, after) = inner
            .split_once(']')
            .ok_or_else(|| fail("missing ']' after the IPv6 host address".into()))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| fail("expected ':' after the bracketed host address".into()))?;
        (Some(ip), after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => (Some(parts[0]), &rest[parts[0].len() + 1..]),
            _ => {
                return Err(fail(
                    "too many ':' (put an IPv6 host address in brackets: [::1]:8080:80)".into(),
                ))
            }
        }
    };
    let (host_ports, container_ports) = match ports.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None if host_ip.is_some() => {
            return Err(fail(
                "expected HOST_PORT:CONTAINER_PORT after the host address".into(),
            ))
        }
        None => (None, ports),
    };
    if container_ports.contains(':') {
        return Err(fail("too many ':'".into()));
    }

    let host_ip = match host_ip {
        None | Some("") => String::new(),
        Some(ip) => {
            let addr: IpAddr = ip
                .parse()
                .map_err(|_| fail(PortProblem::InvalidHostIp(ip.to_owned()).to_string()))?;
            addr.to_string()
        }
    };
    let (container_port, container_len) = parse_span(container_ports, "container").map_err(fail)?;
    let (host_port, range) = match host_ports {
        None | Some("") => (0, container_len),
        Some(h) => {
            let (start, len) = parse_span(h, "host").map_err(fail)?;
            if len != container_len {
                return Err(fail(format!(
                    "host range has {len} ports but container range has {container_len}"
                )));
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
fn parse_span(text: &str, side: &str) -> Result<(u16, u16), String> {
    let port = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(0) => Err(format!("{side} port must not be 0")),
            Ok(p) => Ok(p),
            Err(_) if s.is_empty() => Err(format!("missing {side} port")),
            Err(_) => Err(format!("{side} port {s:?} is not a number from 1 to 65535")),
        }
    };
    match text.split_once('-') {
        None => Ok((port(text)?, 1)),
        Some((a, b)) => {
            let (start, end) = (port(a)?, port(b)?);
            if end < start {
                return Err(format!(
                    "{side} port range {start}-{end} ends before it starts"
                ));
            }
            Ok((start, end - start + 1))
        }
    }
}
