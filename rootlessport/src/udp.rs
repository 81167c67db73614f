//! UDP: a flow per client address, each with its own socket inside the
//! namespace; 90 s idle timeout. Datagrams are received in batches (recvmmsg,
//! up to 64 per system call) through one buffer per event loop, not one per
//! port or per flow; runs of equal-size datagrams go into the namespace as one
//! UDP GSO send, and replies (or everything, where GSO is refused) go out with
//! sendmmsg.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmmsg, sendmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrLike,
    SockaddrStorage,
};
use socket2::{Domain, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::factory::SocketFactory;
use crate::target::Target;

/// A flow ends after this long without traffic either way (as in the Go helper).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Datagrams per system call.
const BATCH: usize = 64;
/// Room for the largest datagram.
const SLOT: usize = 65536;
/// Socket buffers asked for: bursts wait here instead of being dropped.
const SOCKET_BUFFER: usize = 4 << 20;
/// UDP GSO limits: segments per send, and bytes (an IPv4 datagram's payload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;

/// The batch buffers. The event loop is single-threaded and no borrow is
/// held across an await, so every port and flow shares them.
struct Batch {
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    recv: MultiHeaders<SockaddrStorage>,
    send: MultiHeaders<SockaddrStorage>,
}

thread_local! {
    /// Whether UDP GSO works here; turned off at the first refusal.
    static GSO: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    static BATCH_BUF: RefCell<Batch> = RefCell::new(Batch {
        // Pages are touched only as datagrams land in them.
        bufs: vec![0; BATCH * SLOT],
        lens: [0; BATCH],
        from: [None; BATCH],
        recv: MultiHeaders::preallocate(BATCH, None),
        send: MultiHeaders::preallocate(BATCH, None),
    });
}

impl Batch {
    /// Receives up to BATCH datagrams; their lengths and sources land in
    /// `lens` and `from`.
    fn receive(&mut self, fd: i32) -> io::Result<usize> {
        let Batch {
            bufs,
            lens,
            from,
            recv,
            ..
        } = self;
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
            .chunks_mut(SLOT)
            .map(|c| [IoSliceMut::new(c)])
            .collect();
        let results = recvmmsg(fd, recv, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
            .map_err(io::Error::from)?;
        let mut n = 0;
        for (i, msg) in results.enumerate() {
            lens[i] = msg.bytes;
            from[i] = msg.address.as_ref().and_then(to_socket_addr);
            n = i + 1;
        }
        Ok(n)
    }

    /// Sends datagrams `range` on `fd`: to its connected peer, or each to `to`.
    /// Into the namespace (connected flows), runs of equal-size datagrams go
    /// out as one UDP GSO send, so the inner path is walked once per run
    /// instead of once per datagram.
    fn send(&mut self, fd: i32, range: std::ops::Range<usize>, to: Option<SocketAddr>) {
        if to.is_none() && range.len() > 1 && GSO.get() {
            let mut i = range.start;
            while i < range.end {
                let size = self.lens[i];
                let mut end = i + 1;
                let mut total = size;
                // Equal sizes (the last may be shorter), within GSO's limits.
                while end < range.end
                    && self.lens[end] <= size
                    && end - i < GSO_MAX_SEGMENTS
                    && total + self.lens[end] <= GSO_MAX_BYTES
                {
                    total += self.lens[end];
                    end += 1;
                    if self.lens[end - 1] < size {
                        break;
                    }
                }
                if end - i > 1 && size > 0 && size <= usize::from(u16::MAX) {
                    if !self.send_gso(fd, i..end, size as u16) {
                        GSO.set(false);
                        self.send_each(fd, i..range.end, None);
                        return;
                    }
                } else {
                    self.send_each(fd, i..end, None);
                }
                i = end;
            }
            return;
        }
        self.send_each(fd, range, to);
    }

    /// One sendmsg with UDP_SEGMENT; `false` when the kernel refuses GSO
    /// (then the caller sends the datagrams one by one from now on).
    fn send_gso(&self, fd: i32, range: std::ops::Range<usize>, size: u16) -> bool {
        let iov: Vec<IoSlice<'_>> = range.map(|k| IoSlice::new(self.datagram(k))).collect();
        let cmsg = [ControlMessage::UdpGsoSegments(&size)];
        match sendmsg::<SockaddrStorage>(fd, &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None) {
            Ok(_) => true,
            // A full buffer drops the run, as UDP may; GSO itself works.
            Err(
                nix::errno::Errno::EAGAIN
                | nix::errno::Errno::ENOBUFS
                | nix::errno::Errno::ECONNREFUSED,
            ) => true,
            Err(e) => {
                tracing::debug!(error = %e, "UDP GSO refused; sending datagrams one by one");
                false
            }
        }
    }

    fn send_each(&mut self, fd: i32, range: std::ops::Range<usize>, to: Option<SocketAddr>) {
        let Batch {
            bufs, lens, send, ..
        } = self;
        let slices: Vec<[IoSlice<'_>; 1]> = range
            .clone()
            .map(|i| [IoSlice::new(&bufs[i * SLOT..i * SLOT + lens[i]])])
            .collect();
        let addr = to.map(SockaddrStorage::from);
        let addrs = vec![addr; slices.len()];
        // A full socket buffer drops what does not fit, as UDP may.
        let _ = sendmmsg(
            fd,
            send,
            slices.iter(),
            addrs,
            [] as [ControlMessage; 0],
            MsgFlags::MSG_DONTWAIT,
        );
    }

    fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..i * SLOT + self.lens[i]]
    }
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
        .filter(|_| s.family().is_some())
}

fn grow_buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

#[derive(Debug)]
struct Flow {
    inner: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    reader: JoinHandle<()>,
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

/// Serves one host UDP port until the task is dropped.
pub async fn serve(host: UdpSocket, container_port: u16, target: Target, factory: SocketFactory) {
    grow_buffers(&host);
    let host = Arc::new(host);
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut generation = target.generation();
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = host.readable() => {
                if ready.is_err() {
                    return;
                }
            }
            _ = sweep.tick() => {
                let now = now_ms(epoch);
                flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < IDLE_TIMEOUT.as_millis() as u64);
                continue;
            }
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
                let mut i = 0;
                while i < n {
                    let Some(from) = b.from[i] else {
                        i += 1;
                        continue;
                    };
                    let mut end = i + 1;
                    while end < n && b.from[end] == Some(from) {
                        end += 1;
                    }
                    match flows.get(&from) {
                        Some(flow) => {
                            flow.last.store(now, Ordering::Relaxed);
                            b.send(flow.inner.as_raw_fd(), i..end, None);
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
                        use std::collections::hash_map::Entry;
                        let flow = match flows.entry(from) {
                            Entry::Occupied(o) => o.into_mut(),
                            Entry::Vacant(v) => {
                                let dest = SocketAddr::new(target.ip(), container_port);
                                match open_flow(&factory, dest, from, &host, epoch).await {
                                    Ok(flow) => v.insert(flow),
                                    Err(e) => {
                                        tracing::warn!(%from, %dest, error = %e, "cannot open a UDP flow inside the namespace");
                                        continue;
                                    }
                                }
                            }
                        };
                        let _ = socket2::SockRef::from(&*flow.inner).send(&data);
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
    dest: SocketAddr,
    client: SocketAddr,
    host: &Arc<UdpSocket>,
    epoch: Instant,
) -> io::Result<Flow> {
    let fd = factory
        .socket(Domain::for_address(dest), Type::DGRAM)
        .await?;
    let inner = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(fd))?);
    inner.connect(dest).await?;
    grow_buffers(&inner);
    let last = Arc::new(AtomicU64::new(now_ms(epoch)));
    let reader = tokio::spawn(reply_loop(
        inner.clone(),
        host.clone(),
        client,
        last.clone(),
        epoch,
    ));
    Ok(Flow {
        inner,
        last,
        reader,
    })
}

/// Replies from inside go back to the client from the host port, in batches.
async fn reply_loop(
    inner: Arc<UdpSocket>,
    host: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
) {
    loop {
        if inner.readable().await.is_err() {
            return;
        }
        loop {
            let r = BATCH_BUF.with_borrow_mut(|b| {
                let n = inner.try_io(Interest::READABLE, || b.receive(inner.as_raw_fd()))?;
                b.send(host.as_raw_fd(), 0..n, Some(client));
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
