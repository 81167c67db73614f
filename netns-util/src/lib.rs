//! Network namespaces: open and validate a namespace file, run work inside one
//! on its own thread, create and remove persistent ones, check privileges, and
//! read an interface from inside.
//!
//! This is the only crate of the workspace that calls `setns(2)`. It never
//! switches the caller's thread: work runs on a short-lived thread that enters
//! the namespace and ends there (or, for a user namespace, in a child between
//! fork and exec: [`join_userns_before_exec`]). Sockets and children made on that thread keep
//! the namespace after it ends.
//!
//! ```no_run
//! use netns_util::Netns;
//!
//! let ns = Netns::open("/run/netns/demo")?;
//! // A listener inside the namespace, usable from any thread afterwards.
//! let listener = ns.run(|| std::net::TcpListener::bind("0.0.0.0:80"))??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod iface;
mod ns;
mod persist;
mod prefork;
mod privilege;

pub use iface::{interface_info, Counters, IfaceError, InterfaceInfo};
pub use ns::{Netns, NetnsError};
pub use persist::{create_persistent, remove_persistent, PersistError};
pub use prefork::join_userns_before_exec;
pub use privilege::{has_cap, require_cap, PrivilegeError};
