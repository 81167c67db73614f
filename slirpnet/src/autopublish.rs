//! Publishing what the namespace listens on (`--publish-auto`): a thread
//! scans the namespace's listening sockets every [`AutoPublish::interval`]
//! (50 ms by default) and, when the set changed, forwards each new port to
//! the same port on the host and stops forwarding each port nobody listens
//! on any more, through the session's one port handler
//! ([`Network::add_ports`] / [`Network::remove_ports`]).
//!
//! Forwarded: every TCP port in LISTEN and every UDP port bound and not
//! connected, on a wildcard address or the namespace's own IPv4 address
//! (an IPv6 wildcard socket that also takes IPv4 included). Not forwarded:
//! loopback and other private addresses (a forwarder dials the namespace's
//! own address and never loopback), IPv6-only sockets (both handlers dial
//! the namespace's IPv4 address; one warning each), the excluded ports, the
//! namespace's ephemeral range (`ip_local_port_range`, where its own
//! outgoing connections and UDP clients bind), ports published explicitly
//! (as host or as namespace port), and ports that cannot be had on the host
//! (one warning each, retried every second). An automatic forward removed
//! by hand stays removed while its socket stays open; one published by hand
//! as it is becomes the caller's ([`Network::add_ports`]). A scan takes no
//! lock; the network is locked only when something changed, and once a
//! second to follow changes made by hand.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slirp_opts::{Forward, PortKey, Protocol};

use crate::listening::{Listener, Reach, Scanner};
use crate::network::{Network, SharedNetwork};
use crate::options::AutoPublish;

/// How long a port that could not be forwarded (taken on the host) waits
/// before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Parses a port list such as `22,8000-8010,9090` into ranges.
///
/// # Errors
///
/// [`AutoPublishError::Exclude`] for a part that is not a port (1-65535)
/// or a range of them in order.
pub fn parse_port_list(text: &str) -> Result<Vec<RangeInclusive<u16>>, AutoPublishError> {
    let bad = || AutoPublishError::Exclude(text.to_owned());
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
    let mut out = Vec::new();
    for part in text.split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?);
                if a > b {
                    return Err(bad());
                }
                a..=b
            }
            None => {
                let p = port(part).ok_or_else(bad)?;
                p..=p
            }
        };
        out.push(range);
    }
    Ok(out)
}

/// A failure to start publishing automatically.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutoPublishError {
    /// A port list is not one.
    #[error("invalid port list {0:?} (expected ports and ranges such as 22,8000-8010)")]
    Exclude(String),
    /// The socket that lists the namespace's sockets cannot be made inside
    /// it (the inner message names the namespace; no source, as it is
    /// printed here).
    #[error("cannot watch what the namespace listens on: {0}")]
    Scan(netns_util::NetnsError),
    /// The first scan failed.
    #[error("cannot list the listening sockets of network namespace {}: {error}", netns.display())]
    Dump {
        /// The namespace.
        netns: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the thread that publishes ports: {0}")]
    Thread(std::io::Error),
}

/// Publishes a session's listening ports while it runs (see the module
/// docs). Dropping it stops the thread; the forwards it made stay until the
/// network is torn down.
///
/// ```no_run
/// use std::sync::{Arc, Mutex};
/// use slirpnet::{plan, AutoPublish, AutoPublisher, NetworkOptions, SetupOptions, Target};
///
/// let network = NetworkOptions::parse(&[] as &[&str], false, &[] as &[&str], |_| false)?;
/// let opts = SetupOptions::new(network).with_publish_auto(AutoPublish::new("127.0.0.1".parse()?));
/// let net = plan(&opts)?.start(Target::Path { netns: "/run/netns/demo".into(), userns: None })?;
/// let shared = Arc::new(Mutex::new(Some(net)));
/// let publisher = AutoPublisher::start(&shared)?;
/// // ... the namespace's listeners are published while `publisher` lives ...
/// drop(publisher);
/// if let Some(net) = shared.lock().unwrap().take() {
///     net.teardown();
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AutoPublisher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AutoPublisher {
    /// Starts publishing for `network` when it was set up with
    /// [`SetupOptions::publish_auto`](crate::SetupOptions::publish_auto);
    /// `None` otherwise. The scanner's sockets are made inside the
    /// namespace here, and a first scan is done, so that a failure is
    /// reported now.
    ///
    /// # Errors
    ///
    /// The namespace cannot be entered to make the scanner's socket, the
    /// first scan fails, or the thread cannot be started.
    pub fn start(network: &SharedNetwork) -> Result<Option<Self>, AutoPublishError> {
        let (opts, target, guest) = {
            let guard = network.lock().unwrap_or_else(|p| p.into_inner());
            let Some(net) = guard.as_ref() else {
                return Ok(None);
            };
            let Some(opts) = net.auto_publish() else {
                return Ok(None);
            };
            (opts.clone(), net.target().clone(), net.info().guest)
        };
        let mut scanner = Scanner::open(&target).map_err(AutoPublishError::Scan)?;
        let dump = |error| AutoPublishError::Dump {
            netns: target.netns_path(),
            error,
        };
        let mut first = Vec::new();
        scanner.scan(&mut first).map_err(dump)?;
        scanner.ephemeral_range().map_err(dump)?;
        let (stop, stopped) = mpsc::channel();
        let shared = network.clone();
        let thread = std::thread::Builder::new()
            .name("slirpnet-publish-auto".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let mut state = State::new(opts, guest);
                state.run(&mut scanner, &shared, &stopped);
            })
            .map_err(AutoPublishError::Thread)?;
        Ok(Some(AutoPublisher {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }
}

impl Drop for AutoPublisher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port as the publisher tracks it.
type Port = (Protocol, u16);

struct State {
    opts: AutoPublish,
    guest: Ipv4Addr,
    /// The forwardable ports of the last scan.
    wanted: BTreeSet<Port>,
    /// Ports that could not be forwarded: when to try again.
    retry: HashMap<Port, Instant>,
    /// Ports warned about as taken on the host: once each.
    warned: HashSet<Port>,
    /// Ports warned about as IPv6 only: once each while they are.
    warned_v6: HashSet<Port>,
    /// Ports whose forward could not be removed, warned about once.
    warned_remove: HashSet<Port>,
    /// When the network was last compared with the scan.
    synced: Instant,
    /// What this publisher forwarded (and saw forwarded last time).
    published: BTreeSet<Port>,
    /// Automatic forwards removed by hand (`port rm`): not made again while
    /// their socket stays open.
    withdrawn: BTreeSet<Port>,
}

impl State {
    fn new(opts: AutoPublish, guest: Ipv4Addr) -> Self {
        State {
            opts,
            guest,
            wanted: BTreeSet::new(),
            retry: HashMap::new(),
            warned: HashSet::new(),
            warned_v6: HashSet::new(),
            warned_remove: HashSet::new(),
            synced: Instant::now(),
            published: BTreeSet::new(),
            withdrawn: BTreeSet::new(),
        }
    }

    fn run(&mut self, scanner: &mut Scanner, network: &SharedNetwork, stop: &mpsc::Receiver<()>) {
        let mut found = Vec::new();
        let mut first = true;
        let mut failing = false;
        loop {
            if !first {
                match stop.recv_timeout(self.opts.interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
            first = false;
            if let Err(e) = scanner.scan(&mut found) {
                // Once, not every 50 ms.
                if !failing {
                    tracing::warn!("cannot list the namespace's listening sockets: {e}");
                }
                failing = true;
                continue;
            }
            failing = false;
            let ephemeral = scanner.ephemeral_range().unwrap_or((32768, 60999));
            let wanted = self.forwardable(&found, ephemeral);
            let now = Instant::now();
            let retry_due = self.retry.values().any(|&at| at <= now);
            // Besides changes, the network is compared once a second: a
            // forward removed or added by hand is then followed.
            if wanted == self.wanted && !retry_due && now - self.synced < RETRY_AFTER {
                continue;
            }
            self.wanted = wanted;
            self.synced = now;
            let mut guard = network.lock().unwrap_or_else(|p| p.into_inner());
            let Some(net) = guard.as_mut() else {
                return;
            };
            self.sync(net, now);
        }
    }

    /// The ports of `found` to forward, warning once about each IPv6-only
    /// one that nothing else makes forwardable.
    fn forwardable(&mut self, found: &[Listener], ephemeral: (u16, u16)) -> BTreeSet<Port> {
        let mut out = BTreeSet::new();
        let mut v6_only = Vec::new();
        for l in found {
            if self.opts.excludes(l.port) || (ephemeral.0..=ephemeral.1).contains(&l.port) {
                continue;
            }
            match l.reach(self.guest) {
                Reach::Forwardable => {
                    out.insert((l.proto, l.port));
                }
                Reach::Ipv6Only => v6_only.push((l.proto, l.port)),
                Reach::Private => {}
            }
        }
        v6_only.retain(|p| !out.contains(p));
        self.warned_v6.retain(|p| v6_only.contains(p));
        for p in v6_only {
            if self.warned_v6.insert(p) {
                tracing::warn!(
                    "not publishing {}/{}: it listens on IPv6 only, and forwards reach the namespace over IPv4",
                    p.1,
                    p.0
                );
            }
        }
        out
    }

    /// `p` forwarded to the same port on the host address.
    fn forward(&self, p: Port) -> Forward {
        Forward {
            proto: p.0,
            host_ip: Some(self.opts.host_ip),
            host_port: p.1,
            container_port: p.1,
        }
    }

    /// Makes the network's automatic forwards those of `self.wanted`.
    fn sync(&mut self, net: &mut Network, now: Instant) {
        let current: Vec<PortKey> = net.auto_forwards().collect();
        let current_ports: BTreeSet<Port> =
            current.iter().map(|k| (k.proto, k.host_port)).collect();
        // Forwarded by us, gone, and still listened on: removed by hand.
        for p in self.published.difference(&current_ports) {
            if self.wanted.contains(p) {
                self.withdrawn.insert(*p);
            }
        }
        self.published = current_ports;
        self.withdrawn.retain(|p| self.wanted.contains(p));
        self.warned_remove.retain(|p| self.published.contains(p));
        let gone: Vec<PortKey> = current
            .iter()
            .filter(|k| !self.wanted.contains(&(k.proto, k.host_port)))
            .copied()
            .collect();
        if !gone.is_empty() {
            match net.remove_auto(&gone) {
                Ok(()) => {
                    tracing::debug!(?gone, "stopped publishing");
                    for k in &gone {
                        self.published.remove(&(k.proto, k.host_port));
                    }
                }
                Err(e) => {
                    let mut new = false;
                    for k in &gone {
                        new |= self.warned_remove.insert((k.proto, k.host_port));
                    }
                    if new {
                        tracing::warn!("cannot stop publishing (tried again every second): {e}");
                    }
                }
            }
        }
        // Published explicitly already, as the host or the namespace port.
        let explicit: HashSet<Port> = net
            .info()
            .forwards
            .iter()
            .filter(|f| !f.auto)
            .map(|f| f.forward)
            .flat_map(|f| [(f.proto, f.host_port), (f.proto, f.container_port)])
            .collect();
        let retry = &self.retry;
        let new: Vec<Port> = self
            .wanted
            .iter()
            .copied()
            .filter(|p| {
                !self.published.contains(p) && !explicit.contains(p) && !self.withdrawn.contains(p)
            })
            .filter(|p| retry.get(p).is_none_or(|&at| at <= now))
            .collect();
        self.retry.retain(|p, _| self.wanted.contains(p));
        self.warned.retain(|p| self.wanted.contains(p));
        if new.is_empty() {
            return;
        }
        let forwards: Vec<Forward> = new.iter().map(|&p| self.forward(p)).collect();
        // All at once; when one fails, one by one, to find which.
        if net.add_auto(&forwards).is_ok() {
            tracing::debug!(?new, "published");
            for p in &new {
                self.retry.remove(p);
                self.published.insert(*p);
            }
            return;
        }
        for (p, f) in new.iter().zip(&forwards) {
            match net.add_auto(std::slice::from_ref(f)) {
                Ok(()) => {
                    self.retry.remove(p);
                    self.warned.remove(p);
                    self.published.insert(*p);
                }
                Err(e) => {
                    self.retry.insert(*p, now + RETRY_AFTER);
                    if self.warned.insert(*p) {
                        tracing::warn!(
                            "not publishing {}/{} yet (tried again every second): {e}",
                            p.1,
                            p.0
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list("22").unwrap(), vec![22..=22]);
        assert_eq!(
            parse_port_list("22,8000-8010, 9090").unwrap(),
            vec![22..=22, 8000..=8010, 9090..=9090]
        );
        for bad in ["", "0", "x", "10-5", "1-", "65536", "1,,2"] {
            assert!(parse_port_list(bad).is_err(), "{bad}");
        }
        let opts = AutoPublish {
            exclude: parse_port_list("8000-8010").unwrap(),
            ..AutoPublish::default()
        };
        assert!(opts.excludes(8005) && !opts.excludes(8011));
    }
}
