//! How to set up: [`SetupOptions`] and what automatic publishing does
//! ([`AutoPublish`]).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use slirp_opts::{Forward, NetworkOptions};

use crate::portfwd::ForwarderChoice;

/// How to set up: everything but the namespace, which [`Plan::start`](crate::Plan::start)
/// (or [`setup`](crate::setup)) takes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SetupOptions {
    /// The slirp4netns binary; `None` means `slirp4netns` on PATH.
    pub binary: Option<PathBuf>,
    /// The network options (podman's `-o` values over its defaults).
    pub network: NetworkOptions,
    /// Host ports to forward, checked ([`parse_forwards`](crate::parse_forwards),
    /// [`PortMapping::expand`](crate::PortMapping::expand)).
    pub ports: Vec<Forward>,
    /// The API socket path. `None`: a private one in a temporary directory
    /// when port_handler=slirp4netns (so forwards can be added), else none.
    /// With the rootlesskit handler an API socket asked for here is only for
    /// the caller's use: ports are forwarded by one handler, never both.
    pub api_socket: Option<PathBuf>,
    /// Turn IPv6 accept_dad off in the namespace while slirp4netns starts.
    /// Needs the right to enter the namespace (CAP_SYS_ADMIN in this
    /// process's own user namespace too); off when the caller does it from
    /// inside, as [`Plan::run`](crate::Plan::run) does.
    pub toggle_accept_dad: bool,
    /// Start slirp4netns in a new mount namespace when the sandbox is on
    /// (needs CAP_SYS_ADMIN, or [`slirp_in_userns`](Self::slirp_in_userns)).
    pub sandbox_mount_ns: bool,
    /// Rootless: start slirp4netns inside the target's user namespace (when
    /// the target names one), as podman does from its rootless user
    /// namespace. There it may make the mount namespace that
    /// `--enable-sandbox` needs; outside it could not. Off by default: as
    /// root it would lose the right to bind low host ports.
    pub slirp_in_userns: bool,
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
            slirp_in_userns: false,
            ready_timeout: Duration::from_secs(30),
            help_timeout: crate::binary::HELP_TIMEOUT,
            parent_death_signal: None,
            forwarder: ForwarderChoice::default(),
            keep_source_ip: true,
            publish_auto: None,
        }
    }

    /// The slirp4netns binary (instead of `slirp4netns` on PATH).
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// Forwards `ports` too.
    pub fn with_ports(mut self, ports: impl IntoIterator<Item = Forward>) -> Self {
        self.ports.extend(ports);
        self
    }

    /// The API socket at `path`.
    pub fn with_api_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.api_socket = Some(path.into());
        self
    }

    /// Whether accept_dad is toggled from outside the namespace.
    pub fn with_toggle_accept_dad(mut self, on: bool) -> Self {
        self.toggle_accept_dad = on;
        self
    }

    /// Whether slirp4netns's sandbox gets a mount namespace of its own.
    pub fn with_sandbox_mount_ns(mut self, on: bool) -> Self {
        self.sandbox_mount_ns = on;
        self
    }

    /// Without CAP_SYS_ADMIN, for a target that names its user namespace
    /// (as [`Plan::run`](crate::Plan::run) and `slirpnet run` make one):
    /// start slirp4netns inside that user namespace with a mount namespace
    /// of its own, so its sandbox (`--enable-sandbox`) is on rootless too.
    /// With CAP_SYS_ADMIN nothing changes (the sandbox is on already).
    #[must_use]
    pub fn with_sandbox_in_userns(mut self) -> Self {
        if !privileged() {
            self.slirp_in_userns = true;
            self.sandbox_mount_ns = true;
            self.network.no_pivot_root = false;
        }
        self
    }

    /// How long slirp4netns and the port forwarder may take to be ready.
    pub fn with_ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long `slirp4netns --help` may take.
    pub fn with_help_timeout(mut self, timeout: Duration) -> Self {
        self.help_timeout = timeout;
        self
    }

    /// The signal slirp4netns gets when the thread that started it dies.
    pub fn with_parent_death_signal(mut self, signal: Signal) -> Self {
        self.parent_death_signal = Some(signal);
        self
    }

    /// Who forwards ports with port_handler=rootlesskit.
    pub fn with_forwarder(mut self, forwarder: ForwarderChoice) -> Self {
        self.forwarder = forwarder;
        self
    }

    /// Whether the service sees clients' own addresses (rootlesskit handler).
    pub fn with_keep_source_ip(mut self, on: bool) -> Self {
        self.keep_source_ip = on;
        self
    }

    /// Publishes what the namespace listens on (`--publish-auto`).
    pub fn with_publish_auto(mut self, auto: AutoPublish) -> Self {
        self.publish_auto = Some(auto);
        self
    }
}

/// Whether this process has CAP_SYS_ADMIN in its own user namespace: what
/// entering a namespace, unsharing a mount namespace and slirp4netns's
/// sandbox need.
pub(crate) fn privileged() -> bool {
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
