//! rootlessport's UDP path as traffic really comes: many client addresses on
//! every listener shape, and every datagram size. The forwarder runs in a
//! namespace that plays the host, so clients can have addresses the test
//! made (192.0.2.0/24, 2001:db8::/64 on that namespace's lo).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::json;
use slirpnet_tests::require_net_admin;
use slirpnet_tests::{in_netns, payload, rootlessport_bin, PersistentNetns, Rootlessport};

/// The namespace that plays the host: lo up, with extra client addresses.
fn host_netns(name: &str) -> PersistentNetns {
    let ns = PersistentNetns::new(name).unwrap();
    ns.ip("link set lo up");
    for addr in [
        "192.0.2.2/32",
        "192.0.2.3/32",
        "2001:db8::2/128",
        "2001:db8::3/128",
    ] {
        ns.ip(&format!("addr add {addr} dev lo nodad"));
    }
    ns
}

/// rootlessport started inside `host` (as podman would start it there),
/// forwarding into `container`.
fn forwarder_in(
    host: &PersistentNetns,
    container: &PersistentNetns,
    mappings: serde_json::Value,
) -> (Rootlessport, tempfile::TempDir) {
    let (dir, script) = in_netns(host, &rootlessport_bin()).unwrap();
    let cfg = container.rootlessport_config(mappings, "10.77.0.1");
    let rp = Rootlessport::start(&script, &cfg).unwrap_or_else(|e| panic!("not ready: {e}"));
    (rp, dir)
}

/// A UDP server inside `ns` at `addr` that answers every datagram with
/// `<source address>|<datagram>`, until the socket is closed.
fn tagging_echo(ns: &PersistentNetns, addr: &str) {
    let server = ns.open().run(|| UdpSocket::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let mut reply = format!("{from}|").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = server.send_to(&reply, from);
        }
    });
}

/// A client socket made inside `ns`, bound to `ip`.
fn client_in(ns: &PersistentNetns, ip: IpAddr) -> UdpSocket {
    let c = ns
        .open()
        .run(move || UdpSocket::bind(SocketAddr::new(ip, 0)))
        .unwrap()
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

#[test]
fn udp_replies_reach_each_client_address_on_every_listener_shape() {
    if !require_net_admin(
        "udp_replies_reach_each_client_address_on_every_listener_shape",
        &["nsenter"],
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("udp-many-c");
    let host = host_netns("udp-many-h");
    tagging_echo(&container, "10.77.0.1:5353");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let v4_clients = [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "192.0.2.2",
        "192.0.2.3",
    ];
    let v6_clients = ["::1", "2001:db8::2", "2001:db8::3"];
    // (host_ip of the mapping, host port, clients and the address each sends to)
    type Shape<'a> = (&'a str, u16, Vec<(IpAddr, IpAddr)>);
    let shapes: Vec<Shape> = vec![
        (
            "",
            4001,
            v4_clients
                .iter()
                .map(|c| (ip(c), ip("127.0.0.1")))
                .chain(v6_clients.iter().map(|c| (ip(c), ip("::1"))))
                .collect(),
        ),
        (
            "0.0.0.0",
            4002,
            v4_clients
                .iter()
                .map(|c| (ip(c), ip("192.0.2.2")))
                .chain(v6_clients.iter().map(|c| (ip(c), ip("2001:db8::3"))))
                .collect(),
        ),
        (
            "127.0.0.1",
            4003,
            v4_clients
                .iter()
                .map(|c| (ip(c), ip("127.0.0.1")))
                .collect(),
        ),
        (
            "::1",
            4004,
            v6_clients.iter().map(|c| (ip(c), ip("::1"))).collect(),
        ),
    ];
    let mappings: Vec<_> = shapes
        .iter()
        .map(|(host_ip, port, _)| json!({"host_ip": host_ip, "container_port": 5353, "host_port": port, "range": 1, "protocol": "udp"}))
        .collect();
    let (_rp, _dir) = forwarder_in(&host, &container, json!(mappings));
    for (host_ip, port, clients) in shapes {
        let socks: Vec<(UdpSocket, SocketAddr)> = clients
            .iter()
            .map(|&(from, to)| (client_in(&host, from), SocketAddr::new(to, port)))
            .collect();
        let mut inner_source: HashMap<usize, String> = HashMap::new();
        // Rounds of every client sending a burst before anyone reads: the
        // forwarder's batches hold datagrams of several clients, and later
        // batches reuse the headers of earlier ones.
        for round in 0..40 {
            let burst = if round % 4 == 3 { 8 } else { 1 };
            for (i, (s, to)) in socks.iter().enumerate() {
                for k in 0..burst {
                    s.send_to(format!("{i}/{round}/{k}").as_bytes(), to)
                        .unwrap();
                }
            }
            for (i, (s, to)) in socks.iter().enumerate() {
                for k in 0..burst {
                    let mut buf = [0u8; 512];
                    let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| {
                        panic!(
                            "host_ip {host_ip:?}: client {} -> {to} got no reply in round {round}: {e}",
                            clients[i].0
                        )
                    });
                    assert_eq!(from, *to, "the reply comes from the forwarded port");
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let (source, body) = text.split_once('|').unwrap();
                    assert_eq!(
                        body,
                        format!("{i}/{round}/{k}"),
                        "host_ip {host_ip:?}: client {} got another datagram's reply",
                        clients[i].0
                    );
                    let first = inner_source.entry(i).or_insert_with(|| source.to_owned());
                    assert_eq!(first, source, "client {}: its flow changed", clients[i].0);
                }
            }
        }
        let mut distinct: Vec<&String> = inner_source.values().collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            clients.len(),
            "host_ip {host_ip:?}: every client has a flow of its own"
        );
    }
}

#[test]
fn every_datagram_size_arrives_whole_and_in_order() {
    if !require_net_admin(
        "every_datagram_size_arrives_whole_and_in_order",
        &["nsenter"],
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("udp-sizes-c");
    let host = host_netns("udp-sizes-h");
    let server = container
        .open()
        .run(|| UdpSocket::bind("10.77.0.1:5454"))
        .unwrap()
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(&server, sockopt::RcvBufForce, &(8 << 20)).unwrap();
    let map = json!([{"host_ip": "", "container_port": 5454, "host_port": 4010, "range": 1, "protocol": "udp"}]);
    let (_rp, _dir) = forwarder_in(&host, &container, map);
    let client = client_in(&host, "192.0.2.2".parse().unwrap());
    client.connect("127.0.0.1:4010").unwrap();
    // Every size class: empty, tiny, around a typical MTU, around GSO's
    // limit, the largest IPv4 datagram; and sizes across the whole range.
    let mut sizes: Vec<usize> = vec![0, 1, 2, 1399, 1400, 1401, 64999, 65000, 65001, 65507];
    sizes.extend((0..=65507).step_by(1499));
    let mut seq = 0u64;
    for &size in &sizes {
        // Zero-length datagrams right after non-empty ones of the same
        // burst (they must not be merged into a GSO run), equal sizes (which
        // are), and a shorter one that ends a run. Big bursts stay small
        // enough for a forwarder socket without privileged buffers.
        let burst: Vec<usize> = if size > 16384 {
            vec![size, 0, size, 0]
        } else {
            vec![size, size, 0, size, 0, 0, size, size / 2, 0, size]
        };
        let sent: Vec<Vec<u8>> = burst
            .iter()
            .map(|&len| {
                seq += 1;
                payload(len, seq)
            })
            .collect();
        for d in &sent {
            client.send(d).unwrap();
        }
        let mut buf = vec![0u8; 65536];
        for (k, want) in sent.iter().enumerate() {
            let (n, _) = server.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "burst {burst:?}: datagram {k} ({} bytes) never arrived: {e}",
                    want.len()
                )
            });
            assert_eq!(
                n,
                want.len(),
                "burst {burst:?}: datagram {k} arrived with {n} bytes instead of {}",
                want.len()
            );
            assert!(
                buf[..n] == want[..],
                "burst {burst:?}: datagram {k} arrived changed"
            );
        }
    }
}
