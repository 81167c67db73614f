//! Planning and starting: [`plan`] checks everything that needs no
//! process, [`Plan::start`] starts slirp4netns for one namespace and
//! forwards through the chosen handler.

use std::ffi::OsString;
use std::path::PathBuf;

use slirp_opts::{
    check_forwards, Features, Invocation, Subnet, Target, IPV6_DNS, IPV6_GATEWAY, IPV6_GUEST,
};
use slirp_proc::{Slirp, SlirpCommand};

use crate::binary::{detect_features, find_binary};
use crate::dirs::runtime_dir;
use crate::error::SetupError;
use crate::handler::{self, ForwarderSettings};
use crate::network::Network;
use crate::options::{privileged, SetupOptions};
#[cfg(feature = "in-process")]
use crate::portfwd::ForwarderChoice;
use crate::portfwd::ForwarderInfo;
use crate::report::{ForwardInfo, SetupInfo};
#[cfg(feature = "in-process")]
use slirp_opts::PortHandler;

/// A checked plan: binary, features, addresses, forwards and forwarder,
/// with nothing started. [`Plan::start`] consumes it for one namespace.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The slirp4netns binary.
    pub binary: PathBuf,
    /// What the setup will make (pid 0; no private API socket yet).
    pub info: SetupInfo,
    features: Features,
    opts: SetupOptions,
}

/// Checks everything that can be checked without starting anything: the
/// binary and its features, the addresses, the forwards, the port
/// forwarder.
///
/// # Errors
///
/// The binary is missing or its `--help` fails, an address falls outside
/// the subnet, two forwards claim one host port (or one names an IPv6 host
/// address for port_handler=slirp4netns), the port forwarder cannot be
/// found, or a
/// setting needs a privilege this process lacks
/// ([`SetupError::Unprivileged`] says which setting to change).
pub fn plan(opts: &SetupOptions) -> Result<Plan, SetupError> {
    let binary = find_binary(opts.binary.as_deref())?;
    let features = detect_features(&binary, opts.help_timeout)?;
    check_privilege(opts, features, privileged())?;
    let subnet = Subnet::from_cidr(opts.network.cidr);
    let (guest, gateway, dns) = (subnet.guest()?, subnet.gateway()?, subnet.dns()?);
    check_forwards(&opts.ports)?;
    let handler = opts.network.port_handler;
    let checked = handler::check(
        handler,
        &opts.ports,
        opts.publish_auto.as_ref().map(|a| a.host_ip),
        opts.network.allow_host_loopback,
        &forwarder_settings(opts, None),
    )?;
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    let ipv6 = opts.network.enable_ipv6;
    let info = SetupInfo {
        pid: 0,
        subnet: subnet.to_string(),
        guest,
        gateway,
        dns,
        ipv6,
        guest_v6: ipv6.then_some(IPV6_GUEST),
        gateway_v6: ipv6.then_some(IPV6_GATEWAY),
        dns_v6: ipv6.then_some(IPV6_DNS),
        mtu: opts.network.mtu,
        tap: Invocation::new(Target::Pid(0)).tap,
        port_handler: handler,
        forwarder: checked.forwarder,
        keep_source_ip: checked.keep_source_ip,
        api_socket: opts.api_socket.clone(),
        forwards: opts
            .ports
            .iter()
            .map(|f| ForwardInfo::new(*f, None))
            .collect(),
        publish_auto: opts.publish_auto.as_ref().map(|a| a.host_ip),
        warnings: checked.warnings,
    };
    Ok(Plan {
        binary,
        info,
        features,
        opts: opts.clone(),
    })
}

/// What a port forwarder of this setup is started with.
fn forwarder_settings(opts: &SetupOptions, planned: Option<ForwarderInfo>) -> ForwarderSettings {
    ForwarderSettings {
        choice: opts.forwarder.clone(),
        planned,
        keep_source_ip: opts.keep_source_ip,
        ready_timeout: opts.ready_timeout,
    }
}

/// Refuses, before anything starts, what an unprivileged process cannot do,
/// naming the setting to change.
fn check_privilege(
    opts: &SetupOptions,
    features: Features,
    privileged: bool,
) -> Result<(), SetupError> {
    if privileged {
        return Ok(());
    }
    // Inside the target's user namespace slirp4netns may make the mount
    // namespace its sandbox needs.
    let sandbox = !opts.network.no_pivot_root && features.enable_sandbox && !opts.slirp_in_userns;
    if sandbox {
        return Err(SetupError::Unprivileged {
            what: "slirp4netns's sandbox (--enable-sandbox)",
            fix: "set network.no_pivot_root = true (SetupOptions::new does so for a process without it), or run slirp4netns in the target's user namespace (SetupOptions::with_sandbox_in_userns)",
        });
    }
    if opts.toggle_accept_dad && opts.network.enable_ipv6 {
        return Err(SetupError::Unprivileged {
            what: "toggling IPv6 accept_dad from outside the namespace",
            fix: "set SetupOptions::toggle_accept_dad = false (SetupOptions::new does so for a process without it; NsOptions::hold_accept_dad does it from inside)",
        });
    }
    #[cfg(feature = "in-process")]
    if opts.forwarder == ForwarderChoice::InProcess
        && opts.network.port_handler == PortHandler::Rootlesskit
    {
        return Err(SetupError::Unprivileged {
            what: "in-process port forwarding (ForwarderChoice::InProcess), which joins the network namespace from this process,",
            fix: "use ForwarderChoice::Rootlessport (the default: the rootlessport binary joins the namespace's user namespace first) or PortHandler::Slirp4netns",
        });
    }
    Ok(())
}

impl Plan {
    /// For a namespace whose own process holds accept_dad (an [`NsChild`](crate::NsChild)):
    /// no toggle from outside.
    pub(crate) fn accept_dad_from_inside(mut self) -> Self {
        self.opts.toggle_accept_dad = false;
        self
    }

    /// Whether starting makes a private API socket (port_handler=slirp4netns
    /// without one named).
    fn private_api_socket(&self) -> bool {
        self.opts.api_socket.is_none() && handler::needs_api_socket(self.opts.network.port_handler)
    }

    fn command(&self, target: Target, api_socket: Option<PathBuf>) -> SlirpCommand {
        let userns = target.userns_path().map(std::path::Path::to_path_buf);
        let mut invocation = Invocation::new(target);
        invocation.api_socket = api_socket;
        let mut command = SlirpCommand::new(
            &self.binary,
            self.opts.network.clone(),
            self.features,
            invocation,
        );
        if self.opts.slirp_in_userns {
            command.join_userns = userns;
        }
        command.new_mount_ns &= self.opts.sandbox_mount_ns;
        command.toggle_accept_dad &= self.opts.toggle_accept_dad;
        command.ready_timeout = self.opts.ready_timeout;
        command.parent_death_signal = self.opts.parent_death_signal;
        command
    }

    /// The slirp4netns argv (after the binary) that [`Plan::start`] would
    /// run for `target`, for showing; a private API socket is shown in the
    /// directory where it would be made.
    ///
    /// # Errors
    ///
    /// The argv cannot be built (e.g. an API socket path that is too long).
    pub fn args_for(&self, target: &Target) -> Result<Vec<OsString>, SetupError> {
        let api = self.opts.api_socket.clone().or_else(|| {
            self.private_api_socket()
                .then(|| runtime_dir().join("slirpnet-XXXXXX").join("api.sock"))
        });
        Ok(self.command(target.clone(), api).args()?)
    }

    /// Starts slirp4netns for `target`, waits until it is ready, and
    /// forwards the ports through exactly one handler. On failure whatever
    /// was started is stopped and removed.
    ///
    /// # Errors
    ///
    /// The target's namespace path cannot be opened or is no network
    /// namespace ([`SetupError::Netns`]), the private API socket's directory
    /// cannot be made, slirp4netns fails to start or become ready, or a
    /// forward cannot be made.
    pub fn start(self, target: Target) -> Result<Network, SetupError> {
        // A missing path, or one that is no network namespace, is told in
        // one line here rather than by slirp4netns's usage text.
        if let Target::Path { netns, .. } = &target {
            netns_util::Netns::open(netns)?;
        }
        let api_dir = if self.private_api_socket() {
            Some(crate::dirs::private_dir("slirpnet-").map_err(SetupError::ApiDir)?)
        } else {
            None
        };
        let api_socket = match &api_dir {
            Some(dir) => Some(dir.path().join("api.sock")),
            None => self.opts.api_socket.clone(),
        };
        let command = self.command(target.clone(), api_socket.clone());
        let slirp = Slirp::start(&command)?;
        let mut info = self.info;
        info.pid = slirp.pid();
        info.api_socket = api_socket;
        let ports = handler::open(
            self.opts.network.port_handler,
            info.api_socket.as_deref(),
            &target,
            info.guest,
            forwarder_settings(&self.opts, info.forwarder.clone()),
            info.pid,
        );
        let mut net = Network::new(
            info,
            ports,
            slirp,
            api_dir,
            target,
            self.opts.publish_auto.clone(),
        );
        net.start_ports(&self.opts.ports)?;
        Ok(net)
    }
}

/// Plans with `opts`, then starts for `target`: [`plan`] and
/// [`Plan::start`] in one call.
///
/// # Errors
///
/// Whatever [`plan`] or [`Plan::start`] reports.
pub fn setup(target: Target, opts: &SetupOptions) -> Result<Network, SetupError> {
    plan(opts)?.start(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slirp_opts::NetworkOptions;

    fn options() -> SetupOptions {
        let network =
            NetworkOptions::parse(&[] as &[&str], false, &[] as &[&str], |_| false).unwrap();
        SetupOptions::new(network)
    }

    #[test]
    fn what_needs_privilege_is_refused_naming_the_setting() {
        let all = Features::all();
        let mut opts = options();
        opts.network.no_pivot_root = false;
        let e = check_privilege(&opts, all, false).unwrap_err().to_string();
        assert!(
            e.contains("sandbox") && e.contains("no_pivot_root = true"),
            "{e}"
        );
        assert!(check_privilege(&opts, all, true).is_ok());

        opts.network.no_pivot_root = true;
        opts.toggle_accept_dad = true;
        let e = check_privilege(&opts, all, false).unwrap_err().to_string();
        assert!(e.contains("toggle_accept_dad = false"), "{e}");
        opts.toggle_accept_dad = false;
        assert!(check_privilege(&opts, all, false).is_ok());
    }

    #[test]
    fn new_options_fit_this_process() {
        let opts = options();
        let privileged = privileged();
        assert_eq!(opts.toggle_accept_dad, privileged);
        assert_eq!(opts.sandbox_mount_ns, privileged);
        assert_eq!(opts.network.no_pivot_root, !privileged);
        // The defaults pass their own check, whoever runs them.
        assert!(check_privilege(&opts, Features::all(), privileged).is_ok());
    }

    #[cfg(feature = "in-process")]
    #[test]
    fn in_process_forwarding_is_refused_without_privilege() {
        let mut opts = options();
        opts.network.no_pivot_root = true;
        opts.toggle_accept_dad = false;
        opts.forwarder = ForwarderChoice::InProcess;
        let e = check_privilege(&opts, Features::all(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ForwarderChoice::Rootlessport"), "{e}");
    }
}
