//! Networks an existing network namespace with slirp4netns, forwards a host
//! port into it, checks the forward with a connection, and tears it all
//! down.
//!
//! ```sh
//! ip netns add demo
//! cargo run -p slirpnet --example attach -- /run/netns/demo
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use slirpnet::{plan, NetworkOptions, PortHandler, SetupOptions, Target};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(netns) = std::env::args_os().nth(1) else {
        eprintln!("usage: attach NETNS_PATH   (e.g. /run/netns/demo; needs root)");
        std::process::exit(2);
    };
    // A service inside the namespace, on the guest address slirp4netns
    // configures (10.0.2.100): listen on all addresses.
    let ns = slirpnet::netns_util::Netns::open(&netns)?;
    let service = ns.run(|| TcpListener::bind("0.0.0.0:8000"))??;
    let host_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let network = NetworkOptions::new()
        .with_port_handler(PortHandler::Slirp4netns)
        .with_ipv6(false);
    let opts = SetupOptions::new(network).with_ports(slirpnet::parse_forwards(&format!(
        "127.0.0.1:{host_port}:8000"
    ))?);
    let checked = plan(&opts)?;
    let net = checked.start(Target::Path {
        netns: netns.into(),
        userns: None,
    })?;
    let info = net.info();
    println!(
        "slirp4netns pid {}: guest {} gateway {} dns {}, {} forward(s) by {}",
        info.pid,
        info.guest,
        info.gateway,
        info.dns,
        info.forwards.len(),
        info.port_handler
    );

    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = service.accept()?;
        let mut got = Vec::new();
        c.read_to_end(&mut got)?;
        c.write_all(&got)
    });
    let mut client = TcpStream::connect(("127.0.0.1", host_port))?;
    client.write_all(b"hello through slirp4netns")?;
    client.shutdown(std::net::Shutdown::Write)?;
    let mut back = String::new();
    client.read_to_string(&mut back)?;
    server.join().expect("the service thread")?;
    println!("echoed: {back}");
    let exit = net.teardown();
    println!("slirp4netns stopped: {exit}");
    if back != "hello through slirp4netns" {
        return Err("the echo came back changed".into());
    }
    Ok(())
}
