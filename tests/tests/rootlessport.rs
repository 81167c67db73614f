//! rootlessport as podman runs it: real namespaces (addresses on a veth pair
//! inside), real sockets, loopback clients.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use slirp_proc::Exit;
use slirpnet_tests::require_net_admin;
use slirpnet_tests::{
    can_admin_net, free_port_both, free_tcp_port, payload, require, rootlessport_bin,
    PersistentNetns, Rootlessport,
};

fn veth_netns(name: &str) -> PersistentNetns {
    PersistentNetns::with_veth(name)
}

fn config(ns: &PersistentNetns, mappings: serde_json::Value, child_ip: &str) -> String {
    ns.rootlessport_config(mappings, child_ip)
}

fn tcp_map(host_ip: &str, host_port: u16, container_port: u16, range: u16) -> serde_json::Value {
    json!([{"host_ip": host_ip, "container_port": container_port, "host_port": host_port, "range": range, "protocol": "tcp"}])
}

fn started(ns: &PersistentNetns, cfg: &str) -> Rootlessport {
    let _ = ns;
    Rootlessport::start(&rootlessport_bin(), cfg).unwrap_or_else(|e| panic!("not ready: {e}"))
}

/// A TCP server inside: for each connection, reads to EOF, then answers
/// `tag` followed by what it got, reversed, and half-closes.
fn reverse_server(
    ns: &PersistentNetns,
    addr: &str,
    tag: &'static [u8],
    conns: usize,
) -> std::thread::JoinHandle<()> {
    let listener = ns.open().run(|| TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for _ in 0..conns {
            let (mut c, _) = listener.accept().unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                got.reverse();
                c.write_all(tag).unwrap();
                c.write_all(&got).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            });
        }
    })
}

/// The namespace's TCP OutRsts counter: resets it sent, e.g. refusing a
/// connection to a port nobody listens on.
fn tcp_out_resets(ns: &PersistentNetns) -> u64 {
    let snmp = ns
        .open()
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap()
        .unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "OutRsts")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    let data = data.to_vec();
    let sender = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

#[test]
fn tcp_is_byte_exact_with_half_close_from_the_client() {
    if !require_net_admin("tcp_is_byte_exact_with_half_close_from_the_client", &[]) {
        return;
    }
    let ns = veth_netns("rp-tcp");
    let server = reverse_server(&ns, "10.77.0.1:8000", b"A:", 1);
    let port = free_tcp_port();
    let mut rp = started(
        &ns,
        &config(&ns, tcp_map("127.0.0.1", port, 8000, 1), "10.77.0.1"),
    );
    let data = payload(4 << 20, 11);
    let back = exchange(([127, 0, 0, 1], port).into(), &data);
    let mut want = b"A:".to_vec();
    want.extend(data.iter().rev());
    assert!(
        back == want,
        "got {} bytes, want {}",
        back.len(),
        want.len()
    );
    server.join().unwrap();
    assert_eq!(rp.stop(Duration::from_secs(1)).unwrap(), Exit::Code(0));
}

#[test]
fn tcp_half_close_from_the_server_keeps_the_other_way_open() {
    if !require_net_admin(
        "tcp_half_close_from_the_server_keeps_the_other_way_open",
        &[],
    ) {
        return;
    }
    let ns = veth_netns("rp-half");
    // The server speaks first and half-closes, then reads all the client sends.
    let listener = ns
        .open()
        .run(|| TcpListener::bind("10.77.0.1:8001"))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(b"hello, then silence").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    let port = free_tcp_port();
    let _rp = started(
        &ns,
        &config(&ns, tcp_map("127.0.0.1", port, 8001, 1), "10.77.0.1"),
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).unwrap(); // EOF arrives: the server's FIN got through
    assert_eq!(greeting, b"hello, then silence");
    let data = payload(1 << 20, 5);
    c.write_all(&data).unwrap(); // the other direction still works
    c.shutdown(Shutdown::Write).unwrap();
    assert!(server.join().unwrap() == data);
}

#[test]
fn two_hundred_concurrent_connections() {
    if !require_net_admin("two_hundred_concurrent_connections", &[]) {
        return;
    }
    let ns = veth_netns("rp-200");
    let server = reverse_server(&ns, "10.77.0.1:8002", b"", 200);
    let port = free_tcp_port();
    let _rp = started(
        &ns,
        &config(&ns, tcp_map("127.0.0.1", port, 8002, 1), "10.77.0.1"),
    );
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = payload(20_000 + i as usize, i + 1);
                let back = exchange(([127, 0, 0, 1], port).into(), &data);
                back.iter().rev().copied().eq(data.iter().copied())
            })
        })
        .collect();
    let ok = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(ok, 200);
    server.join().unwrap();
}

#[test]
fn udp_request_reply_from_two_clients_at_once() {
    if !require_net_admin("udp_request_reply_from_two_clients_at_once", &[]) {
        return;
    }
    let ns = veth_netns("rp-udp");
    let server = ns
        .open()
        .run(|| UdpSocket::bind("10.77.0.1:5353"))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let mut reply = format!("{from}|").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = server.send_to(&reply, from);
        }
    });
    let port = free_port_both();
    let map = json!([{"host_ip": "127.0.0.1", "container_port": 5353, "host_port": port, "range": 1, "protocol": "udp"}]);
    let _rp = started(&ns, &config(&ns, map, "10.77.0.1"));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.connect(("127.0.0.1", port)).unwrap();
                let mut seen_from = None;
                for round in 0..20 {
                    let msg = format!("client {i} round {round}");
                    c.send(msg.as_bytes()).unwrap();
                    let mut buf = [0u8; 2048];
                    let n = c.recv(&mut buf).unwrap();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let (from, body) = text.split_once('|').unwrap();
                    assert_eq!(body, msg);
                    // One flow per client: the same inner source every time.
                    assert!(
                        seen_from.get_or_insert(from.to_owned()) == from,
                        "flow changed"
                    );
                }
                seen_from.unwrap()
            })
        })
        .collect();
    let froms: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_ne!(
        froms[0], froms[1],
        "the two clients must have separate flows"
    );
}

#[test]
fn a_port_range_and_an_ipv6_client_on_a_dual_stack_listener() {
    if !require_net_admin(
        "a_port_range_and_an_ipv6_client_on_a_dual_stack_listener",
        &[],
    ) {
        return;
    }
    let has_v6 = TcpListener::bind("[::1]:0").is_ok();
    if !require(
        "a_port_range_and_an_ipv6_client_on_a_dual_stack_listener",
        if has_v6 {
            Ok(())
        } else {
            Err(anyhow::anyhow!("no IPv6 on loopback"))
        },
    ) {
        return;
    }
    let ns = veth_netns("rp-range");
    let servers: Vec<_> = (0..3)
        .map(|i| {
            reverse_server(
                &ns,
                &format!("10.77.0.1:{}", 9100 + i),
                [b"0", b"1", b"2"][i as usize],
                2,
            )
        })
        .collect();
    let base = loop {
        let p = free_tcp_port();
        if p < 65000
            && (1..3).all(|i| {
                TcpListener::bind(("0.0.0.0", p + i)).is_ok()
                    && TcpListener::bind(("::", p + i)).is_ok()
            })
        {
            break p;
        }
    };
    // Empty host IP: all addresses, one dual-stack socket per port.
    let _rp = started(&ns, &config(&ns, tcp_map("", base, 9100, 3), "10.77.0.1"));
    for i in 0..3u16 {
        let tag = format!("{i}");
        let v4 = exchange(([127, 0, 0, 1], base + i).into(), b"xyz");
        assert_eq!(
            v4,
            format!("{tag}zyx").as_bytes(),
            "IPv4 client, port {}",
            base + i
        );
        let v6 = exchange(format!("[::1]:{}", base + i).parse().unwrap(), b"abc");
        assert_eq!(
            v6,
            format!("{tag}cba").as_bytes(),
            "IPv6 client, port {}",
            base + i
        );
    }
    for s in servers {
        s.join().unwrap();
    }
}

#[test]
fn an_ipv6_child_ip() {
    if !require_net_admin("an_ipv6_child_ip", &[]) {
        return;
    }
    let ns = veth_netns("rp-v6child");
    let server = reverse_server(&ns, "[fd77::1]:8003", b"6:", 1);
    let port = free_tcp_port();
    let _rp = started(
        &ns,
        &config(&ns, tcp_map("127.0.0.1", port, 8003, 1), "fd77::1"),
    );
    assert_eq!(exchange(([127, 0, 0, 1], port).into(), b"ab"), b"6:ba");
    server.join().unwrap();
}

#[test]
fn reload_retargets_new_connections() {
    if !require_net_admin("reload_retargets_new_connections", &[]) {
        return;
    }
    let ns = veth_netns("rp-reload");
    let a = reverse_server(&ns, "10.77.0.1:8004", b"A", 1);
    let b = reverse_server(&ns, "10.77.0.2:8004", b"B", 1);
    // A TmpDir too long for a sockaddr_un: the socket must still work.
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("x".repeat(60)).join("y".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    let id = "f".repeat(64);
    let port = free_tcp_port();
    let mut cfg: serde_json::Value = serde_json::from_str(&config(
        &ns,
        tcp_map("127.0.0.1", port, 8004, 1),
        "10.77.0.1",
    ))
    .unwrap();
    cfg["TmpDir"] = json!(deep);
    cfg["ContainerID"] = json!(id);
    cfg["RootlessCNI"] = json!(true);
    let mut rp = started(&ns, &cfg.to_string());
    let sock = rootlessport::reload_socket_path(&deep, &id);
    assert!(sock.as_os_str().len() > 108, "the test needs a long path");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    assert_eq!(
        std::fs::metadata(deep.join("rp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    assert_eq!(exchange(([127, 0, 0, 1], port).into(), b"1"), b"A1");
    rootlessport::reload(&deep, &id, "10.77.0.2").unwrap();
    assert_eq!(exchange(([127, 0, 0, 1], port).into(), b"2"), b"B2");
    a.join().unwrap();
    b.join().unwrap();

    // Bad requests get the error text, and nothing changes.
    let err = rootlessport::reload(&deep, &id, "127.0.0.1")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("port reloading failed: rootless port failed to add port: ChildIP 127.0.0.1 is a loopback address"), "{err}");
    let err = rootlessport::reload(&deep, &id, "not an ip")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rootless port failed to add port: invalid ChildIP"),
        "{err}"
    );

    // Exit: gone within a second, the socket removed.
    assert_eq!(rp.stop(Duration::from_secs(1)).unwrap(), Exit::Code(0));
    assert!(!sock.exists(), "reload socket left behind");
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "still listening after exit"
    );
}

#[test]
fn a_connection_waits_briefly_for_a_service_that_is_starting() {
    if !require_net_admin(
        "a_connection_waits_briefly_for_a_service_that_is_starting",
        &[],
    ) {
        return;
    }
    let ns = veth_netns("rp-late");
    let port = free_tcp_port();
    let _rp = started(
        &ns,
        &config(&ns, tcp_map("127.0.0.1", port, 7300, 1), "10.77.0.1"),
    );
    // The client is accepted at once, while nothing listens inside yet: the
    // first dials are refused, which the namespace counts as resets sent.
    // Only once one has been refused does the service come up, well within
    // the ~225 ms the forwarder keeps retrying, as the Go helper does.
    let resets_before = tcp_out_resets(&ns);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"early").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tcp_out_resets(&ns) == resets_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no dial was refused inside the namespace"
        );
        std::thread::yield_now();
    }
    let server = reverse_server(&ns, "10.77.0.1:7300", b"late:", 1);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"late:ylrae");
    server.join().unwrap();

    // With no service at all, the client is reset after the retries rather
    // than held open.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started_at = std::time::Instant::now();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset or EOF, got {other:?}"),
    }
    assert!(
        started_at.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started_at.elapsed()
    );
}

#[test]
fn bad_configurations_print_one_line_and_leave_nothing() {
    if !require_net_admin("bad_configurations_print_one_line_and_leave_nothing", &[]) {
        return;
    }
    let ns = veth_netns("rp-bad");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_tcp_port();
    let netns = ns.path.to_str().unwrap().to_owned();
    let base = |m: serde_json::Value| json!({"Mappings": m, "NetNSPath": netns, "ExitFD": 3, "ReadyFD": 4, "ChildIP": "10.77.0.1"});
    let map = |hp: u16, cp: u16, range: u16, proto: &str| json!([{"host_ip": "127.0.0.1", "container_port": cp, "host_port": hp, "range": range, "protocol": proto}]);
    let cases: Vec<(String, String)> = vec![
        ("garbage{".into(), "failed to decode the configuration on stdin: ".into()),
        (json!({"ExitFD": 3, "ReadyFD": 4, "ChildIP": "10.77.0.1"}).to_string(), "missing NetNSPath".into()),
        (json!({"NetNSPath": netns, "ReadyFD": 4, "ChildIP": "10.77.0.1"}).to_string(), "missing ExitFD".into()),
        (json!({"NetNSPath": netns, "ExitFD": 3, "ChildIP": "10.77.0.1"}).to_string(), "missing ReadyFD".into()),
        (json!({"NetNSPath": netns, "ExitFD": 3, "ReadyFD": 4}).to_string(), "missing ChildIP".into()),
        (json!({"NetNSPath": netns, "ExitFD": 3, "ReadyFD": 4, "ChildIP": "::1"}).to_string(), "ChildIP ::1 is a loopback address".into()),
        (base(map(free, 0, 1, "tcp")).to_string(), "container port is 0".into()),
        (base(map(65535, 80, 2, "tcp")).to_string(), "host ports 65535-65536 run past 65535".into()),
        (base(map(free, 80, 1, "sctp")).to_string(), "sctp is not supported".into()),
        (base(map(free, 80, 1, "tcp,icmp")).to_string(), "unknown protocol \"icmp\"".into()),
        (base(map(busy, 80, 1, "tcp")).to_string(), format!("failed to listen on tcp 127.0.0.1:{busy}: Address already in use")),
        (json!({"Mappings": map(free, 80, 1, "tcp"), "NetNSPath": "/etc/hostname", "ExitFD": 3, "ReadyFD": 4, "ChildIP": "10.77.0.1"}).to_string(), "/etc/hostname is not a namespace file".into()),
        (json!({"NetNSPath": netns, "ExitFD": 9, "ReadyFD": 4, "ChildIP": "10.77.0.1"}).to_string(), "ExitFD 9 named in the configuration is not open".into()),
    ];
    for (cfg, want) in cases {
        let (line, exit) = Rootlessport::failure(&rootlessport_bin(), &cfg);
        assert_eq!(line.lines().count(), 1, "{cfg}: {line:?}");
        assert!(
            line.contains(&want),
            "{cfg}: {line:?} does not contain {want:?}"
        );
        assert_eq!(exit, Exit::Code(1), "{cfg}");
        assert!(
            TcpListener::bind(("127.0.0.1", free)).is_ok(),
            "{cfg}: left port {free} bound"
        );
    }
    // Any argument is refused, as podman passes none.
    let out = Command::new(rootlessport_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn exit_pipe_eof_stops_it_within_a_second() {
    if !require_net_admin("exit_pipe_eof_stops_it_within_a_second", &[]) {
        return;
    }
    let ns = veth_netns("rp-exit");
    let port = free_port_both();
    let map = json!([{"host_ip": "", "container_port": 80, "host_port": port, "range": 1, "protocol": "tcp,udp"}]);
    let mut rp = started(&ns, &config(&ns, map, "10.77.0.1"));
    // After ready, stdout and stderr point at /dev/null.
    let fds = rp.fds();
    assert!(
        fds.iter().filter(|t| *t == "/dev/null").count() >= 2,
        "{fds:?}"
    );
    let start = std::time::Instant::now();
    assert_eq!(rp.stop(Duration::from_secs(1)).unwrap(), Exit::Code(0));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    assert!(UdpSocket::bind(("127.0.0.1", port)).is_ok());
}

#[test]
fn a_privileged_port_gets_the_sysctl_hint() {
    let check = (|| {
        anyhow::ensure!(
            slirpnet_tests::which("setpriv").is_some(),
            "setpriv is missing"
        );
        let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")?
            .trim()
            .parse()?;
        anyhow::ensure!(
            start > 80,
            "ip_unprivileged_port_start is {start}: port 80 is not privileged here"
        );
        can_admin_net()
    })();
    if !require("a_privileged_port_gets_the_sysctl_hint", check) {
        return;
    }
    let ns = veth_netns("rp-priv");
    let (_dir, bins) = slirpnet_tests::world_runnable(&[&rootlessport_bin()]).unwrap();
    let cfg = config(&ns, tcp_map("127.0.0.1", 80, 80, 1), "10.77.0.1");
    // As an unprivileged user, the way rootless podman runs it.
    let wrapper_dir = tempfile::tempdir().unwrap();
    let wrapper_path = wrapper_dir.path().join("as-nobody");
    slirpnet_tests::write_runnable(&wrapper_path, format!("#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all {} \"$@\"\n", bins[0].display()).as_bytes()).unwrap();
    let (line, exit) = Rootlessport::failure(Path::new(&wrapper_path), &cfg);
    assert_eq!(exit, Exit::Code(1));
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let start = start.trim();
    assert!(
        line.starts_with(&format!("cannot expose privileged port 80, you can add 'net.ipv4.ip_unprivileged_port_start=80' to /etc/sysctl.conf (currently {start}), or choose a larger port number (>= {start}): ")),
        "{line}"
    );
}

#[test]
fn udp_bursts_keep_every_datagram_boundary() {
    if !require_net_admin("udp_bursts_keep_every_datagram_boundary", &[]) {
        return;
    }
    // Bursts are batched and sent into the namespace with UDP GSO: every
    // datagram must still arrive whole, alone and unchanged.
    let ns = veth_netns("rp-burst");
    let server = ns
        .open()
        .run(|| UdpSocket::bind("10.77.0.1:5454"))
        .unwrap()
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    // Room for every burst in flight, so that a reader thread starved of CPU
    // on a busy machine does not turn into drops at the server socket.
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(&server, sockopt::RcvBufForce, &(8 << 20)).unwrap();
    let port = free_port_both();
    let map = json!([{"host_ip": "127.0.0.1", "container_port": 5454, "host_port": port, "range": 1, "protocol": "udp"}]);
    let _rp = started(&ns, &config(&ns, map, "10.77.0.1"));
    let datagram = |seq: u32| -> Vec<u8> {
        // 1200 bytes, except every 50th is short: runs of equal size end there.
        let len = if seq % 50 == 49 { 300 } else { 1200 };
        let mut d = seq.to_be_bytes().to_vec();
        d.extend(payload(len - 4, u64::from(seq) + 1));
        d
    };
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(("127.0.0.1", port)).unwrap();
    // The first datagram opens the flow; wait until it is through.
    client.send(&datagram(0)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = server.recv_from(&mut buf).unwrap();
    assert_eq!(buf[..n], datagram(0)[..]);
    const COUNT: u32 = 2000;
    const BURST: u32 = 64;
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // The reader runs while the client sends, as a real server would.
    let reader = std::thread::spawn({
        let arrived = arrived.clone();
        move || {
            let mut buf = vec![0u8; 65536];
            let mut seen = std::collections::BTreeSet::new();
            while let Ok((n, _)) = server.recv_from(&mut buf) {
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                assert!(seq < COUNT, "bad sequence number {seq}");
                assert_eq!(
                    n,
                    datagram(seq).len(),
                    "datagram {seq} arrived with the wrong size"
                );
                assert!(
                    buf[..n] == datagram(seq)[..],
                    "datagram {seq} arrived changed"
                );
                assert!(seen.insert(seq), "datagram {seq} arrived twice");
                arrived.store(seen.len() as u32, std::sync::atomic::Ordering::Release);
                if seen.len() == COUNT as usize - 1 {
                    break;
                }
            }
            seen
        }
    });
    // Back-to-back bursts of 64 (what one batch holds), with at most four
    // bursts unread: the forwarder still gets whole bursts to batch, and the
    // count below measures the forwarder, not the scheduler.
    for seq in 1..COUNT {
        client.send(&datagram(seq)).unwrap();
        if seq % BURST == 0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while arrived.load(std::sync::atomic::Ordering::Acquire) + 4 * BURST < seq
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    let seen = reader.join().unwrap();
    // UDP may drop, but with the window above and large buffers on loopback
    // and veth a loss of more than 1% means the forwarder dropped them.
    let missing: Vec<u32> = (1..COUNT).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.len() as u32 <= COUNT / 100,
        "{} of {} datagrams did not arrive, the first: {:?}",
        missing.len(),
        COUNT - 1,
        &missing[..missing.len().min(40)]
    );
}

#[test]
fn a_slow_reader_and_a_thousand_tiny_exchanges_lose_nothing() {
    if !require_net_admin(
        "a_slow_reader_and_a_thousand_tiny_exchanges_lose_nothing",
        &[],
    ) {
        return;
    }
    let ns = veth_netns("rp-slow");
    let listener = ns
        .open()
        .run(|| TcpListener::bind("10.77.0.1:7500"))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        // First connection: read 16 MiB slowly (the forwarder's pipe and the
        // socket buffers fill and wait), answer with length and checksum.
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1024];
        let (mut len, mut sum) = (0u64, 0u64);
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            len += n as u64;
            sum = buf[..n]
                .iter()
                .fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
            if len % (512 << 10) < 1024 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        c.write_all(format!("{len} {sum}").as_bytes()).unwrap();
        drop(c);
        // Second: a thousand one-byte request/response exchanges.
        let (mut c, _) = listener.accept().unwrap();
        let mut b = [0u8; 1];
        while c.read(&mut b).unwrap() == 1 {
            c.write_all(&[b[0].wrapping_add(1)]).unwrap();
        }
    });
    let port = free_tcp_port();
    let _rp = started(
        &ns,
        &config(&ns, tcp_map("127.0.0.1", port, 7500, 1), "10.77.0.1"),
    );
    let data = payload(16 << 20, 21);
    let want_sum = data
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
    let back = exchange(([127, 0, 0, 1], port).into(), &data);
    assert_eq!(
        String::from_utf8_lossy(&back),
        format!("{} {want_sum}", data.len())
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..1000u32 {
        let byte = (i % 251) as u8;
        c.write_all(&[byte]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("exchange {i} got no answer: {e}"));
        assert_eq!(b[0], byte.wrapping_add(1), "exchange {i}");
    }
    c.shutdown(Shutdown::Write).unwrap();
    server.join().unwrap();
}
