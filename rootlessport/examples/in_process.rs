//! A port forwarder inside this process: host port -> a service in a
//! network namespace, with no helper binary, then stopped.
//!
//! ```sh
//! ip netns add demo
//! ip -n demo link set lo up
//! ip -n demo link add v0 type veth peer name v1
//! ip -n demo addr add 10.77.0.1/24 dev v0
//! ip -n demo link set v0 up; ip -n demo link set v1 up
//! cargo run -p rootlessport --example in_process -- /run/netns/demo 10.77.0.1
//! ```
//!
//! Rootless, it needs a namespace it may enter: one in a user namespace of
//! its own, where it runs too (the host side is then that namespace):
//!
//! ```sh
//! unshare --user --map-root-user --net sh -ec 'ip link set lo up
//!   ip link add v0 type veth peer name v1; ip addr add 10.77.0.1/24 dev v0
//!   ip link set v0 up; ip link set v1 up
//!   exec target/debug/examples/in_process /proc/self/ns/net 10.77.0.1'
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};

use rootlessport::slirp_opts::{Forward, Protocol};
use rootlessport::{Forwarder, ForwarderConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(netns), Some(child_ip)) = (args.next(), args.next()) else {
        eprintln!("usage: in_process NETNS_PATH CHILD_IP   (CHILD_IP: a non-loopback address inside; needs the right to enter NETNS)");
        std::process::exit(2);
    };
    let child_ip: IpAddr = child_ip.parse()?;
    // The service inside the namespace.
    let ns = rootlessport::netns_util::Netns::open(&netns)?;
    let service = ns.run(move || TcpListener::bind((child_ip, 8000)))??;
    let host_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let config = ForwarderConfig::new(netns, child_ip)
        .forward(Forward {
            proto: Protocol::Tcp,
            host_ip: Some([127, 0, 0, 1].into()),
            host_port,
            container_port: 8000,
        })
        .validate()?;
    let forwarder = Forwarder::start(config)?;
    println!("forwarding 127.0.0.1:{host_port} -> {child_ip}:8000 in-process");
    // Serve on a thread until stopped through a handle.
    let handle = forwarder.handle();
    let serving = std::thread::spawn(move || forwarder.serve());

    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, peer) = service.accept()?;
        let mut got = Vec::new();
        c.read_to_end(&mut got)?;
        c.write_all(format!("{peer} said: ").as_bytes())?;
        c.write_all(&got)
    });
    let mut client = TcpStream::connect(("127.0.0.1", host_port))?;
    client.write_all(b"hello")?;
    client.shutdown(std::net::Shutdown::Write)?;
    let mut back = String::new();
    client.read_to_string(&mut back)?;
    server.join().expect("the service thread")?;
    println!("{back}");

    // Returns once the port is closed.
    handle.stop();
    serving.join().expect("the forwarder thread")?;
    if TcpStream::connect(("127.0.0.1", host_port)).is_ok() {
        return Err("the port still accepts after stop".into());
    }
    println!("stopped");
    if !back.ends_with(" said: hello") {
        return Err("the reply came back changed".into());
    }
    Ok(())
}
