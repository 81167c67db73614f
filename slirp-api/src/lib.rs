//! Client for the slirp4netns API socket (`--api-socket`).
//!
//! slirp4netns serves one request per connection: the client writes the whole
//! JSON request in one write (at most 4095 bytes), shuts down its write side,
//! and reads the reply to EOF. The server handles requests synchronously, so
//! every call here has a deadline.
//!
//! ```no_run
//! use slirp_api::{Client, HostFwd};
//! use slirp_opts::Protocol;
//!
//! let client = Client::new("/run/user/1000/slirp.sock");
//! let id = client.add_hostfwd(&HostFwd::new(Protocol::Tcp, 8080, 80))?;
//! for entry in client.list_hostfwd()? {
//!     println!("{} {}:{} -> {}:{}", entry.id, entry.host_addr, entry.host_port, entry.guest_addr, entry.guest_port);
//! }
//! client.remove_hostfwd(id)?;
//! # Ok::<(), slirp_api::ApiError>(())
//! ```

mod client;
mod reply;
mod wait;

pub use client::{ApiError, Client, HostFwd, HostFwdEntry, DEFAULT_TIMEOUT, MAX_REQUEST};
pub use wait::{wait_for_socket, WaitError};
