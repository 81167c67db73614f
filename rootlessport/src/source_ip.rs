//! Keeping client addresses: the socket toward the container takes the
//! client's address and port as its own (IP_TRANSPARENT), so the service
//! sees who is really calling, and the namespace routes the service's
//! replies to such clients back to that socket.
//!
//! Inside the namespace, every rule and route made here carries the mark
//! [`MARK`] in its protocol field and lives in, or points at, this
//! forwarder's table `TABLE_BASE + slot`:
//!
//! - per child IP C (while it is the target, or has connections or flows):
//!   `from C ipproto P sport S lookup T` for each protocol P and range S of
//!   published container ports. Replies carry C as their source (TCP
//!   always; UDP from a socket bound to C; and everything a container
//!   behind a bridge sends, which is forwarded here);
//! - for the forwarder's life: `iif lo ipproto udp sport S lookup T` for
//!   each UDP range and family: a UDP service bound to all addresses
//!   replies with no source chosen yet, which no `from` rule matches;
//! - in T, per current client address X: `local X dev lo [src C]`. C is
//!   the preferred source where it is an address of this namespace, so
//!   such a reply gets C as its source (after a reload, a client's next
//!   connection or flow makes its route again with the new C).
//!
//! A lookup in T that finds no route falls through to the next rule, so
//! whatever the service sends from its published ports to anyone who is
//! not a current client leaves by the namespace's own routes. A client
//! address's route is counted: it lives while the address has connections
//! or flows, and [`LINGER`] longer (a closed socket still exchanges FINs,
//! and a new connection from the same address needs no netlink round trip).
//!
//! A forwarder owns its slot through an abstract unix socket bound inside
//! the namespace (abstract names are per network namespace, and the kernel
//! frees them when the process dies, even by SIGKILL). At start it clears
//! everything marked for its own slot, and for every other slot whose name
//! it can bind (a forwarder that died without cleaning up); at exit it
//! clears its slot. Two forwarders on one namespace have two slots: their
//! rules and routes never touch.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use netns_util::{Netns, NetnsError};
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use slirp_opts::{Forward, Protocol};
use tokio::sync::{oneshot, OnceCell};

use crate::rtnl::{LocalRoute, Rtnl, Rule};

/// The protocol field of every rule and route we add (unassigned in
/// iproute2's rt_protos).
pub const MARK: u8 = 82;
/// Slot `n` uses table `TABLE_BASE + n` ("rp" in its high bytes).
pub const TABLE_BASE: u32 = 0x7270_0000;
/// How many forwarders may keep client addresses in one namespace at once.
pub const SLOTS: u32 = 1024;
/// Where our rules sit: before the main table (32766), after local (0).
pub const PRIORITY: u32 = 29296;
/// How long a client address's route outlives its last connection or flow.
pub const LINGER: Duration = Duration::from_secs(60);
/// At most this many client addresses have routes at once; past it, new
/// addresses keep the namespace's own (a client with a whole IPv6 prefix
/// must not fill the kernel's tables).
pub const MAX_CLIENTS: usize = 16384;

/// Why client addresses cannot be kept in this namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceIpError {
    /// The thread inside the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The thread inside the namespace could not start, or ended.
    #[error("the routing thread inside the namespace ended before it was ready")]
    Thread,
    /// No rtnetlink socket.
    #[error("cannot open a netlink socket inside the namespace: {0}")]
    Netlink(io::Error),
    /// IP_TRANSPARENT refused.
    #[error("the namespace refuses transparent sockets{hint}: {0}", hint = needs_admin(.0))]
    Transparent(io::Error),
    /// Every slot is taken.
    #[error("all {SLOTS} slots of the namespace are taken by other forwarders")]
    NoSlot,
    /// The slot's lock socket.
    #[error("cannot bind the lock of slot {slot} inside the namespace: {source}")]
    Lock {
        /// The slot.
        slot: u32,
        /// The error.
        source: nix::Error,
    },
    /// Listing the rules.
    #[error("cannot list the namespace's routing rules: {0}")]
    ListRules(io::Error),
    /// Listing the routes.
    #[error("cannot list the namespace's routes: {0}")]
    ListRoutes(io::Error),
    /// Removing a leftover rule.
    #[error("cannot remove a routing rule of table {table} left by an earlier forwarder{}: {source}", needs_admin(.source))]
    ClearRule {
        /// Its table.
        table: u32,
        /// The error.
        source: io::Error,
    },
    /// Removing a leftover route.
    #[error("cannot remove a route of table {table} left by an earlier forwarder{}: {source}", needs_admin(.source))]
    ClearRoute {
        /// Its table.
        table: u32,
        /// The error.
        source: io::Error,
    },
    /// Adding a rule.
    #[error("the namespace refuses the routing rule {rule}{}: {source}", needs_admin(.source))]
    AddRule {
        /// The rule, as `ip rule` would show it.
        rule: String,
        /// The error.
        source: io::Error,
    },
}

/// A hint after EPERM, and the missing family after EAFNOSUPPORT.
fn needs_admin(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(nix::libc::EPERM | nix::libc::EACCES) => {
            " (it needs CAP_NET_ADMIN in the namespace's owning user namespace)"
        }
        Some(nix::libc::EAFNOSUPPORT) => " (no IPv6 there)",
        _ => "",
    }
}

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
    fn child_rules(&self, child: IpAddr, table: u32) -> Vec<Rule> {
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
    fn local_rules(&self, v6: bool, table: u32) -> Vec<Rule> {
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
fn describe(rule: &Rule) -> String {
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

/// The client address to keep, if it can be: IPv4-mapped addresses are
/// taken as IPv4; loopback clients never look like loopback inside
/// (CVE-2021-20199), and a client of the other family than the child IP,
/// an unspecified, multicast or broadcast address, an IPv6 link-local one
/// (meaningless in another namespace) or the child IP itself keep the
/// namespace's own address.
pub(crate) fn keepable(client: IpAddr, child: IpAddr) -> Option<IpAddr> {
    let client = client.to_canonical();
    let refused = client.is_loopback()
        || client.is_unspecified()
        || client.is_multicast()
        || client.is_ipv4() != child.is_ipv4()
        || client == child
        || match client {
            IpAddr::V4(v4) => v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
    (!refused).then_some(client)
}

/// Work for the thread inside the namespace.
enum Op {
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

/// An address that a rule or route exists for, and how many hold it.
#[derive(Debug)]
struct Use {
    users: usize,
    idle_since: Instant,
    /// The child IP it was made for (a client's route has it as preferred
    /// source, where it is local).
    via: IpAddr,
    /// Set once the netlink answer is in: whether it is there.
    ready: Arc<OnceCell<bool>>,
}

impl Use {
    fn new(via: IpAddr, ready: OnceCell<bool>) -> Self {
        Use {
            users: 0,
            idle_since: Instant::now(),
            via,
            ready: Arc::new(ready),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<IpAddr, Use>,
    children: HashMap<IpAddr, Use>,
    /// Whether [`MAX_CLIENTS`] was reached (and said so) once.
    full_once: bool,
}

#[derive(Debug)]
struct Shared {
    ops: mpsc::Sender<Op>,
    state: Mutex<State>,
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

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The event loop's handle: leases of client addresses.
#[derive(Debug, Clone)]
pub(crate) struct SourceIps(Arc<Shared>);

/// Holds a client address's route and its child IP's rules; released on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    shared: Arc<Shared>,
    client: IpAddr,
    child: IpAddr,
}

impl Lease {
    /// Where the socket toward the container binds: the client's address
    /// and `port`.
    pub(crate) fn source(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.client, port)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        let now = Instant::now();
        let State {
            clients, children, ..
        } = &mut *state;
        for (map, ip) in [(clients, self.client), (children, self.child)] {
            if let Some(u) = map.get_mut(&ip) {
                u.users -= 1;
                if u.users == 0 {
                    u.idle_since = now;
                }
            }
        }
    }
}

impl SourceIps {
    /// Starts the routing thread inside `netns`: takes a slot, clears what
    /// dead forwarders left, and adds the rules for `child`. Returns once
    /// that is done, or with why it cannot be.
    pub(crate) fn start(
        netns: &Netns,
        ports: Ports,
        child: IpAddr,
    ) -> Result<(SourceIps, SourceIpsGuard), SourceIpError> {
        let (ops_tx, ops_rx) = mpsc::channel::<Op>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = netns.spawn("rootlessport-routes", move || {
            let mut routes = match Routes::open(ports, child) {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Ends at Stop, or when every handle is gone.
            for op in ops_rx {
                if !routes.serve(op) {
                    break;
                }
            }
            routes.clear_own();
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(SourceIpError::Thread);
            }
        }
        let mut state = State::default();
        state
            .children
            .insert(child, Use::new(child, OnceCell::new_with(Some(true))));
        let shared = Arc::new(Shared {
            ops: ops_tx,
            state: Mutex::new(state),
        });
        let guard = SourceIpsGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((SourceIps(shared), guard))
    }

    /// A lease on `client`'s route toward `child`, or `None` when this
    /// client keeps the namespace's own address (see [`keepable`]) or the
    /// route or rules could not be made. An address that already has
    /// connections or flows (or had them within [`LINGER`]) costs a map
    /// lookup; only a new one waits for the namespace.
    pub(crate) async fn lease(&self, client: IpAddr, child: IpAddr) -> Option<Lease> {
        let client = keepable(client, child)?;
        let (rules, route) = {
            let mut state = self.0.state();
            if state.clients.len() >= MAX_CLIENTS && !state.clients.contains_key(&client) {
                if !std::mem::replace(&mut state.full_once, true) {
                    tracing::warn!(
                        "{MAX_CLIENTS} client addresses have routes; until some go idle, new ones keep the namespace's own address"
                    );
                }
                return None;
            }
            let c = state
                .children
                .entry(child)
                .or_insert_with(|| Use::new(child, OnceCell::new()));
            c.users += 1;
            let rules = c.ready.clone();
            let k = state
                .clients
                .entry(client)
                .or_insert_with(|| Use::new(child, OnceCell::new()));
            k.users += 1;
            if k.via != child {
                // Retargeted (a reload): the route is made again, with the
                // new child IP as its preferred source.
                k.via = child;
                k.ready = Arc::new(OnceCell::new());
            }
            (rules, k.ready.clone())
        };
        // From here on, dropping it gives both back.
        let lease = Lease {
            shared: self.0.clone(),
            client,
            child,
        };
        if !self.ensure(&rules, |done| Op::AddRules(child, done)).await {
            return None;
        }
        let added = self
            .ensure(&route, |done| Op::AddRoute {
                client,
                child,
                done,
            })
            .await;
        added.then_some(lease)
    }

    /// Whether `cell` says the rule or route is there, asking the thread
    /// once when nobody has yet.
    async fn ensure(
        &self,
        cell: &OnceCell<bool>,
        op: impl FnOnce(oneshot::Sender<bool>) -> Op,
    ) -> bool {
        if let Some(&there) = cell.get() {
            return there;
        }
        *cell
            .get_or_init(|| async {
                let (done, answer) = oneshot::channel();
                if self.0.ops.send(op(done)).is_err() {
                    return false;
                }
                answer.await.unwrap_or(false)
            })
            .await
    }

    /// Makes the rules for ports published while serving; `false` when
    /// they could not be made.
    pub(crate) async fn add_ports(&self, more: Ports) -> bool {
        let (done, answer) = oneshot::channel();
        if self.0.ops.send(Op::AddPorts(more, done)).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Removes the routes of client addresses idle for [`LINGER`] and the
    /// rules of child IPs that are neither `target` nor used any more.
    pub(crate) fn sweep(&self, target: IpAddr) {
        let now = Instant::now();
        let mut state = self.0.state();
        let ops = &self.0.ops;
        let expired = |ip: IpAddr, u: &Use| {
            u.users == 0 && ip != target && now.duration_since(u.idle_since) >= LINGER
        };
        // Deletions are queued under the lock, so a later add for the same
        // address always follows them.
        state.clients.retain(|&ip, u| {
            if !expired(ip, u) {
                return true;
            }
            if u.ready.get() != Some(&false) {
                let _ = ops.send(Op::DeleteRoute(ip));
            }
            false
        });
        state.children.retain(|&ip, u| {
            if !expired(ip, u) {
                return true;
            }
            if u.ready.get() != Some(&false) {
                let _ = ops.send(Op::DeleteRules(ip));
            }
            false
        });
    }
}

/// Clears the forwarder's rules and routes and ends the routing thread
/// when dropped.
#[derive(Debug)]
pub(crate) struct SourceIpsGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<Option<()>>>,
}

impl Drop for SourceIpsGuard {
    fn drop(&mut self) {
        let _ = self.shared.ops.send(Op::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The routing thread's state, inside the namespace.
struct Routes {
    rtnl: Rtnl,
    ports: Ports,
    table: u32,
    /// Whether each child IP with rules is an address of this namespace.
    local: HashMap<IpAddr, bool>,
    /// Holds the slot while the process lives.
    _lock: OwnedFd,
}

impl Routes {
    fn open(ports: Ports, child: IpAddr) -> Result<Self, SourceIpError> {
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
                        Err(source) => {
                            return Err(SourceIpError::AddRule {
                                rule: describe(&rule),
                                source,
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
    fn serve(&mut self, op: Op) -> bool {
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
                Err(source) => {
                    return Err(SourceIpError::AddRule {
                        rule: describe(rule),
                        source,
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
                .map_err(|source| SourceIpError::AddRule {
                    rule: describe(&rule),
                    source,
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
                    Err(source) => {
                        return Err(SourceIpError::Lock {
                            slot: other,
                            source,
                        })
                    }
                }
            };
            let table = TABLE_BASE + other;
            for r in rules.iter().filter(|r| r.mark == MARK && r.table == table) {
                self.rtnl
                    .delete_rule_message(r.message.clone())
                    .map_err(|source| SourceIpError::ClearRule { table, source })?;
            }
            for r in routes.iter().filter(|r| r.mark == MARK && r.table == table) {
                self.rtnl
                    .delete_route_message(r.message.clone())
                    .map_err(|source| SourceIpError::ClearRoute { table, source })?;
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
    fn clear_own(&mut self) {
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

/// The lowest free slot and its lock.
fn take_slot() -> Result<(u32, OwnedFd), SourceIpError> {
    for slot in 0..SLOTS {
        match lock_slot(slot) {
            Ok(Some(fd)) => return Ok((slot, fd)),
            Ok(None) => continue,
            Err(source) => return Err(SourceIpError::Lock { slot, source }),
        }
    }
    Err(SourceIpError::NoSlot)
}

/// Binds slot `slot`'s abstract name in the calling thread's namespace:
/// `None` when a live forwarder holds it.
fn lock_slot(slot: u32) -> nix::Result<Option<OwnedFd>> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let name = format!("rootlessport/keep-source-ip/{:08x}", TABLE_BASE + slot);
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    match bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        Ok(()) => Ok(Some(fd)),
        Err(nix::Error::EADDRINUSE) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn who_keeps_their_address() {
        let v4 = ip("10.0.2.100");
        let v6 = ip("fd00::100");
        for (client, child, kept) in [
            ("192.0.2.2", v4, Some("192.0.2.2")),
            ("::ffff:192.0.2.2", v4, Some("192.0.2.2")),
            ("2001:db8::2", v6, Some("2001:db8::2")),
            // CVE-2021-20199: loopback never looks like loopback inside.
            ("127.0.0.1", v4, None),
            ("127.3.2.1", v4, None),
            ("::ffff:127.0.0.1", v4, None),
            ("::1", v6, None),
            // The other family than the child IP.
            ("2001:db8::2", v4, None),
            ("192.0.2.2", v6, None),
            ("::ffff:192.0.2.2", v6, None),
            // No address to route back to.
            ("0.0.0.0", v4, None),
            ("255.255.255.255", v4, None),
            ("224.0.0.1", v4, None),
            ("fe80::1", v6, None),
            ("10.0.2.100", v4, None),
        ] {
            assert_eq!(
                keepable(ip(client), child),
                kept.map(ip),
                "{client} toward {child}"
            );
        }
    }

    #[test]
    fn ports_merge_into_ranges_per_protocol() {
        let fwd = |proto, container_port| Forward {
            proto,
            host_ip: None,
            host_port: 1,
            container_port,
        };
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
}

#[cfg(test)]
mod union_tests {
    use super::Ports;
    use slirp_opts::{Forward, Protocol};

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
