//! Test helper run inside namespaces: for every PORT given, echoes on TCP
//! and UDP 0.0.0.0:PORT (any number of connections and datagrams; each TCP
//! read is sent back at once, and a peer's half-close is passed on). Prints
//! `listening PID` once every port is bound, and exits 0 when its stdin
//! reaches EOF.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};

fn echo_tcp(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

fn echo_udp(socket: UdpSocket) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(&buf[..n], from);
    }
}

fn main() -> std::io::Result<()> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| p.parse().expect("usage: echo-server PORT..."))
        .collect();
    assert!(!ports.is_empty(), "usage: echo-server PORT...");
    for &port in &ports {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        let udp = UdpSocket::bind(("0.0.0.0", port))?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || echo_tcp(conn));
            }
        });
        std::thread::spawn(move || echo_udp(udp));
    }
    println!("listening {}", std::process::id());
    std::io::stdout().flush()?;
    // Until the test closes our stdin.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}
