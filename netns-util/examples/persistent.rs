//! Makes a persistent network namespace (like `ip netns add`), does work
//! inside it on a thread of its own (brings `lo` up, serves and connects on
//! loopback there), reads `lo` from inside, and removes the namespace again.
//! The calling thread never changes namespace.
//!
//! ```sh
//! # As root: the namespace is /run/netns/netns-util-example-PID.
//! cargo run -p netns-util --example persistent
//! # Rootless: in a user and mount namespace of your own (the bind mount
//! # needs a mount namespace your user namespace owns), at a path you may
//! # write.
//! unshare --user --map-root-user --mount target/debug/examples/persistent "$HOME/.netns-demo/ns"
//! ```
//!
//! Needs `ip` (iproute2) on the PATH to bring `lo` up inside.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use netns_util::{create_persistent, interface_info, remove_persistent, Netns};

fn main() -> std::process::ExitCode {
    // The errors' messages are complete (each ends with its cause), so
    // Display is what to show; `main` returning the error would show Debug.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => format!("/run/netns/netns-util-example-{}", std::process::id()).into(),
    };
    // Refused with "creating network namespace ... needs CAP_SYS_ADMIN ..."
    // when not root and not in a user namespace of one's own, and with
    // "bind-mounting ... needs CAP_SYS_ADMIN in the user namespace that owns
    // this process's mount namespace ..." in one without its own mount
    // namespace.
    create_persistent(&path)?;
    println!("created {}", path.display());
    // Whatever happens inside, the namespace is removed again.
    let result = work_inside(&path);
    remove_persistent(&path)?;
    println!("removed {}", path.display());
    result
}

fn work_inside(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let ns = Netns::open(path)?;
    // A different namespace from ours.
    assert_ne!(ns.id()?, Netns::current()?.id()?);

    // A child spawned on the thread inside is inside too.
    let status = ns.run(|| {
        Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
    })??;
    if !status.success() {
        return Err(format!(
            "`ip link set lo up` inside {} failed: {status}",
            path.display()
        )
        .into());
    }

    // A listener made inside stays there; it can be used from any thread.
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0"))??;
    let addr = listener.local_addr()?;
    // Nothing listens on that port out here: the loopback inside is another.
    let mut client = ns.run(move || TcpStream::connect(addr))??;
    let (mut served, _) = listener.accept()?;
    client.write_all(b"hello from inside")?;
    drop(client);
    let mut got = String::new();
    served.read_to_string(&mut got)?;
    println!("{addr} inside got {got:?}");

    let lo = interface_info(&ns, "lo")?;
    println!(
        "lo inside: up {}, addresses {:?}, {} packets received",
        lo.up, lo.addresses, lo.counters.rx_packets
    );
    if !lo.up || lo.counters.rx_packets == 0 {
        return Err("lo inside is not up or saw no traffic".into());
    }
    Ok(())
}
