//! Why a setup failed: [`SetupError`].

use std::net::IpAddr;

use slirp_opts::{AddrError, ArgvError, Forward, PortError};
use slirp_proc::StartError;

use crate::binary::BinaryError;
use crate::portfwd::ForwarderError;

/// A failed setup. Nothing it started is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The binary.
    #[error(transparent)]
    Binary(#[from] BinaryError),
    /// The argv.
    #[error(transparent)]
    Args(#[from] ArgvError),
    /// An address cannot be derived from the subnet.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// Two forwards claim one host port.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The port forwarder (port_handler=rootlesskit).
    #[error(transparent)]
    Forwarder(#[from] ForwarderError),
    /// The namespace to network, for the accept_dad toggle or the forwarder.
    #[error(transparent)]
    Netns(#[from] netns_util::NetnsError),
    /// slirp4netns forwards only IPv4 host addresses.
    #[error("port_handler=slirp4netns can only listen on IPv4 host addresses, not {addr} (in {mapping})")]
    Ipv6HostAddress {
        /// The address.
        addr: IpAddr,
        /// The mapping, in `-p` syntax.
        mapping: String,
    },
    /// A setting needs CAP_SYS_ADMIN in this process's own user namespace,
    /// which this process lacks (rootless).
    #[error("{what} needs CAP_SYS_ADMIN in this process's own user namespace, which it lacks (rootless); {fix}")]
    Unprivileged {
        /// The setting.
        what: &'static str,
        /// What to change, in the library's terms.
        fix: &'static str,
    },
    /// The temporary directory for the API socket.
    #[error("failed to create a directory for the slirp4netns API socket: {0}")]
    ApiDir(std::io::Error),
    /// Starting slirp4netns.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The API socket did not appear.
    #[error(transparent)]
    ApiWait(#[from] slirp_api::WaitError),
    /// Adding a forward.
    #[error("failed to forward {forward}: {error}")]
    Forward {
        /// The forward.
        forward: Forward,
        /// slirp4netns's answer (in the message; not also its source).
        error: slirp_api::ApiError,
    },
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use crate::portfwd::PortChangeError;

    /// `e`'s message repeats none of its sources' (message or source,
    /// never both), so a printer walking the chain says each once.
    fn once(e: &dyn Error) {
        let text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            assert!(
                !text.contains(&c.to_string()),
                "{text:?} repeats its source {c}"
            );
            cause = c.source();
        }
    }

    #[test]
    fn every_cause_is_printed_once() {
        let api = || {
            slirp_api::Client::new("/nonexistent/slirpnet-test.sock")
                .list_hostfwd()
                .unwrap_err()
        };
        let forward = slirp_opts::parse_forwards("127.0.0.1:8080:80").unwrap()[0];
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(SetupError::Forward {
                forward,
                error: api(),
            }),
            Box::new(PortChangeError::Api {
                key: forward.key(),
                error: api(),
            }),
            Box::new(PortChangeError::ApiList(api())),
            Box::new(BinaryError::Stat {
                path: "/nonexistent".into(),
                error: std::io::Error::other("gone"),
            }),
            Box::new(ForwarderError::Config(
                slirp_opts::rootlessport::Config::default()
                    .validate()
                    .unwrap_err(),
            )),
        ];
        for e in &errors {
            once(e.as_ref());
        }
    }
}
