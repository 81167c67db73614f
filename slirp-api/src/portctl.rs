//! The port requests of our control sockets: list, add and remove the
//! forwards of a running forwarder (our rootlessport's control socket) or
//! session (a slirpnet session's, which adds requests of its own).
//!
//! ```
//! use slirp_api::portctl::{PortKey, Reply, Request};
//! use slirp_api::Protocol;
//!
//! let add = Request::Add { mappings: vec![slirp_opts::parse_port_spec("127.0.0.1:8080:80").unwrap()] };
//! let text = serde_json::to_string(&add).unwrap();
//! assert!(text.starts_with(r#"{"op":"add","mappings":[{"#));
//! let rm: Request = serde_json::from_str(r#"{"op":"remove","ports":[{"proto":"tcp","host_port":8080}]}"#).unwrap();
//! assert_eq!(rm, Request::Remove { ports: vec![PortKey { proto: Protocol::Tcp, host_ip: None, host_port: 8080 }] });
//! let no: Reply = serde_json::from_str(r#"{"error":{"message":"8080/tcp is not forwarded"}}"#).unwrap();
//! assert_eq!(no, Reply::Error { message: "8080/tcp is not forwarded".into() });
//! ```

use serde::{Deserialize, Serialize};
pub use slirp_opts::portctl::{ForwardEntry, PortKey};
use slirp_opts::PortMapping;

use crate::control::ControlReply;

/// A request about forwarded ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// What is forwarded now.
    List,
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
    /// Nothing changed, because of this.
    Error {
        /// What was wrong, for a person.
        message: String,
    },
}

impl ControlReply for Reply {
    fn error(message: String) -> Self {
        Reply::Error { message }
    }
}

impl Reply {
    /// The forwards of an [`Reply::Ok`]; the message of a
    /// [`Reply::Error`].
    ///
    /// # Errors
    ///
    /// The reply is an error: nothing changed, because of the message.
    pub fn into_forwards(self) -> Result<Vec<ForwardEntry>, String> {
        match self {
            Reply::Ok { forwards } => Ok(forwards),
            Reply::Error { message } => Err(message),
        }
    }
}
