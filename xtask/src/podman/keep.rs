//! The client-address runs of `cargo xtask podman`:
//! `ROOTLESSPORT_KEEP_SOURCE_IP=1` through containers.conf, with podman in a
//! namespace that plays the host and a client in a second one.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::*;

/// The host namespace's address (podman publishes ports there).
pub(super) const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The client namespace's address: what the container must see with keep.
pub(super) const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// What README.md tells users to put in containers.conf.
pub(super) const KEEP_CONF: &str = "[engine]\nenv = [\"ROOTLESSPORT_KEEP_SOURCE_IP=1\"]\n";
pub(super) const KEEP_VAR: &str = "ROOTLESSPORT_KEEP_SOURCE_IP";
/// The protocol rootlessport marks its rules and routes with.
pub(super) const MARK: &str = "proto 82";
/// The CGI script under busybox httpd that reports the peer it saw.
pub(super) const PEER_CGI: &str =
    "#!/bin/busybox sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n";
/// The container's service: busybox httpd (TCP, the CGI above) and, as
/// busybox-static has no UDP server, this program's `podman-udp-peer` (UDP,
/// replies with the sender's address), both on port 8000.
pub(super) const PEER_SERVICE: &str =
    "/bin/xtask podman-udp-peer 8000 & exec /bin/busybox httpd -f -p 8000 -h /www";

/// The two namespaces of the keep runs: `host`, where podman runs, and
/// `client`, joined by a veth pair. Deleted on drop, after ending what still
/// runs inside them.
pub(super) struct Lab {
    host: String,
    client: String,
}

impl Lab {
    fn make() -> Result<Lab> {
        let pid = std::process::id();
        let lab = Lab {
            host: format!("slirpnet-podman-host-{pid}"),
            client: format!("slirpnet-podman-client-{pid}"),
        };
        let ip = |ns: &str, args: &str| {
            crate::util::run_quiet(Command::new("ip").args(["-n", ns]).args(args.split(' ')))
        };
        for ns in [&lab.host, &lab.client] {
            // A name of ours, left by a run with this pid that was killed.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            crate::util::run_quiet(Command::new("ip").args(["netns", "add", ns]))?;
            ip(ns, "link set lo up")?;
        }
        ip(
            &lab.host,
            &format!(
                "link add veth-host type veth peer name veth-client netns {}",
                lab.client
            ),
        )?;
        ip(&lab.host, &format!("addr add {HOST_ADDR}/24 dev veth-host"))?;
        ip(&lab.host, "link set veth-host up")?;
        ip(
            &lab.client,
            &format!("addr add {CLIENT_ADDR}/24 dev veth-client"),
        )?;
        ip(&lab.client, "link set veth-client up")?;
        Ok(lab)
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{name}"))
    }

    fn host_path(&self) -> PathBuf {
        Self::path(&self.host)
    }

    /// What the service saw of a client asking over `proto` to `addr` from
    /// the namespace `ns` (this program's `podman-peer`, run there).
    fn ask(&self, ns: &str, proto: &str, addr: SocketAddr) -> Result<IpAddr> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", Self::path(ns).display()))
            .arg(std::env::current_exe()?)
            .args(["podman-peer", proto, &addr.to_string()])
            .output()?;
        ensure!(
            out.status.success(),
            "{proto} client to {addr} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let said = stdout_of(&out);
        said.parse()
            .with_context(|| format!("{proto} to {addr}: the service said {said:?}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in [&self.host, &self.client] {
            // Whatever podman left running in them was started by this run.
            if let Some(ns) = ns_id(&Self::path(name)) {
                for pid in pids_in_netns(ns) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A namespace file's identity (device and inode).
pub(super) fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// The processes whose network namespace is `ns`.
pub(super) fn pids_in_netns(ns: (u64, u64)) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(ns))
        .collect()
}

/// The user's containers.conf, for one run: written (keep) or absent, and
/// put back as it was on drop.
pub(super) struct ContainersConf {
    path: PathBuf,
    before: Option<Vec<u8>>,
}

impl ContainersConf {
    fn set(user: &User, keep: bool) -> Result<Self> {
        let dir = user.home.join(".config/containers");
        let path = dir.join("containers.conf");
        let conf = ContainersConf {
            before: std::fs::read(&path).ok(),
            path,
        };
        if keep {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&conf.path, KEEP_CONF)?;
            let gid = id_of(USER, "-g").context("the podman test user has no group")?;
            crate::util::run_quiet(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{}:{gid}", user.uid))
                    .arg(user.home.join(".config")),
            )?;
        } else if conf.before.is_some() {
            std::fs::remove_file(&conf.path)?;
        }
        Ok(conf)
    }
}

impl Drop for ContainersConf {
    fn drop(&mut self) {
        let _ = match &self.before {
            Some(b) => std::fs::write(&self.path, b),
            None => std::fs::remove_file(&self.path),
        };
    }
}

/// An address as a service printed it: `[::ffff:a.b.c.d]` is a.b.c.d.
pub(super) fn parse_seen(said: &str) -> Result<IpAddr> {
    let s = said.trim().trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = s
        .parse()
        .with_context(|| format!("not an address: {said:?}"))?;
    Ok(ip.to_canonical())
}

/// `xtask podman-peer tcp|udp ADDR`: asks the keep runs' service which
/// address it sees this client as, and prints it.
pub fn peer_client(args: &[String]) -> Result<()> {
    let [proto, addr] = args else {
        bail!("usage: podman-peer tcp|udp ADDR:PORT");
    };
    let addr: SocketAddr = addr.parse()?;
    let said = match proto.as_str() {
        "tcp" => get(addr, "/cgi-bin/peer")?,
        "udp" => {
            let any: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(any)?;
            s.connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut buf = [0u8; 256];
            let mut reply = None;
            // The responder may still be starting: ask again.
            for _ in 0..8 {
                s.send(b"who am I?\n")?;
                if let Ok(n) = s.recv(&mut buf) {
                    reply = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                    break;
                }
            }
            reply.with_context(|| format!("no UDP reply from {addr} in 8 s"))?
        }
        other => bail!("unknown protocol {other:?}"),
    };
    println!("{}", parse_seen(&said)?);
    Ok(())
}

/// `xtask podman-udp-peer PORT`: in the container, answers every datagram
/// with its sender's address.
pub fn udp_peer(args: &[String]) -> Result<()> {
    let port: u16 = args
        .first()
        .and_then(|p| p.parse().ok())
        .context("usage: podman-udp-peer PORT")?;
    let s = UdpSocket::bind(("0.0.0.0", port))?;
    let mut buf = [0u8; 2048];
    loop {
        let (_, peer) = s.recv_from(&mut buf)?;
        let _ = s.send_to(format!("{}\n", peer.ip()).as_bytes(), peer);
    }
}

/// Runs `ip ARGS` inside the namespace `ns` is open on.
pub(super) fn ip_in(ns: &File, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!(
            "--net=/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ))
        .arg("ip")
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "ip {} in the container's namespace: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rules and routes rootlessport marked (protocol 82) in a namespace.
pub(super) fn marked(ns: &File) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for args in [
        &["-4", "rule", "show"][..],
        &["-6", "rule", "show"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ] {
        lines.extend(
            ip_in(ns, args)?
                .lines()
                .filter(|l| l.contains(MARK))
                .map(|l| l.trim().to_owned()),
        );
    }
    Ok(lines)
}

/// The namespace's own (non-loopback) IPv4 addresses.
pub(super) fn own_addresses(ns: &File) -> Result<Vec<IpAddr>> {
    let out = ip_in(ns, &["-4", "-o", "addr", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            w.next()?.split('/').next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !ip.is_loopback())
        .collect())
}

/// What a keep run needs after `podman run`: the container's namespace,
/// held open, and its own addresses.
pub(super) struct Started {
    ns: File,
    own: Vec<IpAddr>,
}

/// One keep run: the container with our helper inside the lab's host
/// namespace, `keep` deciding containers.conf. Returns its checks, each
/// `(what, detail or error)`.
pub(super) fn keep_run(
    user: &User,
    helper_dir: &Path,
    runtime: &[&str],
    network: Network,
    keep: bool,
    lab: &Lab,
    port: u16,
) -> Vec<(&'static str, Result<String>)> {
    let labels: &[&'static str] = if keep {
        &[
            "TCP client 192.0.2.2",
            "UDP client 192.0.2.2",
            "loopback clients",
            "teardown",
        ]
    } else {
        &["TCP client 192.0.2.2", "UDP client 192.0.2.2", "teardown"]
    };
    let all_fail = |e: anyhow::Error| -> Vec<(&'static str, Result<String>)> {
        labels.iter().map(|l| (*l, Err(anyhow!("{e:#}")))).collect()
    };
    let conf = match ContainersConf::set(user, keep) {
        Ok(c) => c,
        Err(e) => return all_fail(e.context("containers.conf")),
    };
    let host_ns = lab.host_path();
    let podman = |args: &[&str]| -> Result<Output> {
        Ok(user
            .podman_in(helper_dir, Some(&host_ns))
            .args(args)
            .output()?)
    };
    let name = format!("slirpnet-podman-keep-{port}");
    let rootfs = user.home.join("rootfs");
    let mut run_args: Vec<&str> = vec!["run", "--detach", "--name", &name];
    run_args.extend(runtime);
    let tcp = format!("{port}:8000/tcp");
    let udp = format!("{port}:8000/udp");
    let rootfs_arg = rootfs.to_string_lossy().into_owned();
    run_args.extend([
        "--network",
        network.arg(),
        "--publish",
        &tcp,
        "--publish",
        &udp,
        "--rootfs",
        &rootfs_arg,
        "/bin/busybox",
        "sh",
        "-c",
        PEER_SERVICE,
    ]);
    let started = (|| -> Result<Started> {
        let out = podman(&run_args)?;
        ensure!(
            out.status.success(),
            "podman run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let helpers: Vec<(u32, PathBuf)> = user
            .processes()
            .into_iter()
            .filter(|(_, _, comm)| comm == "rootlessport")
            .filter_map(|(pid, exe, _)| Some((pid, exe?)))
            .collect();
        let [(helper_pid, helper)] = &helpers[..] else {
            bail!("expected one rootlessport process of {USER}, found {helpers:?}");
        };
        ensure!(
            helper.parent() == Some(helper_dir),
            "podman started {} instead of ours",
            helper.display()
        );
        // containers.conf's [engine] env reached the helper (or did not).
        let environ = std::fs::read(format!("/proc/{helper_pid}/environ"))?;
        let has_var = environ
            .split(|b| *b == 0)
            .any(|v| v == format!("{KEEP_VAR}=1").as_bytes());
        ensure!(
            has_var == keep,
            "the helper's environment {} {KEEP_VAR}=1",
            if has_var { "has" } else { "lacks" }
        );
        let out = podman(&["inspect", "--format", "{{.State.Pid}}", &name])?;
        let pid: u32 = stdout_of(&out)
            .parse()
            .with_context(|| format!("podman inspect: no pid: {out:?}"))?;
        // podman 4.3.1 hands the helper the container's own namespace, for
        // slirp4netns and rootless CNI alike. Held open past podman rm.
        let ns = File::open(format!("/proc/{pid}/ns/net"))?;
        let own = own_addresses(&ns)?;
        ensure!(!own.is_empty(), "the container's namespace has no address");
        Ok(Started { ns, own })
    })();
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = podman(&["rm", "--force", "--time", "0", &name]);
            return all_fail(e);
        }
    };
    let own = &started.own;
    let is_own = |ip: IpAddr| own.contains(&ip);
    let to_host = SocketAddr::from((HOST_ADDR, port));
    let client_check = |proto: &str| -> Result<String> {
        let seen = lab.ask(&lab.client, proto, to_host)?;
        if keep {
            ensure!(
                seen == IpAddr::V4(CLIENT_ADDR),
                "the container saw {seen}, not {CLIENT_ADDR}"
            );
            Ok(format!("the container saw {seen}"))
        } else {
            ensure!(
                is_own(seen),
                "the container saw {seen}, not one of its namespace's own {own:?}"
            );
            Ok(format!(
                "the container saw {seen}, its namespace's own address, not {CLIENT_ADDR}"
            ))
        }
    };
    let mut checks = vec![
        ("TCP client 192.0.2.2", client_check("tcp")),
        ("UDP client 192.0.2.2", client_check("udp")),
    ];
    if keep {
        let loopback = (|| -> Result<String> {
            let mut seen_all = Vec::new();
            for (proto, addr) in [
                ("tcp", SocketAddr::from(([127, 0, 0, 1], port))),
                (
                    "tcp",
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                ),
                ("udp", SocketAddr::from(([127, 0, 0, 1], port))),
            ] {
                let seen = lab.ask(&lab.host, proto, addr)?;
                ensure!(
                    !seen.is_loopback() && is_own(seen),
                    "{proto} from {addr}: the container saw {seen}, not its namespace's \
                     own {own:?}"
                );
                seen_all.push(seen);
            }
            seen_all.dedup();
            Ok(format!(
                "127.0.0.1 and [::1] over TCP, 127.0.0.1 over UDP: the container saw {}, \
                 its namespace's own",
                seen_all
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })();
        checks.push(("loopback clients", loopback));
    }
    let before = marked(&started.ns);
    let rm = podman(&["rm", "--force", "--time", "0", &name]);
    let teardown = (|| -> Result<String> {
        let before = before?;
        if keep {
            ensure!(
                before.iter().any(|l| l.contains("from "))
                    && before
                        .iter()
                        .any(|l| l.starts_with(&format!("local {CLIENT_ADDR} "))),
                "before podman rm, expected the helper's rules and a route to {CLIENT_ADDR}, \
             found {before:?}"
            );
        } else {
            ensure!(
                before.is_empty(),
                "without {KEEP_VAR} the helper marked {before:?}"
            );
        }
        let rm = rm?;
        ensure!(
            rm.status.success(),
            "podman rm failed: {}",
            String::from_utf8_lossy(&rm.stderr).trim()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let helpers: Vec<_> = user
                .processes()
                .into_iter()
                .filter(|(_, _, comm)| comm.starts_with("rootlessport"))
                .collect();
            let after = marked(&started.ns)?;
            if helpers.is_empty() && after.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "5 s after podman rm: helpers {helpers:?}, marked {after:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(format!(
            "{} rules/routes marked {MARK} before podman rm, none after; helper gone",
            before.len()
        ))
    })();
    checks.push(("teardown", teardown));
    drop(conf);
    checks
}

/// The keep runs: for each network, ours with and then without the
/// variable. Rows of `(who, network, what, result)`.
pub(super) fn keep_rows(
    user: &User,
    helper_dir: &Path,
    runtime: &[&str],
) -> Vec<(&'static str, Network, &'static str, Result<String>)> {
    let plan = [
        ("ours+keep", Network::Slirp, true),
        ("ours", Network::Slirp, false),
        ("ours+keep", Network::Bridge, true),
        ("ours", Network::Bridge, false),
    ];
    let lab = match Lab::make() {
        Ok(lab) => lab,
        Err(e) => {
            return plan
                .iter()
                .map(|(who, net, _)| (*who, *net, "namespaces", Err(anyhow!("{e:#}"))))
                .collect()
        }
    };
    let mut rows = Vec::new();
    for (who, network, keep) in plan {
        let checks = match free_port() {
            Ok(port) => keep_run(user, helper_dir, runtime, network, keep, &lab, port),
            Err(e) => vec![("port", Err(e))],
        };
        rows.extend(checks.into_iter().map(|(what, r)| (who, network, what, r)));
    }
    drop(lab);
    rows
}
