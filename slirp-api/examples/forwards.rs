//! Adds, lists and removes a forward on a running slirp4netns.
//!
//! ```sh
//! slirp4netns --configure --api-socket /tmp/slirp.sock PID tap0 &
//! cargo run -p slirp-api --example forwards -- /tmp/slirp.sock [HOST_PORT [GUEST_PORT]]
//! ```
//!
//! The forward is TCP from 127.0.0.1:HOST_PORT on the host (default: a port
//! free now) to GUEST_PORT in the namespace (default 80).

use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use slirp_api::{Client, HostFwd, HostFwdEntry, Protocol};

const USAGE: &str = "usage: forwards API_SOCKET [HOST_PORT [GUEST_PORT]]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), true) = (args.first(), args.len() <= 3) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let port = |i: usize, default: fn() -> std::io::Result<u16>| -> Result<u16, String> {
        match args.get(i) {
            Some(text) => text
                .parse()
                .map_err(|_| format!("{text:?} is not a port number")),
            None => default().map_err(|e| format!("no free port: {e}")),
        }
    };
    let ports = port(1, free_port).and_then(|host| Ok((host, port(2, || Ok(80))?)));
    let (host_port, guest_port) = match ports {
        Ok(ports) => ports,
        Err(e) => {
            eprintln!("forwards: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(socket, host_port, guest_port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forwards: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(socket: &str, host_port: u16, guest_port: u16) -> Result<(), slirp_api::ApiError> {
    let client = Client::new(socket).with_timeout(Duration::from_secs(5));
    let fwd =
        HostFwd::new(Protocol::Tcp, host_port, guest_port).with_host_addr(Ipv4Addr::LOCALHOST);
    let id = client.add_hostfwd(&fwd)?;
    println!("added forward {id}: 127.0.0.1:{host_port} -> guest port {guest_port}/tcp");
    print_list(&client.list_hostfwd()?);
    client.remove_hostfwd(id)?;
    println!("removed forward {id}");
    print_list(&client.list_hostfwd()?);
    Ok(())
}

fn print_list(entries: &[HostFwdEntry]) {
    println!("{} forward(s)", entries.len());
    for e in entries {
        println!(
            "  {:>3} {} {}:{} -> {}:{}",
            e.id, e.proto, e.host_addr, e.host_port, e.guest_addr, e.guest_port
        );
    }
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
