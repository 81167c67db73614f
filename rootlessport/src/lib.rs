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
//! With [`ForwardOptions::keep_source_ip`] (the program:
//! `ROOTLESSPORT_KEEP_SOURCE_IP=1`) the service sees each client's own
//! address and port instead of the namespace's address.

mod childip;
mod factory;
mod forwarder;
mod listen;
mod mmsg;
mod options;
mod reload;
mod rtnl;
pub mod source_ip;
mod target;
mod tcp;
mod udp;

pub use childip::{child_ip, NetAddress, NetInterface, StatusBlock};
pub use factory::SocketFactory;
pub use forwarder::{Forwarder, StartError};
pub use listen::ListenError;
pub use options::{ForwardOptions, OptionsEnvError, KEEP_SOURCE_IP_ENV};
pub use reload::{reload, socket_path, ReloadError, ReloadGuard, ReloadServer};
pub use slirp_opts;
pub use slirp_opts::rootlessport::{
    parse_child_ip, Config, ConfigError, ReloadSocket, ValidConfig,
};
pub use target::Target;
pub use udp::IDLE_TIMEOUT;
