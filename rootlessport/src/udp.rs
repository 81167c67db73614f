//! UDP: a flow per client address, each with its own socket inside the
//! namespace; 90 s idle timeout, and at most half of the fds left under the
//! soft fd limit across all ports (the flows idle longest go first). Datagrams are received in batches (recvmmsg,
//! up to 64 per system call) through one buffer per event loop, not one per
//! port or per flow; runs of equal-size datagrams go into the namespace as one
//! UDP GSO send, and replies (or everything, where GSO is refused) go out with
//! sendmmsg.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use socket2::{Domain, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::factory::SocketFactory;
use crate::mmsg::Slots;
use crate::source_ip::{Lease, SourceIps};
use crate::target::ChildIp;

/// A flow ends after this long without traffic either way (as in the Go helper).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Socket buffers asked for: bursts wait here instead of being dropped.
const SOCKET_BUFFER: usize = 4 << 20;
/// UDP GSO limits: segments per send, and bytes (an IPv4 datagram's payload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;

thread_local! {
    /// Whether UDP GSO works here; turned off at the first refusal.
    static GSO: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    /// The batch buffers. The event loop is single-threaded and no borrow is
    /// held across an await, so every port and flow shares them.
    static BATCH_BUF: RefCell<Slots> = RefCell::new(Slots::new());
}

/// The end of the GSO run that starts at `start`: datagrams of `lens[start]`
/// bytes, the last of which may be shorter but never empty (an empty
/// segment cannot be carried by GSO and would be lost), within GSO's limits.
pub(crate) fn gso_run(lens: &[usize], start: usize, end: usize) -> usize {
    let size = lens[start];
    if size == 0 {
        return start + 1;
    }
    let mut stop = start + 1;
    let mut total = size;
    while stop < end
        && lens[stop] > 0
        && lens[stop] <= size
        && stop - start < GSO_MAX_SEGMENTS
        && total + lens[stop] <= GSO_MAX_BYTES
    {
        total += lens[stop];
        stop += 1;
        if lens[stop - 1] < size {
            break;
        }
    }
    stop
}

/// Sends datagrams `range` of the batch on `fd`: to its connected peer, or
/// each to `to`. Into the namespace (connected flows), runs of equal-size
/// datagrams go out as one UDP GSO send, so the inner path is walked once
/// per run instead of once per datagram; the order is kept.
fn send(
    b: &mut Slots,
    fd: i32,
    range: std::ops::Range<usize>,
    to: Option<SocketAddr>,
    from: Option<IpAddr>,
) {
    if to.is_some() || range.len() < 2 || !GSO.get() {
        b.send(fd, range, to, from);
        return;
    }
    let mut i = range.start;
    while i < range.end {
        let end = gso_run(&b.lens, i, range.end);
        let size = b.lens[i];
        if end - i > 1 && size <= usize::from(u16::MAX) {
            match b.send_gso(fd, i..end, size as u16) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("UDP GSO refused; sending datagrams one by one");
                    GSO.set(false);
                    b.send(fd, i..range.end, None, None);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "udp send into the namespace"),
            }
        } else {
            b.send(fd, i..end, None, None);
        }
        i = end;
    }
}

/// Asks for large socket buffers: past `net.core.rmem_max`/`wmem_max` where
/// the namespace's owner grants CAP_NET_ADMIN, else as far as those allow.
fn grow_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let s = socket2::SockRef::from(socket);
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    }
}

/// Who a flow serves: the client, and the host address it sent to where
/// the listener reports it (wildcard listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Peer {
    client: SocketAddr,
    local: Option<IpAddr>,
}

#[derive(Debug)]
struct Flow {
    inner: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    reader: JoinHandle<()>,
    /// The client's route, when the flow keeps its address.
    _lease: Option<Lease>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Milliseconds since `epoch`, for cheap shared timestamps.
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// fds a forwarder needs besides its listeners and its UDP flows: the event
/// loop, the namespace thread and its pools, the reload and control
/// sockets, logging.
const BASELINE_FDS: u64 = 64;
/// The flow cap never goes below this (a tiny fd limit still forwards UDP)...
const MIN_FLOWS: usize = 8;
/// ...nor above this, whatever the fd limit (each flow is a socket and a task).
const MAX_FLOWS: usize = 1 << 16;

/// How many UDP flows a forwarder keeps at most, with `nofile` fds allowed
/// and `listeners` host sockets open: half of what is left, so that TCP
/// accepts (a socket each way, and pipes) always find fds however many
/// clients send UDP.
pub(crate) fn flow_cap(nofile: u64, listeners: usize) -> usize {
    let free = nofile.saturating_sub(listeners as u64 + BASELINE_FDS);
    usize::try_from(free / 2)
        .unwrap_or(MAX_FLOWS)
        .clamp(MIN_FLOWS, MAX_FLOWS)
}

/// The soft fd limit now (read at every new flow, so a limit changed while
/// serving is followed); the library never changes it.
fn nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Every UDP flow of a forwarder, across its ports. Bounded by
/// [`flow_cap`]: when full, the flows idle longest are closed to make room,
/// so clients sending from many addresses or ports take neither the fds
/// that TCP needs nor the new clients' place.
#[derive(Debug, Clone)]
pub(crate) struct FlowTable(Arc<Mutex<Table>>);

#[derive(Debug)]
struct Table {
    flows: HashMap<(u64, Peer), Flow>,
    /// Host sockets open (every forward's listener).
    listeners: usize,
    next_port: u64,
    epoch: Instant,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable(Arc::new(Mutex::new(Table {
            flows: HashMap::new(),
            listeners: 0,
            next_port: 0,
            epoch: Instant::now(),
        })))
    }
}

impl FlowTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many host sockets are open, for the cap.
    pub(crate) fn set_listeners(&self, n: usize) {
        self.lock().listeners = n;
    }

    /// Closes flows idle for [`IDLE_TIMEOUT`].
    pub(crate) fn sweep(&self) {
        let drained: Vec<Flow> = {
            let mut t = self.lock();
            let now = now_ms(t.epoch);
            let idle = IDLE_TIMEOUT.as_millis() as u64;
            let old: Vec<_> = t
                .flows
                .iter()
                .filter(|(_, f)| now.saturating_sub(f.last.load(Ordering::Relaxed)) >= idle)
                .map(|(k, _)| *k)
                .collect();
            old.iter().filter_map(|k| t.flows.remove(k)).collect()
        };
        drop(drained);
    }

    /// A port's share of the table; its flows go when it is dropped.
    fn port(&self) -> PortFlows {
        let mut t = self.lock();
        let id = t.next_port;
        t.next_port += 1;
        PortFlows {
            table: self.clone(),
            id,
            epoch: t.epoch,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().flows.len()
    }
}

impl Table {
    /// Room for one more flow: past the cap, the oldest eighth (idle
    /// longest) goes at once, so a flood of new clients costs one scan
    /// per eighth of the table, not one per client. The flows removed are
    /// returned, to be dropped outside the lock.
    fn make_room(&mut self, cap: usize) -> Vec<Flow> {
        if self.flows.len() < cap {
            return Vec::new();
        }
        let excess = self.flows.len() + 1 - cap;
        let evict = excess.max(cap / 8).max(1).min(self.flows.len());
        let mut by_age: Vec<(u64, (u64, Peer))> = self
            .flows
            .iter()
            .map(|(k, f)| (f.last.load(Ordering::Relaxed), *k))
            .collect();
        if evict < by_age.len() {
            by_age.select_nth_unstable_by_key(evict - 1, |(last, _)| *last);
        }
        by_age.truncate(evict);
        by_age
            .iter()
            .filter_map(|(_, k)| self.flows.remove(k))
            .collect()
    }
}

/// One port's flows in the shared table.
#[derive(Debug)]
struct PortFlows {
    table: FlowTable,
    id: u64,
    epoch: Instant,
}

impl PortFlows {
    /// Closes every flow of this port.
    fn clear(&self) {
        let drained: Vec<Flow> = {
            let mut t = self.table.lock();
            let mine: Vec<_> = t.flows.keys().filter(|k| k.0 == self.id).copied().collect();
            mine.iter().filter_map(|k| t.flows.remove(k)).collect()
        };
        drop(drained);
    }

    /// Whether `peer` has a flow here.
    fn has(&self, peer: Peer) -> bool {
        self.table.lock().flows.contains_key(&(self.id, peer))
    }

    /// Adds a flow, closing the ones idle longest when the table is full.
    fn insert(&self, peer: Peer, flow: Flow) {
        let cap = {
            let t = self.table.lock();
            flow_cap(nofile(), t.listeners)
        };
        let evicted = {
            let mut t = self.table.lock();
            let evicted = t.make_room(cap);
            t.flows.insert((self.id, peer), flow);
            evicted
        };
        if !evicted.is_empty() {
            tracing::debug!(
                evicted = evicted.len(),
                cap,
                "UDP flows at their cap; closed the ones idle longest"
            );
        }
        drop(evicted);
    }

    /// Room for one more flow, made before its socket is opened, so that
    /// the table never holds more sockets than the cap. Whether flows were
    /// closed for it: their sockets are only freed once their reply tasks
    /// have been dropped, which the caller must let the loop do (new flows
    /// often come without the loop ever waiting: pooled sockets are handed
    /// out at once).
    fn reserve(&self) -> bool {
        let cap = {
            let t = self.table.lock();
            flow_cap(nofile(), t.listeners)
        };
        let evicted = self.table.lock().make_room(cap);
        !evicted.is_empty()
    }
}

impl Drop for PortFlows {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Serves one host UDP port until the task is dropped. When it is dropped,
/// the host socket closes at once: the flows' reply tasks hold it weakly.
pub async fn serve(
    host: UdpSocket,
    container_port: u16,
    target: ChildIp,
    factory: SocketFactory,
    keep: Option<SourceIps>,
    table: FlowTable,
) {
    grow_buffers(&host);
    let host = Arc::new(host);
    // A flow is a client and the local address it sent to: on a wildcard
    // listener the same client may reach several of the host's addresses,
    // and each must be answered from its own.
    let flows = table.port();
    let epoch = flows.epoch;
    let mut generation = target.generation();
    loop {
        if host.readable().await.is_err() {
            return;
        }
        if target.generation() != generation {
            // Reloaded: new datagrams go to the new child IP.
            generation = target.generation();
            flows.clear();
        }
        loop {
            // Forward a batch to known flows; copy out what needs a new flow.
            let got = BATCH_BUF.with_borrow_mut(|b| {
                let n = host.try_io(Interest::READABLE, || b.receive(host.as_raw_fd()))?;
                let now = now_ms(epoch);
                let mut strangers = Vec::new();
                let t = flows.table.lock();
                let mut i = 0;
                while i < n {
                    let Some(from) = b.from[i] else {
                        i += 1;
                        continue;
                    };
                    let from = Peer {
                        client: from,
                        local: b.local[i],
                    };
                    let mut end = i + 1;
                    while end < n && b.from[end] == Some(from.client) && b.local[end] == from.local
                    {
                        end += 1;
                    }
                    match t.flows.get(&(flows.id, from)) {
                        Some(flow) => {
                            flow.last.store(now, Ordering::Relaxed);
                            send(b, flow.inner.as_raw_fd(), i..end, None, None);
                        }
                        None => strangers.extend((i..end).map(|k| (from, b.datagram(k).to_vec()))),
                    }
                    i = end;
                }
                Ok::<_, io::Error>((n, strangers))
            });
            match got {
                Ok((_, strangers)) => {
                    for (from, data) in strangers {
                        if !flows.has(from) {
                            let dest = SocketAddr::new(target.ip(), container_port);
                            if flows.reserve() {
                                // Let the closed flows' tasks go, and their
                                // sockets with them, before opening more.
                                tokio::task::yield_now().await;
                            }
                            match open_flow(&factory, keep.as_ref(), dest, from, &host, epoch).await
                            {
                                Ok(flow) => flows.insert(from, flow),
                                Err(e) => {
                                    tracing::warn!(from = %from.client, %dest, error = %e, "cannot open a UDP flow inside the namespace");
                                    continue;
                                }
                            }
                        }
                        let t = flows.table.lock();
                        if let Some(flow) = t.flows.get(&(flows.id, from)) {
                            let _ = socket2::SockRef::from(&*flow.inner).send(&data);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    break;
                }
            }
        }
    }
}

async fn open_flow(
    factory: &SocketFactory,
    keep: Option<&SourceIps>,
    dest: SocketAddr,
    client: Peer,
    host: &Arc<UdpSocket>,
    epoch: Instant,
) -> io::Result<Flow> {
    let lease = match keep {
        Some(keep) => keep.lease(client.client.ip(), dest.ip()).await,
        None => None,
    };
    let (inner, lease) = match lease {
        Some(lease) => {
            let source = lease.source(client.client.port());
            match inner_from(factory, source, dest).await {
                Ok(inner) => (inner, Some(lease)),
                // Another flow of this client (sent to another host
                // address) has its address and port, or a socket inside does.
                Err(e) if e.raw_os_error() == Some(nix::libc::EADDRINUSE) => {
                    tracing::debug!(%source, %dest, error = %e, "the client's address and port are in use inside; this flow uses the namespace's own");
                    (plain_inner(factory, dest).await?, None)
                }
                Err(e) => return Err(e),
            }
        }
        None => (plain_inner(factory, dest).await?, None),
    };
    let inner = Arc::new(inner);
    grow_buffers(&inner);
    let last = Arc::new(AtomicU64::new(now_ms(epoch)));
    let reader = tokio::spawn(reply_loop(
        inner.clone(),
        Arc::downgrade(host),
        client,
        last.clone(),
        epoch,
    ));
    Ok(Flow {
        inner,
        last,
        reader,
        _lease: lease,
    })
}

/// A socket toward `dest` from the namespace's own address.
async fn plain_inner(factory: &SocketFactory, dest: SocketAddr) -> io::Result<UdpSocket> {
    let fd = factory
        .socket(Domain::for_address(dest), Type::DGRAM)
        .await?;
    let inner = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    inner.connect(dest).await?;
    Ok(inner)
}

/// A transparent socket bound to the client's `source`, toward `dest`.
async fn inner_from(
    factory: &SocketFactory,
    source: SocketAddr,
    dest: SocketAddr,
) -> io::Result<UdpSocket> {
    let fd = factory
        .transparent_socket(Domain::for_address(dest), Type::DGRAM)
        .await?;
    let socket = socket2::Socket::from(fd);
    socket.bind(&source.into())?;
    let inner = UdpSocket::from_std(socket.into())?;
    inner.connect(dest).await?;
    Ok(inner)
}

/// Replies from inside go back to the client from the host port, in batches.
/// The host socket is held weakly: removing the port closes it at once,
/// whatever its flows' tasks are doing.
async fn reply_loop(
    inner: Arc<UdpSocket>,
    host: Weak<UdpSocket>,
    client: Peer,
    last: Arc<AtomicU64>,
    epoch: Instant,
) {
    loop {
        if inner.readable().await.is_err() {
            return;
        }
        loop {
            let Some(host) = host.upgrade() else {
                return;
            };
            let r = BATCH_BUF.with_borrow_mut(|b| {
                let n = inner.try_io(Interest::READABLE, || b.receive(inner.as_raw_fd()))?;
                send(b, host.as_raw_fd(), 0..n, Some(client.client), client.local);
                Ok::<_, io::Error>(n)
            });
            match r {
                Ok(_) => last.store(now_ms(epoch), Ordering::Relaxed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ECONNREFUSED (nothing listens inside yet): keep the flow; a
                // later datagram may find a listener.
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{flow_cap, gso_run, Flow, FlowTable, Peer};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_flow_cap_leaves_half_the_free_fds_to_tcp() {
        assert_eq!(flow_cap(1024, 2), (1024 - 2 - 64) / 2);
        assert_eq!(flow_cap(1024, 3000), 8, "never below the minimum");
        assert_eq!(flow_cap(u64::MAX, 1), 1 << 16, "never above the maximum");
        assert_eq!(flow_cap(0, 0), 8);
    }

    #[test]
    fn a_full_table_closes_the_flows_idle_longest() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let table = FlowTable::default();
            let port = table.port();
            let peer = |p: u16| Peer {
                client: ([127, 0, 0, 1], p).into(),
                local: None,
            };
            let flow = |last: u64| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                Flow {
                    inner: Arc::new(tokio::net::UdpSocket::from_std(s).unwrap()),
                    last: Arc::new(AtomicU64::new(last)),
                    reader: tokio::spawn(async {}),
                    _lease: None,
                }
            };
            // 16 flows; the oldest (smallest `last`) are ports 100..102.
            for p in 0..16u16 {
                let last = if p < 2 {
                    u64::from(p)
                } else {
                    1000 + u64::from(p)
                };
                table
                    .lock()
                    .flows
                    .insert((port.id, peer(100 + p)), flow(last));
            }
            let evicted = table.lock().make_room(16);
            assert_eq!(evicted.len(), 2, "an eighth of the cap");
            let mut gone: Vec<u64> = evicted
                .iter()
                .map(|f| f.last.load(Ordering::Relaxed))
                .collect();
            gone.sort_unstable();
            assert_eq!(gone, [0, 1]);
            assert_eq!(table.len(), 14);
            assert!(table.lock().make_room(16).is_empty(), "room enough");
            drop(evicted);
            drop(port);
            assert_eq!(table.len(), 0, "a port's flows go with it");
        });
    }

    /// Where each GSO run of `lens` ends, from the start.
    fn runs(lens: &[usize]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < lens.len() {
            i = gso_run(lens, i, lens.len());
            out.push(i);
        }
        out
    }

    #[test]
    fn runs_of_equal_sizes_end_at_a_shorter_one_and_never_hold_an_empty_one() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[1200, 1200, 1200], &[3]),
            (&[1200, 1200, 300, 1200], &[3, 4]),
            (&[1200, 0, 1200], &[1, 2, 3]),
            (&[5, 5, 0, 5, 0, 0, 5, 2, 0, 5], &[2, 3, 4, 5, 6, 8, 9, 10]),
            (&[0, 0], &[1, 2]),
            (&[300, 1200], &[1, 2]),
            // 65000 bytes at most per run: 40000 + 40000 does not fit.
            (&[40000, 40000], &[1, 2]),
            (&[65507], &[1]),
        ];
        for (lens, want) in cases {
            assert_eq!(runs(lens), *want, "{lens:?}");
        }
    }

    #[test]
    fn a_run_holds_at_most_64_segments() {
        let lens = vec![100; 130];
        assert_eq!(runs(&lens), [64, 128, 130]);
    }
}
