//! The routing thread inside the namespace: it alone talks netlink, adding
//! and removing the forwarder's rules and routes as the event loop asks.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::sync::oneshot;

use super::error::SourceIpError;
use super::rules::{describe, Ports};
use super::slot::{self, Slot, MARK};
use crate::rtnl::{LocalRoute, Rtnl};

/// The two metrics a client address's route is made under: when it must
/// change (a reload gave it a new preferred source), the new one is made
/// beside the old one, under the other metric, before the old one goes, so
/// replies never lack a route and nothing is ever replaced. Never 0: a
/// deletion without a metric matches any.
const METRICS: [u32; 2] = [1, 2];

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
    /// The client addresses we made a route for, and its metric.
    clients: HashMap<IpAddr, u32>,
    /// Held while the process lives.
    _slot: Slot,
}

impl Routes {
    pub(super) fn open(ports: Ports, child: IpAddr) -> Result<Self, SourceIpError> {
        let mut rtnl = Rtnl::open().map_err(|error| SourceIpError::Netlink { error })?;
        probe_transparent(child).map_err(|error| SourceIpError::Transparent { error })?;
        let slot = slot::take(&mut rtnl)?;
        let number = slot.number;
        let mut routes = Routes {
            rtnl,
            ports,
            table: slot.table,
            local: HashMap::new(),
            clients: HashMap::new(),
            _slot: slot,
        };
        if let Err(e) = routes.set_up(child) {
            routes.clear_own();
            return Err(e);
        }
        tracing::debug!(
            slot = number,
            table = routes.table,
            "keeping client addresses"
        );
        Ok(routes)
    }

    /// The rules of the forwarder's life (UDP's `iif lo` ones), and those
    /// of the first child IP.
    fn set_up(&mut self, child: IpAddr) -> Result<(), SourceIpError> {
        for v6 in [false, true] {
            for rule in self.ports.local_rules(v6, self.table) {
                match self.rtnl.add_rule(&rule) {
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
        self.add_rules(child)
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
                let _ = done.send(self.add_route(client, child));
            }
            Op::DeleteRoute(client) => {
                if let Some(metric) = self.clients.remove(&client) {
                    self.delete_route(client, metric);
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

    /// Makes `client`'s route toward `child`, beside the one it has (which
    /// then goes); whether it is there. One of someone else's with its
    /// address and metric in our table is left alone: the client keeps the
    /// namespace's own address.
    fn add_route(&mut self, client: IpAddr, child: IpAddr) -> bool {
        let old = self.clients.get(&client).copied();
        let route = LocalRoute {
            to: client,
            table: self.table,
            mark: MARK,
            metric: if old == Some(METRICS[0]) {
                METRICS[1]
            } else {
                METRICS[0]
            },
            prefsrc: self
                .local
                .get(&child)
                .copied()
                .unwrap_or(false)
                .then_some(child),
        };
        if let Err(e) = self.rtnl.add_route(&route) {
            tracing::debug!(%client, error = %e, "cannot add a route; this client keeps the namespace's own address");
            return false;
        }
        self.clients.insert(client, route.metric);
        if let Some(metric) = old {
            self.delete_route(client, metric);
        }
        true
    }

    /// Deletes our route for `client` made under `metric`.
    fn delete_route(&mut self, client: IpAddr, metric: u32) {
        let route = LocalRoute {
            to: client,
            table: self.table,
            mark: MARK,
            metric,
            prefsrc: None,
        };
        if let Err(e) = self.rtnl.delete_route(&route) {
            tracing::debug!(%client, error = %e, "cannot delete a route");
        }
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

    /// Removes everything of ours in our table (what carries [`MARK`]), as
    /// found in a fresh dump.
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
