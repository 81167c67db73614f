//! The slirpnet library's setup: forwards through the API socket, UDP too,
//! and undo on failure.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use slirp_opts::{parse_forwards, NetworkOptions, PortHandler, Target};
use slirpnet::{setup, ForwarderChoice, SetupError, SetupOptions};
use slirpnet_tests::{free_tcp_port, pid_exists, require_slirp, PersistentNetns};

/// These tests count this process's slirp4netns children: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The real slirp4netns is needed; the guard keeps the tests one at a time.
/// `None`: skipped (only off CI).
fn prerequisites(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    require_slirp(test).then(|| SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

/// This process's children whose command name is `comm`.
fn our_children(comm: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let name = format!("({comm})");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            stat.contains(&name) && after.split(' ').nth(1) == Some(&*me)
        })
        .collect()
}

fn our_slirp_children() -> Vec<u32> {
    our_children("slirp4netns")
        .into_iter()
        .filter(|pid| {
            // Feature detection (`slirp4netns --help`) from a test running
            // alongside is not a slirp4netns that setup started.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !cmdline.split(|&b| b == 0).any(|a| a == b"--help")
        })
        .collect()
}

/// The test namespace as slirp4netns's target.
fn target(ns: &PersistentNetns) -> Target {
    Target::Path {
        netns: ns.path.clone(),
        userns: None,
    }
}

fn options() -> SetupOptions {
    let mut network = NetworkOptions::default();
    network.port_handler = PortHandler::Slirp4netns;
    SetupOptions::new(network)
}

#[test]
fn udp_and_tcp_forwards_carry_data() {
    let Some(_serial) = prerequisites("udp_and_tcp_forwards_carry_data") else {
        return;
    };
    let made = PersistentNetns::new("udp").unwrap();
    let ns = made.open();
    let udp = ns.run(|| UdpSocket::bind("0.0.0.0:5300")).unwrap().unwrap();
    let port = free_tcp_port();
    let mut opts = options();
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{port}:5300/udp,tcp")).unwrap());
    // With host loopback disabled (the default) slirp4netns drops the UDP
    // replies: the plan says so and how to fix it.
    let warned = slirpnet::plan(&opts).unwrap().info.warnings;
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("allow_host_loopback=true"), "{warned:?}");
    opts.network.allow_host_loopback = true;
    let net = setup(target(&made), &opts).unwrap();
    assert!(net.info().warnings.is_empty());
    let info = net.info().clone();
    assert_eq!(info.forwards.len(), 2);
    assert!(info.forwards.iter().all(|f| f.id.is_some()), "{info:?}");

    // The server answers every datagram reversed, until told to stop.
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut served = 0;
        loop {
            let (n, from) = udp.recv_from(&mut buf).unwrap();
            if &buf[..n] == b"stop" {
                return served;
            }
            let reply: Vec<u8> = buf[..n].iter().rev().copied().collect();
            udp.send_to(&reply, from).unwrap();
            served += 1;
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let msg: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    let want: Vec<u8> = msg.iter().rev().copied().collect();
    // libslirp drops the first datagram to a guest whose MAC it has not
    // learned yet (it sends an ARP request instead), so retry as any UDP
    // client must; a handful of tries is plenty.
    let mut buf = [0u8; 2048];
    let got = (0..20).find_map(|_| {
        client.send_to(&msg, ("127.0.0.1", port)).unwrap();
        client.recv(&mut buf).ok()
    });
    let n = got.expect("no UDP reply through the forward after 20 tries");
    assert_eq!(&buf[..n], &want[..]);
    // Once the path is warm, datagrams go through one for one.
    for _ in 0..5 {
        client.send_to(&msg, ("127.0.0.1", port)).unwrap();
        let n = client.recv(&mut buf).expect("reply on a warm path");
        assert_eq!(&buf[..n], &want[..]);
    }
    let stopper = UdpSocket::bind("127.0.0.1:0").unwrap();
    stopper.send_to(b"stop", ("127.0.0.1", port)).unwrap();
    assert!(server.join().unwrap() >= 6);

    let pid = info.pid;
    net.teardown();
    assert!(!pid_exists(pid));
    assert!(!info.api_socket.unwrap().parent().unwrap().exists());
}

#[test]
fn a_failed_forward_undoes_everything() {
    let Some(_serial) = prerequisites("a_failed_forward_undoes_everything") else {
        return;
    };
    let made = PersistentNetns::new("undo").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_tcp_port();
    let mut opts = options();
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{free}:80")).unwrap());
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{busy}:81")).unwrap());
    let before = our_slirp_children();
    let err = setup(target(&made), &opts).unwrap_err();
    assert!(matches!(err, SetupError::Forward { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("failed to forward 127.0.0.1:{busy} -> 81/tcp: slirp4netns refused add_hostfwd: bad request: add_hostfwd: slirp_add_hostfwd failed")
    );
    assert_eq!(our_slirp_children(), before, "slirp4netns left running");
    assert!(
        TcpListener::bind(("127.0.0.1", free)).is_ok(),
        "the first forward's port is still taken"
    );
}

/// A TCP and a UDP server on `container_port` inside `made` that echo one
/// connection and one datagram; checks both through host `port` from
/// `client_ip` (TCP: 200 kB byte-exact with half-close).
fn echo_tcp_and_udp(made: &PersistentNetns, container_port: u16, port: u16, client_ip: &str) {
    let ns = made.open();
    let tcp = ns
        .run(|| TcpListener::bind(("0.0.0.0", container_port)))
        .unwrap()
        .unwrap();
    let udp = ns
        .run(|| UdpSocket::bind(("0.0.0.0", container_port)))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = tcp.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut got).unwrap();
        std::io::Write::write_all(&mut c, &got).unwrap();
        drop(c); // EOF for the client
        let mut buf = [0u8; 2048];
        let (n, from) = udp.recv_from(&mut buf).unwrap();
        udp.send_to(&buf[..n], from).unwrap();
    });
    let data = slirpnet_tests::payload(200_000, 9);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(&mut c, &data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut back).unwrap();
    assert!(back == data);
    let client = UdpSocket::bind((client_ip, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"ping", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    server.join().unwrap();
}

#[test]
fn rootlesskit_forwards_tcp_and_udp_through_rootlessport() {
    let Some(_serial) = prerequisites("rootlesskit_forwards_tcp_and_udp_through_rootlessport")
    else {
        return;
    };
    let made = PersistentNetns::new("rlk").unwrap();
    let port = slirpnet_tests::free_port_both();
    // The default handler; host loopback stays disabled, and UDP replies
    // still come back because rootlessport answers from inside.
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.forwarder = ForwarderChoice::Binary(slirpnet_tests::rootlessport_bin());
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{port}:7100/tcp,udp")).unwrap());
    let plan = slirpnet::plan(&opts).unwrap();
    assert!(plan.info.warnings.is_empty(), "{:?}", plan.info.warnings);
    let net = setup(target(&made), &opts).unwrap();
    assert_eq!(net.info().port_handler, PortHandler::Rootlesskit);
    assert!(net.info().api_socket.is_none());

    echo_tcp_and_udp(&made, 7100, port, "127.0.0.1");

    let pid = net.info().pid;
    net.teardown();
    assert!(!pid_exists(pid));
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "rootlessport still listening"
    );
}

#[test]
fn a_failing_rootlessport_undoes_everything() {
    let Some(_serial) = prerequisites("a_failing_rootlessport_undoes_everything") else {
        return;
    };
    let made = PersistentNetns::new("rlk-fail").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.forwarder = ForwarderChoice::Binary(slirpnet_tests::rootlessport_bin());
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{busy}:80")).unwrap());
    let before = our_slirp_children();
    let err = setup(target(&made), &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} failed: failed to listen on tcp 127.0.0.1:{busy}: Address already in use",
            slirpnet_tests::rootlessport_bin().display()
        )
    );
    assert_eq!(our_slirp_children(), before, "slirp4netns left running");
}

#[test]
fn an_api_socket_beside_rootlessport_forwards_each_port_once_and_never_wider() {
    let Some(_serial) =
        prerequisites("an_api_socket_beside_rootlessport_forwards_each_port_once_and_never_wider")
    else {
        return;
    };
    let made = PersistentNetns::new("once").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let (v6_port, v4_port) = (free_tcp_port(), free_tcp_port());
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.forwarder = ForwarderChoice::Binary(slirpnet_tests::rootlessport_bin());
    opts.api_socket = Some(sock.clone());
    opts.ports
        .extend(parse_forwards(&format!("[::1]:{v6_port}:7100")).unwrap());
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{v4_port}:7101")).unwrap());
    let net = setup(target(&made), &opts).unwrap();
    // rootlessport forwards; slirp4netns, whose API socket the caller asked
    // for, forwards nothing.
    let listed = slirp_api::Client::new(&sock).list_hostfwd().unwrap();
    assert!(listed.is_empty(), "slirp4netns forwards too: {listed:?}");
    let hosts: Vec<String> = net
        .info()
        .forwards
        .iter()
        .map(|f| f.forward.host_ip.unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["::1", "127.0.0.1"]);
    // [::1]:PORT is open on ::1 only, not on any IPv4 address.
    assert!(
        TcpListener::bind(("::1", v6_port)).is_err(),
        "not listening on [::1]"
    );
    assert!(
        TcpListener::bind(("127.0.0.1", v6_port)).is_ok(),
        "the IPv6 forward was widened to IPv4"
    );
    assert!(TcpListener::bind(("127.0.0.1", v4_port)).is_err());
    net.teardown();
}

#[test]
fn teardown_stops_the_port_forwarder_before_slirp4netns() {
    let Some(_serial) = prerequisites("teardown_stops_the_port_forwarder_before_slirp4netns")
    else {
        return;
    };
    let made = PersistentNetns::new("order").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("slirp-at-forwarder-exit");
    // A stand-in forwarder that notes, when its exit pipe closes, whether
    // slirp4netns (whose pid names the container) is still there: what the
    // real one cannot tell us.
    let script = dir.path().join("rootlessport");
    slirpnet_tests::write_runnable(
        &script,
        format!(
            r#"#!/bin/sh
pid=$(sed -n 's/.*"ContainerID":"slirpnet-\([0-9]*\)".*/\1/p')
printf 1 >&4
exec 4>&-
cat <&3 >/dev/null
if kill -0 "$pid" 2>/dev/null; then echo running > {mark}; else echo gone > {mark}; fi
"#,
            mark = mark.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.forwarder = ForwarderChoice::Binary(script);
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{}:80", free_tcp_port())).unwrap());
    let net = setup(target(&made), &opts).unwrap();
    let pid = net.info().pid;
    net.teardown();
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap().trim(),
        "running",
        "slirp4netns (pid {pid}) was stopped before the port forwarder"
    );
    assert!(!pid_exists(pid));
}

#[test]
fn a_hung_slirp4netns_help_is_killed_and_named() {
    // No privilege needed: nothing is started but `--help`.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let fake = dir.path().join("slirp4netns");
    slirpnet_tests::write_runnable(
        &fake,
        format!("#!/bin/sh\necho $$ > {}\nsleep 600\n", pidfile.display()).as_bytes(),
    )
    .unwrap();
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.binary = Some(fake.clone());
    opts.help_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = slirpnet::plan(&opts).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            SetupError::Binary(slirpnet::BinaryError::Help(
                slirp_proc::RunError::TimedOut { .. }
            ))
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{} --help did not exit within 300ms; it was killed",
            fake.display()
        )
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!pid_exists(pid), "the hung --help was left running");
}

#[test]
fn an_in_process_forwarder_serves_without_a_helper_and_says_so() {
    let Some(_serial) =
        prerequisites("an_in_process_forwarder_serves_without_a_helper_and_says_so")
    else {
        return;
    };
    let made = PersistentNetns::new("inproc").unwrap();
    let port = slirpnet_tests::free_port_both();
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.forwarder = ForwarderChoice::InProcess;
    opts.ports
        .extend(parse_forwards(&format!("127.0.0.1:{port}:7200/tcp,udp")).unwrap());
    let net = setup(target(&made), &opts).unwrap();
    assert_eq!(
        net.info().forwarder,
        Some(slirpnet::ForwarderInfo::InProcess)
    );
    assert!(
        our_children("rootlessport").is_empty(),
        "a helper was started"
    );
    echo_tcp_and_udp(&made, 7200, port, "127.0.0.2");
    net.teardown();
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok(),
        "the in-process forwarder still listens after teardown"
    );
}

#[test]
fn the_default_forwarder_is_never_podmans_helper() {
    // No privilege needed: only planning. A "podman helper" that fails is
    // put where podman looks first (CONTAINERS_HELPER_BINARY_DIR): the
    // default choice must not pick it; named, it is used and reported.
    let dir = tempfile::tempdir().unwrap();
    let fake_go = dir.path().join("rootlessport");
    slirpnet_tests::write_runnable(&fake_go, "#!/bin/sh\nexit 1\n".as_bytes()).unwrap();
    let (_d, fake_slirp) = slirpnet_tests::fake_slirp("exit 1").unwrap();
    let mut opts = SetupOptions::new(NetworkOptions::default());
    opts.binary = Some(fake_slirp);
    opts.ports
        .extend(parse_forwards("127.0.0.1:8080:80").unwrap());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("CONTAINERS_HELPER_BINARY_DIR", dir.path());
    let planned = slirpnet::plan(&opts);
    std::env::remove_var("CONTAINERS_HELPER_BINARY_DIR");
    match planned {
        Ok(plan) => match plan.info.forwarder {
            Some(slirpnet::ForwarderInfo::Binary { path, .. }) => {
                assert_ne!(path, fake_go, "podman's helper directory was searched");
                assert!(
                    !path.starts_with("/usr/lib/podman")
                        && !path.starts_with("/usr/libexec/podman"),
                    "{}",
                    path.display()
                );
            }
            other => panic!("{other:?}"),
        },
        Err(e) => assert!(
            matches!(e, SetupError::Forwarder(slirpnet::ForwarderError::NotFound)),
            "{e}"
        ),
    }
    opts.forwarder = ForwarderChoice::Binary(fake_go.clone());
    let plan = slirpnet::plan(&opts).unwrap();
    assert_eq!(
        plan.info.forwarder,
        Some(slirpnet::ForwarderInfo::Binary {
            path: fake_go,
            pid: None
        })
    );
}

#[test]
fn client_addresses_are_kept_by_default_and_hidden_when_asked() {
    let Some(_serial) = prerequisites("client_addresses_are_kept_by_default_and_hidden_when_asked")
    else {
        return;
    };
    let made = PersistentNetns::new("keep").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("env");
    // A stand-in forwarder that notes what it was asked, then serves until
    // its exit pipe closes.
    let script = dir.path().join("rootlessport");
    slirpnet_tests::write_runnable(&script, format!(
            "#!/bin/sh\necho \"$ROOTLESSPORT_KEEP_SOURCE_IP\" >> {}\nprintf 1 >&4\nexec 4>&-\ncat <&3 >/dev/null\n",
            seen.display()
        ).as_bytes()).unwrap();
    for keep in [true, false] {
        let mut opts = SetupOptions::new(NetworkOptions::default());
        opts.forwarder = ForwarderChoice::Binary(script.clone());
        if !keep {
            opts.keep_source_ip = false;
        }
        opts.ports
            .extend(parse_forwards(&format!("127.0.0.1:{}:80", free_tcp_port())).unwrap());
        let net = setup(target(&made), &opts).unwrap();
        assert_eq!(net.info().keep_source_ip, keep);
        net.teardown();
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "1\n0\n");
    // Through slirp4netns the service always sees the client's address.
    let mut opts = options();
    opts.keep_source_ip = false;
    assert!(slirpnet::plan(&opts).unwrap().info.keep_source_ip);
}

/// A namespace path that is missing, or no network namespace, is refused in
/// one line before slirp4netns starts (not with its 25-line usage text), and
/// nothing is left running.
#[test]
fn a_bad_namespace_path_is_one_line_and_starts_nothing() {
    let Some(_serial) = prerequisites("a_bad_namespace_path_is_one_line_and_starts_nothing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    for (path, want) in [
        (
            std::path::PathBuf::from("/nonexistent/netns"),
            "failed to open network namespace /nonexistent/netns: No such file or directory",
        ),
        (file.clone(), "is not a namespace file"),
    ] {
        let err = setup(
            Target::Path {
                netns: path.clone(),
                userns: None,
            },
            &options(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SetupError::Netns(_)), "{path:?}: {err:?}");
        assert!(text.contains(want), "{path:?}: {text}");
        assert!(!text.contains('\n'), "{path:?}: more than one line: {text}");
        assert!(
            our_slirp_children().is_empty(),
            "slirp4netns was started for {path:?}"
        );
    }
}
