//! UDP: a flow per client address, each with its own socket inside the
//! namespace; 90 s idle timeout. One receive buffer per event loop, not one
//! per port or per flow.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::factory::SocketFactory;
use crate::target::Target;

/// A flow ends after this long without traffic either way (as in the Go helper).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

thread_local! {
    /// The receive buffer. The event loop is single-threaded and no borrow
    /// is held across an await, so every port and flow shares it.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 65536]);
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
        // Drain what is queued; stop at WouldBlock.
        loop {
            let got = BUF.with_borrow_mut(|buf| match host.try_recv_from(buf) {
                Ok((n, from)) => {
                    if let Some(flow) = flows.get(&from) {
                        flow.last.store(now_ms(epoch), Ordering::Relaxed);
                        // A full socket buffer drops the datagram, as UDP may.
                        let _ = send_now(&flow.inner, &buf[..n], None);
                        Ok(None)
                    } else {
                        Ok(Some((buf[..n].to_vec(), from)))
                    }
                }
                Err(e) => Err(e),
            });
            match got {
                Ok(None) => {}
                Ok(Some((first, from))) => {
                    let dest = SocketAddr::new(target.ip(), container_port);
                    match open_flow(&factory, dest, from, &host, epoch).await {
                        Ok(flow) => {
                            let _ = send_now(&flow.inner, &first, None);
                            flows.insert(from, flow);
                        }
                        Err(e) => {
                            tracing::warn!(%from, %dest, error = %e, "cannot open a UDP flow inside the namespace")
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    break;
                }
            }
        }
    }
}

/// A plain non-blocking send. tokio's `try_send` reports WouldBlock until the
/// reactor has seen the socket writable, which would drop the first datagram
/// of every new flow; a datagram socket is writable unless its buffer is full.
fn send_now(socket: &UdpSocket, data: &[u8], to: Option<SocketAddr>) -> std::io::Result<usize> {
    let sock = socket2::SockRef::from(socket);
    match to {
        Some(addr) => sock.send_to(data, &addr.into()),
        None => sock.send(data),
    }
}

async fn open_flow(
    factory: &SocketFactory,
    dest: SocketAddr,
    client: SocketAddr,
    host: &Arc<UdpSocket>,
    epoch: Instant,
) -> std::io::Result<Flow> {
    let fd = factory
        .socket(Domain::for_address(dest), Type::DGRAM)
        .await?;
    let inner = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(fd))?);
    inner.connect(dest).await?;
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

/// Replies from inside go back to the client from the host port.
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
            let r = BUF.with_borrow_mut(|buf| {
                let n = inner.try_recv(buf)?;
                let _ = send_now(&host, &buf[..n], Some(client));
                Ok::<_, std::io::Error>(())
            });
            match r {
                Ok(()) => last.store(now_ms(epoch), Ordering::Relaxed),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ECONNREFUSED (nothing listens inside): keep the flow; a
                // later datagram may find a listener.
                Err(_) => break,
            }
        }
    }
}
