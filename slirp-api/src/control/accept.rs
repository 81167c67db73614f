//! The accept loop every request/answer socket of ours shares (the control
//! sockets, and rootlessport's reload socket with podman's protocol): each
//! client on a short thread of its own, a cap on how many at once, and a
//! short back-off when the process is out of fds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{accept4, shutdown, Shutdown, SockFlag};

/// Stops a [`serve_clients`] loop when dropped (or at [`Stopper::stop`]):
/// its listener is shut down, which wakes the blocked accept. Clients
/// being served finish on their own threads.
#[derive(Debug)]
pub struct Stopper(OwnedFd);

impl Stopper {
    /// Stops the loop now.
    pub fn stop(&self) {
        // Wakes the blocked accept with EINVAL, and the loop ends.
        let _ = shutdown(self.0.as_raw_fd(), Shutdown::Both);
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts the clients of `listener` (a listening unix socket of any type)
/// on a thread named `name`: each accepted connection (close-on-exec) goes
/// to `serve` on a thread of its own with a `stack`-byte stack, at most
/// `cap` at once; past that, the connection goes to `busy` on the
/// accepting thread, which must answer without blocking. Out of fds or
/// memory, the loop pauses 20 ms and accepts again.
///
/// # Errors
///
/// The listener cannot be duplicated or the thread started.
pub fn serve_clients<B, S>(
    listener: OwnedFd,
    name: &str,
    cap: usize,
    stack: usize,
    busy: B,
    serve: S,
) -> io::Result<Stopper>
where
    B: Fn(OwnedFd) + Send + 'static,
    S: Fn(OwnedFd) + Send + Sync + 'static,
{
    let stopper = Stopper(listener.try_clone()?);
    let serve = Arc::new(serve);
    let client_name = format!("{name} client");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let in_flight = Arc::new(AtomicUsize::new(0));
            loop {
                let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => owned(fd),
                    Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                    // Out of fds or memory for a moment: try again shortly.
                    Err(
                        nix::Error::EMFILE
                        | nix::Error::ENFILE
                        | nix::Error::ENOMEM
                        | nix::Error::ENOBUFS,
                    ) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    // Shut down through the stopper (EINVAL), or broken.
                    Err(_) => return,
                };
                if in_flight.fetch_add(1, Ordering::AcqRel) >= cap {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    busy(conn);
                    continue;
                }
                let (serve, counter) = (serve.clone(), in_flight.clone());
                let spawned = std::thread::Builder::new()
                    .name(client_name.clone())
                    .stack_size(stack)
                    .spawn(move || {
                        serve(conn);
                        counter.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    // The closure, and the connection with it, is gone unrun.
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(stopper)
}

#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
