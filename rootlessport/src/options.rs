//! How a forwarder forwards, beyond what podman's configuration says.

/// The environment variable that turns [`ForwardOptions::keep_source_ip`]
/// on for the `rootlessport` program: `ROOTLESSPORT_KEEP_SOURCE_IP=1`
/// (named once, in slirp-opts, for whoever starts the program).
pub use slirp_opts::rootlessport::KEEP_SOURCE_IP_ENV;

/// Options of [`Forwarder::start_with`](crate::Forwarder::start_with).
/// The default is what podman's Go helper does.
///
/// ```
/// use rootlessport::ForwardOptions;
///
/// let options = ForwardOptions::default().keep_source_ip(true);
/// assert!(options.keeps_source_ip());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardOptions {
    keep_source_ip: bool,
}

impl ForwardOptions {
    /// Whether the service in the namespace sees each client's own address
    /// and port (off by default, as in the Go helper, where it sees the
    /// namespace's own address).
    ///
    /// On, the socket toward the container is bound to the client's address
    /// (IP_TRANSPARENT), and rules and routes marked as the forwarder's own
    /// send the service's replies to current clients back to it; they are
    /// removed when the forwarder stops. Loopback clients, and clients of
    /// the other address family than the child IP, keep the namespace's
    /// own address. Where the namespace refuses (no CAP_NET_ADMIN over
    /// it, no IPv6 for an IPv6 child IP), the forwarder logs one warning
    /// and forwards as with it off.
    pub fn keep_source_ip(mut self, on: bool) -> Self {
        self.keep_source_ip = on;
        self
    }

    /// Whether [`keep_source_ip`](Self::keep_source_ip) is on.
    pub fn keeps_source_ip(&self) -> bool {
        self.keep_source_ip
    }

    /// The options the `rootlessport` program takes from its environment:
    /// [`KEEP_SOURCE_IP_ENV`] set to `1` turns keeping client addresses
    /// on; unset, empty or `0` leaves it off.
    ///
    /// # Errors
    ///
    /// [`OptionsEnvError`] when [`KEEP_SOURCE_IP_ENV`] has another value
    /// (the caller may go on with the defaults).
    pub fn from_env() -> Result<Self, OptionsEnvError> {
        let on = match std::env::var_os(KEEP_SOURCE_IP_ENV) {
            None => false,
            Some(v) if v == "1" => true,
            Some(v) if v == "0" || v.is_empty() => false,
            Some(v) => {
                return Err(OptionsEnvError::KeepSourceIp(
                    v.to_string_lossy().into_owned(),
                ))
            }
        };
        Ok(ForwardOptions::default().keep_source_ip(on))
    }
}

/// An environment variable of [`ForwardOptions::from_env`] with a value it
/// does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsEnvError {
    /// [`KEEP_SOURCE_IP_ENV`] is neither `1` nor `0`.
    #[error("{KEEP_SOURCE_IP_ENV}={0:?} is neither 1 nor 0; client addresses are not kept")]
    KeepSourceIp(String),
}
