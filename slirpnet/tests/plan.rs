//! Planning with a stand-in slirp4netns: no privilege, nothing started.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slirpnet::{
    plan, BinaryError, ForwarderChoice, ForwarderError, ForwarderInfo, NetworkOptions, SetupError,
    SetupOptions, Target,
};

/// The flags slirp4netns 1.2.0 lists in `--help`, one a line as it does.
const HELP: &str = "Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]
-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirp4netns
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default=1500, max=65521)
-6, --enable-ipv6        enable IPv6 (experimental)
-a, --api-socket=PATH    specify API socket path
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
--userns-path=PATH       specify user namespace path
--enable-sandbox         create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)
--enable-seccomp         enable seccomp to limit syscalls (experimental)
--outbound-addr=IPv4     sets outbound ipv4 address to bound to (experimental)
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (experimental)
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect (experimental)
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns|bess], default=netns)
-h, --help               show this help and exit
-v, --version            show version and exit
";

/// A directory with a `slirp4netns` that answers `--help` after running
/// `before_help`, and an executable `rootlessport` stand-in.
fn fakes(before_help: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let slirp = dir.path().join("slirp4netns");
    std::fs::write(
        &slirp,
        format!("#!/bin/sh\n{before_help}\ncat <<'HELP'\n{HELP}HELP\n"),
    )
    .unwrap();
    let forwarder = dir.path().join("rootlessport");
    std::fs::write(&forwarder, "#!/bin/sh\nexit 1\n").unwrap();
    for p in [&slirp, &forwarder] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, slirp, forwarder)
}

fn options(slirp: &Path, forwarder: &Path, network: &[&str], ports: &[&str]) -> SetupOptions {
    let network = NetworkOptions::parse(&[] as &[&str], false, network, |_| false).unwrap();
    let mut opts = SetupOptions::new(network);
    opts.binary = Some(slirp.to_owned());
    opts.forwarder = ForwarderChoice::Binary(forwarder.to_owned());
    opts.ports = ports
        .iter()
        .flat_map(|p| slirpnet::parse_forwards(p).unwrap())
        .collect();
    opts
}

#[test]
fn a_plan_has_the_addresses_the_forwards_and_the_forwarder() {
    let (_dir, slirp, forwarder) = fakes("");
    let opts = options(
        &slirp,
        &forwarder,
        &["cidr=10.5.0.0/24", "mtu=1500"],
        &["127.0.0.1:8080-8081:80-81/tcp,udp", "[::1]:9000:90"],
    );
    let planned = plan(&opts).unwrap();
    let info = &planned.info;
    assert_eq!(info.pid, 0);
    assert_eq!(info.subnet, "10.5.0.0/24");
    assert_eq!(
        (
            info.guest.to_string(),
            info.gateway.to_string(),
            info.dns.to_string()
        ),
        ("10.5.0.100".into(), "10.5.0.2".into(), "10.5.0.3".into())
    );
    assert_eq!(info.mtu, 1500);
    assert_eq!(info.forwards.len(), 5);
    assert_eq!(
        info.forwards[4].forward.host_ip,
        Some("::1".parse().unwrap())
    );
    assert_eq!(
        info.forwarder,
        Some(ForwarderInfo::Binary {
            path: forwarder.clone(),
            pid: None
        })
    );
    // The argv is built for the namespace it will be started for.
    let target = Target::of_process(4242, true);
    let args: Vec<String> = planned
        .args_for(&target)
        .unwrap()
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert!(args.contains(&"--cidr=10.5.0.0/24".to_owned()), "{args:?}");
    assert!(
        args.contains(&"--userns-path=/proc/4242/ns/user".to_owned()),
        "{args:?}"
    );
    assert_eq!(args[args.len() - 2..], ["/proc/4242/ns/net", "tap0"]);
}

#[test]
fn slirp4netns_forwards_are_ipv4_only_and_need_no_forwarder() {
    let (_dir, slirp, forwarder) = fakes("");
    let opts = options(
        &slirp,
        &forwarder,
        &["port_handler=slirp4netns"],
        &["[::1]:9000:90"],
    );
    let err = plan(&opts).unwrap_err();
    assert!(matches!(err, SetupError::Ipv6HostAddress { .. }), "{err}");
    let opts = options(
        &slirp,
        &forwarder,
        &["port_handler=slirp4netns"],
        &["8080:80/udp"],
    );
    let planned = plan(&opts).unwrap();
    assert_eq!(planned.info.forwarder, None);
    assert_eq!(
        planned.info.warnings.len(),
        1,
        "{:?}",
        planned.info.warnings
    );
}

#[test]
fn a_missing_or_hung_binary_is_named() {
    let (dir, slirp, forwarder) = fakes("sleep 30");
    let mut opts = options(&slirp, &forwarder, &[], &[]);
    opts.help_timeout = Duration::from_millis(200);
    let err = plan(&opts).unwrap_err();
    assert!(
        matches!(err, SetupError::Binary(BinaryError::Help(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains(&*slirp.to_string_lossy()), "{err}");
    let opts = options(&dir.path().join("nope"), &forwarder, &[], &[]);
    assert!(matches!(
        plan(&opts).unwrap_err(),
        SetupError::Binary(BinaryError::NotExecutable { .. })
    ));
    let (_d2, slirp, _) = fakes("");
    let opts = options(&slirp, &dir.path().join("no-forwarder"), &[], &["8080:80"]);
    assert!(matches!(
        plan(&opts).unwrap_err(),
        SetupError::Forwarder(ForwarderError::NotExecutable(_))
    ));
}
