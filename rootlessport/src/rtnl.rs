//! A small synchronous rtnetlink client for the policy rules and routes of
//! the network namespace its socket was made in.
//!
//! A netlink socket belongs to the namespace of the thread that created it,
//! as any socket does. The kernel handles a request inside `sendmsg`, so its
//! acknowledgement is already queued when the call returns: a blocking
//! socket never waits for one.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use netlink_packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The loopback interface's index, the same in every namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// Room for one datagram of a dump (the kernel sends at most 32 KiB).
const RECEIVE_BUFFER: usize = 64 << 10;

/// An rtnetlink socket, blocking, connected to the kernel.
pub(crate) struct Rtnl {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").finish_non_exhaustive()
    }
}

/// One policy rule: `[from SOURCE | iif lo] ipproto PROTO sport FIRST-LAST
/// lookup TABLE priority PRIORITY proto MARK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// `from` this address (a host prefix), else `iif lo` (traffic this
    /// namespace sends itself, whatever its source).
    pub from: Option<IpAddr>,
    /// UDP (else TCP).
    pub udp: bool,
    /// The source ports matched.
    pub ports: (u16, u16),
    /// The table looked up.
    pub table: u32,
    /// Where the rule sits.
    pub priority: u32,
    /// The rule's protocol field: who added it.
    pub mark: u8,
}

impl Rule {
    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = family(self.v6);
        m.header.action = RuleAction::ToTable;
        // The table goes in FRA_TABLE: ours do not fit the header's byte.
        m.header.table = 0;
        if let Some(ip) = self.from {
            m.header.src_len = host_prefix(ip);
            m.attributes.push(RuleAttribute::Source(ip));
        } else {
            m.attributes.push(RuleAttribute::Iifname("lo".into()));
        }
        m.attributes.extend([
            RuleAttribute::Priority(self.priority),
            RuleAttribute::Table(self.table),
            RuleAttribute::Protocol(RouteProtocol::from(self.mark)),
            RuleAttribute::IpProtocol(if self.udp {
                IpProtocol::Udp
            } else {
                IpProtocol::Tcp
            }),
            RuleAttribute::SourcePortRange(RulePortRange {
                start: self.ports.0,
                end: self.ports.1,
            }),
        ]);
        m
    }
}

/// A route `local ADDRESS dev lo table TABLE proto MARK metric METRIC
/// [src PREFSRC]`: packets routed through it are delivered in this
/// namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalRoute {
    /// The address (a host prefix).
    pub to: IpAddr,
    /// The table it goes in.
    pub table: u32,
    /// The route's protocol field: who added it.
    pub mark: u8,
    /// Its metric: routes to one address in one table differ by it.
    pub metric: u32,
    /// The source address chosen for packets routed through it that have
    /// none yet (a reply from a socket bound to all addresses).
    pub prefsrc: Option<IpAddr>,
}

impl LocalRoute {
    fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family(self.to.is_ipv6());
        m.header.destination_prefix_length = host_prefix(self.to);
        m.header.table = RouteHeader::RT_TABLE_UNSPEC;
        m.header.protocol = RouteProtocol::from(self.mark);
        m.header.scope = RouteScope::Host;
        m.header.kind = RouteType::Local;
        m.attributes.extend([
            RouteAttribute::Destination(RouteAddress::from(self.to)),
            RouteAttribute::Table(self.table),
            RouteAttribute::Oif(LOOPBACK_IFINDEX),
            RouteAttribute::Priority(self.metric),
        ]);
        if let Some(src) = self.prefsrc {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        m
    }
}

/// A rule or route found in a dump, with what identifies it as ours.
#[derive(Debug, Clone)]
pub(crate) struct Found<T> {
    /// Its table.
    pub table: u32,
    /// Its protocol field.
    pub mark: u8,
    /// The message itself, as the kernel sent it (enough to delete it).
    pub message: T,
}

impl Rtnl {
    /// A socket in the calling thread's namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            sequence: 0,
            buf: vec![0; RECEIVE_BUFFER],
        })
    }

    /// Adds `rule`, never over another. One that is already there, with
    /// its protocol field, counts as added: the kernel compares that field
    /// too, so it is one we added (an older kernel that does not compare
    /// it may count someone else's, which we still never delete: deleting
    /// matches the protocol field).
    pub(crate) fn add_rule(&mut self, rule: &Rule) -> io::Result<()> {
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        match self.request(RouteNetlinkMessage::NewRule(rule.message()), flags) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Deletes `rule`; one that is gone already counts as deleted.
    pub(crate) fn delete_rule(&mut self, rule: &Rule) -> io::Result<()> {
        self.delete_rule_message(rule.message())
    }

    /// Deletes a rule as a dump returned it.
    pub(crate) fn delete_rule_message(&mut self, rule: RuleMessage) -> io::Result<()> {
        gone_is_fine(self.request(RouteNetlinkMessage::DelRule(rule), 0))
    }

    /// Adds `route`, never over another: a route with its address and
    /// metric already in its table, whoever added it, is EEXIST.
    pub(crate) fn add_route(&mut self, route: &LocalRoute) -> io::Result<()> {
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(RouteNetlinkMessage::NewRoute(route.message()), flags)
    }

    /// Deletes `route` (matched by address, table, mark and metric, so
    /// never a route someone else added); one that is gone already counts
    /// as deleted.
    pub(crate) fn delete_route(&mut self, route: &LocalRoute) -> io::Result<()> {
        let mut m = route.message();
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::PrefSource(_)));
        self.delete_route_message(m)
    }

    /// Deletes a route as a dump returned it.
    pub(crate) fn delete_route_message(&mut self, route: RouteMessage) -> io::Result<()> {
        gone_is_fine(self.request(RouteNetlinkMessage::DelRoute(route), 0))
    }

    /// Every policy rule of both families.
    pub(crate) fn rules(&mut self) -> io::Result<Vec<Found<RuleMessage>>> {
        let mut ask = RuleMessage::default();
        ask.header.family = AddressFamily::Unspec;
        let mut out = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetRule(ask))? {
            if let RouteNetlinkMessage::NewRule(rule) = m {
                let mut table = u32::from(rule.header.table);
                let mut mark = 0;
                for a in &rule.attributes {
                    match a {
                        RuleAttribute::Table(t) => table = *t,
                        RuleAttribute::Protocol(p) => mark = u8::from(*p),
                        _ => {}
                    }
                }
                out.push(Found {
                    table,
                    mark,
                    message: rule,
                });
            }
        }
        Ok(out)
    }

    /// Every route of both families, in every table.
    pub(crate) fn routes(&mut self) -> io::Result<Vec<Found<RouteMessage>>> {
        let mut ask = RouteMessage::default();
        ask.header.address_family = AddressFamily::Unspec;
        let mut out = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetRoute(ask))? {
            if let RouteNetlinkMessage::NewRoute(route) = m {
                let mut table = u32::from(route.header.table);
                for a in &route.attributes {
                    if let RouteAttribute::Table(t) = a {
                        table = *t;
                    }
                }
                out.push(Found {
                    table,
                    mark: u8::from(route.header.protocol),
                    message: route,
                });
            }
        }
        Ok(out)
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        Ok(self.sequence)
    }

    /// Sends a request and waits for its acknowledgement.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let sequence = self.send(message, flags | NLM_F_ACK)?;
        loop {
            for m in self.receive()? {
                if m.header.sequence_number != sequence {
                    continue;
                }
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }

    /// Sends a dump request and collects every answer until its end.
    fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(message, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            for m in self.receive()? {
                if m.header.sequence_number != sequence {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// The messages of one datagram. One the crate cannot decode is
    /// skipped (a rule or route of a kind newer than it): what we look for
    /// is only what we made ourselves.
    fn receive(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let n = loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let mut out = Vec::new();
        let mut at = 0;
        let data = &self.buf[..n.min(self.buf.len())];
        while at < data.len() {
            let Ok(frame) = NetlinkBuffer::new_checked(&data[at..]) else {
                break;
            };
            let len = frame.length() as usize;
            if len == 0 || at + len > data.len() {
                break;
            }
            if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..at + len]) {
                out.push(m);
            }
            at += (len + 3) & !3;
        }
        Ok(out)
    }
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        128
    } else {
        32
    }
}

/// ENOENT (rules) and ESRCH (routes) mean it was not there.
fn gone_is_fine(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ESRCH)) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn a_rule_carries_its_match_table_and_mark() {
        let rule = Rule {
            v6: false,
            from: Some("10.0.2.100".parse().unwrap()),
            udp: true,
            ports: (5000, 5099),
            table: 0x7270_0003,
            priority: 29296,
            mark: 82,
        };
        let m = rule.message();
        assert_eq!(m.header.src_len, 32);
        assert_eq!(m.header.action, RuleAction::ToTable);
        assert!(m.attributes.contains(&RuleAttribute::Table(0x7270_0003)));
        assert!(m
            .attributes
            .contains(&RuleAttribute::SourcePortRange(RulePortRange {
                start: 5000,
                end: 5099
            })));
        assert!(m
            .attributes
            .contains(&RuleAttribute::IpProtocol(IpProtocol::Udp)));
        assert!(m
            .attributes
            .contains(&RuleAttribute::Protocol(RouteProtocol::from(82))));
        // It encodes, and decodes back to itself.
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert!(buf.len() > 12);
        let local = Rule { from: None, ..rule }.message();
        assert!(local
            .attributes
            .contains(&RuleAttribute::Iifname("lo".into())));
        assert_eq!(local.header.src_len, 0);
    }

    #[test]
    fn a_local_route_is_a_host_route_on_lo() {
        let route = LocalRoute {
            to: "2001:db8::2".parse().unwrap(),
            table: 0x7270_0000,
            mark: 82,
            metric: 2,
            prefsrc: Some("fd00::100".parse().unwrap()),
        };
        let m = route.message();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 128);
        assert_eq!(m.header.kind, RouteType::Local);
        assert_eq!(m.header.scope, RouteScope::Host);
        assert_eq!(u8::from(m.header.protocol), 82);
        assert!(m.attributes.contains(&RouteAttribute::Oif(1)));
        assert!(m.attributes.contains(&RouteAttribute::Priority(2)));
        assert!(m
            .attributes
            .contains(&RouteAttribute::PrefSource(RouteAddress::from(
                "fd00::100".parse::<IpAddr>().unwrap()
            ))));
    }
}
