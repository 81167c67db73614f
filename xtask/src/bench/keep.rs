//! The on/off sections: our rootlessport with one environment variable
//! set one way against the other, for a client in a namespace of its own.
//! The keep-source-ip section (ROOTLESSPORT_KEEP_SOURCE_IP=1 against =0)
//! is defined here; the sandbox section (sandbox.rs) runs the same way.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::clients::{iperf, run_in, Target};
use super::forwarder::{config, Forwarder, Running};
use super::netns::{BenchNetns, ClientNets};
use super::report::{median, num, today};
use super::{BenchOptions, ECHO_PORT, IPERF_PORT, NS_ADDR};

/// The "host" side of the keep-source-ip section's veth pair, where the
/// forwarder listens, and the client side (RFC 5737 documentation
/// addresses, only ever inside namespaces the bench made).
pub(super) const OUTER_ADDR: &str = "192.0.2.1";
pub(super) const CLIENT_ADDR: &str = "192.0.2.2";
/// The ports the forwarder binds on [`OUTER_ADDR`], for iperf3 and for
/// the bench server (its namespace is the bench's own: nothing else there).
pub(super) const KEEP_IPERF_PORT: u16 = 20001;
pub(super) const KEEP_ECHO_PORT: u16 = 20002;
/// Heading of the section in BENCHMARKS.md (and, one level down, README).
pub(super) const KEEP_TITLE: &str = "Keeping client addresses (rootlessport, non-loopback client)";

/// Starts our rootlessport in the outer namespace, as podman starts it
/// (HelperCommand: JSON on stdin, exit pipe at fd 3, ready pipe at fd 4),
/// through a two-line script: `exec nsenter --net=OUTER -- BINARY`. nsenter
/// with only `--net` joins and execs in place, so the helper's pid is the
/// forwarder's, its fds are kept and its argv stays empty. The forwarder's
/// stderr goes to a file, quoted when something fails.
pub(super) struct Launcher {
    dir: tempfile::TempDir,
    script: PathBuf,
    outer_path: String,
}

impl Launcher {
    pub(super) fn new(outer: &str, binary: &Path) -> Result<Launcher> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("slirpnet-bench-keep")
            .tempdir()
            .context("failed to make a directory for the forwarder's launcher")?;
        let script = dir.path().join("rootlessport-in-outer");
        let outer_path = format!("/run/netns/{outer}");
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec nsenter --net={} -- {} 2>>{}\n",
                quote(&outer_path),
                quote(&binary.to_string_lossy()),
                quote(&dir.path().join("stderr").to_string_lossy()),
            ),
        )
        .context("failed to write the forwarder's launcher")?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .context("failed to make the forwarder's launcher executable")?;
        Ok(Launcher {
            dir,
            script,
            outer_path,
        })
    }

    /// The forwarder's stderr since its start.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Starts it with `spec`'s variable set to its on or off value, and
    /// checks that the pid is rootlessport's, in the outer namespace.
    pub(super) fn start(
        &self,
        ns_path: &str,
        mappings: &serde_json::Value,
        spec: &AbSpec,
        on: bool,
    ) -> Result<Forwarder> {
        use std::os::unix::fs::MetadataExt;
        File::create(self.dir.path().join("stderr"))
            .context("failed to empty the forwarder's stderr file")?;
        let config = config(ns_path, mappings.clone());
        let mut cmd = slirp_proc::HelperCommand::new(
            &self.script,
            "rootlessport",
            config.to_string().into_bytes(),
        );
        cmd.env.push((spec.env.into(), spec.value(on).into()));
        let helper = cmd.start().map_err(|e| {
            anyhow::anyhow!(
                "failed to start rootlessport in {}: {e}; its stderr: {}",
                self.outer_path,
                self.log()
            )
        })?;
        let f = Forwarder {
            running: Running::Helper(helper),
        };
        let pid = f.pid();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        ensure!(
            comm.trim() == "rootlessport",
            "pid {pid} runs {:?}, not rootlessport: the launcher did not exec in place",
            comm.trim()
        );
        let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        ensure!(
            id(&format!("/proc/{pid}/ns/net")).ok() == id(&self.outer_path).ok(),
            "rootlessport (pid {pid}) is not in {}",
            self.outer_path
        );
        Ok(f)
    }
}

/// One on/off section: the variable, its two values, the check that a
/// start is what it claims to be, the rows and the heading.
pub(super) struct AbSpec {
    /// Its `--only` name, for progress lines.
    pub(super) name: &'static str,
    /// Heading in BENCHMARKS.md (and, one level down, README).
    pub(super) title: &'static str,
    pub(super) env: &'static str,
    /// The variable's value for on and for off.
    pub(super) values: [&'static str; 2],
    /// Run on every start before it is measured: fails unless the
    /// forwarder is what `on` says; records what it saw in `Ab::seen`.
    pub(super) check: fn(&AbCtx<'_>, &Forwarder, bool, &mut Ab) -> Result<()>,
    pub(super) rows: &'static [AbRow],
}

impl AbSpec {
    pub(super) fn value(&self, on: bool) -> &'static str {
        self.values[usize::from(!on)]
    }

    fn measures(&self, metric: &str) -> bool {
        self.rows.iter().any(|r| r.metric == metric)
    }
}

/// What a check may use: the namespaces, the bench server binary, the
/// forwarder's launcher and the echo address it forwards.
pub(super) struct AbCtx<'a> {
    pub(super) nets: &'a ClientNets,
    pub(super) server: &'a Path,
    pub(super) launcher: &'a Launcher,
    pub(super) echo: &'a str,
}

/// What an on/off section measured, per metric and setting (`true`: on).
#[derive(Debug, Default)]
pub(super) struct Ab {
    samples: HashMap<(&'static str, bool), Vec<f64>>,
    gaps: HashMap<(&'static str, bool), String>,
    /// What the check saw, per setting and aspect (keep-source-ip: the
    /// addresses the bench server saw clients at, per protocol).
    pub(super) seen:
        std::collections::BTreeMap<(bool, &'static str), std::collections::BTreeSet<String>>,
}

impl Ab {
    fn record(&mut self, metric: &'static str, on: bool, v: f64) {
        self.samples.entry((metric, on)).or_default().push(v);
    }

    fn med(&self, metric: &'static str, on: bool) -> Option<f64> {
        self.samples.get(&(metric, on)).and_then(|v| median(v))
    }
}

/// An on/off section: `rounds` rounds, each with the forwarder on and off
/// (alternating which goes first), the clients in the client namespace,
/// the servers those of `ns`.
pub(super) fn ab_run(
    spec: &AbSpec,
    ns: &BenchNetns,
    ours: &Path,
    server: &Path,
    opts: &BenchOptions,
) -> Result<Ab> {
    let nets = ClientNets::new()?;
    let launcher = Launcher::new(nets.outer(), ours)?;
    let mut ab = Ab::default();
    for round in 0..opts.rounds {
        eprintln!("{} round {}/{}", spec.name, round + 1, opts.rounds);
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            let ctx = AbCtx {
                nets: &nets,
                server,
                launcher: &launcher,
                echo: &format!("{OUTER_ADDR}:{KEEP_ECHO_PORT}"),
            };
            ab_path(spec, &mut ab, ns, &ctx, on, opts.seconds)?;
        }
    }
    Ok(ab)
}

/// The keep-source-ip check: with it on the server must see the client's
/// own address, with it off the namespace's (otherwise both columns would
/// measure one thing).
fn check_source_address(ctx: &AbCtx<'_>, _f: &Forwarder, on: bool, ab: &mut Ab) -> Result<()> {
    let setting = if on { "on" } else { "off" };
    let want: IpAddr = if on { CLIENT_ADDR } else { NS_ADDR }.parse()?;
    for proto in ["tcp", "udp"] {
        let out = run_in(
            ctx.nets.client(),
            ctx.server,
            &["bench-who", proto, ctx.echo],
            Duration::from_secs(15),
        )?;
        let seen: SocketAddr = out
            .trim()
            .parse()
            .with_context(|| format!("bench-who printed {out:?}"))?;
        ensure!(
            seen.ip() == want,
            "with ROOTLESSPORT_KEEP_SOURCE_IP {setting} the bench server saw a {proto} client \
             at {seen}, not {want}; the forwarder's stderr: {}",
            ctx.launcher.log()
        );
        eprintln!("keep-source-ip {setting}: the server saw the {proto} client at {seen}");
        ab.seen
            .entry((on, proto))
            .or_default()
            .insert(seen.ip().to_string());
    }
    Ok(())
}

/// One forwarder, on or off: first the section's check (the bench fails
/// unless the start is what it claims), then TCP, UDP (when a row shows
/// it) and the connection rate from the client namespace.
fn ab_path(
    spec: &AbSpec,
    ab: &mut Ab,
    ns: &BenchNetns,
    ctx: &AbCtx<'_>,
    on: bool,
    seconds: u64,
) -> Result<()> {
    let maps = serde_json::json!([
        {"host_ip": OUTER_ADDR, "container_port": IPERF_PORT, "host_port": KEEP_IPERF_PORT, "range": 1, "protocol": "tcp,udp"},
        {"host_ip": OUTER_ADDR, "container_port": ECHO_PORT, "host_port": KEEP_ECHO_PORT, "range": 1, "protocol": "tcp,udp"},
    ]);
    let f = ctx.launcher.start(&ns.path(), &maps, spec, on)?;
    let setting = if on { "on" } else { "off" };
    let (echo, nets, server) = (ctx.echo, ctx.nets, ctx.server);
    (spec.check)(ctx, &f, on, ab)?;

    let client = Target {
        netns: Some(nets.client()),
        host: OUTER_ADDR,
    };
    let hung = |what: &str| anyhow::anyhow!("iperf3 {what} with {} {setting} hung", spec.name);
    let cpu0 = f.cpu_seconds();
    let (bps, bytes) =
        iperf(client, KEEP_IPERF_PORT, seconds, false, 1)?.ok_or_else(|| hung("TCP"))?;
    let cpu = f.cpu_seconds() - cpu0;
    ab.record("tcp_gbps", on, bps / 1e9);
    ab.record("cpu_s_per_gb", on, cpu / (bytes / 1e9));

    let cpu0 = f.cpu_seconds();
    let udp = if spec.measures("udp_gbps") {
        iperf(client, KEEP_IPERF_PORT, seconds, true, 1)?
    } else {
        None
    };
    match udp {
        Some((ubps, ubytes)) => {
            let cpu = f.cpu_seconds() - cpu0;
            ab.record("udp_gbps", on, ubps / 1e9);
            ab.record("udp_cpu_s_per_gb", on, cpu / (ubytes / 1e9));
        }
        None if spec.measures("udp_gbps") => {
            eprintln!(
                "iperf3 UDP with {} {setting} hung and was killed",
                spec.name
            );
            for m in ["udp_gbps", "udp_cpu_s_per_gb"] {
                ab.gaps.insert((m, on), "n/a: iperf3 hung".to_owned());
            }
        }
        None => {}
    }

    let cpu0 = f.cpu_seconds();
    let out = run_in(
        nets.client(),
        server,
        &["bench-conn", echo, &seconds.to_string()],
        Duration::from_secs(seconds + 30),
    )?;
    let nums: Vec<f64> = out
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [rate, p50, _p99] = nums[..] else {
        bail!("bench-conn printed {out:?}");
    };
    let conns = rate * seconds as f64;
    ab.record("conn_per_s", on, rate);
    ab.record("conn_p50_us", on, p50);
    ab.record(
        "conn_fwd_cpu_us",
        on,
        (f.cpu_seconds() - cpu0) / conns * 1e6,
    );
    f.stop()
}

/// A row of an on/off table.
pub(super) struct AbRow {
    metric: &'static str,
    label: &'static str,
    higher_is_better: bool,
    /// How far on may fall behind off (0.05: within 5%).
    within: Option<f64>,
}

pub(super) const fn ab_row(
    metric: &'static str,
    label: &'static str,
    higher_is_better: bool,
    within: Option<f64>,
) -> AbRow {
    AbRow {
        metric,
        label,
        higher_is_better,
        within,
    }
}

pub(super) const KEEP_ROWS: &[AbRow] = &[
    ab_row(
        "tcp_gbps",
        "TCP throughput, 1 stream (Gbit/s)",
        true,
        Some(0.05),
    ),
    ab_row(
        "cpu_s_per_gb",
        "forwarder CPU per GB moved, 1 stream (s)",
        false,
        Some(0.05),
    ),
    ab_row(
        "conn_per_s",
        "connect + 1-byte req/reply + close (conn/s)",
        true,
        Some(0.05),
    ),
    ab_row("conn_p50_us", "  latency p50 (µs)", false, None),
    ab_row(
        "conn_fwd_cpu_us",
        "  CPU per connection, forwarder (µs)",
        false,
        None,
    ),
    ab_row(
        "udp_gbps",
        "UDP throughput, 1400-byte datagrams (Gbit/s)",
        true,
        Some(0.10),
    ),
    ab_row(
        "udp_cpu_s_per_gb",
        "  forwarder CPU per GB, UDP (s)",
        false,
        None,
    ),
];

/// The keep-source-ip section.
pub(super) const KEEP: AbSpec = AbSpec {
    name: "keep-source-ip",
    title: KEEP_TITLE,
    env: "ROOTLESSPORT_KEEP_SOURCE_IP",
    values: ["1", "0"],
    check: check_source_address,
    rows: KEEP_ROWS,
};

/// An on/off table: on, off, on/off, the target and whether it is met.
pub(super) fn render_ab(spec: &AbSpec, k: &Ab) -> String {
    let cell = |m: &'static str, on: bool| match (k.med(m, on), k.gaps.get(&(m, on))) {
        (Some(v), _) => num(v),
        (None, Some(why)) => why.clone(),
        (None, None) => "—".to_owned(),
    };
    let mut out = String::from(
        "| metric | on | off | on/off | target | met |\n|---|---:|---:|---:|---:|:-:|\n",
    );
    for r in spec.rows {
        let ratio = match (k.med(r.metric, true), k.med(r.metric, false)) {
            (Some(on), Some(off)) if off > 0.0 => Some(on / off),
            _ => None,
        };
        let (target, met) = match r.within {
            None => (String::new(), ""),
            Some(w) => {
                let (op, bound) = if r.higher_is_better {
                    ("≥", 1.0 - w)
                } else {
                    ("≤", 1.0 + w)
                };
                let met = match ratio {
                    None => "—",
                    Some(x)
                        if (r.higher_is_better && x >= bound)
                            || (!r.higher_is_better && x <= bound) =>
                    {
                        "yes"
                    }
                    Some(_) => "no",
                };
                (format!("{op} {bound:.2}x off"), met)
            }
        };
        out += &format!(
            "| {} | {} | {} | {} | {target} | {met} |\n",
            r.label,
            cell(r.metric, true),
            cell(r.metric, false),
            // Three places: the bounds are 0.95, 1.05, 0.90, 0.98 and 1.02.
            ratio.map_or_else(|| "—".to_owned(), |x| format!("{x:.3}x")),
        );
    }
    out
}

/// The keep-source-ip section of BENCHMARKS.md: how it was measured, and
/// its table.
pub(super) fn render_keep_section(k: &Ab, opts: &BenchOptions) -> String {
    // "192.0.2.2 over TCP and UDP", or each protocol's own addresses.
    let seen = |on: bool| {
        let addrs = |proto: &'static str| {
            k.seen
                .get(&(on, proto))
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (tcp, udp) = (addrs("tcp"), addrs("udp"));
        if tcp == udp {
            format!("{tcp} over TCP and UDP")
        } else {
            format!("{tcp} over TCP and {udp} over UDP")
        }
    };
    format!(
        "## {KEEP_TITLE}\n\nWritten by `cargo xtask bench` on {} (`cargo xtask bench --only \
         keep-source-ip` runs just this section and replaces it here and in README). Our \
         `rootlessport` with `ROOTLESSPORT_KEEP_SOURCE_IP=1` (on: the service sees each \
         client's own address) against `=0` (off: it sees the namespace's {NS_ADDR}, as \
         without the variable). Loopback clients keep the namespace's address even when it is \
         on, so this needs a client from elsewhere: the forwarder runs in an \"outer\" network \
         namespace that plays the host, listening on {OUTER_ADDR} (started as podman starts it, \
         through `nsenter --net=` that execs it in place with its fds and an empty argv); the \
         clients, iperf3 and the bench's own connection client (`xtask bench-conn`), run in a \
         third, \"client\" namespace at {CLIENT_ADDR}, joined to the outer one by a veth pair \
         (RFC 5737 documentation addresses, never routed anywhere else); the servers are the \
         ones above, at {NS_ADDR} in the bench namespace.\n\nEvery start is checked before it \
         is measured (a TCP connection and a UDP datagram to the bench server, which answers \
         with the address it sees), and the bench fails if on and off do not differ. This run: \
         with it on the server saw {}; with it off, {}.\n\n{} rounds, on and off alternating \
         which goes first; each cell is the median; throughput and rates over {} s each; CPU is \
         the forwarder's own (its threads' time on a CPU, schedstat). The targets are the issue's: with it on, TCP \
         throughput, CPU per GB and the connection rate within 5% of off, UDP throughput within \
         10%. There is one client address, so its route in the namespace is made at its first \
         connection and then reused: the rows measure the steady cost per connection (a \
         transparent socket bound to the client's address and port) and per datagram, not the \
         netlink round trip of a new address.\n\n{}",
        today(),
        seen(true),
        seen(false),
        opts.rounds,
        opts.seconds,
        render_ab(&KEEP, k),
    )
}

/// What README says above the keep-source-ip table when it first adds it.
pub(super) const README_KEEP_INTRO: &str =
    "`cargo xtask bench` also measures our rootlessport keeping client addresses
(`ROOTLESSPORT_KEEP_SOURCE_IP=1`, on) against not (`=0`, off), with a client
in a namespace of its own (loopback clients keep the namespace's address
either way); `cargo xtask bench --only keep-source-ip` runs just that part
and replaces the table below. BENCHMARKS.md says how it is measured.";

/// Replaces the table under README.md's `### TITLE` heading; adds the
/// heading, `intro` and the table at the end of "## Benchmarks" when it is
/// not there yet.
pub(super) fn update_readme_table(
    path: &Path,
    title: &str,
    intro: &str,
    table: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let heading = format!("### {title}");
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str>;
    if let Some(h) = lines.iter().position(|l| *l == heading) {
        let start = (h..lines.len())
            .find(|&i| lines[i].starts_with('|'))
            .with_context(|| format!("{} has no table under {heading:?}", path.display()))?;
        let end = (start..lines.len())
            .find(|&i| !lines[i].starts_with('|'))
            .unwrap_or(lines.len());
        out = lines[..start].to_vec();
        out.extend(table.lines());
        out.extend(&lines[end..]);
    } else {
        let section = lines
            .iter()
            .position(|l| *l == "## Benchmarks")
            .with_context(|| format!("{} has no \"## Benchmarks\" section", path.display()))?;
        let at = (section + 1..lines.len())
            .find(|&i| lines[i].starts_with("## "))
            .unwrap_or(lines.len());
        out = lines[..at].to_vec();
        if out.last().is_some_and(|l| !l.is_empty()) {
            out.push("");
        }
        out.push(&heading);
        out.push("");
        out.extend(intro.lines());
        out.push("");
        out.extend(table.lines());
        out.push("");
        out.extend(&lines[at..]);
    }
    let mut new = out.join("\n").trim_end().to_owned();
    new.push('\n');
    std::fs::write(path, new).with_context(|| format!("failed to write {}", path.display()))
}
