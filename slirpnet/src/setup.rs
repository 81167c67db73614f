//! The setup: plan, start, forward, undo on failure.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;
use slirp_api::{Client, HostFwd};
use slirp_opts::portctl::PortKey;
use slirp_opts::{
    expand_all, AddrError, ArgvError, Features, Forward, Invocation, NetworkOptions, PortError,
    PortHandler, PortMapping, Protocol, Subnet, Target, IPV6_DNS, IPV6_GATEWAY, IPV6_GUEST,
};
use slirp_proc::{Exit, Slirp, SlirpCommand, StartError};

use crate::binary::{detect_features, find_binary, BinaryError};
use crate::dirs::runtime_dir;
use crate::portfwd::{
    resolve_forwarder, ForwarderChoice, ForwarderInfo, PortChangeError, PortForwardError,
    PortForwarder,
};

/// How to set up: everything but the namespace, which [`Plan::start`]
/// (or [`setup`]) takes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SetupOptions {
    /// The slirp4netns binary; `None` means `slirp4netns` on PATH.
    pub binary: Option<PathBuf>,
    /// The network options (podman's `-o` values over its defaults).
    pub network: NetworkOptions,
    /// Host ports to forward.
    pub ports: Vec<PortMapping>,
    /// The API socket path. `None`: a private one in a temporary directory
    /// when port_handler=slirp4netns (so forwards can be added), else none.
    /// With the rootlesskit handler an API socket asked for here is only for
    /// the caller's use: ports are forwarded by one handler, never both.
    pub api_socket: Option<PathBuf>,
    /// Turn IPv6 accept_dad off in the namespace while slirp4netns starts.
    /// Needs the right to enter the namespace (CAP_SYS_ADMIN in this
    /// process's own user namespace too); off when the caller does it from
    /// inside, as [`Plan::run`] does.
    pub toggle_accept_dad: bool,
    /// Start slirp4netns in a new mount namespace when the sandbox is on
    /// (needs CAP_SYS_ADMIN).
    pub sandbox_mount_ns: bool,
    /// How long slirp4netns (and the port forwarder) may take to become ready.
    pub ready_timeout: Duration,
    /// How long `slirp4netns --help` (feature detection) may take.
    pub help_timeout: Duration,
    /// Signal slirp4netns gets if the thread that started it dies.
    pub parent_death_signal: Option<Signal>,
    /// Who forwards ports with port_handler=rootlesskit. In-process
    /// forwarding joins the network namespace from a thread of this
    /// process, which needs CAP_SYS_ADMIN in this process's own user
    /// namespace as well as in the namespace's owner: rootless, keep the
    /// default (our rootlessport binary joins the user namespace first).
    pub forwarder: ForwarderChoice,
    /// With port_handler=rootlesskit, the service sees each client's own
    /// address (as slirp4netns's own handler shows it), except loopback
    /// clients, which keep the namespace's address (CVE-2021-20199). On by
    /// default; where the namespace refuses, the forwarder warns once and
    /// forwards as before.
    pub keep_source_ip: bool,
    /// Forward every port the namespace listens on to the same host port
    /// (`--publish-auto`), once [`AutoPublisher::start`](crate::AutoPublisher::start)
    /// runs for the network. `None`: only the ports asked for.
    pub publish_auto: Option<AutoPublish>,
}

impl SetupOptions {
    /// Options with the usual defaults: slirp4netns from PATH, no ports,
    /// 30 s to be ready, 10 s for `--help`, our rootlessport for ports; and
    /// what this process's privilege allows, as the `slirpnet` program
    /// chooses it. With CAP_SYS_ADMIN (root): accept_dad toggled from
    /// outside, slirp4netns's sandbox (unless `network.no_pivot_root`) in a
    /// mount namespace of its own. Without (rootless): none of these, as
    /// they need it: `toggle_accept_dad` and `sandbox_mount_ns` off and
    /// `network.no_pivot_root` on.
    pub fn new(mut network: NetworkOptions) -> Self {
        let privileged = privileged();
        if !privileged {
            network.no_pivot_root = true;
        }
        SetupOptions {
            binary: None,
            network,
            ports: Vec::new(),
            api_socket: None,
            toggle_accept_dad: privileged,
            sandbox_mount_ns: privileged,
            ready_timeout: Duration::from_secs(30),
            help_timeout: crate::binary::HELP_TIMEOUT,
            parent_death_signal: None,
            forwarder: ForwarderChoice::default(),
            keep_source_ip: true,
            publish_auto: None,
        }
    }
}

/// Whether this process has CAP_SYS_ADMIN in its own user namespace: what
/// entering a namespace, unsharing a mount namespace and slirp4netns's
/// sandbox need.
fn privileged() -> bool {
    netns_util::has_cap(caps::Capability::CAP_SYS_ADMIN)
}

/// How often automatic publishing scans the namespace by default: a new
/// listener is forwarded within about this long (a scan and the change;
/// well within 100 ms).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

/// What `--publish-auto` forwards, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AutoPublish {
    /// The host address each port is forwarded on (127.0.0.1 by default:
    /// never wider unless asked).
    pub host_ip: IpAddr,
    /// Ports never forwarded automatically.
    pub exclude: Vec<RangeInclusive<u16>>,
    /// How often the namespace is scanned.
    pub interval: Duration,
}

impl Default for AutoPublish {
    fn default() -> Self {
        AutoPublish {
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            exclude: Vec::new(),
            interval: DEFAULT_INTERVAL,
        }
    }
}

impl AutoPublish {
    /// Forwards on `host_ip`, excluding nothing, scanning every 50 ms.
    pub fn new(host_ip: IpAddr) -> Self {
        AutoPublish {
            host_ip,
            ..AutoPublish::default()
        }
    }

    /// Whether `port` is excluded.
    pub fn excludes(&self, port: u16) -> bool {
        self.exclude.iter().any(|r| r.contains(&port))
    }
}

/// A failed setup. Nothing it started is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The binary.
    #[error(transparent)]
    Binary(#[from] BinaryError),
    /// The argv.
    #[error(transparent)]
    Args(#[from] ArgvError),
    /// An address cannot be derived from the subnet.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// A port mapping.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The port forwarder (port_handler=rootlesskit).
    #[error(transparent)]
    PortForward(#[from] PortForwardError),
    /// The namespace to network, for the accept_dad toggle or the forwarder.
    #[error(transparent)]
    Netns(#[from] netns_util::NetnsError),
    /// slirp4netns forwards only IPv4 host addresses.
    #[error("port_handler=slirp4netns can only listen on IPv4 host addresses, not {addr} (in {mapping})")]
    Ipv6HostAddress {
        /// The address.
        addr: IpAddr,
        /// The mapping, in `-p` syntax.
        mapping: String,
    },
    /// A setting needs CAP_SYS_ADMIN in this process's own user namespace,
    /// which this process lacks (rootless).
    #[error("{what} needs CAP_SYS_ADMIN in this process's own user namespace, which it lacks (rootless); {fix}")]
    Unprivileged {
        /// The setting.
        what: &'static str,
        /// What to change, in the library's terms.
        fix: &'static str,
    },
    /// The temporary directory for the API socket.
    #[error("failed to create a directory for the slirp4netns API socket: {0}")]
    ApiDir(std::io::Error),
    /// Starting slirp4netns.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The API socket did not appear.
    #[error(transparent)]
    ApiWait(#[from] slirp_api::WaitError),
    /// Adding a forward.
    #[error("failed to forward {forward}: {error}")]
    Forward {
        /// The forward.
        forward: Forward,
        /// slirp4netns's answer (in the message; not also its source).
        error: slirp_api::ApiError,
    },
}

/// One forward made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ForwardInfo {
    /// tcp or udp.
    pub proto: Protocol,
    /// The host address listened on; `None`: all addresses (0.0.0.0 through
    /// slirp4netns; every IPv4 and IPv6 address through rootlessport).
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The port inside the namespace.
    pub container_port: u16,
    /// The slirp4netns forward id, with port_handler=slirp4netns.
    pub id: Option<u32>,
    /// Made by automatic publishing (`--publish-auto`), not asked for.
    pub auto: bool,
}

impl ForwardInfo {
    fn of(f: &Forward, id: Option<u32>) -> Self {
        ForwardInfo {
            proto: f.proto,
            host_ip: f.host_ip,
            host_port: f.host_port,
            container_port: f.container_port,
            id,
            auto: false,
        }
    }

    /// The forward, as a forwarder names it.
    pub fn forward(&self) -> Forward {
        Forward {
            proto: self.proto,
            host_ip: self.host_ip,
            host_port: self.host_port,
            container_port: self.container_port,
        }
    }

    /// What `remove_ports` matches.
    pub fn key(&self) -> PortKey {
        PortKey::from(&self.forward())
    }
}

/// What the setup made (or, from [`plan`], will make).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SetupInfo {
    /// slirp4netns's pid (0 in a plan).
    pub pid: u32,
    /// The IPv4 subnet.
    pub subnet: String,
    /// The guest address of the tap device.
    pub guest: Ipv4Addr,
    /// The gateway (the host, seen from the namespace).
    pub gateway: Ipv4Addr,
    /// The DNS forwarder.
    pub dns: Ipv4Addr,
    /// Whether IPv6 is on.
    pub ipv6: bool,
    /// The IPv6 guest address, when IPv6 is on.
    pub guest_v6: Option<Ipv6Addr>,
    /// The IPv6 gateway.
    pub gateway_v6: Option<Ipv6Addr>,
    /// The IPv6 DNS forwarder.
    pub dns_v6: Option<Ipv6Addr>,
    /// The tap device's MTU.
    pub mtu: u32,
    /// The tap device's name.
    pub tap: String,
    /// Who forwards ports: `rootlesskit` (a port forwarder) or `slirp4netns`.
    pub port_handler: String,
    /// With port_handler=rootlesskit and ports: the forwarder, a binary (and
    /// its pid once started) or in-process.
    pub forwarder: Option<ForwarderInfo>,
    /// Whether the service sees clients' own addresses: asked of the
    /// rootlesskit handler's forwarder (loopback clients excepted); always
    /// so through slirp4netns.
    pub keep_source_ip: bool,
    /// The API socket, if any.
    pub api_socket: Option<PathBuf>,
    /// The forwards.
    pub forwards: Vec<ForwardInfo>,
    /// With automatic publishing (`--publish-auto`): the host address the
    /// namespace's listening ports are forwarded on.
    pub publish_auto: Option<IpAddr>,
    /// What will not work as the options stand, and how to fix it.
    pub warnings: Vec<String>,
}

/// A checked plan: binary, features, addresses, forwards and forwarder,
/// with nothing started. [`Plan::start`] consumes it for one namespace.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The slirp4netns binary.
    pub binary: PathBuf,
    /// What the setup will make (pid 0; no private API socket yet).
    pub info: SetupInfo,
    features: Features,
    opts: SetupOptions,
    forwards: Vec<Forward>,
}

/// Checks everything that can be checked without starting anything: the
/// binary and its features, the addresses, the port mappings, the port
/// forwarder.
///
/// # Errors
///
/// The binary is missing or its `--help` fails, an address falls outside
/// the subnet, a port mapping is invalid (or names an IPv6 host address for
/// port_handler=slirp4netns), the port forwarder cannot be found, or a
/// setting needs a privilege this process lacks
/// ([`SetupError::Unprivileged`] says which setting to change).
pub fn plan(opts: &SetupOptions) -> Result<Plan, SetupError> {
    let binary = find_binary(opts.binary.as_deref())?;
    let features = detect_features(&binary, opts.help_timeout)?;
    check_privilege(opts, features, privileged())?;
    let subnet = Subnet::from_cidr(opts.network.cidr);
    let (guest, gateway, dns) = (subnet.guest()?, subnet.gateway()?, subnet.dns()?);
    let forwards = expand_all(&opts.ports)?;
    let handler = opts.network.port_handler;
    let forwarder = if !forwards.is_empty() && handler == PortHandler::Rootlesskit {
        Some(resolve_forwarder(&opts.forwarder)?)
    } else {
        None
    };
    if handler == PortHandler::Slirp4netns {
        if let Some(addr @ IpAddr::V6(_)) = opts.publish_auto.as_ref().map(|a| a.host_ip) {
            return Err(SetupError::Ipv6HostAddress {
                addr,
                mapping: "--publish-auto".into(),
            });
        }
        for m in &opts.ports {
            if let Some(addr @ IpAddr::V6(_)) = m.host_addr()? {
                return Err(SetupError::Ipv6HostAddress {
                    addr,
                    mapping: m.to_string(),
                });
            }
        }
    }
    let ipv6 = opts.network.enable_ipv6;
    let mut warnings = Vec::new();
    if handler == PortHandler::Slirp4netns
        && !opts.network.allow_host_loopback
        && (opts.publish_auto.is_some() || forwards.iter().any(|f| f.proto == Protocol::Udp))
    {
        // libslirp does not translate the namespace's UDP replies to the
        // host while host loopback is disabled (podman issue #4586).
        warnings.push(
            "UDP forwards through slirp4netns get no replies while host loopback is disabled \
             (a slirp4netns limitation); add -o allow_host_loopback=true, or use the rootlesskit port handler"
                .to_owned(),
        );
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let info = SetupInfo {
        pid: 0,
        subnet: subnet.to_string(),
        guest,
        gateway,
        dns,
        ipv6,
        guest_v6: ipv6.then_some(IPV6_GUEST),
        gateway_v6: ipv6.then_some(IPV6_GATEWAY),
        dns_v6: ipv6.then_some(IPV6_DNS),
        mtu: opts.network.mtu,
        tap: Invocation::new(Target::Pid(0)).tap,
        port_handler: handler.to_string(),
        forwarder,
        keep_source_ip: handler == PortHandler::Slirp4netns || opts.keep_source_ip,
        api_socket: opts.api_socket.clone(),
        forwards: forwards.iter().map(|f| ForwardInfo::of(f, None)).collect(),
        publish_auto: opts.publish_auto.as_ref().map(|a| a.host_ip),
        warnings,
    };
    Ok(Plan {
        binary,
        info,
        features,
        opts: opts.clone(),
        forwards,
    })
}

/// Refuses, before anything starts, what an unprivileged process cannot do,
/// naming the setting to change.
fn check_privilege(
    opts: &SetupOptions,
    features: Features,
    privileged: bool,
) -> Result<(), SetupError> {
    if privileged {
        return Ok(());
    }
    let sandbox = !opts.network.no_pivot_root && features.enable_sandbox;
    if sandbox {
        return Err(SetupError::Unprivileged {
            what: "slirp4netns's sandbox (--enable-sandbox)",
            fix: "set network.no_pivot_root = true (SetupOptions::new does so for a process without it)",
        });
    }
    if opts.toggle_accept_dad && opts.network.enable_ipv6 {
        return Err(SetupError::Unprivileged {
            what: "toggling IPv6 accept_dad from outside the namespace",
            fix: "set SetupOptions::toggle_accept_dad = false (SetupOptions::new does so for a process without it; NsOptions::hold_accept_dad does it from inside)",
        });
    }
    #[cfg(feature = "in-process")]
    if opts.forwarder == ForwarderChoice::InProcess
        && opts.network.port_handler == PortHandler::Rootlesskit
    {
        return Err(SetupError::Unprivileged {
            what: "in-process port forwarding (ForwarderChoice::InProcess), which joins the network namespace from this process,",
            fix: "use ForwarderChoice::Rootlessport (the default: the rootlessport binary joins the namespace's user namespace first) or port_handler=slirp4netns",
        });
    }
    Ok(())
}

impl Plan {
    /// For a namespace whose own process holds accept_dad (an [`NsChild`](crate::NsChild)):
    /// no toggle from outside.
    pub(crate) fn accept_dad_from_inside(mut self) -> Self {
        self.opts.toggle_accept_dad = false;
        self
    }

    /// Whether starting makes a private API socket (port_handler=slirp4netns
    /// without one named).
    fn private_api_socket(&self) -> bool {
        self.opts.api_socket.is_none() && self.opts.network.port_handler == PortHandler::Slirp4netns
    }

    fn command(&self, target: Target, api_socket: Option<PathBuf>) -> SlirpCommand {
        let mut invocation = Invocation::new(target);
        invocation.api_socket = api_socket;
        let mut command = SlirpCommand::new(
            &self.binary,
            self.opts.network.clone(),
            self.features,
            invocation,
        );
        command.new_mount_ns &= self.opts.sandbox_mount_ns;
        command.toggle_accept_dad &= self.opts.toggle_accept_dad;
        command.ready_timeout = self.opts.ready_timeout;
        command.parent_death_signal = self.opts.parent_death_signal;
        command
    }

    /// The slirp4netns argv (after the binary) that [`Plan::start`] would
    /// run for `target`, for showing; a private API socket is shown in the
    /// directory where it would be made.
    ///
    /// # Errors
    ///
    /// The argv cannot be built (e.g. an API socket path that is too long).
    pub fn args_for(&self, target: &Target) -> Result<Vec<OsString>, SetupError> {
        let api = self.opts.api_socket.clone().or_else(|| {
            self.private_api_socket()
                .then(|| runtime_dir().join("slirpnet-XXXXXX").join("api.sock"))
        });
        Ok(self.command(target.clone(), api).args()?)
    }

    /// Starts slirp4netns for `target`, waits until it is ready, and
    /// forwards the ports through exactly one handler. On failure whatever
    /// was started is stopped and removed.
    ///
    /// # Errors
    ///
    /// The target's namespace path cannot be opened or is no network
    /// namespace ([`SetupError::Netns`]), the private API socket's directory
    /// cannot be made, slirp4netns fails to start or become ready, or a
    /// forward cannot be made.
    pub fn start(self, target: Target) -> Result<Network, SetupError> {
        // A missing path, or one that is no network namespace, is told in
        // one line here rather than by slirp4netns's usage text.
        if let Target::Path { netns, .. } = &target {
            netns_util::Netns::open(netns)?;
        }
        let api_dir = if self.private_api_socket() {
            Some(crate::dirs::private_dir("slirpnet-").map_err(SetupError::ApiDir)?)
        } else {
            None
        };
        let api_socket = match &api_dir {
            Some(dir) => Some(dir.path().join("api.sock")),
            None => self.opts.api_socket.clone(),
        };
        let command = self.command(target.clone(), api_socket.clone());
        let slirp = Slirp::start(&command)?;
        let mut info = self.info;
        info.pid = slirp.pid();
        info.api_socket = api_socket;
        let mut net = Network {
            info,
            ports: None,
            slirp,
            _api_dir: api_dir,
            target: target.clone(),
            ready_timeout: self.opts.ready_timeout,
            choice: self.opts.forwarder.clone(),
            auto: self.opts.publish_auto.clone(),
            auto_keys: HashSet::new(),
        };
        match (&self.opts.network.port_handler, net.info.api_socket.clone()) {
            (PortHandler::Slirp4netns, Some(sock)) if !self.forwards.is_empty() => {
                net.forward_all(&sock, &self.forwards)?;
            }
            _ => {}
        }
        if net.info.forwarder.is_some() {
            net.start_forwarder(&self.opts.ports)?;
        }
        Ok(net)
    }
}

/// A networked namespace: owns slirp4netns, the port forwarder and the API
/// socket's directory. Dropping it tears everything down;
/// [`Network::teardown`] does so and reports how slirp4netns ended.
#[derive(Debug)]
pub struct Network {
    info: SetupInfo,
    // Field order is drop order: the port forwarder stops first, then
    // slirp4netns (which unlinks its socket), then the directory goes.
    ports: Option<PortForwarder>,
    slirp: Slirp,
    _api_dir: Option<tempfile::TempDir>,
    /// For a forwarder started by the first `add_ports`.
    target: Target,
    ready_timeout: Duration,
    choice: ForwarderChoice,
    /// `--publish-auto`, and the forwards it made.
    auto: Option<AutoPublish>,
    auto_keys: HashSet<PortKey>,
}

/// Plans with `opts`, then starts for `target`: [`plan`] and
/// [`Plan::start`] in one call.
///
/// # Errors
///
/// Whatever [`plan`] or [`Plan::start`] reports.
pub fn setup(target: Target, opts: &SetupOptions) -> Result<Network, SetupError> {
    plan(opts)?.start(target)
}

/// Adds `forwards` through slirp4netns's API: all, or none (what this call
/// added is removed again when one fails, which is returned with why). An
/// IPv6 host address is refused, never widened to 0.0.0.0.
fn add_via_api(
    api: &Client,
    forwards: &[Forward],
) -> Result<Vec<ForwardInfo>, Box<(Forward, PortChangeError)>> {
    let mut added: Vec<ForwardInfo> = Vec::new();
    for f in forwards {
        let key = PortKey::from(f);
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
                added.push(ForwardInfo::of(f, Some(id)));
            }
            Err(e) => {
                for done in &added {
                    if let Some(id) = done.id {
                        let _ = api.remove_hostfwd(id);
                    }
                }
                return Err(Box::new((*f, e)));
            }
        }
    }
    Ok(added)
}

impl Network {
    fn forward_all(&mut self, sock: &Path, forwards: &[Forward]) -> Result<(), SetupError> {
        let slirp = &mut self.slirp;
        // The socket exists before the ready byte; wait briefly anyway in case
        // an older slirp4netns orders it differently, watching for its death.
        slirp_api::wait_for_socket(sock, Duration::from_secs(60), |d| {
            slirp
                .exited_within(d)
                .map(|e| format!("{e}: {}", slirp.log_text()))
        })?;
        let client = Client::new(sock);
        match add_via_api(&client, forwards).map_err(|e| *e) {
            Ok(added) => {
                self.info.forwards = added;
                Ok(())
            }
            Err((forward, PortChangeError::Api { error, .. })) => {
                Err(SetupError::Forward { forward, error })
            }
            Err((forward, _)) => Err(SetupError::Ipv6HostAddress {
                addr: forward.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                mapping: forward.to_string(),
            }),
        }
    }

    /// Starts the forwarder named in `info.forwarder` with `mappings`.
    fn start_forwarder(&mut self, mappings: &[PortMapping]) -> Result<(), PortForwardError> {
        let Some(forwarder) = self.info.forwarder.clone() else {
            return Ok(());
        };
        let mut config = slirp_opts::rootlessport::Config::new(
            mappings.to_vec(),
            self.target.netns_path().to_string_lossy(),
            IpAddr::V4(self.info.guest),
        );
        // Where HelperCommand puts the pipes.
        config.exit_fd = slirp_proc::HELPER_EXIT_FD;
        config.ready_fd = slirp_proc::HELPER_READY_FD;
        config.tmp_dir = std::env::temp_dir().to_string_lossy().into_owned();
        config.container_id = format!("slirpnet-{}", self.info.pid);
        let started = PortForwarder::start(
            &forwarder,
            config,
            self.target.userns_path(),
            self.ready_timeout,
            self.info.keep_source_ip,
        )?;
        if let Some(ForwarderInfo::Binary { pid, .. }) = &mut self.info.forwarder {
            *pid = started.pid();
        }
        self.ports = Some(started);
        Ok(())
    }

    fn api(&self) -> Option<Client> {
        (self.info.port_handler == PortHandler::Slirp4netns.to_string())
            .then(|| self.info.api_socket.as_deref().map(Client::new))
            .flatten()
    }

    /// Every forward now, as the handler reports it (slirp4netns's
    /// `list_hostfwd`, or the forwarder's own list), also kept in
    /// [`info`](Network::info).
    ///
    /// # Errors
    ///
    /// The handler cannot be asked.
    pub fn forwards(&mut self) -> Result<&[ForwardInfo], PortChangeError> {
        if let Some(api) = self.api() {
            let entries = api.list_hostfwd().map_err(|error| PortChangeError::Api {
                key: PortKey {
                    proto: Protocol::Tcp,
                    host_ip: None,
                    host_port: 0,
                },
                error,
            })?;
            // The ids say which of ours each entry is; an address slirp4netns
            // reports as 0.0.0.0 is "all addresses".
            self.info.forwards = entries
                .iter()
                .map(|e| ForwardInfo {
                    proto: e.proto,
                    host_ip: (!e.host_addr.is_unspecified()).then_some(IpAddr::V4(e.host_addr)),
                    host_port: e.host_port,
                    container_port: e.guest_port,
                    id: Some(e.id),
                    auto: false,
                })
                .collect();
        } else if let Some(fwd) = &self.ports {
            let now = fwd.list()?;
            self.info.forwards = now.iter().map(|f| ForwardInfo::of(f, None)).collect();
        }
        self.mark_auto();
        Ok(&self.info.forwards)
    }

    /// Forwards `mappings` too, at once and through the session's handler:
    /// all of them, or none when one cannot be (a port in use, forwarded
    /// already, ...). With the rootlesskit handler and no forwarder yet, one
    /// is started. Forwards that automatic publishing made exactly so are
    /// taken over instead (no longer automatic). Returns every forward now.
    ///
    /// # Errors
    ///
    /// A mapping is invalid or taken, or the handler refused; nothing was
    /// added.
    pub fn add_ports(
        &mut self,
        mappings: &[PortMapping],
    ) -> Result<&[ForwardInfo], PortChangeError> {
        let forwards = expand_all(mappings)?;
        // Asked for exactly as automatic publishing made them: they become
        // the caller's, and stay when their socket closes.
        let automatic = |f: &Forward| {
            let key = PortKey::from(f);
            self.auto_keys.contains(&key)
                && self
                    .info
                    .forwards
                    .iter()
                    .any(|i| i.key() == key && i.container_port == f.container_port)
        };
        if !forwards.is_empty() && forwards.iter().all(automatic) {
            for f in &forwards {
                self.auto_keys.remove(&PortKey::from(f));
            }
            self.mark_auto();
            return Ok(&self.info.forwards);
        }
        for f in &forwards {
            let key = PortKey::from(f);
            if self.info.forwards.iter().any(|i| i.key() == key) {
                return Err(PortChangeError::AlreadyForwarded(key));
            }
        }
        if let Some(api) = self.api() {
            let added = add_via_api(&api, &forwards).map_err(|e| e.1)?;
            self.info.forwards.extend(added);
            self.mark_auto();
            return Ok(&self.info.forwards);
        }
        match &self.ports {
            Some(fwd) => {
                let now = fwd.add(mappings)?;
                self.info.forwards = now.iter().map(|f| ForwardInfo::of(f, None)).collect();
            }
            None => {
                // The first ports of a session without any: start a forwarder.
                self.info.forwarder = Some(resolve_forwarder(&self.choice)?);
                if let Err(e) = self.start_forwarder(mappings) {
                    self.info.forwarder = None;
                    return Err(e.into());
                }
                self.info.forwards = forwards.iter().map(|f| ForwardInfo::of(f, None)).collect();
            }
        }
        self.mark_auto();
        Ok(&self.info.forwards)
    }

    /// Stops forwarding `ports` (by protocol, host address and host port):
    /// all of them, or none when one is not forwarded. Their listeners close
    /// at once; connections already open carry on. Returns every forward
    /// now.
    ///
    /// # Errors
    ///
    /// A port is not forwarded, or the handler refused; nothing was removed.
    pub fn remove_ports(&mut self, ports: &[PortKey]) -> Result<&[ForwardInfo], PortChangeError> {
        for key in ports {
            if !self.info.forwards.iter().any(|i| i.key() == *key) {
                return Err(PortChangeError::NotForwarded(*key));
            }
        }
        if let Some(api) = self.api() {
            for key in ports {
                let Some(pos) = self.info.forwards.iter().position(|i| i.key() == *key) else {
                    continue;
                };
                if let Some(id) = self.info.forwards[pos].id {
                    api.remove_hostfwd(id)
                        .map_err(|error| PortChangeError::Api { key: *key, error })?;
                }
                self.info.forwards.remove(pos);
            }
            self.mark_auto();
            return Ok(&self.info.forwards);
        }
        if let Some(fwd) = &self.ports {
            let now = fwd.remove(ports)?;
            self.info.forwards = now.iter().map(|f| ForwardInfo::of(f, None)).collect();
        }
        self.mark_auto();
        Ok(&self.info.forwards)
    }

    /// Marks the automatic forwards in `info.forwards`, forgetting those
    /// that are gone (removed by hand).
    fn mark_auto(&mut self) {
        // 0.0.0.0 and "all addresses" are one forward (slirp4netns lists
        // the one as the other).
        let plain = |k: &PortKey| {
            let ip = k
                .host_ip
                .filter(|ip| *ip != IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            (k.proto, ip, k.host_port)
        };
        let wanted: HashSet<_> = self.auto_keys.iter().map(plain).collect();
        let mut now = HashSet::new();
        for f in &mut self.info.forwards {
            f.auto = wanted.contains(&plain(&f.key()));
            if f.auto {
                now.insert(f.key());
            }
        }
        self.auto_keys = now;
    }

    /// What automatic publishing this network was set up with.
    pub fn auto_publish(&self) -> Option<&AutoPublish> {
        self.auto.as_ref()
    }

    /// The forwards made by automatic publishing.
    pub(crate) fn auto_forwards(&self) -> impl Iterator<Item = PortKey> + '_ {
        self.auto_keys.iter().copied()
    }

    /// [`Network::add_ports`], marking what it adds as automatic.
    pub(crate) fn add_auto(&mut self, mappings: &[PortMapping]) -> Result<(), PortChangeError> {
        let added: HashSet<(Protocol, u16)> = expand_all(mappings)?
            .iter()
            .map(|f| (f.proto, f.host_port))
            .collect();
        self.add_ports(mappings)?;
        // As the handler names them (slirp4netns reports 0.0.0.0 as all).
        let keys: Vec<PortKey> = self
            .info
            .forwards
            .iter()
            .filter(|f| added.contains(&(f.proto, f.host_port)))
            .map(ForwardInfo::key)
            .collect();
        self.auto_keys.extend(keys);
        self.mark_auto();
        Ok(())
    }

    /// [`Network::remove_ports`] for automatic forwards.
    pub(crate) fn remove_auto(&mut self, ports: &[PortKey]) -> Result<(), PortChangeError> {
        self.remove_ports(ports).map(drop)
    }

    /// The namespace it serves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What was set up.
    pub fn info(&self) -> &SetupInfo {
        &self.info
    }

    /// The slirp4netns process.
    pub fn slirp(&mut self) -> &mut Slirp {
        &mut self.slirp
    }

    /// Stops the port forwarder first (no new connection is accepted into a
    /// namespace that is losing its network), then slirp4netns (closing its
    /// exit pipe, SIGKILL after 2 s), reaps both and removes the API
    /// socket's directory. Returns how slirp4netns ended.
    pub fn teardown(self) -> Exit {
        let Network {
            ports,
            slirp,
            _api_dir,
            ..
        } = self;
        if let Some(ports) = ports {
            ports.stop();
        }
        let exit = slirp.stop(Duration::from_secs(2));
        drop(_api_dir);
        exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SetupOptions {
        let network =
            NetworkOptions::parse(&[] as &[&str], false, &[] as &[&str], |_| false).unwrap();
        SetupOptions::new(network)
    }

    #[test]
    fn what_needs_privilege_is_refused_naming_the_setting() {
        let all = Features::all();
        let mut opts = options();
        opts.network.no_pivot_root = false;
        let e = check_privilege(&opts, all, false).unwrap_err().to_string();
        assert!(
            e.contains("sandbox") && e.contains("no_pivot_root = true"),
            "{e}"
        );
        assert!(check_privilege(&opts, all, true).is_ok());

        opts.network.no_pivot_root = true;
        opts.toggle_accept_dad = true;
        let e = check_privilege(&opts, all, false).unwrap_err().to_string();
        assert!(e.contains("toggle_accept_dad = false"), "{e}");
        opts.toggle_accept_dad = false;
        assert!(check_privilege(&opts, all, false).is_ok());
    }

    #[test]
    fn new_options_fit_this_process() {
        let opts = options();
        let privileged = privileged();
        assert_eq!(opts.toggle_accept_dad, privileged);
        assert_eq!(opts.sandbox_mount_ns, privileged);
        assert_eq!(opts.network.no_pivot_root, !privileged);
        // The defaults pass their own check, whoever runs them.
        assert!(check_privilege(&opts, Features::all(), privileged).is_ok());
    }

    #[cfg(feature = "in-process")]
    #[test]
    fn in_process_forwarding_is_refused_without_privilege() {
        let mut opts = options();
        opts.network.no_pivot_root = true;
        opts.toggle_accept_dad = false;
        opts.forwarder = ForwarderChoice::InProcess;
        let e = check_privilege(&opts, Features::all(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ForwarderChoice::Rootlessport"), "{e}");
    }
}
