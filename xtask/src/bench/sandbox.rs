//! The sandbox section: our rootlessport confined (ROOTLESSPORT_SANDBOX=1,
//! as by default) against not (=0), run as the keep-source-ip section is
//! (keep.rs: same launcher, clients and rounds).

use anyhow::{ensure, Context, Result};

use super::forwarder::Forwarder;
use super::keep::{ab_row, render_ab, Ab, AbCtx, AbRow, AbSpec, CLIENT_ADDR, OUTER_ADDR};
use super::report::today;
use super::{BenchOptions, NS_ADDR};

/// Heading of the section in BENCHMARKS.md (and, one level down, README).
pub(super) const SANDBOX_TITLE: &str = "The sandbox's cost (rootlessport)";

/// The target: with the sandbox on, within 2% of off.
const WITHIN: Option<f64> = Some(0.02);

const SANDBOX_ROWS: &[AbRow] = &[
    ab_row(
        "tcp_gbps",
        "TCP throughput, 1 stream (Gbit/s)",
        true,
        WITHIN,
    ),
    ab_row(
        "cpu_s_per_gb",
        "forwarder CPU per GB moved, 1 stream (s)",
        false,
        WITHIN,
    ),
    ab_row(
        "conn_per_s",
        "connect + 1-byte req/reply + close (conn/s)",
        true,
        WITHIN,
    ),
    ab_row("conn_p50_us", "  latency p50 (µs)", false, WITHIN),
    ab_row(
        "conn_fwd_cpu_us",
        "  CPU per connection, forwarder (µs)",
        false,
        None,
    ),
];

/// The sandbox section.
pub(super) const SANDBOX: AbSpec = AbSpec {
    name: "sandbox",
    title: SANDBOX_TITLE,
    env: "ROOTLESSPORT_SANDBOX",
    values: ["1", "0"],
    check: check_confined,
    rows: SANDBOX_ROWS,
};

/// The forwarder's `/proc/PID/status` must say what the setting claims:
/// on, a seccomp filter (`Seccomp: 2`) and `NoNewPrivs: 1`; off, no filter
/// (`Seccomp: 0`). The sandbox is in place before the forwarder says it
/// is ready, so this is read right after the start.
fn check_confined(ctx: &AbCtx<'_>, f: &Forwarder, on: bool, ab: &mut Ab) -> Result<()> {
    let pid = f.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("failed to read /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (seccomp, nnp, caps) = (field("Seccomp"), field("NoNewPrivs"), field("CapEff"));
    let setting = if on { "on" } else { "off" };
    let ok = if on {
        seccomp == "2" && nnp == "1"
    } else {
        seccomp == "0"
    };
    ensure!(
        ok,
        "with ROOTLESSPORT_SANDBOX {setting} rootlessport (pid {pid}) has Seccomp: {seccomp}, \
         NoNewPrivs: {nnp}; the forwarder's stderr: {}",
        ctx.launcher.log()
    );
    eprintln!("sandbox {setting}: Seccomp: {seccomp}, NoNewPrivs: {nnp}, CapEff: {caps}");
    for (aspect, v) in [("Seccomp", seccomp), ("NoNewPrivs", nnp), ("CapEff", caps)] {
        ab.seen.entry((on, aspect)).or_default().insert(v);
    }
    Ok(())
}

/// The sandbox section of BENCHMARKS.md: how it was measured, and its
/// table.
pub(super) fn render_sandbox_section(ab: &Ab, opts: &BenchOptions) -> String {
    let seen = |on: bool| {
        ["Seccomp", "NoNewPrivs", "CapEff"]
            .iter()
            .map(|aspect| {
                let v: Vec<&str> = ab
                    .seen
                    .get(&(on, *aspect))
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                format!("`{aspect}: {}`", v.join("/"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "## {SANDBOX_TITLE}\n\nWritten by `cargo xtask bench` on {} (`cargo xtask bench --only \
         sandbox` runs just this section and replaces it here and in README). The same build \
         of our `rootlessport` with its sandbox on (`ROOTLESSPORT_SANDBOX=1`, as without the \
         variable: seccomp allow-list, no_new_privs, capabilities dropped, Landlock) against \
         off (`=0`). It runs as the keep-source-ip section does (with client addresses not \
         kept): the forwarder in the \"outer\" namespace on {OUTER_ADDR}, started as podman \
         starts it, the clients (iperf3, `xtask bench-conn`) in the \"client\" namespace at \
         {CLIENT_ADDR}, the servers at {NS_ADDR} in the bench namespace.\n\nEvery start is \
         checked before it is measured: the forwarder's `/proc/PID/status` must show \
         `Seccomp: 2` and `NoNewPrivs: 1` with it on and `Seccomp: 0` with it off, or the \
         bench fails. This run: on, {}; off, {}.\n\n{} rounds, on and off alternating which \
         goes first; each cell is the median; throughput and rates over {} s each; CPU is the \
         forwarder's own (schedstat). The target is the issue's: with the sandbox on, \
         throughput, CPU per GB, the connection rate and its p50 within 2% of off.\n\n{}",
        today(),
        seen(true),
        seen(false),
        opts.rounds,
        opts.seconds,
        render_ab(&SANDBOX, ab),
    )
}

/// What README says above the sandbox table when it first adds it.
pub(super) const README_SANDBOX_INTRO: &str =
    "`cargo xtask bench` also measures our rootlessport with its sandbox on (the
default) against `ROOTLESSPORT_SANDBOX=0`, same build; `cargo xtask bench
--only sandbox` runs just that part and replaces the table below.
BENCHMARKS.md says how it is measured.";
