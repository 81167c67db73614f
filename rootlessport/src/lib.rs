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
//! As a library: describe the forwarder with a [`ForwarderConfig`] (the
//! namespace's path, the child IP and the forwards; podman's document is a
//! [`Config`]) and check it once into a [`ValidConfig`], then
//! [`Forwarder::start`] it (which binds every host port) and
//! [`serve`](Forwarder::serve) it on a thread of your own; its
//! [`ForwarderHandle`] adds and removes ports while it serves, and
//! [`stop`](ForwarderHandle::stop)s it. Without the `bin` feature no
//! logging stack is linked.
//!
//! ```no_run
//! use std::net::{IpAddr, Ipv4Addr};
//! use rootlessport::slirp_opts::{Forward, Protocol};
//! use rootlessport::{Forwarder, ForwarderConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ForwarderConfig::new("/run/netns/demo", IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100)))
//!     .forward(Forward {
//!         proto: Protocol::Tcp,
//!         host_ip: Some(Ipv4Addr::LOCALHOST.into()),
//!         host_port: 8080,
//!         container_port: 80,
//!     })
//!     .validate()?;
//! let forwarder = Forwarder::start(config)?;
//! let handle = forwarder.handle();
//! let serving = std::thread::spawn(move || forwarder.serve());
//! // ... 127.0.0.1:8080 reaches port 80 of 10.0.2.100 in the namespace ...
//! handle.stop(); // returns once the port is closed
//! serving.join().expect("the forwarder's thread")?;
//! # Ok(())
//! # }
//! ```
//!
//! podman's document, as the program reads it:
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
//!
//! # Errors
//!
//! Each error prints its cause once: either in its message or through
//! [`source`](std::error::Error::source), never both, so that a printer
//! walking the chain (such as anyhow's `{:#}`) does not repeat it.
//!
//! - When a system call fails, the message names what was being done and
//!   ends with the OS error's text, and `source()` returns `None`; the OS
//!   error stays reachable as the variant's `error` field (a
//!   [`std::io::Error`]), as in `netns-util`, `slirp-proc` and `slirp-api`.
//! - Variants that wrap another error of this workspace are
//!   `#[error(transparent)]` (such as [`StartError::Listen`] or
//!   [`HandleError::Mapping`]): they are the inner error itself, its
//!   message and its source.
//! - The rest carry no cause (a port that is not forwarded, the
//!   forwarder's own error text in [`ReloadError::Refused`]).

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

pub use childip::{child_ip_from_status, NetAddress, NetInterface, StatusBlock};
pub use control::{PortControlServer, CONTROL_SOCKET_ENV};
pub use forwarder::{Forwarder, StartError};
pub use limits::raise_fd_limit;
pub use listen::ListenError;
/// The namespace crate: open a namespace and make a service inside it with
/// [`netns_util::Netns`], with no second dependency.
pub use netns_util;
pub use options::{ForwardOptions, OptionsEnvError, KEEP_SOURCE_IP_ENV};
pub use ports::{ForwarderHandle, HandleError};
pub use reload::{reload, reload_socket_path, ReloadError, ReloadGuard, ReloadServer};
pub use slirp_api;
pub use slirp_opts;
pub use slirp_opts::rootlessport::{
    parse_child_ip, Config, ConfigError, ForwarderConfig, HelperFds, ReloadSocket, ValidConfig,
};
pub use target::ChildIp;
pub use udp::IDLE_TIMEOUT;
