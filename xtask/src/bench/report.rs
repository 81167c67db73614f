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

/// Replaces the table under README.md's "## Benchmarks" heading, and the
/// text after it up to the next heading, with `table` and `targets`.
pub(super) fn update_readme(path: &Path, table: &str, targets: &str) -> Result<()> {
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
        .find(|&i| lines[i].starts_with('#'))
        .unwrap_or(lines.len());
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend(table.lines());
    out.push("");
    out.extend(targets.lines());
    out.push("");
    out.extend(&lines[end..]);
    let mut new = out.join("\n").trim_end().to_owned();
    new.push('\n');
    std::fs::write(path, new).with_context(|| format!("failed to write {}", path.display()))
}

/// A row of the table.
pub(super) struct Row {
    metric: &'static str,
    label: &'static str,
    higher_is_better: bool,
    /// Target ratio ours/pasta (the issue's).
    vs_pasta: Option<f64>,
    /// Floor ratio ours/Go helper: the 2026-11-23 run's, not to be lost.
    vs_go: Option<f64>,
}

const fn row(
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

#[rustfmt::skip]
pub(super) const ROWS: &[Row] = &[
    row("tcp_gbps", "TCP throughput, 1 stream (Gbit/s)", true, Some(1.05), Some(1.18)),
    row("tcp4_gbps", "TCP throughput, 4 streams (Gbit/s)", true, None, Some(1.10)),
    row("cpu_s_per_gb", "forwarder CPU per GB moved, 1 stream (s)", false, Some(0.9), Some(0.57)),
    row("machine_s_per_gb", "  CPU per GB, whole machine, 1 stream (s)", false, None, None),
    row("cpu4_s_per_gb", "forwarder CPU per GB moved, 4 streams (s)", false, None, None),
    row("conn_per_s", "connect + 1-byte req/reply + close (conn/s)", true, Some(1.1), Some(2.49)),
    row("conn_p50_us", "  latency p50 (µs)", false, Some(0.9), Some(0.40)),
    row("conn_p99_us", "  latency p99 (µs)", false, None, None),
    row("conn_machine_cpu_us", "  CPU per connection, whole machine (µs)", false, None, None),
    row("conn_fwd_cpu_us", "  CPU per connection, forwarder (µs)", false, None, None),
    row("rr_p50_us", "1-byte request/response on one connection, p50 (µs)", false, Some(0.95), Some(0.86)),
    row("rr_p99_us", "  latency p99 (µs)", false, None, None),
    row("rr_fwd_cpu_us", "  CPU per request/response, forwarder (µs)", false, None, None),
    row("udp_gbps", "UDP throughput, 1400-byte datagrams (Gbit/s)", true, Some(2.0), Some(2.43)),
    row("udp_carried_gbps", "  UDP carried into the namespace (Gbit/s)", true, None, None),
    row("udp_cpu_s_per_gb", "  forwarder CPU per GB, UDP (s)", false, None, None),
    row("ready_1_ms", "spawn to ready, 1 port (ms)", false, None, None),
    row("idle_rss_kib", "idle RSS, 1 port (KiB)", false, Some(0.3), Some(0.25)),
    row("idle_fds", "fds, 1 port", false, None, None),
    row("ready_3000_ms", "spawn to ready, 3000-port tcp,udp range (ms)", false, None, Some(0.06)),
    row("range_rss_kib", "RSS, 3000-port tcp,udp range (KiB)", false, None, Some(0.05)),
    row("range_fds", "fds, 3000-port tcp,udp range", false, None, None),
];

/// What decides each target row, from the profile (profile.md): printed
/// with the row's verdict in the targets list.
#[rustfmt::skip]
const WHY: &[(&str, &str, &str)] = &[
    ("tcp_gbps", "TCP throughput, 1 stream", include_str!("why/tcp_gbps.md")),
    ("tcp4_gbps", "TCP throughput, 4 streams", ""),
    ("cpu_s_per_gb", "Forwarder CPU per GB, 1 stream", include_str!("why/cpu_s_per_gb.md")),
    ("conn_per_s", "Connection rate", include_str!("why/conn_per_s.md")),
    ("conn_p50_us", "Connection p50 latency", include_str!("why/conn_p50_us.md")),
    ("rr_p50_us", "Request/response p50 on one connection", include_str!("why/rr_p50_us.md")),
    ("udp_gbps", "UDP throughput", include_str!("why/udp_gbps.md")),
    ("idle_rss_kib", "Idle RSS", include_str!("why/idle_rss_kib.md")),
    ("ready_3000_ms", "3000-port start-up", ""),
    ("range_rss_kib", "3000-port RSS", ""),
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
    for (name, who, factor) in [("pasta", Pasta, 1.1)] {
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

/// One target of a row: against whom, its bound, the measured ratio and
/// whether it is met (`None`: no ratio this run).
struct Verdict {
    against: &'static str,
    op: &'static str,
    bound: f64,
    ratio: Option<f64>,
    met: Option<bool>,
}

/// The row's targets, pasta's first, judged on this run's medians.
fn verdicts(s: &Samples, r: &Row) -> Vec<Verdict> {
    let ours = med(s, r.metric, Subject::Ours);
    let ratio = |other: Subject| match (ours, med(s, r.metric, other)) {
        (Some(o), Some(x)) if x > 0.0 => Some(o / x),
        _ => None,
    };
    let op = if r.higher_is_better { "≥" } else { "≤" };
    [
        ("pasta", r.vs_pasta, ratio(Subject::Pasta)),
        ("Go", r.vs_go, ratio(Subject::Go)),
    ]
    .into_iter()
    .filter_map(|(against, bound, ratio)| {
        let bound = bound?;
        let met = ratio.map(|x| {
            if r.higher_is_better {
                x >= bound
            } else {
                x <= bound
            }
        });
        Some(Verdict {
            against,
            op,
            bound,
            ratio,
            met,
        })
    })
    .collect()
}

fn ratio_text(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}x"))
}

/// The table: each subject's median (or why it has none), ours/pasta and
/// ours/Go, the targets (pasta's, then the Go helper's floor) and whether
/// they are met.
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
        let ratio =
            |other: Subject| match (med(s, r.metric, Subject::Ours), med(s, r.metric, other)) {
                (Some(o), Some(x)) if x > 0.0 => Some(o / x),
                _ => None,
            };
        let v = verdicts(s, r);
        let targets: Vec<String> = v
            .iter()
            .map(|v| format!("{} {}x {}", v.op, v.bound, v.against))
            .collect();
        let met: Vec<&str> = v
            .iter()
            .map(|v| match v.met {
                None => "—",
                Some(true) => "yes",
                Some(false) => "no",
            })
            .collect();
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            cell(r.metric, Subject::Ours),
            cell(r.metric, Subject::Pasta),
            cell(r.metric, Subject::Go),
            cell(r.metric, Subject::Direct),
            ratio_text(ratio(Subject::Pasta)),
            ratio_text(ratio(Subject::Go)),
            targets.join(" / "),
            met.join(" / "),
        );
    }
    out
}

/// Each target against the current pasta, met or not on this run, with
/// what decides it (measured by hand: profile.md), and the Go helper's
/// floor in one line.
pub(super) fn targets(s: &Samples) -> String {
    let mut out = String::from("Each target against the current pasta, on this run:\n\n");
    let mut floor = Vec::new();
    for r in ROWS {
        for v in verdicts(s, r) {
            let verdict = match v.met {
                None => "not measured",
                Some(true) => "met",
                Some(false) => "not met",
            };
            let (label, why) = WHY
                .iter()
                .find(|(m, _, _)| *m == r.metric)
                .map_or((r.label.trim(), ""), |(_, name, why)| (*name, why.trim()));
            if v.against == "Go" {
                if v.met == Some(false) {
                    floor.push(format!(
                        "{label} {} (floor {} {}x)",
                        v.ratio
                            .map_or_else(|| "—".to_owned(), |x| format!("{x:.3}x")),
                        v.op,
                        v.bound
                    ));
                }
                continue;
            }
            out += &format!(
                "- **{label}**: ours/pasta {}, target {} {}x: **{verdict}**. {why}\n",
                ratio_text(v.ratio),
                v.op,
                v.bound
            );
        }
    }
    out += &if floor.is_empty() {
        "- **Against the Go helper** nothing is lost: every row with a floor (its ratio in the \
         2026-11-23 run, whose CPU was utime + stime) is at or past it.\n"
            .to_owned()
    } else {
        format!(
            "- **Against the Go helper** (floor: its ratio in the 2026-11-23 run, whose CPU was \
             utime + stime) these rows fell short this run: {}.\n",
            floor.join("; ")
        )
    };
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

/// BENCHMARKS.md with its section headed `## TITLE` replaced by `section`
/// (inserted before "## Where the time goes" if it has none).
pub(super) fn replace_section(text: &str, title: &str, section: &str) -> String {
    let heading = format!("## {title}");
    let lines: Vec<&str> = text.lines().collect();
    let (start, end) = match lines.iter().position(|l| *l == heading) {
        Some(i) => (
            i,
            (i + 1..lines.len())
                .find(|&j| lines[j].starts_with("## "))
                .unwrap_or(lines.len()),
        ),
        None => {
            let at = lines
                .iter()
                .position(|l| l.starts_with("## Where the time goes"))
                .unwrap_or(lines.len());
            (at, at)
        }
    };
    let mut out: Vec<&str> = lines[..start].to_vec();
    if out.last().is_some_and(|l| !l.is_empty()) {
        out.push("");
    }
    out.extend(section.trim_matches('\n').lines());
    out.push("");
    out.extend(&lines[end..]);
    let mut new = out.join("\n").trim_end().to_owned();
    new.push('\n');
    new
}
