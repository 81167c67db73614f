//! No input string, option or JSON document makes the parsers panic.

use proptest::prelude::*;
use slirp_opts::{
    build_args, from_go_json, parse_port_spec, Features, Invocation, NetworkOptions, PortMapping,
    Target,
};

proptest! {
    #[test]
    fn port_specs_never_panic(spec in "\\PC{0,40}") {
        if let Ok(m) = parse_port_spec(&spec) {
            let _ = m.expand();
            let _ = m.to_string();
        }
    }

    #[test]
    fn structured_port_specs_never_panic(
        ip in prop::option::of("(\\[[0-9a-f:]{0,8}\\]|[0-9.]{0,12})"),
        host in prop::option::of("[0-9]{0,6}(-[0-9]{0,6})?"),
        cont in "[0-9]{0,6}(-[0-9]{0,6})?",
        proto in prop::option::of("(tcp|udp|sctp|x|)(,(tcp|udp|sctp|))?"),
    ) {
        let mut spec = String::new();
        if let Some(ip) = ip { spec += &ip; spec.push(':'); }
        if let Some(h) = host { spec += &h; spec.push(':'); }
        spec += &cont;
        if let Some(p) = proto { spec.push('/'); spec += &p; }
        if let Ok(m) = parse_port_spec(&spec) {
            let _ = m.expand();
        }
    }

    #[test]
    fn options_never_panic(opts in prop::collection::vec("\\PC{0,30}", 0..4), help in "\\PC{0,80}") {
        if let Ok(o) = NetworkOptions::parse(&[] as &[&str], false, &opts, |n| n.len() % 2 == 0) {
            let _ = build_args(&o, &Features::from_help(&help), &Invocation::new(Target::Pid(1)));
        }
    }

    #[test]
    fn option_lists_never_panic(list in "\\PC{0,60}") {
        if let Ok(mut o) = NetworkOptions::parse_list(&list, |n| n.len() % 2 == 0) {
            let _ = o.apply_list(&list, |_| true);
        }
    }

    #[test]
    fn known_keys_with_any_value_never_panic(
        key in "(cidr|port_handler|allow_host_loopback|enable_ipv6|outbound_addr|outbound_addr6|mtu)",
        value in "\\PC{0,24}",
    ) {
        let opt = format!("{key}={value}");
        let _ = NetworkOptions::parse(&[] as &[&str], false, &[opt], |_| true);
    }

    #[test]
    fn json_never_panics(text in "\\PC{0,80}") {
        if let Ok(m) = from_go_json::<PortMapping>(&text) {
            let _ = m.expand();
        }
    }

    #[test]
    fn any_mapping_never_panics(host_port: u16, container_port: u16, range: u16, proto in "[a-z,]{0,10}", ip in "\\PC{0,10}") {
        let m = PortMapping { host_ip: ip, container_port, host_port, range, protocol: proto };
        if let Ok(fwds) = m.expand() {
            prop_assert!(fwds.iter().all(|f| f.host_port != 0 && f.container_port != 0));
        }
    }
}
