//! `cargo xtask podman`: real rootless podman with our rootlessport as its
//! helper, side by side with podman's own Go helper.
//!
//! A throw-away user with subordinate ids runs a busybox httpd container
//! (`--rootfs`, so no image is pulled) with `-p` through
//! `port_handler=rootlesskit`. For each helper it checks which binary podman
//! started, fetches a page over IPv4 and IPv6 loopback, removes the container
//! and checks the helper is gone and its reload socket removed.
//!
//! Then, with our helper only, client addresses: podman runs inside a network
//! namespace made for the run that plays the host (192.0.2.1/24 on a veth
//! pair whose other end, 192.0.2.2/24, is in a second namespace, the
//! client's). With `ROOTLESSPORT_KEEP_SOURCE_IP=1` set the documented way, in
//! the user's `~/.config/containers/containers.conf` (`[engine] env`), the
//! container must see a TCP and a UDP client in the client namespace as
//! 192.0.2.2 and loopback clients as its namespace's own address; without
//! it, every client as the namespace's own address; after `podman rm` no
//! rule or route of the helper (protocol 82) is left in the container's
//! namespace and no helper runs. Traffic goes only to loopback and to the
//! addresses of these namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

mod keep;
use keep::*;
pub use keep::{peer_client, udp_peer};

/// The user made for the run (and removed after it when this run made it).
const USER: &str = "slirpnet-podman";
/// podman's own helper as Debian ships it.
const GO_HELPER_DIR: &str = "/usr/lib/podman";
/// The page the container serves.
const PAGE: &str = "hello from the container\n";

/// Extra `podman run` flags, tried in order until podman's own helper runs:
/// the defaults, then runc with cgroupfs (crun refuses hybrid cgroups).
const RUNTIME_CHOICES: &[&[&str]] = &[&[], &["--runtime", "runc", "--cgroup-manager=cgroupfs"]];

/// The throw-away user: name, uid, home, and whether this run made it.
struct User {
    uid: u32,
    home: PathBuf,
    made_here: bool,
}

impl User {
    fn ensure() -> Result<Self> {
        let made_here = uid_of(USER).is_none();
        if made_here {
            crate::util::run(Command::new("useradd").args([
                "--create-home",
                "--shell",
                "/bin/sh",
                USER,
            ]))?;
        }
        // rootless podman needs subordinate ids; useradd adds them on most
        // systems, usermod covers the rest.
        let has_range = |file: &str| {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(&format!("{USER}:")))
        };
        if !has_range("/etc/subuid") || !has_range("/etc/subgid") {
            crate::util::run(Command::new("usermod").args([
                "--add-subuids",
                "300000-365535",
                "--add-subgids",
                "300000-365535",
                USER,
            ]))?;
        }
        let uid = uid_of(USER).context("the podman test user has no uid after useradd")?;
        Ok(User {
            uid,
            home: PathBuf::from(format!("/home/{USER}")),
            made_here,
        })
    }

    /// A command run as the user with a clean login-like environment.
    fn command(&self, program: &str) -> Command {
        self.command_in(None, program)
    }

    /// `command`, inside the network namespace at `netns` when given
    /// (`nsenter --net=NETNS runuser ...`: root enters it, then becomes the
    /// user as `command` does).
    fn command_in(&self, netns: Option<&Path>, program: &str) -> Command {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("runuser");
                c
            }
            None => Command::new("runuser"),
        };
        cmd.args(["-u", USER, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={USER}"))
            .arg(format!("LOGNAME={USER}"))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(program)
            .current_dir("/");
        cmd
    }

    fn podman(&self, helper_dir: &Path) -> Command {
        self.podman_in(helper_dir, None)
    }

    /// `podman`, inside the network namespace at `netns` when given.
    fn podman_in(&self, helper_dir: &Path, netns: Option<&Path>) -> Command {
        let mut cmd = self.command_in(netns, "env");
        cmd.arg(format!(
            "CONTAINERS_HELPER_BINARY_DIR={}",
            helper_dir.display()
        ))
        .arg("podman");
        cmd
    }

    /// Every process of the user, as (pid, exe) pairs; zombies have no exe.
    fn processes(&self) -> Vec<(u32, Option<PathBuf>, String)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
            if uid != Some(self.uid) {
                continue;
            }
            let state = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .unwrap_or("")
                .trim()
                .to_owned();
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let exe = std::fs::read_link(e.path().join("exe")).ok();
            if !state.starts_with('Z') {
                out.push((pid, exe, comm.trim().to_owned()));
            }
        }
        out
    }

    /// Removes what the run left: containers, the user's podman state and,
    /// when this run made it, the user.
    fn clean_up(&self) {
        let _ = self
            .command("podman")
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
        let _ = self
            .command("podman")
            .args(["network", "rm", "--force", RELOAD_NET])
            .output();
        if self.made_here {
            let _ = self
                .command("podman")
                .args(["system", "reset", "--force"])
                .output();
            for (pid, _, _) in self.processes() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = std::fs::remove_dir_all(format!("/tmp/podman-run-{}", self.uid));
            let _ = std::fs::remove_dir_all(format!("/tmp/containers-user-{}", self.uid));
            let _ = Command::new("userdel").args(["--remove", USER]).output();
        }
    }
}

fn uid_of(user: &str) -> Option<u32> {
    id_of(user, "-u")
}

/// `id -u USER` or `id -g USER`.
fn id_of(user: &str, which: &str) -> Option<u32> {
    let out = Command::new("id").args([which, user]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// GET / over plain HTTP/1.0 and return the body.
fn fetch(addr: SocketAddr) -> Result<String> {
    get(addr, "/")
}

/// GET `path` over plain HTTP/1.0 and return the body.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .with_context(|| format!("read the reply from {addr}"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .with_context(|| format!("no HTTP reply from {addr}: {reply:?}"))?;
    Ok(body)
}

/// How the container is networked.
#[derive(Clone, Copy, PartialEq)]
enum Network {
    /// `slirp4netns:port_handler=rootlesskit`: the helper forwards to
    /// slirp4netns's guest address; no reload socket.
    Slirp,
    /// A rootless CNI bridge: the helper runs with RootlessCNI, forwards to the
    /// container's bridge address and is reloaded on network (dis)connect.
    Bridge,
}

impl Network {
    fn arg(self) -> &'static str {
        match self {
            Network::Slirp => "slirp4netns:port_handler=rootlesskit",
            Network::Bridge => "bridge",
        }
    }
}

/// A second network to move the container to, so that the helper must reload.
const RELOAD_NET: &str = "slirpnet-reload";

/// What one helper did.
struct Outcome {
    run_ms: f64,
    helper: PathBuf,
}

/// The page must come back on IPv4 and IPv6 loopback.
fn fetch_both(port: u16, when: &str) -> Result<()> {
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        let body = fetch(addr).with_context(|| when.to_owned())?;
        ensure!(body == PAGE, "{when}: {addr} served {body:?}, not the page");
    }
    Ok(())
}

/// Runs the container with the helper in `helper_dir` and checks it.
fn one_helper(
    user: &User,
    helper_dir: &Path,
    runtime: &[&str],
    network: Network,
    port: u16,
) -> Result<Outcome> {
    let name = format!("slirpnet-podman-{port}");
    let started = Instant::now();
    let out = user
        .podman(helper_dir)
        .args(["run", "--detach", "--name", &name])
        .args(runtime)
        .args([
            "--network",
            network.arg(),
            "--publish",
            &format!("{port}:8000"),
            "--rootfs",
        ])
        .arg(user.home.join("rootfs"))
        .args(["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"])
        .output()?;
    let run_ms = started.elapsed().as_secs_f64() * 1e3;
    let id = stdout_of(&out);
    let socket = PathBuf::from(format!("/tmp/podman-run-{}/libpod/tmp/rp/{id}", user.uid));
    let podman_ok = |args: &[&str]| -> Result<()> {
        let out = user.podman(helper_dir).args(args).output()?;
        ensure!(
            out.status.success(),
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let result = (|| -> Result<Outcome> {
        ensure!(
            out.status.success(),
            "podman run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // podman asks for the reload socket only for rootless CNI.
        ensure!(
            socket.exists() == (network == Network::Bridge),
            "reload socket at {}: expected {}, found {}",
            socket.display(),
            network == Network::Bridge,
            socket.exists()
        );
        let helpers: Vec<PathBuf> = user
            .processes()
            .into_iter()
            .filter(|(_, _, comm)| comm == "rootlessport")
            .filter_map(|(_, exe, _)| exe)
            .collect();
        ensure!(
            helpers.len() == 1,
            "expected one rootlessport process of {USER}, found {helpers:?}"
        );
        let helper = helpers[0].clone();
        ensure!(
            helper.parent() == Some(helper_dir),
            "podman started {} instead of the helper in {}",
            helper.display(),
            helper_dir.display()
        );
        fetch_both(port, "after podman run")?;
        if network == Network::Bridge {
            // Moving the container to another network takes its first
            // address away: only a reloaded helper still reaches it.
            podman_ok(&["network", "connect", RELOAD_NET, &name])?;
            podman_ok(&["network", "disconnect", "podman", &name])?;
            fetch_both(port, "after moving the container to another network")?;
        }
        Ok(Outcome { run_ms, helper })
    })();
    // Removed on every path, so a refused invocation leaves nothing behind.
    let rm = podman_ok(&["rm", "--force", "--time", "0", &name]);
    let outcome = result?;
    rm?;
    // The helper goes with the container; so does its reload socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<_> = user
            .processes()
            .into_iter()
            .filter(|(_, _, comm)| comm.starts_with("rootlessport"))
            .collect();
        if left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "rootlessport still running 5 s after podman rm: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        !socket.exists(),
        "the reload socket {} outlived the container",
        socket.display()
    );
    Ok(outcome)
}

/// The whole run; see the module docs. Returns how many runs passed and
/// failed; an error when it could not run at all.
pub fn podman(root: &Path) -> Result<super::Totals> {
    ensure!(
        crate::util::is_root(),
        "cargo xtask podman needs root (it makes a user)"
    );
    crate::util::install_missing(&[
        // podman needs a network stack; CNI is what 4.3.1 uses for rootless
        // bridges (named here so apt does not pick netavark instead).
        ("containernetworking-plugins", "/usr/lib/cni/bridge"),
        ("podman", "podman"),
        ("podman", "/usr/lib/podman/rootlessport"),
        ("runc", "runc"),
        ("uidmap", "newuidmap"),
        ("busybox-static", "/bin/busybox"),
    ])?;
    let status = crate::util::cargo()
        .args(["build", "--release", "-q", "-p", "rootlessport"])
        .status()?;
    ensure!(
        status.success(),
        "cargo build --release -p rootlessport failed"
    );

    // Our helper in a directory of its own that the user can read.
    let helper_tmp = tempfile::Builder::new()
        .prefix("slirpnet-podman-helper-")
        .tempdir()?;
    let helper_dir = helper_tmp.path().to_owned();
    let ours = helper_dir.join("rootlessport");
    std::fs::copy(root.join("target/release/rootlessport"), &ours)?;
    std::fs::set_permissions(&helper_dir, std::fs::Permissions::from_mode(0o755))?;

    let user = User::ensure()?;
    let result = (|| -> Result<super::Totals> {
        make_rootfs(&user)?;
        let go_dir = Path::new(GO_HELPER_DIR);
        // podman's own helper decides which invocation this machine accepts.
        let mut probe = None;
        let mut refusals = Vec::new();
        for choice in RUNTIME_CHOICES {
            match one_helper(&user, go_dir, choice, Network::Slirp, free_port()?) {
                Ok(go) => {
                    probe = Some((*choice, go));
                    break;
                }
                Err(e) => refusals.push(format!("podman run {}: {e:#}", choice.join(" "))),
            }
        }
        let Some((runtime, go_slirp)) = probe else {
            bail!(
                "rootless podman does not run here even with its own helper:\n  {}",
                refusals.join("\n  ")
            );
        };
        for r in &refusals {
            println!("(refused here, so the next invocation was used: {r})");
        }
        let net = user
            .command("podman")
            .args(["network", "create", RELOAD_NET])
            .output()?;
        ensure!(
            net.status.success(),
            "podman network create {RELOAD_NET}: {}",
            String::from_utf8_lossy(&net.stderr).trim()
        );
        let mut rows = vec![("Go helper", Network::Slirp, Ok(go_slirp))];
        rows.push((
            "ours",
            Network::Slirp,
            one_helper(&user, &helper_dir, runtime, Network::Slirp, free_port()?),
        ));
        for (who, dir) in [("Go helper", go_dir), ("ours", helper_dir.as_path())] {
            rows.push((
                who,
                Network::Bridge,
                one_helper(&user, dir, runtime, Network::Bridge, free_port()?),
            ));
        }
        println!(
            "\nrootless {} ({}), -p PORT:8000 to a busybox httpd:",
            podman_version(&user),
            if runtime.is_empty() {
                "default runtime".to_owned()
            } else {
                runtime.join(" ")
            }
        );
        let mut failed = 0usize;
        for (who, network, outcome) in &rows {
            let checks = match network {
                Network::Slirp => "page on 127.0.0.1 and [::1]",
                Network::Bridge => {
                    "page on 127.0.0.1 and [::1], and again after network connect + \
                     disconnect (reload)"
                }
            };
            match outcome {
                Ok(o) => println!(
                    "  ok    {who:9} --network {:36} {}: podman run -d {:.0} ms; {checks}; \
                     helper and reload socket gone after podman rm",
                    network.arg(),
                    o.helper.display(),
                    o.run_ms
                ),
                Err(e) => {
                    failed += 1;
                    println!("  FAIL  {who:9} --network {:36} {e:#}", network.arg());
                }
            }
        }
        let keep = keep_rows(&user, &helper_dir, runtime);
        println!(
            "\nour helper, podman run inside a namespace with {HOST_ADDR}/24, clients in another \
             with {CLIENT_ADDR}/24; ours+keep: {KEEP_VAR}=1 from ~/.config/containers/\
             containers.conf ([engine] env), ours: without it; -p PORT:8000/tcp (busybox httpd, \
             a CGI prints REMOTE_ADDR) and -p PORT:8000/udp (a responder replies with the \
             sender's address):"
        );
        for (who, network, what, result) in &keep {
            match result {
                Ok(detail) => println!(
                    "  ok    {who:9} --network {:36} {what}: {detail}",
                    network.arg()
                ),
                Err(e) => {
                    failed += 1;
                    println!(
                        "  FAIL  {who:9} --network {:36} {what}: {e:#}",
                        network.arg()
                    );
                }
            }
        }
        let total = rows.len() + keep.len();
        Ok(super::Totals {
            passed: (total - failed) as u64,
            failed: failed as u64,
        })
    })();
    user.clean_up();
    drop(helper_tmp);
    result
}

fn podman_version(user: &User) -> String {
    user.command("podman")
        .arg("--version")
        .output()
        .map(|o| stdout_of(&o))
        .unwrap_or_default()
}

/// A busybox rootfs in the user's home, owned by the user.
fn make_rootfs(user: &User) -> Result<()> {
    let rootfs = user.home.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for dir in ["bin", "www", "run", "proc", "dev", "sys", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::fs::write(rootfs.join("www/index.html"), PAGE)?;
    // The keep runs' service: a CGI that prints the peer httpd saw, and this
    // program (with the libraries it loads) for UDP.
    std::fs::create_dir_all(rootfs.join("www/cgi-bin"))?;
    let cgi = rootfs.join("www/cgi-bin/peer");
    std::fs::write(&cgi, PEER_CGI)?;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755))?;
    let exe = std::env::current_exe()?;
    std::fs::copy(&exe, rootfs.join("bin/xtask"))?;
    // ldd fails on a static executable, which needs nothing more.
    let ldd = Command::new("ldd").arg(&exe).output()?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().context("a library path has a folder")?)?;
        std::fs::copy(lib, &to).with_context(|| format!("copy {lib} into the rootfs"))?;
    }
    let gid = id_of(USER, "-g").context("the podman test user has no group")?;
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, gid))
        .arg(&rootfs)
        .status()?;
    ensure!(status.success(), "chown of {} failed", rootfs.display());
    Ok(())
}

fn free_port() -> Result<u16> {
    // podman binds [::] for an empty host IP; a dual-stack bind that works
    // means the port is free on both stacks.
    let l = std::net::TcpListener::bind("[::]:0")?;
    Ok(l.local_addr()?.port())
}
