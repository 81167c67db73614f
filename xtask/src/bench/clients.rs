//! The clients and the server the bench measures with: iperf3, the
//! connection-rate and request/response clients, the bench server.

use std::io::{Read, Seek, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::{IPERF_GRACE, PING_PONG, UDP_LEN, WHO};

/// `len` consecutive ports free for TCP and UDP on all addresses: one port
/// from the kernel, or a block searched below the ephemeral range.
pub(super) fn free_port_block(len: u16) -> Result<u16> {
    let free = |base: u16| {
        (0..len).all(|i| {
            TcpListener::bind(("0.0.0.0", base + i)).is_ok()
                && std::net::UdpSocket::bind(("0.0.0.0", base + i)).is_ok()
        })
    };
    if len == 1 {
        for _ in 0..100 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            if free(port) {
                return Ok(port);
            }
        }
    } else {
        let mut base = 20000u16;
        while u32::from(base) + u32::from(len) <= 32000 {
            if free(base) {
                return Ok(base);
            }
            base += len;
        }
    }
    bail!("found no block of {len} free ports")
}

/// CPU seconds all cores have spent busy since boot (/proc/stat: all but
/// idle and iowait).
pub(super) fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq (steal is the hypervisor's,
    // guest time is already inside user); USER_HZ is 100 on Linux.
    let busy: f64 = ticks
        .iter()
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / 100.0
}

/// Where a client runs and the address it connects to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    /// The network namespace it runs in (`ip netns exec`); `None`: ours.
    pub(super) netns: Option<&'a str>,
    pub(super) host: &'a str,
}

/// Clients on the host's loopback.
pub(super) const LOOPBACK: Target<'static> = Target {
    netns: None,
    host: "127.0.0.1",
};

/// `iperf3 -J` against `at`'s host on `port` with `streams` parallel
/// streams; returns received bits per second and bytes moved, or `None`
/// when it did not finish within `seconds` + [`IPERF_GRACE`] (it is killed
/// then). A server still busy with a killed client's test is retried for up
/// to 10 s.
pub(super) fn iperf(
    at: Target,
    port: u16,
    seconds: u64,
    udp: bool,
    streams: usize,
) -> Result<Option<(f64, f64)>> {
    let busy_until = Instant::now() + Duration::from_secs(10);
    let json = loop {
        let mut out = tempfile::tempfile().context("failed to make a file for iperf3's output")?;
        let mut cmd = match at.netns {
            // ip netns exec execs iperf3 in place: killing it kills iperf3.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "iperf3"]);
                c
            }
            None => Command::new("iperf3"),
        };
        cmd.args([
            "-c",
            at.host,
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ]);
        if udp {
            cmd.args(["-u", "-b", "0", "-l", &UDP_LEN.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(Stdio::null())
            .spawn()
            .context("failed to run iperf3")?;
        let deadline = Instant::now() + Duration::from_secs(seconds) + IPERF_GRACE;
        let finished = loop {
            match child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("failed to wait for iperf3");
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !finished {
            return Ok(None);
        }
        let mut text = String::new();
        out.rewind()?;
        out.read_to_string(&mut text)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 printed no JSON: {}", text.trim()))?;
        match json.get("error").and_then(|e| e.as_str()) {
            Some(err) if err.contains("busy") && Instant::now() < busy_until => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(err) => bail!("iperf3: {err}"),
            None => break json,
        }
    };
    let end = &json["end"];
    if udp {
        let sum = &end["sum"];
        let bps = sum["bits_per_second"].as_f64().unwrap_or(0.0);
        let lost = sum["lost_percent"].as_f64().unwrap_or(0.0);
        let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
        Ok(Some((
            bps * (1.0 - lost / 100.0),
            bytes * (1.0 - lost / 100.0),
        )))
    } else {
        let r = &end["sum_received"];
        Ok(Some((
            r["bits_per_second"].as_f64().unwrap_or(0.0),
            r["bytes"].as_f64().unwrap_or(0.0),
        )))
    }
}

/// Connect, 1-byte request and reply, close, from 4 threads for `seconds`.
/// Returns (connections per second, p50 µs, p99 µs).
pub(super) fn conn_rate(addr: SocketAddr, seconds: u64) -> Result<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<Vec<u32>> {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    c.set_nodelay(true)?;
                    c.write_all(b"x")?;
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b)?;
                    drop(c);
                    lat.push(t.elapsed().as_micros() as u32);
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    ensure!(!all.is_empty(), "no connection completed");
    all.sort_unstable();
    let pct = |p: f64| f64::from(all[((all.len() - 1) as f64 * p) as usize]);
    Ok((all.len() as f64 / seconds as f64, pct(0.50), pct(0.99)))
}

/// 1-byte request, 1-byte response, over and over on ONE established
/// connection for `seconds` (after 100 unmeasured exchanges). Returns
/// (exchanges, p50 µs, p99 µs).
pub(super) fn req_resp(addr: SocketAddr, seconds: u64) -> Result<(usize, f64, f64)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("failed to connect to {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let mut exchange = |c: &mut TcpStream| -> Result<()> {
        c.write_all(&[PING_PONG])?;
        c.read_exact(&mut b).context("no response within 5 s")
    };
    for _ in 0..100 {
        exchange(&mut c)?;
    }
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        exchange(&mut c)?;
        lat.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    ensure!(!lat.is_empty(), "no exchange completed");
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Ok((lat.len(), pct(0.50), pct(0.99)))
}

/// The bench server (`xtask bench-serve ADDR`). A connection whose first
/// byte is [`PING_PONG`] gets every byte echoed until the peer closes; one
/// whose first byte is [`WHO`] gets the address the server sees it come
/// from, as text, and is closed; any other first byte is answered once,
/// then the server closes its side and waits for the peer's close (the
/// connection-rate test). On UDP at the same address, a datagram starting
/// with [`WHO`] is answered with the sender's address.
pub(crate) fn serve(addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("failed to bind {addr}"))?;
    let udp =
        std::net::UdpSocket::bind(addr).with_context(|| format!("failed to bind UDP {addr}"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            if n > 0 && buf[0] == WHO {
                let _ = udp.send_to(peer.to_string().as_bytes(), peer);
            }
        }
    });
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_err() {
                return;
            }
            if b[0] == WHO {
                if let Ok(peer) = c.peer_addr() {
                    let _ = c.write_all(peer.to_string().as_bytes());
                }
                return;
            }
            if c.write_all(&b).is_err() {
                return;
            }
            if b[0] == PING_PONG {
                while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
            } else {
                let _ = c.shutdown(Shutdown::Write);
                let mut rest = [0u8; 16];
                let _ = c.read(&mut rest);
            }
        });
    }
    Ok(())
}

/// Runs `program args` inside the network namespace `ns` (ip netns exec,
/// which execs in place), killed after `limit`; returns its stdout.
pub(super) fn run_in(ns: &str, program: &Path, args: &[&str], limit: Duration) -> Result<String> {
    let mut out = tempfile::tempfile().context("failed to make a file for a client's output")?;
    let mut err = tempfile::tempfile().context("failed to make a file for a client's errors")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("failed to run {} in {ns}", program.display()))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            done => {
                let _ = child.kill();
                let _ = child.wait();
                match done {
                    Err(e) => return Err(e).context("failed to wait for a client"),
                    _ => bail!("{} {args:?} in {ns} ran over {limit:?}", program.display()),
                }
            }
        }
    };
    let (mut text, mut errors) = (String::new(), String::new());
    out.rewind()?;
    out.read_to_string(&mut text)?;
    err.rewind()?;
    err.read_to_string(&mut errors)?;
    ensure!(
        status.success(),
        "{} {args:?} in {ns} failed ({status}): {}",
        program.display(),
        errors.trim()
    );
    Ok(text)
}

/// `xtask bench-conn ADDR SECONDS`: the connection-rate client, for a
/// namespace of its own; prints `conn/s p50-µs p99-µs`.
pub(crate) fn conn_client(args: &[String]) -> Result<()> {
    let [addr, seconds] = args else {
        bail!("usage: bench-conn ADDR SECONDS");
    };
    let addr: SocketAddr = addr.parse().context("bench-conn: bad ADDR")?;
    let seconds: u64 = seconds.parse().context("bench-conn: bad SECONDS")?;
    let (rate, p50, p99) = conn_rate(addr, seconds)?;
    println!("{rate} {p50} {p99}");
    Ok(())
}

/// `xtask bench-rr ADDR SECONDS`: the request/response client alone (for
/// profiling a forwarder by hand); prints `exchanges p50-µs p99-µs`.
pub(crate) fn rr_client(args: &[String]) -> Result<()> {
    let [addr, seconds] = args else {
        bail!("usage: bench-rr ADDR SECONDS");
    };
    let addr: SocketAddr = addr.parse().context("bench-rr: bad ADDR")?;
    let seconds: u64 = seconds.parse().context("bench-rr: bad SECONDS")?;
    let (n, p50, p99) = req_resp(addr, seconds)?;
    println!("{n} {p50} {p99}");
    Ok(())
}

/// `xtask bench-who tcp|udp ADDR`: prints the address the bench server at
/// ADDR sees this client at (retried for a few seconds: the first
/// connection through a new forwarder may meet a veth still coming up).
pub(crate) fn who_client(args: &[String]) -> Result<()> {
    let [proto, addr] = args else {
        bail!("usage: bench-who tcp|udp ADDR");
    };
    let addr: SocketAddr = addr.parse().context("bench-who: bad ADDR")?;
    let once = || -> Result<String> {
        let mut text = String::new();
        match proto.as_str() {
            "tcp" => {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.write_all(&[WHO])?;
                c.read_to_string(&mut text)?;
            }
            "udp" => {
                let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
                u.connect(addr)?;
                u.set_read_timeout(Some(Duration::from_millis(500)))?;
                u.send(&[WHO])?;
                let mut buf = [0u8; 64];
                let n = u.recv(&mut buf)?;
                text = String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            other => bail!("bench-who: unknown protocol {other:?}"),
        }
        ensure!(!text.is_empty(), "the server said nothing");
        Ok(text)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match once() {
            Ok(text) => {
                println!("{text}");
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("no answer over {proto} from {addr}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
