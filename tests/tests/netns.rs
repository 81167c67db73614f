//! netns-util: opening, entering, creating and removing namespaces, and
//! reading an interface from inside.

use std::net::{TcpListener, TcpStream};

use netns_util::{interface_info, Netns, NetnsError};
use slirpnet_tests::{can_admin_net, is_mounted, require, PersistentNetns};

#[test]
fn open_refuses_what_is_not_a_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = Netns::open(&file).unwrap_err();
    assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{} is not a namespace file", file.display())),
        "{err}"
    );

    let err = Netns::open("/proc/self/ns/uts").unwrap_err();
    assert_eq!(
        err.to_string(),
        "/proc/self/ns/uts is a namespace, but not a network namespace"
    );

    let err = Netns::open(dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    // Our own namespace opens fine and is what /proc/self says.
    let ns = Netns::current().unwrap();
    assert_eq!(
        ns.id().unwrap(),
        Netns::open("/proc/self/ns/net").unwrap().id().unwrap()
    );
}

#[test]
fn work_runs_inside_and_the_caller_stays_put() {
    if !require("work_runs_inside_and_the_caller_stays_put", can_admin_net()) {
        return;
    }
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let made = PersistentNetns::new("run").unwrap();
    assert!(
        is_mounted(&made.path),
        "{} should be a mount point",
        made.path.display()
    );
    let ns = made.open();
    let (inside_id, listener) = ns
        .run(|| {
            let id = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            (id, TcpListener::bind("127.0.0.1:0").unwrap())
        })
        .unwrap();
    assert_ne!(inside_id, before);
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    // The listener lives in the other namespace: its loopback is not ours...
    let port = listener.local_addr().unwrap().port();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err()
            || TcpListener::bind(("127.0.0.1", port)).is_ok()
    );
    // Work inside sees the new namespace's own interfaces: only lo.
    let inside = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .unwrap();
    assert!(inside.contains("lo:"), "{inside}");
    assert!(
        !inside.contains("eth0") && !inside.contains("tap0"),
        "a new namespace has only lo: {inside}"
    );
    drop(listener);

    // A panic inside comes back as an error, not a crash.
    let err = ns.run(|| -> u8 { panic!("boom") }).unwrap_err();
    assert!(err.to_string().contains("panicked: boom"), "{err}");

    let path = made.path.clone();
    drop(made);
    assert!(!path.exists(), "{} should be gone", path.display());
    assert!(!is_mounted(&path));
}

#[test]
fn create_refuses_an_existing_path_and_leaves_it_alone() {
    if !require(
        "create_refuses_an_existing_path_and_leaves_it_alone",
        can_admin_net(),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taken");
    std::fs::write(&file, b"keep me").unwrap();
    let err = netns_util::create_persistent(&file).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} already exists", file.display())
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // Removing something that is not there is fine.
    netns_util::remove_persistent(&dir.path().join("never-made")).unwrap();
}

#[test]
fn interface_info_reads_lo_inside() {
    if !require("interface_info_reads_lo_inside", can_admin_net()) {
        return;
    }
    let made = PersistentNetns::new("iface").unwrap();
    let ns = made.open();
    let lo = interface_info(&ns, "lo").unwrap();
    assert_eq!(lo.name, "lo");
    assert!(!lo.up, "lo starts down in a new namespace");
    let err = interface_info(&ns, "tap0").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "network namespace {} has no interface \"tap0\"",
            made.path.display()
        )
    );
}
