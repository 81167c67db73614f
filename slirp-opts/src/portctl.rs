//! Changing the forwarded ports of a running forwarder: the requests and
//! replies, as JSON, of rootlessport's control socket (an extension of ours;
//! podman's helper has none) and of a slirpnet session's control socket.
//!
//! ```
//! use slirp_opts::portctl::{Request, Reply, PortKey};
//! use slirp_opts::{PortMapping, Protocol};
//!
//! let add = Request::Add { mappings: vec![slirp_opts::parse_port_spec("127.0.0.1:8080:80").unwrap()] };
//! let text = serde_json::to_string(&add).unwrap();
//! assert!(text.starts_with(r#"{"op":"add","mappings":[{"#));
//! let rm: Request = serde_json::from_str(r#"{"op":"remove","ports":[{"proto":"tcp","host_port":8080}]}"#).unwrap();
//! assert_eq!(rm, Request::Remove { ports: vec![PortKey { proto: Protocol::Tcp, host_ip: None, host_port: 8080 }] });
//! ```

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Forward, PortMapping, Protocol};

/// The largest request or reply, in bytes: requests are small and bounded.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// A request to a forwarder's or a session's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// What is forwarded now.
    List,
    /// A slirpnet session's status: its pid, namespace, handler and
    /// forwards (answered with [`Reply::Session`]).
    Session,
    /// Forward these too: all of them, or none when one cannot be.
    Add {
        /// The mappings, as podman writes them.
        mappings: Vec<PortMapping>,
    },
    /// Stop forwarding these: all of them, or none when one is not
    /// forwarded. Connections already open carry on.
    Remove {
        /// Which forwards, by protocol, host address and host port.
        ports: Vec<PortKey>,
    },
}

/// A forward as its host side names it: what `remove` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortKey {
    /// tcp or udp.
    pub proto: Protocol,
    /// The host address; `None` is all addresses.
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
}

impl From<&Forward> for PortKey {
    fn from(f: &Forward) -> Self {
        PortKey {
            proto: f.proto,
            host_ip: f.host_ip,
            host_port: f.host_port,
        }
    }
}

impl PortKey {
    /// Whether `fwd` is the forward this key names.
    pub fn matches(&self, fwd: &Forward) -> bool {
        *self == PortKey::from(fwd)
    }
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}/{}", self.host_port, self.proto),
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:{}/{}", self.host_port, self.proto),
            None => write!(f, "*:{}/{}", self.host_port, self.proto),
        }
    }
}

/// One forward, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardEntry {
    /// tcp or udp.
    pub proto: Protocol,
    /// The host address; `None` is all addresses.
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The port inside the namespace.
    pub container_port: u16,
    /// Made by a session's automatic publishing (`--publish-auto`);
    /// absent on the wire when not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<&Forward> for ForwardEntry {
    fn from(f: &Forward) -> Self {
        ForwardEntry {
            proto: f.proto,
            host_ip: f.host_ip,
            host_port: f.host_port,
            container_port: f.container_port,
            auto: false,
        }
    }
}

impl From<ForwardEntry> for Forward {
    fn from(e: ForwardEntry) -> Self {
        Forward {
            proto: e.proto,
            host_ip: e.host_ip,
            host_port: e.host_port,
            container_port: e.container_port,
        }
    }
}

/// The answer: the forwards after the request, or why nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Reply {
    /// Done; every forward now.
    Ok {
        /// The forwards after the request.
        forwards: Vec<ForwardEntry>,
    },
    /// A slirpnet session's status.
    Session(SessionStatus),
    /// Nothing changed, because of this.
    Error {
        /// What was wrong, for a person.
        message: String,
    },
}

/// What a running slirpnet session reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The session's pid (`slirpnet run` or `slirpnet attach`).
    pub pid: u32,
    /// The network namespace it serves.
    pub netns: String,
    /// `rootlesskit` or `slirp4netns`.
    pub port_handler: String,
    /// The port forwarder (a binary's path, `in-process`), when one runs.
    pub forwarder: Option<String>,
    /// slirp4netns's pid.
    pub slirp4netns_pid: u32,
    /// Every forward now.
    pub forwards: Vec<ForwardEntry>,
}

impl SessionStatus {
    /// A status; [`SessionStatus`] may grow, so it is built here.
    pub fn new(
        pid: u32,
        netns: String,
        port_handler: String,
        forwarder: Option<String>,
        slirp4netns_pid: u32,
        forwards: Vec<ForwardEntry>,
    ) -> Self {
        SessionStatus {
            pid,
            netns,
            port_handler,
            forwarder,
            slirp4netns_pid,
            forwards,
        }
    }
}
