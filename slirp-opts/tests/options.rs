//! Network options, feature detection and argv: every contract text.

use slirp_opts::{
    build_args, ArgvError, Features, Invocation, NetworkOptions, PortHandler, Target,
};

fn parse(extra: &[&str]) -> Result<NetworkOptions, String> {
    NetworkOptions::parse(&[] as &[&str], false, extra, |name| name == "eth0")
        .map_err(|e| e.to_string())
}

#[test]
fn defaults_are_podmans() {
    let o = parse(&[]).unwrap();
    assert_eq!(o.cidr, None);
    assert_eq!(o.port_handler, PortHandler::Rootlesskit);
    assert!(!o.allow_host_loopback);
    assert!(o.enable_ipv6);
    assert_eq!(o.mtu, 65520);
    assert_eq!((o.outbound_addr, o.outbound_addr6), (None, None));
    assert!(!o.no_pivot_root);
}

#[test]
fn each_option_is_applied() {
    type Check = fn(&NetworkOptions) -> bool;
    let cases: &[(&str, Check)] = &[
        ("cidr=10.5.0.0/16", |o| {
            o.cidr.unwrap().to_string() == "10.5.0.0/16"
        }),
        ("cidr=10.5.1.7/16", |o| {
            o.cidr.unwrap().to_string() == "10.5.0.0/16"
        }),
        ("port_handler=slirp4netns", |o| {
            o.port_handler == PortHandler::Slirp4netns
        }),
        ("port_handler=rootlesskit", |o| {
            o.port_handler == PortHandler::Rootlesskit
        }),
        ("allow_host_loopback=true", |o| o.allow_host_loopback),
        ("allow_host_loopback=false", |o| !o.allow_host_loopback),
        ("enable_ipv6=false", |o| !o.enable_ipv6),
        ("enable_ipv6=true", |o| o.enable_ipv6),
        ("outbound_addr=192.0.2.1", |o| {
            o.outbound_addr.as_deref() == Some("192.0.2.1")
        }),
        ("outbound_addr=eth0", |o| {
            o.outbound_addr.as_deref() == Some("eth0")
        }),
        ("outbound_addr6=2001:db8::1", |o| {
            o.outbound_addr6.as_deref() == Some("2001:db8::1")
        }),
        ("outbound_addr6=eth0", |o| {
            o.outbound_addr6.as_deref() == Some("eth0")
        }),
        ("mtu=68", |o| o.mtu == 68),
        ("mtu=1500", |o| o.mtu == 1500),
        ("mtu=65521", |o| o.mtu == 65521),
    ];
    for (opt, check) in cases {
        let o = parse(&[opt]).unwrap_or_else(|e| panic!("{opt}: {e}"));
        assert!(check(&o), "{opt} was not applied: {o:?}");
    }
}

#[test]
fn every_error_text() {
    let cases = [
        ("cidr=10.0.2.0", r#"invalid cidr "10.0.2.0""#),
        ("cidr=fd00::/64", r#"invalid cidr "fd00::/64""#),
        ("cidr=10.0.2.0/33", r#"invalid cidr "10.0.2.0/33""#),
        ("cidr=", r#"invalid cidr """#),
        (
            "port_handler=pasta",
            r#"unknown port_handler for slirp4netns: "pasta""#,
        ),
        (
            "allow_host_loopback=yes",
            r#"invalid value of allow_host_loopback for slirp4netns: "yes""#,
        ),
        (
            "allow_host_loopback=True",
            r#"invalid value of allow_host_loopback for slirp4netns: "True""#,
        ),
        (
            "enable_ipv6=1",
            r#"invalid value of enable_ipv6 for slirp4netns: "1""#,
        ),
        (
            "outbound_addr=2001:db8::1",
            r#"invalid outbound_addr "2001:db8::1""#,
        ),
        (
            "outbound_addr=nosuchif",
            r#"invalid outbound_addr "nosuchif""#,
        ),
        ("outbound_addr=", r#"invalid outbound_addr """#),
        (
            "outbound_addr6=192.0.2.1",
            r#"invalid outbound_addr6: "192.0.2.1""#,
        ),
        (
            "outbound_addr6=::ffff:192.0.2.1",
            r#"invalid outbound_addr6: "::ffff:192.0.2.1""#,
        ),
        (
            "outbound_addr6=nosuchif",
            r#"invalid outbound_addr6: "nosuchif""#,
        ),
        ("mtu=67", r#"invalid mtu "67""#),
        ("mtu=65522", r#"invalid mtu "65522""#),
        ("mtu=-1", r#"invalid mtu "-1""#),
        ("mtu=abc", r#"invalid mtu "abc""#),
        ("mtu", r#"unknown option for slirp4netns: "mtu""#),
        ("foo=bar", r#"unknown option for slirp4netns: "foo=bar""#),
        ("", r#"unknown option for slirp4netns: """#),
        ("MTU=1500", r#"unknown option for slirp4netns: "MTU=1500""#),
    ];
    for (opt, want) in cases {
        assert_eq!(parse(&[opt]).unwrap_err(), want, "option {opt:?}");
    }
}

#[test]
fn value_splits_at_first_equals() {
    let err = parse(&["port_handler=slirp4netns=x"]).unwrap_err();
    assert_eq!(
        err,
        r#"unknown port_handler for slirp4netns: "slirp4netns=x""#
    );
}

#[test]
fn interface_check_is_asked_only_for_names() {
    let asked = std::cell::RefCell::new(Vec::new());
    let check = |name: &str| {
        asked.borrow_mut().push(name.to_owned());
        true
    };
    let opts = [
        "outbound_addr=10.1.1.1",
        "outbound_addr=wlan0",
        "outbound_addr=a/b",
    ];
    let err = NetworkOptions::parse(&[] as &[&str], false, &opts, check).unwrap_err();
    assert_eq!(err.to_string(), r#"invalid outbound_addr "a/b""#);
    assert_eq!(*asked.borrow(), ["wlan0"]);
}

#[test]
fn extra_options_override_engine_options() {
    let o = NetworkOptions::parse(
        &["mtu=1500", "enable_ipv6=false"],
        true,
        &["mtu=9000"],
        |_| false,
    )
    .unwrap();
    assert_eq!(o.mtu, 9000);
    assert!(!o.enable_ipv6);
    assert!(o.no_pivot_root);
    // An engine option error is reported even when an extra option would fix it.
    let err = NetworkOptions::parse(&["mtu=1"], false, &["mtu=9000"], |_| false).unwrap_err();
    assert_eq!(err.to_string(), r#"invalid mtu "1""#);
}

const HELP_1_2_0: &str = include_str!("data/help-1.2.0.txt");

#[test]
fn features_from_real_help_texts() {
    assert_eq!(Features::from_help(HELP_1_2_0), Features::all());
    let old = "Usage: slirp4netns [OPTION]... PID TAPNAME\n-c, --configure\n-e, --exit-fd=FD\n-r, --ready-fd=FD\n-m, --mtu=MTU\n-6, --enable-ipv6\n";
    let f = Features::from_help(old);
    assert!(f.mtu && f.ipv6);
    assert!(
        !f.cidr
            && !f.disable_host_loopback
            && !f.enable_sandbox
            && !f.enable_seccomp
            && !f.outbound_addr
    );
    assert_eq!(Features::from_help(""), Features::default());
}

fn args(
    opts: &NetworkOptions,
    features: &Features,
    inv: &Invocation,
) -> Result<Vec<String>, ArgvError> {
    build_args(opts, features, inv)
        .map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
}

#[test]
fn argv_for_a_path_target_with_everything() {
    let opts = parse(&[
        "cidr=10.9.0.0/24",
        "outbound_addr=eth0",
        "outbound_addr6=2001:db8::1",
        "allow_host_loopback=true",
        "mtu=1500",
    ])
    .unwrap();
    let mut inv = Invocation::new(Target::Path {
        netns: "/run/netns/a".into(),
        userns: Some("/proc/9/ns/user".into()),
    });
    inv.api_socket = Some("/run/x/api.sock".into());
    assert_eq!(
        args(&opts, &Features::all(), &inv).unwrap(),
        [
            "--mtu=1500",
            "--enable-sandbox",
            "--enable-seccomp",
            "--cidr=10.9.0.0/24",
            "--enable-ipv6",
            "--outbound-addr=eth0",
            "--outbound-addr6=2001:db8::1",
            "-c",
            "-r",
            "3",
            "-e",
            "4",
            "--api-socket",
            "/run/x/api.sock",
            "--netns-type=path",
            "--userns-path=/proc/9/ns/user",
            "/run/netns/a",
            "tap0",
        ]
    );
}

#[test]
fn argv_leaves_out_optional_flags_the_binary_lacks() {
    let opts = with(NetworkOptions::default(), |o| {
        o.no_pivot_root = true;
        o.enable_ipv6 = false;
    });
    let mut inv = Invocation::new(Target::Pid(7));
    inv.exit_fd = None;
    assert_eq!(
        args(&opts, &Features::default(), &inv).unwrap(),
        ["-c", "-r", "3", "7", "tap0"]
    );
    // no_pivot_root drops the sandbox even when supported.
    let got = args(&opts, &Features::all(), &inv).unwrap();
    assert!(!got.iter().any(|a| a == "--enable-sandbox"), "{got:?}");
    assert!(got.iter().any(|a| a == "--enable-seccomp"), "{got:?}");
}

#[test]
fn argv_errors_for_unsupported_features() {
    let inv = Invocation::new(Target::Pid(1));
    let no_v6 = with(NetworkOptions::default(), |o| o.enable_ipv6 = false);
    let without = |change: fn(&mut Features)| {
        let mut f = Features::all();
        change(&mut f);
        f
    };
    let cases: Vec<(NetworkOptions, Features, &str)> = vec![
        (
            with(no_v6.clone(), |o| {
                o.cidr = Some("10.1.0.0/24".parse().unwrap())
            }),
            without(|f| f.cidr = false),
            "cidr not supported",
        ),
        (
            NetworkOptions::default(),
            without(|f| f.ipv6 = false),
            "enable_ipv6 not supported",
        ),
        (
            with(no_v6.clone(), |o| o.outbound_addr = Some("eth0".into())),
            without(|f| f.outbound_addr = false),
            "outbound_addr not supported",
        ),
        (
            with(NetworkOptions::default(), |o| {
                o.outbound_addr6 = Some("eth0".into())
            }),
            without(|f| f.outbound_addr = false),
            "outbound_addr6 not supported",
        ),
        (
            with(no_v6.clone(), |o| o.outbound_addr6 = Some("eth0".into())),
            Features::all(),
            "enable_ipv6=true is required for outbound_addr6",
        ),
        (
            NetworkOptions::new().with_port_handler(PortHandler::Slirp4netns),
            Features::all(),
            "port_handler=slirp4netns needs an API socket: set Invocation::api_socket",
        ),
    ];
    for (opts, features, want) in cases {
        assert_eq!(args(&opts, &features, &inv).unwrap_err().to_string(), want);
    }
}

#[test]
fn argv_refuses_what_slirp4netns_would() {
    let long = format!("/tmp/{}", "a".repeat(103));
    let mut inv = Invocation::new(Target::Pid(1));
    inv.api_socket = Some(long.clone().into());
    let err = args(&NetworkOptions::default(), &Features::all(), &inv).unwrap_err();
    assert_eq!(
        err,
        ArgvError::ApiSocketPathTooLong {
            path: long.into(),
            len: 108
        }
    );
    assert!(err.to_string().contains("at most 107"), "{err}");
    // 107 bytes is fine.
    let ok = format!("/tmp/{}", "a".repeat(102));
    let mut inv = Invocation::new(Target::Pid(1));
    inv.api_socket = Some(ok.into());
    assert!(args(&NetworkOptions::default(), &Features::all(), &inv).is_ok());

    for tap in ["", "a-very-long-tapname"] {
        let mut inv = Invocation::new(Target::Pid(1));
        inv.tap = tap.into();
        let err = args(&NetworkOptions::default(), &Features::all(), &inv).unwrap_err();
        assert_eq!(err, ArgvError::InvalidTapName(tap.into()));
    }
}

#[test]
fn podmans_comma_separated_option_string_in_one_call() {
    let o = NetworkOptions::parse_list(
        "port_handler=slirp4netns,enable_ipv6=false,mtu=1500",
        |_| false,
    )
    .unwrap();
    assert_eq!(o.port_handler, PortHandler::Slirp4netns);
    assert!(!o.enable_ipv6);
    assert_eq!(o.mtu, 1500);
    assert!(!o.no_pivot_root);
    // Nothing after "slirp4netns:" is no option at all.
    assert_eq!(
        NetworkOptions::parse_list("", |_| false).unwrap(),
        NetworkOptions::default()
    );
    // Later items override earlier ones.
    assert_eq!(
        NetworkOptions::parse_list("mtu=1500,mtu=9000", |_| false)
            .unwrap()
            .mtu,
        9000
    );
    // Interface names are still asked about.
    let o = NetworkOptions::parse_list("outbound_addr=eth0", |n| n == "eth0").unwrap();
    assert_eq!(o.outbound_addr.as_deref(), Some("eth0"));
    // Every comma splits, as in podman: an empty item and the text after a
    // comma inside a value are options of their own.
    for (list, want) in [
        ("mtu=1500,", r#"unknown option for slirp4netns: """#),
        (",mtu=1500", r#"unknown option for slirp4netns: """#),
        (
            "mtu=1500,,mtu=9000",
            r#"unknown option for slirp4netns: """#,
        ),
        (
            "outbound_addr=eth0,x",
            r#"unknown option for slirp4netns: "x""#,
        ),
        (
            "mtu=1500,foo=bar,mtu=0",
            r#"unknown option for slirp4netns: "foo=bar""#,
        ),
        ("cidr=10.0.2.0/24,mtu=1", r#"invalid mtu "1""#),
    ] {
        let err = NetworkOptions::parse_list(list, |n| n == "eth0").unwrap_err();
        assert_eq!(err.to_string(), want, "{list:?}");
    }
}

#[test]
fn per_container_list_goes_over_the_engine_options() {
    let engine = ["mtu=1500", "enable_ipv6=false", "allow_host_loopback=true"];
    let mut o = NetworkOptions::parse(&engine, true, &[] as &[&str], |_| false).unwrap();
    o.apply_list("mtu=9000,cidr=10.5.0.0/24", |_| false)
        .unwrap();
    let same =
        NetworkOptions::parse(&engine, true, &["mtu=9000", "cidr=10.5.0.0/24"], |_| false).unwrap();
    assert_eq!(o, same);
    assert_eq!(
        (o.mtu, o.enable_ipv6, o.allow_host_loopback),
        (9000, false, true)
    );
    assert!(o.no_pivot_root);
    // Options before a refused one stay applied.
    let err = o.apply_list("mtu=1280,mtu=9", |_| false).unwrap_err();
    assert_eq!(err, slirp_opts::OptionError::InvalidMtu("9".into()));
    assert_eq!(o.mtu, 1280);
}

/// `opts` changed by `change` (the struct is non-exhaustive).
fn with(mut opts: NetworkOptions, change: impl FnOnce(&mut NetworkOptions)) -> NetworkOptions {
    change(&mut opts);
    opts
}

#[test]
fn sandbox_and_seccomp_are_asked_for_whenever_the_binary_has_them_rootless_too() {
    let rootless = Invocation::new(Target::Path {
        netns: "/proc/9/ns/net".into(),
        userns: Some("/proc/9/ns/user".into()),
    });
    let root = Invocation::new(Target::Pid(9));
    // (sandbox supported, seccomp supported, no_pivot_root) -> flags
    let table: [(bool, bool, bool, &[&str]); 5] = [
        (true, true, false, &["--enable-sandbox", "--enable-seccomp"]),
        (true, false, false, &["--enable-sandbox"]),
        (false, true, false, &["--enable-seccomp"]),
        (false, false, false, &[]),
        // The engine's no_pivot_root: no sandbox (it pivots), seccomp still.
        (true, true, true, &["--enable-seccomp"]),
    ];
    for (sandbox, seccomp, no_pivot_root, want) in table {
        let mut features = Features::all();
        features.enable_sandbox = sandbox;
        features.enable_seccomp = seccomp;
        let opts = with(NetworkOptions::default(), |o| {
            o.no_pivot_root = no_pivot_root
        });
        for inv in [&rootless, &root] {
            let got: Vec<String> = args(&opts, &features, inv)
                .unwrap()
                .into_iter()
                .filter(|a| a == "--enable-sandbox" || a == "--enable-seccomp")
                .collect();
            assert_eq!(got, want, "{sandbox} {seccomp} {no_pivot_root} {inv:?}");
        }
    }
}
