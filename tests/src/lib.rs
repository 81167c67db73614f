//! Test harness: prerequisites that fail on CI and skip elsewhere, and the
//! namespaces and slirp4netns processes the tests make for themselves.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Whether a missing prerequisite is a failure (`CI=true`, or
/// `SLIRPNET_STRICT=1`) rather than a skip.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SLIRPNET_STRICT").is_ok_and(|v| v == "1")
}

/// Checks a prerequisite. Met: `true`. Unmet: panics when [`strict`], else
/// prints why the test is skipped and returns `false`.
pub fn require(test: &str, check: Result<()>) -> bool {
    match check {
        Ok(()) => true,
        Err(e) if strict() => panic!("{test}: prerequisite missing on CI: {e:#}"),
        Err(e) => {
            eprintln!("SKIP {test}: {e:#} (set CI=true to make this a failure)");
            false
        }
    }
}

/// The slirp4netns binary on PATH.
pub fn slirp4netns() -> Result<PathBuf> {
    which("slirp4netns").context("slirp4netns is not installed (run `cargo xtask setup`)")
}

/// Looks a program up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The capability to make network namespaces and tap devices.
pub fn can_admin_net() -> Result<()> {
    for cap in [Capability::CAP_SYS_ADMIN, Capability::CAP_NET_ADMIN] {
        if !caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
            bail!("needs {cap} (run the tests as root)");
        }
    }
    Ok(())
}

/// slirp4netns installed and the privileges to use it.
pub fn real_slirp() -> Result<PathBuf> {
    let bin = slirp4netns()?;
    can_admin_net()?;
    Ok(bin)
}

/// A network namespace held by a `sleep` process made with `unshare -n`;
/// killed and reaped on drop.
#[derive(Debug)]
pub struct Netns {
    holder: Child,
}

impl Netns {
    /// Makes a new network namespace.
    pub fn new() -> Result<Self> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .context("failed to run unshare --net")?;
        let ns = Netns { holder };
        // unshare(2) runs before exec: wait until the process is in its own netns.
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(theirs) = std::fs::read_link(ns.path()) {
                if theirs != ours
                    && std::fs::read_link(format!("/proc/{}/exe", ns.pid()))
                        .is_ok_and(|exe| exe.ends_with("sleep"))
                {
                    return Ok(ns);
                }
            }
            if Instant::now() > deadline {
                bail!("unshare --net did not make a namespace within 5 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `/proc/PID/ns/net`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A slirp4netns process started by hand with an API socket, for testing the
/// API client on its own. Killed and reaped on drop.
#[derive(Debug)]
pub struct SlirpWithApi {
    child: Child,
    /// The API socket path.
    pub socket: PathBuf,
    /// Where its stdout and stderr went.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SlirpWithApi {
    /// Starts `slirp4netns -c --api-socket DIR/api.sock PID tap0` for `netns`
    /// and waits for the socket with [`slirp_api::wait_for_socket`].
    pub fn start(bin: &Path, netns: &Netns) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("api.sock");
        let log = dir.path().join("slirp.log");
        let out = File::create(&log)?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg("--api-socket")
            .arg(&socket)
            .arg(netns.pid().to_string())
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("failed to start {}", bin.display()))?;
        let waited = slirp_api::wait_for_socket(&socket, Duration::from_secs(10), |_| match child
            .try_wait()
        {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        });
        if let Err(e) = waited {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{e}; slirp4netns said: {text}");
        }
        Ok(SlirpWithApi {
            child,
            socket,
            log,
            _dir: dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (it is not reaped here).
    pub fn alive(&self) -> bool {
        kill(Pid::from_raw(self.child.id() as i32), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default()
                .contains(") Z ")
    }
}

impl Drop for SlirpWithApi {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// A host TCP port that was free a moment ago on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
