//! Pure building blocks for running slirp4netns: network options, feature
//! detection, the slirp4netns argv, port mappings and specs, and address math.
//!
//! This crate does no I/O: whatever needs the system (does an interface exist,
//! what does `slirp4netns --help` print) is passed in by the caller.

mod addr;
mod argv;
mod json;
mod options;
pub mod portctl;
mod ports;
pub mod rootlessport;
mod spec;

pub use addr::{
    AddrError, Subnet, DEFAULT_SUBNET, DHCP_END_OFFSET, DHCP_START_OFFSET, DNS_OFFSET,
    GATEWAY_OFFSET, GUEST_OFFSET, IPV6_DNS, IPV6_GATEWAY, IPV6_GUEST, IPV6_SUBNET,
};
pub use argv::{build_args, ArgvError, Features, Invocation, Target, MAX_SOCKET_PATH};
pub use json::from_go_json;
pub use options::{NetworkOptions, OptionError, PortHandler, DEFAULT_MTU, MAX_MTU, MIN_MTU};
pub use ports::{expand_all, Forward, PortError, PortMapping, PortProblem, Protocol};
pub use spec::{parse_port_spec, SpecError};
