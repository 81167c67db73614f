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
//! use slirpnet::{ForwarderChoice, NetworkOptions, SetupOptions};
//!
//! let network = NetworkOptions::parse(&[] as &[&str], false, &["port_handler=slirp4netns", "mtu=1500"], |_| false)?;
//! let mut opts = SetupOptions::new(network);
//! opts.ports.push(slirpnet::parse_port_spec("127.0.0.1:8080:80/tcp,udp")?);
//! assert_eq!(opts.forwarder, ForwarderChoice::Rootlessport);
//! assert_eq!(opts.network.mtu, 1500);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Starting needs slirp4netns and the right to enter the namespace:
//!
//! ```no_run
//! use slirpnet::{plan, NetworkOptions, SetupOptions, Target};
//!
//! let network = NetworkOptions::parse(&[] as &[&str], false, &["port_handler=slirp4netns"], |_| false)?;
//! let mut opts = SetupOptions::new(network);
//! opts.ports.push(slirpnet::parse_port_spec("127.0.0.1:8080:80")?);
//! let checked = plan(&opts)?;
//! let net = checked.start(Target::Path { netns: "/run/netns/demo".into(), userns: None })?;
//! println!("guest {} via {}", net.info().guest, net.info().gateway);
//! net.teardown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod autopublish;
mod binary;
pub mod control;
mod dirs;
mod listening;
mod portfwd;
pub mod session;
mod setup;

pub use autopublish::{parse_port_list, AutoPublishError, AutoPublisher, RETRY_AFTER};
pub use binary::{detect_features, find_binary, BinaryError, HELP_TIMEOUT};
pub use portfwd::{
    resolve_forwarder, ForwarderChoice, ForwarderInfo, PortChangeError, PortForwardError,
    PortForwarder,
};
pub use setup::{
    plan, setup, AutoPublish, ForwardInfo, Network, Plan, SetupError, SetupInfo, SetupOptions,
    DEFAULT_INTERVAL,
};

// What public signatures mention, so users need no second dependency to
// name it.
pub use nix::sys::signal::Signal;
pub use slirp_opts::{
    self, parse_port_spec, rootlessport::Config as RootlessportConfig, NetworkOptions, PortHandler,
    PortMapping, Protocol, Target,
};
pub use slirp_proc::{self, Exit, Slirp};
