//! Runs a command in network, mount and PID namespaces of its own, with
//! slirp4netns networking and a host port forwarded into it, as `slirpnet
//! run` does: as root, or as any user (a user namespace then maps you to
//! root; the library picks the rootless settings itself). Exits with the
//! command's status. When the command ends, or this program is killed (even
//! with SIGKILL), nothing the command started is left running.
//!
//! ```sh
//! cargo run -p slirpnet --example run_command                 # a default check
//! cargo run -p slirpnet --example run_command -- sh -c 'ip addr; sleep 1 & echo bye'
//! ```

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;

use slirpnet::{plan, NetworkOptions, NsCommand, SetupOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv.is_empty() {
        // The namespace has its own tap0 with a default route, and its own
        // resolv.conf.
        argv = [
            "sh",
            "-c",
            "grep -q '^tap0' /proc/net/route && cat /etc/resolv.conf",
        ]
        .map(OsString::from)
        .to_vec();
    }

    // Ports through slirp4netns itself: no forwarder binary needed.
    let network =
        NetworkOptions::parse(&[] as &[&str], false, &["port_handler=slirp4netns"], |_| {
            false
        })?;
    // The defaults fit this process: root or not.
    let host_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let opts = SetupOptions::new(network).with_ports(slirpnet::parse_forwards(&format!(
        "127.0.0.1:{host_port}:8000"
    ))?);
    let checked = plan(&opts)?;

    let mut command = NsCommand::new(&argv[0]);
    command.args(&argv[1..]);
    // A user namespace when not root, a resolv.conf naming slirp4netns's
    // DNS, a /proc of its own.
    let ns = checked.ns_options();
    let running = checked.run(&command, &ns)?;
    let info = running.info();
    eprintln!(
        "namespace init pid {}: guest {}, gateway {}, dns {}; 127.0.0.1:{host_port} -> port 8000 inside",
        running.pid(),
        info.guest,
        info.gateway,
        info.dns,
    );
    let status = running.wait()?;
    eprintln!("the command ended: {status}");
    std::process::exit(
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1),
    );
}
