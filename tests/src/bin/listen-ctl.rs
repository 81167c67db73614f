//! Test helper run inside namespaces: opens and closes echoing sockets as
//! told on stdin, one command a line, answering `ok` (or `err WHY`) on
//! stdout once done:
//!
//! - `tcp ADDR PORT`: listen on ADDR:PORT (`::` is dual-stack), echo
//! - `tcp6only PORT`: listen on `[::]:PORT` with IPV6_V6ONLY, echo
//! - `udp ADDR PORT`: bind ADDR:PORT, send every datagram back
//! - `many ADDR FIRST N`: `tcp ADDR P` for P in FIRST..FIRST+N
//! - `close PORT`: close every socket on PORT (connections carry on)
//!
//! Exits 0 when its stdin reaches EOF.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn6,
};

enum Sock {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

impl Sock {
    /// Wakes its thread (accept or recv returns) and lets it close.
    fn close(&self) {
        let fd = match self {
            Sock::Tcp(l) => l.as_fd().as_raw_fd(),
            Sock::Udp(u) => u.as_fd().as_raw_fd(),
        };
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}

fn echo_tcp(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

fn serve_tcp(listener: TcpListener) -> Sock {
    let listener = Arc::new(listener);
    let l = listener.clone();
    std::thread::spawn(move || {
        while let Ok((conn, _)) = l.accept() {
            std::thread::spawn(move || echo_tcp(conn));
        }
    });
    Sock::Tcp(listener)
}

fn serve_udp(socket: UdpSocket) -> Sock {
    let socket = Arc::new(socket);
    let s = socket.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if n == 0 && from.port() == 0 {
                break;
            }
            let _ = s.send_to(&buf[..n], from);
        }
    });
    Sock::Udp(socket)
}

fn tcp6only(port: u16) -> std::io::Result<TcpListener> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn6::from(std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    ));
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(TcpListener::from(fd))
}

fn run(line: &str, socks: &mut HashMap<u16, Vec<Sock>>) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u16, String> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("word {i} is not a port"))
    };
    let addr = |i: usize| -> Result<IpAddr, String> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("word {i} is not an address"))
    };
    match words.first().copied() {
        Some("tcp") => {
            let (ip, port) = (addr(1)?, num(2)?);
            let l = TcpListener::bind(SocketAddr::new(ip, port)).map_err(|e| e.to_string())?;
            socks.entry(port).or_default().push(serve_tcp(l));
        }
        Some("tcp6only") => {
            let port = num(1)?;
            let l = tcp6only(port).map_err(|e| e.to_string())?;
            socks.entry(port).or_default().push(serve_tcp(l));
        }
        Some("udp") => {
            let (ip, port) = (addr(1)?, num(2)?);
            let u = UdpSocket::bind(SocketAddr::new(ip, port)).map_err(|e| e.to_string())?;
            socks.entry(port).or_default().push(serve_udp(u));
        }
        Some("many") => {
            let (ip, first, n) = (addr(1)?, num(2)?, num(3)?);
            for port in first..first + n {
                let l = TcpListener::bind(SocketAddr::new(ip, port))
                    .map_err(|e| format!("{port}: {e}"))?;
                socks.entry(port).or_default().push(serve_tcp(l));
            }
        }
        Some("close") => {
            for s in socks.remove(&num(1)?).unwrap_or_default() {
                s.close();
            }
        }
        _ => return Err(format!("unknown command {line:?}")),
    }
    Ok(())
}

fn main() {
    let mut socks = HashMap::new();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = match run(&line, &mut socks) {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}
