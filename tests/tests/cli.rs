//! The slirpnet program end to end: real slirp4netns, namespaces made by the
//! test, data over loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use slirpnet_tests::{command_as, start_with_background_sleeps};
use slirpnet_tests::{
    fake_slirp, free_tcp_port, is_mounted, live_pids_with_argv, payload, pid_exists, require,
    require_slirp, rootless_possible, slirpnet_bin, unique_sleeps, wait_until, world_runnable,
    PersistentNetns,
};

const ECHO: &str = env!("CARGO_BIN_EXE_tcp-echo");

/// Sends `data` to 127.0.0.1:port, half-closes, and returns all it got back.
fn echo_through(port: u16, data: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let data = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

/// Waits for the child, at most `limit`.
fn wait_limited(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything the child wrote on its (piped) stderr.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    err
}

/// The first JSON object in `text`.
fn first_json(text: &str) -> Value {
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in: {text}"));
    serde_json::Deserializer::from_str(&text[start..])
        .into_iter::<Value>()
        .next()
        .unwrap()
        .unwrap()
}

/// The first JSON value a stream carries (slirpnet's report), read as it
/// arrives; `what` names it in the failure.
fn first_json_from(stream: impl Read, what: &str) -> Value {
    serde_json::Deserializer::from_reader(stream)
        .into_iter::<Value>()
        .next()
        .unwrap_or_else(|| panic!("{what}: the stream ended first"))
        .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// Runs `cmd` to the end; it must succeed and print one JSON value.
fn json_output(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `slirpnet run --slirp4netns FAKE ARGS -- touch RAN` to the end: whether
/// RAN exists afterwards tells whether the command ran.
fn run_touching(slirpnet: &Path, fake: &Path, args: &[&str], ran: &Path) -> std::process::Output {
    Command::new(slirpnet)
        .arg("run")
        .arg("--slirp4netns")
        .arg(fake)
        .args(args)
        .arg("--")
        .arg("touch")
        .arg(ran)
        .output()
        .unwrap()
}

/// `slirpnet run` with an echo server as the command, data through a
/// slirp4netns forward, exit status and cleanup checked. `as_user` runs it
/// through setpriv as that uid (rootless).
fn run_echo_roundtrip(slirpnet: &Path, echo: &Path, as_user: Option<u32>, handler: &str) {
    let port = free_tcp_port();
    let mut cmd = command_as(slirpnet, as_user);
    let mut child = cmd
        .args([
            "run",
            "--json",
            "-o",
            &format!("port_handler={handler}"),
            "-p",
        ])
        .arg(format!("127.0.0.1:{port}:7000"))
        .arg("--")
        .arg(echo)
        .arg("7000")
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    if line.trim() != "listening" {
        let err = stderr_of(&mut child);
        panic!("the command did not start: {line:?}; stderr: {err}");
    }
    let data = payload(512 * 1024, 7);
    let back = echo_through(port, &data);
    assert!(
        back == data,
        "echo differs: sent {} bytes, got {}",
        data.len(),
        back.len()
    );
    let status = wait_limited(&mut child, Duration::from_secs(20));
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(0), "stderr: {err}");

    let info = first_json(&err);
    assert_eq!(info["guest"], "10.0.2.100");
    assert_eq!(info["forwards"][0]["host_port"], port);
    let slirp_pid = info["pid"].as_u64().unwrap() as u32;
    assert!(
        !pid_exists(slirp_pid),
        "slirp4netns {slirp_pid} left behind"
    );
    assert_eq!(info["port_handler"], handler);
    if let Some(sock) = info["api_socket"].as_str().map(PathBuf::from) {
        assert!(
            !sock.exists() && !sock.parent().unwrap().exists(),
            "API socket dir {} left behind",
            sock.display()
        );
    }
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "host port {port} still taken"
    );
}

#[test]
fn run_as_root_forwards_byte_exact() {
    if !require_slirp("run_as_root_forwards_byte_exact") {
        return;
    }
    run_echo_roundtrip(&slirpnet_bin(), Path::new(ECHO), None, "slirp4netns");
    // The default handler: our rootlessport, found next to slirpnet.
    slirpnet_tests::rootlessport_bin();
    run_echo_roundtrip(&slirpnet_bin(), Path::new(ECHO), None, "rootlesskit");
}

#[test]
fn run_rootless_forwards_byte_exact() {
    if !require("run_rootless_forwards_byte_exact", rootless_possible()) {
        return;
    }
    let (_dir, bins) = world_runnable(&[
        &slirpnet_bin(),
        Path::new(ECHO),
        &slirpnet_tests::rootlessport_bin(),
    ])
    .unwrap();
    run_echo_roundtrip(&bins[0], &bins[1], Some(65534), "slirp4netns");
    // rootlessport joins the command's user namespace to reach its netns.
    run_echo_roundtrip(&bins[0], &bins[1], Some(65534), "rootlesskit");
}

#[test]
fn run_gives_the_command_a_configured_namespace() {
    if !require_slirp("run_gives_the_command_a_configured_namespace") {
        return;
    }
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let out = Command::new(slirpnet_bin())
        .args(["run", "--", "sh", "-c", "cat /proc/net/route; cat /etc/resolv.conf; cat /proc/net/if_inet6; readlink /proc/self/ns/net"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Default route: destination 0 via 10.0.2.2 (0202000A little-endian) on tap0.
    assert!(
        text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[0] == "tap0" && f[1] == "00000000" && f[2] == "0202000A"
        }),
        "no default route via 10.0.2.2 on tap0:\n{text}"
    );
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("fd00") && l.ends_with("tap0")),
        "no IPv6 on tap0:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.ends_with(" lo") && l.starts_with("0000000000000000000000000000000")),
        "lo is not up:\n{text}"
    );
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        !text.contains(&*ours.to_string_lossy()),
        "the command ran in our namespace"
    );
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        host_resolv,
        "the host's resolv.conf changed"
    );

    let out = Command::new(slirpnet_bin())
        .args(["run", "--no-resolv-conf", "--", "cat", "/etc/resolv.conf"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        Some(out.stdout),
        host_resolv,
        "--no-resolv-conf must leave it alone"
    );
}

#[test]
fn run_passes_exit_status_and_signals() {
    if !require_slirp("run_passes_exit_status_and_signals") {
        return;
    }
    let status = Command::new(slirpnet_bin())
        .args(["run", "--", "sh", "-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let status = Command::new(slirpnet_bin())
        .args(["run", "--", "/nonexistent-cmd"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(127));

    let mut child = Command::new(slirpnet_bin())
        .args(["run", "--", "sh", "-c", "echo up; exec sleep 30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_limited(&mut child, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "SIGTERM reaches the command and its death is our status"
    );
}

#[test]
fn bad_options_exit_125_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("slirp-started");
    let (_d, fake) = fake_slirp(&format!("touch {}\nexit 1", marker.display())).unwrap();
    let ran = dir.path().join("command-ran");
    let cases: &[(&[&str], &str)] = &[
        (&["-o", "mtu=1"], r#"invalid mtu "1""#),
        (
            &["-o", "foo=bar"],
            r#"unknown option for slirp4netns: "foo=bar""#,
        ),
        (&["-o", "cidr=300.0.0.0/8"], r#"invalid cidr "300.0.0.0/8""#),
        (
            &["-o", "enable_ipv6=yes"],
            r#"invalid value of enable_ipv6 for slirp4netns: "yes""#,
        ),
        (
            &["-o", "port_handler=x"],
            r#"unknown port_handler for slirp4netns: "x""#,
        ),
        (
            &["-o", "cidr=10.0.0.0/28"],
            "address at offset +100 of 10.0.0.0/28 (10.0.0.100) is outside the subnet",
        ),
        (
            &["-p", "0:80"],
            r#"invalid port spec "0:80": host port must not be 0"#,
        ),
        (&["-p", "8080:80/sctp"], "sctp is not supported"),
        (
            &["-p", "::1:8080:80"],
            "put an IPv6 host address in brackets",
        ),
        (
            &["-o", "port_handler=slirp4netns", "-p", "[::1]:8080:80"],
            "port_handler=slirp4netns can only listen on IPv4 host addresses, not ::1",
        ),
        (
            &[
                "-o",
                "port_handler=slirp4netns",
                "-p",
                "8080:80",
                "-p",
                "8080:81",
            ],
            "is also forwarded by",
        ),
    ];
    for (args, want) in cases {
        let out = run_touching(&slirpnet_bin(), &fake, args, &ran);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.starts_with("slirpnet: "), "{args:?}: {err}");
        assert!(!marker.exists(), "{args:?} started slirp4netns");
        assert!(!ran.exists(), "{args:?} ran the command");
    }
    // Usage errors are ours too.
    let out = Command::new(slirpnet_bin()).args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let out = Command::new(slirpnet_bin())
        .args(["attach", "--netns", "/etc/hostname"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/etc/hostname is not a namespace file"));
    // Each cause once.
    let out = Command::new(slirpnet_bin())
        .args(["attach", "--netns", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.starts_with("slirpnet: failed to open network namespace /nonexistent: "),
        "{err}"
    );
}

#[test]
fn a_failing_slirp4netns_fails_run_without_running_the_command() {
    if !require_slirp("a_failing_slirp4netns_fails_run_without_running_the_command") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("command-ran");
    let (_d, fake) = fake_slirp("echo 'slirp4netns: the tap device is busy' >&2\nexit 1").unwrap();
    let slirpnet = slirpnet_bin(); // may build it: not part of the time
    let started = Instant::now();
    let out = run_touching(&slirpnet, &fake, &[], &ran);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("slirp4netns failed: slirp4netns: the tap device is busy (exit status 1)"),
        "{err}"
    );
    assert!(!ran.exists(), "the command ran although the network failed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// `slirpnet attach` on a netns the test made: forwards, addresses, the
/// default route, accept_dad restored, stats, and a clean teardown.
#[test]
fn attach_networks_an_existing_namespace() {
    if !require_slirp("attach_networks_an_existing_namespace") {
        return;
    }
    let made = PersistentNetns::new("attach").unwrap();
    let ns = made.open();
    let dad = "/proc/sys/net/ipv6/conf/default/accept_dad";
    ns.run(|| std::fs::write(dad, "2")).unwrap().unwrap();
    let server = ns
        .run(|| TcpListener::bind("0.0.0.0:7001"))
        .unwrap()
        .unwrap();
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(&got).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        got.len()
    });

    let port = free_tcp_port();
    let mut child = Command::new(slirpnet_bin())
        .args([
            "attach",
            "--json",
            "-o",
            "port_handler=slirp4netns",
            "--netns",
        ])
        .arg(&made.path)
        .arg("-p")
        .arg(format!("127.0.0.1:{port}:7001"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let info = first_json_from(child.stdout.take().unwrap(), "attach's report");
    let slirp_pid = info["pid"].as_u64().unwrap() as u32;
    assert!(pid_exists(slirp_pid));
    // slirp4netns's sandbox (pivot_root in its own mount namespace) must not
    // unmount anything of the host's, such as this netns.
    assert!(
        is_mounted(&made.path),
        "{} was unmounted on the host",
        made.path.display()
    );

    let tap = netns_util::interface_info(&ns, "tap0").unwrap();
    assert!(tap.up);
    assert!(
        tap.addresses.contains(&("10.0.2.100".parse().unwrap(), 24)),
        "{tap:?}"
    );
    assert!(tap.mac.is_some(), "{tap:?}");
    let route = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/route"))
        .unwrap()
        .unwrap();
    assert!(
        route
            .lines()
            .any(|l| l.starts_with("tap0\t00000000\t0202000A")),
        "{route}"
    );
    assert_eq!(
        ns.run(|| std::fs::read_to_string(dad))
            .unwrap()
            .unwrap()
            .trim(),
        "2"
    );

    let data = payload(300_000, 3);
    assert!(echo_through(port, &data) == data, "echo differs");
    assert_eq!(echo.join().unwrap(), data.len());

    let stats = json_output(
        Command::new(slirpnet_bin())
            .args(["stats", "--json", "--netns"])
            .arg(&made.path),
    );
    assert!(
        stats["counters"]["rx_bytes"].as_u64().unwrap() >= data.len() as u64,
        "{stats}"
    );
    assert!(
        stats["counters"]["tx_bytes"].as_u64().unwrap() >= data.len() as u64,
        "{stats}"
    );
    let human = Command::new(slirpnet_bin())
        .args(["stats", "--netns"])
        .arg(&made.path)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("tap0: UP") && human.contains("inet 10.0.2.100/24"),
        "{human}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_limited(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        !pid_exists(slirp_pid),
        "slirp4netns {slirp_pid} left behind"
    );
    let sock = PathBuf::from(info["api_socket"].as_str().unwrap());
    assert!(
        !sock.parent().unwrap().exists(),
        "API socket dir left behind"
    );
    let path = made.path.clone();
    drop(made);
    assert!(
        !is_mounted(&path) && !path.exists(),
        "netns mount left behind"
    );
}

#[test]
fn attach_exits_125_when_slirp4netns_dies() {
    if !require_slirp("attach_exits_125_when_slirp4netns_dies") {
        return;
    }
    let made = PersistentNetns::new("death").unwrap();
    let mut child = Command::new(slirpnet_bin())
        .args(["attach", "--json", "--netns"])
        .arg(&made.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let info = first_json_from(child.stdout.take().unwrap(), "attach's report");
    let slirp_pid = info["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(slirp_pid), Signal::SIGKILL).unwrap();
    let status = wait_limited(&mut child, Duration::from_secs(5));
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(125), "{err}");
    assert!(
        err.contains("slirp4netns exited (signal 9 (SIGKILL))"),
        "{err}"
    );
    assert!(!pid_exists(slirp_pid as u32));
}

#[test]
fn dry_run_prints_the_plan_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let (_d, fake) = fake_slirp(&format!("touch {}", marker.display())).unwrap();
    let plan = json_output(
        Command::new(slirpnet_bin())
            .args([
                "attach",
                "--dry-run",
                "--json",
                "--netns",
                "/run/netns/x",
                "-o",
                "port_handler=slirp4netns",
                "-o",
                "cidr=10.9.0.0/16",
                "-p",
                "127.0.0.1:8080-8081:80-81/tcp,udp",
                "--slirp4netns",
            ])
            .arg(&fake),
    );
    assert_eq!(plan["guest"], "10.9.0.100");
    assert_eq!(plan["gateway"], "10.9.0.2");
    assert_eq!(plan["dns"], "10.9.0.3");
    assert_eq!(plan["forwards"].as_array().unwrap().len(), 4);
    let argv: Vec<&str> = plan["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        argv.contains(&"--cidr=10.9.0.0/16")
            && argv.ends_with(&["--netns-type=path", "/run/netns/x", "tap0"]),
        "{argv:?}"
    );
    assert!(!marker.exists(), "dry run started slirp4netns");

    let out = Command::new(slirpnet_bin())
        .args(["run", "--dry-run", "--slirp4netns"])
        .arg(&fake)
        .args(["--", "true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("would run: ") && text.contains("guest    10.0.2.100"),
        "{text}"
    );
}

/// Kills `slirpnet run` with SIGKILL and checks that the command, slirp4netns
/// and rootlessport do not outlive it. `as_user` runs it rootless.
fn killed_run_leaves_nothing(slirpnet: &Path, as_user: Option<u32>) {
    let (secs, _) = unique_sleeps();
    let secs = secs.to_string();
    let mut cmd = command_as(slirpnet, as_user);
    let port = free_tcp_port();
    let mut child = cmd
        .args(["run", "--json", "-p"])
        .arg(format!("127.0.0.1:{port}:7000"))
        .args(["--", "sleep", &secs])
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `run` reports its setup on stderr (stdout is the command's).
    let info = first_json_from(child.stderr.take().unwrap(), "the setup report");
    let slirp_pid = info["pid"].as_u64().unwrap() as u32;
    // The command runs in a PID namespace of its own: find it on the host
    // by its argv.
    let mut command = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            command = live_pids_with_argv(&["sleep", &secs]);
            !command.is_empty()
        }),
        "the command never started"
    );
    // slirp4netns and rootlessport are slirpnet's children.
    let forwarder =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "rootlessport")
            })
            .expect("rootlessport among slirpnet's children");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    for (what, pid) in [
        ("the command", command[0]),
        ("slirp4netns", slirp_pid),
        ("rootlessport", forwarder),
    ] {
        while pid_exists(pid) && !is_zombie(pid) {
            assert!(
                Instant::now() < deadline,
                "{what} ({pid}) still runs 5 s after slirpnet was killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `slirpnet run -- sh -c 'sleep A & sleep B & echo ready; wait'`, then
/// `sig` to slirpnet: its status is the command's (or SIGKILL's), and
/// neither sleep, which the command left in the background, survives.
fn session_end_leaves_no_descendants(slirpnet: &Path, as_user: Option<u32>, sig: Signal) {
    let mut cmd = command_as(slirpnet, as_user);
    cmd.args(["run", "--", "sh", "-c"]);
    let (mut child, sleeps) = start_with_background_sleeps(cmd);
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    let status = wait_limited(&mut child, Duration::from_secs(20));
    use std::os::unix::process::ExitStatusExt;
    match sig {
        Signal::SIGKILL => assert_eq!(status.signal(), Some(9)),
        // The shell (the command) dies of it: 128 + N becomes ours.
        _ => assert_eq!(
            status.code(),
            Some(128 + sig as i32),
            "{sig} reaches the command and its death is our status"
        ),
    }
    assert!(
        wait_until(Duration::from_secs(5), || sleeps().is_empty()),
        "after {sig} to slirpnet{}, the command's children still run: {:?}",
        if as_user.is_some() { " (rootless)" } else { "" },
        sleeps()
    );
}

#[test]
fn a_session_leaves_none_of_the_commands_descendants() {
    if !require_slirp("a_session_leaves_none_of_the_commands_descendants") {
        return;
    }
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL] {
        session_end_leaves_no_descendants(&slirpnet_bin(), None, sig);
    }
}

#[test]
fn a_rootless_session_leaves_none_of_the_commands_descendants() {
    if !require(
        "a_rootless_session_leaves_none_of_the_commands_descendants",
        rootless_possible(),
    ) {
        return;
    }
    let (_dir, bins) = world_runnable(&[&slirpnet_bin()]).unwrap();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL] {
        session_end_leaves_no_descendants(&bins[0], Some(65534), sig);
    }
}

/// A zombie is gone for our purposes: it runs nothing and holds no port.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn a_killed_slirpnet_takes_its_command_and_helpers_along() {
    if !require_slirp("a_killed_slirpnet_takes_its_command_and_helpers_along") {
        return;
    }
    slirpnet_tests::rootlessport_bin();
    killed_run_leaves_nothing(&slirpnet_bin(), None);
}

#[test]
fn a_killed_rootless_slirpnet_takes_its_command_and_helpers_along() {
    if !require(
        "a_killed_rootless_slirpnet_takes_its_command_and_helpers_along",
        rootless_possible(),
    ) {
        return;
    }
    let (_dir, bins) =
        world_runnable(&[&slirpnet_bin(), &slirpnet_tests::rootlessport_bin()]).unwrap();
    killed_run_leaves_nothing(&bins[0], Some(65534));
}

#[test]
fn a_closed_report_pipe_does_not_abort_the_session() {
    if !require_slirp("a_closed_report_pipe_does_not_abort_the_session") {
        return;
    }
    // stderr is a pipe whose reader is gone before slirpnet writes its
    // report: every write to it fails with EPIPE. The command must run all
    // the same, and its status become slirpnet's.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let mut child = Command::new(slirpnet_bin())
        .args(["run", "--json", "--"])
        .args(["sh", "-c"])
        .arg(format!("touch {}; exit 7", ran.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::from(writer)))
        .spawn()
        .unwrap();
    let status = wait_limited(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(7), "the session was aborted");
    assert!(ran.exists(), "the command never ran");
}

/// The pids of `pid`'s children (every thread's).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `slirpnet run` (rootless with `as_user`) starts slirp4netns with its
/// sandbox and seccomp filter on: the flags in its argv, its root a tmpfs
/// in a mount namespace of its own, seccomp mode 2.
fn slirp4netns_runs_sandboxed(as_user: Option<u32>) {
    let (_dir, bins) =
        world_runnable(&[&slirpnet_bin(), &slirpnet_tests::rootlessport_bin()]).unwrap();
    let mut run = command_as(&bins[0], as_user)
        .env_remove("XDG_RUNTIME_DIR")
        .env("SLIRPNET_QUIET", "1")
        .current_dir("/")
        .args(["run", "-p", &format!("127.0.0.1:{}:80", free_tcp_port())])
        .args(["--", "sh", "-c", "read line || true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let slirp = loop {
        let found = children(run.id()).into_iter().find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim() == "slirp4netns")
                && std::fs::read_to_string(format!("/proc/{c}/status"))
                    .is_ok_and(|s| s.contains("Seccomp:\t2"))
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no sandboxed slirp4netns under slirpnet run ({as_user:?}) within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let argv = std::fs::read(format!("/proc/{slirp}/cmdline")).unwrap();
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        argv.iter().any(|a| a == "--enable-sandbox")
            && argv.iter().any(|a| a == "--enable-seccomp"),
        "{argv:?}"
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{slirp}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    let mounts = std::fs::read_to_string(format!("/proc/{slirp}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default();
    assert!(
        root.contains(" - tmpfs "),
        "not pivoted into its sandbox: {root}"
    );
    drop(run.stdin.take());
    let status = run.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn slirp4netns_runs_sandboxed_as_root() {
    if !require_slirp("slirp4netns_runs_sandboxed_as_root") {
        return;
    }
    slirp4netns_runs_sandboxed(None);
}

#[test]
fn slirp4netns_runs_sandboxed_rootless_too() {
    if !require(
        "slirp4netns_runs_sandboxed_rootless_too",
        rootless_possible(),
    ) {
        return;
    }
    slirp4netns_runs_sandboxed(Some(65534));
}
