//! The publish-auto section: how long from `listen()` inside a namespace
//! until the same port on the host answers, through the real
//! `slirpnet attach --publish-auto`, with each port handler.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::clients::free_port_block;
use super::report::today;

/// Heading of the section in BENCHMARKS.md (and, one level down, README).
pub(super) const AUTO_TITLE: &str = "Automatic publishing: listen() to host port reachable";
/// Listeners opened (and closed) per handler.
const LISTENERS: u16 = 100;
/// The target: every listener forwarded within this.
const TARGET_MS: f64 = 100.0;
/// The longest a step (a session's start, a port opening or closing) may
/// take before the bench fails.
const STEP: Duration = Duration::from_secs(30);
const HANDLERS: [&str; 2] = ["rootlesskit", "slirp4netns"];
/// What the namespace's listeners send each connection: a connection that
/// reads it reached them (not only a forwarder that accepts and hangs up).
const ANSWER: u8 = b'a';

/// What was measured per handler: milliseconds from `listen()` returning
/// to the host port answering, and from `close()` to it refusing.
#[derive(Debug, Default)]
pub(super) struct Auto {
    handlers: Vec<(&'static str, Vec<f64>, Vec<f64>)>,
}

/// A network namespace of its own (nothing listening in it but what the
/// section opens), deleted on drop.
struct AutoNetns(String);

impl AutoNetns {
    fn new(handler: &str) -> Result<Self> {
        let name = format!("slirpnet-bench-auto-{handler}-{}", std::process::id());
        crate::util::run_quiet(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = AutoNetns(name);
        crate::util::run_quiet(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for AutoNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `slirpnet attach --publish-auto`, its own runtime directory, its stderr
/// in a file; stopped (SIGTERM, then SIGKILL) on drop.
struct Session {
    child: Child,
    slirpnet: PathBuf,
    dir: tempfile::TempDir,
}

impl Session {
    fn start(slirpnet: &Path, rootlessport: &Path, handler: &str, netns: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("slirpnet-bench-auto")
            .tempdir()
            .context("failed to make a runtime directory for slirpnet")?;
        let stderr = File::create(dir.path().join("stderr"))
            .context("failed to make slirpnet's stderr file")?;
        let child = Command::new(slirpnet)
            .arg("attach")
            .arg("--netns")
            .arg(netns)
            .arg("--rootlessport")
            .arg(rootlessport)
            .args(["-o", &format!("port_handler={handler}"), "--publish-auto"])
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("SLIRPNET_QUIET", "1")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("failed to run {}", slirpnet.display()))?;
        let mut s = Session {
            child,
            slirpnet: slirpnet.to_owned(),
            dir,
        };
        // Ready once its control socket answers.
        let deadline = Instant::now() + STEP;
        while !s.answers() {
            s.alive("starting")?;
            ensure!(
                Instant::now() < deadline,
                "slirpnet attach ({handler}) did not answer `port ls` within {STEP:?}: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(s)
    }

    fn answers(&self) -> bool {
        Command::new(&self.slirpnet)
            .args([
                "port",
                "ls",
                "--json",
                "--pid",
                &self.child.id().to_string(),
            ])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Fails when slirpnet has ended.
    fn alive(&mut self, what: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("slirpnet ended ({status}) while {what}: {}", self.log());
        }
        Ok(())
    }

    /// SIGTERM, and its exit status (it must end within [`STEP`]).
    fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "slirpnet ended with {status}: {}",
                    self.log()
                );
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "slirpnet did not end on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP listener on 0.0.0.0:`port` made inside `netns` (by a thread that
/// joins it; the socket stays there), and the instant `listen()` returned.
/// A thread of its own answers every connection with [`ANSWER`].
fn listen_in(netns: &Path, port: u16) -> Result<(Arc<TcpListener>, Instant)> {
    let ns = File::open(netns).with_context(|| format!("failed to open {}", netns.display()))?;
    let (listener, listened) = std::thread::scope(|s| {
        s.spawn(|| -> Result<(TcpListener, Instant)> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("failed to join the namespace")?;
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("failed to listen on port {port} in the namespace"))?;
            Ok((l, Instant::now()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the listening thread panicked"))?
    })?;
    let listener = Arc::new(listener);
    let l = listener.clone();
    std::thread::spawn(move || {
        while let Ok((mut conn, _)) = l.accept() {
            let _ = std::io::Write::write_all(&mut conn, &[ANSWER]);
        }
    });
    Ok((listener, listened))
}

/// Closes a listener of [`listen_in`]: its thread's accept returns.
fn close(listener: Arc<TcpListener>) {
    let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    drop(listener);
}

/// Whether a connection to 127.0.0.1:`port` is answered by the namespace's
/// listener (Err: refused, nothing listens on the host).
fn answered(port: u16) -> std::io::Result<bool> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut b = [0u8; 1];
    let got = matches!(conn.read(&mut b), Ok(1) if b[0] == ANSWER);
    let _ = conn.shutdown(Shutdown::Both);
    Ok(got)
}

/// One handler: [`LISTENERS`] listeners, one at a time, each on a fresh
/// port, timed until the host port answers and until it refuses again
/// once closed.
fn one_handler(
    slirpnet: &Path,
    rootlessport: &Path,
    handler: &'static str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let netns = AutoNetns::new(handler)?;
    let mut s = Session::start(slirpnet, rootlessport, handler, &netns.path())?;
    // Below the namespace's ephemeral range (never published) and free
    // on the host now.
    let base = free_port_block(LISTENERS)?;
    let (mut opened, mut closed) = (Vec::new(), Vec::new());
    let mut x: u32 = 0x9e37_79b9;
    for port in base..base + LISTENERS {
        // Not in step with the scans: each listen() comes at another point
        // of the scan interval (a spread of start times, not a wait).
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        std::thread::sleep(Duration::from_millis(u64::from(x % 50)));
        let (listener, listened) = listen_in(&netns.path(), port)?;
        loop {
            if matches!(answered(port), Ok(true)) {
                break;
            }
            s.alive("a port was to open")?;
            ensure!(
                listened.elapsed() < STEP,
                "{handler}: 127.0.0.1:{port} was not answered within {STEP:?} of listen(): {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        opened.push(listened.elapsed().as_secs_f64() * 1e3);
        close(listener);
        let gone = Instant::now();
        // Connect only: a connection through rootlessport that reaches
        // no listener inside is held while it retries the dial (about 225
        // ms, as the Go helper does), and reading it would time that, not
        // the port closing.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                _ => {}
            }
            s.alive("a port was to close")?;
            ensure!(
                gone.elapsed() < STEP,
                "{handler}: 127.0.0.1:{port} still accepts {STEP:?} after its listener closed: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        closed.push(gone.elapsed().as_secs_f64() * 1e3);
    }
    s.stop()?;
    Ok((opened, closed))
}

/// The publish-auto section: each handler in turn.
pub(super) fn publish_auto(slirpnet: &Path, rootlessport: &Path) -> Result<Auto> {
    let mut auto = Auto::default();
    for handler in HANDLERS {
        eprintln!("publish-auto: {LISTENERS} listeners through port_handler={handler}");
        let (opened, closed) = one_handler(slirpnet, rootlessport, handler)?;
        auto.handlers.push((handler, opened, closed));
    }
    Ok(auto)
}

/// The `q`th percentile (nearest rank) of `v`.
fn pct(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q / 100.0).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The publish-auto table.
pub(super) fn render_auto(a: &Auto) -> String {
    let mut out = String::from(
        "| handler | listeners | p50 (ms) | p99 (ms) | max (ms) | closed, p50 (ms) | target | met |\n\
         |---|---:|---:|---:|---:|---:|---:|:-:|\n",
    );
    for (handler, opened, closed) in &a.handlers {
        let p99 = pct(opened, 99.0);
        out += &format!(
            "| {handler} | {} | {:.1} | {p99:.1} | {:.1} | {:.1} | p99 ≤ {TARGET_MS:.0} ms | {} |\n",
            opened.len(),
            pct(opened, 50.0),
            pct(opened, 100.0),
            pct(closed, 50.0),
            if p99 <= TARGET_MS { "yes" } else { "no" },
        );
    }
    out
}

/// The publish-auto section of BENCHMARKS.md: how it was measured, and its
/// table.
pub(super) fn render_auto_section(a: &Auto) -> String {
    format!(
        "## {AUTO_TITLE}\n\nWritten by `cargo xtask bench` on {} (`cargo xtask bench --only \
         publish-auto` runs just this section and replaces it here and in README). The release \
         builds of `slirpnet` and our `rootlessport`: `slirpnet attach --publish-auto -o \
         port_handler=HANDLER` on a network namespace the bench made (nothing else listens \
         there). For each handler, {LISTENERS} times, one after another: the bench opens a TCP \
         listener on 0.0.0.0:PORT in the namespace (a fresh port each time, below the \
         namespace's ephemeral range), then connects to 127.0.0.1:PORT on the host every \
         millisecond until the connection reads the byte that listener sends (a forwarder that \
         accepts and hangs up does not count); the time from `listen()` returning to that is \
         the row. Then it closes the listener and connects (only connects: rootlessport holds \
         a connection whose dial inside is refused while it retries, about 225 ms) every \
         millisecond until the host port refuses (\"closed\"; the close comes just after \
         the scan that published the port, so this is about one scan interval). The \
         listeners start at spread points of the 50 ms scan interval (0-49 ms apart). The target is the issue's: every listener forwarded within {TARGET_MS:.0} \
         ms of `listen()` (met: p99 within it).\n\n{}",
        today(),
        render_auto(a),
    )
}

/// What README says above the publish-auto table when it first adds it.
pub(super) const README_AUTO_INTRO: &str =
    "`cargo xtask bench` also measures `slirpnet attach --publish-auto`: how long
from `listen()` inside the namespace until 127.0.0.1:PORT on the host is
answered by that listener, per port handler; `cargo xtask bench --only
publish-auto` runs just that part and replaces the table below.
BENCHMARKS.md says how it is measured.";
