//! rootlessport's control socket (ours: `ROOTLESSPORT_CONTROL_SOCKET`), as
//! slirpnet starts it: only a stale socket at its path is replaced, and a
//! forward table of any size is listed and changed through it.

use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use slirp_api::portctl::{PortKey, Reply, Request};
use slirp_proc::{Helper, HelperCommand, HelperError, HelperStderr};
use slirpnet_tests::{
    free_run, free_tcp_port, require_net_admin, rootlessport_bin, PersistentNetns,
};

/// rootlessport started as slirpnet starts it, with its control socket at
/// `control`.
fn start(
    ns: &PersistentNetns,
    mappings: serde_json::Value,
    control: &Path,
) -> Result<Helper, HelperError> {
    let config = ns.rootlessport_config(mappings, "10.77.0.1");
    let mut cmd = HelperCommand::new(rootlessport_bin(), "rootlessport", config.into_bytes());
    cmd.stderr = HelperStderr::Null;
    cmd.ready_timeout = Duration::from_secs(30);
    cmd.env
        .push(("ROOTLESSPORT_CONTROL_SOCKET".into(), control.into()));
    cmd.start()
}

fn tcp_map(host_port: u16) -> serde_json::Value {
    json!([{"host_ip": "127.0.0.1", "container_port": 80, "host_port": host_port, "range": 1, "protocol": "tcp"}])
}

fn ask(control: &Path, req: &Request) -> Reply {
    slirp_api::control::request(control, req, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

/// A regular file, a symbolic link (to a file, and dangling) or a
/// directory at the socket's path fails the start with one line naming
/// the path, and is left exactly as it was; the port is not held.
#[test]
fn only_a_socket_at_the_control_path_is_replaced() {
    if !require_net_admin("only_a_socket_at_the_control_path_is_replaced", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-ctl-path");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "precious").unwrap();
    let target = dir.path().join("target");
    std::fs::write(&target, "precious too").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.path().join("dangling.sock");
    std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
    let subdir = dir.path().join("dir.sock");
    std::fs::create_dir(&subdir).unwrap();
    let port = free_tcp_port();
    for (path, kind) in [
        (&file, "a regular file"),
        (&link, "a symbolic link"),
        (&dangling, "a symbolic link"),
        (&subdir, "a directory"),
    ] {
        let line = match start(&ns, tcp_map(port), path) {
            Err(HelperError::Failed { line, .. }) => line,
            Err(other) => panic!("{}: failed in the wrong way: {other}", path.display()),
            Ok(_) => panic!("{}: became ready", path.display()),
        };
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(
            line.contains(&format!("refusing to replace {}", path.display()))
                && line.contains(kind),
            "{}: {line:?}",
            path.display()
        );
        TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("port left bound: {e}"));
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious too");
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(subdir.is_dir());
    // Nothing was left beside them either (the staging name).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dangling.sock",
            "dir.sock",
            "file.sock",
            "link.sock",
            "target"
        ]
    );

    // A socket somebody listens on is not taken over either.
    let live = dir.path().join("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    match start(&ns, tcp_map(port), &live) {
        Err(HelperError::Failed { line, .. }) => {
            assert!(
                line.contains(&format!("{} is in use", live.display())),
                "{line:?}"
            )
        }
        other => panic!("a live socket: {other:?}"),
    }

    // A stale socket (its server gone) is replaced, served, and removed
    // with the forwarder.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(std::fs::symlink_metadata(&stale)
        .unwrap()
        .file_type()
        .is_socket());
    let helper = start(&ns, tcp_map(port), &stale).unwrap_or_else(|e| panic!("stale socket: {e}"));
    let forwards = ask(&stale, &Request::List).into_forwards().unwrap();
    assert_eq!(forwards.len(), 1);
    let _ = helper.stop(Duration::from_secs(5));
    assert!(!stale.exists(), "{} left behind", stale.display());
}

/// A 3000-port tcp,udp range: 6000 forwards, a reply of some 470 KB (more
/// than a SEQPACKET record can carry), listed and changed.
#[test]
fn six_thousand_forwards_are_listed_and_changed() {
    if !require_net_admin("six_thousand_forwards_are_listed_and_changed", &[]) {
        return;
    }
    let ns = PersistentNetns::with_veth("rp-ctl-big");
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let first = free_run(3000);
    let range = json!([{"host_ip": "127.0.0.1", "container_port": 10000, "host_port": first, "range": 3000, "protocol": "tcp,udp"}]);
    let helper = start(&ns, range, &control).unwrap_or_else(|e| panic!("not ready: {e}"));
    let forwards = ask(&control, &Request::List).into_forwards().unwrap();
    assert_eq!(forwards.len(), 6000);
    // Remove all but the first port's two forwards in one request (a
    // request of some 340 KB).
    let ports: Vec<PortKey> = forwards
        .iter()
        .filter(|f| f.forward.host_port != first)
        .map(|f| PortKey {
            proto: f.forward.proto,
            host_ip: f.forward.host_ip,
            host_port: f.forward.host_port,
        })
        .collect();
    assert_eq!(ports.len(), 5998);
    let left = ask(&control, &Request::Remove { ports })
        .into_forwards()
        .unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|f| f.forward.host_port == first));
    TcpListener::bind(("127.0.0.1", first + 1)).expect("a removed port is free");
    assert_eq!(ask(&control, &Request::List).into_forwards().unwrap(), left);
    let _ = helper.stop(Duration::from_secs(5));
}
