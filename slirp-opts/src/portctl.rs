//! A forward as our control sockets name it: [`PortKey`], its host side
//! (what a removal matches), and [`ForwardEntry`], a whole [`Forward`] in
//! a reply. The
//! requests and replies that carry them belong to their one owner,
//! `slirp_api::portctl`.
//!
//! ```
//! use slirp_opts::portctl::PortKey;
//! use slirp_opts::Protocol;
//!
//! let key: PortKey = serde_json::from_str(r#"{"proto":"tcp","host_port":8080}"#).unwrap();
//! assert_eq!(key, PortKey { proto: Protocol::Tcp, host_ip: None, host_port: 8080 });
//! assert_eq!(key.to_string(), "*:8080/tcp");
//! ```

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Forward, Protocol};

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

/// One forward in a control socket's reply: the [`Forward`] (its fields
/// inline on the wire) and whether a session's automatic publishing made it.
///
/// ```
/// use slirp_opts::portctl::ForwardEntry;
/// use slirp_opts::parse_forwards;
///
/// let entry = ForwardEntry::from(&parse_forwards("127.0.0.1:8080:80")?[0]);
/// assert_eq!(
///     serde_json::to_string(&entry)?,
///     r#"{"proto":"tcp","host_ip":"127.0.0.1","host_port":8080,"container_port":80}"#
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardEntry {
    /// The forward.
    #[serde(flatten)]
    pub forward: Forward,
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
            forward: *f,
            auto: false,
        }
    }
}

impl From<ForwardEntry> for Forward {
    fn from(e: ForwardEntry) -> Self {
        e.forward
    }
}
