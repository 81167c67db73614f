//! podman's slirp4netns options to the slirp4netns command line and the
//! addresses the namespace gets. Needs no privilege and starts nothing.
//!
//! ```sh
//! cargo run -p slirp-opts --example options_to_argv -- 'port_handler=slirp4netns,enable_ipv6=false,mtu=1500' /run/netns/demo
//! ```
//!
//! The first argument is the option string as given to
//! `podman run --network slirp4netns:OPTIONS` (default: none), the second the
//! network namespace path (default: `/run/netns/demo`). The binary is assumed
//! to be slirp4netns 1.1 or newer (every flag present).

use std::path::Path;
use std::process::ExitCode;

use slirp_opts::{
    build_args, Features, Invocation, NetworkOptions, Subnet, Target, IPV6_DNS, IPV6_GATEWAY,
    IPV6_GUEST,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() > 2 || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: options_to_argv [OPTION,OPTION,...] [NETNS_PATH]");
        return ExitCode::from(2);
    }
    let list = args.first().map_or("", String::as_str);
    let netns = args.get(1).map_or("/run/netns/demo", String::as_str);
    match show(list, netns) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("options_to_argv: {e}");
            ExitCode::FAILURE
        }
    }
}

fn show(list: &str, netns: &str) -> Result<(), Box<dyn std::error::Error>> {
    // The one question the options may ask of the system: is a value of
    // outbound_addr/outbound_addr6 the name of an interface here?
    let iface_exists = |name: &str| Path::new("/sys/class/net").join(name).exists();
    let opts = NetworkOptions::parse_list(list, iface_exists)?;

    let mut inv = Invocation::new(Target::Path {
        netns: netns.into(),
        userns: None,
    });
    if opts.port_handler == slirp_opts::PortHandler::Slirp4netns {
        // Forwards go through the API socket.
        inv.api_socket = Some("/run/user/1000/slirp4netns-demo.sock".into());
    }
    let argv = build_args(&opts, &Features::all(), &inv)?;
    let argv: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
    println!("argv:         slirp4netns {}", argv.join(" "));
    println!("port handler: {}", opts.port_handler);

    let subnet = Subnet::from_cidr(opts.cidr);
    println!("subnet:       {subnet}");
    println!("guest:        {}", subnet.guest()?);
    println!("gateway:      {}", subnet.gateway()?);
    println!("dns:          {}", subnet.dns()?);
    if opts.enable_ipv6 {
        println!("guest6:       {IPV6_GUEST}");
        println!("gateway6:     {IPV6_GATEWAY}");
        println!("dns6:         {IPV6_DNS}");
    }
    Ok(())
}
