//! Pure building blocks for running slirp4netns: network options, feature
//! detection, the slirp4netns argv, port mappings and specs, and address math.
//!
//! This crate does no I/O: whatever needs the system (does an interface exist,
//! what does `slirp4netns --help` print) is passed in by the caller.
//!
//! From podman's options to the slirp4netns command line and the addresses
//! the namespace gets:
//!
//! ```
//! use slirp_opts::{build_args, parse_port_spec, Features, Invocation, NetworkOptions, Subnet, Target};
//!
//! let opts = NetworkOptions::parse_list("cidr=10.5.0.0/24,enable_ipv6=false,mtu=1500", |_| false)?;
//! let features = Features::from_help("--mtu=MTU --cidr=CIDR --enable-sandbox --enable-seccomp --disable-host-loopback");
//! let mut inv = Invocation::new(Target::Path { netns: "/run/netns/demo".into(), userns: None });
//! inv.api_socket = Some("/run/slirp-demo.sock".into());
//! let argv = build_args(&opts, &features, &inv)?;
//! assert_eq!(argv.join(" ".as_ref()), "--disable-host-loopback --mtu=1500 --enable-sandbox \
//!     --enable-seccomp --cidr=10.5.0.0/24 -c -r 3 -e 4 --api-socket /run/slirp-demo.sock \
//!     --netns-type=path /run/netns/demo tap0");
//!
//! let subnet = Subnet::from_cidr(opts.cidr);
//! assert_eq!(subnet.guest()?.to_string(), "10.5.0.100");
//! assert_eq!(subnet.gateway()?.to_string(), "10.5.0.2");
//! assert_eq!(subnet.dns()?.to_string(), "10.5.0.3");
//!
//! let forwards = parse_port_spec("127.0.0.1:8080:80/tcp,udp")?.expand()?;
//! assert_eq!(forwards[1].to_string(), "127.0.0.1:8080 -> 80/udp");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors
//!
//! Each error's message is complete: where a failure has a cause (a port
//! problem, a JSON error), the message ends with the cause's text, and
//! [`source`](std::error::Error::source) returns `None` so that a printer
//! walking the chain does not repeat it. The cause stays reachable as a
//! field of the variant. Variants marked `#[error(transparent)]` (such as
//! [`rootlessport::ConfigError::Port`]) are the inner error itself.
//!
//! # Re-exports
//!
//! Foreign types in this crate's API can be named through it:
//! [`Ipv4Net`] and [`Ipv6Net`] (and the whole [`ipnet`] crate, for its parse
//! errors), [`serde_json`] for [`from_go_json`]'s and
//! [`ConfigError::Decode`](rootlessport::ConfigError::Decode)'s error, and
//! [`serde`] for the traits the data types implement.

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
pub use portctl::PortKey;
pub use ports::{
    check_forwards, expand_all, Forward, PortError, PortMapping, PortProblem, PortSide, Protocol,
};
pub use spec::{parse_forwards, parse_port_spec, SpecError, SpecProblem};

pub use ipnet;
pub use ipnet::{Ipv4Net, Ipv6Net};
pub use serde;
pub use serde_json;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
