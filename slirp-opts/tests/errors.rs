//! The error conventions of this crate: every message is complete and
//! lowercase, no cause is both in the message and the source, and the
//! foreign types in the API can be named through the crate.

use std::error::Error;

use slirp_opts::rootlessport::{Config, ConfigError};
use slirp_opts::{
    build_args, parse_port_spec, AddrError, Features, Invocation, Ipv4Net, NetworkOptions,
    PortMapping, Subnet, Target,
};

/// The message has no trailing period, does not start with a capital letter
/// unless it starts with a name (`ChildIP`, `ExitFD`, ...), and the error
/// has no source unless it is the same text as the message.
fn check(err: &(dyn Error + 'static)) {
    let text = err.to_string();
    assert!(!text.is_empty());
    assert!(!text.ends_with('.'), "{text}");
    let first = text.split([' ', ':']).next().unwrap();
    assert!(
        !first.starts_with(|c: char| c.is_ascii_uppercase())
            || first.chars().skip(1).any(|c| c.is_ascii_uppercase()),
        "{text}"
    );
    if let Some(source) = err.source() {
        assert!(
            !text.contains(&source.to_string()),
            "{text} repeats its source"
        );
    }
}

#[test]
fn every_kind_of_error_follows_the_conventions() {
    let opts = NetworkOptions::default();
    let mut inv = Invocation::new(Target::Pid(1));
    inv.tap = String::new();
    let mut no_v6 = Features::all();
    no_v6.ipv6 = false;
    let errors: Vec<Box<dyn Error>> = vec![
        Box::new(NetworkOptions::parse_list("mtu=1", |_| false).unwrap_err()),
        Box::new(build_args(&opts, &Features::all(), &inv).unwrap_err()),
        Box::new(build_args(&opts, &no_v6, &Invocation::new(Target::Pid(1))).unwrap_err()),
        Box::new(parse_port_spec("80/sctp").unwrap_err()),
        Box::new(
            PortMapping {
                host_port: 1,
                container_port: 1,
                range: 1,
                protocol: "icmp".into(),
                ..PortMapping::default()
            }
            .expand()
            .unwrap_err(),
        ),
        Box::new(
            Subnet::new("10.0.0.0/28".parse().unwrap())
                .guest()
                .unwrap_err(),
        ),
        Box::new(Config::from_json("{").unwrap_err()),
        Box::new(Config::from_json("{}").unwrap().validate().unwrap_err()),
        Box::new(
            Config::new(
                vec![PortMapping {
                    container_port: 80,
                    range: 1,
                    ..PortMapping::default()
                }],
                "/run/netns/x",
                "10.0.2.100".parse().unwrap(),
            )
            .validate()
            .unwrap_err(),
        ),
    ];
    for err in &errors {
        check(err.as_ref());
        assert!(err.source().is_none(), "{err}");
    }
}

#[test]
fn a_decode_error_carries_the_json_error_in_its_message() {
    let err = Config::from_json(r#"{"ExitFD":"three"}"#).unwrap_err();
    let ConfigError::Decode(json) = &err else {
        panic!("{err:?}")
    };
    // The JSON error is named through the re-export.
    let json: &slirp_opts::serde_json::Error = json;
    assert!(json.is_data(), "{json}");
    assert_eq!(
        err.to_string(),
        format!("failed to decode the configuration on stdin: {json}")
    );
    assert!(err.source().is_none());
}

#[test]
fn a_port_error_in_a_config_is_the_port_error_itself() {
    let config = Config::new(
        vec![PortMapping {
            container_port: 80,
            range: 1,
            ..PortMapping::default()
        }],
        "/run/netns/x",
        "10.0.2.100".parse().unwrap(),
    );
    let err = config.validate().unwrap_err();
    let ConfigError::Port(port) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(err.to_string(), port.to_string());
    assert!(err.source().is_none());
}

#[test]
fn foreign_types_are_named_through_the_crate() {
    let net: Ipv4Net = "10.7.0.0/16".parse().unwrap();
    let also: slirp_opts::ipnet::Ipv4Net = net;
    let parse_error: Result<Ipv4Net, slirp_opts::ipnet::AddrParseError> = "10.7.0.0".parse();
    assert!(parse_error.is_err());
    let subnet = Subnet::new(also);
    let AddrError::OutsideSubnet { subnet: s, .. } = Subnet::new("10.7.0.0/30".parse().unwrap())
        .guest()
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(s.net(), "10.7.0.0/30".parse::<Ipv4Net>().unwrap());
    assert_eq!(subnet.net(), net);
    let v6: slirp_opts::Ipv6Net = slirp_opts::IPV6_SUBNET;
    assert_eq!(v6.prefix_len(), 64);
    let value: slirp_opts::serde_json::Value =
        slirp_opts::serde_json::to_value(PortMapping::default()).unwrap();
    assert_eq!(value["range"], 0);
}
