//! The slirp4netns network options as podman and containers-common accept them.
//!
//! Options come as `key=value` strings: first the engine's `network_cmd_options`
//! (containers.conf, one option per list item), then the per-container ones
//! (podman's `--network slirp4netns:OPT,OPT,...`, split at each comma), later
//! ones overriding earlier ones.

use std::net::IpAddr;

use ipnet::Ipv4Net;

/// The MTU podman uses when none is given.
pub const DEFAULT_MTU: u32 = 65520;
/// The smallest MTU accepted (the IPv4 minimum).
pub const MIN_MTU: u32 = 68;
/// The largest MTU slirp4netns accepts.
pub const MAX_MTU: u32 = 65521;

/// A bad network option. The texts are the ones podman prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    /// `cidr=` is not an IPv4 CIDR.
    #[error("invalid cidr {0:?}")]
    InvalidCidr(String),
    /// `port_handler=` is neither `slirp4netns` nor `rootlesskit`.
    #[error("unknown port_handler for slirp4netns: {0:?}")]
    UnknownPortHandler(String),
    /// `allow_host_loopback=` is not `true` or `false`.
    #[error("invalid value of allow_host_loopback for slirp4netns: {0:?}")]
    InvalidAllowHostLoopback(String),
    /// `enable_ipv6=` is not `true` or `false`.
    #[error("invalid value of enable_ipv6 for slirp4netns: {0:?}")]
    InvalidEnableIpv6(String),
    /// `outbound_addr=` is neither an IPv4 literal nor an existing interface.
    #[error("invalid outbound_addr {0:?}")]
    InvalidOutboundAddr(String),
    /// `outbound_addr6=` is neither an IPv6 literal nor an existing interface.
    #[error("invalid outbound_addr6: {0:?}")]
    InvalidOutboundAddr6(String),
    /// `mtu=` is not an integer in `68..=65521`.
    #[error("invalid mtu {0:?}")]
    InvalidMtu(String),
    /// The option has no `=` or an unknown key; carries the whole option.
    #[error("unknown option for slirp4netns: {0:?}")]
    UnknownOption(String),
}

/// Who forwards host ports into the namespace.
///
/// `#[non_exhaustive]`: podman may name another handler, so a match on it
/// needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PortHandler {
    /// The rootlessport forwarder (podman's default).
    #[default]
    Rootlesskit,
    /// slirp4netns itself, through `add_hostfwd` on its API socket.
    Slirp4netns,
}

impl PortHandler {
    /// The option value naming this handler.
    pub fn as_str(self) -> &'static str {
        match self {
            PortHandler::Rootlesskit => "rootlesskit",
            PortHandler::Slirp4netns => "slirp4netns",
        }
    }
}

impl std::fmt::Display for PortHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed slirp4netns network options, with podman's defaults.
///
/// The per-container option string in one call ([`NetworkOptions::parse_list`]):
///
/// ```
/// use slirp_opts::{NetworkOptions, PortHandler};
///
/// // podman run --network slirp4netns:port_handler=slirp4netns,enable_ipv6=false,mtu=1500
/// let opts = NetworkOptions::parse_list(
///     "port_handler=slirp4netns,enable_ipv6=false,mtu=1500",
///     |_iface| false, // asked only for outbound_addr/outbound_addr6 names
/// )
/// .unwrap();
/// assert_eq!(opts.port_handler, PortHandler::Slirp4netns);
/// assert!(!opts.enable_ipv6);
/// assert_eq!(opts.mtu, 1500);
/// ```
///
/// The engine's options and the container's, as podman combines them:
///
/// ```
/// use slirp_opts::{NetworkOptions, PortHandler};
///
/// let opts = NetworkOptions::parse(
///     &["mtu=1500"],          // engine network_cmd_options
///     false,                   // engine no_pivot_root
///     &["cidr=10.5.0.0/24", "port_handler=slirp4netns"],
///     |_iface| false,          // no interface lookups needed here
/// )
/// .unwrap();
/// assert_eq!(opts.mtu, 1500);
/// assert_eq!(opts.cidr.unwrap().to_string(), "10.5.0.0/24");
/// assert_eq!(opts.port_handler, PortHandler::Slirp4netns);
/// assert!(opts.enable_ipv6);
///
/// let err = NetworkOptions::parse(&[] as &[&str], false, &["mtu=12"], |_| false).unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid mtu "12""#);
/// ```
///
/// The fields are podman's options; start from [`NetworkOptions::default`]
/// (podman's defaults) or a parse, then set fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkOptions {
    /// The IPv4 network (`--cidr`), host bits cleared; `None` means slirp4netns's 10.0.2.0/24.
    pub cidr: Option<Ipv4Net>,
    /// Who forwards ports.
    pub port_handler: PortHandler,
    /// Whether the namespace may reach the host's 127.0.0.1 through the gateway.
    pub allow_host_loopback: bool,
    /// Whether IPv6 is enabled (`--enable-ipv6`).
    pub enable_ipv6: bool,
    /// `--outbound-addr`: an IPv4 literal or an interface name.
    pub outbound_addr: Option<String>,
    /// `--outbound-addr6`: an IPv6 literal or an interface name.
    pub outbound_addr6: Option<String>,
    /// The tap device's MTU.
    pub mtu: u32,
    /// The engine's `no_pivot_root`: when true, no `--enable-sandbox`.
    pub no_pivot_root: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            cidr: None,
            port_handler: PortHandler::Rootlesskit,
            allow_host_loopback: false,
            enable_ipv6: true,
            outbound_addr: None,
            outbound_addr6: None,
            mtu: DEFAULT_MTU,
            no_pivot_root: false,
        }
    }
}

impl NetworkOptions {
    /// podman's defaults (port_handler=rootlesskit, IPv6 on, MTU 65520,
    /// 10.0.2.0/24), to be changed with the `with_*` methods: the typed way
    /// to build options in code. [`NetworkOptions::parse`] reads podman's
    /// `key=value` texts instead.
    ///
    /// ```
    /// use slirp_opts::{NetworkOptions, PortHandler};
    ///
    /// let opts = NetworkOptions::new()
    ///     .with_port_handler(PortHandler::Slirp4netns)
    ///     .with_mtu(1500)
    ///     .with_ipv6(false)
    ///     .with_cidr("10.5.0.0/24".parse()?);
    /// assert_eq!(opts.mtu, 1500);
    /// assert_eq!(opts.cidr.map(|c| c.to_string()).as_deref(), Some("10.5.0.0/24"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn new() -> Self {
        NetworkOptions::default()
    }

    /// Who forwards ports (`port_handler=`).
    #[must_use]
    pub fn with_port_handler(mut self, handler: PortHandler) -> Self {
        self.port_handler = handler;
        self
    }

    /// The IPv4 network (`cidr=`); its host bits are cleared, as
    /// [`NetworkOptions::parse`] clears them.
    #[must_use]
    pub fn with_cidr(mut self, cidr: Ipv4Net) -> Self {
        self.cidr = Some(cidr.trunc());
        self
    }

    /// Whether the namespace may reach the host's 127.0.0.1 through the
    /// gateway (`allow_host_loopback=`).
    #[must_use]
    pub fn with_host_loopback(mut self, allow: bool) -> Self {
        self.allow_host_loopback = allow;
        self
    }

    /// Whether IPv6 is enabled (`enable_ipv6=`).
    #[must_use]
    pub fn with_ipv6(mut self, enable: bool) -> Self {
        self.enable_ipv6 = enable;
        self
    }

    /// The tap device's MTU (`mtu=`).
    #[must_use]
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// The outbound IPv4 address (`outbound_addr=`): an address.
    #[must_use]
    pub fn with_outbound_addr(mut self, addr: std::net::Ipv4Addr) -> Self {
        self.outbound_addr = Some(addr.to_string());
        self
    }

    /// The outbound IPv6 address (`outbound_addr6=`): an address.
    #[must_use]
    pub fn with_outbound_addr6(mut self, addr: std::net::Ipv6Addr) -> Self {
        self.outbound_addr6 = Some(addr.to_string());
        self
    }

    /// The engine's `no_pivot_root`: when true, slirp4netns runs without
    /// `--enable-sandbox`.
    #[must_use]
    pub fn with_no_pivot_root(mut self, no_pivot_root: bool) -> Self {
        self.no_pivot_root = no_pivot_root;
        self
    }

    /// Parses the engine's options, then the extra options, over the defaults.
    ///
    /// `iface_exists` answers whether a network interface of that name exists;
    /// it is asked only for `outbound_addr`/`outbound_addr6` values that are not
    /// address literals, so this crate stays free of I/O.
    ///
    /// # Errors
    ///
    /// The [`OptionError`] of the first option that is refused, engine
    /// options first, with podman's text.
    pub fn parse<E, X>(
        engine_options: &[E],
        no_pivot_root: bool,
        extra_options: &[X],
        iface_exists: impl Fn(&str) -> bool,
    ) -> Result<Self, OptionError>
    where
        E: AsRef<str>,
        X: AsRef<str>,
    {
        let mut opts = NetworkOptions {
            no_pivot_root,
            ..NetworkOptions::default()
        };
        let all = engine_options
            .iter()
            .map(AsRef::as_ref)
            .chain(extra_options.iter().map(AsRef::as_ref));
        for option in all {
            opts.apply(option, &iface_exists)?;
        }
        Ok(opts)
    }

    /// Parses podman's per-container option string, the part after
    /// `slirp4netns:` in `--network slirp4netns:OPT,OPT,...`, over the
    /// defaults (no engine options, `no_pivot_root` false).
    ///
    /// The string is split at every comma, as podman splits it; an empty
    /// string is no option at all.
    ///
    /// # Errors
    ///
    /// The [`OptionError`] of the first option that is refused, such as
    /// [`OptionError::UnknownOption`] for an empty item (`mtu=1500,,`).
    pub fn parse_list(
        list: &str,
        iface_exists: impl Fn(&str) -> bool,
    ) -> Result<Self, OptionError> {
        let mut opts = NetworkOptions::default();
        opts.apply_list(list, iface_exists)?;
        Ok(opts)
    }

    /// Applies a comma-separated option string (as [`NetworkOptions::parse_list`]
    /// reads it) over these options: for the per-container options on top of
    /// those [`NetworkOptions::parse`] made from the engine's.
    ///
    /// ```
    /// use slirp_opts::NetworkOptions;
    ///
    /// let engine = ["mtu=1500", "allow_host_loopback=true"]; // containers.conf network_cmd_options
    /// let mut opts = NetworkOptions::parse(&engine, false, &[] as &[&str], |_| false).unwrap();
    /// opts.apply_list("mtu=9000,cidr=10.5.0.0/24", |_| false).unwrap();
    /// assert_eq!((opts.mtu, opts.allow_host_loopback), (9000, true));
    /// ```
    ///
    /// # Errors
    ///
    /// The [`OptionError`] of the first option that is refused; the options
    /// before it stay applied.
    pub fn apply_list(
        &mut self,
        list: &str,
        iface_exists: impl Fn(&str) -> bool,
    ) -> Result<(), OptionError> {
        if list.is_empty() {
            return Ok(());
        }
        for option in list.split(',') {
            self.apply(option, &iface_exists)?;
        }
        Ok(())
    }

    /// Applies one `key=value` option (split at the first `=`).
    ///
    /// # Errors
    ///
    /// [`OptionError::UnknownOption`] without `=` or for an unknown key, and
    /// the key's own error for a value it refuses.
    pub fn apply(
        &mut self,
        option: &str,
        iface_exists: impl Fn(&str) -> bool,
    ) -> Result<(), OptionError> {
        let Some((key, value)) = option.split_once('=') else {
            return Err(OptionError::UnknownOption(option.to_owned()));
        };
        match key {
            "cidr" => {
                let net: Ipv4Net = value
                    .parse()
                    .map_err(|_| OptionError::InvalidCidr(value.to_owned()))?;
                self.cidr = Some(net.trunc());
            }
            "port_handler" => {
                self.port_handler = match value {
                    "slirp4netns" => PortHandler::Slirp4netns,
                    "rootlesskit" => PortHandler::Rootlesskit,
                    _ => return Err(OptionError::UnknownPortHandler(value.to_owned())),
                }
            }
            "allow_host_loopback" => {
                self.allow_host_loopback = parse_bool(value)
                    .ok_or_else(|| OptionError::InvalidAllowHostLoopback(value.to_owned()))?;
            }
            "enable_ipv6" => {
                self.enable_ipv6 = parse_bool(value)
                    .ok_or_else(|| OptionError::InvalidEnableIpv6(value.to_owned()))?;
            }
            "outbound_addr" => {
                let is_v4 = matches!(value.parse::<IpAddr>(), Ok(IpAddr::V4(_)));
                if !is_v4 && !is_interface_name(value, &iface_exists) {
                    return Err(OptionError::InvalidOutboundAddr(value.to_owned()));
                }
                self.outbound_addr = Some(value.to_owned());
            }
            "outbound_addr6" => {
                // An IPv4-mapped IPv6 address is IPv4 for this purpose, as in Go.
                let is_v6 = matches!(value.parse::<IpAddr>(),
                    Ok(IpAddr::V6(a)) if a.to_ipv4_mapped().is_none());
                if !is_v6 && !is_interface_name(value, &iface_exists) {
                    return Err(OptionError::InvalidOutboundAddr6(value.to_owned()));
                }
                self.outbound_addr6 = Some(value.to_owned());
            }
            "mtu" => {
                self.mtu = value
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                    .ok_or_else(|| OptionError::InvalidMtu(value.to_owned()))?;
            }
            _ => return Err(OptionError::UnknownOption(option.to_owned())),
        }
        Ok(())
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Interface names are at most 15 bytes, with no `/`, whitespace or NUL; only
/// then is the injected existence check asked.
fn is_interface_name(name: &str, iface_exists: impl Fn(&str) -> bool) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
        && iface_exists(name)
}
