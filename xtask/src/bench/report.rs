//! The main table: its rows and targets, the medians, and where it goes in
//! BENCHMARKS.md and README.md.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::Subject;

/// What the numbers mean (written into BENCHMARKS.md below the table).
pub(super) const NOTES: &str = include_str!("notes.md");

/// Where the CPU goes, ours against pasta: measured by hand (strace, perf),
/// kept beside the code so every run writes it into BENCHMARKS.md.
pub(super) const PROFILE: &str = include_str!("profile.md");

pub(super) type Samples = HashMap<(&'static str, Subject), Vec<f64>>;

pub(super) fn record(s: &mut Samples, metric: &'static str, who: Subject, v: f64) {
    s.entry((metric, who)).or_default().push(v);
}

pub(super) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Why a subject has no number for a metric (the table says so instead).
pub(super) type Gaps = HashMap<(&'static str, Subject), String>;

/// Replaces the table under README.md's "## Benchmarks" heading.
pub(super) fn update_readme(path: &Path, table: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let section = lines
        .iter()
        .position(|l| *l == "## Benchmarks")
        .with_context(|| format!("{} has no \"## Benchmarks\" section", path.display()))?;
    let start = (section..lines.len())
        .find(|&i| lines[i].starts_with("| metric |"))
        .with_context(|| format!("{} has no table under \"## Benchmarks\"", path.display()))?;
    let end = (start..lines.len())
        .find(|&i| !lines[i].starts_with('|'))
        .unwrap_or(lines.len());
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend(table.lines());
    out.extend(&lines[end..]);
    let mut new = out.join("\n");
    new.push('\n');
    std::fs::write(path, new).with_context(|| format!("failed to write {}", path.display()))
}

/// A row of the table.
pub(super) struct Row {
    metric: &'static str,
    label: &'static str,
    higher_is_better: bool,
    /// Target ratio ours/pasta.
    vs_pasta: Option<f64>,
    /// Target ratio ours/Go helper.
    vs_go: Option<f64>,
}

pub(super) const fn row(
    metric: &'static str,
    label: &'static str,
    higher_is_better: bool,
    vs_pasta: Option<f64>,
    vs_go: Option<f64>,
) -> Row {
    Row {
        metric,
        label,
        higher_is_better,
        vs_pasta,
        vs_go,
    }
}

pub(super) const ROWS: &[Row] = &[
    row(
        "tcp_gbps",
        "TCP throughput, 1 stream (Gbit/s)",
        true,
        Some(1.1),
        Some(1.25),
    ),
    row(
        "tcp4_gbps",
        "TCP throughput, 4 streams (Gbit/s)",
        true,
        None,
        None,
    ),
    row(
        "cpu_s_per_gb",
        "forwarder CPU per GB moved, 1 stream (s)",
        false,
        Some(0.8),
        Some(0.5),
    ),
    row(
        "conn_per_s",
        "connect + 1-byte req/reply + close (conn/s)",
        true,
        Some(1.25),
        Some(3.0),
    ),
    row("conn_p50_us", "  latency p50 (µs)", false, Some(0.8), None),
    row("conn_p99_us", "  latency p99 (µs)", false, None, None),
    row(
        "conn_machine_cpu_us",
        "  CPU per connection, whole machine (µs)",
        false,
        None,
        None,
    ),
    row(
        "conn_fwd_cpu_us",
        "  CPU per connection, forwarder (µs)",
        false,
        None,
        None,
    ),
    row(
        "rr_p50_us",
        "1-byte request/response on one connection, p50 (µs)",
        false,
        Some(0.9),
        None,
    ),
    row("rr_p99_us", "  latency p99 (µs)", false, None, None),
    row(
        "rr_fwd_cpu_us",
        "  CPU per request/response, forwarder (µs)",
        false,
        None,
        None,
    ),
    row(
        "udp_gbps",
        "UDP throughput, 1400-byte datagrams (Gbit/s)",
        true,
        None,
        Some(3.0),
    ),
    row(
        "udp_carried_gbps",
        "  UDP carried into the namespace (Gbit/s)",
        true,
        None,
        None,
    ),
    row(
        "udp_cpu_s_per_gb",
        "  forwarder CPU per GB, UDP (s)",
        false,
        None,
        None,
    ),
    row(
        "ready_1_ms",
        "spawn to ready, 1 port (ms)",
        false,
        None,
        None,
    ),
    row(
        "idle_rss_kib",
        "idle RSS, 1 port (KiB)",
        false,
        None,
        Some(0.25),
    ),
    row("idle_fds", "fds, 1 port", false, None, None),
    row(
        "ready_3000_ms",
        "spawn to ready, 3000-port tcp,udp range (ms)",
        false,
        None,
        Some(0.1),
    ),
    row(
        "range_rss_kib",
        "RSS, 3000-port tcp,udp range (KiB)",
        false,
        None,
        Some(0.1),
    ),
    row(
        "range_fds",
        "fds, 3000-port tcp,udp range",
        false,
        None,
        None,
    ),
];

/// The median of one metric for one subject.
pub(super) fn med(s: &Samples, metric: &'static str, who: Subject) -> Option<f64> {
    s.get(&(metric, who)).and_then(|v| median(v))
}

/// What this run's numbers say about the targets that depend on CPU: the
/// budget the cores leave per connection at 3x the Go helper's and 1.25x
/// pasta's rate, and where the UDP that ours carried in was lost.
pub(super) fn budget(s: &Samples) -> String {
    use Subject::{Direct, Go, Ours, Pasta};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut out = String::new();
    for (name, who, factor) in [("the Go helper", Go, 3.0), ("pasta", Pasta, 1.25)] {
        let (Some(rate), Some(ours), Some(fwd), Some(direct)) = (
            med(s, "conn_per_s", who),
            med(s, "conn_machine_cpu_us", Ours),
            med(s, "conn_fwd_cpu_us", Ours),
            med(s, "conn_machine_cpu_us", Direct),
        ) else {
            continue;
        };
        let allowed = cores / (factor * rate) * 1e6;
        out += &format!(
            "- **Connection budget against {name} (this run).** {factor}x {name}'s rate is \
             {:.0} conn/s; {cores:.0} cores then allow {allowed:.0} µs of CPU per connection \
             for client, server, kernel and forwarder together. Direct loopback uses \
             {direct:.0} µs; through ours the machine uses {ours:.0} µs: {fwd:.0} µs in the \
             forwarder process (its system calls, which carry most of the second connection's \
             kernel work, included) and {:.0} µs in the client, the server and the kernel on \
             their behalf. To reach the target with the rest unchanged, the forwarder would \
             have to cost {:.0} µs or less.\n",
            factor * rate,
            ours - fwd,
            (allowed - (ours - fwd)).max(0.0),
        );
    }
    if let (Some(got), Some(carried), Some(go_carried)) = (
        med(s, "udp_gbps", Ours),
        med(s, "udp_carried_gbps", Ours),
        med(s, "udp_carried_gbps", Go),
    ) {
        out += &format!(
            "- **Where UDP is lost (this run).** Ours carried {carried:.2} Gbit/s into the \
             namespace ({:.2}x the Go helper's {go_carried:.2}); the iperf3 server delivered \
             {got:.2} Gbit/s of it and dropped the rest at its own socket (the namespace's \
             UDP RcvbufErrors): client, forwarder and server share {cores:.0} cores, and the \
             server gets the least.\n",
            carried / go_carried,
        );
    }
    out
}

/// A table cell's number: 3 significant places or so.
pub(super) fn num(v: f64) -> String {
    match v {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x => format!("{x:.3}"),
    }
}

/// The table: each subject's median (or why it has none), ours/pasta and
/// ours/Go, the targets (pasta's first) and whether they are met.
pub(super) fn render(s: &Samples, gaps: &Gaps) -> String {
    let cell = |m: &'static str, w: Subject| match (med(s, m, w), gaps.get(&(m, w))) {
        (Some(v), _) => num(v),
        (None, Some(why)) => why.clone(),
        (None, None) => "—".to_owned(),
    };
    let mut out = String::from(
        "| metric | ours | pasta | Go helper | direct loopback | ours/pasta | ours/Go | target | met |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|:-:|\n",
    );
    for r in ROWS {
        let ours = med(s, r.metric, Subject::Ours);
        let ratio = |other: Subject| match (ours, med(s, r.metric, other)) {
            (Some(o), Some(x)) if x > 0.0 => Some(o / x),
            _ => None,
        };
        let (vs_pasta, vs_go) = (ratio(Subject::Pasta), ratio(Subject::Go));
        let (mut targets, mut met) = (Vec::new(), Vec::new());
        for (name, target, ratio) in [("pasta", r.vs_pasta, vs_pasta), ("Go", r.vs_go, vs_go)] {
            let Some(t) = target else { continue };
            let op = if r.higher_is_better { "≥" } else { "≤" };
            targets.push(format!("{op} {t}x {name}"));
            met.push(match ratio {
                None => "—",
                Some(x) if (r.higher_is_better && x >= t) || (!r.higher_is_better && x <= t) => {
                    "yes"
                }
                Some(_) => "no",
            });
        }
        let ratio_txt = |x: Option<f64>| x.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}x"));
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            cell(r.metric, Subject::Ours),
            cell(r.metric, Subject::Pasta),
            cell(r.metric, Subject::Go),
            cell(r.metric, Subject::Direct),
            ratio_txt(vs_pasta),
            ratio_txt(vs_go),
            targets.join(" / "),
            met.join(" / "),
        );
    }
    out
}

pub(super) fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(super) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The installed version of a Debian package.
pub(super) fn deb_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
