//! Changing the forwarded ports of a running namespace, end to end:
//! `slirpnet port ls|add|rm` and `slirpnet ps` against sessions of
//! `slirpnet run` and `slirpnet attach` with real namespaces, the real
//! slirp4netns and our rootlessport, as root and rootless, through both port
//! handlers. Clients use loopback addresses only (127.0.0.1, ::1).
//!
//! Every session runs `echo-server` (tests/src/bin) on ports 7000-7002 of
//! its namespace, so a forward is checked by the bytes coming back.

use std::ffi::{OsStr, OsString};
use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use slirp_opts::portctl::ForwardEntry;
use slirp_opts::{Forward, Protocol};
use slirpnet::session::SessionStatus;
use slirpnet::ForwarderInfo;
use slirpnet_tests::{
    free_port_both, free_run, free_tcp_port, payload, pid_exists, require, require_slirp,
    rootless_possible, rootlessport_bin, slirpnet_bin, world_runnable, PersistentNetns,
};

const ECHO: &str = env!("CARGO_BIN_EXE_echo-server");
/// The ports echo-server listens on (TCP and UDP) inside every namespace.
const INNER: [u16; 3] = [7000, 7001, 7002];
/// Both port handlers.
const HANDLERS: [&str; 2] = ["slirp4netns", "rootlesskit"];
/// The unprivileged user of the rootless tests.
const NOBODY: u32 = 65534;
/// The longest any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------
// Who runs slirpnet
// ---------------------------------------------------------------------------

/// Who runs slirpnet: root, or uid 65534 through setpriv with no
/// capabilities (rootless), each with the session directory it uses.
struct User {
    slirpnet: PathBuf,
    echo: PathBuf,
    uid: Option<u32>,
    /// `XDG_RUNTIME_DIR`; `None`: unset (root's sessions go to /run/slirpnet).
    runtime_dir: Option<tempfile::TempDir>,
    _bins: Option<tempfile::TempDir>,
}

impl User {
    /// Root, with the default session directory.
    fn root() -> Self {
        // The default forwarder is the rootlessport next to slirpnet.
        rootlessport_bin();
        User {
            slirpnet: slirpnet_bin(),
            echo: ECHO.into(),
            uid: None,
            runtime_dir: None,
            _bins: None,
        }
    }

    /// Root, with a runtime directory of the test's own: `ps` and `--netns`
    /// (which ask every session of the user) then see only this test's
    /// sessions, and a session the test loads or kills disturbs no other.
    fn root_private() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slirpnet-xdg-")
            .tempdir()
            .unwrap();
        User {
            runtime_dir: Some(dir),
            ..User::root()
        }
    }

    /// uid 65534 with copies of the programs it can run and a runtime
    /// directory it owns.
    fn nobody() -> Self {
        let (bins, paths) =
            world_runnable(&[&slirpnet_bin(), &rootlessport_bin(), Path::new(ECHO)]).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("slirpnet-xdg-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        User {
            slirpnet: paths[0].clone(),
            echo: paths[2].clone(),
            uid: Some(NOBODY),
            runtime_dir: Some(dir),
            _bins: Some(bins),
        }
    }

    /// `slirpnet` as this user, in `/`, with its `XDG_RUNTIME_DIR`.
    fn slirpnet(&self) -> Command {
        let mut cmd = match self.uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args(setpriv_args(uid, false)).arg(&self.slirpnet);
                c
            }
            None => Command::new(&self.slirpnet),
        };
        match &self.runtime_dir {
            Some(dir) => cmd.env("XDG_RUNTIME_DIR", dir.path()),
            None => cmd.env_remove("XDG_RUNTIME_DIR"),
        };
        cmd.current_dir("/");
        cmd
    }

    /// Where its sessions' sockets are.
    fn session_dir(&self) -> PathBuf {
        match &self.runtime_dir {
            Some(dir) => dir.path().join("slirpnet"),
            None => PathBuf::from("/run/slirpnet"),
        }
    }

    fn owner(&self) -> u32 {
        self.uid.unwrap_or(0)
    }

    /// `slirpnet ARGS` to the end (within [`STEP`]).
    fn output(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Out {
        let mut cmd = self.slirpnet();
        cmd.args(args);
        Out::of(cmd)
    }

    /// `slirpnet ps --json`.
    fn ps(&self) -> Vec<SessionStatus> {
        let out = self.output(["ps", "--json"]);
        out.ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("ps --json printed no sessions ({e}): {}", out.stdout))
    }
}

/// setpriv's arguments to become `uid` with no capabilities, or with only
/// CAP_DAC_OVERRIDE (file modes do not stop it).
fn setpriv_args(uid: u32, dac_override: bool) -> Vec<String> {
    let mut args = vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
    ];
    if dac_override {
        args.push("--inh-caps=-all,+dac_override".into());
        args.push("--ambient-caps=+dac_override".into());
    } else {
        args.push("--inh-caps=-all".into());
    }
    args
}

/// A finished command: exit code, stdout, stderr.
struct Out {
    shown: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Runs `cmd` to the end; it is killed and the test fails after [`STEP`].
    fn of(mut cmd: Command) -> Out {
        let shown = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(STEP) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                panic!("{shown} did not finish within {STEP:?}");
            }
        };
        Out {
            shown,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// It succeeded.
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{}: {}", self.shown, self.stderr);
        self
    }

    /// It failed as slirpnet's own failure: exit 125 and ONE line,
    /// `slirpnet: ...`, which is returned.
    fn own_failure(&self) -> String {
        assert_eq!(
            self.code,
            Some(125),
            "{}: stdout {:?}, stderr {:?}",
            self.shown,
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("slirpnet: "),
            "{}: not one line: {:?}",
            self.shown,
            self.stderr
        );
        assert!(
            self.stdout.is_empty(),
            "{}: printed {:?}",
            self.shown,
            self.stdout
        );
        lines[0].to_owned()
    }
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// A running `slirpnet run` or `slirpnet attach`, stopped on drop.
struct Session<'a> {
    user: &'a User,
    child: Child,
    /// `run`: the command's stdin (closing it ends the session normally).
    stdin: Option<ChildStdin>,
    /// `run`: the pid, as the host sees it, of the command's namespace's
    /// init (its namespaces are the session's).
    command_pid: Option<u32>,
    /// What slirpnet wrote on stderr so far.
    stderr: Arc<Mutex<String>>,
    /// The thread that reads it; done at EOF.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// `attach`: the echo server inside the namespace.
    server: Option<Child>,
}

/// `-p SPEC` for each of `specs`.
fn publish<S: AsRef<str>>(specs: impl IntoIterator<Item = S>) -> Vec<String> {
    specs
        .into_iter()
        .flat_map(|s| ["-p".to_owned(), s.as_ref().to_owned()])
        .collect()
}

/// No `-p` at all.
const NO_PORTS: [&str; 0] = [];

impl<'a> Session<'a> {
    /// `slirpnet run -o port_handler=HANDLER [-p SPEC]... -- echo-server
    /// 7000 7001 7002`, once the command listens and the control socket
    /// answers.
    fn run<S: AsRef<str>>(
        user: &'a User,
        handler: &str,
        specs: impl IntoIterator<Item = S>,
    ) -> Self {
        let mut cmd = user.slirpnet();
        cmd.arg("run")
            .arg("-o")
            .arg(format!("port_handler={handler}"))
            .args(publish(specs))
            .arg("--")
            .arg(&user.echo)
            .args(INNER.map(|p| p.to_string()));
        let mut session = Session::spawn(user, cmd, true);
        let mut line = String::new();
        let stdout = session.child.stdout.take().unwrap();
        let got = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let pid = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse::<u32>().ok());
        if got.is_err() || pid.is_none() {
            session.died("the command did not start");
        }
        // The command printed its pid in its own PID namespace; slirpnet's
        // child is that namespace's init, whose pid there is 1.
        session.command_pid =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", session.pid()))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                        s.lines().any(|l| {
                            l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1")
                        })
                    })
                });
        if session.command_pid.is_none() {
            session.died("no namespace init among slirpnet's children");
        }
        session.wait_answers();
        session
    }

    /// `slirpnet attach --netns PATH -o port_handler=HANDLER` (root) with
    /// echo-server started in that namespace, once the control socket
    /// answers.
    fn attach(user: &'a User, netns: &Path, handler: &str) -> Self {
        let mut server = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(&user.echo)
            .args(INNER.map(|p| p.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.starts_with("listening"), "echo-server: {line:?}");
        let mut cmd = user.slirpnet();
        cmd.arg("attach")
            .arg("--netns")
            .arg(netns)
            .arg("-o")
            .arg(format!("port_handler={handler}"));
        let mut session = Session::spawn(user, cmd, false);
        session.server = Some(server);
        session.wait_answers();
        session
    }

    fn spawn(user: &'a User, mut cmd: Command, piped_stdin: bool) -> Self {
        let mut child = cmd
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Session {
            user,
            stdin: child.stdin.take(),
            child,
            command_pid: None,
            stderr,
            stderr_reader: Some(stderr_reader),
            server: None,
        }
    }

    /// Fails the test with slirpnet's stderr.
    fn died(&mut self, what: &str) -> ! {
        let _ = kill(self.pid_nix(), Signal::SIGKILL);
        let _ = self.child.wait();
        // Let the reader reach EOF (a child slirpnet left may hold the pipe
        // a little longer: wait at most STEP).
        let deadline = Instant::now() + STEP;
        if let Some(reader) = self.stderr_reader.take() {
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        panic!("{what}; slirpnet said: {}", self.stderr.lock().unwrap());
    }

    /// Polls `port ls` until the session answers.
    fn wait_answers(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if self
                .user
                .output(["port", "ls", "--pid", &self.pid_arg()])
                .code
                == Some(0)
            {
                return;
            }
            if self.child.try_wait().unwrap().is_some() {
                self.died("the session ended before its control socket answered");
            }
            if Instant::now() > deadline {
                self.died("the control socket did not answer");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// slirpnet's pid (setpriv execs it: the same process).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn pid_nix(&self) -> Pid {
        Pid::from_raw(self.pid() as i32)
    }

    fn pid_arg(&self) -> String {
        self.pid().to_string()
    }

    /// The session's control socket.
    fn socket(&self) -> PathBuf {
        self.user.session_dir().join(format!("{}.sock", self.pid()))
    }

    /// `slirpnet port VERB --pid PID ARGS...`.
    fn port(&self, verb: &str, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Out {
        let mut all: Vec<OsString> = ["port", verb, "--pid", &self.pid_arg()]
            .map(OsString::from)
            .into();
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.user.output(all)
    }

    /// `slirpnet port add --pid PID -p SPEC...`, which must succeed.
    fn add<S: AsRef<str>>(&self, specs: impl IntoIterator<Item = S>) {
        self.port("add", publish(specs)).ok();
    }

    /// `slirpnet port rm --pid PID -p SPEC...`, which must succeed.
    fn rm<S: AsRef<str>>(&self, specs: impl IntoIterator<Item = S>) {
        self.port("rm", publish(specs)).ok();
    }

    /// `slirpnet port ls --pid PID --json`, sorted.
    fn ls(&self) -> Vec<ForwardEntry> {
        parse_forwards(&self.port("ls", ["--json"]))
    }

    /// Ends the session normally (`run`: the command's stdin closes and it
    /// exits 0; `attach`: SIGTERM) and returns slirpnet's exit status.
    fn end(mut self) -> ExitStatus {
        match self.stdin.take() {
            Some(stdin) => drop(stdin),
            None => kill(self.pid_nix(), Signal::SIGTERM).unwrap(),
        }
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.died("the session did not end");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid_nix(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// The forwards `port ls --json` printed, sorted.
fn parse_forwards(out: &Out) -> Vec<ForwardEntry> {
    out.ok();
    let mut list: Vec<ForwardEntry> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: not a forward list ({e}): {}", out.shown, out.stdout));
    list.sort_by_key(|f| {
        let f = f.forward;
        (f.proto, f.host_ip, f.host_port, f.container_port)
    });
    list
}

/// A forward as `port ls` shows it.
fn fwd(proto: Protocol, host_ip: IpAddr, host_port: u16, container_port: u16) -> ForwardEntry {
    ForwardEntry::from(&Forward {
        proto,
        host_ip: Some(host_ip),
        host_port,
        container_port,
    })
}

/// A TCP forward from 127.0.0.1.
fn tcp(host_port: u16, container_port: u16) -> ForwardEntry {
    fwd(Protocol::Tcp, LOCAL, host_port, container_port)
}

/// `forwards`, sorted as [`Session::ls`] returns them.
fn sorted(mut forwards: Vec<ForwardEntry>) -> Vec<ForwardEntry> {
    forwards.sort_by_key(|f| {
        (
            f.forward.proto,
            f.forward.host_ip,
            f.forward.host_port,
            f.forward.container_port,
        )
    });
    forwards
}

// ---------------------------------------------------------------------------
// Data through the ports
// ---------------------------------------------------------------------------

/// `port` on 127.0.0.1.
fn local(port: u16) -> SocketAddr {
    SocketAddr::new(LOCAL, port)
}

/// Connects to `addr` (loopback) within 5 s.
fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    assert!(addr.ip().is_loopback());
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    Ok(conn)
}

/// Sends `data` over a new connection to `addr`, half-closes, and returns
/// all that came back.
fn tcp_roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = connect(addr)?;
    let mut writer = conn.try_clone()?;
    let data = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back)?;
    sender.join().unwrap()?;
    Ok(back)
}

/// 256 KiB through `addr` come back byte for byte.
fn assert_tcp_echo(addr: SocketAddr, seed: u64) {
    let data = payload(256 * 1024, seed);
    let back = tcp_roundtrip(addr, &data).unwrap_or_else(|e| panic!("echo through {addr}: {e}"));
    assert!(
        back == data,
        "echo through {addr} differs: sent {} bytes, got {}",
        data.len(),
        back.len()
    );
}

/// Datagrams through `addr` come back byte for byte (each resent while
/// its echo has not come, within [`STEP`]: UDP may drop one).
fn assert_udp_echo(addr: SocketAddr, seed: u64) {
    let bind = match addr {
        SocketAddr::V4(_) => "127.0.0.1:0",
        SocketAddr::V6(_) => "[::1]:0",
    };
    let socket = UdpSocket::bind(bind).unwrap();
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + STEP;
    let mut buf = vec![0u8; 65536];
    let mut echoed: Vec<Vec<u8>> = Vec::new();
    for (i, len) in [1usize, 1400, 8000].into_iter().enumerate() {
        let data = payload(len, seed + i as u64);
        'resend: loop {
            assert!(
                Instant::now() < deadline,
                "no UDP echo of {len} bytes through {addr}"
            );
            socket.send(&data).unwrap();
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == data[..] => break 'resend,
                    // A late echo of an earlier datagram that was resent.
                    Ok(n) if echoed.iter().any(|d| d[..] == buf[..n]) => continue,
                    Ok(n) => panic!("UDP echo through {addr} differs: {n} bytes for {len}"),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue 'resend
                    }
                    Err(e) => panic!("UDP through {addr}: {e}"),
                }
            }
        }
        echoed.push(data);
    }
}

/// Nobody listens on TCP `addr`: a connection is refused at once, and the
/// port can be bound.
fn assert_tcp_closed(addr: SocketAddr) {
    assert_tcp_refused(addr);
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} is still bound: {e}"));
}

fn assert_tcp_refused(addr: SocketAddr) {
    match connect(addr) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect to {addr}: {e}, not refused"),
        Ok(_) => panic!("{addr} still accepts connections"),
    }
}

/// Nobody holds UDP `addr`.
fn assert_udp_closed(addr: SocketAddr) {
    UdpSocket::bind(addr).unwrap_or_else(|e| panic!("UDP {addr} is still bound: {e}"));
}

/// `n` consecutive ports on 127.0.0.1, all free for TCP and UDP a moment ago.
fn free_range(n: u16) -> u16 {
    for _ in 0..100 {
        let first = free_port_both();
        let Some(last) = first.checked_add(n - 1) else {
            continue;
        };
        let held: Vec<_> = (first..=last)
            .map_while(|p| {
                let t = TcpListener::bind(local(p)).ok()?;
                let u = UdpSocket::bind(local(p)).ok()?;
                Some((t, u))
            })
            .collect();
        if held.len() == usize::from(n) {
            return first;
        }
    }
    panic!("found no {n} consecutive free ports");
}

/// The request `body`, written straight to a session's control socket; its
/// reply as JSON. The session may stop reading (and close) before a large
/// body is all sent: its reply comes first.
fn raw_request(socket: &Path, body: Vec<u8>) -> Value {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(STEP)).unwrap();
    conn.set_write_timeout(Some(STEP)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
        let _ = writer.shutdown(Shutdown::Write);
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            // ECONNRESET after the reply: the rest of our body went unread.
            Err(_) if !reply.is_empty() => break,
            Err(e) => panic!("no reply from {}: {e}", socket.display()),
        }
    }
    sender.join().unwrap();
    serde_json::from_slice(&reply).unwrap_or_else(|e| {
        panic!(
            "reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&reply)
        )
    })
}

/// The message of an error reply.
fn error_message(reply: &Value) -> &str {
    reply["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error reply: {reply}"))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Add a port, use it (TCP, and UDP with the rootlesskit handler), remove
/// it (it stops accepting at once), add it again (it works again), remove
/// it by its host port alone; the forward the session started with works
/// throughout; the control socket is private and goes with the session.
fn add_use_remove_readd(user: &User, handler: &str) {
    let first = free_tcp_port();
    let session = Session::run(user, handler, [format!("127.0.0.1:{first}:7000")]);
    assert_eq!(session.ls(), vec![tcp(first, 7000)]);

    // The control socket: 0600, the user's, in a 0700 directory of its own.
    let socket = session.socket();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", socket.display());
    assert_eq!(meta.uid(), user.owner());
    let dir = std::fs::metadata(user.session_dir()).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700);
    assert_eq!(dir.uid(), user.owner());

    let port = free_tcp_port();
    let spec = format!("127.0.0.1:{port}:7001");
    for round in 0..2 {
        session.add([&spec]);
        assert_eq!(
            session.ls(),
            sorted(vec![tcp(first, 7000), tcp(port, 7001)]),
            "round {round}"
        );
        assert_tcp_echo(local(port), round);
        assert_tcp_echo(local(first), 10 + round);
        if round == 0 {
            session.rm([&spec]);
        } else {
            // The host side alone names it too.
            session.rm([format!("127.0.0.1:{port}")]);
        }
        // At once: no wait between the reply and the check.
        assert_tcp_closed(local(port));
        assert_eq!(session.ls(), vec![tcp(first, 7000)], "round {round}");
        assert_tcp_echo(local(first), 20 + round);
    }

    if handler == "rootlesskit" {
        let udp = free_port_both();
        let spec = format!("127.0.0.1:{udp}:7002/udp");
        session.add([&spec]);
        assert_eq!(
            session.ls(),
            sorted(vec![tcp(first, 7000), fwd(Protocol::Udp, LOCAL, udp, 7002)])
        );
        assert_udp_echo(local(udp), 30);
        session.rm([&spec]);
        assert_udp_closed(local(udp));
        session.add([&spec]);
        assert_udp_echo(local(udp), 40);
    }

    let status = session.end();
    assert_eq!(status.code(), Some(0), "the session did not end cleanly");
    assert!(
        !socket.exists(),
        "{} left behind after the session ended",
        socket.display()
    );
    assert_tcp_closed(local(first));
}

#[test]
fn add_use_remove_readd_as_root() {
    if !require_slirp("add_use_remove_readd_as_root") {
        return;
    }
    let root = User::root();
    for handler in HANDLERS {
        add_use_remove_readd(&root, handler);
    }
}

#[test]
fn add_use_remove_readd_rootless() {
    if !require("add_use_remove_readd_rootless", rootless_possible()) {
        return;
    }
    let nobody = User::nobody();
    for handler in HANDLERS {
        add_use_remove_readd(&nobody, handler);
    }
}

/// A connection open through a port that is removed carries on, both ways,
/// until it closes; new ones are refused meanwhile.
#[test]
fn an_open_connection_outlives_its_removed_port() {
    if !require_slirp("an_open_connection_outlives_its_removed_port") {
        return;
    }
    let root = User::root();
    for handler in HANDLERS {
        let port = free_tcp_port();
        let spec = format!("127.0.0.1:{port}:7000");
        let session = Session::run(&root, handler, NO_PORTS);
        session.add([&spec]);
        let mut conn = connect(local(port)).unwrap();
        let mut exchange = |seed: u64| {
            let data = payload(64 * 1024, seed);
            conn.write_all(&data).unwrap();
            let mut back = vec![0u8; data.len()];
            conn.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("{handler}: the open connection broke: {e}"));
            assert!(back == data, "{handler}: echo differs");
        };
        exchange(1);
        session.rm([&spec]);
        assert_tcp_refused(local(port));
        exchange(2);
        exchange(3);
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{handler}: {} stray bytes", rest.len());
        drop(conn);
        assert_tcp_closed(local(port));
        assert!(session.ls().is_empty());
    }
}

/// `-p 127.0.0.1:A-B:C-D` is added in one call and removed in one call.
#[test]
fn a_port_range_is_added_and_removed_in_one_call() {
    if !require_slirp("a_port_range_is_added_and_removed_in_one_call") {
        return;
    }
    let root = User::root();
    for handler in HANDLERS {
        let session = Session::run(&root, handler, NO_PORTS);
        let first = free_range(3);
        let spec = format!("127.0.0.1:{first}-{}:7000-7002", first + 2);
        session.add([&spec]);
        let expected: Vec<_> = (0..3).map(|i| tcp(first + i, 7000 + i)).collect();
        assert_eq!(session.ls(), expected, "{handler}");
        for i in 0..3 {
            assert_tcp_echo(local(first + i), u64::from(i));
        }
        session.rm([&spec]);
        for i in 0..3 {
            assert_tcp_closed(local(first + i));
        }
        assert!(session.ls().is_empty(), "{handler}");
    }
}

/// A session started without `-p` gets its first port from `port add`;
/// with the rootlesskit handler that starts the forwarder (a failed first
/// add starts none).
fn first_port_by_port_add(user: &User, handler: &str) {
    let session = Session::run(user, handler, NO_PORTS);
    assert!(session.ls().is_empty());
    let status = |s: &Session| {
        user.ps()
            .into_iter()
            .find(|st| st.pid == s.pid())
            .unwrap_or_else(|| panic!("ps does not list session {}", s.pid()))
    };
    assert_eq!(status(&session).forwarder, None);

    // A first add that fails leaves no forwarder and nothing listening.
    let busy = TcpListener::bind(local(0)).unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let other = free_tcp_port();
    let line = session
        .port(
            "add",
            [
                "-p",
                &format!("127.0.0.1:{other}:7000"),
                "-p",
                &format!("127.0.0.1:{busy_port}:7001"),
            ],
        )
        .own_failure();
    assert!(line.contains(&busy_port.to_string()), "{line}");
    assert!(session.ls().is_empty());
    assert_eq!(status(&session).forwarder, None);
    assert_tcp_closed(local(other));
    drop(busy);

    let port = free_tcp_port();
    session.add([format!("127.0.0.1:{port}:7000")]);
    assert_eq!(session.ls(), vec![tcp(port, 7000)]);
    assert_tcp_echo(local(port), 5);
    let st = status(&session);
    assert_eq!(st.port_handler.as_str(), handler);
    if handler == "rootlesskit" {
        let Some(ForwarderInfo::Binary { path, pid }) = st.forwarder else {
            panic!("a forwarder binary after the first add: {:?}", st.forwarder);
        };
        assert_eq!(
            path,
            user.slirpnet.with_file_name("rootlessport"),
            "the rootlessport next to slirpnet"
        );
        assert!(pid.is_some_and(pid_exists), "{pid:?}");
    } else {
        assert_eq!(st.forwarder, None);
    }
    assert_eq!(session.end().code(), Some(0));
    assert_tcp_closed(local(port));
}

#[test]
fn a_session_without_ports_gets_its_first_by_port_add() {
    if !require_slirp("a_session_without_ports_gets_its_first_by_port_add") {
        return;
    }
    let root = User::root_private();
    for handler in HANDLERS {
        first_port_by_port_add(&root, handler);
    }
}

#[test]
fn a_rootless_session_without_ports_gets_its_first_by_port_add() {
    if !require(
        "a_rootless_session_without_ports_gets_its_first_by_port_add",
        rootless_possible(),
    ) {
        return;
    }
    first_port_by_port_add(&User::nobody(), "rootlesskit");
}

/// A host port in use: `port add` exits 125 with one line naming it; an add
/// of several ports where one is in use adds none of them.
#[test]
fn a_host_port_in_use_fails_the_whole_add() {
    if !require_slirp("a_host_port_in_use_fails_the_whole_add") {
        return;
    }
    let root = User::root();
    for handler in HANDLERS {
        let first = free_tcp_port();
        let session = Session::run(&root, handler, [format!("127.0.0.1:{first}:7000")]);
        let before = session.ls();
        let busy = TcpListener::bind(local(0)).unwrap();
        let busy_port = busy.local_addr().unwrap().port();

        let line = session
            .port("add", ["-p", &format!("127.0.0.1:{busy_port}:7001")])
            .own_failure();
        assert!(
            line.contains(&format!("127.0.0.1:{busy_port}")),
            "{handler}: the line does not name the port: {line}"
        );

        // The free one first, the busy one second: neither is added.
        let other = free_tcp_port();
        let line = session
            .port(
                "add",
                [
                    "-p",
                    &format!("127.0.0.1:{other}:7001"),
                    "-p",
                    &format!("127.0.0.1:{busy_port}:7002"),
                ],
            )
            .own_failure();
        assert!(line.contains(&busy_port.to_string()), "{handler}: {line}");
        assert_eq!(
            session.ls(),
            before,
            "{handler}: the add changed the forwards"
        );
        assert_tcp_closed(local(other));
        assert_tcp_echo(local(first), 1);
        drop(busy);
        // And once the port is free, the same add works.
        session.add([
            format!("127.0.0.1:{other}:7001"),
            format!("127.0.0.1:{busy_port}:7002"),
        ]);
        assert_tcp_echo(local(busy_port), 2);
        assert_tcp_echo(local(other), 3);
    }
}

/// Removing what is not forwarded, a spec that does not parse, and a pid
/// or namespace without a session: exit 125 with one line, nothing changed.
#[test]
fn bad_port_requests_exit_125_and_change_nothing() {
    if !require_slirp("bad_port_requests_exit_125_and_change_nothing") {
        return;
    }
    let root = User::root_private();
    for handler in HANDLERS {
        let first = free_tcp_port();
        let session = Session::run(&root, handler, [format!("127.0.0.1:{first}:7000")]);
        let before = session.ls();
        let unused = free_tcp_port();
        let cases: Vec<(&str, Vec<String>, String)> = vec![
            (
                "rm",
                vec![format!("127.0.0.1:{unused}:7000")],
                "no such port is forwarded".into(),
            ),
            (
                "rm",
                vec![unused.to_string()],
                "no such port is forwarded".into(),
            ),
            // Another protocol or address than the forward's.
            (
                "rm",
                vec![format!("{first}/udp")],
                "no such port is forwarded".into(),
            ),
            (
                "rm",
                vec![format!("127.0.0.2:{first}")],
                "no such port is forwarded".into(),
            ),
            // One of two not forwarded: neither is removed.
            (
                "rm",
                vec![first.to_string(), unused.to_string()],
                "no such port is forwarded".into(),
            ),
            (
                "add",
                vec!["127.0.0.1:x:80".into()],
                "invalid port spec".into(),
            ),
            (
                "add",
                vec!["80/sctp".into()],
                "sctp is not supported".into(),
            ),
            ("rm", vec!["nonsense".into()], "invalid port spec".into()),
            (
                "rm",
                vec!["127.0.0.1:x".into()],
                r#"invalid port spec "127.0.0.1:x": host port "x""#.into(),
            ),
            // Forwarded already.
            (
                "add",
                vec![format!("127.0.0.1:{first}:7001")],
                "is forwarded already".into(),
            ),
        ];
        for (verb, specs, want) in cases {
            let line = session.port(verb, publish(&specs)).own_failure();
            assert!(line.contains(&want), "{handler} {verb} {specs:?}: {line}");
            assert_eq!(session.ls(), before, "{handler} {verb} {specs:?}");
        }
        assert_tcp_echo(local(first), 1);
        assert_tcp_closed(local(unused));
    }

    // No session there.
    let me = std::process::id().to_string();
    let line = root.output(["port", "ls", "--pid", &me]).own_failure();
    assert!(
        line.contains(&format!("no slirpnet session of this user with pid {me}")),
        "{line}"
    );
    let line = root
        .output(["port", "add", "--pid", &me, "-p", "127.0.0.1:1234:80"])
        .own_failure();
    assert!(line.contains("no slirpnet session"), "{line}");
    let line = root
        .output(["port", "ls", "--netns", "/proc/self/ns/net"])
        .own_failure();
    assert!(
        line.contains("no slirpnet session of this user serves /proc/self/ns/net"),
        "{line}"
    );
}

/// `--netns PATH` selects the session serving that namespace, however the
/// path names it: an attach session by its /run/netns path (and by
/// /proc/PID/ns/net of a process inside), a run session by its command's
/// /proc/PID/ns/net.
#[test]
fn a_session_is_selected_by_its_netns() {
    if !require_slirp("a_session_is_selected_by_its_netns") {
        return;
    }
    let root = User::root_private();
    let made = PersistentNetns::new("live-ports").unwrap();
    let netns = made.path.to_str().unwrap().to_owned();
    let attached = Session::attach(&root, &made.path, "slirp4netns");
    let port = free_tcp_port();
    root.output([
        "port",
        "add",
        "--netns",
        &netns,
        "-p",
        &format!("127.0.0.1:{port}:7000"),
    ])
    .ok();
    assert_tcp_echo(local(port), 1);
    let by_path = parse_forwards(&root.output(["port", "ls", "--json", "--netns", &netns]));
    assert_eq!(by_path, vec![tcp(port, 7000)]);
    assert_eq!(attached.ls(), by_path, "--netns and --pid disagree");
    let inside = format!("/proc/{}/ns/net", attached.server.as_ref().unwrap().id());
    assert_eq!(
        parse_forwards(&root.output(["port", "ls", "--json", "--netns", &inside])),
        by_path
    );

    let run = Session::run(&root, "rootlesskit", NO_PORTS);
    let run_netns = format!("/proc/{}/ns/net", run.command_pid.unwrap());
    let port2 = free_tcp_port();
    root.output([
        "port",
        "add",
        "--netns",
        &run_netns,
        "-p",
        &format!("127.0.0.1:{port2}:7001"),
    ])
    .ok();
    assert_tcp_echo(local(port2), 2);
    assert_eq!(run.ls(), vec![tcp(port2, 7001)]);
    // Each selection reached its own session only.
    assert_eq!(attached.ls(), vec![tcp(port, 7000)]);

    root.output(["port", "rm", "--netns", &netns, "-p", &port.to_string()])
        .ok();
    assert_tcp_closed(local(port));
    assert!(attached.ls().is_empty());
    let socket = attached.socket();
    assert_eq!(attached.end().code(), Some(0));
    assert!(!socket.exists(), "{} left behind", socket.display());
    // Nobody serves it any more.
    let line = root.output(["port", "ls", "--netns", &netns]).own_failure();
    assert!(
        line.contains("no slirpnet session of this user serves"),
        "{line}"
    );
}

/// `ps --json` lists a session (pid, namespace, handler, forwards); after
/// the session is killed with SIGKILL it no longer does, and its stale
/// socket is removed.
#[test]
fn ps_lists_sessions_and_forgets_killed_ones() {
    if !require_slirp("ps_lists_sessions_and_forgets_killed_ones") {
        return;
    }
    // A private session directory: no other test's ps removes our socket
    // before we look, and ps lists only this test's sessions.
    let root = User::root_private();
    assert!(root.ps().is_empty());
    let port = free_tcp_port();
    let mut a = Session::run(&root, "rootlesskit", [format!("127.0.0.1:{port}:7000")]);
    let b = Session::run(&root, "slirp4netns", NO_PORTS);
    let listed = root.ps();
    assert_eq!(
        listed.iter().map(|s| s.pid).collect::<Vec<_>>(),
        sorted_pids(&[a.pid(), b.pid()])
    );
    let sa = listed.iter().find(|s| s.pid == a.pid()).unwrap();
    assert_eq!(sa.netns, format!("/proc/{}/ns/net", a.command_pid.unwrap()));
    assert_eq!(sa.port_handler.as_str(), "rootlesskit");
    assert_eq!(sa.forwards, vec![tcp(port, 7000)]);
    assert!(
        matches!(&sa.forwarder, Some(ForwarderInfo::Binary { path, .. }) if path.ends_with("rootlessport")),
        "{:?}",
        sa.forwarder
    );
    assert!(sa.slirp4netns_pid > 0);
    let sb = listed.iter().find(|s| s.pid == b.pid()).unwrap();
    assert_eq!(sb.port_handler.as_str(), "slirp4netns");
    assert!(sb.forwards.is_empty());
    // The table too.
    let table = root.output(["ps"]);
    table.ok();
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&a.pid_arg())
                && l.contains(&format!("127.0.0.1:{port}->7000/tcp"))),
        "{}",
        table.stdout
    );

    let socket = a.socket();
    kill(a.pid_nix(), Signal::SIGKILL).unwrap();
    let status = a.wait_exit();
    assert_eq!(status.code(), None, "killed by a signal");
    assert!(socket.exists(), "a killed session cannot remove its socket");
    let listed = root.ps();
    assert_eq!(
        listed.iter().map(|s| s.pid).collect::<Vec<_>>(),
        vec![b.pid()]
    );
    assert!(!socket.exists(), "ps left the stale {}", socket.display());
    let line = root
        .output(["port", "ls", "--pid", &a.pid_arg()])
        .own_failure();
    assert!(line.contains("no slirpnet session"), "{line}");
    assert!(b.ls().is_empty(), "the other session still answers");
}

fn sorted_pids(pids: &[u32]) -> Vec<u32> {
    let mut v = pids.to_vec();
    v.sort_unstable();
    v
}

/// Requests written straight to the control socket that are not requests
/// get an error reply, and the session keeps working.
#[test]
fn malformed_requests_get_an_error_reply() {
    if !require_slirp("malformed_requests_get_an_error_reply") {
        return;
    }
    let root = User::root();
    let port = free_tcp_port();
    let session = Session::run(&root, "rootlesskit", [format!("127.0.0.1:{port}:7000")]);
    let before = session.ls();
    let huge = {
        let mut body = br#"{"op":"list","pad":""#.to_vec();
        body.resize(1 << 20, b'a');
        body.extend_from_slice(b"\"}");
        body
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"op":"nope"}"#.to_vec(), "malformed request"),
        (b"\x00\xffgarbage\n".to_vec(), "malformed request"),
        (Vec::new(), "malformed request"),
        (
            br#"{"op":"add","mappings":[{"host_port":"x"}]}"#.to_vec(),
            "malformed request",
        ),
        (
            br#"{"op":"remove","ports":[{"proto":"tcp","host_port":1}]}"#.to_vec(),
            "is not forwarded",
        ),
        (huge, "larger than"),
    ];
    for (body, want) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let reply = raw_request(&session.socket(), body);
        let message = error_message(&reply);
        assert!(message.contains(want), "{shown:?}: {message}");
        assert_eq!(session.ls(), before, "{shown:?} changed the forwards");
    }
    // A well-formed one still works.
    let reply = raw_request(&session.socket(), br#"{"op":"list"}"#.to_vec());
    assert_eq!(reply["ok"]["forwards"][0]["host_port"], port, "{reply}");
    assert_tcp_echo(local(port), 1);
}

/// A client that connects and sends nothing holds up no other client; with
/// as many idle as a session serves at once, the next is refused at once;
/// each idle one is answered (with an error) once its 5 s deadline passes.
#[test]
fn an_idle_client_does_not_block_others() {
    if !require_slirp("an_idle_client_does_not_block_others") {
        return;
    }
    let root = User::root_private();
    let port = free_tcp_port();
    let session = Session::run(&root, "slirp4netns", [format!("127.0.0.1:{port}:7000")]);
    let idle: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(session.socket()).unwrap())
        .collect();
    let started = Instant::now();
    assert_eq!(session.ls(), vec![tcp(port, 7000)]);
    let second = Instant::now();
    session.add([format!("127.0.0.1:{}:7001", free_tcp_port())]);
    let took = (second - started, second.elapsed());
    // The client deadline is 5 s: a blocked request would take that long.
    assert!(
        took.0 < Duration::from_secs(2) && took.1 < Duration::from_secs(2),
        "port ls / port add took {took:?} while clients sat idle"
    );
    // As many idle clients as a session serves at once (32): the next one
    // is told so at once instead of waiting.
    let more: Vec<UnixStream> = (idle.len()..32)
        .map(|_| UnixStream::connect(session.socket()).unwrap())
        .collect();
    let asked = Instant::now();
    let line = session.port("ls", ["--json"]).own_failure();
    assert!(line.contains("too many requests at once"), "{line}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "refused after {:?}",
        asked.elapsed()
    );
    for mut conn in idle.into_iter().chain(more) {
        conn.set_read_timeout(Some(STEP)).unwrap();
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).unwrap();
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert!(
            error_message(&reply).contains("cannot read the request"),
            "{reply}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "idle clients were held for {:?}",
        started.elapsed()
    );
    assert_eq!(session.ls().len(), 2);
}

/// Another user cannot use root's session: without privileges it cannot
/// even reach the socket (0600 in a 0700 directory); with file modes out of
/// its way (CAP_DAC_OVERRIDE) it connects, and is refused by its uid.
#[test]
fn another_user_is_refused() {
    if !require("another_user_is_refused", rootless_possible()) {
        return;
    }
    let root = User::root();
    let port = free_tcp_port();
    let session = Session::run(&root, "rootlesskit", [format!("127.0.0.1:{port}:7000")]);
    let before = session.ls();
    let (_bins, copies) = world_runnable(&[&root.slirpnet]).unwrap();
    let wanted = free_tcp_port();
    let as_nobody = |dac_override: bool, args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(setpriv_args(NOBODY, dac_override))
            .arg(&copies[0])
            .args(args)
            // So that nobody's session directory is root's: /run/slirpnet.
            .env("XDG_RUNTIME_DIR", "/run")
            .current_dir("/");
        Out::of(cmd)
    };
    let pid = session.pid_arg();
    let spec = format!("127.0.0.1:{wanted}:7001");
    let add = ["port", "add", "--pid", &pid, "-p", &spec];
    let rm = ["port", "rm", "--pid", &pid, "-p", &port.to_string()];

    for args in [&add[..], &rm[..]] {
        let line = as_nobody(false, args).own_failure();
        assert!(
            line.contains(&format!("no slirpnet session of this user with pid {pid}")),
            "{line}"
        );
        let line = as_nobody(true, args).own_failure();
        assert!(
            line.contains("user 65534 may not use this session (it belongs to uid 0)"),
            "{line}"
        );
    }
    // Its ps lists nothing and removes nothing.
    for dac_override in [false, true] {
        let out = as_nobody(dac_override, &["ps", "--json"]);
        out.ok();
        let listed: Vec<SessionStatus> = serde_json::from_str(&out.stdout).unwrap();
        assert!(
            listed.iter().all(|s| s.pid != session.pid()),
            "{}",
            out.stdout
        );
    }
    assert!(session.socket().exists());
    assert_eq!(session.ls(), before);
    assert_tcp_closed(local(wanted));
    assert_tcp_echo(local(port), 1);
}

/// A port forwarded on ::1 works like one on 127.0.0.1 (rootlesskit only:
/// slirp4netns listens on IPv4 alone, and says so).
#[test]
fn an_ipv6_loopback_port_is_added_and_removed() {
    if !require_slirp("an_ipv6_loopback_port_is_added_and_removed") {
        return;
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let Ok(probe) = TcpListener::bind(SocketAddr::new(v6, 0)) else {
        // Whether the host has ::1 is not slirpnet's business.
        require(
            "an_ipv6_loopback_port_is_added_and_removed",
            Err(anyhow::anyhow!("the host has no ::1")),
        );
        return;
    };
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let root = User::root();
    let session = Session::run(&root, "rootlesskit", NO_PORTS);
    let spec = format!("[::1]:{port}:7000");
    session.add([&spec]);
    assert_eq!(session.ls(), vec![fwd(Protocol::Tcp, v6, port, 7000)]);
    assert_tcp_echo(SocketAddr::new(v6, port), 1);
    session.rm([&spec]);
    assert_tcp_closed(SocketAddr::new(v6, port));

    let s4 = Session::run(&root, "slirp4netns", NO_PORTS);
    let line = s4.port("add", ["-p", &spec]).own_failure();
    assert!(line.contains("IPv4"), "{line}");
    assert!(s4.ls().is_empty());
}

/// A 3000-port tcp,udp range added to a running session (6000 forwards,
/// replies of some 470 KB on both control sockets) is listed in full by
/// `port ls` and `ps`, and removed by `port rm`: one port, then the rest in
/// one request.
#[test]
fn a_six_thousand_forward_table_is_listed_and_changed() {
    if !require_slirp("a_six_thousand_forward_table_is_listed_and_changed") {
        return;
    }
    let root = User::root_private();
    let session = Session::run(&root, "rootlesskit", NO_PORTS);
    let first = free_run(3000);
    let last = first + 2999;
    session.add([format!("127.0.0.1:{first}-{last}:10000-12999/tcp,udp")]);
    let all = session.ls();
    assert_eq!(all.len(), 6000);
    let expected: Vec<ForwardEntry> = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .flat_map(|proto| (0..3000).map(move |i| fwd(proto, LOCAL, first + i, 10000 + i)))
        .collect();
    assert_eq!(all, sorted(expected));
    let listed = root.ps();
    assert_eq!(listed.len(), 1);
    assert_eq!(sorted(listed[0].forwards.clone()), all);

    session.rm([first.to_string()]);
    let now = session.ls();
    assert_eq!(now.len(), 5998);
    assert!(now.iter().all(|f| f.forward.host_port != first));
    // The rest in one request (some 340 KB).
    session.rm([format!(
        "127.0.0.1:{}-{last}:10001-12999/tcp,udp",
        first + 1
    )]);
    assert!(session.ls().is_empty());
    // Closing 6000 listeners is not this test's business (nor how soon):
    // that the ports are no longer served is.
    for port in [first, last] {
        let deadline = Instant::now() + STEP;
        while TcpListener::bind(local(port)).is_err() {
            assert!(Instant::now() < deadline, "{port} still bound");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client that trickles its request (a byte a second, never 5 s apart)
/// holds its slot only until the whole request's deadline, 5 s: others are
/// served meanwhile, each trickler is cut off with an error reply, and 32
/// of them (as many as a session serves at once) lock nobody out for
/// longer.
#[test]
fn trickling_clients_are_cut_off_at_the_deadline() {
    if !require_slirp("trickling_clients_are_cut_off_at_the_deadline") {
        return;
    }
    let root = User::root_private();
    let port = free_tcp_port();
    let session = Session::run(&root, "slirp4netns", [format!("127.0.0.1:{port}:7000")]);
    let (connected, tricklers) = mpsc::channel();
    let trickle = |socket: PathBuf| {
        let connected = connected.clone();
        std::thread::spawn(move || -> (Duration, Vec<u8>) {
            let mut conn = UnixStream::connect(&socket).unwrap();
            let started = Instant::now();
            conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let _ = conn.write_all(b"{");
            connected.send(()).unwrap();
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            // Given up on well after any deadline: the test then fails.
            while started.elapsed() < Duration::from_secs(15) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        let _ = conn.write_all(b" ");
                    }
                    Err(_) => break,
                }
            }
            (started.elapsed(), reply)
        })
    };
    let mut threads: Vec<_> = (0..8).map(|_| trickle(session.socket())).collect();
    for _ in 0..8 {
        tricklers.recv_timeout(STEP).unwrap();
    }
    let asked = Instant::now();
    assert_eq!(session.ls(), vec![tcp(port, 7000)]);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "port ls took {:?} while clients trickled",
        asked.elapsed()
    );
    threads.extend((8..32).map(|_| trickle(session.socket())));
    for thread in threads {
        let (took, reply) = thread.join().unwrap();
        assert!(
            took < Duration::from_secs(9),
            "a trickling client was held for {took:?}"
        );
        let reply: Value = serde_json::from_slice(&reply)
            .unwrap_or_else(|e| panic!("no reply ({e}): {:?}", String::from_utf8_lossy(&reply)));
        assert!(
            error_message(&reply).contains("cannot read the request"),
            "{reply}"
        );
    }
    // Every slot is free again.
    assert_eq!(session.ls(), vec![tcp(port, 7000)]);
    assert_tcp_echo(local(port), 1);
}

/// The private directories a session makes for its sockets are 0700 and
/// its own: the forwarder's control socket's (rootlesskit) and the
/// slirp4netns API socket's (slirp4netns).
#[test]
fn private_socket_directories_are_0700() {
    if !require_slirp("private_socket_directories_are_0700") {
        return;
    }
    let root = User::root_private();
    let port = free_tcp_port();
    let with_forwarder = Session::run(&root, "rootlesskit", [format!("127.0.0.1:{port}:7000")]);
    let with_api = Session::run(&root, "slirp4netns", NO_PORTS);
    let forwarder = child_named(with_forwarder.pid(), "rootlessport");
    let environ = std::fs::read(format!("/proc/{forwarder}/environ")).unwrap();
    let control = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"ROOTLESSPORT_CONTROL_SOCKET="))
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .expect("the forwarder has a control socket");
    let slirp = child_named(with_api.pid(), "slirp4netns");
    let cmdline = std::fs::read(format!("/proc/{slirp}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let api = args
        .iter()
        .position(|a| *a == b"--api-socket")
        .map(|i| PathBuf::from(String::from_utf8_lossy(args[i + 1]).into_owned()))
        .expect("slirp4netns has an API socket");
    for socket in [control, api] {
        let dir = socket.parent().unwrap();
        let meta = std::fs::symlink_metadata(dir).unwrap();
        assert!(meta.is_dir(), "{}", dir.display());
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), root.owner(), "{}", dir.display());
    }
}

/// The pid of the child of `parent` whose command is `name`.
fn child_named(parent: u32, name: &str) -> u32 {
    let deadline = Instant::now() + STEP;
    loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // pid (comm) state ppid ...
                let Some((comm, rest)) =
                    stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
                else {
                    return false;
                };
                comm == name && rest.split(' ').nth(1) == Some(&parent.to_string())
            });
        if let Some(pid) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "no {name} child of {parent}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` consecutive ports on 127.0.0.1, free for TCP and UDP, from `base`
/// up: below the ephemeral range (32768 and up), so no other test's
/// client takes one between the check and the add.
fn quiet_range(base: u16, n: u16) -> u16 {
    // From `base` up to the ephemeral range, then from 1025 up to `base`:
    // other tests may hold runs of ports anywhere below it.
    for (mut first, end) in [(base, 32768u32), (1025, u32::from(base) + u32::from(n))] {
        while u32::from(first) + u32::from(n) <= end {
            match (first..first + n).find(|&p| {
                TcpListener::bind(local(p)).is_err() || UdpSocket::bind(local(p)).is_err()
            }) {
                None => return first,
                Some(taken) => first = taken + 1,
            }
        }
    }
    panic!("found no {n} consecutive free ports from {base}");
}

/// `slirpnet port rm` returns only once the listeners are closed: a
/// connection right after it is refused, for 1 port (many times, as the
/// race is narrow), 100 and 2,000 ports at once.
#[test]
fn removed_ports_refuse_the_instant_port_rm_returns() {
    if !require_slirp("removed_ports_refuse_the_instant_port_rm_returns") {
        return;
    }
    let root = User::root();
    let sizes: &[(&str, u16, usize)] = &[
        ("rootlesskit", 1, 40),
        ("rootlesskit", 100, 3),
        ("rootlesskit", 2000, 2),
        ("slirp4netns", 1, 20),
    ];
    for &(handler, n, rounds) in sizes {
        let session = Session::run(&root, handler, NO_PORTS);
        let spec_of = |first: u16| {
            if n == 1 {
                format!("127.0.0.1:{first}:7000")
            } else {
                format!(
                    "127.0.0.1:{first}-{}:10000-{}",
                    first + (n - 1),
                    10000 + (n - 1)
                )
            }
        };
        let mut first = quiet_range(29000, n);
        for round in 0..rounds {
            // A port taken meanwhile by a program outside this test: other
            // ports.
            let mut tries = 0;
            loop {
                let out = session.port("add", publish([spec_of(first)]));
                if out.code == Some(0) {
                    break;
                }
                tries += 1;
                assert!(
                    out.stderr.contains("Address already in use") && tries < 5,
                    "{}: {}",
                    out.shown,
                    out.stderr
                );
                first = quiet_range(29000, n);
            }
            let (last, spec) = (first + (n - 1), spec_of(first));
            assert!(
                connect(local(last)).is_ok(),
                "{handler}: {last} does not listen"
            );
            session.rm([&spec]);
            // The last ports first: a forwarder that closes late closes in order.
            let open: Vec<u16> = (first..=last)
                .rev()
                .filter(|&p| {
                    !matches!(connect(local(p)), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
                })
                .collect();
            assert!(
                open.is_empty(),
                "{handler}: {} of {n} ports still took a connection after port rm returned (round {round}): {:?}",
                open.len(),
                &open[..open.len().min(10)]
            );
        }
    }
}
