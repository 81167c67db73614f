//! The full slirp4netns setup, recomposed from the workspace's crates the way
//! containers-common's `Setup` does it: find the binary, detect its features
//! (cached per binary), build the argv, start slirp4netns and wait until it is
//! ready, and with `port_handler=slirp4netns` add one forward per protocol per
//! port through the API socket. On any failure everything started is undone.
//!
//! ```no_run
//! use slirpnet::{setup, SetupOptions};
//! use slirp_opts::{NetworkOptions, Target, parse_port_spec};
//!
//! let network = NetworkOptions::parse(&[] as &[&str], false, &["port_handler=slirp4netns"], |_| false)?;
//! let mut opts = SetupOptions::new(Target::Path { netns: "/run/netns/demo".into(), userns: None }, network);
//! opts.ports.push(parse_port_spec("127.0.0.1:8080:80")?);
//! let net = setup(&opts)?;
//! println!("guest {} via {}", net.info().guest, net.info().gateway);
//! net.teardown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod binary;
mod portfwd;
mod setup;

pub use binary::{detect_features, find_binary, BinaryError, HELP_TIMEOUT};
pub use portfwd::{find_rootlessport, PortForwardError, PortForwarder};
pub use setup::{plan, setup, ForwardInfo, Network, Plan, SetupError, SetupInfo, SetupOptions};
