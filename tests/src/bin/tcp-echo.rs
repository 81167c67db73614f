//! Test helper run inside namespaces: listens on 0.0.0.0:PORT, prints
//! `listening` once bound, serves ONE connection by echoing every byte back
//! until the peer half-closes, then half-closes itself and exits 0.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: tcp-echo PORT");
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
    }
    conn.shutdown(Shutdown::Write)?;
    Ok(())
}
