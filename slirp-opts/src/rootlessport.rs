//! The JSON document podman writes on rootlessport's stdin, and its checks.
//!
//! Plain data and pure checks, so that a program that only starts a
//! forwarder (or writes this document) links no forwarder.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::json::from_go_json;
use crate::ports::{expand_all, Forward, PortError, PortMapping};

/// The environment variable that turns keeping client addresses on in our
/// rootlessport program (`1`) or off (`0`): set by whoever starts it with
/// the setting its caller chose.
pub const KEEP_SOURCE_IP_ENV: &str = "ROOTLESSPORT_KEEP_SOURCE_IP";

/// The environment variable naming the control socket our rootlessport
/// program serves port changes on (`slirp_api::portctl`); another
/// forwarder ignores it.
pub const CONTROL_SOCKET_ENV: &str = "ROOTLESSPORT_CONTROL_SOCKET";

/// The environment variable that turns our rootlessport program's sandbox
/// (seccomp, no_new_privs, capabilities, Landlock) off with `0`, for
/// debugging; unset, empty or `1` keep it on.
pub const SANDBOX_ENV: &str = "ROOTLESSPORT_SANDBOX";

/// rootlessport's configuration, as podman sends it. Keys are Go field names;
/// like Go, decoding matches them case-insensitively and ignores unknown ones
/// (see [`from_go_json`]).
///
/// ```
/// use slirp_opts::rootlessport::Config;
///
/// let config = Config::from_json(r#"{"Mappings":[{"host_ip":"","container_port":80,
///     "host_port":8080,"range":1,"protocol":"tcp,udp"}],"NetNSPath":"/run/netns/x",
///     "ExitFD":3,"ReadyFD":4,"ChildIP":"10.0.2.100"}"#).unwrap();
/// let valid = config.validate().unwrap();
/// assert_eq!(valid.forwards.len(), 2);
/// assert_eq!(valid.child_ip.to_string(), "10.0.2.100");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Config {
    /// The ports to forward.
    #[serde(rename(serialize = "Mappings", deserialize = "mappings"), default)]
    pub mappings: Vec<PortMapping>,
    /// The network namespace to forward into.
    #[serde(rename(serialize = "NetNSPath", deserialize = "netnspath"), default)]
    pub netns_path: String,
    /// The fd number of the exit pipe's read end (3).
    #[serde(rename(serialize = "ExitFD", deserialize = "exitfd"), default)]
    pub exit_fd: i32,
    /// The fd number of the ready pipe's write end (4).
    #[serde(rename(serialize = "ReadyFD", deserialize = "readyfd"), default)]
    pub ready_fd: i32,
    /// podman's temporary directory; the reload socket goes in `<TmpDir>/rp/`.
    #[serde(rename(serialize = "TmpDir", deserialize = "tmpdir"), default)]
    pub tmp_dir: String,
    /// The address connections are forwarded to, inside the namespace.
    #[serde(rename(serialize = "ChildIP", deserialize = "childip"), default)]
    pub child_ip: String,
    /// The container id, naming the reload socket.
    #[serde(
        rename(serialize = "ContainerID", deserialize = "containerid"),
        default
    )]
    pub container_id: String,
    /// Whether to serve the reload socket (rootless netavark/CNI networks).
    #[serde(
        rename(serialize = "RootlessCNI", deserialize = "rootlesscni"),
        default
    )]
    pub rootless_cni: bool,
}

/// A configuration that cannot be used. The texts are what podman shows after
/// `rootlessport `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// stdin is not the JSON document.
    #[error("failed to decode the configuration on stdin: {0}")]
    Decode(serde_json::Error),
    /// No NetNSPath.
    #[error("missing NetNSPath")]
    MissingNetNsPath,
    /// No ExitFD.
    #[error("missing ExitFD")]
    MissingExitFd,
    /// No ReadyFD.
    #[error("missing ReadyFD")]
    MissingReadyFd,
    /// An fd number that cannot name a pipe podman passed: negative, or
    /// stdin, stdout or stderr.
    #[error("{name} {fd} is not usable: podman passes its pipes above fd 2")]
    UnusableFd {
        /// `ExitFD` or `ReadyFD`.
        name: &'static str,
        /// The number given.
        fd: i32,
    },
    /// ExitFD and ReadyFD name the same fd.
    #[error("ExitFD and ReadyFD are both {0}: they must be two different pipes")]
    SameFd(i32),
    /// No ChildIP.
    #[error("missing ChildIP")]
    MissingChildIp,
    /// ChildIP is not an address.
    #[error("invalid ChildIP {0:?}")]
    InvalidChildIp(String),
    /// ChildIP is loopback (CVE-2021-20199).
    #[error("ChildIP {0} is a loopback address: forwarding there would expose the container's services bound to localhost (CVE-2021-20199)")]
    LoopbackChildIp(IpAddr),
    /// RootlessCNI without the fields the reload socket needs.
    #[error("RootlessCNI needs TmpDir and ContainerID for the reload socket")]
    MissingReloadFields,
    /// A ContainerID that is not one path component.
    #[error("invalid ContainerID {0:?}")]
    InvalidContainerId(String),
    /// A port mapping.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Where the reload socket goes (`RootlessCNI`): `<tmp_dir>/rp/<container_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadSocket {
    /// podman's temporary directory.
    pub tmp_dir: PathBuf,
    /// The container id, one path component.
    pub container_id: String,
}

/// A configuration that passed [`Config::validate`] or
/// [`ForwarderConfig::validate`]: what a forwarder needs, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValidConfig {
    /// Every forward, one protocol and port each.
    pub forwards: Vec<Forward>,
    /// The network namespace to forward into.
    pub netns_path: PathBuf,
    /// Where connections go inside the namespace; never loopback.
    pub child_ip: IpAddr,
    /// The reload socket, when `RootlessCNI` (or
    /// [`ForwarderConfig::reload_socket`]) asks for one.
    pub reload: Option<ReloadSocket>,
    /// The pipes podman passed the `rootlessport` program, by fd number:
    /// from [`Config::validate`] always, from [`ForwarderConfig`] never.
    pub helper_fds: Option<HelperFds>,
}

/// The pipes podman passes its `rootlessport` helper, by fd number
/// (`ExitFD`, `ReadyFD`), checked: both 3 or above, and two different fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HelperFds {
    /// The exit pipe's read end: the forwarder stops at its EOF.
    pub exit_fd: i32,
    /// The ready pipe's write end: `1` is written there once ready.
    pub ready_fd: i32,
}

impl Config {
    /// A document forwarding `mappings` into the namespace at
    /// `netns_path`, to `child_ip`, with podman's fd numbers (exit 3,
    /// ready 4) and no reload socket: what a program that starts the
    /// `rootlessport` helper writes on its stdin. A forwarder in this
    /// process takes a [`ForwarderConfig`] instead (no fd numbers, typed
    /// paths and addresses).
    pub fn new(
        mappings: Vec<PortMapping>,
        netns_path: impl Into<String>,
        child_ip: IpAddr,
    ) -> Self {
        Config {
            mappings,
            netns_path: netns_path.into(),
            exit_fd: 3,
            ready_fd: 4,
            child_ip: child_ip.to_string(),
            ..Config::default()
        }
    }

    /// Decodes the document the way Go's encoding/json would.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Decode`] when it is not JSON of this shape.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        from_go_json(text).map_err(ConfigError::Decode)
    }

    /// Checks the configuration and expands the mappings into forwards.
    ///
    /// # Errors
    ///
    /// The first problem found, in the order podman's helper checks them:
    /// NetNSPath, ExitFD, ReadyFD, ChildIP, the reload fields, the mappings.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.netns_path.is_empty() {
            return Err(ConfigError::MissingNetNsPath);
        }
        for (name, fd, missing) in [
            ("ExitFD", self.exit_fd, ConfigError::MissingExitFd),
            ("ReadyFD", self.ready_fd, ConfigError::MissingReadyFd),
        ] {
            match fd {
                0 => return Err(missing),
                fd if fd <= 2 => return Err(ConfigError::UnusableFd { name, fd }),
                _ => {}
            }
        }
        if self.exit_fd == self.ready_fd {
            return Err(ConfigError::SameFd(self.exit_fd));
        }
        let child_ip = parse_child_ip(&self.child_ip)?;
        let reload = if self.rootless_cni {
            if self.tmp_dir.is_empty() || self.container_id.is_empty() {
                return Err(ConfigError::MissingReloadFields);
            }
            Some(reload_socket(
                PathBuf::from(self.tmp_dir),
                self.container_id,
            )?)
        } else {
            None
        };
        let forwards = expand_all(&self.mappings)?;
        Ok(ValidConfig {
            forwards,
            netns_path: PathBuf::from(self.netns_path),
            child_ip,
            reload,
            helper_fds: Some(HelperFds {
                exit_fd: self.exit_fd,
                ready_fd: self.ready_fd,
            }),
        })
    }
}

/// The reload socket's place, with the container id checked to be one
/// path component.
fn reload_socket(tmp_dir: PathBuf, container_id: String) -> Result<ReloadSocket, ConfigError> {
    if container_id.is_empty()
        || container_id.contains('/')
        || container_id == "."
        || container_id == ".."
        || container_id.contains('\0')
    {
        return Err(ConfigError::InvalidContainerId(container_id));
    }
    Ok(ReloadSocket {
        tmp_dir,
        container_id,
    })
}

/// What a forwarder running in this process needs: the namespace, the
/// child IP and the forwards, typed; none of the fd numbers of podman's
/// [`Config`], which mean nothing in-process. Checked by
/// [`validate`](Self::validate) into the same [`ValidConfig`] as podman's
/// document.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use slirp_opts::rootlessport::{ConfigError, ForwarderConfig};
/// use slirp_opts::{Forward, PortMapping, Protocol};
///
/// let valid = ForwarderConfig::new("/run/netns/demo", IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100)))
///     .forward(Forward {
///         proto: Protocol::Tcp,
///         host_ip: Some(Ipv4Addr::LOCALHOST.into()),
///         host_port: 8080,
///         container_port: 80,
///     })
///     // podman's form: a range of ports, a protocol list.
///     .mapping(PortMapping {
///         host_ip: String::new(),
///         container_port: 53,
///         host_port: 5353,
///         range: 1,
///         protocol: "tcp,udp".into(),
///     })
///     .validate()?;
/// assert_eq!(valid.forwards.len(), 3);
/// assert_eq!(valid.helper_fds, None);
///
/// let loopback = ForwarderConfig::new("/run/netns/demo", Ipv4Addr::LOCALHOST.into());
/// assert!(matches!(loopback.validate(), Err(ConfigError::LoopbackChildIp(_))));
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderConfig {
    netns_path: PathBuf,
    child_ip: IpAddr,
    mappings: Vec<PortMapping>,
    reload: Option<(PathBuf, String)>,
}

impl ForwarderConfig {
    /// Forwards nothing yet into the namespace at `netns_path` (a file
    /// such as `/run/netns/NAME` or `/proc/PID/ns/net`), to `child_ip`
    /// there.
    pub fn new(netns_path: impl Into<PathBuf>, child_ip: IpAddr) -> Self {
        ForwarderConfig {
            netns_path: netns_path.into(),
            child_ip,
            mappings: Vec::new(),
            reload: None,
        }
    }

    /// Forwards one host port too.
    #[must_use]
    pub fn forward(mut self, forward: Forward) -> Self {
        self.mappings.push(PortMapping {
            host_ip: forward.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            container_port: forward.container_port,
            host_port: forward.host_port,
            range: 1,
            protocol: forward.proto.as_str().to_owned(),
        });
        self
    }

    /// Forwards a mapping in podman's form too: `range` consecutive ports,
    /// each for every protocol of its list.
    #[must_use]
    pub fn mapping(mut self, mapping: PortMapping) -> Self {
        self.mappings.push(mapping);
        self
    }

    /// Serves the reload socket at `<tmp_dir>/rp/<container_id>` (as
    /// podman's `RootlessCNI`), through which a new child IP can be sent.
    #[must_use]
    pub fn reload_socket(
        mut self,
        tmp_dir: impl Into<PathBuf>,
        container_id: impl Into<String>,
    ) -> Self {
        self.reload = Some((tmp_dir.into(), container_id.into()));
        self
    }

    /// Checks the configuration and expands the mappings into forwards.
    ///
    /// # Errors
    ///
    /// The first problem found: an empty namespace path
    /// ([`ConfigError::MissingNetNsPath`]), a child IP that is loopback
    /// ([`ConfigError::LoopbackChildIp`]), unspecified or multicast
    /// ([`ConfigError::InvalidChildIp`]), a container id that is not one
    /// path component ([`ConfigError::InvalidContainerId`]), a forward with
    /// port 0 or two forwards of one host port ([`ConfigError::Port`]).
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.netns_path.as_os_str().is_empty() {
            return Err(ConfigError::MissingNetNsPath);
        }
        let child_ip = check_child_ip(self.child_ip, || self.child_ip.to_string())?;
        let reload = match self.reload {
            Some((tmp_dir, container_id)) => Some(reload_socket(tmp_dir, container_id)?),
            None => None,
        };
        let forwards = expand_all(&self.mappings)?;
        Ok(ValidConfig {
            forwards,
            netns_path: self.netns_path,
            child_ip,
            reload,
            helper_fds: None,
        })
    }
}

/// Parses a child IP, refusing loopback, unspecified and multicast
/// addresses (an IPv4-mapped IPv6 address counts as its IPv4 address).
///
/// # Errors
///
/// [`ConfigError::MissingChildIp`], [`ConfigError::InvalidChildIp`] or
/// [`ConfigError::LoopbackChildIp`].
pub fn parse_child_ip(text: &str) -> Result<IpAddr, ConfigError> {
    if text.is_empty() {
        return Err(ConfigError::MissingChildIp);
    }
    let ip: IpAddr = text
        .parse()
        .map_err(|_| ConfigError::InvalidChildIp(text.to_owned()))?;
    check_child_ip(ip, || text.to_owned())
}

/// Refuses loopback, unspecified and multicast child IPs; an IPv4-mapped
/// IPv6 address becomes its IPv4 address. `text` names a refused one.
fn check_child_ip(ip: IpAddr, text: impl FnOnce() -> String) -> Result<IpAddr, ConfigError> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip.is_loopback() {
        return Err(ConfigError::LoopbackChildIp(ip));
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(ConfigError::InvalidChildIp(text()));
    }
    Ok(ip)
}
