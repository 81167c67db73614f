//! Port forwarding through rootlessport (port_handler=rootlesskit, the
//! default), started the way podman starts it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slirp_opts::rootlessport::Config;
use slirp_proc::{Helper, HelperCommand, HelperError};

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
    /// It failed before ready, with its one line.
    #[error("rootlessport failed: {0}")]
    Failed(String),
    /// It could not be started, or did not become ready.
    #[error(transparent)]
    Start(HelperError),
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
    helper: Helper,
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
        // Config is plain data; serializing it cannot fail.
        let stdin = serde_json::to_vec(config).unwrap_or_default();
        let mut cmd = HelperCommand::new(binary, "rootlessport", stdin);
        cmd.join_userns = userns.map(Path::to_owned);
        cmd.ready_timeout = timeout;
        if std::env::var_os("ROOTLESSPORT_LOG").is_none() {
            cmd.env.push(("ROOTLESSPORT_LOG".into(), "warn".into()));
        }
        match cmd.start() {
            Ok(helper) => Ok(PortForwarder { helper }),
            Err(HelperError::Failed { line, .. }) if !line.is_empty() => {
                Err(PortForwardError::Failed(line))
            }
            Err(e) => Err(PortForwardError::Start(e)),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.helper.pid()
    }

    /// Closes the exit pipe, waits up to 2 s, kills if needed, reaps.
    pub fn stop(self) {
        let _ = self.helper.stop(Duration::from_secs(2));
    }
}
