//! The full slirp4netns setup, recomposed from the workspace's crates the way
//! containers-common's `Setup` does it: find the binary, detect its features
//! (cached per binary, with a deadline), check the addresses and ports
//! ([`plan`]), then for one namespace ([`Plan::start`]) start slirp4netns,
//! wait until it is ready, and forward the ports through exactly one
//! handler: the slirp4netns API (`port_handler=slirp4netns`) or a port
//! forwarder chosen explicitly ([`ForwarderChoice`]: our `rootlessport`
//! binary, a named binary, or in-process with the `in-process` feature). On
//! any failure everything started is undone.
//!
//! Depend on it without the command-line program's stack with
//! `default-features = false` (the default feature `cli` builds `slirpnet`).
//!
//! ```
//! use slirpnet::{ForwarderChoice, NetworkOptions, PortHandler, SetupOptions};
//!
//! let network = NetworkOptions::new()
//!     .with_port_handler(PortHandler::Slirp4netns)
//!     .with_mtu(1500);
//! let opts = SetupOptions::new(network)
//!     .with_ports(slirpnet::parse_forwards("127.0.0.1:8080:80/tcp,udp")?);
//! assert_eq!(opts.ports.len(), 2);
//! assert_eq!(opts.forwarder, ForwarderChoice::Rootlessport);
//! assert_eq!(opts.network.mtu, 1500);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Starting needs slirp4netns and the right to enter the namespace:
//!
//! ```no_run
//! use slirpnet::{plan, NetworkOptions, PortHandler, SetupOptions, Target};
//!
//! let network = NetworkOptions::new().with_port_handler(PortHandler::Slirp4netns);
//! let opts = SetupOptions::new(network).with_ports(slirpnet::parse_forwards("127.0.0.1:8080:80")?);
//! let checked = plan(&opts)?;
//! let net = checked.start(Target::Path { netns: "/run/netns/demo".into(), userns: None })?;
//! println!("guest {} via {}", net.info().guest, net.info().gateway);
//! net.teardown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//! A command can also get a network namespace of its own, as `slirpnet run`
//! gives it, from any program: [`Plan::run`] starts it in new network,
//! mount and PID namespaces ([`NsChild`]; a user namespace too when this
//! process lacks CAP_SYS_ADMIN: [`SetupOptions::new`] and
//! [`NsOptions::new`] pick the rootless settings themselves), networks
//! them, and lets it run. When the command ends, when the
//! [`RunningCommand`] is dropped, or when this process dies (even by
//! SIGKILL), every process in the namespace is killed: nothing the command
//! started outlives it.
//!
//! ```no_run
//! use slirpnet::{plan, NetworkOptions, NsCommand, PortHandler, SetupOptions};
//!
//! let network = NetworkOptions::new().with_port_handler(PortHandler::Slirp4netns);
//! let checked = plan(&SetupOptions::new(network))?;
//! let mut command = NsCommand::new("sh");
//! command.args(["-c", "ip addr; cat /etc/resolv.conf"]);
//! let ns = checked.ns_options();
//! let running = checked.run(&command, &ns)?;
//! let status = running.wait()?; // the network is torn down
//! println!("the command ended: {status}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod autopublish;
mod binary;
mod child;
mod dirs;
mod error;
mod handler;
mod hostport;
mod listening;
mod network;
mod options;
mod plan;
mod portfwd;
mod removal;
mod report;
mod run;
pub mod session;

pub use autopublish::{parse_port_list, AutoPublishError, AutoPublisher, RETRY_AFTER};
pub use binary::{detect_features, find_binary, BinaryError, HELP_TIMEOUT};
pub use child::{NsChild, NsCommand, NsOptions, NsStep, SpawnError};
pub use error::SetupError;
pub use hostport::{free_host_port, HostPortError};
pub use network::{Network, SharedNetwork};
pub use options::{AutoPublish, SetupOptions, DEFAULT_INTERVAL};
pub use plan::{plan, setup, Plan};
pub use portfwd::{ForwarderChoice, ForwarderError, ForwarderInfo, PortChangeError};
pub use removal::{removal_keys, RemovalError};
pub use report::{ForwardInfo, SetupInfo};
pub use run::{RunError, RunningCommand};

// What public signatures mention, so users need no second dependency to
// name it.
/// The namespace crate: open, make and enter network namespaces
/// ([`netns_util::Netns`]) with no second dependency.
pub use netns_util;
pub use nix::sys::signal::Signal;
/// The API socket client, whose errors [`SetupError`] and [`PortChangeError`]
/// carry ([`slirp_api::ApiError`], [`slirp_api::WaitError`]).
pub use slirp_api;
pub use slirp_opts::{
    self, parse_forwards, parse_port_spec, Forward, NetworkOptions, PortHandler, PortKey,
    PortMapping, Protocol, SpecError, Target,
};
pub use slirp_proc::{self, Exit, Slirp};
