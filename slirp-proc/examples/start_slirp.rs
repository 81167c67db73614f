//! Starts the real slirp4netns for a network namespace, waits until it is
//! ready, reports, and stops it again.
//!
//! ```sh
//! # Attach to a namespace file (as root, or whoever may enter it):
//! ip netns add demo && cargo run -p slirp-proc --example start_slirp -- /run/netns/demo
//! # As any user, root or not: a namespace holder of its own, as a rootless
//! # engine makes one (`unshare --user --map-root-user --net`), which
//! # slirp4netns joins through --userns-path.
//! cargo run -p slirp-proc --example start_slirp
//! ```
//!
//! The binary is `$SLIRP4NETNS`, or `slirp4netns` on the PATH.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use slirp_proc::{
    output_within, Features, Invocation, NetworkOptions, Slirp, SlirpCommand, Target,
};

fn main() -> ExitCode {
    // The errors' messages are complete, so Display is what to show.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let binary: PathBuf = std::env::var_os("SLIRP4NETNS")
        .unwrap_or_else(|| "slirp4netns".into())
        .into();

    // What this slirp4netns supports, from its --help.
    let mut help = Command::new(&binary);
    help.arg("--help");
    let help = output_within(help, Duration::from_secs(10))?;
    let features = Features::from_help(&String::from_utf8_lossy(&help.stdout));

    // Keep the holder (if any) alive while slirp4netns runs; it is killed
    // on the way out.
    let mut holder = None;
    let target = match std::env::args_os().nth(1) {
        Some(path) => Target::Path {
            netns: path.into(),
            userns: None,
        },
        None => {
            let child = NamespaceHolder::start()?;
            let target = Target::of_process(child.0.id(), true);
            holder = Some(child);
            target
        }
    };
    let options = NetworkOptions::new();
    let mut cmd = SlirpCommand::new(&binary, options, features, Invocation::new(target));
    if holder.is_some() {
        // The holder's user namespace: slirp4netns joins it before exec, so
        // the mount namespace --enable-sandbox needs is made there, which
        // works rootless too.
        cmd.join_userns = cmd.invocation.target.userns_path().map(Into::into);
        // Turning IPv6 accept_dad off while it starts means entering the
        // namespace from here, which a rootless caller outside its user
        // namespace may not do (the error would say so). slirp4netns works
        // without it.
        cmd.toggle_accept_dad = false;
    }
    let args = cmd.args()?;
    println!(
        "starting {} {}",
        binary.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );

    // Returns once slirp4netns wrote its ready byte, or with its output
    // when it died first.
    let mut slirp = Slirp::start(&cmd)?;
    println!("slirp4netns is ready, pid {}", slirp.pid());
    if let Some(exit) = slirp.exited_within(Duration::from_millis(200)) {
        return Err(format!("slirp4netns ended right after ready: {exit}").into());
    }
    let log = slirp.log_text();
    if !log.is_empty() {
        println!("its output so far:\n{}", log.trim_end());
    }
    // Closes the exit pipe (slirp4netns ends on that), kills only after
    // the grace period, and reaps.
    let exit = slirp.stop(Duration::from_secs(5));
    println!("slirp4netns stopped: {exit}");
    drop(holder);
    Ok(())
}

/// A process in a user and network namespace of its own, as a rootless
/// engine's pause process; killed and reaped on drop.
struct NamespaceHolder(Child);

impl NamespaceHolder {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("failed to run unshare: {e}"))?;
        let mut holder = NamespaceHolder(child);
        // slirp4netns must not attach before unshare made the namespace.
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let theirs = format!("/proc/{}/ns/net", holder.0.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(&theirs)? == ours {
            if let Some(status) = holder.0.try_wait()? {
                return Err(format!("unshare ended before making a namespace: {status}").into());
            }
            if Instant::now() > deadline {
                return Err("unshare made no network namespace within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(holder)
    }
}

impl Drop for NamespaceHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
