//! One event loop or two: what a second core would give rootlessport. The
//! forwarder has one event loop; a second one is stood in for by a second
//! rootlessport process (its own loop, namespace thread and pools), the
//! streams split between the two. Clients and servers are the same in both
//! cases: two iperf3 clients, each to its own iperf3 server in the
//! namespace, so only the number of forwarding loops differs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::clients::{free_port_block, iperf, LOOPBACK};
use super::forwarder::{Forwarder, Tool};
use super::netns::BenchNetns;
use super::report::{median, num, today};
use super::{BenchOptions, IPERF_PORT};

/// The second iperf3 server in the bench namespace.
pub(super) const IPERF_PORT_2: u16 = 5202;
/// Heading of the section in BENCHMARKS.md.
pub(super) const LOOPS_TITLE: &str = "One event loop or two (TCP, 2 clients)";
/// Total streams per measurement.
const STREAMS: [usize; 2] = [4, 16];

/// Medians per (streams, loops): Gbit/s and forwarder CPU per GB.
#[derive(Debug, Default)]
pub(super) struct Loops {
    samples: std::collections::BTreeMap<(usize, usize), (Vec<f64>, Vec<f64>)>,
}

/// `rounds` rounds of 4 and 16 streams through one forwarder (two ports,
/// one to each server) and through two (one port each).
pub(super) fn loops(ns: &BenchNetns, ours: &Path, opts: &BenchOptions) -> Result<Loops> {
    let (p1, p2, p3) = (
        free_port_block(1)?,
        free_port_block(1)?,
        free_port_block(1)?,
    );
    let map = |ports: &[(u16, u16)]| {
        serde_json::Value::Array(
            ports
                .iter()
                .map(|(host, container)| {
                    serde_json::json!({"host_ip": "127.0.0.1", "container_port": container,
                        "host_port": host, "range": 1, "protocol": "tcp"})
                })
                .collect(),
        )
    };
    let tool = Tool::Helper(ours.to_owned());
    let a = Forwarder::start(
        &tool,
        &ns.path(),
        &map(&[(p1, IPERF_PORT), (p2, IPERF_PORT_2)]),
    )?;
    let b = Forwarder::start(&tool, &ns.path(), &map(&[(p3, IPERF_PORT_2)]))?;
    let mut out = Loops::default();
    let result = (|| -> Result<()> {
        for round in 0..opts.rounds {
            eprintln!("loops round {}/{}", round + 1, opts.rounds);
            for streams in STREAMS {
                for (loops, ports) in [(1, [p1, p2]), (2, [p1, p3])] {
                    let cpu0 = a.cpu_seconds() + b.cpu_seconds();
                    let (gbps, bytes) = both(ports, opts.seconds, streams)?;
                    let cpu = a.cpu_seconds() + b.cpu_seconds() - cpu0;
                    let cell = out.samples.entry((streams, loops)).or_default();
                    cell.0.push(gbps);
                    cell.1.push(cpu / (bytes / 1e9));
                }
            }
        }
        Ok(())
    })();
    let stopped = a.stop().and(b.stop());
    result.and(stopped).map(|()| out)
}

/// Two iperf3 clients at once, `streams / 2` each, to `ports`; their
/// summed Gbit/s and bytes.
fn both(ports: [u16; 2], seconds: u64, streams: usize) -> Result<(f64, f64)> {
    let clients: Vec<_> = ports
        .into_iter()
        .map(|port| std::thread::spawn(move || iperf(LOOPBACK, port, seconds, false, streams / 2)))
        .collect();
    let (mut bps, mut bytes) = (0.0, 0.0);
    for c in clients {
        let (b, n) = c
            .join()
            .map_err(|_| anyhow::anyhow!("an iperf3 client thread panicked"))??
            .context("iperf3 through one of the loops hung")?;
        bps += b;
        bytes += n;
    }
    // Let the servers finish their side before the next test.
    std::thread::sleep(Duration::from_millis(200));
    Ok((bps / 1e9, bytes))
}

/// The section of BENCHMARKS.md: how it was measured and the table.
pub(super) fn render_loops_section(l: &Loops, opts: &BenchOptions) -> String {
    let mut table = String::from(
        "| streams | 1 loop (Gbit/s) | 2 loops (Gbit/s) | 2/1 | CPU per GB, 1 loop (s) | CPU per GB, 2 loops (s) |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for streams in STREAMS {
        let get = |loops: usize, cpu: bool| {
            l.samples
                .get(&(streams, loops))
                .and_then(|(g, c)| median(if cpu { c } else { g }))
        };
        let cell = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), num);
        let ratio = match (get(2, false), get(1, false)) {
            (Some(two), Some(one)) if one > 0.0 => format!("{:.2}x", two / one),
            _ => "—".to_owned(),
        };
        table += &format!(
            "| {streams} | {} | {} | {ratio} | {} | {} |\n",
            cell(get(1, false)),
            cell(get(2, false)),
            cell(get(1, true)),
            cell(get(2, true)),
        );
    }
    format!(
        "## {LOOPS_TITLE}\n\nWritten by `cargo xtask bench` on {} (`cargo xtask bench --only \
         loops` runs just this section and replaces it here). What a second event loop would \
         give on this machine ({} cores), before building one (ARCHITECTURE.md, \"Past one \
         core\"): a second rootlessport process stands in for it (its own loop, namespace \
         thread and pools). Two iperf3 clients run at once, each with half the streams, to \
         two iperf3 servers in the namespace: through one forwarder (a port to each server) \
         or through two (one port each). {} rounds, the two cases alternating; medians; {} s \
         each; CPU is both forwarders' together.\n\n{table}",
        today(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.rounds,
        opts.seconds,
    )
}
