//! Feature detection from `slirp4netns --help` and the slirp4netns argv.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::options::{NetworkOptions, PortHandler};

/// The longest API socket path a `sockaddr_un` can hold (107 bytes plus NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The flags a slirp4netns binary supports, as far as the options care.
///
/// New slirp4netns flags add fields, so it cannot be built with a struct
/// literal outside this crate: start from [`Features::from_help`],
/// [`Features::all`] or [`Features::default`] (none) and set fields.
///
/// ```
/// let mut f = slirp_opts::Features::all();
/// f.cidr = false; // as if the binary were older than 0.3.0
/// assert!(f.mtu && !f.cidr);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Features {
    /// `--disable-host-loopback` (0.3.0).
    pub disable_host_loopback: bool,
    /// `--mtu` (0.2.0).
    pub mtu: bool,
    /// `--enable-sandbox` (0.4.0).
    pub enable_sandbox: bool,
    /// `--enable-seccomp` (0.4.0).
    pub enable_seccomp: bool,
    /// `--cidr` (0.3.0).
    pub cidr: bool,
    /// `--outbound-addr` and `--outbound-addr6` (1.1.0).
    pub outbound_addr: bool,
    /// `--enable-ipv6` (0.2.0).
    pub ipv6: bool,
}

impl Features {
    /// Reads the features from the text `slirp4netns --help` printed.
    ///
    /// ```
    /// let f = slirp_opts::Features::from_help("-m, --mtu=MTU\n--cidr=CIDR\n");
    /// assert!(f.mtu && f.cidr && !f.enable_sandbox);
    /// ```
    pub fn from_help(help: &str) -> Self {
        Features {
            disable_host_loopback: help.contains("--disable-host-loopback"),
            mtu: help.contains("--mtu"),
            enable_sandbox: help.contains("--enable-sandbox"),
            enable_seccomp: help.contains("--enable-seccomp"),
            cidr: help.contains("--cidr"),
            outbound_addr: help.contains("--outbound-addr"),
            ipv6: help.contains("--enable-ipv6"),
        }
    }

    /// Every feature present (slirp4netns 1.1.0 and newer).
    pub fn all() -> Self {
        Features {
            disable_host_loopback: true,
            mtu: true,
            enable_sandbox: true,
            enable_seccomp: true,
            cidr: true,
            outbound_addr: true,
            ipv6: true,
        }
    }
}

/// An option the binary cannot honour, or a plan slirp4netns would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgvError {
    /// `cidr` was given but the binary has no `--cidr`.
    #[error("cidr not supported")]
    CidrNotSupported,
    /// IPv6 is on but the binary has no `--enable-ipv6`.
    #[error("enable_ipv6 not supported")]
    Ipv6NotSupported,
    /// `outbound_addr` was given but the binary has no `--outbound-addr`.
    #[error("outbound_addr not supported")]
    OutboundAddrNotSupported,
    /// `outbound_addr6` was given but the binary has no `--outbound-addr6`.
    #[error("outbound_addr6 not supported")]
    OutboundAddr6NotSupported,
    /// `outbound_addr6` was given with IPv6 off.
    #[error("enable_ipv6=true is required for outbound_addr6")]
    Ipv6RequiredForOutboundAddr6,
    /// The API socket path does not fit in a `sockaddr_un`.
    #[error("api socket path {path:?} is {len} bytes long; slirp4netns accepts at most {MAX_SOCKET_PATH}")]
    ApiSocketPathTooLong {
        /// The path given.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The tap device name is empty or longer than 15 bytes.
    #[error("invalid tap device name {0:?}: it must be 1 to 15 bytes")]
    InvalidTapName(String),
    /// port_handler=slirp4netns forwards ports through the API socket, but
    /// the invocation has none ([`Invocation::api_socket`]).
    #[error("port_handler=slirp4netns needs an API socket: set Invocation::api_socket")]
    ApiSocketRequired,
}

/// Which network namespace slirp4netns attaches to.
///
/// `#[non_exhaustive]`, as slirp4netns's `--netns-type` may name more kinds:
/// read it through [`Target::netns_path`] and [`Target::userns_path`] rather
/// than a `match`, which needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A namespace file (`--netns-type=path`), optionally with the user
    /// namespace to join (`--userns-path`).
    Path {
        /// The netns path, such as `/run/netns/x` or `/proc/PID/ns/net`.
        netns: PathBuf,
        /// The user namespace owning it, for rootless use.
        userns: Option<PathBuf>,
    },
    /// The network namespace of a process (`--netns-type=pid`, the default).
    Pid(u32),
}

impl Target {
    /// The namespaces of process `pid`, as paths: `/proc/PID/ns/net`, and
    /// `/proc/PID/ns/user` as the owner when `rootless`.
    ///
    /// ```
    /// let t = slirp_opts::Target::of_process(42, true);
    /// assert_eq!(t.netns_path(), std::path::Path::new("/proc/42/ns/net"));
    /// assert_eq!(t.userns_path(), Some(std::path::Path::new("/proc/42/ns/user")));
    /// ```
    pub fn of_process(pid: u32, rootless: bool) -> Target {
        Target::Path {
            netns: proc_ns(pid, "net"),
            userns: rootless.then(|| proc_ns(pid, "user")),
        }
    }

    /// The network namespace file: the path, or `/proc/PID/ns/net`.
    pub fn netns_path(&self) -> PathBuf {
        match self {
            Target::Path { netns, .. } => netns.clone(),
            Target::Pid(pid) => proc_ns(*pid, "net"),
        }
    }

    /// The user namespace that owns it, when one is named.
    pub fn userns_path(&self) -> Option<&std::path::Path> {
        match self {
            Target::Path { userns, .. } => userns.as_deref(),
            Target::Pid(_) => None,
        }
    }
}

/// `/proc/PID/ns/KIND`: the one place these paths are built.
fn proc_ns(pid: u32, kind: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/{kind}"))
}

/// Everything about one slirp4netns invocation that is not a network option.
///
/// It may gain fields for new slirp4netns flags, so it cannot be built with a
/// struct literal outside this crate: start from [`Invocation::new`] and set
/// fields.
///
/// ```
/// use slirp_opts::{Invocation, Target};
///
/// let mut inv = Invocation::new(Target::Path { netns: "/run/netns/a".into(), userns: None });
/// inv.api_socket = Some("/run/user/1000/slirp.sock".into());
/// inv.exit_fd = None;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invocation {
    /// Where to attach.
    pub target: Target,
    /// The tap device name created in the namespace.
    pub tap: String,
    /// The child's fd number for the ready pipe (`-r`).
    pub ready_fd: i32,
    /// The child's fd number for the exit pipe (`-e`), if any.
    pub exit_fd: Option<i32>,
    /// The API socket path (`--api-socket`), if any.
    pub api_socket: Option<PathBuf>,
}

impl Invocation {
    /// The usual invocation: tap0, ready on fd 3, exit on fd 4, no API socket.
    pub fn new(target: Target) -> Self {
        Invocation {
            target,
            tap: "tap0".to_owned(),
            ready_fd: 3,
            exit_fd: Some(4),
            api_socket: None,
        }
    }
}

/// Builds the slirp4netns arguments (without argv\[0\]) in containers-common's
/// order: `<feature flags> -c -r 3 [-e 4] [--api-socket P] --netns-type=path [--userns-path=U] NETNS tap0`.
///
/// Flags the binary lacks that the options do not strictly need
/// (`--disable-host-loopback`, `--mtu`, sandbox, seccomp) are left out silently.
///
/// ```
/// use slirp_opts::{build_args, Features, Invocation, NetworkOptions, Target};
///
/// let inv = Invocation::new(Target::Pid(42));
/// let args = build_args(&NetworkOptions::default(), &Features::all(), &inv).unwrap();
/// let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
/// assert_eq!(args, [
///     "--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
///     "--enable-ipv6", "-c", "-r", "3", "-e", "4", "42", "tap0",
/// ]);
/// ```
///
/// # Errors
///
/// An [`ArgvError`] when the options need a flag the binary lacks
/// (`cidr`, IPv6, `outbound_addr`, `outbound_addr6`), when `outbound_addr6`
/// is given with IPv6 off, or when slirp4netns would refuse the invocation
/// (an API socket path over [`MAX_SOCKET_PATH`] bytes, a tap name that is
/// empty or over 15 bytes), or when port_handler=slirp4netns has no API
/// socket to forward ports through.
pub fn build_args(
    opts: &NetworkOptions,
    features: &Features,
    inv: &Invocation,
) -> Result<Vec<OsString>, ArgvError> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |s: String| args.push(OsString::from(s));

    if !opts.allow_host_loopback && features.disable_host_loopback {
        push("--disable-host-loopback".into());
    }
    if features.mtu {
        push(format!("--mtu={}", opts.mtu));
    }
    if !opts.no_pivot_root && features.enable_sandbox {
        push("--enable-sandbox".into());
    }
    if features.enable_seccomp {
        push("--enable-seccomp".into());
    }
    if let Some(cidr) = opts.cidr {
        if !features.cidr {
            return Err(ArgvError::CidrNotSupported);
        }
        push(format!("--cidr={cidr}"));
    }
    if opts.enable_ipv6 {
        if !features.ipv6 {
            return Err(ArgvError::Ipv6NotSupported);
        }
        push("--enable-ipv6".into());
    }
    if let Some(addr) = &opts.outbound_addr {
        if !features.outbound_addr {
            return Err(ArgvError::OutboundAddrNotSupported);
        }
        push(format!("--outbound-addr={addr}"));
    }
    if let Some(addr) = &opts.outbound_addr6 {
        if !features.outbound_addr {
            return Err(ArgvError::OutboundAddr6NotSupported);
        }
        if !opts.enable_ipv6 {
            return Err(ArgvError::Ipv6RequiredForOutboundAddr6);
        }
        push(format!("--outbound-addr6={addr}"));
    }

    if inv.tap.is_empty() || inv.tap.len() > 15 {
        return Err(ArgvError::InvalidTapName(inv.tap.clone()));
    }
    push("-c".into());
    push("-r".into());
    push(inv.ready_fd.to_string());
    if let Some(fd) = inv.exit_fd {
        push("-e".into());
        push(fd.to_string());
    }
    if opts.port_handler == PortHandler::Slirp4netns && inv.api_socket.is_none() {
        return Err(ArgvError::ApiSocketRequired);
    }
    if let Some(path) = &inv.api_socket {
        let len = path.as_os_str().as_bytes().len();
        if len > MAX_SOCKET_PATH {
            return Err(ArgvError::ApiSocketPathTooLong {
                path: path.clone(),
                len,
            });
        }
        args.push("--api-socket".into());
        args.push(path.clone().into_os_string());
    }
    match &inv.target {
        Target::Path { netns, userns } => {
            args.push("--netns-type=path".into());
            if let Some(userns) = userns {
                let mut flag = OsString::from("--userns-path=");
                flag.push(userns);
                args.push(flag);
            }
            args.push(netns.clone().into_os_string());
        }
        Target::Pid(pid) => args.push(pid.to_string().into()),
    }
    args.push(inv.tap.clone().into());
    Ok(args)
}
