//! Our extension to podman's helper: a control socket that adds, removes
//! and lists ports while the forwarder serves (`slirpnet port add|rm|ls`).
//! The binary serves it only when `ROOTLESSPORT_CONTROL_SOCKET` names a
//! path; as podman's helper nothing changes.
//!
//! The socket, its framing and its server are slirp-api's
//! ([`slirp_api::control`]), as for a slirpnet session's socket; the
//! requests are [`slirp_api::portctl`]'s, so there is nothing else to
//! refuse.

use std::path::Path;

use slirp_api::portctl::{ForwardEntry, Reply, Request};

use crate::ports::ForwarderHandle;

use slirp_api::control::ServeError;

/// The environment variable that asks the binary for a control socket
/// (named once, in slirp-opts, for whoever starts the program).
pub use slirp_opts::rootlessport::CONTROL_SOCKET_ENV;

/// The port control socket: slirp-api's
/// [`ControlServer`](slirp_api::control::ControlServer) answering
/// [`slirp_api::portctl`] requests through a [`ForwarderHandle`], served on
/// threads of its own; removed (and no longer served) when dropped.
#[derive(Debug)]
pub struct PortControlServer(slirp_api::control::ControlServer);

impl PortControlServer {
    /// Listens at `path` (mode 0600; only a stale socket there is
    /// replaced) and serves requests through `handle`.
    ///
    /// # Errors
    ///
    /// slirp-api's [`ServeError`]: something other than a stale socket is
    /// at `path` (left as it is), or the socket cannot be made, bound,
    /// listened on or served.
    pub fn start(path: &Path, handle: ForwarderHandle) -> Result<Self, ServeError> {
        slirp_api::control::ControlServer::start(path, "port forwarder", move |req| {
            answer(&handle, req)
        })
        .map(PortControlServer)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

fn answer(handle: &ForwarderHandle, request: Request) -> Reply {
    let result = match request {
        Request::List => handle.list(),
        Request::Add { mappings } => handle.add(&mappings),
        Request::Remove { ports } => handle.remove(&ports),
        // A request of a later version.
        _ => {
            return Reply::Error {
                message: "unsupported request".into(),
            }
        }
    };
    match result {
        Ok(forwards) => Reply::Ok {
            forwards: forwards.iter().map(ForwardEntry::from).collect(),
        },
        Err(e) => Reply::Error {
            message: e.to_string(),
        },
    }
}
