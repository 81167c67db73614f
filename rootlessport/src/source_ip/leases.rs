//! The event loop's side: leases of client addresses, counted, and the
//! requests they make of the routing thread.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use netns_util::Netns;
use tokio::sync::{oneshot, OnceCell};

use super::error::SourceIpError;
use super::routes::{Op, Routes};
use super::rules::Ports;

/// How long a client address's route outlives its last connection or flow.
pub const LINGER: Duration = Duration::from_secs(60);
/// At most this many client addresses have routes at once; past it, new
/// addresses keep the namespace's own (a client with a whole IPv6 prefix
/// must not fill the kernel's tables).
pub const MAX_CLIENTS: usize = 16384;

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
        // address always follows them. A client whose last route could not
        // be made may still have an earlier one (made before a reload):
        // the thread knows, and deletes what it made.
        state.clients.retain(|&ip, u| {
            if !expired(ip, u) {
                return true;
            }
            let _ = ops.send(Op::DeleteRoute(ip));
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
}
