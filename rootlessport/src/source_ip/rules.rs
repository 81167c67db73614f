//! The policy rules: which replies look up the forwarder's table.

use std::collections::BTreeSet;
use std::net::IpAddr;

use slirp_opts::{Forward, Protocol};

use super::slot::MARK;
use crate::rtnl::Rule;

/// Where our rules sit: before the main table (32766), after local (0).
pub const PRIORITY: u32 = 29296;

/// The published container ports, as ranges per protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ports {
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
}

impl Ports {
    /// The container ports of `forwards`, consecutive ones merged.
    pub(crate) fn of(forwards: &[Forward]) -> Self {
        let ranges = |proto: Protocol| {
            let ports: BTreeSet<u16> = forwards
                .iter()
                .filter(|f| f.proto == proto)
                .map(|f| f.container_port)
                .collect();
            let mut out: Vec<(u16, u16)> = Vec::new();
            for p in ports {
                match out.last_mut() {
                    Some((_, end)) if u32::from(*end) + 1 == u32::from(p) => *end = p,
                    _ => out.push((p, p)),
                }
            }
            out
        };
        Ports {
            tcp: ranges(Protocol::Tcp),
            udp: ranges(Protocol::Udp),
        }
    }

    /// Every port of `self` and of `other`, ranges merged again.
    pub(crate) fn union(&self, other: &Ports) -> Ports {
        let merge = |a: &[(u16, u16)], b: &[(u16, u16)]| {
            let mut all: Vec<(u16, u16)> = a.iter().chain(b).copied().collect();
            all.sort_unstable();
            let mut out: Vec<(u16, u16)> = Vec::new();
            for (lo, hi) in all {
                match out.last_mut() {
                    Some((_, end)) if u32::from(lo) <= u32::from(*end) + 1 => *end = (*end).max(hi),
                    _ => out.push((lo, hi)),
                }
            }
            out
        };
        Ports {
            tcp: merge(&self.tcp, &other.tcp),
            udp: merge(&self.udp, &other.udp),
        }
    }

    /// `from child` rules, one per protocol and range.
    pub(super) fn child_rules(&self, child: IpAddr, table: u32) -> Vec<Rule> {
        let of = |udp: bool, ranges: &[(u16, u16)]| {
            ranges
                .iter()
                .map(move |&ports| Rule {
                    v6: child.is_ipv6(),
                    from: Some(child),
                    udp,
                    ports,
                    table,
                    priority: PRIORITY,
                    mark: MARK,
                })
                .collect::<Vec<_>>()
        };
        let mut rules = of(false, &self.tcp);
        rules.extend(of(true, &self.udp));
        rules
    }

    /// `iif lo` rules for UDP, for one family.
    pub(super) fn local_rules(&self, v6: bool, table: u32) -> Vec<Rule> {
        self.udp
            .iter()
            .map(|&ports| Rule {
                v6,
                from: None,
                udp: true,
                ports,
                table,
                priority: PRIORITY,
                mark: MARK,
            })
            .collect()
    }
}

/// How `ip rule` would show it, for messages.
pub(super) fn describe(rule: &Rule) -> String {
    let from = match rule.from {
        Some(ip) => format!("from {ip}"),
        None => "iif lo".into(),
    };
    let proto = if rule.udp { "udp" } else { "tcp" };
    format!(
        "{from} ipproto {proto} sport {}-{} lookup {}",
        rule.ports.0, rule.ports.1, rule.table
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source_ip::slot::TABLE_BASE;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ports_merge_into_ranges_per_protocol() {
        let forwards = [
            fwd(Protocol::Tcp, 80),
            fwd(Protocol::Tcp, 8000),
            fwd(Protocol::Tcp, 8001),
            fwd(Protocol::Tcp, 8002),
            fwd(Protocol::Udp, 53),
            fwd(Protocol::Tcp, 80),
            fwd(Protocol::Tcp, 65535),
            fwd(Protocol::Udp, 5060),
        ];
        let ports = Ports::of(&forwards);
        assert_eq!(ports.tcp, vec![(80, 80), (8000, 8002), (65535, 65535)]);
        assert_eq!(ports.udp, vec![(53, 53), (5060, 5060)]);
        let rules = ports.child_rules(ip("10.0.2.100"), TABLE_BASE);
        assert_eq!(rules.len(), 5);
        assert!(rules
            .iter()
            .all(|r| r.from == Some(ip("10.0.2.100")) && !r.v6));
        let local = ports.local_rules(true, TABLE_BASE + 1);
        assert_eq!(local.len(), 2);
        assert!(local.iter().all(|r| r.from.is_none() && r.udp && r.v6));
        assert_eq!(
            describe(&rules[1]),
            format!("from 10.0.2.100 ipproto tcp sport 8000-8002 lookup {TABLE_BASE}")
        );
    }

    fn fwd(proto: Protocol, port: u16) -> Forward {
        Forward {
            proto,
            host_ip: None,
            host_port: port,
            container_port: port,
        }
    }

    #[test]
    fn added_ports_merge_into_the_ranges() {
        let first = Ports::of(&[fwd(Protocol::Tcp, 80), fwd(Protocol::Tcp, 81)]);
        let more = Ports::of(&[
            fwd(Protocol::Tcp, 82),
            fwd(Protocol::Tcp, 90),
            fwd(Protocol::Udp, 53),
        ]);
        let all = first.union(&more);
        assert_eq!(all.tcp, [(80, 82), (90, 90)]);
        assert_eq!(all.udp, [(53, 53)]);
        assert_eq!(all.union(&first), all);
    }
}
