//! Port mappings, `-p` specs and addresses.

use std::net::{IpAddr, Ipv4Addr};

use slirp_opts::{
    expand_all, from_go_json, parse_port_spec, AddrError, Forward, PortMapping, PortProblem,
    PortSide, Protocol, SpecProblem, Subnet, IPV6_DNS, IPV6_GATEWAY, IPV6_GUEST, IPV6_SUBNET,
};

fn mapping(
    host_ip: &str,
    host_port: u16,
    container_port: u16,
    range: u16,
    protocol: &str,
) -> PortMapping {
    PortMapping {
        host_ip: host_ip.into(),
        container_port,
        host_port,
        range,
        protocol: protocol.into(),
    }
}

#[test]
fn podman_json_round_trips() {
    let text = r#"{"host_ip":"127.0.0.1","container_port":80,"host_port":8080,"range":3,"protocol":"tcp,udp"}"#;
    let m: PortMapping = serde_json::from_str(text).unwrap();
    assert_eq!(m, mapping("127.0.0.1", 8080, 80, 3, "tcp,udp"));
    assert_eq!(serde_json::to_string(&m).unwrap(), text);
}

#[test]
fn go_json_is_case_insensitive_and_lenient() {
    let ms: Vec<PortMapping> = from_go_json(
        r#"[{"Host_IP":"","Container_Port":80,"HOST_PORT":8080,"Range":1,"Protocol":"udp","Extra":true},
            {"container_port":81,"host_port":8081,"range":null,"protocol":null}]"#,
    )
    .unwrap();
    assert_eq!(
        ms,
        [
            mapping("", 8080, 80, 1, "udp"),
            mapping("", 8081, 81, 0, "")
        ]
    );
    // Out-of-range numbers are errors, as in Go.
    assert!(from_go_json::<PortMapping>(r#"{"host_port":70000}"#).is_err());
    assert!(from_go_json::<PortMapping>(r#"{"host_port":"80"}"#).is_err());
}

#[test]
fn expansion_is_one_forward_per_protocol_per_port() {
    let f = mapping("::1", 9000, 90, 2, "udp,tcp").expand().unwrap();
    let ip = Some("::1".parse::<IpAddr>().unwrap());
    let want = [
        (Protocol::Udp, 9000, 90),
        (Protocol::Tcp, 9000, 90),
        (Protocol::Udp, 9001, 91),
        (Protocol::Tcp, 9001, 91),
    ];
    let got: Vec<_> = f
        .iter()
        .map(|f| (f.proto, f.host_port, f.container_port))
        .collect();
    assert_eq!(got, want);
    assert!(f.iter().all(|f| f.host_ip == ip));
    // Empty protocol is tcp, empty host IP is all addresses, range 0 is nothing.
    let f = mapping("", 80, 80, 1, "").expand().unwrap();
    assert_eq!(
        f,
        [Forward {
            proto: Protocol::Tcp,
            host_ip: None,
            host_port: 80,
            container_port: 80
        }]
    );
    assert_eq!(mapping("", 80, 80, 0, "tcp").expand().unwrap(), []);
    // The very last port is fine.
    assert_eq!(
        mapping("", 65535, 65535, 1, "tcp").expand().unwrap().len(),
        1
    );
}

#[test]
fn every_mapping_error() {
    let cases = [
        (mapping("", 8080, 0, 1, "tcp"), PortProblem::ContainerPortZero, "port mapping 8080:0/tcp: container port is 0"),
        (mapping("", 0, 80, 1, "tcp"), PortProblem::HostPortZero, "port mapping 80/tcp: host port is 0 (no host port assigned)"),
        (
            mapping("", 65530, 80, 10, "tcp"),
            PortProblem::RangePastEnd { side: PortSide::Host, start: 65530, end: 65539 },
            "port mapping 65530-65539:80-89/tcp: host ports 65530-65539 run past 65535",
        ),
        (
            mapping("", 80, 65535, 2, "tcp"),
            PortProblem::RangePastEnd { side: PortSide::Container, start: 65535, end: 65536 },
            "port mapping 80-81:65535-65536/tcp: container ports 65535-65536 run past 65535",
        ),
        (
            mapping("", 80, 80, 1, "icmp"),
            PortProblem::UnknownProtocol("icmp".into()),
            r#"port mapping 80:80/icmp: unknown protocol "icmp" (expected tcp or udp)"#,
        ),
        (
            mapping("", 80, 80, 1, "tcp,"),
            PortProblem::UnknownProtocol("".into()),
            r#"port mapping 80:80/tcp,: unknown protocol "" (expected tcp or udp)"#,
        ),
        (
            mapping("", 80, 80, 1, "TCP"),
            PortProblem::UnknownProtocol("TCP".into()),
            r#"port mapping 80:80/TCP: unknown protocol "TCP" (expected tcp or udp)"#,
        ),
        (
            mapping("", 80, 80, 1, "tcp,udp,tcp"),
            PortProblem::RepeatedProtocol(Protocol::Tcp),
            r#"port mapping 80:80/tcp,udp,tcp: protocol "tcp" is named twice"#,
        ),
        (
            mapping("", 80, 80, 1, "tcp,sctp"),
            PortProblem::SctpUnsupported,
            "port mapping 80:80/tcp,sctp: sctp is not supported: neither slirp4netns nor rootlessport can forward it",
        ),
        (
            mapping("localhost", 80, 80, 1, "tcp"),
            PortProblem::InvalidHostIp("localhost".into()),
            r#"port mapping localhost:80:80/tcp: invalid host IP "localhost""#,
        ),
    ];
    for (m, problem, text) in cases {
        let err = m.expand().unwrap_err();
        assert_eq!(err.problem, problem, "{m:?}");
        assert_eq!(err.mapping, m);
        // The message carries the problem; it is not also the source.
        assert!(std::error::Error::source(&err).is_none());
        assert_eq!(err.to_string(), text);
        assert!(m.validate().is_err());
    }
}

#[test]
fn duplicate_forwards_across_mappings_are_refused() {
    let ms = [
        mapping("", 8080, 80, 3, "tcp"),
        mapping("", 8082, 90, 1, "udp,tcp"),
    ];
    let err = expand_all(&ms).unwrap_err();
    assert_eq!(
        err.to_string(),
        "port mapping 8082:90/udp,tcp: *:8082 -> 90/tcp is also forwarded by 8080-8082:80-82/tcp"
    );
    assert_eq!(err.mapping, ms[1]);
    assert_eq!(
        err.problem,
        PortProblem::HostPortTaken {
            forward: Forward {
                proto: Protocol::Tcp,
                host_ip: None,
                host_port: 8082,
                container_port: 90
            },
            other: Box::new(ms[0].clone()),
        }
    );
    // Same port on different protocols or addresses is fine.
    let ms = [
        mapping("", 8080, 80, 1, "tcp"),
        mapping("", 8080, 80, 1, "udp"),
        mapping("127.0.0.1", 8080, 81, 1, "tcp"),
    ];
    assert_eq!(expand_all(&ms).unwrap().len(), 3);
}

#[test]
fn port_specs() {
    let cases = [
        ("80", mapping("", 0, 80, 1, "tcp")),
        ("8080:80", mapping("", 8080, 80, 1, "tcp")),
        ("8080:80/udp", mapping("", 8080, 80, 1, "udp")),
        ("8080:80/tcp,udp", mapping("", 8080, 80, 1, "tcp,udp")),
        (
            "127.0.0.1:8080:80",
            mapping("127.0.0.1", 8080, 80, 1, "tcp"),
        ),
        ("127.0.0.1::80", mapping("127.0.0.1", 0, 80, 1, "tcp")),
        (
            "0.0.0.0:8080-8082:80-82/udp",
            mapping("0.0.0.0", 8080, 80, 3, "udp"),
        ),
        ("80-82", mapping("", 0, 80, 3, "tcp")),
        ("[::1]:8080:80/tcp", mapping("::1", 8080, 80, 1, "tcp")),
        ("[::]::80", mapping("::", 0, 80, 1, "tcp")),
        ("[2001:DB8::1]:1:1", mapping("2001:db8::1", 1, 1, 1, "tcp")),
        ("65535:65535", mapping("", 65535, 65535, 1, "tcp")),
    ];
    for (spec, want) in cases {
        assert_eq!(
            parse_port_spec(spec).unwrap_or_else(|e| panic!("{e}")),
            want,
            "{spec}"
        );
    }
}

#[test]
fn port_spec_errors() {
    use PortSide::{Container, Host};
    let cases = [
        (
            "",
            SpecProblem::MissingPort { side: Container },
            "missing container port",
        ),
        (
            "0",
            SpecProblem::PortZero { side: Container },
            "container port must not be 0",
        ),
        (
            "8080:0",
            SpecProblem::PortZero { side: Container },
            "container port must not be 0",
        ),
        (
            "0:80",
            SpecProblem::PortZero { side: Host },
            "host port must not be 0",
        ),
        (
            "65536:80",
            SpecProblem::InvalidPort {
                side: Host,
                text: "65536".into(),
            },
            r#"host port "65536" is not a number from 1 to 65535"#,
        ),
        (
            "http",
            SpecProblem::InvalidPort {
                side: Container,
                text: "http".into(),
            },
            r#"container port "http" is not a number from 1 to 65535"#,
        ),
        (
            "80/",
            SpecProblem::EmptyProtocol,
            "empty protocol after '/'",
        ),
        (
            "80/sctp",
            SpecProblem::Mapping(PortProblem::SctpUnsupported),
            "sctp is not supported: neither slirp4netns nor rootlessport can forward it",
        ),
        (
            "80/tcp,tcp",
            SpecProblem::Mapping(PortProblem::RepeatedProtocol(Protocol::Tcp)),
            r#"protocol "tcp" is named twice"#,
        ),
        (
            "80/foo",
            SpecProblem::Mapping(PortProblem::UnknownProtocol("foo".into())),
            r#"unknown protocol "foo" (expected tcp or udp)"#,
        ),
        (
            "8080-8081:80",
            SpecProblem::RangeMismatch {
                host: 2,
                container: 1,
            },
            "host range has 2 ports but container range has 1",
        ),
        (
            "90-80",
            SpecProblem::BackwardRange {
                side: Container,
                start: 90,
                end: 80,
            },
            "container port range 90-80 ends before it starts",
        ),
        (
            "::1:8080:80",
            SpecProblem::UnbracketedIpv6,
            "too many ':' (put an IPv6 host address in brackets: [::1]:8080:80)",
        ),
        (
            "[::1:8080:80",
            SpecProblem::MissingBracket,
            "missing ']' after the IPv6 host address",
        ),
        (
            "[::1]8080:80",
            SpecProblem::MissingColonAfterBracket,
            "expected ':' after the bracketed host address",
        ),
        (
            "[::1]:80",
            SpecProblem::MissingHostPort,
            "expected HOST_PORT:CONTAINER_PORT after the host address",
        ),
        ("[::1]:1:2:3", SpecProblem::TooManyColons, "too many ':'"),
        (
            "host:8080:80",
            SpecProblem::Mapping(PortProblem::InvalidHostIp("host".into())),
            r#"invalid host IP "host""#,
        ),
        (
            "1.2.3:8080:80",
            SpecProblem::Mapping(PortProblem::InvalidHostIp("1.2.3".into())),
            r#"invalid host IP "1.2.3""#,
        ),
        (
            "80-",
            SpecProblem::MissingPort { side: Container },
            "missing container port",
        ),
    ];
    for (spec, problem, text) in cases {
        let err = parse_port_spec(spec).expect_err(spec);
        assert_eq!(err.spec, spec);
        assert_eq!(err.problem, problem, "{spec}");
        assert_eq!(err.problem.to_string(), text, "{spec}");
        assert_eq!(
            err.to_string(),
            format!("invalid port spec {spec:?}: {text}")
        );
        assert!(std::error::Error::source(&err).is_none());
    }
}

#[test]
fn spec_display_round_trips() {
    for spec in [
        "8080:80/tcp",
        "127.0.0.1:8080-8082:80-82/tcp,udp",
        "[::1]:9000:90/udp",
        "127.0.0.1::80/tcp",
        "80-81/tcp",
    ] {
        assert_eq!(parse_port_spec(spec).unwrap().to_string(), spec);
    }
}

#[test]
fn subnet_addresses() {
    let s = Subnet::default();
    assert_eq!(s.to_string(), "10.0.2.0/24");
    assert_eq!(s.guest().unwrap(), Ipv4Addr::new(10, 0, 2, 100));
    assert_eq!(s.gateway().unwrap(), Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(s.dns().unwrap(), Ipv4Addr::new(10, 0, 2, 3));
    assert_eq!(
        s.dhcp_range().unwrap(),
        (Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 30))
    );

    let s = Subnet::new("192.168.7.77/25".parse().unwrap());
    assert_eq!(s.net().to_string(), "192.168.7.0/25");
    assert_eq!(s.guest().unwrap(), Ipv4Addr::new(192, 168, 7, 100));
    let s = Subnet::from_cidr(Some("10.200.0.0/16".parse().unwrap()));
    assert_eq!(s.guest().unwrap(), Ipv4Addr::new(10, 200, 0, 100));
    assert_eq!(Subnet::from_cidr(None), Subnet::default());
}

#[test]
fn subnet_address_errors() {
    let s28 = Subnet::new("10.9.0.0/28".parse().unwrap());
    assert_eq!(
        s28.guest().unwrap_err(),
        AddrError::OutsideSubnet {
            subnet: s28,
            offset: 100,
            addr: Ipv4Addr::new(10, 9, 0, 100)
        }
    );
    assert_eq!(
        s28.guest().unwrap_err().to_string(),
        "address at offset +100 of 10.9.0.0/28 (10.9.0.100) is outside the subnet; use a larger cidr"
    );
    assert!(s28.dns().is_ok());
    assert!(s28.dhcp_range().is_err()); // +30 is past a /28
                                        // +100 of a /26 is outside; the broadcast address of a /25 (+127) is not a host.
    assert!(Subnet::new("10.0.0.0/26".parse().unwrap()).guest().is_err());
    assert!(Subnet::new("10.0.0.0/25".parse().unwrap())
        .nth(127)
        .is_err());
    assert!(Subnet::default().nth(0).is_err());
    let top = Subnet::new("255.255.255.255/32".parse().unwrap());
    assert_eq!(
        top.gateway().unwrap_err().to_string(),
        "address at offset +2 of 255.255.255.255/32 overflows IPv4"
    );
}

#[test]
fn ipv6_constants() {
    assert_eq!(IPV6_SUBNET.to_string(), "fd00::/64");
    assert_eq!(IPV6_GATEWAY.to_string(), "fd00::2");
    assert_eq!(IPV6_DNS.to_string(), "fd00::3");
    assert_eq!(IPV6_GUEST.to_string(), "fd00::100");
}

#[test]
fn a_port_key_parses_as_it_is_written() {
    use slirp_opts::{PortKey, SpecProblem};
    let key = |text: &str| text.parse::<PortKey>();
    for (text, written) in [
        ("127.0.0.1:18501/tcp", "127.0.0.1:18501/tcp"),
        ("127.0.0.1:18501", "127.0.0.1:18501/tcp"),
        ("18501/udp", "*:18501/udp"),
        ("*:80/udp", "*:80/udp"),
        ("[::1]:80/tcp", "[::1]:80/tcp"),
    ] {
        assert_eq!(key(text).unwrap().to_string(), written, "{text}");
        assert_eq!(key(written).unwrap(), key(text).unwrap(), "{text}");
    }
    for (text, problem) in [
        ("80/tcp,udp", SpecProblem::TooManyProtocols),
        ("80-81/tcp", SpecProblem::PortRange),
        ("::1:80", SpecProblem::UnbracketedIpv6),
        ("80/", SpecProblem::EmptyProtocol),
        ("[::1:80", SpecProblem::MissingBracket),
    ] {
        assert_eq!(key(text).unwrap_err().problem, problem, "{text}");
    }
    assert!(key("x:80").is_err());
    assert!(key("0").is_err());
}

#[test]
fn forwards_are_checked_once_and_written_back_as_one_port_mappings() {
    use slirp_opts::{check_forwards, parse_forwards, PortProblem};
    let forwards = parse_forwards("[::1]:8080-8081:80-81/udp,tcp").unwrap();
    assert_eq!(forwards.len(), 4);
    let mappings: Vec<String> = forwards
        .iter()
        .map(|f| f.to_mapping().to_string())
        .collect();
    assert_eq!(
        mappings,
        [
            "[::1]:8080:80/udp",
            "[::1]:8080:80/tcp",
            "[::1]:8081:81/udp",
            "[::1]:8081:81/tcp"
        ]
    );
    for f in &forwards {
        assert_eq!(f.to_mapping().expand().unwrap(), [*f]);
    }
    assert!(check_forwards(&forwards).is_ok());
    let mut twice = forwards.clone();
    twice.push(forwards[2]);
    let err = check_forwards(&twice).unwrap_err();
    assert!(
        matches!(err.problem, PortProblem::HostPortTaken { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "port mapping [::1]:8081:81/udp: [::1]:8081 -> 81/udp is also forwarded by [::1]:8081:81/udp"
    );
}
