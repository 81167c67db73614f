//! `cargo xtask bench`: our rootlessport against pasta, podman's Go helper
//! and direct loopback, side by side, rounds interleaved, medians.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

mod clients;
pub(crate) use clients::{conn_client, rr_client, serve, who_client};
mod forwarder;
mod keep;
mod loops;
mod netns;
mod peers;
mod publish_auto;
mod report;
mod sandbox;

use clients::{conn_rate, free_port_block, iperf, machine_busy_seconds, req_resp, LOOPBACK};
use forwarder::{footprint, pasta_args, Forwarder, Tool};
use keep::{
    ab_run, render_ab, render_keep_section, update_readme_table, Ab, KEEP, README_KEEP_INTRO,
};
use loops::{loops, render_loops_section, IPERF_PORT_2, LOOPS_TITLE};
use netns::BenchNetns;
use peers::PASTA_RELEASE;
use publish_auto::{
    publish_auto, render_auto, render_auto_section, Auto, AUTO_TITLE, README_AUTO_INTRO,
};
use report::{
    budget, deb_version, kernel, record, render, replace_section, targets, today, update_readme,
    Gaps, Samples, NOTES, PROFILE,
};
use sandbox::{render_sandbox_section, README_SANDBOX_INTRO, SANDBOX};

pub(super) const GO_HELPER: &str = "/usr/lib/podman/rootlessport";
/// The servers' address in the bench namespace (what the helpers connect
/// to, and pasta's guest address), and the other end of its veth pair
/// (pasta's gateway).
pub(super) const NS_ADDR: &str = "10.77.0.1";
pub(super) const NS_GATEWAY: &str = "10.77.0.2";
pub(super) const IPERF_PORT: u16 = 5201;
pub(super) const ECHO_PORT: u16 = 7000;
/// UDP payload size of the iperf3 runs.
pub(super) const UDP_LEN: usize = 1400;
/// How long an iperf3 run may take beyond its `-t` before it is killed (a
/// forwarder that loses UDP replies leaves iperf3's UDP test hanging).
pub(super) const IPERF_GRACE: Duration = Duration::from_secs(10);
/// What the first byte of a connection asks the bench server for: echo
/// every byte (request/response).
pub(super) const PING_PONG: u8 = b'p';
/// What the first byte of a connection or datagram asks the bench server
/// for: the address it sees the client at.
pub(super) const WHO: u8 = b'w';

/// Options of one run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rounds per measurement (the median is reported).
    pub rounds: usize,
    /// Seconds per throughput or rate measurement.
    pub seconds: u64,
    /// Only this section (`--only`); `None`: everything.
    pub only: Option<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Subject {
    Ours,
    Pasta,
    Go,
    Direct,
}

/// The data-path measurements through one forwarder: iperf3 TCP (1 and 4
/// streams) and UDP, the connection rate and request/response on the echo
/// port.
fn data_path(
    s: &mut Samples,
    gaps: &mut Gaps,
    ns: &BenchNetns,
    who: Subject,
    tool: &Tool,
    seconds: u64,
) -> Result<()> {
    let ip_port = free_port_block(1)?;
    let echo_port = free_port_block(1)?;
    let maps = serde_json::json!([
        {"host_ip": "127.0.0.1", "container_port": IPERF_PORT, "host_port": ip_port, "range": 1, "protocol": "tcp,udp"},
        {"host_ip": "127.0.0.1", "container_port": ECHO_PORT, "host_port": echo_port, "range": 1, "protocol": "tcp"},
    ]);
    let f = Forwarder::start(tool, &ns.path(), &maps)?;
    let hung = |what: &str| anyhow::anyhow!("iperf3 {what} through {who:?} hung");

    let (cpu0, busy0) = (f.cpu_seconds(), machine_busy_seconds());
    let (bps, bytes) = iperf(LOOPBACK, ip_port, seconds, false, 1)?.ok_or_else(|| hung("TCP"))?;
    let (cpu, busy) = (f.cpu_seconds() - cpu0, machine_busy_seconds() - busy0);
    record(s, "tcp_gbps", who, bps / 1e9);
    record(s, "cpu_s_per_gb", who, cpu / (bytes / 1e9));
    record(s, "machine_s_per_gb", who, busy / (bytes / 1e9));
    let cpu0 = f.cpu_seconds();
    let (bps, bytes) = iperf(LOOPBACK, ip_port, seconds, false, 4)?.ok_or_else(|| hung("-P 4"))?;
    let cpu = f.cpu_seconds() - cpu0;
    record(s, "tcp4_gbps", who, bps / 1e9);
    record(s, "cpu4_s_per_gb", who, cpu / (bytes / 1e9));

    let (cpu0, arrived0, sent0) = (f.cpu_seconds(), ns.udp_arrived()?, ns.udp_sent()?);
    match iperf(LOOPBACK, ip_port, seconds, true, 1)? {
        Some((ubps, ubytes)) => {
            let cpu = f.cpu_seconds() - cpu0;
            let carried = (ns.udp_arrived()? - arrived0) as f64 * UDP_LEN as f64 * 8.0;
            record(s, "udp_gbps", who, ubps / 1e9);
            record(s, "udp_carried_gbps", who, carried / seconds as f64 / 1e9);
            record(s, "udp_cpu_s_per_gb", who, cpu / (ubytes / 1e9));
        }
        None => {
            // Datagrams went in and the server answered, yet iperf3 never
            // heard back: the forwarder lost the replies.
            let (arrived, sent) = (ns.udp_arrived()? - arrived0, ns.udp_sent()? - sent0);
            let why = if arrived > 0 && sent > 0 {
                "n/a: replies lost".to_owned()
            } else {
                format!("n/a: iperf3 hung ({arrived} datagrams in, {sent} out)")
            };
            eprintln!("iperf3 UDP through {who:?} hung and was killed: {why}");
            for m in ["udp_gbps", "udp_carried_gbps", "udp_cpu_s_per_gb"] {
                gaps.insert((m, who), why.clone());
            }
        }
    }

    let echo = SocketAddr::from(([127, 0, 0, 1], echo_port));
    let (cpu0, busy0) = (f.cpu_seconds(), machine_busy_seconds());
    let (rate, p50, p99) = conn_rate(echo, seconds)?;
    let conns = rate * seconds as f64;
    record(
        s,
        "conn_fwd_cpu_us",
        who,
        (f.cpu_seconds() - cpu0) / conns * 1e6,
    );
    record(
        s,
        "conn_machine_cpu_us",
        who,
        (machine_busy_seconds() - busy0) / conns * 1e6,
    );
    record(s, "conn_per_s", who, rate);
    record(s, "conn_p50_us", who, p50);
    record(s, "conn_p99_us", who, p99);

    let cpu0 = f.cpu_seconds();
    let (n, p50, p99) = req_resp(echo, seconds)?;
    record(s, "rr_p50_us", who, p50);
    record(s, "rr_p99_us", who, p99);
    record(
        s,
        "rr_fwd_cpu_us",
        who,
        (f.cpu_seconds() - cpu0) / n as f64 * 1e6,
    );
    f.stop()
}

/// The same clients against the same servers on the host: no forwarder.
fn direct_path(s: &mut Samples, iperf_port: u16, echo_port: u16, seconds: u64) -> Result<()> {
    let who = Subject::Direct;
    let hung = || anyhow::anyhow!("iperf3 on direct loopback hung");
    let busy0 = machine_busy_seconds();
    let (bps, bytes) = iperf(LOOPBACK, iperf_port, seconds, false, 1)?.ok_or_else(hung)?;
    record(s, "tcp_gbps", who, bps / 1e9);
    record(
        s,
        "machine_s_per_gb",
        who,
        (machine_busy_seconds() - busy0) / (bytes / 1e9),
    );
    let (bps, _) = iperf(LOOPBACK, iperf_port, seconds, false, 4)?.ok_or_else(hung)?;
    record(s, "tcp4_gbps", who, bps / 1e9);
    let (ubps, _) = iperf(LOOPBACK, iperf_port, seconds, true, 1)?.ok_or_else(hung)?;
    record(s, "udp_gbps", who, ubps / 1e9);
    let echo = SocketAddr::from(([127, 0, 0, 1], echo_port));
    let busy0 = machine_busy_seconds();
    let (rate, p50, p99) = conn_rate(echo, seconds)?;
    record(
        s,
        "conn_machine_cpu_us",
        who,
        (machine_busy_seconds() - busy0) / (rate * seconds as f64) * 1e6,
    );
    record(s, "conn_per_s", who, rate);
    record(s, "conn_p50_us", who, p50);
    record(s, "conn_p99_us", who, p99);
    let (_, p50, p99) = req_resp(echo, seconds)?;
    record(s, "rr_p50_us", who, p50);
    record(s, "rr_p99_us", who, p99);
    Ok(())
}

/// What the sections after the main table measured (`None`: not run).
#[derive(Default)]
struct Extra {
    keep: Option<Ab>,
    loops: Option<String>,
    sandbox: Option<Ab>,
    auto: Option<Auto>,
}

impl Extra {
    /// Each measured section as (BENCHMARKS.md title, its section there).
    fn sections(&self, opts: &BenchOptions) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(k) = &self.keep {
            out.push((KEEP.title, render_keep_section(k, opts)));
        }
        if let Some(l) = &self.loops {
            out.push((LOOPS_TITLE, l.clone()));
        }
        if let Some(a) = &self.sandbox {
            out.push((SANDBOX.title, render_sandbox_section(a, opts)));
        }
        if let Some(a) = &self.auto {
            out.push((AUTO_TITLE, render_auto_section(a)));
        }
        out
    }

    /// Each measured section's README table as (title, intro, table).
    fn readme_tables(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some(k) = &self.keep {
            out.push((KEEP.title, README_KEEP_INTRO, render_ab(&KEEP, k)));
        }
        if let Some(a) = &self.sandbox {
            out.push((SANDBOX.title, README_SANDBOX_INTRO, render_ab(&SANDBOX, a)));
        }
        if let Some(a) = &self.auto {
            out.push((AUTO_TITLE, README_AUTO_INTRO, render_auto(a)));
        }
        out
    }

    fn update_readme(&self, path: &Path) -> Result<()> {
        for (title, intro, table) in self.readme_tables() {
            update_readme_table(path, title, intro, &table)?;
        }
        Ok(())
    }
}

/// Runs the benchmark, writes the tables and notes to BENCHMARKS.md and the
/// tables to README.md. With `--only SECTION`, only that section is run,
/// and only its parts of the two files are replaced.
pub fn bench(root: &Path, opts: &BenchOptions) -> Result<()> {
    let everything = opts.only.is_none();
    if everything {
        ensure!(
            Path::new(GO_HELPER).is_file(),
            "{GO_HELPER} is missing (apt-get install podman)"
        );
    }
    // The current pasta, built from its source when it is not cached yet.
    let pasta = if everything {
        Some(peers::pasta(root)?)
    } else {
        None
    };
    // Release builds of the forwarder and of the bench server.
    let status = crate::util::cargo()
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "rootlessport",
            "-p",
            "xtask",
            "-p",
            "slirpnet",
        ])
        .status()
        .context("failed to run cargo build")?;
    ensure!(status.success(), "cargo build --release failed");
    let ours = root.join("target/release/rootlessport");
    let server = root.join("target/release/xtask");
    let slirpnet = root.join("target/release/slirpnet");

    let mut ns = BenchNetns::new()?;
    // The helpers and pasta all connect to NS_ADDR.
    ns.spawn(
        Path::new("/usr/bin/iperf3"),
        &["-s", "-p", &IPERF_PORT.to_string()],
    )?;
    ns.spawn(
        Path::new("/usr/bin/iperf3"),
        &["-s", "-p", &IPERF_PORT_2.to_string()],
    )?;
    ns.spawn(&server, &["bench-serve", &format!("0.0.0.0:{ECHO_PORT}")])?;
    std::thread::sleep(Duration::from_millis(300));

    let want = |section: Section| opts.only.is_none_or(|only| only == section);
    let main = if everything {
        let pasta = pasta.clone().context("pasta is built for the main table")?;
        forwarders(&ns, &ours, &pasta, &server, opts).map(Some)
    } else {
        Ok(None)
    };
    let all = main.and_then(|main| {
        let mut extra = Extra::default();
        if want(Section::KeepSourceIp) {
            extra.keep = Some(ab_run(&KEEP, &ns, &ours, &server, opts)?);
        }
        if want(Section::Loops) {
            let l = loops(&ns, &ours, opts)?;
            extra.loops = Some(render_loops_section(&l, opts));
        }
        if want(Section::Sandbox) {
            extra.sandbox = Some(ab_run(&SANDBOX, &ns, &ours, &server, opts)?);
        }
        if want(Section::PublishAuto) {
            extra.auto = Some(publish_auto(&slirpnet, &ours)?);
        }
        Ok((main, extra))
    });
    drop(ns);
    let (main, extra) = all?;

    let sections = extra.sections(opts);
    for (title, _, table) in extra.readme_tables() {
        println!("{title}\n\n{table}");
    }
    if let Some(l) = &extra.loops {
        println!("{l}");
    }
    let Some((s, gaps)) = main else {
        let path = root.join("BENCHMARKS.md");
        let mut text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        for (title, section) in &sections {
            text = replace_section(&text, title, section);
        }
        std::fs::write(&path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("replaced the section of BENCHMARKS.md");
        extra.update_readme(&root.join("README.md"))?;
        eprintln!("updated the section's table in README.md");
        return Ok(());
    };
    ensure!(
        extra.keep.is_some() && extra.sandbox.is_some() && extra.auto.is_some(),
        "a full run measures every section"
    );
    let extra_sections: String = sections.iter().map(|(_, t)| format!("{t}\n")).collect();

    let table = render(&s, &gaps);
    let budget = budget(&s);
    let targets = targets(&s);
    println!("{table}\n{targets}\n{budget}");
    let example = pasta_args(
        "/run/netns/NAME",
        &serde_json::json!([
            {"host_ip": "127.0.0.1", "container_port": IPERF_PORT, "host_port": 20001, "range": 1, "protocol": "tcp,udp"},
            {"host_ip": "127.0.0.1", "container_port": ECHO_PORT, "host_port": 20002, "range": 1, "protocol": "tcp"},
        ]),
        Path::new("PIDFILE"),
    )?;
    let pasta_shown = pasta
        .as_deref()
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .unwrap_or_default();
    let doc = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench` on {} ({} cores, kernel {}). Our \
         `rootlessport` (release build) against the current pasta (passt {PASTA_RELEASE}, the \
         peer podman 6 and RootlessKit 3 ship; `{pasta_shown}`, built by the bench from the \
         release's source tarball when missing), podman {}'s Go helper ({GO_HELPER}) and direct \
         loopback. Each rootlessport is started exactly as podman starts it; pasta attaches to \
         the same namespace and forwards the same host ports:\n\n```\npasta {}\n```\n\n\
         The servers listen on all addresses inside the namespace; every forwarder connects to \
         the veth address {NS_ADDR} there (pasta's splice path connects to the guest address \
         it is given with `-a`), a local address, so every route goes over the namespace's \
         loopback. {} rounds, interleaved; each cell is the median. Throughput and rates over \
         {} s each; CPU (its threads' time on a CPU, from schedstat) and memory cover the \
         forwarder's whole process tree (the Go helper re-executes itself as \
         `rootlessport-child`).\n\n{table}\n{targets}\n{NOTES}{budget}\n\
         {extra_sections}{PROFILE}",
        today(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel(),
        deb_version("podman"),
        example.join(" "),
        opts.rounds,
        opts.seconds,
    );
    std::fs::write(root.join("BENCHMARKS.md"), doc).context("failed to write BENCHMARKS.md")?;
    eprintln!("wrote BENCHMARKS.md");
    update_readme(&root.join("README.md"), &table, &targets)?;
    extra.update_readme(&root.join("README.md"))?;
    eprintln!("updated the tables in README.md");
    Ok(())
}

/// The rounds of the main table: every subject, then direct loopback, in
/// every round; the direct loopback servers run on the host meanwhile.
fn forwarders(
    ns: &BenchNetns,
    ours: &Path,
    pasta: &Path,
    server: &Path,
    opts: &BenchOptions,
) -> Result<(Samples, Gaps)> {
    let subjects: [(Subject, Tool); 3] = [
        (Subject::Ours, Tool::Helper(ours.to_owned())),
        (Subject::Pasta, Tool::Pasta(pasta.to_owned())),
        (Subject::Go, Tool::Helper(PathBuf::from(GO_HELPER))),
    ];
    let ns_path = ns.path();
    // Direct loopback: the same servers on the host.
    let direct_iperf = free_port_block(1)?;
    let direct_echo = free_port_block(1)?;
    let mut host_servers = Vec::new();
    let mut s = Samples::new();
    let mut gaps = Gaps::new();
    let result = (|| -> Result<()> {
        host_servers.push(
            Command::new("iperf3")
                .args(["-s", "-B", "127.0.0.1", "-p", &direct_iperf.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("failed to run iperf3 -s")?,
        );
        host_servers.push(
            Command::new(server)
                .args(["bench-serve", &format!("127.0.0.1:{direct_echo}")])
                .spawn()
                .context("failed to run the bench server")?,
        );
        std::thread::sleep(Duration::from_millis(300));
        for round in 0..opts.rounds {
            eprintln!("round {}/{}", round + 1, opts.rounds);
            for (who, tool) in &subjects {
                let who = *who;
                // Spawn to ready, one port.
                let port = free_port_block(1)?;
                let one = serde_json::json!([{"host_ip": "", "container_port": ECHO_PORT, "host_port": port, "range": 1, "protocol": "tcp"}]);
                footprint(
                    &mut s,
                    who,
                    tool,
                    &ns_path,
                    &one,
                    ["ready_1_ms", "idle_rss_kib", "idle_fds"],
                )?;

                // Spawn to ready, 3000-port tcp,udp range.
                let base = free_port_block(3000)?;
                let range = serde_json::json!([{"host_ip": "", "container_port": 10000, "host_port": base, "range": 3000, "protocol": "tcp,udp"}]);
                footprint(
                    &mut s,
                    who,
                    tool,
                    &ns_path,
                    &range,
                    ["ready_3000_ms", "range_rss_kib", "range_fds"],
                )?;

                data_path(&mut s, &mut gaps, ns, who, tool, opts.seconds)?;
            }
            // The physical limit: no forwarder.
            direct_path(&mut s, direct_iperf, direct_echo, opts.seconds)?;
        }
        Ok(())
    })();
    for h in &mut host_servers {
        let _ = h.kill();
        let _ = h.wait();
    }
    result.map(|()| (s, gaps))
}

/// The parts of the bench that `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Our rootlessport keeping client addresses against not, with a
    /// non-loopback client.
    KeepSourceIp,
    /// One rootlessport event loop against two.
    Loops,
    /// Our rootlessport with its sandbox on against off.
    Sandbox,
    /// `slirpnet attach --publish-auto`: listen() to host port reachable.
    PublishAuto,
}

impl Section {
    /// The `--only` value.
    pub fn parse(name: &str) -> Result<Section> {
        match name {
            "keep-source-ip" => Ok(Section::KeepSourceIp),
            "loops" => Ok(Section::Loops),
            "sandbox" => Ok(Section::Sandbox),
            "publish-auto" => Ok(Section::PublishAuto),
            other => bail!(
                "unknown bench section {other:?} (known: keep-source-ip, loops, sandbox, \
                 publish-auto)"
            ),
        }
    }
}
