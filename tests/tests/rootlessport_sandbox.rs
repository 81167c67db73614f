//! rootlessport locks itself in before it reports ready: on every thread
//! of a serving forwarder a seccomp filter (mode 2), no_new_privs, and no
//! capability but those it still uses; it still forwards, adds a low port
//! live, quotes the sysctl when one is refused, and tears down cleanly
//! (exit 0, its rules, routes and sockets gone). `ROOTLESSPORT_SANDBOX=0`
//! turns all of it off with one warning.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use slirp_api::portctl::{Reply, Request};
use slirp_opts::PortMapping;
use slirp_proc::Exit;
use slirpnet_tests::{
    can_admin_net, free_port_both, free_tcp_port, require, rootlessport_bin, world_runnable,
    PersistentNetns, Rootlessport,
};

const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_NET_ADMIN: u64 = 1 << 12;

fn prerequisites(test: &str) -> bool {
    require(test, can_admin_net())
}

/// A forwarder started as podman starts it, through a script that sets its
/// environment, optionally runs it in another network namespace (`host`)
/// and under `prefix` (setpriv), with its stderr in a file.
struct Launched {
    rp: Rootlessport,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Launched {
    fn start(cfg: &str, env: &[(&str, &str)], host: Option<&Path>, prefix: &str) -> Self {
        let (dir, bins) = world_runnable(&[&rootlessport_bin()]).unwrap();
        let log = dir.path().join("stderr.log");
        let exports: String = env
            .iter()
            .map(|(k, v)| format!("{k}='{v}'\nexport {k}\n"))
            .collect();
        let nsenter = host
            .map(|h| format!("nsenter --net={} ", h.display()))
            .unwrap_or_default();
        let script = dir.path().join("launch");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n{exports}exec {nsenter}{prefix} {} 2>>{}\n",
                bins[0].display(),
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rp = Rootlessport::start(&script, cfg).unwrap_or_else(|e| {
            panic!(
                "not ready: {e}; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Launched { rp, log, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Closes the exit pipe; it must exit 0 within 5 s, having said nothing
    /// of a denied system call.
    fn stop_cleanly(mut self) -> String {
        let exit = self.rp.stop(Duration::from_secs(5)).unwrap();
        let log = self.log();
        assert_eq!(exit, Exit::Code(0), "{log}");
        assert!(!log.contains("sandbox denied"), "{log}");
        log
    }
}

/// What `/proc/PID/task/TID/status` says of one thread.
#[derive(Debug, Default)]
struct ThreadState {
    name: String,
    seccomp: String,
    no_new_privs: String,
    caps: [u64; 5],
}

const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

fn threads(pid: u32) -> Vec<ThreadState> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        let mut state = ThreadState::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Name" => state.name = value.to_owned(),
                "Seccomp" => state.seccomp = value.to_owned(),
                "NoNewPrivs" => state.no_new_privs = value.to_owned(),
                _ => {
                    if let Some(i) = CAP_FIELDS.iter().position(|f| *f == key) {
                        state.caps[i] = u64::from_str_radix(value, 16).unwrap();
                    }
                }
            }
        }
        out.push(state);
    }
    out
}

/// Every thread: filter mode 2, no_new_privs, and exactly `caps` in the
/// permitted, effective and bounding sets (nothing inheritable or ambient).
fn assert_locked_in(pid: u32, caps: u64, at_least: usize) {
    let threads = threads(pid);
    assert!(threads.len() >= at_least, "{threads:#?}");
    for t in &threads {
        assert_eq!(t.seccomp, "2", "{t:?}");
        assert_eq!(t.no_new_privs, "1", "{t:?}");
        assert_eq!(t.caps, [0, caps, caps, caps, 0], "{t:?}");
    }
}

/// A one-shot echo server inside the namespace at 10.77.0.1:`port`.
fn echo_once(ns: &PersistentNetns, port: u16) -> std::thread::JoinHandle<()> {
    let listener = ns
        .open()
        .run(move || TcpListener::bind(("10.77.0.1", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    })
}

fn exchange(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

fn tcp_map(host_port: u16, container_port: u16) -> serde_json::Value {
    json!([{"host_ip": "127.0.0.1", "container_port": container_port, "host_port": host_port, "range": 1, "protocol": "tcp"}])
}

fn add(control: &Path, host_port: u16, container_port: u16) -> Reply {
    let mapping: PortMapping = serde_json::from_value(json!({"host_ip": "127.0.0.1",
        "container_port": container_port, "host_port": host_port, "range": 1, "protocol": "tcp"}))
    .unwrap();
    let request = Request::Add {
        mappings: vec![mapping],
    };
    slirp_api::control::request(control, &request, Duration::from_secs(10)).unwrap()
}

/// A free TCP port on 127.0.0.1 below 1024 (binding it needs privilege).
fn free_low_port() -> u16 {
    (600..1000)
        .rev()
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1000")
}

/// A UDP echo inside the namespace at 10.77.0.1:`port`, for `n` datagrams.
fn udp_echo(ns: &PersistentNetns, port: u16, n: usize) -> std::thread::JoinHandle<()> {
    let socket = ns
        .open()
        .run(move || UdpSocket::bind(("10.77.0.1", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let (len, from) = socket.recv_from(&mut buf).unwrap();
            socket.send_to(&buf[..len], from).unwrap();
        }
    })
}

#[test]
fn every_thread_of_a_serving_forwarder_is_locked_in() {
    if !prerequisites("every_thread_of_a_serving_forwarder_is_locked_in") {
        return;
    }
    let ns = PersistentNetns::with_veth("sbx-plain");
    let port = free_port_both();
    // All addresses: one dual-stack listener per protocol.
    let map = json!([{"host_ip": "", "container_port": 7100, "host_port": port, "range": 1, "protocol": "tcp,udp"}]);
    let launched = Launched::start(&ns.rootlessport_config(map, "10.77.0.1"), &[], None, "");
    // The event loop, the namespace's socket thread, the SIGTERM thread.
    assert_locked_in(launched.rp.pid(), 0, 3);
    // Everything a client makes it do still works: TCP over IPv4 and IPv6
    // (splice, the namespace's sockets), UDP (batches, replies from the
    // address the client sent to).
    let server = echo_once(&ns, 7100);
    exchange(port);
    server.join().unwrap();
    let server = echo_once(&ns, 7100);
    let mut c = TcpStream::connect(("::1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    server.join().unwrap();
    let server = udp_echo(&ns, 7100, 3);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for payload in [&b"a"[..], &[7u8; 1400][..], b"last"] {
        client.send_to(payload, ("127.0.0.1", port)).unwrap();
        let mut back = [0u8; 2048];
        let (len, from) = client.recv_from(&mut back).unwrap();
        assert_eq!(&back[..len], payload);
        assert_eq!(from.port(), port);
    }
    server.join().unwrap();
    launched.stop_cleanly();
}

#[test]
fn client_addresses_and_live_ports_keep_their_two_capabilities_and_nothing_else() {
    if !prerequisites(
        "client_addresses_and_live_ports_keep_their_two_capabilities_and_nothing_else",
    ) {
        return;
    }
    let ns = PersistentNetns::with_veth("sbx-keep");
    let port = free_tcp_port();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let launched = Launched::start(
        &ns.rootlessport_config(tcp_map(port, 7200), "10.77.0.1"),
        &[
            ("ROOTLESSPORT_KEEP_SOURCE_IP", "1"),
            ("ROOTLESSPORT_CONTROL_SOCKET", control.to_str().unwrap()),
        ],
        None,
        "",
    );
    // Plus the routing thread and the control socket's.
    assert_locked_in(launched.rp.pid(), CAP_NET_ADMIN | CAP_NET_BIND_SERVICE, 5);
    // A client address kept: netlink and transparent sockets still work.
    let server = echo_once(&ns, 7200);
    exchange(port);
    server.join().unwrap();
    // A low port added while serving binds (CAP_NET_BIND_SERVICE).
    let low = free_low_port();
    let reply = add(&control, low, 7201);
    assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
    let server = echo_once(&ns, 7201);
    exchange(low);
    server.join().unwrap();
    // And removed: the listener closes.
    let key: slirp_opts::portctl::PortKey =
        serde_json::from_value(json!({"proto": "tcp", "host_ip": "127.0.0.1", "host_port": low}))
            .unwrap();
    let request = Request::Remove { ports: vec![key] };
    let reply = slirp_api::control::request(&control, &request, Duration::from_secs(10)).unwrap();
    assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
    assert!(TcpStream::connect(("127.0.0.1", low)).is_err());
    let rules = std::process::Command::new("ip")
        .args(["-n", ns.name(), "rule"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains("proto 82"));
    launched.stop_cleanly();
    // Teardown under the sandbox: the control socket removed (Landlock
    // allows its directory), the rules removed (netlink).
    assert!(!control.exists());
    let rules = std::process::Command::new("ip")
        .args(["-n", ns.name(), "rule"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("proto 82"), "{rules}");
}

#[test]
fn a_refused_low_port_still_quotes_the_sysctl() {
    if !prerequisites("a_refused_low_port_still_quotes_the_sysctl") {
        return;
    }
    let ns = PersistentNetns::with_veth("sbx-sysctl");
    // The forwarder's host: a namespace of its own, with its own sysctl.
    let host = PersistentNetns::new("sbx-sysctl-host").unwrap();
    host.ip("link set lo up");
    let set = std::process::Command::new("ip")
        .args(["netns", "exec", host.name(), "sysctl", "-qw"])
        .arg("net.ipv4.ip_unprivileged_port_start=900")
        .status()
        .unwrap();
    assert!(set.success());
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let launched = Launched::start(
        &ns.rootlessport_config(tcp_map(2000, 7300), "10.77.0.1"),
        &[("ROOTLESSPORT_CONTROL_SOCKET", control.to_str().unwrap())],
        Some(&host.path),
        "setpriv --bounding-set=-net_bind_service --inh-caps=-net_bind_service --",
    );
    assert_locked_in(launched.rp.pid(), 0, 4);
    match add(&control, 800, 7300) {
        Reply::Error { message } => assert!(
            message.contains("cannot expose privileged port 800")
                && message.contains("(currently 900)"),
            "{message}"
        ),
        other => panic!("a low port bound without the privilege: {other:?}"),
    }
    launched.stop_cleanly();
    drop(dir);
}

#[test]
fn rootlessport_sandbox_0_serves_unconfined_with_one_warning() {
    if !prerequisites("rootlessport_sandbox_0_serves_unconfined_with_one_warning") {
        return;
    }
    let ns = PersistentNetns::with_veth("sbx-off");
    let port = free_tcp_port();
    let launched = Launched::start(
        &ns.rootlessport_config(tcp_map(port, 7400), "10.77.0.1"),
        &[("ROOTLESSPORT_SANDBOX", "0")],
        None,
        "",
    );
    for t in threads(launched.rp.pid()) {
        assert_eq!(t.seccomp, "0", "{t:?}");
        assert_eq!(t.no_new_privs, "0", "{t:?}");
    }
    let server = echo_once(&ns, 7400);
    exchange(port);
    server.join().unwrap();
    let _ = &launched.dir;
    let log = launched.stop_cleanly();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("ROOTLESSPORT_SANDBOX=0"), "{log}");
}
