//! The current child IP, shared by every forward and changed by a reload.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The child IP a forwarder dials, inside the namespace: shared by every
/// forward, and changed for all at once by a reload (the reload socket, or
/// [`set`](Self::set) from [`Forwarder::child_ip`](crate::Forwarder::child_ip)).
/// Clones share it.
#[derive(Debug, Clone)]
pub struct ChildIp(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    ip: RwLock<IpAddr>,
    generation: AtomicU64,
}

impl ChildIp {
    /// A child IP of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        ChildIp(Arc::new(Inner {
            ip: RwLock::new(ip),
            generation: AtomicU64::new(0),
        }))
    }

    /// The current child IP.
    pub fn ip(&self) -> IpAddr {
        *self.0.ip.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Points every forward at `ip` for new connections and flows
    /// (connections open already keep going where they went).
    pub fn set(&self, ip: IpAddr) {
        *self.0.ip.write().unwrap_or_else(|p| p.into_inner()) = ip;
        self.0.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes each time the child IP is set (UDP flows are rebuilt then).
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}
