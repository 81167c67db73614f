//! Starts a helper the way podman starts `rootlessport`: its configuration
//! on stdin, the exit pipe at fd 3, the ready pipe at fd 4, one error line
//! on stdout when it fails before ready. The helper is this program itself,
//! run again under another `argv[0]` (as podman re-executes itself); it
//! needs no privilege.
//!
//! ```sh
//! cargo run -p slirp-proc --example helper
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use slirp_proc::{HelperCommand, HelperError, HelperStderr, HELPER_EXIT_FD, HELPER_READY_FD};

/// The `argv[0]` the helper runs under.
const HELPER_NAME: &str = "demo-helper";

fn main() -> ExitCode {
    let as_helper = std::env::args_os()
        .next()
        .is_some_and(|arg0| arg0 == HELPER_NAME);
    let result = if as_helper { helper() } else { engine() };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The engine's side: start the helper, wait until it is ready, stop it;
/// then one that fails, and what its error says.
fn engine() -> Result<(), Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;

    let mut cmd = HelperCommand::new(&me, HELPER_NAME, b"serve".to_vec());
    cmd.ready_timeout = Duration::from_secs(10);
    // Returns once it wrote '1' to its ready pipe.
    let helper = cmd.start()?;
    println!(
        "helper pid {} ready after {:?}",
        helper.pid(),
        helper.ready_after()
    );
    // Closing the exit pipe tells it to end; `Err` if it had to be killed.
    match helper.stop(Duration::from_secs(5)) {
        Ok(exit) => println!("helper stopped: {exit}"),
        Err(exit) => return Err(format!("the helper had to be killed: {exit}").into()),
    }

    // A helper that fails before ready: its stdout line is the error.
    let mut failing = HelperCommand::new(&me, HELPER_NAME, b"fail".to_vec());
    // Its stderr is of no use here; the stdout line is the error.
    failing.stderr = HelperStderr::Null;
    match failing.start() {
        Err(HelperError::Failed { line, exit, .. }) => {
            println!("failing helper said {line:?} ({exit})");
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(_) => Err("the failing helper became ready".into()),
    }
}

/// The helper's side.
fn helper() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = String::new();
    std::io::stdin().read_to_string(&mut config)?;
    if config != "serve" {
        // Before ready, the one stdout line is the error the engine reports.
        println!("cannot {config:?}: this helper only serves");
        return Err("bad configuration".into());
    }
    // The pipes, opened again through /proc (no unsafe needed).
    let mut exit = File::open(format!("/proc/self/fd/{HELPER_EXIT_FD}"))?;
    let mut ready = OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{HELPER_READY_FD}"))?;
    ready.write_all(b"1")?;
    drop(ready);
    // Serve until the exit pipe closes.
    let mut buf = [0u8; 1];
    while exit.read(&mut buf)? != 0 {}
    Ok(())
}
