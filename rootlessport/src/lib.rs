//! A drop-in for podman's `rootlessport` helper, and the library behind it.
//!
//! podman starts `rootlessport` with the configuration as JSON on stdin, the
//! exit pipe's read end at fd 3 and the ready pipe's write end at fd 4. It
//! binds every host port, writes `1` to the ready pipe, and forwards until
//! the exit pipe closes.
//!
//! Unlike the Go helper this is one process: container-side sockets are made
//! by a thread that joined the namespace, connections are served by one
//! single-threaded event loop, TCP payload moves with splice(2) through
//! reused pipes, and UDP flows share one receive buffer.
//!
//! As a library: check podman's document once into a [`ValidConfig`], then
//! [`Forwarder::start`] it (which binds every host port) and serve it on a
//! thread of your own; its [`ForwarderHandle`] adds and removes ports while
//! it serves. Without the `bin` feature no logging stack is linked.
//!
//! ```
//! use rootlessport::{Config, ConfigError};
//!
//! let config = Config::from_json(r#"{"Mappings":[{"host_ip":"127.0.0.1",
//!     "container_port":80,"host_port":8080,"range":3,"protocol":"tcp,udp"}],
//!     "NetNSPath":"/run/netns/demo","ExitFD":3,"ReadyFD":4,"ChildIP":"10.0.2.100"}"#)?;
//! let valid = config.validate()?;
//! assert_eq!(valid.forwards.len(), 6);
//! // A loopback ChildIP would expose services bound to localhost inside.
//! let loopback = Config::from_json(r#"{"NetNSPath":"/x","ExitFD":3,"ReadyFD":4,"ChildIP":"127.0.0.1"}"#)?;
//! assert!(matches!(loopback.validate(), Err(ConfigError::LoopbackChildIp(_))));
//! # Ok::<(), ConfigError>(())
//! ```
//!
//! `examples/in_process.rs` forwards a port into a namespace in-process.
//!
//! With [`ForwardOptions::keep_source_ip`] (the program:
//! `ROOTLESSPORT_KEEP_SOURCE_IP=1`) the service sees each client's own
//! address and port instead of the namespace's address.

mod childip;
mod control;
mod factory;
mod forwarder;
mod limits;
mod listen;
mod mmsg;
mod options;
mod ports;
mod reload;
mod rtnl;
#[cfg(feature = "sandbox")]
pub mod sandbox;
mod seqpacket;
pub mod source_ip;
mod target;
mod tcp;
mod udp;

pub use childip::{child_ip, NetAddress, NetInterface, StatusBlock};
pub use control::{ControlError, ControlServer, CONTROL_SOCKET_ENV};
pub use forwarder::{Forwarder, StartError};
pub use limits::raise_fd_limit;
pub use listen::ListenError;
/// The namespace crate: open a namespace and make a service inside it with
/// [`netns_util::Netns`], with no second dependency.
pub use netns_util;
pub use options::{ForwardOptions, OptionsEnvError, KEEP_SOURCE_IP_ENV};
pub use ports::{ForwarderHandle, PortChangeError};
pub use reload::{reload, socket_path, ReloadError, ReloadGuard, ReloadServer};
pub use slirp_api;
pub use slirp_opts;
pub use slirp_opts::rootlessport::{
    parse_child_ip, Config, ConfigError, ReloadSocket, ValidConfig,
};
pub use target::Target;
pub use udp::IDLE_TIMEOUT;
