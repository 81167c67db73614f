//! rootlessport keeping client addresses (`ROOTLESSPORT_KEEP_SOURCE_IP=1`).
//!
//! The forwarder runs in a namespace that plays the host; clients live in a
//! third namespace joined to it by a veth pair (192.0.2.1 and 2001:db8::1 on
//! the host's end, 192.0.2.2 and 2001:db8::2 on the client's), and services
//! in the container namespace (10.77.0.1 and .2, fd77::1 and ::2 on a veth
//! pair inside) answer every client with the address and port they saw it
//! come from. Rules and routes inside are read with `ip`.

use std::collections::BTreeSet;
use std::io::{IoSliceMut, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::socket::{
    bind, listen, recvmsg, setsockopt, socket, sockopt, AddressFamily, Backlog,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrStorage,
};
use rootlessport::source_ip::{PRIORITY, SLOTS, TABLE_BASE};
use serde_json::json;
use slirp_proc::Exit;
use slirpnet_tests::require_net_admin;
use slirpnet_tests::{copy_by_child, require, rootlessport_bin, PersistentNetns, Rootlessport};

/// The programs these tests run besides the forwarder.
const TOOLS: &[&str] = &["nsenter", "ip", "setpriv", "unshare"];

/// Longest wait for any one answer: a failure, never a pause.
const TIMEOUT: Duration = Duration::from_secs(10);

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Runs `work` on a thread inside the namespace at `ns`.
fn in_ns<T: Send>(ns: &Path, work: impl FnOnce() -> T + Send) -> T {
    netns_util::Netns::open(ns).unwrap().run(work).unwrap()
}

/// `ip ARGS` inside the namespace at `ns`; its stdout.
fn ip_in(ns: &Path, args: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("ip")
        .args(args.split(' '))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args} in {}: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rules and routes inside `ns` that belong to a forwarder's table,
/// as `ip` shows them.
fn forwarder_state(ns: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for args in [
        "-4 rule show",
        "-6 rule show",
        "-4 route show table all",
        "-6 route show table all",
    ] {
        lines.extend(
            ip_in(ns, args)
                .lines()
                .filter(|l| !tables_of(l).is_empty())
                .map(|l| format!("ip {args}: {}", l.trim())),
        );
    }
    lines
}

/// The forwarder tables a line of `ip` output names.
fn tables_of(line: &str) -> BTreeSet<u32> {
    line.split_whitespace()
        .filter_map(|w| w.parse::<u32>().ok())
        .filter(|n| (TABLE_BASE..TABLE_BASE + SLOTS).contains(n))
        .collect()
}

fn tables(state: &[String]) -> BTreeSet<u32> {
    state.iter().flat_map(|l| tables_of(l)).collect()
}

/// A socket bound inside `ns` with SO_REUSEADDR and SO_REUSEPORT (so the
/// service can also open connections from its published port), listening
/// for TCP. `[::]` is dual-stack.
fn bound(ns: &Path, at: SocketAddr, tcp: bool) -> OwnedFd {
    in_ns(ns, move || {
        let family = if at.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let ty = if tcp {
            SockType::Stream
        } else {
            SockType::Datagram
        };
        let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
        setsockopt(&fd, sockopt::ReusePort, &true).unwrap();
        if at.is_ipv6() {
            setsockopt(&fd, sockopt::Ipv6V6Only, &false).unwrap();
        }
        bind(fd.as_raw_fd(), &SockaddrStorage::from(at)).unwrap();
        if tcp {
            listen(&fd, Backlog::new(64).unwrap()).unwrap();
        }
        fd
    })
}

/// `addr` with an IPv4-mapped address written as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// A TCP service inside `ns` at `at`: each connection first gets a line
/// `<peer> <local>`, then everything it sends echoed back.
fn tcp_service(ns: &Path, at: SocketAddr) {
    let listener = TcpListener::from(bound(ns, at, true));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let (peer, local) = (c.peer_addr().unwrap(), c.local_addr().unwrap());
                let _ = writeln!(c, "{} {}", canonical(peer), canonical(local));
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A UDP service inside `ns` at `at` (a socket bound to all addresses
/// answers without choosing its source: the hardest case) that answers
/// every datagram with `<peer> <local>`. Returns its socket, for sending
/// from the published port.
fn udp_service(ns: &Path, at: SocketAddr) -> UdpSocket {
    let fd = bound(ns, at, false);
    if at.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true).unwrap();
    } else {
        setsockopt(&fd, sockopt::Ipv4PacketInfo, &true).unwrap();
    }
    let socket = UdpSocket::from(fd);
    let server = socket.try_clone().unwrap();
    std::thread::spawn(move || loop {
        let mut buf = [0u8; 2048];
        let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<SockaddrStorage>(
            server.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) else {
            return;
        };
        let mut local = None;
        for c in msg.cmsgs().into_iter().flatten() {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    local = Some(IpAddr::from(u32::from_be(i.ipi_addr.s_addr).to_be_bytes()));
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    local = Some(IpAddr::from(i.ipi6_addr.s6_addr).to_canonical());
                }
                _ => {}
            }
        }
        let Some(from) = msg.address.and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::V4((*v4).into()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
        }) else {
            continue;
        };
        let local = local.map_or("?".to_owned(), |l| {
            SocketAddr::new(l, at.port()).to_string()
        });
        let _ = server.send_to(format!("{} {local}", canonical(from)).as_bytes(), from);
    });
    socket
}

/// What a service said about a caller: the address and port it saw the
/// caller come from, and its own address.
#[derive(Debug)]
struct Seen {
    peer: SocketAddr,
    local: SocketAddr,
}

fn parse_seen(text: &str) -> Seen {
    let mut words = text.split_whitespace();
    let (Some(peer), Some(local)) = (words.next(), words.next()) else {
        panic!("the service said {text:?}");
    };
    Seen {
        peer: addr(peer),
        local: addr(local),
    }
}

/// A TCP connection from inside `ns` to `to`: the stream (echoing), its own
/// address, and what the service saw.
fn tcp_call(ns: &Path, to: SocketAddr) -> (TcpStream, SocketAddr, Seen) {
    let mut c = in_ns(ns, move || TcpStream::connect_timeout(&to, TIMEOUT))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match c.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            other => panic!("TCP to {to}: no line from the service ({other:?})"),
        }
    }
    let me = canonical(c.local_addr().unwrap());
    (c, me, parse_seen(&String::from_utf8_lossy(&line)))
}

/// Echo through a connection made by [`tcp_call`].
fn echoes(c: &mut TcpStream, text: &str) {
    c.write_all(text.as_bytes()).unwrap();
    let mut back = vec![0u8; text.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, text.as_bytes());
}

/// One UDP exchange from a socket inside `ns` to `to`: its own address and
/// what the service saw.
fn udp_call(ns: &Path, to: SocketAddr) -> (SocketAddr, Seen) {
    let c = in_ns(ns, move || {
        let any: SocketAddr = if to.is_ipv6() {
            addr("[::]:0")
        } else {
            addr("0.0.0.0:0")
        };
        let c = UdpSocket::bind(any)?;
        c.connect(to)?;
        Ok::<_, std::io::Error>(c)
    })
    .unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send(b"who am I").unwrap();
    let mut buf = [0u8; 512];
    let n = c
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("UDP to {to}: no answer: {e}"));
    (
        canonical(c.local_addr().unwrap()),
        parse_seen(&String::from_utf8_lossy(&buf[..n])),
    )
}

/// The service must have seen the caller's own address and port.
fn assert_kept(what: &str, me: SocketAddr, seen: &Seen) {
    assert_eq!(
        seen.peer, me,
        "{what}: the service saw {} instead of the client's own address",
        seen.peer
    );
}

/// The service must have seen the namespace's own address (the child IP),
/// as without keeping client addresses.
fn assert_namespace_address(what: &str, child: IpAddr, seen: &Seen) {
    assert_eq!(
        seen.peer.ip(),
        child,
        "{what}: the service saw {} instead of the namespace's own address",
        seen.peer
    );
}

/// The container, the host that runs the forwarder, and the client.
struct World {
    container: PersistentNetns,
    host: PersistentNetns,
    client: PersistentNetns,
}

impl World {
    fn new(name: &str) -> Self {
        let container = PersistentNetns::with_veth(&format!("{name}-c"));
        let host = PersistentNetns::new(&format!("{name}-h")).unwrap();
        let client = PersistentNetns::new(&format!("{name}-k")).unwrap();
        host.ip("link set lo up");
        client.ip("link set lo up");
        host.ip(&format!(
            "link add k0 type veth peer name k1 netns {}",
            client.name()
        ));
        for args in [
            "addr add 192.0.2.1/24 dev k0",
            "addr add 2001:db8::1/64 dev k0 nodad",
            "link set k0 up",
        ] {
            host.ip(args);
        }
        for args in [
            "addr add 192.0.2.2/24 dev k1",
            "addr add 2001:db8::2/64 dev k1 nodad",
            "link set k1 up",
        ] {
            client.ip(args);
        }
        World {
            container,
            host,
            client,
        }
    }

    fn c(&self) -> &Path {
        &self.container.path
    }

    fn k(&self) -> &Path {
        &self.client.path
    }

    /// A forwarder in the host namespace, keeping client addresses.
    fn forwarder(&self, cfg: &str) -> Forwarder {
        Forwarder::start(&self.host.path, cfg, Launch::Keep)
    }
}

/// How the forwarder is started.
#[derive(Debug, Clone)]
enum Launch {
    /// With ROOTLESSPORT_KEEP_SOURCE_IP=1.
    Keep,
    /// Keeping, without CAP_NET_ADMIN.
    KeepWithoutNetAdmin,
    /// Keeping, inside the user namespace at this path.
    KeepInUserns(PathBuf),
}

/// A forwarder started as podman starts it, inside a given namespace, with
/// its log in a file.
struct Forwarder {
    rp: Rootlessport,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Forwarder {
    fn start(host: &Path, cfg: &str, launch: Launch) -> Self {
        use std::os::unix::fs::PermissionsExt;
        // Where every user can run it (a forwarder in a user namespace runs
        // as nobody).
        let dir = tempfile::Builder::new()
            .prefix("sip-forwarder-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("rootlessport");
        copy_by_child(&rootlessport_bin(), &bin).unwrap();
        let log = dir.path().join("stderr.log");
        let (nsenter, prefix) = match &launch {
            Launch::Keep => (String::new(), String::new()),
            Launch::KeepWithoutNetAdmin => (
                String::new(),
                "setpriv --bounding-set=-net_admin --inh-caps=-net_admin --".to_owned(),
            ),
            Launch::KeepInUserns(userns) => (format!("--user={}", userns.display()), String::new()),
        };
        let draft = dir.path().join("launch.draft");
        std::fs::write(
            &draft,
            format!(
                "#!/bin/sh\nROOTLESSPORT_KEEP_SOURCE_IP=1\nexport ROOTLESSPORT_KEEP_SOURCE_IP\nexec nsenter --net={} {nsenter} {prefix} {} 2>>{}\n",
                host.display(),
                bin.display(),
                log.display()
            ),
        )
        .unwrap();
        let script = dir.path().join("launch");
        copy_by_child(&draft, &script).unwrap();
        for runnable in [&bin, &script] {
            std::fs::set_permissions(runnable, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let rp = Rootlessport::start(&script, cfg).unwrap_or_else(|e| {
            panic!(
                "not ready: {e}; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Forwarder { rp, log, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" WARN "))
            .map(str::to_owned)
            .collect()
    }

    /// Stops it as podman does and checks it exited cleanly.
    fn stop(mut self) {
        assert_eq!(
            self.rp.stop(Duration::from_secs(5)).unwrap(),
            Exit::Code(0),
            "log: {}",
            self.log()
        );
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.rp.pid() as i32), signal).unwrap();
    }
}

/// rootlessport's configuration: forward `mappings` into `netns` to
/// `child_ip`, with a reload socket when `reload` names a directory.
fn config(
    netns: &Path,
    mappings: serde_json::Value,
    child_ip: &str,
    reload: Option<&Path>,
) -> String {
    json!({
        "Mappings": mappings,
        "NetNSPath": netns,
        "ExitFD": 3,
        "ReadyFD": 4,
        "TmpDir": reload.unwrap_or(Path::new("/tmp")),
        "ChildIP": child_ip,
        "ContainerID": "5eedc0ffee",
        "RootlessCNI": reload.is_some(),
    })
    .to_string()
}

/// One mapping for all host addresses.
fn map(host_port: u16, container_port: u16, range: u16, protocol: &str) -> serde_json::Value {
    json!({"host_ip": "", "container_port": container_port, "host_port": host_port, "range": range, "protocol": protocol})
}

#[test]
fn ipv4_clients_are_seen_with_their_own_address_over_tcp_and_udp() {
    if !require_net_admin(
        "ipv4_clients_are_seen_with_their_own_address_over_tcp_and_udp",
        TOOLS,
    ) {
        return;
    }
    let w = World::new("sip-v4");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let fwd = w.forwarder(&config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
        "10.77.0.1",
        None,
    ));
    for round in 0..3 {
        // The first connection makes the client's route; the next find it.
        let (mut c, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
        assert_kept(&format!("TCP, connection {round}"), me, &seen);
        assert_eq!(seen.local, addr("10.77.0.1:8000"));
        echoes(&mut c, "data both ways");
        let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
        assert_kept(&format!("UDP, flow {round}"), me, &seen);
    }
    // An IPv6 client cannot be shown to an IPv4 child IP: it keeps
    // today's behaviour.
    let (_c, _, seen) = tcp_call(w.k(), addr("[2001:db8::1]:8080"));
    assert_namespace_address("IPv6 client, IPv4 child", ip("10.77.0.1"), &seen);
    let (_, seen) = udp_call(w.k(), addr("[2001:db8::1]:8053"));
    assert_namespace_address("IPv6 UDP client, IPv4 child", ip("10.77.0.1"), &seen);
    assert!(fwd.warnings().is_empty(), "{}", fwd.log());
    fwd.stop();
}

#[test]
fn ipv6_clients_are_seen_with_their_own_address_over_tcp_and_udp() {
    if !require_net_admin(
        "ipv6_clients_are_seen_with_their_own_address_over_tcp_and_udp",
        TOOLS,
    ) {
        return;
    }
    let w = World::new("sip-v6");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let fwd = w.forwarder(&config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp,udp"), map(8053, 5353, 1, "udp")]),
        "fd77::1",
        None,
    ));
    for round in 0..3 {
        let (mut c, me, seen) = tcp_call(w.k(), addr("[2001:db8::1]:8080"));
        assert_kept(&format!("TCP, connection {round}"), me, &seen);
        assert_eq!(seen.local, addr("[fd77::1]:8000"));
        echoes(&mut c, "data both ways");
        let (me, seen) = udp_call(w.k(), addr("[2001:db8::1]:8053"));
        assert_kept(&format!("UDP, flow {round}"), me, &seen);
    }
    let (_c, _, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_namespace_address("IPv4 client, IPv6 child", ip("fd77::1"), &seen);
    fwd.stop();
}

#[test]
fn loopback_clients_keep_the_namespaces_own_address() {
    if !require_net_admin("loopback_clients_keep_the_namespaces_own_address", TOOLS) {
        return;
    }
    // CVE-2021-20199: a service must never see a loopback peer for a
    // forwarded connection. Clients on the host's loopback (IPv4, IPv6 and
    // IPv4-mapped) keep today's behaviour; a real client still keeps its
    // address alongside.
    let w = World::new("sip-lo");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let maps = json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]);
    let h = w.host.path.clone();
    for (child, loopbacks) in [
        (
            "10.77.0.1",
            ["127.0.0.1", "127.0.0.2", "[::ffff:127.0.0.1]"],
        ),
        ("fd77::1", ["[::1]", "[::1]", "[::1]"]),
    ] {
        let fwd = w.forwarder(&config(w.c(), maps.clone(), child, None));
        for lo in loopbacks {
            let (_c, _, seen) = tcp_call(&h, addr(&format!("{lo}:8080")));
            assert_namespace_address(&format!("TCP from {lo}"), ip(child), &seen);
            let (_, seen) = udp_call(&h, addr(&format!("{lo}:8053")));
            assert_namespace_address(&format!("UDP from {lo}"), ip(child), &seen);
        }
        let real = if child.contains(':') {
            "[2001:db8::1]"
        } else {
            "192.0.2.1"
        };
        let (_c, me, seen) = tcp_call(w.k(), addr(&format!("{real}:8080")));
        assert_kept("a real client next to them", me, &seen);
        // The real client's is the only route.
        let state = forwarder_state(w.c());
        let routes: Vec<&String> = state.iter().filter(|l| l.contains("route show")).collect();
        assert!(
            routes.len() == 1
                && (routes[0].contains("local 192.0.2.2 ")
                    || routes[0].contains("local 2001:db8::2 ")),
            "routes other than the real client's: {state:#?}"
        );
        fwd.stop();
    }
}

#[test]
fn every_port_of_a_range_keeps_the_clients_address() {
    if !require_net_admin("every_port_of_a_range_keeps_the_clients_address", TOOLS) {
        return;
    }
    let w = World::new("sip-range");
    for i in 0..4 {
        tcp_service(w.c(), addr(&format!("[::]:{}", 9100 + i)));
        udp_service(w.c(), addr(&format!("[::]:{}", 9100 + i)));
    }
    let fwd = w.forwarder(&config(
        w.c(),
        json!([map(8100, 9100, 4, "tcp,udp")]),
        "10.77.0.1",
        None,
    ));
    for i in 0..4u16 {
        let to = addr(&format!("192.0.2.1:{}", 8100 + i));
        let (_c, me, seen) = tcp_call(w.k(), to);
        assert_kept(&format!("TCP to {to}"), me, &seen);
        assert_eq!(seen.local.port(), 9100 + i);
        let (me, seen) = udp_call(w.k(), to);
        assert_kept(&format!("UDP to {to}"), me, &seen);
        assert_eq!(seen.local.port(), 9100 + i);
    }
    // One rule per protocol for the whole range, for the child IP.
    let state = forwarder_state(w.c());
    for want in [
        "from 10.77.0.1 ipproto tcp sport 9100-9103",
        "from 10.77.0.1 ipproto udp sport 9100-9103",
        "iif lo ipproto udp sport 9100-9103",
    ] {
        assert!(
            state.iter().any(|l| l.contains(want)),
            "no rule {want:?}: {state:#?}"
        );
    }
    fwd.stop();
}

#[test]
fn replies_still_come_back_after_a_reload_to_a_new_child_ip() {
    if !require_net_admin(
        "replies_still_come_back_after_a_reload_to_a_new_child_ip",
        TOOLS,
    ) {
        return;
    }
    let w = World::new("sip-reload");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let tmp = tempfile::tempdir().unwrap();
    let fwd = w.forwarder(&config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
        "10.77.0.1",
        Some(tmp.path()),
    ));
    let (mut before, me_before, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP before the reload", me_before, &seen);
    assert_eq!(seen.local, addr("10.77.0.1:8000"));
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
    assert_kept("UDP before the reload", me, &seen);
    assert_eq!(seen.local, addr("10.77.0.1:5353"));

    rootlessport::reload(tmp.path(), "5eedc0ffee", "10.77.0.2").unwrap();

    // New connections and flows go to the new child IP, from the client.
    let (mut after, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP after the reload", me, &seen);
    assert_eq!(seen.local, addr("10.77.0.2:8000"));
    echoes(&mut after, "new child");
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
    assert_kept("UDP after the reload", me, &seen);
    assert_eq!(seen.local, addr("10.77.0.2:5353"));
    // The connection made before still gets its replies.
    echoes(&mut before, "old child");
    let state = forwarder_state(w.c());
    for want in ["from 10.77.0.1 ipproto tcp", "from 10.77.0.2 ipproto tcp"] {
        assert!(
            state.iter().any(|l| l.contains(want)),
            "no rule {want:?}: {state:#?}"
        );
    }
    // The client's route was made again with the new child IP as its
    // preferred source, and the old one is gone.
    let routes: Vec<&String> = state
        .iter()
        .filter(|l| l.contains("local 192.0.2.2 "))
        .collect();
    assert!(
        routes.len() == 1 && format!("{} ", routes[0]).contains(" src 10.77.0.2 "),
        "{state:#?}"
    );
    drop((before, after));
    fwd.stop();
    assert_eq!(forwarder_state(w.c()), Vec::<String>::new());
}

#[test]
fn the_services_own_traffic_from_a_published_port_leaves_by_the_default_route() {
    if !require_net_admin(
        "the_services_own_traffic_from_a_published_port_leaves_by_the_default_route",
        TOOLS,
    ) {
        return;
    }
    // Only replies to clients are diverted. An NTP or SIP server talking
    // to its upstream from its published port, or a TCP connection it
    // opens from that port, goes by the namespace's default route, here a
    // veth to an "upstream" namespace.
    let w = World::new("sip-up");
    let up = PersistentNetns::new("sip-up-u").unwrap();
    w.container.ip(&format!(
        "link add u0 type veth peer name u1 netns {}",
        up.name()
    ));
    for args in [
        "addr add 10.88.0.1/24 dev u0",
        "addr add fd88::1/64 dev u0 nodad",
        "link set u0 up",
        "route add default via 10.88.0.2",
        "-6 route add default via fd88::2",
    ] {
        w.container.ip(args);
    }
    for args in [
        "link set lo up",
        "addr add 10.88.0.2/24 dev u1",
        "addr add fd88::2/64 dev u1 nodad",
        "link set u1 up",
        "addr add 203.0.113.7/32 dev lo",
        "addr add 2001:db8:7::7/128 dev lo nodad",
        "route add 10.77.0.0/24 via 10.88.0.1",
        "-6 route add fd77::/64 via fd88::1",
    ] {
        up.ip(args);
    }
    let upstream_udp = in_ns(&up.path, || UdpSocket::bind("[::]:123")).unwrap();
    upstream_udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let upstream_tcp = in_ns(&up.path, || TcpListener::bind("[::]:9000")).unwrap();
    tcp_service(w.c(), addr("[::]:8000"));
    let udp = udp_service(w.c(), addr("[::]:5060"));
    for (child, client_to, upstream) in [
        ("10.77.0.1", "192.0.2.1", "203.0.113.7"),
        ("fd77::1", "[2001:db8::1]", "[2001:db8:7::7]"),
    ] {
        let fwd = w.forwarder(&config(
            w.c(),
            json!([map(8080, 8000, 1, "tcp"), map(8060, 5060, 1, "udp")]),
            child,
            None,
        ));
        // Clients on both protocols, so that their routes exist now.
        let (mut c, me, seen) = tcp_call(w.k(), addr(&format!("{client_to}:8080")));
        assert_kept("TCP client", me, &seen);
        let (me, seen) = udp_call(w.k(), addr(&format!("{client_to}:8060")));
        assert_kept("UDP client", me, &seen);

        // UDP from the published port (a socket bound to all addresses).
        let to_upstream = addr(&format!("{upstream}:123"));
        udp.send_to(b"upstream, from 5060", to_upstream).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = upstream_udp
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{child}: the upstream got nothing from port 5060: {e}"));
        assert_eq!(&buf[..n], b"upstream, from 5060");
        assert_eq!(from.port(), 5060);

        // TCP opened from the published port and the child IP.
        let from_port = SocketAddr::new(ip(child), 8000);
        let mut out = in_ns(w.c(), move || {
            let family = if from_port.is_ipv6() {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
            setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
            setsockopt(&fd, sockopt::ReusePort, &true).unwrap();
            bind(fd.as_raw_fd(), &SockaddrStorage::from(from_port)).unwrap();
            let to = addr(&format!("{upstream}:9000"));
            nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to))
                .map(|()| TcpStream::from(fd))
        })
        .unwrap_or_else(|e| panic!("{child}: connecting to the upstream from port 8000: {e}"));
        let (mut inside, peer) = upstream_tcp.accept().unwrap();
        assert_eq!(canonical(peer), from_port);
        out.write_all(b"hello upstream").unwrap();
        let mut got = [0u8; 14];
        inside.set_read_timeout(Some(TIMEOUT)).unwrap();
        inside.read_exact(&mut got).unwrap();
        inside.write_all(b"hello service").unwrap();
        let mut back = [0u8; 13];
        out.set_read_timeout(Some(TIMEOUT)).unwrap();
        out.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello service");
        // And the client still gets its replies.
        echoes(&mut c, "still here");
        drop((c, out, inside));
        fwd.stop();
    }
}

#[test]
fn nothing_is_left_inside_after_exit_or_sigterm() {
    if !require_net_admin("nothing_is_left_inside_after_exit_or_sigterm", TOOLS) {
        return;
    }
    let w = World::new("sip-tidy");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let cfg = config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
        "10.77.0.1",
        None,
    );
    assert_eq!(forwarder_state(w.c()), Vec::<String>::new());
    for stop_with_sigterm in [false, true] {
        let fwd = w.forwarder(&cfg);
        let (_c, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
        assert_kept("TCP", me, &seen);
        let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
        assert_kept("UDP", me, &seen);
        let state = forwarder_state(w.c());
        assert!(
            state.iter().any(|l| l.contains("local 192.0.2.2 dev lo")),
            "no route for the client: {state:#?}"
        );
        assert!(
            state.iter().all(|l| l.contains("proto 82")),
            "unmarked: {state:#?}"
        );
        if stop_with_sigterm {
            fwd.signal(nix::sys::signal::Signal::SIGTERM);
            let mut fwd = fwd;
            assert_eq!(
                fwd.rp.exited_within(Duration::from_secs(5)),
                Some(Exit::Code(0)),
                "SIGTERM did not stop it cleanly: {}",
                fwd.log()
            );
        } else {
            fwd.stop();
        }
        assert_eq!(
            forwarder_state(w.c()),
            Vec::<String>::new(),
            "left behind (sigterm: {stop_with_sigterm})"
        );
    }
}

#[test]
fn what_a_killed_forwarder_left_is_cleared_by_the_next_one() {
    if !require_net_admin(
        "what_a_killed_forwarder_left_is_cleared_by_the_next_one",
        TOOLS,
    ) {
        return;
    }
    let w = World::new("sip-kill");
    tcp_service(w.c(), addr("[::]:8000"));
    tcp_service(w.c(), addr("[::]:8001"));
    let cfg = |port: u16, container: u16| {
        config(
            w.c(),
            json!([map(port, container, 1, "tcp")]),
            "10.77.0.1",
            None,
        )
    };
    // Two forwarders, both SIGKILLed with a client each: two slots' rules
    // and routes stay behind.
    let mut killed = Vec::new();
    for (port, container) in [(8080, 8000), (8081, 8001)] {
        let fwd = w.forwarder(&cfg(port, container));
        let (c, me, seen) = tcp_call(w.k(), addr(&format!("192.0.2.1:{port}")));
        assert_kept("TCP", me, &seen);
        killed.push((fwd, c));
    }
    for (mut fwd, _connection) in killed {
        fwd.signal(nix::sys::signal::Signal::SIGKILL);
        assert_eq!(
            fwd.rp.exited_within(Duration::from_secs(5)),
            Some(Exit::Signal(9))
        );
    }
    let left = forwarder_state(w.c());
    assert_eq!(tables(&left).len(), 2, "{left:#?}");
    // The next forwarder for the namespace clears both (its own slot and
    // the other dead one) before it adds its own.
    let next = w.forwarder(&cfg(8080, 8000));
    let state = forwarder_state(w.c());
    assert_eq!(tables(&state).len(), 1, "{state:#?}");
    assert!(
        !state.iter().any(|l| l.contains("local 192.0.2.2")),
        "a dead forwarder's client route survived: {state:#?}"
    );
    let (c, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP through the next forwarder", me, &seen);
    drop(c);
    next.stop();
    assert_eq!(forwarder_state(w.c()), Vec::<String>::new());
}

#[test]
fn two_forwarders_on_one_namespace_keep_out_of_each_others_way() {
    if !require_net_admin(
        "two_forwarders_on_one_namespace_keep_out_of_each_others_way",
        TOOLS,
    ) {
        return;
    }
    let w = World::new("sip-two");
    tcp_service(w.c(), addr("[::]:8000"));
    tcp_service(w.c(), addr("[::]:8001"));
    udp_service(w.c(), addr("[::]:5353"));
    udp_service(w.c(), addr("[::]:5354"));
    let a = w.forwarder(&config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
        "10.77.0.1",
        None,
    ));
    let b = w.forwarder(&config(
        w.c(),
        json!([map(8081, 8001, 1, "tcp"), map(8054, 5354, 1, "udp")]),
        "10.77.0.1",
        None,
    ));
    // The same client through both at once.
    let (mut ca, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP through A", me, &seen);
    let (mut cb, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8081"));
    assert_kept("TCP through B", me, &seen);
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8054"));
    assert_kept("UDP through B", me, &seen);
    let both = forwarder_state(w.c());
    let tables_of_both = tables(&both);
    assert_eq!(tables_of_both.len(), 2, "{both:#?}");
    echoes(&mut ca, "A");
    // A stops: B and its connection go on, and keep client addresses.
    drop(ca);
    a.stop();
    echoes(&mut cb, "B after A stopped");
    let (c, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8081"));
    assert_kept("a new TCP connection through B", me, &seen);
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8054"));
    assert_kept("UDP through B after A stopped", me, &seen);
    let only_b = forwarder_state(w.c());
    assert_eq!(tables(&only_b).len(), 1, "{only_b:#?}");
    assert!(
        only_b.iter().any(|l| l.contains("local 192.0.2.2")),
        "B lost its client's route: {only_b:#?}"
    );
    // A new forwarder next to the live B takes a slot of its own.
    let a2 = w.forwarder(&config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp")]),
        "10.77.0.1",
        None,
    ));
    let (c2, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP through a new A", me, &seen);
    echoes(&mut cb, "B after a new A");
    assert_eq!(tables(&forwarder_state(w.c())).len(), 2);
    drop((cb, c, c2));
    b.stop();
    a2.stop();
    assert_eq!(forwarder_state(w.c()), Vec::<String>::new());
}

#[test]
fn without_cap_net_admin_it_forwards_as_before_after_one_warning() {
    if !require_net_admin(
        "without_cap_net_admin_it_forwards_as_before_after_one_warning",
        TOOLS,
    ) {
        return;
    }
    let w = World::new("sip-nocap");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let fwd = Forwarder::start(
        &w.host.path,
        &config(
            w.c(),
            json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
            "10.77.0.1",
            None,
        ),
        Launch::KeepWithoutNetAdmin,
    );
    for _ in 0..2 {
        let (mut c, _, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
        assert_namespace_address("TCP", ip("10.77.0.1"), &seen);
        echoes(&mut c, "forwarding goes on");
        let (_, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
        assert_namespace_address("UDP", ip("10.77.0.1"), &seen);
    }
    let warnings = fwd.warnings();
    assert_eq!(warnings.len(), 1, "{}", fwd.log());
    assert!(
        warnings[0].contains("not keeping client addresses")
            && warnings[0].contains("CAP_NET_ADMIN"),
        "{warnings:?}"
    );
    assert_eq!(forwarder_state(w.c()), Vec::<String>::new());
    fwd.stop();
}

/// A user namespace owning a network namespace, made by an unprivileged
/// user and held by a `sleep`.
struct RootlessNs {
    holder: std::process::Child,
}

impl RootlessNs {
    fn new() -> Self {
        let holder = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "unshare",
                "--user",
                "--map-root-user",
                "--net",
                "--",
                "sleep",
                "3600",
            ])
            .spawn()
            .unwrap();
        let ns = RootlessNs { holder };
        let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        // unshare runs before exec: wait until sleep runs in the new ones.
        while std::fs::read_link(ns.proc("user")).is_ok_and(|l| l == ours)
            || !std::fs::read_link(format!("/proc/{}/exe", ns.holder.id()))
                .is_ok_and(|e| e.ends_with("sleep"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare did not start"
            );
            std::thread::yield_now();
        }
        ns
    }

    fn proc(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.holder.id()))
    }
}

impl Drop for RootlessNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn rootless_a_forwarder_in_the_owning_user_namespace_keeps_addresses() {
    let check = (|| {
        anyhow::ensure!(
            Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "unshare",
                    "--user",
                    "--map-root-user",
                    "true"
                ])
                .status()?
                .success(),
            "unprivileged user namespaces are not allowed here"
        );
        Ok(())
    })();
    if !require_net_admin(
        "rootless_a_forwarder_in_the_owning_user_namespace_keeps_addresses",
        TOOLS,
    ) || !require(
        "rootless_a_forwarder_in_the_owning_user_namespace_keeps_addresses",
        check,
    ) {
        return;
    }
    // The container's namespace belongs to a user namespace an unprivileged
    // user made; the forwarder runs in that user namespace (as podman runs
    // it), so it has CAP_NET_ADMIN over the container's namespace only.
    let w = World::new("sip-rootless");
    let rootless = RootlessNs::new();
    let c = rootless.proc("net");
    for args in [
        "link set lo up",
        "link add v0 type veth peer name v1",
        "addr add 10.77.0.1/24 dev v0",
        "link set v0 up",
        "link set v1 up",
    ] {
        ip_in(&c, args);
    }
    tcp_service(&c, addr("[::]:8000"));
    udp_service(&c, addr("[::]:5353"));
    let fwd = Forwarder::start(
        &w.host.path,
        &config(
            &c,
            json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
            "10.77.0.1",
            None,
        ),
        Launch::KeepInUserns(rootless.proc("user")),
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", fwd.rp.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "the forwarder is not the unprivileged user: {status}"
    );
    let (mut conn, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP, rootless", me, &seen);
    echoes(&mut conn, "rootless");
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
    assert_kept("UDP, rootless", me, &seen);
    assert!(fwd.warnings().is_empty(), "{}", fwd.log());
    assert!(!forwarder_state(&c).is_empty());
    drop(conn);
    fwd.stop();
    assert_eq!(forwarder_state(&c), Vec::<String>::new());
}

#[test]
fn containers_behind_veths_as_on_rootless_cni_networks_keep_addresses_across_a_reload() {
    if !require_net_admin(
        "containers_behind_veths_as_on_rootless_cni_networks_keep_addresses_across_a_reload",
        TOOLS,
    ) {
        return;
    }
    // As with podman's rootless netavark/CNI networks, the forwarder works in
    // a namespace of its own (the rootless-netns) and the child IP belongs
    // to a container in another namespace, reached through a veth: the
    // container's replies arrive forwarded, with their source set. A
    // reload moves the forward to a second container.
    let w = World::new("sip-cni");
    let x = PersistentNetns::new("sip-cni-x").unwrap();
    let y = PersistentNetns::new("sip-cni-y").unwrap();
    for (peer, dev, net) in [(&x, "r0", "10.89.0"), (&y, "r1", "10.89.1")] {
        w.container.ip(&format!(
            "link add {dev} type veth peer name eth0 netns {}",
            peer.name()
        ));
        w.container.ip(&format!("addr add {net}.1/30 dev {dev}"));
        w.container.ip(&format!("link set {dev} up"));
        for args in [
            "link set lo up".to_owned(),
            format!("addr add {net}.2/30 dev eth0"),
            "link set eth0 up".to_owned(),
            format!("route add default via {net}.1"),
        ] {
            peer.ip(&args);
        }
        tcp_service(&peer.path, addr("[::]:8000"));
        udp_service(&peer.path, addr("[::]:5353"));
    }
    let tmp = tempfile::tempdir().unwrap();
    let fwd = w.forwarder(&config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
        "10.89.0.2",
        Some(tmp.path()),
    ));
    let (mut before, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP to the first container", me, &seen);
    assert_eq!(seen.local, addr("10.89.0.2:8000"));
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
    assert_kept("UDP to the first container", me, &seen);
    assert_eq!(seen.local, addr("10.89.0.2:5353"));

    rootlessport::reload(tmp.path(), "5eedc0ffee", "10.89.1.2").unwrap();
    let (mut after, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
    assert_kept("TCP to the second container", me, &seen);
    assert_eq!(seen.local, addr("10.89.1.2:8000"));
    let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
    assert_kept("UDP to the second container", me, &seen);
    assert_eq!(seen.local, addr("10.89.1.2:5353"));
    echoes(&mut before, "first container, after the reload");
    echoes(&mut after, "second container");
    drop((before, after));
    fwd.stop();
    assert_eq!(forwarder_state(w.c()), Vec::<String>::new());
}

/// The forwarder tables of the lines of `state` (see [`forwarder_state`])
/// that are the forwarder's own (`proto 82`), or not.
fn tables_by_owner(state: &[String], ours: bool) -> BTreeSet<u32> {
    state
        .iter()
        .filter(|l| l.contains(" proto 82") == ours)
        .flat_map(|l| tables_of(l))
        .collect()
}

/// Stops `fwd` with the exit pipe, or with SIGTERM, and checks it exited
/// cleanly.
fn stop_by(fwd: Forwarder, sigterm: bool) {
    if sigterm {
        fwd.signal(nix::sys::signal::Signal::SIGTERM);
        let mut fwd = fwd;
        assert_eq!(
            fwd.rp.exited_within(Duration::from_secs(5)),
            Some(Exit::Code(0)),
            "SIGTERM did not stop it cleanly: {}",
            fwd.log()
        );
    } else {
        fwd.stop();
    }
}

#[test]
fn a_table_holding_routes_not_ours_is_left_to_its_owner() {
    if !require_net_admin(
        "a_table_holding_routes_not_ours_is_left_to_its_owner",
        TOOLS,
    ) {
        return;
    }
    // Someone else's routes in the table a forwarder would pick (the first
    // slot's), and someone else's rule looking up the next one: the
    // forwarder takes a third table, and leaves theirs be.
    let w = World::new("sip-foreign");
    tcp_service(w.c(), addr("[::]:8000"));
    udp_service(w.c(), addr("[::]:5353"));
    let cfg = config(
        w.c(),
        json!([map(8080, 8000, 1, "tcp"), map(8053, 5353, 1, "udp")]),
        "10.77.0.1",
        None,
    );
    w.container.ip(&format!(
        "route add table {TABLE_BASE} local 192.0.2.99 dev lo proto static"
    ));
    w.container.ip(&format!(
        "-6 route add table {TABLE_BASE} local 2001:db8::99 dev lo proto static"
    ));
    // And a rule of someone else's that looks up the next slot's table.
    w.container.ip(&format!(
        "rule add from 192.0.2.98 lookup {} pref 100 proto static",
        TABLE_BASE + 1
    ));
    let foreign = forwarder_state(w.c());
    assert_eq!(foreign.len(), 3, "{foreign:#?}");
    for sigterm in [false, true] {
        let fwd = w.forwarder(&cfg);
        let (mut c, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
        assert_kept("TCP", me, &seen);
        echoes(&mut c, "next to someone else's routes");
        let (me, seen) = udp_call(w.k(), addr("192.0.2.1:8053"));
        assert_kept("UDP", me, &seen);
        let state = forwarder_state(w.c());
        let ours = tables_by_owner(&state, true);
        assert_eq!(ours.len(), 1, "{state:#?}");
        assert!(
            !ours.contains(&TABLE_BASE) && !ours.contains(&(TABLE_BASE + 1)),
            "the forwarder uses a table that someone else uses: {state:#?}"
        );
        drop(c);
        stop_by(fwd, sigterm);
        assert_eq!(
            forwarder_state(w.c()),
            foreign,
            "someone else's routes changed, or ours were left (sigterm: {sigterm})"
        );
    }
}

#[test]
fn rules_and_routes_not_ours_in_the_forwarders_table_are_never_replaced_or_removed() {
    if !require_net_admin(
        "rules_and_routes_not_ours_in_the_forwarders_table_are_never_replaced_or_removed",
        TOOLS,
    ) {
        return;
    }
    // While a forwarder runs, someone adds to its table a route for a
    // client's address (before that client's first connection) and a rule
    // like its own: the forwarder makes its own beside them (never over
    // them) and at exit removes only its own. The next forwarder takes
    // another table.
    let w = World::new("sip-foreign2");
    tcp_service(w.c(), addr("[::]:8000"));
    let cfg = config(w.c(), json!([map(8080, 8000, 1, "tcp")]), "10.77.0.1", None);
    let mut used = BTreeSet::new();
    for sigterm in [false, true] {
        let fwd = w.forwarder(&cfg);
        let state = forwarder_state(w.c());
        let ours = tables_by_owner(&state, true);
        assert_eq!(ours.len(), 1, "{state:#?}");
        let table = *ours.first().unwrap();
        assert!(
            !tables_by_owner(&state, false).contains(&table),
            "the forwarder uses a table that holds routes not its own: {state:#?}"
        );
        used.insert(table);
        w.container.ip(&format!(
            "route add table {table} local 192.0.2.2 dev lo proto static"
        ));
        w.container.ip(&format!(
            "rule add from 10.77.0.1 ipproto tcp sport 8000 lookup {table} pref {PRIORITY} proto static"
        ));
        let foreign: Vec<String> = forwarder_state(w.c())
            .into_iter()
            .filter(|l| !l.contains(" proto 82"))
            .collect();
        let (mut c, me, seen) = tcp_call(w.k(), addr("192.0.2.1:8080"));
        assert_kept("TCP", me, &seen);
        echoes(&mut c, "next to someone else's route");
        drop(c);
        stop_by(fwd, sigterm);
        assert_eq!(
            forwarder_state(w.c()),
            foreign,
            "ours left behind, or someone else's changed (sigterm: {sigterm})"
        );
    }
    assert_eq!(used.len(), 2, "{used:?}");
}
