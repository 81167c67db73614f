//! Network namespaces: open and validate a namespace file, run work inside one
//! on its own thread, create and remove persistent ones, check privileges, and
//! read an interface from inside.
//!
//! This is the only crate of the workspace that calls `setns(2)`. It never
//! switches the caller's thread: work runs on a short-lived thread that enters
//! the namespace and ends there (or, for a user namespace, in a child between
//! fork and exec: [`join_userns_before_exec`]). Sockets and children made on
//! that thread keep the namespace after it ends.
//!
//! ```
//! use netns_util::{has_cap, Capability, Netns, NetnsError};
//!
//! // Our own network namespace: opening one needs no privilege.
//! let ns = Netns::current()?;
//! assert_eq!(ns.id()?, Netns::open("/proc/self/ns/net")?.id()?);
//!
//! // What is not a network namespace is refused when opened.
//! let err = Netns::open("/proc/self/ns/uts").unwrap_err();
//! assert!(matches!(err, NetnsError::NotANetworkNamespace { .. }));
//!
//! // A listener made inside the namespace, usable from any thread
//! // afterwards. Joining needs CAP_SYS_ADMIN over the namespace.
//! match ns.run(|| std::net::TcpListener::bind("127.0.0.1:0")) {
//!     Ok(listener) => println!("listening on {}", listener?.local_addr()?),
//!     Err(NetnsError::Privilege(e)) => {
//!         assert!(!has_cap(Capability::CAP_SYS_ADMIN));
//!         assert_eq!(e.cap, Capability::CAP_SYS_ADMIN);
//!         println!("{e}"); // joining network namespace ... needs CAP_SYS_ADMIN ...
//!     }
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors
//!
//! Each error's message is complete: when a system call fails, the message
//! ends with the OS error's text, and [`source`](std::error::Error::source)
//! returns `None`, so that a printer walking the chain (such as anyhow's
//! `{:#}`) does not repeat it. The OS error stays reachable as the variant's
//! `error` field (a [`std::io::Error`]). Show them with `Display` (`{e}` or
//! `{e:#}`): a `main` that returns the error prints its `Debug` form
//! instead. Variants marked
//! `#[error(transparent)]` ([`NetnsError::Privilege`],
//! [`IfaceError::Netns`], [`PersistError::Privilege`]) are the inner error
//! itself.
//!
//! # Re-exports
//!
//! [`Capability`] is the `caps` crate's, re-exported so that [`has_cap`],
//! [`require_cap`] and [`PrivilegeError::cap`] can be used without depending
//! on `caps`.

mod iface;
mod inside;
mod ns;
mod persist;
mod prefork;
mod privilege;

pub use caps::Capability;
pub use iface::{interface_info, Counters, IfaceError, InterfaceInfo};
pub use inside::{Inside, MAX_INSIDE};
pub use ns::{Netns, NetnsError};
pub use persist::{create_persistent, remove_persistent, PersistError};
pub use prefork::join_userns_before_exec;
pub use privilege::{has_cap, require_cap, PrivilegeError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
