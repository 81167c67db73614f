//! What `slirpnet port rm -p SPEC` removes: the forwards a spec names
//! among those a session has ([`removal_keys`]).

use std::net::IpAddr;

use slirp_opts::{parse_port_spec, Forward, PortKey, PortSide, SpecError, SpecProblem};

/// A removal spec that names nothing to remove.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemovalError {
    /// The spec does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// It names no forward there is.
    #[error("{spec}: no such port is forwarded")]
    NotForwarded {
        /// The spec.
        spec: String,
    },
}

/// The forwards `spec` names among `now`: the spec they were added with
/// (its host side), or a host port alone (`[HOST_IP:]HOST_PORT[-END][/PROTO]`,
/// every protocol when none is named; IPv6 in brackets).
///
/// ```
/// use slirpnet::{parse_forwards, removal_keys};
///
/// let now = parse_forwards("127.0.0.1:8080:80/tcp,udp")?;
/// assert_eq!(removal_keys("127.0.0.1:8080", &now)?.len(), 2);
/// assert_eq!(removal_keys("127.0.0.1:8080:80/udp", &now)?, [now[1].key()]);
/// assert!(removal_keys("8081", &now).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// The spec does not parse, or names none of `now`.
pub fn removal_keys(spec: &str, now: &[Forward]) -> Result<Vec<PortKey>, RemovalError> {
    let m = match host_port_alone(spec) {
        Some(full) => parse_port_spec(&full).map_err(|mut e| {
            // Name what was given, and its ports as the host's (they are).
            e.spec = spec.to_owned();
            match &mut e.problem {
                SpecProblem::MissingPort { side }
                | SpecProblem::PortZero { side }
                | SpecProblem::InvalidPort { side, .. }
                | SpecProblem::BackwardRange { side, .. } => *side = PortSide::Host,
                _ => {}
            }
            e
        })?,
        None => parse_port_spec(spec)?,
    };
    let as_spec_error =
        |e: slirp_opts::PortError| SpecError::new(spec, SpecProblem::Mapping(e.problem));
    let protos_named = spec.contains('/');
    let host_ip = m.host_addr().map_err(as_spec_error)?;
    // Without a host port the number is the host port (as podman reads a
    // lone number as the container port, "a host port alone" means it here).
    let (first, range) = if m.host_port != 0 {
        (m.host_port, m.range.max(1))
    } else {
        (m.container_port, m.range.max(1))
    };
    let protos = m.protocols().map_err(as_spec_error)?;
    let wanted = |f: &Forward| {
        let port_ok =
            f.host_port >= first && u32::from(f.host_port) < u32::from(first) + u32::from(range);
        let proto_ok = !protos_named || protos.contains(&f.proto);
        let ip_ok = m.host_ip.is_empty() || f.host_ip == host_ip;
        port_ok && proto_ok && ip_ok
    };
    let keys: Vec<PortKey> = now.iter().filter(|f| wanted(f)).map(Forward::key).collect();
    if keys.is_empty() {
        return Err(RemovalError::NotForwarded {
            spec: spec.to_owned(),
        });
    }
    Ok(keys)
}

/// A host port alone with its address (`HOST_IP:HOST_PORT[-END][/PROTO]`,
/// IPv6 in brackets), which podman's syntax would read as host and
/// container port, rewritten as the spec naming the same host side
/// (`HOST_IP:PORTS:PORTS[/PROTO]`); `None` for any other spec.
fn host_port_alone(spec: &str) -> Option<String> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, format!("/{proto}")),
        None => (spec, String::new()),
    };
    let (ip, ports) = rest.rsplit_once(':')?;
    let bare = match ip.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None => ip,
    };
    bare.parse::<IpAddr>().ok()?;
    Some(format!("{ip}:{ports}:{ports}{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slirp_opts::Protocol;

    fn entry(proto: Protocol, ip: Option<&str>, host_port: u16) -> Forward {
        Forward {
            proto,
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port,
            container_port: 80,
        }
    }

    #[test]
    fn removal_keys_take_a_host_port_alone_with_its_address() {
        let now = [
            entry(Protocol::Tcp, Some("127.0.0.1"), 8080),
            entry(Protocol::Udp, Some("127.0.0.1"), 8080),
            entry(Protocol::Tcp, Some("::1"), 8081),
            entry(Protocol::Tcp, None, 8082),
        ];
        let ports = |spec: &str| -> Vec<u16> {
            removal_keys(spec, &now)
                .unwrap()
                .iter()
                .map(|k| k.host_port)
                .collect()
        };
        assert_eq!(ports("127.0.0.1:8080"), [8080, 8080]);
        assert_eq!(ports("127.0.0.1:8080/udp"), [8080]);
        assert_eq!(ports("127.0.0.1:8080-8081"), [8080, 8080]);
        assert_eq!(ports("[::1]:8081"), [8081]);
        assert_eq!(ports("8082"), [8082]);
        assert_eq!(ports("127.0.0.1:8080:80/tcp"), [8080]);
        assert_eq!(ports("8082:80"), [8082]);
        assert!(removal_keys("127.0.0.2:8080", &now).is_err());
        assert_eq!(
            removal_keys("127.0.0.1:x", &now).unwrap_err().to_string(),
            r#"invalid port spec "127.0.0.1:x": host port "x" is not a number from 1 to 65535"#
        );
    }
}
