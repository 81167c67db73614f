//! The forwarder: validate, join the namespace, bind every host port, then
//! serve on one single-threaded event loop until told to stop (the exit
//! pipe, a future, or [`ForwarderHandle::stop`]).

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use netns_util::{Netns, NetnsError};
use slirp_opts::Forward;
use socket2::Socket;

use crate::factory::SocketFactory;
use crate::listen::{listen, open_unprivileged_port_start, ListenError};
use crate::options::ForwardOptions;
use crate::ports::{Command, ForwarderHandle, Ports, StopState, StoppedGuard};
use crate::reload::{ReloadError, ReloadGuard, ReloadServer};
use crate::source_ip::{Ports as PublishedPorts, SourceIps, SourceIpsGuard};
use crate::target::ChildIp;
use crate::{tcp, udp};
use slirp_opts::rootlessport::{ConfigError, ValidConfig};

/// Pooled pipes and namespace sockets are closed after this long unused...
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// ...checked this often: an idle forwarder is back to its baseline fds
/// within about 7 s of its last connection.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A failure before the forwarder is ready. Nothing is left listening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A host port.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The reload socket.
    #[error(transparent)]
    Reload(#[from] ReloadError),
    /// The event loop (its epoll and waker fds).
    #[error("failed to create the event loop: {error}")]
    Runtime {
        /// The OS error.
        error: io::Error,
    },
}

/// A forwarder with every host port bound, not yet serving.
#[derive(Debug)]
pub struct Forwarder {
    listeners: Vec<(Forward, Socket)>,
    child_ip: ChildIp,
    factory: SocketFactory,
    keep: Option<(SourceIps, SourceIpsGuard)>,
    reload: Option<ReloadGuard>,
    runtime: tokio::runtime::Runtime,
    spare: tcp::SpareFd,
    commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    handle: ForwarderHandle,
    stop: Arc<StopState>,
    /// Last: a handle's `stop` returns once everything above is gone.
    stopped: StoppedGuard,
}

impl Forwarder {
    /// Binds every host port of `config`, joins its namespace (on a thread
    /// of its own) and serves the reload socket if asked. When this
    /// returns, the forwarder can be declared ready: connections queue in
    /// the listeners' backlogs. On failure nothing is left listening.
    ///
    /// Process limits are left alone: UDP flows are bounded by the soft
    /// `RLIMIT_NOFILE` as it is (see [`raise_fd_limit`](crate::raise_fd_limit)).
    ///
    /// # Errors
    ///
    /// A host port that cannot be listened on, a namespace that cannot be
    /// opened or joined, or a reload socket that cannot be bound.
    pub fn start(config: ValidConfig) -> Result<Self, StartError> {
        Self::start_with(config, ForwardOptions::default())
    }

    /// As [`start`](Self::start), with `options`. Keeping client addresses
    /// never makes the start fail: where the namespace refuses, the
    /// forwarder logs one warning and forwards as without it.
    ///
    /// ```no_run
    /// use rootlessport::{Config, ForwardOptions, Forwarder};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::from_json(&std::io::read_to_string(std::io::stdin())?)?.validate()?;
    /// let forwarder = Forwarder::start_with(config, ForwardOptions::default().keep_source_ip(true))?;
    /// println!("client addresses kept: {}", forwarder.keeps_source_ip());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_with(config: ValidConfig, options: ForwardOptions) -> Result<Self, StartError> {
        let ValidConfig {
            forwards,
            netns_path,
            child_ip,
            reload,
            ..
        } = config;
        // Host side first: a port in use or a privileged port is the most
        // common failure, and its message should not depend on the namespace.
        let listeners = forwards
            .into_iter()
            .map(|f| listen(&f).map(|s| (f, s)))
            .collect::<Result<Vec<_>, _>>()?;
        // A port added while serving may be refused; its message quotes
        // this sysctl, which a sandboxed forwarder can no longer open.
        open_unprivileged_port_start();
        let netns = Netns::open(&netns_path)?;
        let factory = SocketFactory::start(&netns)?;
        let keep = if options.keeps_source_ip() {
            let ports = PublishedPorts::of(&listeners.iter().map(|(f, _)| *f).collect::<Vec<_>>());
            match SourceIps::start(&netns, ports, child_ip) {
                Ok(keep) => Some(keep),
                Err(e) => {
                    tracing::warn!(
                        "not keeping client addresses, the service sees the namespace's own address instead: {e}"
                    );
                    None
                }
            }
        } else {
            None
        };
        let child_ip = ChildIp::new(child_ip);
        let reload = match reload {
            Some(r) => {
                let server = ReloadServer::bind(&r.tmp_dir, &r.container_id)?;
                Some(server.serve(child_ip.clone())?)
            }
            None => None,
        };
        // Made before ready (the event loop, and the spare fds that accepts
        // fall back on when the fd table is full), so that a ready
        // forwarder holds every fd it will hold while idle.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|error| StartError::Runtime { error })?;
        let spare = tcp::SpareFd::default();
        tracing::info!(ports = listeners.len(), child_ip = %child_ip.ip(), keep_source_ip = keep.is_some(), "listening");
        let (tx, commands) = tokio::sync::mpsc::unbounded_channel();
        let stop = StopState::new();
        Ok(Forwarder {
            listeners,
            child_ip,
            factory,
            keep,
            reload,
            runtime,
            spare,
            commands,
            handle: ForwarderHandle::new(tx, stop.clone()),
            stopped: StoppedGuard(stop.clone()),
            stop,
        })
    }

    /// A handle that adds, removes and lists ports while the forwarder
    /// serves, and stops it (from another thread).
    pub fn handle(&self) -> ForwarderHandle {
        self.handle.clone()
    }

    /// The child IP connections are forwarded to, shared with the reload
    /// socket: [`ChildIp::set`] points every forward elsewhere without it.
    pub fn child_ip(&self) -> &ChildIp {
        &self.child_ip
    }

    /// Whether services see each client's own address: asked for with
    /// [`ForwardOptions::keep_source_ip`], and granted by the namespace.
    pub fn keeps_source_ip(&self) -> bool {
        self.keep.is_some()
    }

    /// The reload socket's path, when there is one.
    pub fn reload_socket(&self) -> Option<&Path> {
        self.reload.as_ref().map(ReloadGuard::path)
    }

    /// Serves until [`ForwarderHandle::stop`], then closes every listener
    /// and connection, removes the reload socket and what keeping client
    /// addresses added. For a forwarder in a program of your own: serve it
    /// on a thread, and stop it with a handle taken before.
    ///
    /// ```no_run
    /// use std::net::{IpAddr, Ipv4Addr};
    /// use rootlessport::{ForwarderConfig, Forwarder};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = ForwarderConfig::new("/run/netns/demo", IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100)));
    /// let forwarder = Forwarder::start(config.validate()?)?;
    /// let handle = forwarder.handle();
    /// let serving = std::thread::spawn(move || forwarder.serve());
    /// // ... handle.add(...), handle.remove(...) ...
    /// handle.stop();
    /// serving.join().expect("the forwarder's thread")?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A listener could not be registered with the event loop.
    pub fn serve(self) -> io::Result<()> {
        self.run(std::future::pending())
    }

    /// Serves until the exit pipe's other end is closed (EOF or HUP on
    /// `exit`) or [`ForwarderHandle::stop`], then closes every listener
    /// and connection, removes the reload socket and what keeping client
    /// addresses added.
    ///
    /// # Errors
    ///
    /// A listener could not be registered with the event loop.
    pub fn run_until_eof(self, exit: OwnedFd) -> io::Result<()> {
        self.run_until_eof_or(exit, std::future::pending())
    }

    /// As [`run_until_eof`](Self::run_until_eof), or until `stop`
    /// completes (a signal, say), whichever comes first.
    ///
    /// # Errors
    ///
    /// A listener could not be registered with the event loop.
    pub fn run_until_eof_or(self, exit: OwnedFd, stop: impl Future<Output = ()>) -> io::Result<()> {
        self.run(async move {
            tokio::select! {
                watched = wait_eof(exit) => {
                    if let Err(e) = watched {
                        tracing::warn!(error = %e, "watching the exit fd failed; stopping");
                    }
                }
                () = stop => {}
            }
        })
    }

    /// Serves until `stop` completes or [`ForwarderHandle::stop`],
    /// whichever comes first, then tears down as
    /// [`serve`](Self::serve) does.
    ///
    /// # Errors
    ///
    /// A listener could not be registered with the event loop (torn down
    /// all the same).
    pub fn run(self, stop: impl Future<Output = ()>) -> io::Result<()> {
        let Forwarder {
            listeners,
            child_ip,
            factory,
            keep,
            reload,
            runtime,
            spare,
            mut commands,
            handle,
            stop: asked,
            stopped,
        } = self;
        let (keep, keep_guard) = match keep {
            Some((k, g)) => (Some(k), Some(g)),
            None => (None, None),
        };
        // Only handles given out keep the channel open.
        drop(handle);
        let served = runtime.block_on(async {
            let pipes = tcp::PipePool::default();
            let flows = udp::FlowTable::default();
            let mut ports = Ports::new(
                child_ip.clone(),
                factory.clone(),
                pipes.clone(),
                keep.clone(),
                flows.clone(),
                spare,
            );
            ports
                .serve(listeners)
                .map_err(|e| io::Error::other(e.to_string()))?;
            // Port changes are answered on the event loop, between I/O.
            tokio::spawn(async move {
                while let Some(cmd) = commands.recv().await {
                    ports.handle(cmd).await;
                }
                // Every handle is gone: keep serving what there is.
                std::future::pending::<()>().await;
                drop(ports);
            });
            // Pools serve bursts; an idle forwarder gives their fds back,
            // and idle clients their routes.
            tokio::spawn({
                let (pipes, factory, child_ip) = (pipes.clone(), factory.clone(), child_ip.clone());
                async move {
                    let mut tick = tokio::time::interval(TRIM_EVERY);
                    loop {
                        tick.tick().await;
                        pipes.trim_if_idle(POOL_IDLE);
                        factory.trim_if_idle(POOL_IDLE);
                        flows.sweep();
                        if let Some(keep) = &keep {
                            keep.sweep(child_ip.ip());
                        }
                    }
                }
            });
            tokio::select! {
                () = stop => {}
                () = asked.asked() => {}
            }
            Ok::<_, io::Error>(())
        });
        // Dropping the runtime drops every task: listeners and connections close.
        drop(runtime);
        drop(factory);
        // Then the rules and routes that sent replies to them go.
        drop(keep_guard);
        drop(reload);
        // Only now may a handle's `stop` return.
        drop(stopped);
        served
    }
}

/// Resolves when the pipe's writer is gone (EOF, or an error reading it).
async fn wait_eof(fd: OwnedFd) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => continue,
        }
    }
}
