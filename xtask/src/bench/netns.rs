//! The bench's network namespaces: the one holding the servers, and the
//! outer and client namespaces of the keep-source-ip section.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use super::keep::{CLIENT_ADDR, OUTER_ADDR};

/// A network namespace with 10.77.0.1 on a veth pair inside; deleted on drop.
/// Its servers listen on all addresses: the helpers reach them at 10.77.0.1,
/// pasta (its splice path) at the namespace's 127.0.0.1.
pub(super) struct BenchNetns {
    name: String,
    servers: Vec<Child>,
}

impl BenchNetns {
    pub(super) fn new() -> Result<Self> {
        let name = format!("slirpnet-bench-{}", std::process::id());
        crate::util::run_quiet(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = BenchNetns {
            name,
            servers: Vec::new(),
        };
        for args in [
            "link set lo up",
            "link add v0 type veth peer name v1",
            "addr add 10.77.0.1/24 dev v0",
            "addr add 10.77.0.2/24 dev v1",
            "link set v0 up",
            "link set v1 up",
        ] {
            crate::util::run_quiet(
                Command::new("ip")
                    .arg("-n")
                    .arg(&ns.name)
                    .args(args.split(' ')),
            )?;
        }
        reuse_time_wait(&ns.name)?;
        Ok(ns)
    }

    pub(super) fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// UDP datagrams that reached the namespace's UDP layer so far, whether
    /// a socket took them (InDatagrams) or dropped them (InErrors, e.g. a
    /// full receive buffer): what forwarders carried in.
    pub(super) fn udp_arrived(&self) -> Result<u64> {
        Ok(self.udp_field("InDatagrams")? + self.udp_field("InErrors")?)
    }

    /// UDP datagrams sent from inside the namespace so far (the servers'
    /// replies).
    pub(super) fn udp_sent(&self) -> Result<u64> {
        self.udp_field("OutDatagrams")
    }

    /// One counter of the namespace's `Udp:` lines in /proc/net/snmp.
    fn udp_field(&self, want: &str) -> Result<u64> {
        let server = self.servers.first().context("no server in the namespace")?;
        // A process inside sees the namespace's counters.
        let path = format!("/proc/{}/net/snmp", server.id());
        let snmp =
            std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next(), udp.next());
        let (Some(names), Some(values)) = (names, values) else {
            bail!("no Udp lines in {path}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == want)
            .and_then(|(_, v)| v.parse().ok())
            .with_context(|| format!("no Udp {want} in {path}"))
    }

    /// Starts `cmd` inside the namespace (ip netns exec).
    pub(super) fn spawn(&mut self, program: &Path, args: &[&str]) -> Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.servers.push(child);
        Ok(())
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The two more namespaces of the keep-source-ip section: "outer", which
/// plays the host (the forwarder runs there, listening on
/// [`OUTER_ADDR`]), and "client", at [`CLIENT_ADDR`] on a veth pair to it.
/// Both are deleted on drop (which takes the veth pair with them).
pub(super) struct ClientNets {
    names: Vec<String>,
}

impl ClientNets {
    pub(super) fn new() -> Result<Self> {
        let mut nets = ClientNets { names: Vec::new() };
        for role in ["outer", "client"] {
            let name = format!("slirpnet-bench-{role}-{}", std::process::id());
            crate::util::run_quiet(Command::new("ip").args(["netns", "add", &name]))?;
            nets.names.push(name);
        }
        let (outer, client) = (nets.outer(), nets.client());
        for (ns, args) in [
            (outer, "link set lo up".to_owned()),
            (client, "link set lo up".to_owned()),
            (
                outer,
                format!("link add o0 type veth peer name c0 netns {client}"),
            ),
            (outer, format!("addr add {OUTER_ADDR}/24 dev o0")),
            (client, format!("addr add {CLIENT_ADDR}/24 dev c0")),
            (outer, "link set o0 up".to_owned()),
            (client, "link set c0 up".to_owned()),
        ] {
            crate::util::run_quiet(Command::new("ip").arg("-n").arg(ns).args(args.split(' ')))?;
        }
        for ns in [outer, client] {
            reuse_time_wait(ns)?;
        }
        Ok(nets)
    }

    pub(super) fn outer(&self) -> &str {
        &self.names[0]
    }

    pub(super) fn client(&self) -> &str {
        &self.names[1]
    }
}

impl Drop for ClientNets {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Lets connect(2) in namespace `name` reuse a port whose last connection
/// is in TIME-WAIT (`net.ipv4.tcp_tw_reuse=1`, which covers IPv6 too). A
/// connection-rate phase makes some 10,000 connections a second, and each
/// leaves a TIME-WAIT for 60 s on the side that closed first: without reuse
/// the namespace's ephemeral ports run out within seconds, and every later
/// connect searches the whole range, so a phase measured the TIME-WAITs
/// left by the phases before it rather than the forwarder. Loopback clients
/// (the main table's) get this by default (`tcp_tw_reuse=2`); the clients
/// and servers of a namespace's veth did not.
fn reuse_time_wait(name: &str) -> Result<()> {
    crate::util::run_quiet(Command::new("ip").args([
        "netns",
        "exec",
        name,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
    ]))
}
