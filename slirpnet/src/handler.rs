//! The port handlers behind one interface ([`Ports`]): slirp4netns's API
//! (`port_handler=slirp4netns`) and a port forwarder
//! (`port_handler=rootlesskit`). Each takes checked [`Forward`]s and
//! reports [`ForwardInfo`]s; the rest of the crate never asks which one
//! it has. The choice is made here, once: what planning checks and warns
//! about ([`check`]), whether an API socket is needed, and which handler a
//! started network gets ([`open`]).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use slirp_api::{Client, HostFwd};
use slirp_opts::{Forward, PortHandler, PortKey, Protocol, Target};
use slirp_proc::Slirp;

use crate::error::SetupError;
use crate::portfwd::{
    resolve_forwarder, ForwarderChoice, ForwarderError, ForwarderInfo, PortChangeError,
    PortForwarder,
};
use crate::report::ForwardInfo;

/// A running network's port handler: adds, removes and lists forwards.
pub(crate) trait Ports: std::fmt::Debug + Send {
    /// Makes the setup's own forwards, before anyone else can ask; with
    /// `slirp` watched while the handler gets ready. Returns every forward.
    fn start(
        &mut self,
        slirp: &mut Slirp,
        forwards: &[Forward],
    ) -> Result<Vec<ForwardInfo>, SetupError>;

    /// Adds `forwards`: all, or none. Returns every forward now.
    fn add(&mut self, forwards: &[Forward]) -> Result<Vec<ForwardInfo>, PortChangeError>;

    /// Removes the forwards `keys` name (each one forwarded). Returns every
    /// forward now.
    fn remove(&mut self, keys: &[PortKey]) -> Result<Vec<ForwardInfo>, PortChangeError>;

    /// Every forward now, as the handler reports it.
    fn list(&mut self) -> Result<Vec<ForwardInfo>, PortChangeError>;

    /// The port forwarder, when one is chosen (and its pid once started).
    fn forwarder(&self) -> Option<&ForwarderInfo>;

    /// Whether the service sees clients' own addresses (see
    /// [`SetupInfo::keep_source_ip`](crate::SetupInfo::keep_source_ip)).
    fn keeps_source_ip(&self) -> bool;

    /// Stops whatever the handler runs (a forwarder), and waits for it.
    fn stop(self: Box<Self>);
}

/// What planning learns from the handler: the forwarder it will start,
/// what will not work, and whether clients keep their addresses.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) forwarder: Option<ForwarderInfo>,
    pub(crate) warnings: Vec<String>,
    pub(crate) keep_source_ip: bool,
}

/// What a port forwarder is started with, besides its forwards.
#[derive(Debug, Clone)]
pub(crate) struct ForwarderSettings {
    pub(crate) choice: ForwarderChoice,
    /// Resolved by planning when the setup has forwards of its own.
    pub(crate) planned: Option<ForwarderInfo>,
    pub(crate) keep_source_ip: bool,
    pub(crate) ready_timeout: Duration,
}

/// Checks what `handler` can do with `forwards` (and automatic publishing
/// on `publish_auto`), and resolves a forwarder when one will start.
pub(crate) fn check(
    handler: PortHandler,
    forwards: &[Forward],
    publish_auto: Option<IpAddr>,
    allow_host_loopback: bool,
    settings: &ForwarderSettings,
) -> Result<Checked, SetupError> {
    let mut checked = Checked {
        forwarder: None,
        warnings: Vec::new(),
        keep_source_ip: true,
    };
    match handler {
        PortHandler::Slirp4netns => {
            if let Some(addr @ IpAddr::V6(_)) = publish_auto {
                return Err(SetupError::Ipv6HostAddress {
                    addr,
                    mapping: "--publish-auto".into(),
                });
            }
            if let Some(f) = forwards
                .iter()
                .find(|f| f.host_ip.is_some_and(|a| a.is_ipv6()))
            {
                return Err(SetupError::Ipv6HostAddress {
                    addr: f.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    mapping: f.to_mapping().to_string(),
                });
            }
            let udp = publish_auto.is_some() || forwards.iter().any(|f| f.proto == Protocol::Udp);
            if !allow_host_loopback && udp {
                // libslirp does not translate the namespace's UDP replies to
                // the host while host loopback is disabled (podman issue
                // #4586).
                checked.warnings.push(
                    "UDP forwards through slirp4netns get no replies while host loopback is disabled \
                     (a slirp4netns limitation); allow it (allow_host_loopback=true), \
                     or forward through a port forwarder (PortHandler::Rootlesskit)"
                        .to_owned(),
                );
            }
        }
        _ => {
            if !forwards.is_empty() {
                checked.forwarder = Some(resolve_forwarder(&settings.choice)?);
            }
            checked.keep_source_ip = settings.keep_source_ip;
        }
    }
    Ok(checked)
}

/// Whether `handler` forwards through slirp4netns's API socket, so that a
/// setup without one named makes a private one.
pub(crate) fn needs_api_socket(handler: PortHandler) -> bool {
    handler == PortHandler::Slirp4netns
}

/// The handler a started network forwards through.
pub(crate) fn open(
    handler: PortHandler,
    api_socket: Option<&Path>,
    target: &Target,
    guest: Ipv4Addr,
    settings: ForwarderSettings,
    slirp_pid: u32,
) -> Box<dyn Ports> {
    match handler {
        // A setup with this handler always has an API socket
        // (needs_api_socket); without one, every request names the empty
        // path it cannot reach.
        PortHandler::Slirp4netns => Box::new(ApiPorts {
            socket: api_socket.map(Path::to_owned).unwrap_or_default(),
            made: Vec::new(),
        }),
        _ => Box::new(ForwarderPorts {
            info: settings.planned.clone(),
            settings,
            netns: target.netns_path(),
            userns: target.userns_path().map(Path::to_owned),
            guest,
            slirp_pid,
            running: None,
        }),
    }
}

/// Forwarding through slirp4netns's own API (`add_hostfwd`).
#[derive(Debug)]
struct ApiPorts {
    socket: PathBuf,
    /// What it forwards, with slirp4netns's ids.
    made: Vec<ForwardInfo>,
}

impl ApiPorts {
    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Adds `forwards`: all, or none (what this call added is removed
    /// again when one fails, which is returned with why). An IPv6 host
    /// address is refused, never widened to 0.0.0.0.
    fn add_all(&mut self, forwards: &[Forward]) -> Result<(), Box<(Forward, PortChangeError)>> {
        let api = self.client();
        let mut added: Vec<ForwardInfo> = Vec::new();
        for f in forwards {
            let key = f.key();
            let mut request = HostFwd::new(f.proto, f.host_port, f.container_port);
            let result = match f.host_ip {
                Some(IpAddr::V6(_)) => Err(PortChangeError::Ipv6HostAddress(key)),
                Some(IpAddr::V4(a)) => {
                    request = request.with_host_addr(a);
                    api.add_hostfwd(&request)
                        .map_err(|error| PortChangeError::Api { key, error })
                }
                None => api
                    .add_hostfwd(&request)
                    .map_err(|error| PortChangeError::Api { key, error }),
            };
            match result {
                Ok(id) => {
                    tracing::debug!(%f, id, "forwarded");
                    added.push(ForwardInfo::new(*f, Some(id)));
                }
                Err(e) => {
                    for id in added.iter().filter_map(|done| done.id) {
                        let _ = api.remove_hostfwd(id);
                    }
                    return Err(Box::new((*f, e)));
                }
            }
        }
        self.made.extend(added);
        Ok(())
    }
}

impl Ports for ApiPorts {
    fn start(
        &mut self,
        slirp: &mut Slirp,
        forwards: &[Forward],
    ) -> Result<Vec<ForwardInfo>, SetupError> {
        if forwards.is_empty() {
            return Ok(Vec::new());
        }
        // The socket exists before the ready byte; wait briefly anyway in
        // case an older slirp4netns orders it differently, watching for its
        // death.
        slirp_api::wait_for_socket(&self.socket, Duration::from_secs(60), |d| {
            slirp
                .exited_within(d)
                .map(|e| format!("{e}: {}", slirp.log_text()))
        })?;
        match self.add_all(forwards).map_err(|e| *e) {
            Ok(()) => Ok(self.made.clone()),
            Err((forward, PortChangeError::Api { error, .. })) => {
                Err(SetupError::Forward { forward, error })
            }
            Err((forward, _)) => Err(SetupError::Ipv6HostAddress {
                addr: forward.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                mapping: forward.to_string(),
            }),
        }
    }

    fn add(&mut self, forwards: &[Forward]) -> Result<Vec<ForwardInfo>, PortChangeError> {
        self.add_all(forwards).map_err(|e| e.1)?;
        Ok(self.made.clone())
    }

    fn remove(&mut self, keys: &[PortKey]) -> Result<Vec<ForwardInfo>, PortChangeError> {
        let api = self.client();
        for key in keys {
            let Some(pos) = self.made.iter().position(|i| i.key() == *key) else {
                continue;
            };
            if let Some(id) = self.made[pos].id {
                api.remove_hostfwd(id)
                    .map_err(|error| PortChangeError::Api { key: *key, error })?;
            }
            self.made.remove(pos);
        }
        Ok(self.made.clone())
    }

    fn list(&mut self) -> Result<Vec<ForwardInfo>, PortChangeError> {
        let entries = self
            .client()
            .list_hostfwd()
            .map_err(PortChangeError::ApiList)?;
        // The ids say which of ours each entry is; an address slirp4netns
        // reports as 0.0.0.0 is "all addresses".
        self.made = entries
            .iter()
            .map(|e| {
                let forward = Forward {
                    proto: e.proto,
                    host_ip: (!e.host_addr.is_unspecified()).then_some(IpAddr::V4(e.host_addr)),
                    host_port: e.host_port,
                    container_port: e.guest_port,
                };
                ForwardInfo::new(forward, Some(e.id))
            })
            .collect();
        Ok(self.made.clone())
    }

    fn forwarder(&self) -> Option<&ForwarderInfo> {
        None
    }

    fn keeps_source_ip(&self) -> bool {
        true
    }

    fn stop(self: Box<Self>) {}
}

/// Forwarding through a port forwarder (rootlessport), started with the
/// first forwards.
#[derive(Debug)]
struct ForwarderPorts {
    settings: ForwarderSettings,
    /// The forwarder chosen (and its pid once started).
    info: Option<ForwarderInfo>,
    netns: PathBuf,
    userns: Option<PathBuf>,
    guest: Ipv4Addr,
    slirp_pid: u32,
    running: Option<PortForwarder>,
}

impl ForwarderPorts {
    /// Starts the forwarder chosen in `info` with `forwards`.
    fn start_forwarder(&mut self, forwards: &[Forward]) -> Result<(), ForwarderError> {
        let Some(forwarder) = self.info.clone() else {
            return Ok(());
        };
        let mut config = slirp_opts::rootlessport::Config::new(
            forwards.iter().map(Forward::to_mapping).collect(),
            self.netns.to_string_lossy(),
            IpAddr::V4(self.guest),
        );
        // Where HelperCommand puts the pipes.
        config.exit_fd = slirp_proc::HELPER_EXIT_FD;
        config.ready_fd = slirp_proc::HELPER_READY_FD;
        config.tmp_dir = std::env::temp_dir().to_string_lossy().into_owned();
        config.container_id = format!("slirpnet-{}", self.slirp_pid);
        let started = PortForwarder::start(
            &forwarder,
            config,
            self.userns.as_deref(),
            self.settings.ready_timeout,
            self.settings.keep_source_ip,
        )?;
        if let Some(ForwarderInfo::Binary { pid, .. }) = &mut self.info {
            *pid = started.pid();
        }
        self.running = Some(started);
        Ok(())
    }

    fn now(forwards: Vec<Forward>) -> Vec<ForwardInfo> {
        forwards
            .into_iter()
            .map(|f| ForwardInfo::new(f, None))
            .collect()
    }
}

impl Ports for ForwarderPorts {
    fn start(
        &mut self,
        _slirp: &mut Slirp,
        forwards: &[Forward],
    ) -> Result<Vec<ForwardInfo>, SetupError> {
        if !forwards.is_empty() {
            self.start_forwarder(forwards)?;
        }
        Ok(Self::now(forwards.to_vec()))
    }

    fn add(&mut self, forwards: &[Forward]) -> Result<Vec<ForwardInfo>, PortChangeError> {
        if let Some(fwd) = &self.running {
            return fwd.add(forwards).map(Self::now);
        }
        // The first ports of a session without any: start a forwarder.
        self.info = Some(resolve_forwarder(&self.settings.choice)?);
        if let Err(e) = self.start_forwarder(forwards) {
            self.info = None;
            return Err(e.into());
        }
        Ok(Self::now(forwards.to_vec()))
    }

    fn remove(&mut self, keys: &[PortKey]) -> Result<Vec<ForwardInfo>, PortChangeError> {
        match &self.running {
            Some(fwd) => fwd.remove(keys).map(Self::now),
            None => Ok(Vec::new()),
        }
    }

    fn list(&mut self) -> Result<Vec<ForwardInfo>, PortChangeError> {
        match &self.running {
            Some(fwd) => fwd.list().map(Self::now),
            None => Ok(Vec::new()),
        }
    }

    fn forwarder(&self) -> Option<&ForwarderInfo> {
        self.info.as_ref()
    }

    fn keeps_source_ip(&self) -> bool {
        match &self.running {
            Some(fwd) => fwd.keeps_source_ip(),
            None => self.settings.keep_source_ip,
        }
    }

    fn stop(self: Box<Self>) {
        if let Some(fwd) = self.running {
            fwd.stop();
        }
    }
}
