//! The set of forwarded ports while serving, and a handle to change it:
//! ports added start at once (all or none), ports removed stop accepting at
//! once while their open connections carry on; the handle also stops the
//! forwarder.

use std::io;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};

use slirp_opts::portctl::PortKey;
use slirp_opts::{expand_all, Forward, PortError, PortMapping, Protocol};
use socket2::Socket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::factory::SocketFactory;
use crate::listen::{listen, ListenError};
use crate::source_ip::{Ports as PublishedPorts, SourceIps};
use crate::target::ChildIp;
use crate::{tcp, udp};

/// Why a [`ForwarderHandle`] call failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// A mapping is invalid.
    #[error(transparent)]
    Mapping(#[from] PortError),
    /// The forward is there already.
    #[error("{0} is forwarded already")]
    AlreadyForwarded(PortKey),
    /// The forward is not there.
    #[error("{0} is not forwarded")]
    NotForwarded(PortKey),
    /// A host port cannot be listened on (in use, privileged, ...).
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A listener could not join the event loop.
    #[error("failed to serve {key}: {error}")]
    Register {
        /// The forward.
        key: PortKey,
        /// The OS error.
        error: io::Error,
    },
    /// Keeping client addresses: the routing rules for the new ports could
    /// not be made (the namespace refused).
    #[error(
        "cannot route replies from the new ports back to their clients (see the forwarder's log)"
    )]
    SourceRoutes,
    /// The forwarder is no longer serving.
    #[error("the forwarder has stopped")]
    Stopped,
}

type Reply<T> = std_mpsc::Sender<Result<T, HandleError>>;

/// What the handle asks the event loop.
pub(crate) enum Command {
    List(Reply<Vec<Forward>>),
    Add(Vec<Forward>, Reply<Vec<Forward>>),
    Remove(Vec<PortKey>, Reply<Vec<Forward>>),
}

/// Changes the ports of a serving [`Forwarder`](crate::Forwarder) from
/// any other thread, and stops it. Calls block until the event loop has
/// answered; do not call them on the forwarder's own thread.
#[derive(Debug, Clone)]
pub struct ForwarderHandle {
    tx: mpsc::UnboundedSender<Command>,
    stop: Arc<StopState>,
}

impl ForwarderHandle {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Command>, stop: Arc<StopState>) -> Self {
        ForwarderHandle { tx, stop }
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, HandleError> {
        let (tx, rx) = std_mpsc::channel();
        self.tx.send(make(tx)).map_err(|_| HandleError::Stopped)?;
        rx.recv().map_err(|_| HandleError::Stopped)?
    }

    /// Every forward now, in the order they were added.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stopped`] when the forwarder no longer serves.
    pub fn list(&self) -> Result<Vec<Forward>, HandleError> {
        self.ask(Command::List)
    }

    /// Forwards `mappings` too, at once: every host port is bound before
    /// any is served, so either all are added or none. Returns every
    /// forward now.
    ///
    /// # Errors
    ///
    /// A mapping is invalid or claims a forward that exists, or a host port
    /// cannot be listened on; nothing was added.
    pub fn add(&self, mappings: &[PortMapping]) -> Result<Vec<Forward>, HandleError> {
        let forwards = expand_all(mappings)?;
        self.ask(|reply| Command::Add(forwards, reply))
    }

    /// Stops forwarding `ports`: when this returns their listeners are
    /// closed (a new connection is refused, and one the kernel had queued
    /// but the forwarder had not yet taken is reset), while connections
    /// already open carry on until they end. Either all are removed or
    /// none. Returns every forward now.
    ///
    /// # Errors
    ///
    /// A port is not forwarded; nothing was removed.
    pub fn remove(&self, ports: &[PortKey]) -> Result<Vec<Forward>, HandleError> {
        self.ask(|reply| Command::Remove(ports.to_vec(), reply))
    }

    /// Stops the forwarder: its [`run`](crate::Forwarder::run) (or
    /// [`serve`](crate::Forwarder::serve), ...) tears down as at the end
    /// of the exit pipe and returns `Ok`. When this returns, every
    /// listener and connection is closed (a new connection is refused),
    /// the reload socket is removed, and so is what keeping client
    /// addresses added in the namespace.
    ///
    /// A forwarder not yet running stops as soon as it runs, and one
    /// dropped without running counts as stopped; so this blocks until
    /// the forwarder runs or is dropped: call it on another thread than
    /// the one holding the forwarder. Stopping a stopped forwarder
    /// returns at once.
    ///
    /// In-process, a child that another thread of the host forked and that
    /// has not exec'd yet holds a copy of every fd: TCP listeners are shut
    /// down first, so they refuse at once all the same, but a UDP port
    /// stays bound until that child execs or exits.
    pub fn stop(&self) {
        self.stop.request();
        self.stop.wait_stopped();
    }
}

/// A stop asked for by a handle, and the forwarder's answer that it has
/// stopped.
#[derive(Debug)]
pub(crate) struct StopState {
    asked: tokio::sync::watch::Sender<bool>,
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(StopState {
            asked: tokio::sync::watch::Sender::new(false),
            stopped: Mutex::new(false),
            changed: Condvar::new(),
        })
    }

    fn request(&self) {
        self.asked.send_replace(true);
    }

    /// Resolves once a handle has asked to stop (at once if one has).
    pub(crate) async fn asked(&self) {
        let mut asked = self.asked.subscribe();
        // The sender lives as long as `self`: this never fails.
        let _ = asked.wait_for(|asked| *asked).await;
    }

    fn wait_stopped(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            stopped = self
                .changed
                .wait(stopped)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Tells every [`ForwarderHandle::stop`] caller that the forwarder has
/// stopped, when dropped: after the forwarder tore down (or was dropped
/// without running).
#[derive(Debug)]
pub(crate) struct StoppedGuard(pub(crate) Arc<StopState>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        *self.0.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.changed.notify_all();
    }
}

/// The forwards being served, each with its listener task.
pub(crate) struct Ports {
    served: Vec<(Forward, JoinHandle<()>)>,
    target: ChildIp,
    factory: SocketFactory,
    pipes: tcp::PipePool,
    keep: Option<SourceIps>,
    flows: udp::FlowTable,
    spare: tcp::SpareFd,
}

impl Drop for Ports {
    fn drop(&mut self) {
        for (_, task) in &self.served {
            task.abort();
        }
    }
}

impl Ports {
    pub(crate) fn new(
        target: ChildIp,
        factory: SocketFactory,
        pipes: tcp::PipePool,
        keep: Option<SourceIps>,
        flows: udp::FlowTable,
        spare: tcp::SpareFd,
    ) -> Self {
        Ports {
            served: Vec::new(),
            target,
            factory,
            pipes,
            keep,
            flows,
            spare,
        }
    }

    fn forwards(&self) -> Vec<Forward> {
        self.served.iter().map(|(f, _)| *f).collect()
    }

    /// Starts serving listeners bound already. Must run inside the runtime.
    pub(crate) fn serve(&mut self, bound: Vec<(Forward, Socket)>) -> Result<(), HandleError> {
        // Register every one with the event loop before spawning any, so a
        // failure leaves nothing half-served.
        let mut ready = Vec::with_capacity(bound.len());
        for (fwd, socket) in bound {
            let key = PortKey::from(&fwd);
            let register = |error| HandleError::Register { key, error };
            let listener = match fwd.proto {
                Protocol::Tcp => Listener::Tcp(
                    tokio::net::TcpListener::from_std(socket.into()).map_err(register)?,
                ),
                Protocol::Udp => {
                    Listener::Udp(tokio::net::UdpSocket::from_std(socket.into()).map_err(register)?)
                }
            };
            ready.push((fwd, listener));
        }
        for (fwd, listener) in ready {
            let (target, factory, keep) =
                (self.target.clone(), self.factory.clone(), self.keep.clone());
            let task = match listener {
                Listener::Tcp(l) => tokio::spawn(tcp::serve(
                    tcp::Listening(l),
                    fwd.container_port,
                    target,
                    factory,
                    self.pipes.clone(),
                    keep,
                    self.spare.clone(),
                )),
                Listener::Udp(s) => tokio::spawn(udp::serve(
                    s,
                    fwd.container_port,
                    target,
                    factory,
                    keep,
                    self.flows.clone(),
                )),
            };
            self.served.push((fwd, task));
        }
        self.flows.set_listeners(self.served.len());
        Ok(())
    }

    async fn add(&mut self, forwards: Vec<Forward>) -> Result<(), HandleError> {
        for fwd in &forwards {
            let key = PortKey::from(fwd);
            if self.served.iter().any(|(f, _)| key.matches(f)) {
                return Err(HandleError::AlreadyForwarded(key));
            }
        }
        // Bind all first: a port in use fails the whole request.
        let bound = forwards
            .iter()
            .map(|f| listen(f).map(|s| (*f, s)))
            .collect::<Result<Vec<_>, _>>()?;
        // Replies from the new ports must find their way back before the
        // first client comes.
        if let Some(keep) = &self.keep {
            if !keep.add_ports(PublishedPorts::of(&forwards)).await {
                return Err(HandleError::SourceRoutes);
            }
        }
        self.serve(bound)
    }

    async fn remove(&mut self, keys: Vec<PortKey>) -> Result<(), HandleError> {
        if let Some(missing) = keys
            .iter()
            .find(|k| !self.served.iter().any(|(f, _)| k.matches(f)))
        {
            return Err(HandleError::NotForwarded(*missing));
        }
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.served)
            .into_iter()
            .partition(|(f, _)| keys.iter().any(|k| k.matches(f)));
        self.served = kept;
        self.flows.set_listeners(self.served.len());
        // Connection tasks are spawned apart from the listener tasks and
        // carry on. An aborted task is only dropped when the loop next
        // gets to it: wait for that, so that every listener is closed
        // before the caller hears "removed" (a connection the kernel had
        // queued on it is reset, never served).
        for (_, task) in &gone {
            task.abort();
        }
        for (_, task) in gone {
            let _ = task.await;
        }
        Ok(())
    }

    /// Answers one command.
    pub(crate) async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::List(reply) => {
                let _ = reply.send(Ok(self.forwards()));
            }
            Command::Add(forwards, reply) => {
                let n = forwards.len();
                let r = self.add(forwards).await.map(|()| self.forwards());
                if r.is_ok() {
                    tracing::info!(added = n, "forwarding more ports");
                }
                let _ = reply.send(r);
            }
            Command::Remove(keys, reply) => {
                let n = keys.len();
                let r = self.remove(keys).await.map(|()| self.forwards());
                if r.is_ok() {
                    tracing::info!(removed = n, "stopped forwarding ports");
                }
                let _ = reply.send(r);
            }
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
}
