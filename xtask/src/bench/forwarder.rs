//! Starting, measuring and stopping the forwarders under test: rootlessport
//! binaries as podman starts them, and pasta.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::report::{record, Samples};
use super::{Subject, NS_ADDR, NS_GATEWAY};

/// How a subject's forwarder is started.
pub(super) enum Tool {
    /// A rootlessport binary, started as podman starts it.
    Helper(PathBuf),
    /// This pasta binary, attached to the bench namespace.
    Pasta(PathBuf),
}

/// A running forwarder.
pub(super) enum Running {
    Helper(slirp_proc::Helper),
    Pasta(Pasta),
}

/// A forwarder forwarding `mappings` (podman's port mappings) into the
/// bench namespace.
pub(super) struct Forwarder {
    pub(super) running: Running,
}

impl Forwarder {
    pub(super) fn start(
        tool: &Tool,
        ns_path: &str,
        mappings: &serde_json::Value,
    ) -> Result<Forwarder> {
        let running = match tool {
            Tool::Helper(binary) => {
                let config = config(ns_path, mappings.clone());
                let mut cmd = slirp_proc::HelperCommand::new(
                    binary,
                    "rootlessport",
                    config.to_string().into_bytes(),
                );
                cmd.stderr = slirp_proc::HelperStderr::Null;
                Running::Helper(
                    cmd.start()
                        .with_context(|| format!("failed to start {}", binary.display()))?,
                )
            }
            Tool::Pasta(binary) => Running::Pasta(Pasta::start(binary, ns_path, mappings)?),
        };
        Ok(Forwarder { running })
    }

    pub(super) fn pid(&self) -> u32 {
        match &self.running {
            Running::Helper(h) => h.pid(),
            Running::Pasta(p) => p.pid,
        }
    }

    /// From spawn to ready: the helpers' ready byte, pasta's pid file.
    pub(super) fn ready_after(&self) -> Duration {
        match &self.running {
            Running::Helper(h) => h.ready_after(),
            Running::Pasta(p) => p.ready_after,
        }
    }

    /// The pids of the process and all its descendants.
    pub(super) fn tree(&self) -> Vec<u32> {
        let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(after) = stat.rsplit_once(") ").map(|(_, a)| a) else {
                continue;
            };
            if let Some(ppid) = after.split(' ').nth(1).and_then(|p| p.parse().ok()) {
                parents.entry(ppid).or_default().push(pid);
            }
        }
        let mut out = vec![self.pid()];
        let mut i = 0;
        while i < out.len() {
            out.extend(parents.get(&out[i]).cloned().unwrap_or_default());
            i += 1;
        }
        out
    }

    /// Resident memory of the tree, in KiB.
    pub(super) fn rss_kib(&self) -> u64 {
        self.tree()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .sum()
    }

    /// Open fds of the tree.
    pub(super) fn fds(&self) -> usize {
        self.tree()
            .iter()
            .map(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// CPU seconds of the tree so far: the time its threads have been on a
    /// CPU (`/proc/PID/task/TID/schedstat`, in ns), which counts the
    /// softirq work the kernel does in their context, such as the receive
    /// of the connection a forwarder sends into. utime + stime leave out
    /// every tick that lands in a softirq (tick-based accounting without
    /// IRQ time accounting), so a forwarder whose kernel work runs more in
    /// softirqs looked cheaper there; they are used only where schedstat
    /// is missing.
    pub(super) fn cpu_seconds(&self) -> f64 {
        self.tree().iter().map(|pid| on_cpu_seconds(*pid)).sum()
    }

    pub(super) fn stop(self) -> Result<()> {
        match self.running {
            Running::Helper(h) => match h.stop(Duration::from_secs(5)) {
                Ok(_) => Ok(()),
                Err(killed) => bail!("the forwarder ignored its exit pipe for 5 s ({killed})"),
            },
            Running::Pasta(p) => p.stop(),
        }
    }
}

/// pasta in the foreground (`-f`), attached to the bench namespace; killed
/// and reaped on drop if [`Pasta::stop`] did not run.
pub(super) struct Pasta {
    child: Option<Child>,
    pid: u32,
    ready_after: Duration,
    /// Holds the pid file and pasta's stderr; removed on drop.
    dir: tempfile::TempDir,
}

impl Pasta {
    /// Starts pasta and waits (at most 10 s) for its pid file: pasta writes
    /// it once it has bound every host port and joined the namespace, just
    /// before its event loop.
    pub(super) fn start(
        binary: &Path,
        ns_path: &str,
        mappings: &serde_json::Value,
    ) -> Result<Pasta> {
        let dir = tempfile::Builder::new()
            .prefix("slirpnet-bench-pasta")
            .tempdir()
            .context("failed to make a directory for pasta's pid file")?;
        let pid_file = dir.path().join("pasta.pid");
        let stderr = File::create(dir.path().join("stderr"))
            .context("failed to make pasta's stderr file")?;
        let args = pasta_args(ns_path, mappings, &pid_file)?;
        let t0 = Instant::now();
        let child = Command::new(binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("failed to run {}", binary.display()))?;
        let pid = child.id();
        let mut pasta = Pasta {
            child: Some(child),
            pid,
            ready_after: Duration::ZERO,
            dir,
        };
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let written = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if written.ends_with('\n') && written.trim().parse() == Ok(pid) {
                pasta.ready_after = t0.elapsed();
                return Ok(pasta);
            }
            if let Some(status) = pasta
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "pasta exited ({status}) before writing its pid file: {}\n(pasta {})",
                    pasta.stderr_text(),
                    args.join(" ")
                );
            }
            ensure!(
                Instant::now() < deadline,
                "pasta wrote no pid file within 10 s: {}",
                pasta.stderr_text()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn stderr_text(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        // It also complains on stderr that it has no syslog to log to.
        text.lines()
            .filter(|l| !l.starts_with("Failed to send"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, then up to 5 s for it to exit; on any failure, dropping it
    /// kills and reaps it.
    pub(super) fn stop(mut self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("failed to send SIGTERM to pasta")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else {
                return Ok(());
            };
            if child
                .try_wait()
                .context("failed to wait for pasta")?
                .is_some()
            {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("pasta ignored SIGTERM for 5 s; killing it")
    }
}

impl Drop for Pasta {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// pasta's command line for podman's port `mappings`: one `-t`/`-u` per
/// mapping and protocol, `ADDR/HOST[-END]:CONTAINER[-END]`, and nothing that
/// reaches beyond the host's loopback and the bench namespace: no automatic
/// forwards (`-T none -U none`, and `-t none`/`-u none` for an unused
/// protocol), no DNS (`-D none -S none`), no DHCP, NDP, DHCPv6, RA or ICMP
/// handling, no gateway mapping. Without `--config-net` pasta leaves the
/// namespace's addresses and routes alone: its tap (`pasta0`) stays down, so
/// only its splice path carries traffic. That path connects to the guest
/// address pasta is given (`-a`, with `-n` and `-g` to match), not to the
/// namespace's 127.0.0.1: given [`NS_ADDR`], it connects where the
/// helpers connect (without `-a` it picks an address that is not there and
/// every spliced connection is reset).
pub(super) fn pasta_args(
    ns_path: &str,
    mappings: &serde_json::Value,
    pid_file: &Path,
) -> Result<Vec<String>> {
    let mut args: Vec<String> = [
        "-f",
        "--runas",
        "0",
        "-q",
        "--netns-only",
        "--netns",
        ns_path,
        "-P",
        &pid_file.to_string_lossy(),
        "-I",
        "pasta0",
        "-T",
        "none",
        "-U",
        "none",
        "-D",
        "none",
        "-S",
        "none",
        "--no-dhcp",
        "--no-ndp",
        "--no-dhcpv6",
        "--no-ra",
        "--no-icmp",
        "--no-map-gw",
        "-a",
        NS_ADDR,
        "-n",
        "24",
        "-g",
        NS_GATEWAY,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for m in mappings
        .as_array()
        .context("mappings are not a JSON array")?
    {
        let port = |key: &str| {
            m[key]
                .as_u64()
                .with_context(|| format!("mapping {m} has no {key}"))
        };
        let (host, container) = (port("host_port")?, port("container_port")?);
        let range = m["range"].as_u64().unwrap_or(1).max(1);
        let ports = if range == 1 {
            format!("{host}:{container}")
        } else {
            format!(
                "{host}-{}:{container}-{}",
                host + range - 1,
                container + range - 1
            )
        };
        let spec = match m["host_ip"].as_str().unwrap_or("") {
            "" => ports,
            ip => format!("{ip}/{ports}"),
        };
        for proto in m["protocol"].as_str().unwrap_or("tcp").split(',') {
            match proto {
                "tcp" => tcp.push(spec.clone()),
                "udp" => udp.push(spec.clone()),
                other => bail!("pasta: unknown protocol {other:?} in {m}"),
            }
        }
    }
    for (flag, specs) in [("-t", tcp), ("-u", udp)] {
        if specs.is_empty() {
            args.extend([flag.to_owned(), "none".to_owned()]);
        }
        for spec in specs {
            args.extend([flag.to_owned(), spec]);
        }
    }
    Ok(args)
}

pub(super) fn config(netns: &str, mappings: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "Mappings": mappings,
        "NetNSPath": netns,
        "ExitFD": 3,
        "ReadyFD": 4,
        "TmpDir": std::env::temp_dir(),
        "ChildIP": NS_ADDR,
        "ContainerID": format!("bench{}", std::process::id()),
        "RootlessCNI": false,
    })
}

/// Starts a forwarder for `mappings` and records, under the three metric
/// names, its spawn-to-ready time (ms), then its RSS (KiB) and fd count once
/// settled; stops it.
pub(super) fn footprint(
    s: &mut Samples,
    who: Subject,
    tool: &Tool,
    ns_path: &str,
    mappings: &serde_json::Value,
    [ready, rss, fds]: [&'static str; 3],
) -> Result<()> {
    let f = Forwarder::start(tool, ns_path, mappings)?;
    record(s, ready, who, f.ready_after().as_secs_f64() * 1e3);
    std::thread::sleep(Duration::from_millis(200));
    record(s, rss, who, f.rss_kib() as f64);
    record(s, fds, who, f.fds() as f64);
    f.stop()
}

/// Seconds the threads of `pid` have been on a CPU (schedstat), or its
/// utime + stime where schedstat cannot be read.
fn on_cpu_seconds(pid: u32) -> f64 {
    let ns: Option<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .and_then(|tasks| {
            tasks
                .flatten()
                .map(|t| {
                    std::fs::read_to_string(t.path().join("schedstat"))
                        .ok()?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        });
    if let Some(ns) = ns {
        return ns as f64 / 1e9;
    }
    let tick = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(") ")?.1.to_owned();
            let f: Vec<&str> = after.split(' ').collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0)
}
