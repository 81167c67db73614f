//! Port forwarding through rootlessport (port_handler=rootlesskit, the
//! default), started the way podman starts it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rootlessport::Config;
use slirp_proc::{install_child_setup, ChildSetup};

/// podman's helper directories, searched after the directory of the running
/// program and before PATH.
const HELPER_DIRS: &[&str] = &[
    "/usr/local/libexec/podman",
    "/usr/local/lib/podman",
    "/usr/libexec/podman",
    "/usr/lib/podman",
];

/// A failure to start rootlessport.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// No binary.
    #[error("rootlessport not found next to this program, in the podman helper directories or in PATH; build it (cargo build -p rootlessport) or add -o port_handler=slirp4netns")]
    NotFound,
    /// It could not be started.
    #[error("failed to start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It failed before ready, with its one line.
    #[error("rootlessport failed: {0}")]
    Failed(String),
    /// It did not become ready in time.
    #[error("rootlessport did not become ready within {0:?}")]
    Timeout(Duration),
}

/// The rootlessport binary: `explicit`, else next to the running program,
/// else `$CONTAINERS_HELPER_BINARY_DIR` and podman's helper directories,
/// else PATH.
pub fn find_rootlessport(explicit: Option<&Path>) -> Result<PathBuf, PortForwardError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned));
    let env_dir = std::env::var_os("CONTAINERS_HELPER_BINARY_DIR").map(PathBuf::from);
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(env_dir)
        .chain(HELPER_DIRS.iter().map(PathBuf::from))
        .chain(path_dirs)
        .map(|dir| dir.join("rootlessport"))
        .find(|p| p.is_file())
        .ok_or(PortForwardError::NotFound)
}

/// A running rootlessport. Dropping it closes the exit pipe and reaps it.
#[derive(Debug)]
pub struct PortForwarder {
    child: Child,
    exit: Option<OwnedFd>,
}

impl PortForwarder {
    /// Starts `binary` as podman does (argv `["rootlessport"]`, `config` as
    /// JSON on stdin, exit pipe at fd 3, ready pipe at fd 4, its own process
    /// group), joining `userns` first when given, and waits for ready.
    pub fn start(
        binary: &Path,
        config: &Config,
        userns: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, PortForwardError> {
        let spawn_err = |source| PortForwardError::Spawn {
            binary: binary.to_owned(),
            source,
        };
        let (exit_r, exit_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let (ready_r, ready_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let userns = userns.map(File::open).transpose().map_err(spawn_err)?;
        let mut cmd = Command::new(binary);
        cmd.arg0("rootlessport")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        if std::env::var_os("ROOTLESSPORT_LOG").is_none() {
            cmd.env("ROOTLESSPORT_LOG", "warn");
        }
        install_child_setup(
            &mut cmd,
            ChildSetup {
                fds: vec![(exit_r.as_raw_fd(), 3), (ready_w.as_raw_fd(), 4)],
                join_userns: userns.as_ref().map(|f| f.as_raw_fd()),
                ..Default::default()
            },
        );
        let child = cmd.spawn().map_err(spawn_err)?;
        drop((exit_r, ready_w, userns));
        let mut this = PortForwarder {
            child,
            exit: Some(exit_w),
        };
        if let Some(mut stdin) = this.child.stdin.take() {
            // It may fail and exit before reading it all; the line says why.
            let _ = stdin.write_all(&serde_json::to_vec(config).unwrap_or_default());
        }
        match wait_byte(ready_r, timeout) {
            Some(b'1') => {
                // Its stdout is of no further use; it points at /dev/null now.
                this.child.stdout.take();
                Ok(this)
            }
            Some(_) | None if this.exited_within(Duration::from_secs(5)) => {
                let mut line = String::new();
                if let Some(mut out) = this.child.stdout.take() {
                    let _ = out.read_to_string(&mut line);
                }
                Err(PortForwardError::Failed(line.trim().to_owned()))
            }
            _ => Err(PortForwardError::Timeout(timeout)),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes the exit pipe, waits up to 2 s, kills if needed, reaps.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.exit.take().is_none() && self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if !self.exited_within(Duration::from_secs(2)) {
            tracing::warn!(
                pid = self.child.id(),
                "rootlessport did not stop; killing it"
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The first byte on `fd`, waiting at most `timeout`; `None` on EOF or timeout.
fn wait_byte(fd: OwnedFd, timeout: Duration) -> Option<u8> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    let mut byte = [0u8; 1];
    match File::from(fd).read(&mut byte) {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}
