//! Client for the slirp4netns API socket (`--api-socket`).
//!
//! slirp4netns serves one request per connection: the client writes the whole
//! JSON request in one write (at most 4095 bytes), shuts down its write side,
//! and reads the reply to EOF. The server handles requests synchronously, so
//! every call here has a deadline.
//!
//! It needs a running slirp4netns (`examples/forwards.rs` is this example as a
//! program):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use slirp_api::{ApiError, Client, HostFwd, Protocol};
//!
//! let client = Client::new("/run/user/1000/slirp.sock").with_timeout(Duration::from_secs(5));
//! let fwd = HostFwd::new(Protocol::Tcp, 8080, 80).with_host_addr("127.0.0.1".parse().unwrap());
//! let id = client.add_hostfwd(&fwd)?;
//! for entry in client.list_hostfwd()? {
//!     println!("{} {}:{} -> {}:{}", entry.id, entry.host_addr, entry.host_port, entry.guest_addr, entry.guest_port);
//! }
//! client.remove_hostfwd(id)?;
//! // slirp4netns's own text comes back in Refused.
//! match client.remove_hostfwd(id) {
//!     Err(ApiError::Refused { desc, .. }) => println!("already gone: {desc}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok::<(), ApiError>(())
//! ```
//!
//! # Our own control sockets
//!
//! [`control`] is the one framing, server and client of the control
//! sockets of our own (a slirpnet session's, our rootlessport's): the same
//! discipline as slirp4netns's API socket, with a request and a reply of
//! any JSON type. [`portctl`] holds the port requests both serve.
//!
//! # Errors
//!
//! [`ApiError`] has one variant per step of a call (connect, send, receive,
//! the deadline, slirp4netns's refusal, a malformed reply), naming the
//! operation and, for socket errors, the path. Each message is complete: where
//! an I/O or JSON error is the cause, the message ends with its text and
//! [`source`](std::error::Error::source) returns `None`, so a printer walking
//! the chain (anyhow's `{:#}`) does not print it twice. The cause is the
//! variant's `error` field (an [`std::io::Error`]) or inside its
//! [`ReplyProblem`].
//!
//! # Re-exports
//!
//! [`Protocol`] (from slirp-opts) for [`HostFwd`] and [`HostFwdEntry`], and
//! the [`serde_json`] crate for [`Client::execute`]'s request and reply
//! (`slirp_api::serde_json::json!` builds a request).

mod client;
pub mod control;
mod error;
mod hostfwd;
pub mod portctl;
mod reply;
mod stream;
mod wait;

pub use client::{Client, DEFAULT_TIMEOUT, MAX_REQUEST};
pub use error::{ApiError, ReplyProblem, Stage};
pub use hostfwd::{HostFwd, HostFwdEntry};
pub use wait::{wait_for_socket, WaitError};

pub use serde_json;
pub use slirp_opts::Protocol;

/// The README's examples, compiled (not run: they need slirp4netns).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
