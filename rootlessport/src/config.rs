//! The JSON document podman writes on rootlessport's stdin.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use slirp_opts::{expand_all, from_go_json, Forward, PortError, PortMapping};

/// rootlessport's configuration, as podman sends it. Keys are Go field names;
/// like Go, decoding matches them case-insensitively and ignores unknown ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl Config {
    /// Decodes the document the way Go's encoding/json would.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        from_go_json(text).map_err(ConfigError::Decode)
    }

    /// Checks the configuration and expands the mappings into forwards.
    pub fn validate(&self) -> Result<(IpAddr, Vec<Forward>), ConfigError> {
        if self.netns_path.is_empty() {
            return Err(ConfigError::MissingNetNsPath);
        }
        if self.exit_fd <= 0 {
            return Err(ConfigError::MissingExitFd);
        }
        if self.ready_fd <= 0 {
            return Err(ConfigError::MissingReadyFd);
        }
        let child_ip = parse_child_ip(&self.child_ip)?;
        if self.rootless_cni {
            if self.tmp_dir.is_empty() || self.container_id.is_empty() {
                return Err(ConfigError::MissingReloadFields);
            }
            if self.container_id.contains('/')
                || self.container_id == "."
                || self.container_id == ".."
            {
                return Err(ConfigError::InvalidContainerId(self.container_id.clone()));
            }
        }
        let forwards = expand_all(&self.mappings)?;
        Ok((child_ip, forwards))
    }
}

/// Parses a child IP, refusing loopback addresses.
pub fn parse_child_ip(text: &str) -> Result<IpAddr, ConfigError> {
    if text.is_empty() {
        return Err(ConfigError::MissingChildIp);
    }
    let ip: IpAddr = text
        .parse()
        .map_err(|_| ConfigError::InvalidChildIp(text.to_owned()))?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip.is_loopback() {
        return Err(ConfigError::LoopbackChildIp(ip));
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(ConfigError::InvalidChildIp(text.to_owned()));
    }
    Ok(ip)
}
