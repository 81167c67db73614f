//! Sockets for the container side, created inside the namespace.
//!
//! A socket belongs to the network namespace of the thread that created it,
//! whatever thread uses it later. One thread joins the namespace and does
//! nothing but `socket(2)`; the event loop connects, reads and writes. No
//! second process, no per-connection IPC: the thread keeps a few sockets of
//! each kind ready, so a new connection usually just takes one.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use netns_util::{Netns, NetnsError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

/// Sockets kept ready per kind.
const POOL: usize = 32;

type Reply = oneshot::Sender<io::Result<OwnedFd>>;

enum Request {
    /// Make one now and send it back.
    Make(Kind, Reply),
    /// Top the pool of this kind up.
    Refill(Kind),
}

/// IPv4 or IPv6, TCP or UDP, plain or transparent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    v6: bool,
    udp: bool,
    transparent: bool,
}

/// How many kinds there are.
const KINDS: usize = 8;

impl Kind {
    fn new(domain: Domain, ty: Type, transparent: bool) -> Self {
        Kind {
            v6: domain == Domain::IPV6,
            udp: ty == Type::DGRAM,
            transparent,
        }
    }

    fn index(self) -> usize {
        usize::from(self.v6) * 4 + usize::from(self.udp) * 2 + usize::from(self.transparent)
    }

    fn make(self) -> io::Result<OwnedFd> {
        let domain = if self.v6 { Domain::IPV6 } else { Domain::IPV4 };
        let (ty, proto) = if self.udp {
            (Type::DGRAM, Protocol::UDP)
        } else {
            (Type::STREAM, Protocol::TCP)
        };
        let socket = Socket::new(domain, ty.nonblocking().cloexec(), Some(proto))?;
        if !self.udp {
            // Set before connect, here off the event loop.
            socket.set_tcp_nodelay(true)?;
        }
        if self.transparent {
            // Set here, off the event loop: binding to the client's address
            // is then the only extra system call per connection.
            if self.v6 {
                socket.set_ip_transparent_v6(true)?;
            } else {
                socket.set_ip_transparent_v4(true)?;
            }
            if !self.udp {
                // A client's address and port may still be held by an
                // earlier connection's socket in TIME_WAIT, or be in use
                // toward another published port.
                socket.set_reuse_address(true)?;
            }
        }
        Ok(socket.into())
    }
}

#[derive(Debug)]
struct Pools {
    ready: [Mutex<Vec<OwnedFd>>; KINDS],
    refilling: [AtomicBool; KINDS],
    last_used: Mutex<Instant>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            ready: Default::default(),
            refilling: Default::default(),
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// Hands out sockets created in the namespace.
#[derive(Debug, Clone)]
pub struct SocketFactory {
    requests: mpsc::Sender<Request>,
    pools: Arc<Pools>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Make(k, _) => write!(f, "Make({k:?})"),
            Request::Refill(k) => write!(f, "Refill({k:?})"),
        }
    }
}

impl SocketFactory {
    /// Starts the thread inside `netns`.
    ///
    /// # Errors
    ///
    /// Fails at once when the namespace cannot be joined (for example, for
    /// lack of privilege) or the thread cannot be started.
    pub fn start(netns: &Netns) -> Result<Self, NetnsError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let pools = Arc::new(Pools::default());
        let shared = pools.clone();
        netns.spawn("rootlessport-ns", move || {
            // Ends when every sender is gone.
            for req in rx {
                match req {
                    Request::Make(kind, reply) => {
                        let _ = reply.send(kind.make());
                    }
                    Request::Refill(kind) => {
                        let i = kind.index();
                        let have = lock(&shared.ready[i]).len();
                        let fresh: Vec<OwnedFd> =
                            (have..POOL).map_while(|_| kind.make().ok()).collect();
                        lock(&shared.ready[i]).extend(fresh);
                        shared.refilling[i].store(false, Ordering::Release);
                    }
                }
            }
        })?;
        Ok(SocketFactory {
            requests: tx,
            pools,
        })
    }

    /// A new non-blocking, close-on-exec socket inside the namespace.
    ///
    /// # Errors
    ///
    /// `socket(2)` failed inside the namespace (e.g. EMFILE), or the
    /// namespace thread is gone.
    pub async fn socket(&self, domain: Domain, ty: Type) -> io::Result<OwnedFd> {
        self.get(Kind::new(domain, ty, false)).await
    }

    /// As [`socket`](Self::socket), with IP_TRANSPARENT (or IPV6_TRANSPARENT)
    /// set, and SO_REUSEADDR for TCP: ready to be bound to a client's
    /// address.
    pub(crate) async fn transparent_socket(&self, domain: Domain, ty: Type) -> io::Result<OwnedFd> {
        self.get(Kind::new(domain, ty, true)).await
    }

    async fn get(&self, kind: Kind) -> io::Result<OwnedFd> {
        let i = kind.index();
        *lock(&self.pools.last_used) = Instant::now();
        let pooled = {
            let mut ready = lock(&self.pools.ready[i]);
            let fd = ready.pop();
            (fd, ready.len())
        };
        if pooled.1 < POOL / 2 && !self.pools.refilling[i].swap(true, Ordering::AcqRel) {
            let _ = self.requests.send(Request::Refill(kind));
        }
        if let Some(fd) = pooled.0 {
            return Ok(fd);
        }
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Make(kind, tx))
            .map_err(|_| io::Error::other("the namespace thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the namespace thread is gone"))?
    }
}

impl SocketFactory {
    /// Closes every pooled socket when none was asked for during `idle`: a
    /// burst's sockets do not stay open for good.
    pub fn trim_if_idle(&self, idle: Duration) {
        if lock(&self.pools.last_used).elapsed() < idle {
            return;
        }
        for pool in &self.pools.ready {
            let drained = std::mem::take(&mut *lock(pool));
            drop(drained);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
