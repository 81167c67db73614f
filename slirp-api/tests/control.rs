//! Our control sockets' framing, server and client, against each other and
//! against raw sockets: replies of any size, the whole-request deadline,
//! the cap, and what may be at the socket's path.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slirp_api::control::{
    request, ControlError, ControlReply, ControlServer, ServeError, MAX_CLIENTS, MAX_REQUEST,
    REQUEST_DEADLINE,
};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Echo {
    Ok(String),
    Error { message: String },
}

impl ControlReply for Echo {
    fn error(message: String) -> Self {
        Echo::Error { message }
    }
}

/// A server at `<dir>/s.sock` that answers `n` with `n` times "x".
fn repeat_server(dir: &Path) -> ControlServer {
    ControlServer::start(&dir.join("s.sock"), "test", |n: usize| {
        Echo::Ok("x".repeat(n))
    })
    .unwrap()
}

fn ask(path: &Path, n: usize) -> Result<Echo, ControlError> {
    request(path, &n, Duration::from_secs(10))
}

#[test]
fn replies_of_any_size_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = repeat_server(dir.path());
    for n in [0, 1, 212_992, 5 << 20] {
        assert_eq!(ask(server.path(), n).unwrap(), Echo::Ok("x".repeat(n)));
    }
    // The socket is private, and goes with the server.
    let meta = std::fs::symlink_metadata(server.path()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    let path = server.path().to_owned();
    drop(server);
    assert!(!path.exists());
    assert!(matches!(ask(&path, 1), Err(ControlError::Connect { .. })));
}

#[test]
fn requests_too_large_or_malformed_get_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlServer::start(&dir.path().join("s.sock"), "test", |s: String| {
        Echo::Ok(s.len().to_string())
    })
    .unwrap();
    // The largest request that fits, and one byte more (refused before
    // anything is sent).
    let fits = "a".repeat(MAX_REQUEST - 2);
    assert_eq!(
        request::<_, Echo>(server.path(), &fits, Duration::from_secs(10)).unwrap(),
        Echo::Ok(fits.len().to_string())
    );
    let over = "a".repeat(MAX_REQUEST - 1);
    assert!(matches!(
        request::<_, Echo>(server.path(), &over, Duration::from_secs(10)),
        Err(ControlError::RequestTooLarge { len, limit, .. }) if len == MAX_REQUEST + 1 && limit == MAX_REQUEST
    ));
    for (body, want) in [
        (vec![b'"'; MAX_REQUEST + 1], "request larger than"),
        (b"12".to_vec(), "malformed request"),
        (Vec::new(), "malformed request"),
    ] {
        let reply = raw(server.path(), &body);
        let Echo::Error { message } = serde_json::from_slice(&reply).unwrap() else {
            panic!("not an error: {:?}", String::from_utf8_lossy(&reply));
        };
        assert!(message.contains(want), "{message}");
    }
}

/// Sends `body` as is, half-closes, and reads the reply to EOF (a reset
/// after the reply: the server did not read all of the body).
fn raw(path: &Path, body: &[u8]) -> Vec<u8> {
    let conn = UnixStream::connect(path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let body = body.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut reply = Vec::new();
    let _ = (&conn).read_to_end(&mut reply);
    sender.join().unwrap();
    reply
}

/// A client that sends a byte every 200 ms is cut off when the whole
/// request's deadline passes, not kept while each read is quick; meanwhile
/// others are served.
#[test]
fn a_trickling_client_is_cut_off_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = repeat_server(dir.path());
    let mut conn = UnixStream::connect(server.path()).unwrap();
    let started = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while started.elapsed() < REQUEST_DEADLINE * 3 {
        let _ = conn.write_all(b" ");
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if started.elapsed() < Duration::from_secs(1) {
            assert_eq!(ask(server.path(), 3).unwrap(), Echo::Ok("xxx".into()));
        }
    }
    let took = started.elapsed();
    assert!(
        took >= REQUEST_DEADLINE - Duration::from_millis(500)
            && took < REQUEST_DEADLINE + Duration::from_secs(2),
        "cut off after {took:?}"
    );
    let Echo::Error { message } = serde_json::from_slice(&reply).unwrap() else {
        panic!("{reply:?}");
    };
    assert!(message.contains("cannot read the request"), "{message}");
}

/// With as many clients as it serves at once sitting idle, the next is told
/// so at once.
#[test]
fn past_the_cap_a_client_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = repeat_server(dir.path());
    let idle: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(server.path()).unwrap())
        .collect();
    // The server counts a client once it has accepted it: ask until the
    // cap is met (each answered one frees its slot again).
    let deadline = Instant::now() + Duration::from_secs(5);
    let message = loop {
        let asked = Instant::now();
        match ask(server.path(), 1).unwrap() {
            Echo::Error { message } => {
                assert!(asked.elapsed() < Duration::from_secs(1));
                break message;
            }
            Echo::Ok(_) => assert!(Instant::now() < deadline, "never refused"),
        }
    };
    assert!(message.contains("too many requests at once"), "{message}");
    drop(idle);
}

#[test]
fn only_a_stale_socket_at_the_path_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        ControlServer::start(&dir.path().join(name), "test", |n: usize| {
            Echo::Ok(n.to_string())
        })
    };
    std::fs::write(dir.path().join("file"), "keep").unwrap();
    std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
    std::fs::create_dir(dir.path().join("dir")).unwrap();
    for (name, kind) in [
        ("file", "a regular file"),
        ("link", "a symbolic link"),
        ("dir", "a directory"),
    ] {
        let err = start(name).unwrap_err();
        let path = dir.path().join(name);
        assert!(
            matches!(&err, ServeError::NotASocket { path: p, kind: k } if *p == path && *k == kind),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to replace {}: it is {kind}, not a socket",
                path.display()
            )
        );
        assert!(std::error::Error::source(&err).is_none());
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("file")).unwrap(),
        "keep"
    );
    assert!(std::fs::symlink_metadata(dir.path().join("link"))
        .unwrap()
        .file_type()
        .is_symlink());

    let _live = UnixListener::bind(dir.path().join("live")).unwrap();
    assert!(matches!(start("live"), Err(ServeError::InUse { .. })));
    let first = start("s").unwrap();
    assert!(matches!(start("s"), Err(ServeError::InUse { .. })));
    drop(UnixListener::bind(dir.path().join("stale")).unwrap());
    let replaced = start("stale").unwrap();
    assert_eq!(ask(replaced.path(), 7).unwrap(), Echo::Ok("7".into()));
    assert_eq!(ask(first.path(), 8).unwrap(), Echo::Ok("8".into()));
    // No staging name is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "file", "link", "live", "s", "stale"]);
}

#[test]
fn client_errors_say_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let err = ask(&missing, 1).unwrap_err();
    assert!(matches!(err, ControlError::Connect { .. }));
    assert!(err
        .to_string()
        .starts_with(&format!("cannot connect to {}: ", missing.display())));
    assert!(std::error::Error::source(&err).is_none());
    // A server that accepts and never answers: the deadline.
    let listener = UnixListener::bind(dir.path().join("mute.sock")).unwrap();
    let started = Instant::now();
    let err = request::<_, Echo>(
        &dir.path().join("mute.sock"),
        &1,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(err, ControlError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("(reading the reply)"), "{err}");
    drop(listener);
}
