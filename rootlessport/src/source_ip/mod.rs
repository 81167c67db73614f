//! Keeping client addresses: the socket toward the container takes the
//! client's address and port as its own (IP_TRANSPARENT), so the service
//! sees who is really calling, and the namespace routes the service's
//! replies to such clients back to that socket.
//!
//! Inside the namespace, every rule and route made here carries the mark
//! [`MARK`] in its protocol field and lives in, or points at, this
//! forwarder's table `TABLE_BASE + slot`:
//!
//! - per child IP C (while it is the target, or has connections or flows):
//!   `from C ipproto P sport S lookup T` for each protocol P and range S of
//!   published container ports. Replies carry C as their source (TCP
//!   always; UDP from a socket bound to C; and everything a container
//!   behind a bridge sends, which is forwarded here);
//! - for the forwarder's life: `iif lo ipproto udp sport S lookup T` for
//!   each UDP range and family: a UDP service bound to all addresses
//!   replies with no source chosen yet, which no `from` rule matches;
//! - in T, per current client address X: `local X dev lo metric M [src C]`.
//!   C is the preferred source where it is an address of this namespace,
//!   so such a reply gets C as its source (after a reload, a client's next
//!   connection or flow makes its route again with the new C, beside the
//!   old one under the other of two metrics M, before the old one goes).
//!
//! A lookup in T that finds no route falls through to the next rule, so
//! whatever the service sends from its published ports to anyone who is
//! not a current client leaves by the namespace's own routes. A client
//! address's route is counted: it lives while the address has connections
//! or flows, and [`LINGER`] longer (a closed socket still exchanges FINs,
//! and a new connection from the same address needs no netlink round trip).
//!
//! A forwarder owns its slot through an abstract unix socket bound inside
//! the namespace (abstract names are per network namespace, and the kernel
//! frees them when the process dies, even by SIGKILL), and takes only a
//! slot whose table nobody else uses: one that holds, or is looked up by,
//! a rule or route of another protocol is left to its owner. At start it
//! clears everything marked for its own slot, and for every other slot
//! whose name it can bind (a forwarder that died without cleaning up); at
//! exit it clears its slot. Two forwarders on one namespace have two
//! slots: their rules and routes never touch.
//!
//! Nothing is ever replaced: rules and routes are made create-only, and
//! only what carries [`MARK`] in a slot's table is ever removed, so a rule
//! or route someone else adds to our table while we run stays theirs (and
//! a client whose route it would collide with keeps the namespace's own
//! address).
//!
//! By concern: `slot` takes the slot and clears dead ones, `rules`
//! says which replies look up the table, `routes` is the thread inside
//! the namespace that alone talks netlink, and `leases` counts the
//! client addresses the event loop asks for.

mod error;
mod leases;
mod routes;
mod rules;
mod slot;

pub use error::SourceIpError;
pub(crate) use leases::{Lease, SourceIps, SourceIpsGuard};
pub use leases::{LINGER, MAX_CLIENTS};
pub(crate) use rules::Ports;
pub use rules::PRIORITY;
pub use slot::{MARK, SLOTS, TABLE_BASE};
