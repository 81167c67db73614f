//! `rootlessport`: podman's port forwarding helper, as podman starts it.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use rootlessport::{Config, ForwardOptions, Forwarder};

/// Fails before ready: ONE line on stdout (podman shows `rootlessport <line>`).
fn fail(message: impl std::fmt::Display) -> ExitCode {
    println!("{}", human(&message.to_string()));
    ExitCode::from(1)
}

/// The message as one short line: no line breaks, and without the
/// " (os error N)" that Rust appends to system errors.
fn human(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " (os error ".len()..];
        match tail.find(')') {
            Some(close) if tail[..close].bytes().all(|b| b.is_ascii_digit()) => {
                rest = &tail[close + 1..];
            }
            _ => {
                out.push_str(" (os error ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    let mut line = out.replace(['\n', '\r'], " ");
    // A decode error quotes the offending value, which may be megabytes.
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// The longest error line printed, in bytes.
const MAX_LINE: usize = 1024;

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        return fail("rootlessport takes no arguments: the configuration comes as JSON on stdin");
    }
    // As Go programs do (podman's helper among them): soft fd limit = hard.
    let _ = rootlessport::raise_fd_limit();
    // Before any thread starts, so that every thread inherits the mask:
    // SIGTERM and SIGINT then wait in the signalfd, and stop the forwarder
    // as the exit pipe does, cleanly.
    let signals = match BlockedSignals::block() {
        Ok(s) => s,
        Err(e) => return fail(format_args!("failed to watch SIGTERM: {e}")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROOTLESSPORT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return fail(format_args!(
            "failed to read the configuration on stdin: {e}"
        ));
    }
    let config = match Config::from_json(&input).and_then(Config::validate) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // Config::validate always checks podman's fd numbers.
    let Some(fds) = config.helper_fds else {
        return fail("the configuration names no ExitFD and ReadyFD");
    };
    let exit = match take_fd("ExitFD", fds.exit_fd, Access::Read) {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let ready = match take_fd("ReadyFD", fds.ready_fd, Access::Write) {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let options = ForwardOptions::from_env().unwrap_or_else(|e| {
        tracing::warn!("{e}");
        ForwardOptions::default()
    });
    let forwarder = match Forwarder::start_with(config, options) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let signals = match signals.wait_on_a_thread() {
        Ok(s) => s,
        Err(e) => return fail(format_args!("failed to watch SIGTERM: {e}")),
    };
    // Ours only: ports changed while serving (slirpnet sets it; podman never
    // does, so as podman's helper nothing changes).
    let _control = match std::env::var_os(rootlessport::CONTROL_SOCKET_ENV) {
        Some(path) => {
            match rootlessport::PortControlServer::start(path.as_ref(), forwarder.handle()) {
                Ok(server) => Some(server),
                Err(e) => return fail(e),
            }
        }
        None => None,
    };
    // podman closes its ends of stdout and stderr once it sees ready, and a
    // write would then raise SIGPIPE: point them at /dev/null first (opened
    // before the sandbox, which allows no open for writing).
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
    // Confined once everything is bound and every thread runs, before
    // ready: from the first client on, the forwarder is locked in.
    if let Err(e) = confine(&forwarder, _control.as_ref()) {
        return fail(e);
    }
    if let Ok(null) = null {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let mut ready = std::fs::File::from(ready);
    if ready.write_all(b"1").is_err() {
        // Nobody is waiting for us any more, and stdout is already gone.
        return ExitCode::from(1);
    }
    drop(ready);
    match forwarder.run_until_eof_or(exit, signals.wait()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Confines the process (`rootlessport::sandbox`) unless
/// `ROOTLESSPORT_SANDBOX=0`. It keeps CAP_NET_ADMIN only while it keeps
/// client addresses (routes and transparent sockets in the namespace as
/// clients come and go), CAP_NET_BIND_SERVICE only with a control socket
/// (a low port added live), and may remove only its reload and control
/// sockets.
fn confine(
    forwarder: &Forwarder,
    control: Option<&rootlessport::PortControlServer>,
) -> Result<(), rootlessport::sandbox::SandboxError> {
    use rootlessport::sandbox::{self, Policy, SANDBOX_ENV};
    match std::env::var_os(SANDBOX_ENV) {
        Some(v) if v == "0" => {
            tracing::warn!(
                "{SANDBOX_ENV}=0: serving without the sandbox (no seccomp filter, no Landlock, every capability kept)"
            );
            return Ok(());
        }
        Some(v) if !v.is_empty() && v != "1" => {
            tracing::warn!(value = ?v, "{SANDBOX_ENV} is 0 (off) or 1 (on); the sandbox stays on");
        }
        _ => {}
    }
    let mut policy = Policy::new()
        .keep_net_admin(forwarder.keeps_source_ip())
        .keep_net_bind_service(control.is_some());
    let sockets = [
        forwarder.reload_socket(),
        control.map(rootlessport::PortControlServer::path),
    ];
    for socket in sockets.into_iter().flatten() {
        let dir = match socket.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        policy = policy.remove_in(dir);
    }
    let confined = sandbox::confine(&policy, std::io::stderr())?;
    tracing::debug!(landlock = confined.landlock, kept = ?confined.kept, "sandboxed");
    Ok(())
}

/// SIGTERM and SIGINT, blocked in every thread and taken by one that
/// waits for them.
struct StopSignals(tokio::sync::oneshot::Receiver<i32>);

/// SIGTERM and SIGINT, blocked but not yet waited for.
struct BlockedSignals(nix::sys::signal::SigSet);

impl BlockedSignals {
    /// Blocks them in this thread, so that every thread started later
    /// inherits the mask.
    fn block() -> std::io::Result<Self> {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.thread_block()?;
        Ok(BlockedSignals(set))
    }

    /// Waits for them on a thread of its own. Started only once the host
    /// ports are bound: while the process has one thread, the kernel grows
    /// its fd table without waiting for an RCU grace period at each
    /// doubling, which made a 3000-port range start 2.5 times slower.
    fn wait_on_a_thread(self) -> std::io::Result<StopSignals> {
        let BlockedSignals(set) = self;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("rootlessport-signals".into())
            .stack_size(64 << 10)
            .spawn(move || {
                if let Ok(signal) = set.wait() {
                    let _ = tx.send(signal as i32);
                }
            })?;
        Ok(StopSignals(rx))
    }
}

impl StopSignals {
    /// Resolves at the first of them (never, if they cannot be waited for).
    async fn wait(self) {
        match self.0.await {
            Ok(signal) => tracing::info!(signal, "stopping"),
            Err(_) => std::future::pending().await,
        }
    }
}

/// What the helper does with an fd podman passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Takes ownership of an fd podman passed, after checking that it is open
/// and can be used the way it will be. `Config::validate` has already
/// refused fds 0-2 and two names for one fd, so no fd is owned twice.
#[allow(unsafe_code)]
fn take_fd(name: &str, fd: i32, access: Access) -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    use nix::libc;
    // SAFETY: F_GETFL on any number is harmless: it only reports the flags
    // of an open fd, or EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(format!(
            "{name} {fd} named in the configuration is not open"
        ));
    }
    let flags = OFlag::from_bits_truncate(flags);
    let mode = flags & OFlag::O_ACCMODE;
    let usable = !flags.contains(OFlag::O_PATH)
        && match access {
            Access::Read => mode == OFlag::O_RDONLY || mode == OFlag::O_RDWR,
            Access::Write => mode == OFlag::O_WRONLY || mode == OFlag::O_RDWR,
        };
    if !usable {
        let want = match access {
            Access::Read => "readable (the exit pipe's read end)",
            Access::Write => "writable (the ready pipe's write end)",
        };
        return Err(format!("{name} {fd} is open but not {want}"));
    }
    // SAFETY: podman opened this fd for us (the config names it), it is
    // open (checked above), it is not 0-2 and not the other named fd
    // (checked by validate), and nothing in this process owns it yet.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::{human, MAX_LINE};

    #[test]
    fn lines_are_short_and_human() {
        assert_eq!(
            human("failed to listen on tcp 127.0.0.1:80: Address already in use (os error 98)"),
            "failed to listen on tcp 127.0.0.1:80: Address already in use"
        );
        assert_eq!(human("a (os error x) b\nc"), "a (os error x) b c");
        let long = human(&"é".repeat(4000));
        assert!(
            long.len() <= MAX_LINE + 3 && long.ends_with("..."),
            "{}",
            long.len()
        );
    }
}
