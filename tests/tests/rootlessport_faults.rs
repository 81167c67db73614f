//! rootlessport under bad input and faults, as a hostile or unlucky user
//! would meet it: odd namespace paths, odd fds, JSON Go would refuse, stalled
//! reload clients, a symlinked reload directory, fds left after a burst.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;
use slirp_proc::Exit;
use slirpnet_tests::require_net_admin;
use slirpnet_tests::{
    free_port_both, free_tcp_port, rootlessport_bin, PersistentNetns, Rootlessport,
};

fn tcp_map(host_port: u16, container_port: u16) -> serde_json::Value {
    json!([{"host_ip": "127.0.0.1", "container_port": container_port, "host_port": host_port, "range": 1, "protocol": "tcp"}])
}

/// Runs a configuration that must fail; checks it fails within 5 s with
/// exactly one stdout line, exit status 1, and leaves `port` free. Returns
/// the line.
fn fails(cfg: &str, port: u16) -> String {
    let started = Instant::now();
    let (line, exit) = Rootlessport::failure(&rootlessport_bin(), cfg);
    let took = started.elapsed();
    let short: String = cfg.chars().take(300).collect();
    assert!(took < Duration::from_secs(5), "{short}: took {took:?}");
    assert_eq!(exit, Exit::Code(1), "{short}: {line:?}");
    assert_eq!(line.lines().count(), 1, "{short}: {line:?}");
    assert!(!line.contains("(os error"), "{short}: {line:?}");
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "{short}: left port {port} bound"
    );
    line
}

#[test]
fn a_path_that_is_no_network_namespace_fails_at_once() {
    if !require_net_admin("a_path_that_is_no_network_namespace_fails_at_once", &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let port = free_tcp_port();
    let cases: Vec<(String, &str)> = vec![
        (
            fifo.display().to_string(),
            "is not a namespace file but a FIFO",
        ),
        (
            sock.display().to_string(),
            "is not a namespace file but a socket",
        ),
        (
            file.display().to_string(),
            "is not a namespace file but a regular file",
        ),
        (
            dir.path().display().to_string(),
            "is not a namespace file but a directory",
        ),
        ("/dev/null".into(), "is not a namespace file but a device"),
        (
            "/proc/self/status".into(),
            "is not a namespace file but a regular file",
        ),
        (
            "/proc/self/ns/uts".into(),
            "is a namespace, but not a network namespace",
        ),
        (
            dir.path().join("missing").display().to_string(),
            "failed to open network namespace",
        ),
    ];
    for (path, want) in cases {
        let cfg = json!({"Mappings": tcp_map(port, 80), "NetNSPath": path, "ExitFD": 3, "ReadyFD": 4, "ChildIP": "10.77.0.1"}).to_string();
        let line = fails(&cfg, port);
        assert!(line.contains(&path), "{path}: {line}");
        assert!(line.contains(want), "{path}: {line:?} lacks {want:?}");
    }
}

#[test]
fn unusable_exit_and_ready_fds_get_a_clear_line() {
    if !require_net_admin("unusable_exit_and_ready_fds_get_a_clear_line", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-fds");
    let port = free_tcp_port();
    let cfg = |exit: i64, ready: i64| {
        json!({"Mappings": tcp_map(port, 80), "NetNSPath": ns.path, "ExitFD": exit, "ReadyFD": ready, "ChildIP": "10.77.0.1"}).to_string()
    };
    let cases = [
        (
            4,
            4,
            "ExitFD and ReadyFD are both 4: they must be two different pipes",
        ),
        (3, 3, "ExitFD and ReadyFD are both 3"),
        (0, 4, "missing ExitFD"),
        (3, 0, "missing ReadyFD"),
        (1, 4, "ExitFD 1 is not usable"),
        (3, 2, "ReadyFD 2 is not usable"),
        (-1, 4, "ExitFD -1 is not usable"),
        (9, 4, "ExitFD 9 named in the configuration is not open"),
        (3, 99, "ReadyFD 99 named in the configuration is not open"),
        // Swapped: fd 4 is the ready pipe's write end, fd 3 the exit pipe's
        // read end.
        (4, 3, "ExitFD 4 is open but not readable"),
        (
            3,
            2147483647,
            "ReadyFD 2147483647 named in the configuration is not open",
        ),
    ];
    for (exit, ready, want) in cases {
        let line = fails(&cfg(exit, ready), port);
        assert!(
            line.contains(want),
            "{exit}/{ready}: {line:?} lacks {want:?}"
        );
    }
}

#[test]
fn json_is_decoded_as_go_decodes_it() {
    if !require_net_admin("json_is_decoded_as_go_decodes_it", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-json");
    let port = free_tcp_port();
    let netns = ns.path.display().to_string();
    // A struct given as an array: Go refuses it, so must we.
    for mappings in [
        json!([["127.0.0.1", 8000, port, 1, "tcp"]]),
        json!([[]]),
        json!({"host_port": port}),
    ] {
        let cfg = json!({"Mappings": mappings, "NetNSPath": netns, "ExitFD": 3, "ReadyFD": 4, "ChildIP": "10.77.0.1"}).to_string();
        let line = fails(&cfg, port);
        assert!(
            line.starts_with("failed to decode the configuration on stdin: "),
            "{cfg}: {line}"
        );
    }
    // Keys differing only in case: the last in the document wins, as in Go.
    let last_wins = format!(
        r#"{{"exitfd":99,"NetNSPath":"{netns}","ExitFD":3,"ReadyFD":4,"ChildIP":"10.77.0.1","Mappings":[{{"host_ip":"127.0.0.1","container_port":80,"host_port":{port},"range":1,"protocol":"tcp"}}]}}"#
    );
    let mut rp = Rootlessport::start(&rootlessport_bin(), &last_wins)
        .unwrap_or_else(|e| panic!("{last_wins}: {e}"));
    assert!(TcpListener::bind(("127.0.0.1", port)).is_err(), "listening");
    assert_eq!(rp.stop(Duration::from_secs(2)).unwrap(), Exit::Code(0));
    let first_wins = last_wins.replacen(r#""exitfd":99,"#, "", 1).replacen(
        r#""ExitFD":3,"#,
        r#""ExitFD":3,"EXITFD":99,"#,
        1,
    );
    let line = fails(&first_wins, port);
    assert!(
        line.contains("ExitFD 99 named in the configuration is not open"),
        "{line}"
    );
    // null leaves a field as it was.
    let null = last_wins.replacen(r#""exitfd":99,"#, "", 1).replacen(
        r#""ExitFD":3,"#,
        r#""ExitFD":3,"exitFD":null,"#,
        1,
    );
    let mut rp = Rootlessport::start(&rootlessport_bin(), &null).unwrap();
    assert_eq!(rp.stop(Duration::from_secs(2)).unwrap(), Exit::Code(0));
}

#[test]
fn a_stalled_reload_client_delays_no_other_and_bursts_are_accepted() {
    if !require_net_admin(
        "a_stalled_reload_client_delays_no_other_and_bursts_are_accepted",
        &[],
    ) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-reload-burst");
    let tmp = tempfile::tempdir().unwrap();
    let id = "c0ffee";
    let port = free_tcp_port();
    let cfg =
        json!({"Mappings": tcp_map(port, 80), "NetNSPath": ns.path, "ExitFD": 3, "ReadyFD": 4,
        "ChildIP": "10.77.0.1", "TmpDir": tmp.path(), "ContainerID": id, "RootlessCNI": true})
        .to_string();
    let mut rp = Rootlessport::start(&rootlessport_bin(), &cfg).unwrap();
    let sock = rootlessport::reload_socket_path(tmp.path(), id);
    // A client that connects and never sends.
    let stalled = {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new(&sock).unwrap(),
        )
        .unwrap();
        fd
    };
    let started = Instant::now();
    rootlessport::reload(tmp.path(), id, "10.77.0.2").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a reload waited {:?} behind a stalled client",
        started.elapsed()
    );
    // podman may reload many containers' forwarders at once; here 160
    // clients reload one forwarder at the same moment.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(160));
    let clients: Vec<_> = (0..160)
        .map(|i| {
            let (dir, barrier) = (tmp.path().to_owned(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let ip = if i % 2 == 0 { "10.77.0.1" } else { "10.77.0.2" };
                rootlessport::reload(&dir, id, ip)
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 160 reloads failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    drop(stalled);
    assert_eq!(rp.stop(Duration::from_secs(2)).unwrap(), Exit::Code(0));
    assert!(!sock.exists());
}

#[test]
fn a_symlink_at_the_reload_directory_is_not_followed() {
    if !require_net_admin("a_symlink_at_the_reload_directory_is_not_followed", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-symlink");
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), tmp.path().join("rp")).unwrap();
    let port = free_tcp_port();
    let cfg =
        json!({"Mappings": tcp_map(port, 80), "NetNSPath": ns.path, "ExitFD": 3, "ReadyFD": 4,
        "ChildIP": "10.77.0.1", "TmpDir": tmp.path(), "ContainerID": "abc", "RootlessCNI": true})
        .to_string();
    let line = fails(&cfg, port);
    assert!(
        line.contains("is a symbolic link; refusing to follow it"),
        "{line}"
    );
    let mode = std::fs::metadata(elsewhere.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755, "the link's target was chmodded");
    assert!(!elsewhere.path().join("abc").exists());
    // A plain file there is refused too.
    std::fs::remove_file(tmp.path().join("rp")).unwrap();
    std::fs::write(tmp.path().join("rp"), "").unwrap();
    let line = fails(&cfg, port);
    assert!(line.contains("exists and is not a directory"), "{line}");
}

#[test]
fn an_idle_forwarder_returns_to_its_baseline_fds() {
    if !require_net_admin("an_idle_forwarder_returns_to_its_baseline_fds", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-fdbase");
    let listener = ns
        .open()
        .run(|| TcpListener::bind("10.77.0.1:7400"))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        for c in listener.incoming().take(1000) {
            let mut c = c.unwrap();
            let mut b = [0u8; 1];
            if c.read(&mut b).unwrap_or(0) == 1 {
                let _ = c.write_all(&b);
            }
        }
    });
    let port = free_tcp_port();
    let rp = Rootlessport::start(
        &rootlessport_bin(),
        &ns.rootlessport_config(tcp_map(port, 7400), "10.77.0.1"),
    )
    .unwrap();
    let baseline = rp.fds().len();
    // A burst: 1000 connections, 100 open at a time.
    for _ in 0..10 {
        let conns: Vec<TcpStream> = (0..100)
            .map(|_| {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.write_all(b"x").unwrap();
                c
            })
            .collect();
        for mut c in conns {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            c.shutdown(Shutdown::Both).unwrap();
        }
    }
    server.join().unwrap();
    let after_burst = rp.fds().len();
    // The promise is "within 10 s of going idle".
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = after_burst;
    while now > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = rp.fds().len();
    }
    assert!(
        now <= baseline,
        "fds: {baseline} at ready, {after_burst} after the burst, still {now} 10 s later: {:?}",
        rp.fds()
    );
    assert!(
        after_burst > baseline,
        "the burst used no pooled fds: the check above proves nothing"
    );
}

#[test]
fn a_port_in_use_is_reported_in_plain_words() {
    if !require_net_admin("a_port_in_use_is_reported_in_plain_words", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-inuse");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let udp_taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_busy = udp_taken.local_addr().unwrap().port();
    let free = free_port_both();
    let line = fails(
        &ns.rootlessport_config(tcp_map(busy, 80), "10.77.0.1"),
        free,
    );
    assert_eq!(
        line,
        format!("failed to listen on tcp 127.0.0.1:{busy}: Address already in use")
    );
    let udp = json!([{"host_ip": "127.0.0.1", "container_port": 53, "host_port": udp_busy, "range": 1, "protocol": "udp"}]);
    let line = fails(&ns.rootlessport_config(udp, "10.77.0.1"), free);
    assert_eq!(
        line,
        format!("failed to listen on udp 127.0.0.1:{udp_busy}: Address already in use")
    );
}

/// A deterministic xorshift generator for the fuzz cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The first mapping, while the mutations have left one.
fn first_mapping(v: &mut serde_json::Value) -> Option<&mut serde_json::Value> {
    v.get_mut("Mappings")?.get_mut(0).filter(|m| m.is_object())
}

/// One mutation of a valid configuration (as text).
fn mutate(rng: &mut Rng, base: &serde_json::Value, paths: &[String]) -> String {
    let mut v = base.clone();
    let fields = [
        "Mappings",
        "NetNSPath",
        "ExitFD",
        "ReadyFD",
        "TmpDir",
        "ChildIP",
        "ContainerID",
        "RootlessCNI",
    ];
    let mapping_fields = [
        "host_ip",
        "container_port",
        "host_port",
        "range",
        "protocol",
    ];
    let odd_values = || {
        vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(0),
            json!(65536),
            json!(1e300),
            json!(-9223372036854775808i64),
            json!(18446744073709551615u64),
            json!(3.5),
            json!(""),
            json!("3"),
            json!("tcp"),
            json!([]),
            json!({}),
            json!([1, 2]),
            json!("１０.７７.０.１"),
            json!("\u{1F980}"),
            json!("\u{0}"),
            json!("x".repeat(1 << 20)),
        ]
    };
    for _ in 0..1 + rng.below(3) {
        match rng.below(9) {
            0 => {
                let f = *rng.pick(&fields);
                v[f] = rng.pick(&odd_values()).clone();
            }
            1 => {
                let f = *rng.pick(&fields);
                v.as_object_mut().unwrap().remove(f);
            }
            2 => {
                let f = *rng.pick(&mapping_fields);
                let odd = rng.pick(&odd_values()).clone();
                if let Some(m) = first_mapping(&mut v) {
                    m[f] = odd;
                }
            }
            3 => {
                let p = *rng.pick(&[
                    "tcp,tcp",
                    "TCP",
                    "sctp",
                    "udp,",
                    ",",
                    "tcp,udp,sctp",
                    "icmp",
                    "tcp\u{0}",
                    "ü",
                    "tcp udp",
                ]);
                if let Some(m) = first_mapping(&mut v) {
                    m["protocol"] = json!(p);
                }
            }
            4 => v["NetNSPath"] = json!(rng.pick(paths)),
            5 => {
                let fd = *rng.pick(&[0i64, 1, 2, -1, 3, 4, 5, 99, 2147483647, -2147483648]);
                let f = *rng.pick(&["ExitFD", "ReadyFD"]);
                v[f] = json!(fd);
            }
            6 => {
                v["RootlessCNI"] = json!(true);
                v["ContainerID"] = json!(rng.pick(&["..", ".", "a/b", "", "\u{0}", "ok-id", "é"]));
            }
            7 => {
                let (hp, r) = (
                    *rng.pick(&[0u32, 1, 65535, 65536]),
                    *rng.pick(&[0u32, 1, 2, 65535]),
                );
                if let Some(m) = first_mapping(&mut v) {
                    m["host_port"] = json!(hp);
                    m["range"] = json!(r);
                }
            }
            _ => {
                v["ChildIP"] = json!(rng.pick(&[
                    "127.0.0.1",
                    "::1",
                    "::ffff:127.0.0.1",
                    "0.0.0.0",
                    "224.0.0.1",
                    "10.77.0.1%eth0",
                    "fd77::1",
                    "10.77.0.256",
                    "10.77.0.1/24"
                ]));
            }
        }
    }
    let text = v.to_string();
    match rng.below(8) {
        // Truncated.
        0 => {
            let cut = rng.below(text.len());
            let mut cut = cut;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].to_owned()
        }
        // A duplicate key in another case, first or last.
        1 => text.replacen('{', r#"{"exitfd":4,"READYFD":3,"#, 1),
        2 => format!("{},\"childip\":\"10.77.0.2\"}}", &text[..text.len() - 1]),
        _ => text,
    }
}

#[test]
fn hundreds_of_mutated_configurations_never_hang_panic_or_leave_a_port() {
    if !require_net_admin(
        "hundreds_of_mutated_configurations_never_hang_panic_or_leave_a_port",
        &[],
    ) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-fuzz");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let paths: Vec<String> = vec![
        ns.path.display().to_string(),
        fifo.display().to_string(),
        "/proc/self/ns/uts".into(),
        "/dev/null".into(),
        "/".into(),
        "".into(),
        "/nonexistent".into(),
        "relative/path".into(),
    ];
    let port = free_port_both();
    let base = json!({
        "Mappings": [{"host_ip": "127.0.0.1", "container_port": 80, "host_port": port, "range": 1, "protocol": "tcp,udp"}],
        "NetNSPath": ns.path, "ExitFD": 3, "ReadyFD": 4, "TmpDir": dir.path(),
        "ChildIP": "10.77.0.1", "ContainerID": "fuzz", "RootlessCNI": false,
    });
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut ready, mut failed) = (0, 0);
    for case in 0..400 {
        let cfg = mutate(&mut rng, &base, &paths);
        let short: String = cfg.chars().take(200).collect();
        // What a valid configuration is, independently of the binary: it
        // decodes and validates, names the fds podman passes, and a real
        // network namespace.
        let valid = rootlessport::Config::from_json(&cfg)
            .and_then(rootlessport::Config::validate)
            .is_ok_and(|v| {
                v.helper_fds
                    .is_some_and(|fds| (fds.exit_fd, fds.ready_fd) == (3, 4))
                    && netns_util::Netns::open(&v.netns_path).is_ok()
            });
        let mut cmd = slirp_proc::HelperCommand::new(
            rootlessport_bin(),
            "rootlessport",
            cfg.clone().into_bytes(),
        );
        cmd.stderr = slirp_proc::HelperStderr::Null;
        cmd.ready_timeout = Duration::from_secs(5);
        let started = Instant::now();
        match cmd.start() {
            Ok(helper) => {
                assert!(
                    valid,
                    "case {case}: became ready with an invalid configuration: {short}"
                );
                ready += 1;
                let exit = helper.stop(Duration::from_secs(2));
                assert_eq!(exit, Ok(Exit::Code(0)), "case {case}: {short}");
            }
            Err(slirp_proc::HelperError::Failed { line, exit, .. }) => {
                failed += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "case {case}: took {:?}: {short}",
                    started.elapsed()
                );
                assert_eq!(
                    exit,
                    Exit::Code(1),
                    "case {case}: ended {exit:?} (a panic is 101): {short}"
                );
                assert_eq!(line.lines().count(), 1, "case {case}: {line:?}: {short}");
                assert!(!line.trim().is_empty(), "case {case}: empty line: {short}");
                // A valid configuration may still fail on the host: a port
                // taken by someone else, or a privileged one.
                assert!(
                    !valid || line.contains("listen on") || line.contains("privileged port"),
                    "case {case}: a valid configuration failed: {line}: {short}"
                );
            }
            Err(other) => panic!("case {case}: {other}: {short}"),
        }
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "case {case}: left tcp {port} listening: {short}"
        );
        assert!(
            UdpSocket::bind(("127.0.0.1", port)).is_ok(),
            "case {case}: left udp {port} bound: {short}"
        );
    }
    // The generator must exercise both outcomes, or it checks little.
    assert!(
        ready >= 20 && failed >= 200,
        "{ready} ready, {failed} failed"
    );
}
