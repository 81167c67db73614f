//! What the program prints: each report as JSON or as a table, chosen in
//! one place ([`print`]).

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;

use netns_util::InterfaceInfo;
use slirp_api::portctl::ForwardEntry;
use slirpnet::session::SessionStatus;
use slirpnet::SetupInfo;

/// Prints `value` as pretty JSON when `json`, else as `table` writes it.
pub fn print<T: serde::Serialize + ?Sized>(
    out: &mut dyn Write,
    json: bool,
    value: &T,
    table: impl FnOnce(&T, &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)
    } else {
        table(value, out)
    }
}

/// The setup as a short table.
pub fn table(info: &SetupInfo, out: &mut dyn Write) -> io::Result<()> {
    if info.pid != 0 {
        write!(out, "slirp4netns pid {}, ", info.pid)?;
    }
    writeln!(out, "subnet {}, {} mtu {}", info.subnet, info.tap, info.mtu)?;
    for w in &info.warnings {
        writeln!(out, "warning: {w}")?;
    }
    let v6 = |a: Option<std::net::Ipv6Addr>| a.map(|a| a.to_string()).unwrap_or_default();
    writeln!(
        out,
        "  {:<8} {:<16} {}",
        "guest",
        info.guest,
        v6(info.guest_v6)
    )?;
    writeln!(
        out,
        "  {:<8} {:<16} {}",
        "gateway",
        info.gateway,
        v6(info.gateway_v6)
    )?;
    writeln!(out, "  {:<8} {:<16} {}", "dns", info.dns, v6(info.dns_v6))?;
    if let Some(ip) = info.publish_auto {
        writeln!(
            out,
            "publishing every port the namespace listens on, at {ip} on the host"
        )?;
    }
    if info.forwards.is_empty() {
        return Ok(());
    }
    match &info.forwarder {
        Some(slirpnet::ForwarderInfo::Binary { path, pid }) => {
            write!(
                out,
                "forwards ({}, by {}",
                info.port_handler,
                path.display()
            )?;
            match pid {
                Some(pid) => writeln!(out, ", pid {pid}):")?,
                None => writeln!(out, "):")?,
            }
        }
        Some(slirpnet::ForwarderInfo::InProcess) => {
            writeln!(out, "forwards ({}, in-process):", info.port_handler)?
        }
        _ => writeln!(out, "forwards ({}):", info.port_handler)?,
    }
    writeln!(
        out,
        "  client addresses: {}",
        if info.keep_source_ip {
            "kept (loopback clients show as the namespace's own)"
        } else {
            "hidden (every client shows as the namespace's own address)"
        }
    )?;
    writeln!(out, "  {:<5} {:<24} CONTAINER", "PROTO", "HOST")?;
    for f in info.forwards.iter().map(|f| f.forward) {
        writeln!(
            out,
            "  {:<5} {:<24} {}",
            f.proto,
            host(f.host_ip, f.host_port),
            f.container_port
        )?;
    }
    Ok(())
}

/// An interface's addresses and counters.
pub fn stats(info: &InterfaceInfo, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{}: {} mac {}",
        info.name,
        if info.up { "UP" } else { "DOWN" },
        info.mac.as_deref().unwrap_or("-")
    )?;
    for (ip, prefix) in &info.addresses {
        writeln!(out, "  inet {ip}/{prefix}")?;
    }
    let c = &info.counters;
    writeln!(
        out,
        "  {:<3} {:>14} {:>10} {:>8} {:>8}",
        "", "BYTES", "PACKETS", "ERRORS", "DROPPED"
    )?;
    writeln!(
        out,
        "  {:<3} {:>14} {:>10} {:>8} {:>8}",
        "rx", c.rx_bytes, c.rx_packets, c.rx_errors, c.rx_dropped
    )?;
    writeln!(
        out,
        "  {:<3} {:>14} {:>10} {:>8} {:>8}",
        "tx", c.tx_bytes, c.tx_packets, c.tx_errors, c.tx_dropped
    )?;
    Ok(())
}

/// A dry run's report: the plan, and the slirp4netns argv it would run.
#[derive(serde::Serialize)]
pub struct DryRun<'a> {
    /// The plan's report.
    #[serde(flatten)]
    pub info: &'a SetupInfo,
    /// The binary and its arguments.
    pub argv: Vec<String>,
}

impl<'a> DryRun<'a> {
    /// `info`, to be set up by running `binary` with `args`.
    pub fn new(info: &'a SetupInfo, binary: &Path, args: &[OsString]) -> Self {
        let argv = std::iter::once(binary.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        DryRun { info, argv }
    }
}

/// A dry run as a table: the argv, quoted for a POSIX shell, then the
/// plan.
pub fn dry_run(plan: &DryRun<'_>, out: &mut dyn Write) -> io::Result<()> {
    let words: Vec<String> = plan
        .argv
        .iter()
        .map(|s| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
            {
                s.clone()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect();
    writeln!(out, "would run: {}", words.join(" "))?;
    table(plan.info, out)
}

/// Forwards as a short table.
pub fn forwards(forwards: &[ForwardEntry], out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{:<5} {:<24} {:<9} BY", "PROTO", "HOST", "CONTAINER")?;
    for ForwardEntry { forward: f, auto } in forwards {
        writeln!(
            out,
            "{:<5} {:<24} {:<9} {}",
            f.proto,
            host(f.host_ip, f.host_port),
            f.container_port,
            if *auto { "auto" } else { "request" }
        )?;
    }
    Ok(())
}

/// Running sessions as a table.
pub fn sessions(sessions: &[SessionStatus], out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<10} {:<30} {:<12} PORTS",
        "PID", "SLIRP", "NETNS", "HANDLER"
    )?;
    for s in sessions {
        let ports: Vec<String> = s
            .forwards
            .iter()
            .map(|ForwardEntry { forward: f, auto }| {
                format!(
                    "{}->{}/{}{}",
                    host(f.host_ip, f.host_port),
                    f.container_port,
                    f.proto,
                    if *auto { " (auto)" } else { "" }
                )
            })
            .collect();
        writeln!(
            out,
            "{:<8} {:<10} {:<30} {:<12} {}",
            s.pid,
            s.slirp4netns_pid,
            s.netns,
            s.port_handler,
            ports.join(", ")
        )?;
    }
    Ok(())
}

fn host(ip: Option<std::net::IpAddr>, port: u16) -> String {
    match ip {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Some(ip) => format!("{ip}:{port}"),
        None => format!("*:{port}"),
    }
}
