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

mod childip;
mod control;
mod factory;
mod forwarder;
mod listen;
mod mmsg;
mod ports;
mod reload;
mod seqpacket;
mod target;
mod tcp;
mod udp;

pub use childip::{child_ip, NetAddress, NetInterface, StatusBlock};
pub use control::{ControlError, ControlServer, CONTROL_SOCKET_ENV};
pub use factory::SocketFactory;
pub use forwarder::{Forwarder, StartError};
pub use listen::ListenError;
pub use ports::{ForwarderHandle, PortChangeError};
pub use reload::{reload, socket_path, ReloadError, ReloadGuard, ReloadServer};
pub use slirp_opts;
pub use slirp_opts::rootlessport::{
    parse_child_ip, Config, ConfigError, ReloadSocket, ValidConfig,
};
pub use target::Target;
pub use udp::IDLE_TIMEOUT;
