//! Our own control sockets: a slirpnet session's and our rootlessport's
//! (`ROOTLESSPORT_CONTROL_SOCKET`). One framing, one server, one client for
//! both, whatever the request and reply types are.
//!
//! The framing is slirp4netns's: a unix stream socket, one request per
//! connection; the client writes its JSON request and shuts down its write
//! side, the server reads it to EOF (at most [`MAX_REQUEST`] bytes, all of
//! it within [`REQUEST_DEADLINE`] of being accepted), answers one JSON reply
//! of any size and closes. The server serves only its own user (the peer's
//! uid from SO_PEERCRED), each client on a short thread of its own, at most
//! [`MAX_CLIENTS`] at once; it replaces only a stale socket at its path.
//! Its accept loop, [`serve_clients`], serves any listening unix socket
//! (rootlessport's reload socket, with podman's SEQPACKET protocol, too).
//!
//! ```no_run
//! use std::time::Duration;
//! use slirp_api::control::{request, ControlServer};
//! use slirp_api::portctl::{Reply, Request};
//!
//! let server = ControlServer::start("/run/user/1000/demo.sock".as_ref(), "demo", |req: Request| {
//!     match req {
//!         Request::List => Reply::Ok { forwards: Vec::new() },
//!         _ => Reply::Error { message: "read-only".into() },
//!     }
//! })?;
//! let reply: Reply = request(server.path(), &Request::List, Duration::from_secs(5))?;
//! assert_eq!(reply, Reply::Ok { forwards: Vec::new() });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod accept;
mod client;
mod server;
mod wire;

pub use accept::{serve_clients, Stopper};
pub use client::{request, ControlError};
pub use server::{ControlServer, ServeError};
pub use wire::{ControlReply, MAX_CLIENTS, MAX_REPLY, MAX_REQUEST, REQUEST_DEADLINE};
