//! The routing thread inside the namespace: it alone talks netlink, adding
//! and removing the forwarder's rules and routes as the event loop asks.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use tokio::sync::oneshot;

use super::error::SourceIpError;
use super::rules::{describe, Ports};
use super::slot::{lock_slot, take_slot, MARK, SLOTS, TABLE_BASE};
use crate::rtnl::{LocalRoute, Rtnl};

/// Work for the thread inside the namespace.
pub(super) enum Op {
    /// Rules for a child IP; answers whether they are there.
    AddRules(IpAddr, oneshot::Sender<bool>),
    DeleteRules(IpAddr),
    /// A client address's route, toward a child IP (its preferred source
    /// when it is local); answers whether it is there.
    AddRoute {
        client: IpAddr,
        child: IpAddr,
        done: oneshot::Sender<bool>,
    },
    DeleteRoute(IpAddr),
    /// More published ports: their rules too (for every child IP with
    /// rules); answers whether they are there.
    AddPorts(Ports, oneshot::Sender<bool>),
    /// Clear the slot and end.
    Stop,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::AddRules(ip, _) => write!(f, "AddRules({ip})"),
            Op::DeleteRules(ip) => write!(f, "DeleteRules({ip})"),
            Op::AddRoute { client, child, .. } => write!(f, "AddRoute({client} via {child})"),
            Op::DeleteRoute(ip) => write!(f, "DeleteRoute({ip})"),
            Op::AddPorts(ports, _) => write!(f, "AddPorts({ports:?})"),
            Op::Stop => write!(f, "Stop"),
        }
    }
}

/// The routing thread's state, inside the namespace.
pub(super) struct Routes {
    rtnl: Rtnl,
    ports: Ports,
    table: u32,
    /// Whether each child IP with rules is an address of this namespace.
    local: HashMap<IpAddr, bool>,
    /// Holds the slot while the process lives.
    _lock: OwnedFd,
}

impl Routes {
    pub(super) fn open(ports: Ports, child: IpAddr) -> Result<Self, SourceIpError> {
        let rtnl = Rtnl::open().map_err(SourceIpError::Netlink)?;
        probe_transparent(child).map_err(SourceIpError::Transparent)?;
        let (slot, lock) = take_slot()?;
        let mut routes = Routes {
            rtnl,
            ports,
            table: TABLE_BASE + slot,
            local: HashMap::new(),
            _lock: lock,
        };
        let set_up = routes.clear_leftovers(slot).and_then(|()| {
            for v6 in [false, true] {
                for rule in routes.ports.local_rules(v6, routes.table) {
                    match routes.rtnl.add_rule(&rule) {
                        Ok(()) => {}
                        // No IPv6 here: IPv6 children cannot be reached either.
                        Err(e) if v6 && e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {}
                        Err(error) => {
                            return Err(SourceIpError::AddRule {
                                rule: describe(&rule),
                                error,
                            })
                        }
                    }
                }
            }
            routes.add_rules(child)
        });
        if let Err(e) = set_up {
            routes.clear_own();
            return Err(e);
        }
        tracing::debug!(slot, table = routes.table, "keeping client addresses");
        Ok(routes)
    }

    /// Serves one request; `false` at Stop.
    pub(super) fn serve(&mut self, op: Op) -> bool {
        match op {
            Op::AddRules(child, done) => {
                let ok = match self.add_rules(child) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "clients of {child} keep the namespace's own address");
                        false
                    }
                };
                let _ = done.send(ok);
            }
            Op::DeleteRules(child) => {
                self.local.remove(&child);
                for rule in self.ports.child_rules(child, self.table) {
                    if let Err(e) = self.rtnl.delete_rule(&rule) {
                        tracing::debug!(error = %e, rule = describe(&rule), "cannot delete a rule");
                    }
                }
            }
            Op::AddRoute {
                client,
                child,
                done,
            } => {
                let route = LocalRoute {
                    to: client,
                    table: self.table,
                    mark: MARK,
                    prefsrc: self
                        .local
                        .get(&child)
                        .copied()
                        .unwrap_or(false)
                        .then_some(child),
                };
                let ok = match self.rtnl.add_route(&route) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "cannot add a route; this client keeps the namespace's own address");
                        false
                    }
                };
                let _ = done.send(ok);
            }
            Op::DeleteRoute(client) => {
                let route = LocalRoute {
                    to: client,
                    table: self.table,
                    mark: MARK,
                    prefsrc: None,
                };
                if let Err(e) = self.rtnl.delete_route(&route) {
                    tracing::debug!(%client, error = %e, "cannot delete a route");
                }
            }
            Op::AddPorts(more, done) => {
                let ok = match self.add_ports(more) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot route replies from added ports");
                        false
                    }
                };
                let _ = done.send(ok);
            }
            Op::Stop => return false,
        }
        true
    }

    /// Grows the published ports to include `more`, adding their rules for
    /// every child IP with rules (and UDP's `iif lo` ones). Rules of ports
    /// no longer published stay until exit: their open connections still
    /// need their replies.
    fn add_ports(&mut self, more: Ports) -> Result<(), SourceIpError> {
        let grown = self.ports.union(&more);
        let children: Vec<IpAddr> = self.local.keys().copied().collect();
        let (mut had, mut want) = (Vec::new(), Vec::new());
        for v6 in [false, true] {
            had.extend(self.ports.local_rules(v6, self.table));
            want.extend(grown.local_rules(v6, self.table));
        }
        for child in children {
            had.extend(self.ports.child_rules(child, self.table));
            want.extend(grown.child_rules(child, self.table));
        }
        for rule in want.iter().filter(|r| !had.contains(r)) {
            match self.rtnl.add_rule(rule) {
                Ok(()) => {}
                Err(e) if rule.v6 && e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {}
                Err(error) => {
                    return Err(SourceIpError::AddRule {
                        rule: describe(rule),
                        error,
                    })
                }
            }
        }
        // The old ranges' rules may be superseded by merged ones; both can
        // stand (the same table, the same verdict).
        self.ports = grown;
        Ok(())
    }

    fn add_rules(&mut self, child: IpAddr) -> Result<(), SourceIpError> {
        for rule in self.ports.child_rules(child, self.table) {
            self.rtnl
                .add_rule(&rule)
                .map_err(|error| SourceIpError::AddRule {
                    rule: describe(&rule),
                    error,
                })?;
        }
        // A service in this very namespace that replies from a socket
        // bound to all addresses gets the child IP as source through the
        // clients' routes, if it is an address here.
        let local = std::net::UdpSocket::bind(SocketAddr::new(child, 0)).is_ok();
        self.local.insert(child, local);
        Ok(())
    }

    /// Removes what carries our mark in the tables of `slot` (ours) and of
    /// every other slot nobody holds.
    fn clear_leftovers(&mut self, slot: u32) -> Result<(), SourceIpError> {
        let rules = self.rtnl.rules().map_err(SourceIpError::ListRules)?;
        let routes = self.rtnl.routes().map_err(SourceIpError::ListRoutes)?;
        let slot_of = |table: u32, mark: u8| {
            (mark == MARK && (TABLE_BASE..TABLE_BASE + SLOTS).contains(&table))
                .then(|| table - TABLE_BASE)
        };
        let found: BTreeSet<u32> = rules
            .iter()
            .filter_map(|r| slot_of(r.table, r.mark))
            .chain(routes.iter().filter_map(|r| slot_of(r.table, r.mark)))
            .collect();
        for other in found {
            // A slot whose lock we can take belongs to a dead forwarder;
            // holding its lock while clearing keeps a new one out of it.
            let _held = if other == slot {
                None
            } else {
                match lock_slot(other) {
                    Ok(Some(fd)) => Some(fd),
                    Ok(None) => continue,
                    Err(error) => return Err(SourceIpError::Lock { slot: other, error }),
                }
            };
            let table = TABLE_BASE + other;
            for r in rules.iter().filter(|r| r.mark == MARK && r.table == table) {
                self.rtnl
                    .delete_rule_message(r.message.clone())
                    .map_err(|error| SourceIpError::ClearRule { table, error })?;
            }
            for r in routes.iter().filter(|r| r.mark == MARK && r.table == table) {
                self.rtnl
                    .delete_route_message(r.message.clone())
                    .map_err(|error| SourceIpError::ClearRoute { table, error })?;
            }
            if other != slot {
                tracing::info!(
                    table,
                    "removed the rules and routes of a forwarder that did not clean up"
                );
            }
        }
        Ok(())
    }

    /// Removes everything of our own table, as found in a fresh dump.
    pub(super) fn clear_own(&mut self) {
        let table = self.table;
        match self.rtnl.rules() {
            Ok(rules) => {
                for r in rules
                    .into_iter()
                    .filter(|r| r.mark == MARK && r.table == table)
                {
                    if let Err(e) = self.rtnl.delete_rule_message(r.message) {
                        tracing::warn!(table, error = %e, "cannot remove a routing rule");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the routing rules to remove ours"),
        }
        match self.rtnl.routes() {
            Ok(routes) => {
                for r in routes
                    .into_iter()
                    .filter(|r| r.mark == MARK && r.table == table)
                {
                    if let Err(e) = self.rtnl.delete_route_message(r.message) {
                        tracing::warn!(table, error = %e, "cannot remove a route");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the routes to remove ours"),
        }
    }
}

/// Whether transparent sockets of the child's family can be made here.
fn probe_transparent(child: IpAddr) -> io::Result<()> {
    let domain = socket2::Domain::for_address(SocketAddr::new(child, 0));
    let s = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
    if child.is_ipv6() {
        s.set_ip_transparent_v6(true)
    } else {
        s.set_ip_transparent_v4(true)
    }
}
