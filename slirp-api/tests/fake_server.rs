//! What the real slirp4netns cannot produce: malformed, truncated, slow and
//! oversized replies, and a peer that never accepts. Each fake serves one
//! connection on a socket in a temporary directory and records the request.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use slirp_api::{
    wait_for_socket, ApiError, Client, HostFwd, Protocol, ReplyProblem, Stage, WaitError,
};

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    request: mpsc::Receiver<Vec<u8>>,
}

/// Serves one connection: reads the request to EOF (so it also proves the
/// client shut down its write side), waits `delay`, then writes `reply`.
fn fake(reply: &'static [u8], delay: Duration) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        conn.read_to_end(&mut req).unwrap();
        tx.send(req).unwrap();
        thread::sleep(delay);
        let _ = conn.write_all(reply);
    });
    Fake {
        _dir: dir,
        path,
        request: rx,
    }
}

fn client(f: &Fake) -> Client {
    Client::new(&f.path).with_timeout(Duration::from_secs(2))
}

fn request_json(f: &Fake) -> serde_json::Value {
    let raw = f.request.recv_timeout(Duration::from_secs(2)).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[test]
fn add_sends_proto_and_defaults_host_addr() {
    let f = fake(br#"{"return":{"id":7}}"#, Duration::ZERO);
    let fwd = HostFwd::new(Protocol::Udp, 5353, 53).with_guest_addr("10.0.2.50".parse().unwrap());
    assert_eq!(client(&f).add_hostfwd(&fwd).unwrap(), 7);
    assert_eq!(
        request_json(&f),
        serde_json::json!({"execute":"add_hostfwd","arguments":{
            "proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.50","guest_port":53}})
    );
}

#[test]
fn list_accepts_both_reply_shapes() {
    let entry = r#"{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#;
    let bare: &'static str = Box::leak(format!(r#"{{"entries":[{entry}]}}"#).into_boxed_str());
    let wrapped: &'static str =
        Box::leak(format!(r#"{{"return":{{"entries":[{entry}]}}}}"#).into_boxed_str());
    for reply in [bare, wrapped] {
        let f = fake(reply.as_bytes(), Duration::ZERO);
        let list = client(&f).list_hostfwd().unwrap();
        assert_eq!(list.len(), 1, "{reply}");
        assert_eq!(
            (
                list[0].id,
                list[0].proto,
                list[0].host_port,
                list[0].guest_port
            ),
            (1, Protocol::Tcp, 8080, 80)
        );
        assert_eq!(
            request_json(&f),
            serde_json::json!({"execute":"list_hostfwd"})
        );
    }
}

#[test]
fn malformed_replies_are_errors_not_panics() {
    let cases: [(&'static [u8], &str); 11] = [
        (
            b"",
            "empty reply (slirp4netns closed the connection without answering)",
        ),
        (br#"{"return":{"id":"#, "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b"{}", "no return.id"),
        (
            br#"{"return":{"id":0}}"#,
            "return.id is not a positive 32-bit integer",
        ),
        (
            br#"{"return":{"id":-3}}"#,
            "return.id is not a positive 32-bit integer",
        ),
        (
            br#"{"return":{"id":4294967296}}"#,
            "return.id is not a positive 32-bit integer",
        ),
        (
            br#"{"return":{"id":1.5}}"#,
            "return.id is not a positive 32-bit integer",
        ),
        (br#"{"return":7}"#, "no return.id"),
        (
            br#"{"return":{"id":"1"}}"#,
            "return.id is not a positive 32-bit integer",
        ),
    ];
    for (reply, reason) in cases {
        let f = fake(reply, Duration::ZERO);
        match client(&f).add_hostfwd(&HostFwd::new(Protocol::Tcp, 1, 1)) {
            Err(ApiError::MalformedReply {
                op, problem: got, ..
            }) => {
                assert_eq!(op, "add_hostfwd");
                assert!(
                    got.to_string().starts_with(reason),
                    "reply {reply:?}: {got}"
                );
            }
            other => panic!("reply {reply:?}: {other:?}"),
        }
    }
    let bad_lists: [&'static [u8]; 4] = [
        br#"{"entries":{}}"#,
        br#"{"entries":[{"id":1}]}"#,
        br#"{"entries":[{"id":1,"proto":"sctp","host_addr":"1.2.3.4","host_port":1,"guest_addr":"1.2.3.4","guest_port":1}]}"#,
        br#"{"return":{}}"#,
    ];
    for reply in bad_lists {
        let f = fake(reply, Duration::ZERO);
        let err = client(&f).list_hostfwd().unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::MalformedReply {
                    problem: ReplyProblem::BadEntries(_) | ReplyProblem::NoEntries,
                    ..
                }
            ),
            "{reply:?}: {err}"
        );
    }
    let f = fake(br#"{"return":[]}"#, Duration::ZERO);
    let err = client(&f).remove_hostfwd(1).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"malformed remove_hostfwd reply from slirp4netns: no return object: "{\"return\":[]}""#
    );
}

#[test]
fn error_replies_carry_the_desc_text() {
    let f = fake(
        br#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
        Duration::ZERO,
    );
    let err = client(&f).remove_hostfwd(99).unwrap_err();
    assert_eq!(
        err.to_string(),
        "slirp4netns refused remove_hostfwd: bad request: remove_hostfwd: bad arguments.id"
    );
    let f = fake(br#"{"error":"weird"}"#, Duration::ZERO);
    let err = client(&f).remove_hostfwd(99).unwrap_err();
    assert!(
        matches!(&err, ApiError::Refused { desc, .. } if desc == "\"weird\""),
        "{err}"
    );
}

/// `err` is a timeout at `stage`, and the call gave up in time (the
/// deadlines in these tests are well under a second).
fn assert_timed_out(err: &ApiError, stage: Stage, started: Instant) {
    assert!(
        matches!(err, ApiError::Timeout { stage: s, .. } if *s == stage),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_slow_peer_hits_the_deadline() {
    let f = fake(br#"{"return":{}}"#, Duration::from_secs(3));
    let started = Instant::now();
    let err = Client::new(&f.path)
        .with_timeout(Duration::from_millis(300))
        .remove_hostfwd(1)
        .unwrap_err();
    assert_timed_out(&err, Stage::ReadingReply, started);
}

#[test]
fn a_peer_that_never_accepts_hits_the_deadline() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    // A listener that never accepts, its backlog filled with non-blocking
    // connects until the kernel says EAGAIN: a blocking connect would now hang.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let addr = UnixAddr::new(&path).unwrap();
    let mut held = Vec::new();
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => held.push(fd),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(held.len() < 100_000, "backlog never filled");
    }
    let started = Instant::now();
    let err = Client::new(&path)
        .with_timeout(Duration::from_millis(200))
        .list_hostfwd()
        .unwrap_err();
    assert_timed_out(&err, Stage::Connecting, started);
    assert!(
        err.to_string()
            .contains("timed out after 200ms (connecting)"),
        "{err}"
    );
}

#[test]
fn oversized_and_invalid_requests_are_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(dir.path().join("nothing-listens-here"));
    let big = serde_json::json!({"execute":"list_hostfwd","pad":"x".repeat(4096)});
    let err = client.execute(&big).unwrap_err();
    assert!(
        matches!(err, ApiError::RequestTooLarge { len, limit: 4095, .. } if len > 4095),
        "{err}"
    );
    let err = client
        .add_hostfwd(&HostFwd::new(Protocol::Tcp, 0, 80))
        .unwrap_err();
    assert!(matches!(
        err,
        ApiError::ZeroPort {
            host_port: 0,
            guest_port: 80
        }
    ));
    assert_eq!(
        err.to_string(),
        "invalid add_hostfwd request: ports must not be 0 (host port 0, guest port 80)"
    );
    // Nothing listens: a connect error naming the path.
    let err = client.list_hostfwd().unwrap_err();
    assert!(matches!(err, ApiError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("nothing-listens-here"), "{err}");
}

#[test]
fn a_request_of_exactly_4095_bytes_is_sent() {
    let f = fake(br#"{"return":{}}"#, Duration::ZERO);
    let base = serde_json::json!({"execute":"remove_hostfwd","arguments":{"id":1},"pad":""})
        .to_string()
        .len();
    let req = serde_json::json!({"execute":"remove_hostfwd","arguments":{"id":1},"pad":"y".repeat(4095 - base)});
    client(&f).execute(&req).unwrap();
    assert_eq!(f.request.recv().unwrap().len(), 4095);
}

#[test]
fn wait_for_socket_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // The socket appears later.
    let p2 = path.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        UnixListener::bind(p2).unwrap()
    });
    wait_for_socket(&path, Duration::from_secs(5), |_| None).unwrap();
    drop(t.join().unwrap());
    std::fs::remove_file(&path).unwrap();

    // The process dies: the wait ends at the first look.
    let started = Instant::now();
    let err = wait_for_socket(&path, Duration::from_secs(5), |_| {
        Some("exit status 1".into())
    })
    .unwrap_err();
    assert!(matches!(err, WaitError::ProcessExited { .. }));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(err.to_string().ends_with("exit status 1"), "{err}");

    // Nothing appears.
    let err = wait_for_socket(&path, Duration::from_millis(50), |_| None).unwrap_err();
    assert!(matches!(err, WaitError::Timeout { .. }), "{err}");

    // A regular file is not a socket.
    std::fs::write(&path, b"").unwrap();
    let err = wait_for_socket(&path, Duration::from_secs(1), |_| None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} exists but is not a socket", path.display())
    );
}

/// The message has no trailing period and says its cause once: no error
/// here returns a source that its message already contains.
#[test]
fn each_cause_is_in_the_message_once_and_never_a_source() {
    use std::error::Error;
    let dir = tempfile::tempdir().unwrap();
    let nowhere = Client::new(dir.path().join("nothing-listens-here"));
    let not_json = fake(b"{oops", Duration::ZERO);
    let bad_entries = fake(br#"{"entries":[{"id":"x"}]}"#, Duration::ZERO);
    let errors: Vec<Box<dyn Error>> = vec![
        Box::new(nowhere.list_hostfwd().unwrap_err()),
        Box::new(client(&not_json).list_hostfwd().unwrap_err()),
        Box::new(client(&bad_entries).list_hostfwd().unwrap_err()),
        Box::new(
            nowhere
                .add_hostfwd(&HostFwd::new(Protocol::Tcp, 1, 0))
                .unwrap_err(),
        ),
        Box::new(wait_for_socket(&dir.path().join("s"), Duration::ZERO, |_| None).unwrap_err()),
    ];
    for err in errors {
        let text = err.to_string();
        assert!(!text.ends_with('.'), "{text}");
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        assert!(err.source().is_none(), "{text}");
    }
    // The I/O error is the variant's field, its text at the end of the message.
    let err = nowhere.list_hostfwd().unwrap_err();
    let ApiError::Connect { error, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().ends_with(&error.to_string()), "{err}");
    // So is the JSON error of a reply that is not JSON.
    let err = client(&fake(b"{oops", Duration::ZERO))
        .list_hostfwd()
        .unwrap_err();
    let ApiError::MalformedReply {
        problem: ReplyProblem::NotJson(json),
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    let json: &slirp_api::serde_json::Error = json;
    assert!(json.is_syntax());
    assert!(err.to_string().contains(&json.to_string()), "{err}");
}

#[test]
fn reexports_are_the_types_of_the_crates_behind_them() {
    // The same Protocol as slirp-opts's, so values pass between the crates.
    let p: slirp_opts::Protocol = Protocol::Udp;
    assert_eq!(HostFwd::new(p, 1, 2).proto, slirp_opts::Protocol::Udp);
    // json! through the re-exported serde_json.
    let f = fake(br#"{"return":{}}"#, Duration::ZERO);
    let req = slirp_api::serde_json::json!({"execute": "remove_hostfwd", "arguments": {"id": 3}});
    let reply = client(&f).execute(&req).unwrap();
    assert_eq!(reply, slirp_api::serde_json::json!({"return": {}}));
    assert_eq!(request_json(&f), req);
}
