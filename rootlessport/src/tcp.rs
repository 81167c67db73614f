//! TCP: accept on the host, connect inside the namespace, move the bytes
//! with splice(2) through a reused pipe, propagate half-close both ways.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use socket2::{Domain, SockRef, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::factory::SocketFactory;
use crate::source_ip::{Lease, SourceIps};
use crate::target::ChildIp;

/// The size a pipe grows to once a read fills it (the kernel's default
/// pipe-max-size). Larger pipes let the source keep draining into the pipe
/// while the destination is full, and mean fewer splices per byte. Pipes
/// start at the kernel's default (64 KiB) and only a bulk transfer grows
/// its pipe; the pool gives grown pipes back at the default size. So short
/// connections never hold 1 MiB each: an unprivileged user (a rootless
/// forwarder, or ours once its sandbox dropped CAP_SYS_RESOURCE) has a
/// pipe-page quota (`fs.pipe-user-pages-soft`, 64 MiB), past which every
/// new pipe of the user gets 2 pages and connections slowed to a crawl.
/// Where the kernel refuses to grow a pipe, it keeps the size it has.
const PIPE_SIZE: usize = 1 << 20;
/// Bytes a pipe slot holds at most (a page).
const SLOT: usize = 4096;
/// Pipes kept for reuse.
const POOL_MAX: usize = 128;

/// A pipe for splicing, empty whenever it is in the pool.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity in bytes (what the kernel gave it).
    size: usize,
    /// Whether growing it was refused (not tried again).
    stuck: bool,
}

impl Pipe {
    /// Grows it to [`PIPE_SIZE`] for a bulk transfer; where the kernel
    /// refuses (a user past its pipe-page quota), it keeps its size.
    fn grow(&mut self) {
        if self.size >= PIPE_SIZE || self.stuck {
            return;
        }
        match nix::fcntl::fcntl(
            &self.write,
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
        ) {
            Ok(n) => self.size = usize::try_from(n).unwrap_or(self.size),
            Err(_) => self.stuck = true,
        }
    }

    /// Back to the kernel's default size (it is empty), so the pool holds
    /// no large pipes.
    fn shrink(&mut self) {
        if self.size > DEFAULT_PIPE_SIZE {
            if let Ok(n) = nix::fcntl::fcntl(
                &self.write,
                nix::fcntl::FcntlArg::F_SETPIPE_SZ(DEFAULT_PIPE_SIZE as i32),
            ) {
                self.size = usize::try_from(n).unwrap_or(self.size);
            }
        }
    }
}

/// A new pipe's size when the user is within its quota.
const DEFAULT_PIPE_SIZE: usize = 16 * SLOT;

/// Reused pipes. When no pipe can be had (EMFILE, or an unprivileged user's
/// pipe-page quota), connections fall back to read/write copies. A burst
/// fills the pool; [`PipePool::trim_if_idle`] empties it again, since under
/// podman's `nofile=1024` every fd kept is a connection refused later.
#[derive(Debug, Clone)]
pub struct PipePool(Arc<Mutex<Pool>>);

#[derive(Debug)]
struct Pool {
    pipes: Vec<Pipe>,
    last_used: Instant,
}

impl Default for PipePool {
    fn default() -> Self {
        PipePool(Arc::new(Mutex::new(Pool {
            pipes: Vec::new(),
            last_used: Instant::now(),
        })))
    }
}

impl PipePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<Pipe> {
        {
            let mut pool = self.lock();
            pool.last_used = Instant::now();
            if let Some(p) = pool.pipes.pop() {
                return Some(p);
            }
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok()?;
        let size = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_PIPE_SIZE);
        Some(Pipe {
            read,
            write,
            size,
            stuck: false,
        })
    }

    fn give(&self, mut pipe: Pipe) {
        pipe.shrink();
        let mut pool = self.lock();
        if pool.pipes.len() < POOL_MAX {
            pool.pipes.push(pipe);
        }
    }

    /// Closes every pooled pipe when none was taken for `idle`.
    pub fn trim_if_idle(&self, idle: Duration) {
        let drained = {
            let mut pool = self.lock();
            if pool.last_used.elapsed() < idle {
                return;
            }
            std::mem::take(&mut pool.pipes)
        };
        drop(drained);
    }
}

/// A pipe held back for accepting when the fd table is full. With no fd
/// left, accept(2) fails with EMFILE and leaves the connection queued, where
/// its client waits for nothing; closing the spare frees an fd to accept it
/// with, and reset it, so the client hears at once. Shared by every
/// listener of a forwarder.
#[derive(Debug, Clone)]
pub(crate) struct SpareFd(Arc<Mutex<Option<(OwnedFd, OwnedFd)>>>);

impl Default for SpareFd {
    fn default() -> Self {
        SpareFd(Arc::new(Mutex::new(Self::open())))
    }
}

impl SpareFd {
    fn open() -> Option<(OwnedFd, OwnedFd)> {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()
    }

    /// Takes one queued connection off `listener` with the spare's fds and
    /// resets it; `false` when there was no spare to give up (it is taken
    /// again for next time).
    fn shed(&self, listener: &TcpListener) -> bool {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.take().is_none() {
            *spare = Self::open();
            return false;
        }
        // Straight on the socket: a WouldBlock here only makes the next
        // accept() find the queue empty and wait.
        if let Ok((conn, _)) = SockRef::from(listener).accept() {
            let _ = conn.set_linger(Some(Duration::ZERO));
            drop(conn);
        }
        *spare = Self::open();
        true
    }
}

/// Out of fds: this process's (EMFILE) or the system's (ENFILE).
fn out_of_fds(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    )
}

/// The pause after an accept that failed for want of resources, when no
/// connection could be shed: the loop never spins on a queued connection.
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);

/// A listener that stops listening when dropped, before its fd is closed:
/// a process forked meanwhile (by a program embedding the forwarder) holds
/// a copy of the fd until it execs, and would keep the port listening.
/// Shutting it down leaves LISTEN whoever holds it, and resets connections
/// still queued. Made before the listener's task is spawned, since a task
/// aborted before its first poll drops only what it was given.
#[derive(Debug)]
pub(crate) struct Listening(pub(crate) TcpListener);

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = SockRef::from(&self.0).shutdown(Shutdown::Read);
    }
}

/// Serves one host listener until the task is dropped (which closes it).
pub(crate) async fn serve(
    listener: Listening,
    container_port: u16,
    target: ChildIp,
    factory: SocketFactory,
    pipes: PipePool,
    keep: Option<SourceIps>,
    spare: SpareFd,
) {
    let listener = &listener.0;
    // Warn once per run of failures, not once per connection.
    let mut failing = false;
    // Whether the pools were emptied since the last accept that failed.
    let mut released = false;
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => {
                failing = false;
                released = false;
                c
            }
            Err(e) if out_of_fds(&e) => {
                if !failing {
                    tracing::warn!(error = %e, "out of file descriptors: resetting connections that cannot be accepted");
                    failing = true;
                }
                if !released {
                    // Pooled sockets and pipes wait for connections that
                    // cannot come in: give them back, and try again.
                    factory.trim_if_idle(Duration::ZERO);
                    pipes.trim_if_idle(Duration::ZERO);
                    released = true;
                    continue;
                }
                released = false;
                if !spare.shed(listener) {
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                continue;
            }
            // The client gave up while queued: nothing to serve.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                // ENOBUFS, ENOMEM and the like: back off a little instead
                // of spinning.
                if !failing {
                    tracing::warn!(error = %e, "accept failed");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let (factory, pipes, target) = (factory.clone(), pipes.clone(), target.clone());
        let keep = keep.clone();
        tokio::spawn(async move {
            match dial_retrying(&factory, keep.as_ref(), &target, peer, container_port).await {
                Ok((inner, lease)) => {
                    relay(conn, inner, &pipes).await;
                    // The client's route lives as long as its connections.
                    drop(lease);
                }
                Err((dest, e)) => {
                    // The Go helper loses this text; say why the connection closed.
                    tracing::warn!(%peer, %dest, error = %e, "cannot connect inside the namespace; closing the connection");
                    let _ = SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                }
            }
        });
    }
}

/// Attempts at connecting while the container refuses (its service may still
/// be starting), with a pause of `DIAL_PAUSE_STEP` times the attempt number
/// before each retry: about 225 ms in all, as podman's Go helper does.
const DIAL_ATTEMPTS: u32 = 10;
const DIAL_PAUSE_STEP: Duration = Duration::from_millis(5);

/// Connects to the child IP (read afresh for each attempt, so a reload in
/// between is followed), retrying only "connection refused": other errors
/// (no route, no host) would not change within the retry window. With
/// `keep`, from the client's address where it can be kept.
async fn dial_retrying(
    factory: &SocketFactory,
    keep: Option<&SourceIps>,
    target: &ChildIp,
    peer: SocketAddr,
    port: u16,
) -> Result<(TcpStream, Option<Lease>), (SocketAddr, io::Error)> {
    let mut attempt = 0;
    loop {
        let dest = SocketAddr::new(target.ip(), port);
        match dial(factory, keep, peer, dest).await {
            Ok(dialled) => return Ok(dialled),
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionRefused && attempt + 1 < DIAL_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(DIAL_PAUSE_STEP * attempt).await;
            }
            Err(e) => return Err((dest, e)),
        }
    }
}

/// One connection to `dest`: from `peer`'s address and port where `keep`
/// gives a lease on it, else from the namespace's own address (also when
/// the client's address and port are taken inside).
async fn dial(
    factory: &SocketFactory,
    keep: Option<&SourceIps>,
    peer: SocketAddr,
    dest: SocketAddr,
) -> io::Result<(TcpStream, Option<Lease>)> {
    let lease = match keep {
        Some(keep) => keep.lease(peer.ip(), dest.ip()).await,
        None => None,
    };
    if let Some(lease) = lease {
        let source = lease.source(peer.port());
        match dial_from(factory, source, dest).await {
            Ok(stream) => return Ok((stream, Some(lease))),
            Err(e) if source_taken(&e) => {
                tracing::debug!(%source, %dest, error = %e, "the client's address and port are in use inside; connecting from the namespace's own");
            }
            Err(e) => return Err(e),
        }
    }
    let fd = factory
        .socket(Domain::for_address(dest), Type::STREAM)
        .await?;
    Ok((connect(fd.into(), dest).await?, None))
}

/// A transparent socket bound to `source`, connected to `dest`.
async fn dial_from(
    factory: &SocketFactory,
    source: SocketAddr,
    dest: SocketAddr,
) -> io::Result<TcpStream> {
    let fd = factory
        .transparent_socket(Domain::for_address(dest), Type::STREAM)
        .await?;
    let socket = socket2::Socket::from(fd);
    socket.bind(&source.into())?;
    connect(socket.into(), dest).await
}

/// Connects a socket from the factory (TCP_NODELAY is set there).
async fn connect(socket: std::net::TcpStream, dest: SocketAddr) -> io::Result<TcpStream> {
    TcpSocket::from_std_stream(socket).connect(dest).await
}

/// A bind or connect that failed because the 4-tuple or the address and
/// port are already used inside.
fn source_taken(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EADDRINUSE | nix::libc::EADDRNOTAVAIL)
    )
}

/// Copies both ways until both directions have ended. A direction ends at
/// EOF (then the other side's write half is shut) or on error (then both
/// sockets are dropped at once, which resets them).
pub async fn relay(a: TcpStream, b: TcpStream, pipes: &PipePool) {
    // Accepted sockets inherit TCP_NODELAY from the listener (listen.rs).
    match (pipes.take(), pipes.take()) {
        (Some(mut p1), Some(mut p2)) => {
            let (a, b) = match (reader(a), reader(b)) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => {
                    let e = a.err().or(b.err());
                    tracing::warn!(error = ?e, "cannot watch a connection's sockets; closing it");
                    pipes.give(p1);
                    pipes.give(p2);
                    return;
                }
            };
            let (r1, r2) = {
                let one = pump(&a, b.get_ref().as_fd(), &mut p1);
                let two = pump(&b, a.get_ref().as_fd(), &mut p2);
                tokio::pin!(one, two);
                let (mut r1, mut r2) = (None, None);
                while r1.is_none() || r2.is_none() {
                    tokio::select! {
                        r = &mut one, if r1.is_none() => { r1 = Some(r.is_ok()); if !r1.unwrap() { break; } }
                        r = &mut two, if r2.is_none() => { r2 = Some(r.is_ok()); if !r2.unwrap() { break; } }
                    }
                }
                (r1, r2)
            };
            // Only a pipe that was drained cleanly goes back for reuse.
            if r1 == Some(true) {
                pipes.give(p1);
            }
            if r2 == Some(true) {
                pipes.give(p2);
            }
        }
        (p1, p2) => {
            for p in [p1, p2].into_iter().flatten() {
                pipes.give(p);
            }
            let (mut a, mut b) = (a, b);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        }
    }
}

/// The socket watched for reading only. tokio registers a stream for
/// reading and writing, edge-triggered, and a socket that only receives
/// still reports writability edges (measured: half the wakeups of a bulk
/// transfer brought nothing else); writability is watched apart, on a
/// duplicate, only once a write finds the socket full ([`Writer`]).
fn reader(stream: TcpStream) -> io::Result<AsyncFd<OwnedFd>> {
    // Leaves tokio's registration; the socket stays non-blocking.
    let std = stream.into_std()?;
    watch(OwnedFd::from(std), Interest::READABLE)
}

/// Registers `fd` with the event loop for `interest`, edge-triggered.
#[allow(unsafe_code)]
fn watch(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the fd, so it stays open and refers to the
    // same socket until the AsyncFd, and with it the registration, is
    // dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// Where one direction writes: the socket, and the registration for its
/// writability, made from a duplicate of it the first time a write finds
/// it full (most connections never fill it).
struct Writer<'a> {
    fd: BorrowedFd<'a>,
    watch: Option<AsyncFd<OwnedFd>>,
}

impl Writer<'_> {
    /// Moves up to `len` bytes from the pipe: `Ok(None)` when the socket is
    /// full (it is then watched, and its readiness cleared).
    fn splice_from(
        &mut self,
        pipe: &Pipe,
        len: usize,
        flags: SpliceFFlags,
    ) -> io::Result<Option<usize>> {
        let fd = self.fd;
        let once = || splice(&pipe.read, None, fd, None, len, flags).map_err(io::Error::from);
        let Some(watch) = &self.watch else {
            return match once() {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.watch = Some(watch(fd.try_clone_to_owned()?, Interest::WRITABLE)?);
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(guard) = watch.poll_write_ready(&mut cx) else {
            return Ok(None);
        };
        match guard?.try_io(|_| once()) {
            Ok(r) => r.map(Some),
            Err(_would_block) => Ok(None),
        }
    }

    /// Until the socket may take more (only after [`Self::splice_from`] said it
    /// was full).
    async fn writable(&self) -> io::Result<()> {
        match &self.watch {
            Some(w) => w.writable().await.map(|mut g| g.retain_ready()),
            None => std::future::pending().await,
        }
    }
}

/// One direction: src -> pipe -> dst, until EOF on src and the pipe is
/// empty. The source keeps draining into the pipe while the destination is
/// full (up to the pipe's size), so both sockets' buffers keep moving.
async fn pump(src: &AsyncFd<OwnedFd>, dst: BorrowedFd<'_>, pipe: &mut Pipe) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let (mut in_pipe, mut eof) = (0usize, false);
    let mut dst = Writer {
        fd: dst,
        watch: None,
    };
    // Whether the last read (nearly) filled the pipe: the source has more
    // queued, so a write may leave its partial last segment for the next
    // one (SPLICE_F_MORE); `corked` while such a tail may be held back.
    let (mut more, mut corked) = (false, false);
    loop {
        let mut moved = false;
        if !eof && in_pipe < pipe.size {
            let room = pipe.size - in_pipe;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(guard) = src.poll_read_ready(&mut cx) {
                let mut guard = guard?;
                let closed = guard.ready().is_read_closed();
                let mut got = 0;
                let r = guard.try_io(|fd| {
                    got = splice(fd, None, &pipe.write, None, room, flags)
                        .map_err(io::Error::from)?;
                    // Fewer bytes than the pipe had free slots (each holds
                    // at least one) means the socket's queue is empty: say
                    // so now, sparing the splice that would only return
                    // EAGAIN. Not when the peer has closed: its FIN must
                    // still be read. (An event that arrives meanwhile is
                    // kept: tokio clears only the readiness it saw.)
                    if got > 0 && got < room / SLOT && !closed {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(())
                });
                match r {
                    Ok(Ok(())) if got == 0 => eof = true,
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(e)) => return Err(e),
                }
                in_pipe += got;
                moved |= got > 0 || eof;
                if got > 0 {
                    more = got >= pipe.size / 10 * 9;
                }
                if got > 0 && in_pipe >= pipe.size {
                    // A bulk transfer: a larger pipe from now on.
                    pipe.grow();
                }
            }
        }
        if in_pipe > 0 {
            let flags = if more {
                flags | SpliceFFlags::SPLICE_F_MORE
            } else {
                flags
            };
            match dst.splice_from(pipe, in_pipe, flags)? {
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(n) => {
                    in_pipe -= n;
                    moved = true;
                    corked = more;
                }
                None => {}
            }
        }
        if eof && in_pipe == 0 {
            // Half-close: the peer sent FIN; pass it on and keep the other way open.
            let _ = SockRef::from(&dst.fd).shutdown(Shutdown::Write);
            return Ok(());
        }
        if moved {
            continue;
        }
        if corked && in_pipe == 0 {
            // Going idle: send a held-back tail now (setting TCP_NODELAY
            // pushes what is queued) rather than when an ACK comes.
            let _ = SockRef::from(&dst.fd).set_tcp_nodelay(true);
            corked = false;
        }
        let want_read = !eof && in_pipe < pipe.size;
        tokio::select! {
            r = src.readable(), if want_read => { r?.retain_ready(); }
            r = dst.writable(), if in_pipe > 0 => { r?; }
        }
    }
}
