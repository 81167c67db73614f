//! Why client addresses cannot be kept in a namespace.

use std::io;

use netns_util::NetnsError;

/// Why client addresses cannot be kept in this namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceIpError {
    /// The thread inside the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The thread inside the namespace could not start, or ended.
    #[error("the routing thread inside the namespace ended before it was ready")]
    Thread,
    /// No rtnetlink socket.
    #[error("cannot open a netlink socket inside the namespace: {error}")]
    Netlink {
        /// The OS error.
        error: io::Error,
    },
    /// IP_TRANSPARENT refused.
    #[error("the namespace refuses transparent sockets{hint}: {error}", hint = needs_admin(.error))]
    Transparent {
        /// The OS error.
        error: io::Error,
    },
    /// Every slot is taken, or its table is someone else's.
    #[error("no slot of the namespace is free: each is taken by another forwarder, or its table holds rules or routes not ours")]
    NoSlot,
    /// The slot's lock socket.
    #[error("cannot bind the lock of slot {slot} inside the namespace: {error}")]
    Lock {
        /// The slot.
        slot: u32,
        /// The OS error.
        error: io::Error,
    },
    /// Listing the rules.
    #[error("cannot list the namespace's routing rules: {error}")]
    ListRules {
        /// The OS error.
        error: io::Error,
    },
    /// Listing the routes.
    #[error("cannot list the namespace's routes: {error}")]
    ListRoutes {
        /// The OS error.
        error: io::Error,
    },
    /// Removing a leftover rule.
    #[error("cannot remove a routing rule of table {table} left by an earlier forwarder{}: {error}", needs_admin(.error))]
    ClearRule {
        /// Its table.
        table: u32,
        /// The OS error.
        error: io::Error,
    },
    /// Removing a leftover route.
    #[error("cannot remove a route of table {table} left by an earlier forwarder{}: {error}", needs_admin(.error))]
    ClearRoute {
        /// Its table.
        table: u32,
        /// The OS error.
        error: io::Error,
    },
    /// Adding a rule.
    #[error("the namespace refuses the routing rule {rule}{}: {error}", needs_admin(.error))]
    AddRule {
        /// The rule, as `ip rule` would show it.
        rule: String,
        /// The OS error.
        error: io::Error,
    },
}

/// A hint after EPERM, and the missing family after EAFNOSUPPORT.
fn needs_admin(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(nix::libc::EPERM | nix::libc::EACCES) => {
            " (it needs CAP_NET_ADMIN in the namespace's owning user namespace)"
        }
        Some(nix::libc::EAFNOSUPPORT) => " (no IPv6 there)",
        _ => "",
    }
}
