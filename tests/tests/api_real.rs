//! slirp-api against the real slirp4netns, in a namespace the test made.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;

use serde_json::json;
use slirp_api::{ApiError, Client, HostFwd};
use slirp_opts::Protocol;
use slirpnet_tests::{free_tcp_port, real_slirp, require, Netns, SlirpWithApi};

fn start(test: &str) -> Option<(Netns, SlirpWithApi)> {
    let mut ready = None;
    let ok = require(
        test,
        (|| {
            let bin = real_slirp()?;
            let ns = Netns::new()?;
            let slirp = SlirpWithApi::start(&bin, &ns)?;
            ready = Some((ns, slirp));
            Ok(())
        })(),
    );
    if ok {
        ready
    } else {
        None
    }
}

fn refused(err: ApiError) -> String {
    match err {
        ApiError::Refused { desc, .. } => desc,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn add_list_remove() {
    let Some((_ns, slirp)) = start("add_list_remove") else {
        return;
    };
    let client = Client::new(&slirp.socket);
    assert_eq!(client.list_hostfwd().unwrap(), []);

    let (p1, p2) = (free_tcp_port(), free_tcp_port());
    let loopback = Some(Ipv4Addr::LOCALHOST);
    let id1 = client
        .add_hostfwd(&with_host(HostFwd::new(Protocol::Tcp, p1, 80), loopback))
        .unwrap();
    let id2 = client
        .add_hostfwd(
            &with_host(HostFwd::new(Protocol::Udp, p2, 53), loopback)
                .with_guest_addr(Ipv4Addr::new(10, 0, 2, 7)),
        )
        .unwrap();
    assert!(id1 >= 1 && id2 > id1, "ids {id1} {id2}");

    let list = client.list_hostfwd().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let e1 = list.iter().find(|e| e.id == id1).unwrap();
    assert_eq!(
        (e1.proto, e1.host_addr, e1.host_port),
        (Protocol::Tcp, Ipv4Addr::LOCALHOST, p1)
    );
    assert_eq!(
        (e1.guest_addr, e1.guest_port),
        (Ipv4Addr::new(10, 0, 2, 100), 80)
    );
    let e2 = list.iter().find(|e| e.id == id2).unwrap();
    assert_eq!(
        (e2.proto, e2.guest_addr, e2.guest_port),
        (Protocol::Udp, Ipv4Addr::new(10, 0, 2, 7), 53)
    );

    // The TCP forward really listens on the host.
    assert!(
        TcpListener::bind(("127.0.0.1", p1)).is_err(),
        "port {p1} should be taken by slirp4netns"
    );

    client.remove_hostfwd(id1).unwrap();
    let list = client.list_hostfwd().unwrap();
    assert_eq!(list.iter().map(|e| e.id).collect::<Vec<_>>(), [id2]);
    assert!(
        TcpListener::bind(("127.0.0.1", p1)).is_ok(),
        "port {p1} should be free again"
    );

    // Removing it again: slirp4netns 1.2.0 says the id is bad.
    assert_eq!(
        refused(client.remove_hostfwd(id1).unwrap_err()),
        "bad request: remove_hostfwd: bad arguments.id"
    );
    assert!(slirp.alive());
}

#[test]
fn host_port_in_use_is_refused() {
    let Some((_ns, slirp)) = start("host_port_in_use_is_refused") else {
        return;
    };
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Client::new(&slirp.socket)
        .add_hostfwd(&HostFwd::new(Protocol::Tcp, port, 80).with_host_addr(Ipv4Addr::LOCALHOST))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "slirp4netns refused add_hostfwd: bad request: add_hostfwd: slirp_add_hostfwd failed"
    );
    assert!(slirp.alive());
}

#[test]
fn every_server_error_text() {
    let Some((_ns, slirp)) = start("every_server_error_text") else {
        return;
    };
    let client = Client::new(&slirp.socket);
    let port = free_tcp_port();
    let cases = [
        (json!({"foo": 1}), "bad request: no execute found"),
        (json!({"execute": "bogus"}), "bad request: unknown execute"),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":port,"guest_port":1}}),
            "bad request: add_hostfwd: bad arguments.proto",
        ),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::","host_port":port,"guest_port":1}}),
            "bad request: add_hostfwd: bad arguments.host_addr",
        ),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"not-an-ip","host_port":port,"guest_port":1}}),
            "bad request: add_hostfwd: bad arguments.host_addr",
        ),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":1}}),
            "bad request: add_hostfwd: bad arguments.host_port",
        ),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"80","guest_port":1}}),
            "bad request: add_hostfwd: bad arguments.host_port",
        ),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":port,"guest_addr":"x","guest_port":1}}),
            "bad request: add_hostfwd: bad arguments.guest_addr",
        ),
        (
            json!({"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":port,"guest_port":0}}),
            "bad request: add_hostfwd: bad arguments.guest_port",
        ),
        (
            json!({"execute":"remove_hostfwd","arguments":{}}),
            "bad request: remove_hostfwd: bad arguments.id",
        ),
        (
            json!({"execute":"remove_hostfwd","arguments":{"id":999}}),
            "bad request: remove_hostfwd: bad arguments.id",
        ),
    ];
    for (req, want) in cases {
        assert_eq!(
            refused(client.execute(&req).unwrap_err()),
            want,
            "request {req}"
        );
    }
    // What the client never sends, on a raw connection: not JSON, not an
    // object, and a request that fills slirp4netns's 4096-byte read.
    let raw = |body: &[u8]| {
        let mut s = UnixStream::connect(&slirp.socket).unwrap();
        s.write_all(body).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert_eq!(
        raw(b"garbage"),
        r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#
    );
    assert_eq!(
        raw(b"[1]"),
        r#"{"error":{"desc":"bad request: json_object() failed"}}"#
    );
    assert_eq!(
        raw(&[b' '; 4096]),
        r#"{"error":{"desc":"bad request: too large message"}}"#
    );
    // The client itself refuses that size before sending.
    let big = json!({"execute":"list_hostfwd","pad":"x".repeat(4096)});
    assert!(matches!(
        client.execute(&big).unwrap_err(),
        ApiError::RequestTooLarge { .. }
    ));
    // After all that, slirp4netns still serves.
    assert_eq!(client.list_hostfwd().unwrap(), []);
    assert!(slirp.alive());
}

/// `fwd` listening on `addr` when one is given.
fn with_host(fwd: HostFwd, addr: Option<Ipv4Addr>) -> HostFwd {
    match addr {
        Some(a) => fwd.with_host_addr(a),
        None => fwd,
    }
}
