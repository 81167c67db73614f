//! rootlessport's configuration as podman sends it: decoding as Go does,
//! validation, and the child IP. No privilege needed.

use rootlessport::{parse_child_ip, Config, ConfigError};

const NETNS: &str = "/run/netns/x";

fn doc(extra: &str) -> String {
    format!(
        r#"{{"Mappings":[{{"host_ip":"","container_port":80,"host_port":8080,"range":2,"protocol":"tcp,udp"}}],"NetNSPath":"{NETNS}","ExitFD":3,"ReadyFD":4,"ChildIP":"10.0.2.100"{extra}}}"#
    )
}

#[test]
fn a_podman_document_validates_into_forwards() {
    let valid = Config::from_json(&doc("")).unwrap().validate().unwrap();
    assert_eq!(valid.forwards.len(), 4);
    assert_eq!(valid.netns_path.to_str(), Some(NETNS));
    let fds = valid.helper_fds.unwrap();
    assert_eq!((fds.exit_fd, fds.ready_fd), (3, 4));
    assert!(valid.reload.is_none());
    let with_reload = doc(r#","TmpDir":"/tmp/p","ContainerID":"abc","RootlessCNI":true"#);
    let valid = Config::from_json(&with_reload).unwrap().validate().unwrap();
    let reload = valid.reload.unwrap();
    assert_eq!(
        (reload.tmp_dir.to_str(), reload.container_id.as_str()),
        (Some("/tmp/p"), "abc")
    );
}

#[test]
fn go_decoding_rules() {
    // Case-insensitive keys; the last in the document wins; null is a no-op.
    let c = Config::from_json(&doc(r#","exitfd":7,"EXITFD":5,"readyFD":null"#)).unwrap();
    assert_eq!((c.exit_fd, c.ready_fd), (5, 4));
    // A struct given as an array, at the top or inside.
    for bad in [
        r#"[[],"x"]"#,
        r#"{"Mappings":[["",80,8080,1,"tcp"]]}"#,
        r#"{"Mappings":[[]]}"#,
        r#"{"Mappings":{"host_port":1}}"#,
    ] {
        let err = Config::from_json(bad).unwrap_err();
        assert!(matches!(err, ConfigError::Decode(_)), "{bad}: {err}");
    }
    // Wrong types and out-of-range numbers.
    for bad in [
        r#"{"ExitFD":"3"}"#,
        r#"{"ExitFD":3.5}"#,
        r#"{"ExitFD":1e30}"#,
        r#"{"RootlessCNI":"true"}"#,
        r#"{"Mappings":[{"host_port":70000}]}"#,
        r#"{"Mappings":[{"range":-1}]}"#,
    ] {
        assert!(Config::from_json(bad).is_err(), "{bad}");
    }
}

#[test]
fn each_invalid_field_is_named() {
    let check = |extra: &str, without: &str, want: &str| {
        let text = doc(extra).replace(without, "");
        let err = Config::from_json(&text)
            .and_then(Config::validate)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text}: {err:?} lacks {want:?}");
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            &format!(r#""NetNSPath":"{NETNS}","#),
            "missing NetNSPath",
        ),
        ("", r#""ExitFD":3,"#, "missing ExitFD"),
        ("", r#""ReadyFD":4,"#, "missing ReadyFD"),
        (r#","ReadyFD":3"#, "", "ExitFD and ReadyFD are both 3"),
        (r#","ExitFD":2"#, "", "ExitFD 2 is not usable"),
        (r#","ReadyFD":-4"#, "", "ReadyFD -4 is not usable"),
        (r#","ChildIP":"""#, "", "missing ChildIP"),
        (r#","ChildIP":"127.0.0.1""#, "", "CVE-2021-20199"),
        (r#","ChildIP":"::ffff:127.0.0.9""#, "", "CVE-2021-20199"),
        (r#","ChildIP":"0.0.0.0""#, "", "invalid ChildIP"),
        (r#","ChildIP":"not-an-ip""#, "", "invalid ChildIP"),
        (
            r#","RootlessCNI":true"#,
            "",
            "RootlessCNI needs TmpDir and ContainerID",
        ),
        (
            r#","RootlessCNI":true,"TmpDir":"/t","ContainerID":"../x""#,
            "",
            "invalid ContainerID",
        ),
        (
            r#","Mappings":[{"container_port":80,"host_port":8080,"range":1,"protocol":"sctp"}]"#,
            "",
            "sctp is not supported",
        ),
        (
            r#","Mappings":[{"container_port":0,"host_port":8080,"range":1}]"#,
            "",
            "container port is 0",
        ),
    ];
    for (extra, without, want) in cases {
        check(extra, without, want);
    }
}

#[test]
fn child_ips() {
    for (text, want) in [
        ("10.0.2.100", Some("10.0.2.100")),
        ("fd00::100", Some("fd00::100")),
        ("::ffff:10.88.0.5", Some("10.88.0.5")),
        ("127.0.0.1", None),
        ("::1", None),
        ("224.0.0.1", None),
        ("::", None),
        ("10.0.2.100/24", None),
        ("", None),
    ] {
        let got = parse_child_ip(text).ok().map(|ip| ip.to_string());
        assert_eq!(got.as_deref(), want, "{text}");
    }
}

/// The in-process configuration: typed, without podman's fd numbers, and
/// checked as podman's document is.
#[test]
fn an_in_process_config_validates_as_the_document_does() {
    use std::ffi::OsStr;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use rootlessport::slirp_opts::{Forward, PortMapping, Protocol};
    use rootlessport::ForwarderConfig;

    let child: IpAddr = "10.0.2.100".parse().unwrap();
    let mapping = PortMapping {
        host_ip: String::new(),
        container_port: 80,
        host_port: 8080,
        range: 2,
        protocol: "tcp,udp".into(),
    };
    // The same forwards as podman's document, and no fds.
    let valid = ForwarderConfig::new(NETNS, child)
        .mapping(mapping.clone())
        .validate()
        .unwrap();
    let from_doc = Config::from_json(&doc("")).unwrap().validate().unwrap();
    assert_eq!(valid.forwards, from_doc.forwards);
    assert_eq!(
        (&valid.netns_path, valid.child_ip),
        (&from_doc.netns_path, from_doc.child_ip)
    );
    assert_eq!(valid.helper_fds, None);
    assert!(valid.reload.is_none());

    // One typed forward is one forward, host address and all.
    let one = Forward {
        proto: Protocol::Udp,
        host_ip: Some(Ipv6Addr::LOCALHOST.into()),
        host_port: 5353,
        container_port: 53,
    };
    let all = Forward {
        proto: Protocol::Tcp,
        host_ip: None,
        host_port: 9000,
        container_port: 90,
    };
    let valid = ForwarderConfig::new(NETNS, child)
        .forward(one)
        .forward(all)
        .validate()
        .unwrap();
    assert_eq!(valid.forwards, vec![one, all]);

    // Paths are paths: not UTF-8 is fine.
    let odd = Path::new(OsStr::from_bytes(b"/run/netns/\xff"));
    let valid = ForwarderConfig::new(odd, child)
        .reload_socket(odd, "abc")
        .validate()
        .unwrap();
    assert_eq!(valid.netns_path, odd);
    let reload = valid.reload.unwrap();
    assert_eq!(
        (reload.tmp_dir.as_path(), reload.container_id.as_str()),
        (odd, "abc")
    );

    // Each problem, named.
    let check = |config: ForwarderConfig, want: &str| {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    };
    check(ForwarderConfig::new("", child), "missing NetNSPath");
    for loopback in [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "::ffff:127.0.0.1".parse().unwrap(),
    ] {
        check(ForwarderConfig::new(NETNS, loopback), "CVE-2021-20199");
    }
    for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1"] {
        let ip: IpAddr = bad.parse().unwrap();
        check(
            ForwarderConfig::new(NETNS, ip),
            &format!("invalid ChildIP {bad:?}"),
        );
    }
    // An IPv4-mapped child IP is its IPv4 address.
    let mapped = ForwarderConfig::new(NETNS, "::ffff:10.88.0.5".parse().unwrap());
    assert_eq!(mapped.validate().unwrap().child_ip.to_string(), "10.88.0.5");
    for id in ["", "..", "a/b"] {
        check(
            ForwarderConfig::new(NETNS, child).reload_socket("/t", id),
            "invalid ContainerID",
        );
    }
    check(
        ForwarderConfig::new(NETNS, child).forward(Forward {
            container_port: 0,
            ..all
        }),
        "container port is 0",
    );
    check(
        ForwarderConfig::new(NETNS, child)
            .forward(all)
            .mapping(PortMapping {
                host_port: 9000,
                range: 1,
                protocol: "tcp".into(),
                ..mapping
            }),
        "9000",
    );
}
