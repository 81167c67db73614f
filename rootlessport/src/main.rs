//! `rootlessport`: podman's port forwarding helper, as podman starts it.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use rootlessport::{Config, Forwarder};

/// Fails before ready: ONE line on stdout (podman shows `rootlessport <line>`).
fn fail(message: impl std::fmt::Display) -> ExitCode {
    println!("{message}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        return fail("rootlessport takes no arguments: the configuration comes as JSON on stdin");
    }
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
    let config = match Config::from_json(&input) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = config.validate() {
        return fail(e);
    }
    let (exit, ready) = match (take_fd(config.exit_fd), take_fd(config.ready_fd)) {
        (Ok(exit), Ok(ready)) => (exit, ready),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let forwarder = match Forwarder::start(&config) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    // podman closes its ends of stdout and stderr once it sees ready, and a
    // write would then raise SIGPIPE: point them at /dev/null first.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let mut ready = std::fs::File::from(ready);
    if ready.write_all(b"1").is_err() {
        // Nobody is waiting for us any more, and stdout is already gone.
        return ExitCode::from(1);
    }
    drop(ready);
    match forwarder.run_until_eof(exit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Takes ownership of an fd podman passed, after checking it is open.
#[allow(unsafe_code)]
fn take_fd(fd: i32) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD on any number is harmless; it tells whether it is open.
    let open = unsafe { libc_fcntl_getfd(fd) } >= 0;
    if !open || fd <= 2 {
        return Err(format!("fd {fd} named in the configuration is not open"));
    }
    // SAFETY: podman opened this fd for us (the config names it), nothing in
    // this process owns it yet, and it is checked to be open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fcntl(fd, F_GETFD), for a raw number from the configuration.
///
/// # Safety
/// Only queries flags; safe for any integer.
#[allow(unsafe_code)]
unsafe fn libc_fcntl_getfd(fd: i32) -> i32 {
    // SAFETY: see the function's contract.
    unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) }
}
