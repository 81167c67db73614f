//! Sockets for the container side, created inside the namespace.
//!
//! A socket belongs to the network namespace of the thread that created it,
//! whatever thread uses it later. One thread joins the namespace and does
//! nothing but `socket(2)`; the event loop connects, reads and writes. No
//! second process, no per-connection IPC beyond handing over an fd.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc;

use netns_util::{Netns, NetnsError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<io::Result<OwnedFd>>;

/// Hands out sockets created in the namespace.
#[derive(Debug, Clone)]
pub struct SocketFactory {
    requests: mpsc::Sender<(Domain, Type, Reply)>,
}

impl SocketFactory {
    /// Starts the thread inside `netns`. Fails at once when the namespace
    /// cannot be joined (for example, for lack of privilege).
    pub fn start(netns: &Netns) -> Result<Self, NetnsError> {
        let (tx, rx) = mpsc::channel::<(Domain, Type, Reply)>();
        netns.spawn("rootlessport-ns", move || {
            // Ends when every sender is gone.
            for (domain, ty, reply) in rx {
                let made = Socket::new(domain, ty.nonblocking().cloexec(), Some(protocol_of(ty)))
                    .map(OwnedFd::from);
                let _ = reply.send(made);
            }
        })?;
        Ok(SocketFactory { requests: tx })
    }

    /// A new non-blocking, close-on-exec socket inside the namespace.
    pub async fn socket(&self, domain: Domain, ty: Type) -> io::Result<OwnedFd> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((domain, ty, tx))
            .map_err(|_| io::Error::other("the namespace thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the namespace thread is gone"))?
    }
}

fn protocol_of(ty: Type) -> Protocol {
    if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    }
}
