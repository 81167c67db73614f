//! rootlessport under abuse: a removed port refuses connections the
//! instant the removal returns (for 1, 100 and 2,000 ports, through
//! `ForwarderHandle::remove` and `slirpnet::Network::remove_ports`), and
//! so does every port of a forwarder the instant `ForwarderHandle::stop`
//! returns (open connections closed, UDP ports free); and a
//! client sending from thousands of UDP source ports to one forward, while
//! the forwarder runs under podman's `nofile` limit of 1024, never stops
//! TCP on another port. Clients use loopback addresses only.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use slirp_opts::portctl::PortKey;
use slirp_opts::{NetworkOptions, PortMapping, Protocol, Target};
use slirpnet::{ForwarderChoice, SetupOptions};
use slirpnet_tests::{
    can_admin_net, payload, require, require_slirp, rootlessport_bin, PersistentNetns, Rootlessport,
};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How many ports each round removes at once, and how many rounds: a
/// single port's race is narrow, so it is tried many times.
const ROUNDS: [(usize, usize); 3] = [(1, 60), (100, 5), (2000, 2)];

/// `n` ports free on 127.0.0.1 for TCP and UDP, from `base` up. Below the
/// ephemeral range (32768 and up), so no other test's client takes one
/// meanwhile; each test has a base of its own.
fn quiet_ports(base: u16, n: usize) -> Vec<u16> {
    // The tests of this file run at once and each checks its ports for
    // strangers: no port is handed to two of them.
    static CLAIMED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    let ports: Vec<u16> = (base..32768)
        .chain(10000..base)
        .filter(|p| !claimed.contains(p))
        .filter(|&p| TcpListener::bind((LOCAL, p)).is_ok() && UdpSocket::bind((LOCAL, p)).is_ok())
        .take(n)
        .collect();
    assert_eq!(ports.len(), n, "no {n} free ports from {base}");
    claimed.extend(&ports);
    ports
}

fn tcp_mapping(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        host_ip: "127.0.0.1".into(),
        container_port,
        host_port,
        range: 1,
        protocol: "tcp".into(),
    }
}

fn key(host_port: u16) -> PortKey {
    PortKey {
        proto: Protocol::Tcp,
        host_ip: Some(LOCAL),
        host_port,
    }
}

/// How a connection to `port` fares: `None` when it is refused. Any other
/// outcome, a completed handshake above all, means something still
/// listens.
fn outcome(port: u16) -> Option<String> {
    match TcpStream::connect_timeout(&SocketAddr::new(LOCAL, port), Duration::from_secs(5)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => None,
        Err(e) => Some(format!("{port}: {e}")),
        Ok(_) => Some(format!("{port}: connected")),
    }
}

/// Whether a connection to `port` is refused.
fn refused(port: u16) -> bool {
    outcome(port).is_none()
}

/// The ports of `removed` that still take connections, checked right
/// after the removal returned: the last ones first, since a forwarder
/// that closes listeners late closes them in order.
fn still_open(removed: &[u16]) -> Vec<String> {
    removed.iter().rev().filter_map(|&p| outcome(p)).collect()
}

/// Whether [`remove_refuses_at_once`] asks to add ports or to remove them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
}

/// Adds `n` ports, checks they listen, removes them all, and asserts each
/// refuses at once; `ROUNDS` times per size. `change` adds or removes.
/// The removal comes right after the add, often before the forwarder has
/// started serving the new listeners; and the other tests of this process
/// start programs meanwhile, whose children hold a copy of every fd until
/// they exec: a listener only closed (not shut down) would keep listening.
/// An add that finds a port taken (by a program outside this test) is
/// tried again on other ports.
fn remove_refuses_at_once(
    what: &str,
    base: u16,
    mut change: impl FnMut(Change, &[u16]) -> Result<(), String>,
) {
    for (n, rounds) in ROUNDS {
        let mut ports = quiet_ports(base, n);
        for round in 0..rounds {
            let mut tries = 0;
            while let Err(e) = change(Change::Add, &ports) {
                tries += 1;
                assert!(
                    e.contains("Address already in use") && tries < 5,
                    "{what}: add failed: {e}"
                );
                ports = quiet_ports(base, n);
            }
            for p in [ports[0], ports[n - 1]] {
                assert!(!refused(p), "{what}: port {p} does not listen after add");
            }
            change(Change::Remove, &ports).unwrap();
            let open = still_open(&ports);
            assert!(
                open.is_empty(),
                "{what}: {} of {n} removed ports still took a connection after remove returned (round {round}): {:?}",
                open.len(),
                &open[..open.len().min(10)]
            );
        }
    }
}

#[test]
fn a_port_removed_through_the_handle_refuses_the_instant_remove_returns() {
    if !require(
        "a_port_removed_through_the_handle_refuses_the_instant_remove_returns",
        can_admin_net(),
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("abuse-handle");
    let child_ip: IpAddr = "10.77.0.1".parse().unwrap();
    let anchor = quiet_ports(21000, 1)[0];
    let config = rootlessport::ForwarderConfig::new(&container.path, child_ip)
        .mapping(tcp_mapping(anchor, 7000))
        .validate()
        .unwrap();
    let forwarder = rootlessport::Forwarder::start(config).unwrap();
    let handle = forwarder.handle();
    let serving = std::thread::spawn(move || forwarder.serve());
    remove_refuses_at_once("ForwarderHandle::remove", 21001, |change, ports| {
        if change == Change::Add {
            let maps: Vec<_> = ports.iter().map(|&p| tcp_mapping(p, 7001)).collect();
            handle.add(&maps).map(drop).map_err(|e| e.to_string())
        } else {
            let keys: Vec<_> = ports.iter().map(|&p| key(p)).collect();
            let now = handle.remove(&keys).unwrap();
            assert_eq!(now.len(), 1, "only the anchor is left");
            Ok(())
        }
    });
    handle.stop();
    serving.join().unwrap().unwrap();
}

/// A TCP connection through `port` that has echoed once: open at both ends.
fn echoing_connection(port: u16) -> TcpStream {
    let mut conn =
        TcpStream::connect_timeout(&SocketAddr::new(LOCAL, port), Duration::from_secs(5)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    conn
}

/// `ForwarderHandle::stop` on a serving forwarder: when it returns, every
/// TCP port refuses, every UDP port can be bound again, a connection open
/// through it is closed, the reload socket is gone and `serve` returns
/// `Ok`. Also stopping before it serves, after it was dropped unserved,
/// and twice. Many rounds: a stop that returned before the listeners are
/// closed would lose the race now and then.
#[test]
fn every_port_refuses_the_instant_stop_returns() {
    if !require(
        "every_port_refuses_the_instant_stop_returns",
        can_admin_net(),
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("abuse-stop");
    tcp_echo(&container, "10.77.0.1:7000");
    udp_echo(&container, "10.77.0.1:7000");
    let child_ip: IpAddr = "10.77.0.1".parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = |ports: &[u16]| {
        let mut config = rootlessport::ForwarderConfig::new(&container.path, child_ip)
            .reload_socket(tmp.path(), "stopping");
        for &p in ports {
            config = config.mapping(PortMapping {
                protocol: "tcp,udp".into(),
                ..tcp_mapping(p, 7000)
            });
        }
        config.validate().unwrap()
    };
    for round in 0..20 {
        let ports = quiet_ports(23000, 50);
        let forwarder = rootlessport::Forwarder::start(config(&ports)).unwrap();
        let reload = forwarder.reload_socket().unwrap().to_owned();
        let handle = forwarder.handle();
        let serving = std::thread::spawn(move || forwarder.serve());
        let mut open = echoing_connection(ports[0]);
        assert!(
            udp_echoes(LOCAL, ports[ports.len() - 1]),
            "round {round}: no UDP echo"
        );
        handle.stop();
        let still = still_open(&ports);
        assert!(
            still.is_empty(),
            "round {round}: {} of {} ports still took a connection after stop returned: {:?}",
            still.len(),
            ports.len(),
            &still[..still.len().min(10)]
        );
        // A UDP socket has no shutdown that frees its port: while a child
        // that another test thread forked has not exec'd yet, its copy of
        // the fd keeps the port bound (the forwarder runs in this process).
        // That window is short; TCP above is checked strictly.
        let deadline = Instant::now() + Duration::from_secs(2);
        let udp_taken = loop {
            let taken: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|&p| UdpSocket::bind((LOCAL, p)).is_err())
                .collect();
            if taken.is_empty() || Instant::now() > deadline {
                break taken;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            udp_taken.is_empty(),
            "round {round}: UDP ports still bound 2 s after stop returned: {udp_taken:?}"
        );
        assert!(
            !reload.exists(),
            "round {round}: {} is left after stop returned",
            reload.display()
        );
        let mut buf = [0u8; 8];
        match open.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("round {round}: the open connection was not closed by stop: {other:?}"),
        }
        serving.join().unwrap().unwrap();
        // Stopped already: at once, and the handle says so.
        handle.stop();
        assert!(matches!(
            handle.list(),
            Err(rootlessport::HandleError::Stopped)
        ));
    }

    // Asked to stop before it serves: `serve` returns all the same.
    let ports = quiet_ports(23100, 2);
    let forwarder = rootlessport::Forwarder::start(config(&ports)).unwrap();
    let handle = forwarder.handle();
    let stopper = std::thread::spawn(move || handle.stop());
    forwarder.serve().unwrap();
    stopper.join().unwrap();
    assert!(still_open(&ports).is_empty(), "stopped before serving");

    // Dropped without serving: a stop returns at once.
    let forwarder = rootlessport::Forwarder::start(config(&ports)).unwrap();
    let handle = forwarder.handle();
    drop(forwarder);
    handle.stop();
    assert!(still_open(&ports).is_empty(), "dropped unserved");
}

/// A network in a fresh namespace with `forwarder`, whose first forward
/// is `anchor`.
fn network(ns: &PersistentNetns, forwarder: ForwarderChoice, anchor: u16) -> slirpnet::Network {
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.forwarder = forwarder;
    opts.ports
        .extend(tcp_mapping(anchor, 7000).expand().unwrap());
    slirpnet::setup(
        Target::Path {
            netns: ns.path.clone(),
            userns: None,
        },
        &opts,
    )
    .unwrap()
}

fn network_remove_refuses_at_once(what: &str, forwarder: ForwarderChoice, base: u16) {
    let ns = PersistentNetns::new(&format!("abuse-net-{base}")).unwrap();
    let anchor = quiet_ports(base, 1)[0];
    let mut net = network(&ns, forwarder, anchor);
    remove_refuses_at_once(what, base + 1, |change, ports| {
        if change == Change::Add {
            let forwards: Vec<_> = ports
                .iter()
                .flat_map(|&p| tcp_mapping(p, 7001).expand().unwrap())
                .collect();
            net.add_ports(&forwards)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            let keys: Vec<_> = ports.iter().map(|&p| key(p)).collect();
            let now = net.remove_ports(&keys).unwrap();
            assert_eq!(now.len(), 1, "only the anchor is left");
            Ok(())
        }
    });
    net.teardown();
}

#[test]
fn a_port_removed_through_the_network_refuses_the_instant_remove_returns() {
    if !require_slirp("a_port_removed_through_the_network_refuses_the_instant_remove_returns") {
        return;
    }
    network_remove_refuses_at_once(
        "Network::remove_ports (in-process)",
        ForwarderChoice::InProcess,
        23500,
    );
    network_remove_refuses_at_once(
        "Network::remove_ports (rootlessport's control socket)",
        ForwarderChoice::Binary(rootlessport_bin()),
        26000,
    );
}

// ---------------------------------------------------------------------------
// Many UDP source ports
// ---------------------------------------------------------------------------

/// A script that runs `program` with `limits` (`ulimit` arguments, such as
/// `-n 1024`) applied first, keeping every inherited fd.
fn with_limits(program: &Path, limits: &[&str]) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("slirpnet-ulimit-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("run-limited");
    let mut script = String::from("#!/bin/sh\nset -e\n");
    for l in limits {
        script.push_str(&format!("ulimit {l}\n"));
    }
    script.push_str(&format!("exec {}\n", program.display()));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

/// The soft and hard "Max open files" of process `pid`.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut words = line["Max open files".len()..].split_whitespace();
    (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    )
}

/// A TCP echo server at `addr` inside `ns`, a thread per connection.
fn tcp_echo(ns: &PersistentNetns, addr: &str) {
    let listener = ns.open().run(|| TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A UDP echo server at `addr` inside `ns`.
fn udp_echo(ns: &PersistentNetns, addr: &str) {
    let server = ns.open().run(|| UdpSocket::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
}

/// One connection to `port` echoes `seed`'s bytes within 5 s.
fn tcp_echoes(port: u16, seed: u64) -> Result<(), String> {
    let data = payload(4096, seed);
    let mut conn =
        TcpStream::connect_timeout(&SocketAddr::new(LOCAL, port), Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    conn.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back)
        .map_err(|e| format!("no echo: {e}"))?;
    if back != data {
        return Err("the echo differs".into());
    }
    Ok(())
}

/// A UDP client on `ip` gets its datagram echoed through `port` within
/// 10 s (resent while no echo comes).
fn udp_echoes(ip: IpAddr, port: u16) -> bool {
    let c = UdpSocket::bind((ip, 0)).unwrap();
    c.connect((LOCAL, port)).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        c.send(b"fresh").unwrap();
        if matches!(c.recv(&mut buf), Ok(5) if &buf[..5] == b"fresh") {
            return true;
        }
    }
    false
}

#[test]
fn thousands_of_udp_source_ports_under_nofile_1024_never_stop_tcp() {
    if !require(
        "thousands_of_udp_source_ports_under_nofile_1024_never_stop_tcp",
        can_admin_net(),
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("abuse-udp");
    tcp_echo(&container, "10.77.0.1:7000");
    udp_echo(&container, "10.77.0.1:5353");
    let ports = quiet_ports(28500, 2);
    let (tcp_port, udp_port) = (ports[0], ports[1]);
    let map = json!([
        {"host_ip": "127.0.0.1", "container_port": 7000, "host_port": tcp_port, "range": 1, "protocol": "tcp"},
        {"host_ip": "127.0.0.1", "container_port": 5353, "host_port": udp_port, "range": 1, "protocol": "udp"},
    ]);
    // podman's limit, soft and hard alike, so raising soft to hard is no
    // way out.
    let (_dir, script) = with_limits(&rootlessport_bin(), &["-n 1024"]);
    let cfg = container.rootlessport_config(map, "10.77.0.1");
    let rp = Rootlessport::start(&script, &cfg).unwrap_or_else(|e| panic!("not ready: {e}"));
    assert_eq!(nofile_of(rp.pid()), ("1024".to_owned(), "1024".to_owned()));
    tcp_echoes(tcp_port, 0).unwrap();

    // 2,000 clients on four loopback addresses, each from a port of its
    // own, all sending to the one UDP forward, round after round; between
    // every 100 of them a new TCP connection must echo.
    let clients: Vec<UdpSocket> = (0..2000)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + (i % 4) as u8);
            let c = UdpSocket::bind((ip, 0)).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let mut failures = Vec::new();
    let mut seed = 1;
    let mut most_fds = 0;
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let _ = c.send_to(format!("{round}/{i}").as_bytes(), (LOCAL, udp_port));
            if i % 100 == 99 {
                most_fds = most_fds.max(rp.fds().len());
                seed += 1;
                if let Err(e) = tcp_echoes(tcp_port, seed) {
                    failures.push(format!("round {round}, after {} clients: {e}", i + 1));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} TCP connections failed while UDP clients flooded: {:?}",
        failures.len(),
        seed - 1,
        &failures[..failures.len().min(5)]
    );
    eprintln!("MOSTFDS {most_fds}");
    // Flows take at most half of what is left under the limit.
    assert!(most_fds < 800, "the forwarder held {most_fds} fds");
    // A new UDP client still gets through: old flows made room.
    assert!(
        udp_echoes("127.0.0.5".parse().unwrap(), udp_port),
        "a new UDP client got no echo after the flood"
    );
    tcp_echoes(tcp_port, 9999).unwrap();
}

#[test]
fn the_program_raises_its_soft_fd_limit_to_the_hard_one() {
    if !require(
        "the_program_raises_its_soft_fd_limit_to_the_hard_one",
        can_admin_net(),
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("abuse-nofile");
    let port = quiet_ports(28600, 1)[0];
    let map = json!([{"host_ip": "127.0.0.1", "container_port": 7000, "host_port": port, "range": 1, "protocol": "tcp"}]);
    let (_dir, script) = with_limits(&rootlessport_bin(), &["-S -n 1024", "-H -n 4096"]);
    let cfg = container.rootlessport_config(map, "10.77.0.1");
    let rp = Rootlessport::start(&script, &cfg).unwrap_or_else(|e| panic!("not ready: {e}"));
    assert_eq!(nofile_of(rp.pid()), ("4096".to_owned(), "4096".to_owned()));
}

#[test]
fn a_forwarder_out_of_fds_resets_new_connections_and_recovers() {
    if !require(
        "a_forwarder_out_of_fds_resets_new_connections_and_recovers",
        can_admin_net(),
    ) {
        return;
    }
    let container = PersistentNetns::with_veth("abuse-emfile");
    tcp_echo(&container, "10.77.0.1:7000");
    let port = quiet_ports(28700, 1)[0];
    let map = json!([{"host_ip": "127.0.0.1", "container_port": 7000, "host_port": port, "range": 1, "protocol": "tcp"}]);
    let (_dir, script) = with_limits(&rootlessport_bin(), &["-n 64"]);
    let cfg = container.rootlessport_config(map, "10.77.0.1");
    let rp = Rootlessport::start(&script, &cfg).unwrap_or_else(|e| panic!("not ready: {e}"));
    // Connections held open until the forwarder has no fd left: each new
    // one is then served or reset, never left waiting.
    let mut held = Vec::new();
    let mut reset = 0;
    for i in 0..200 {
        // A connection reset before connect returns is as good as one
        // reset later.
        let mut conn =
            match TcpStream::connect_timeout(&SocketAddr::new(LOCAL, port), Duration::from_secs(5))
            {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    reset += 1;
                    continue;
                }
                Err(e) => panic!("connection {i}: {e}"),
            };
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = conn.write_all(b"x");
        let mut b = [0u8; 1];
        match conn.read(&mut b) {
            Ok(1) => held.push(conn),
            Ok(_) => reset += 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "connection {i} ({} held open, {reset} reset) waited 5 s for nothing: accepted by the kernel, never served",
                    held.len()
                )
            }
            Err(_) => reset += 1,
        }
        if reset >= 10 {
            break;
        }
    }
    assert!(
        reset >= 10,
        "the forwarder never ran out of fds ({} held)",
        held.len()
    );
    assert!(rp.fds().len() <= 64);
    // Once the clients go, new connections are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = tcp_echoes(port, 7) {
        assert!(
            Instant::now() < deadline,
            "not served again after the clients left: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
