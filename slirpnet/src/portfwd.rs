//! Port forwarding for port_handler=rootlesskit (the default): which
//! forwarder serves the ports is chosen explicitly, and reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slirp_api::portctl::Request;
use slirp_opts::rootlessport::{Config, CONTROL_SOCKET_ENV, KEEP_SOURCE_IP_ENV};
use slirp_opts::{Forward, PortKey};
use slirp_proc::{Helper, HelperCommand, HelperError};

/// Who forwards the host ports with port_handler=rootlesskit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwarderChoice {
    /// Our `rootlessport` binary: next to the running program, else in
    /// `../libexec/slirpnet/` from it (where `cargo xtask install` puts
    /// it), else on PATH. podman's helper directories are never searched:
    /// another project's
    /// forwarder runs only when named with [`ForwarderChoice::Binary`].
    #[default]
    Rootlessport,
    /// This binary, started as podman starts its helper (podman's own Go
    /// helper, `/usr/lib/podman/rootlessport`, included).
    Binary(PathBuf),
    /// In this process, on threads of its own, through the rootlessport
    /// crate: no helper binary at all. The process must be able to enter the
    /// network namespace (CAP_SYS_ADMIN over its owner).
    #[cfg(feature = "in-process")]
    InProcess,
}

/// The forwarder a setup uses, as reported in [`SetupInfo`](crate::SetupInfo)
/// and by a session ([`SessionStatus`](crate::session::SessionStatus)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ForwarderInfo {
    /// A helper binary.
    Binary {
        /// The binary.
        path: PathBuf,
        /// Its pid, once started.
        pid: Option<u32>,
    },
    /// In this process.
    InProcess,
}

/// A failure to find or start the port forwarder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwarderError {
    /// No rootlessport binary next to the program, in its
    /// `../libexec/slirpnet/` or on PATH.
    #[error("rootlessport not found next to this program, in its ../libexec/slirpnet/ or in PATH; install it there, name a forwarder binary (ForwarderChoice::Binary), or forward through slirp4netns (PortHandler::Slirp4netns)")]
    NotFound,
    /// The named binary is not an executable file.
    #[error("port forwarder {} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// It failed before ready, with its one line.
    #[error("{} failed: {line}", program.display())]
    Failed {
        /// The binary.
        program: PathBuf,
        /// What it printed (its one error line).
        line: String,
    },
    /// It could not be started, or did not become ready.
    #[error(transparent)]
    Start(HelperError),
    /// The configuration for it is invalid (a bug, or bad ports).
    #[error("invalid port forwarder configuration: {0}")]
    Config(slirp_opts::rootlessport::ConfigError),
    /// The in-process forwarder failed to start.
    #[cfg(feature = "in-process")]
    #[error("in-process port forwarder: {0}")]
    InProcess(rootlessport::StartError),
    /// In-process forwarding was asked for, but this build of slirpnet lacks
    /// the `in-process` feature (never, as `ForwarderChoice::InProcess`
    /// exists only with it).
    #[error("in-process port forwarding needs slirpnet built with its in-process feature")]
    InProcessUnavailable,
    /// The private directory for the forwarder's control socket.
    #[error("failed to create a directory for the port forwarder's control socket: {0}")]
    ControlDir(std::io::Error),
    /// The in-process forwarder's thread or pipe could not be made.
    #[cfg(feature = "in-process")]
    #[error("in-process port forwarder: failed to start its thread: {0}")]
    Thread(std::io::Error),
}

/// Resolves `choice` to what will run, checking that a binary exists:
/// [`ForwarderError::NotFound`] when our rootlessport is neither next to
/// this program, nor in its `../libexec/slirpnet/`, nor on PATH;
/// [`ForwarderError::NotExecutable`] for a named binary that is not an
/// executable file.
pub(crate) fn resolve_forwarder(choice: &ForwarderChoice) -> Result<ForwarderInfo, ForwarderError> {
    match choice {
        ForwarderChoice::Binary(path) => {
            if crate::binary::is_executable(path) {
                Ok(ForwarderInfo::Binary {
                    path: path.clone(),
                    pid: None,
                })
            } else {
                Err(ForwarderError::NotExecutable(path.clone()))
            }
        }
        ForwarderChoice::Rootlessport => {
            let installed = std::env::current_exe()
                .map(|exe| rootlessport_candidates(&exe))
                .unwrap_or_default();
            let path_dirs = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default();
            installed
                .into_iter()
                .chain(path_dirs.iter().map(|dir| dir.join("rootlessport")))
                .find(|p| crate::binary::is_executable(p))
                .map(|path| ForwarderInfo::Binary { path, pid: None })
                .ok_or(ForwarderError::NotFound)
        }
        #[cfg(feature = "in-process")]
        ForwarderChoice::InProcess => Ok(ForwarderInfo::InProcess),
    }
}

/// Where our rootlessport is looked for, relative to the program `exe`,
/// before PATH: next to it (a build directory, `target/release/`), then
/// where `cargo xtask install` puts it (`PREFIX/bin/slirpnet` and
/// `PREFIX/libexec/slirpnet/rootlessport`). A directory of its own, so
/// podman's helper directories (`libexec/podman`) are never searched.
fn rootlessport_candidates(exe: &Path) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else {
        return Vec::new();
    };
    let mut candidates = vec![dir.join("rootlessport")];
    if let Some(prefix) = dir.parent() {
        candidates.push(prefix.join("libexec/slirpnet/rootlessport"));
    }
    candidates
}

/// Why the forwarded ports could not be changed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortChangeError {
    /// A mapping is invalid.
    #[error(transparent)]
    Mapping(#[from] slirp_opts::PortError),
    /// The forward exists already.
    #[error("{0} is forwarded already")]
    AlreadyForwarded(PortKey),
    /// The forward does not exist.
    #[error("{0} is not forwarded")]
    NotForwarded(PortKey),
    /// slirp4netns forwards only IPv4 host addresses.
    #[error("port_handler=slirp4netns can only listen on IPv4 host addresses, not {0}")]
    Ipv6HostAddress(PortKey),
    /// slirp4netns could not be asked for its forwards.
    #[error("slirp4netns cannot list its forwards: {0}")]
    ApiList(slirp_api::ApiError),
    /// slirp4netns refused a forward.
    #[error("slirp4netns cannot forward {key}: {error}")]
    Api {
        /// The forward.
        key: PortKey,
        /// Its API's error (in the message; not also its source).
        error: slirp_api::ApiError,
    },
    /// The forwarder refused, with its own words.
    #[error("{forwarder}: {message}")]
    Refused {
        /// The forwarder (a binary's path, or in-process).
        forwarder: String,
        /// Its message.
        message: String,
    },
    /// The forwarder cannot change ports while it runs (podman's Go helper
    /// has no control socket).
    #[error("the port forwarder {} cannot change ports while it runs (no control socket); restart with the new ports, or use our rootlessport", .0.display())]
    Unsupported(PathBuf),
    /// Talking to the forwarder failed.
    #[error(transparent)]
    Control(#[from] slirp_api::control::ControlError),
    /// Starting a forwarder for the first ports failed.
    #[error(transparent)]
    Start(#[from] ForwarderError),
}

/// A running port forwarder. Dropping it stops it.
#[derive(Debug)]
pub(crate) struct PortForwarder {
    running: Running,
}

#[derive(Debug)]
enum Running {
    /// The helper, its control socket, and whether it was asked to keep
    /// client addresses.
    Helper(Helper, Control, bool),
    #[cfg(feature = "in-process")]
    InProcess(inprocess::InProcess),
}

impl PortForwarder {
    /// Starts `forwarder` with `config` and waits until it is ready: a
    /// binary as podman starts it (argv `["rootlessport"]`, `config` as JSON
    /// on stdin, exit pipe at fd 3, ready pipe at fd 4, its own process
    /// group, joining `userns` first when given); in-process, on threads of
    /// this process. With `keep_source_ip` the service sees each client's
    /// own address (rootlessport's `ROOTLESSPORT_KEEP_SOURCE_IP`; loopback
    /// clients never; a namespace that refuses gets one warning).
    ///
    /// # Errors
    ///
    /// The forwarder failed before ready (its line), could not be started,
    /// or did not become ready within `timeout`.
    pub fn start(
        forwarder: &ForwarderInfo,
        config: Config,
        userns: Option<&Path>,
        timeout: Duration,
        keep_source_ip: bool,
    ) -> Result<Self, ForwarderError> {
        let running = match forwarder {
            ForwarderInfo::Binary { path, .. } => {
                let control = Control::new()?;
                let helper = start_helper(
                    path,
                    &config,
                    userns,
                    timeout,
                    &control.socket,
                    keep_source_ip,
                )?;
                Running::Helper(helper, control, keep_source_ip)
            }
            #[cfg(feature = "in-process")]
            ForwarderInfo::InProcess => {
                Running::InProcess(inprocess::InProcess::start(config, keep_source_ip)?)
            }
            #[cfg(not(feature = "in-process"))]
            ForwarderInfo::InProcess => return Err(ForwarderError::InProcessUnavailable),
        };
        Ok(PortForwarder { running })
    }

    /// Whether the service sees clients' own addresses: in-process, what
    /// the namespace granted; a binary, what it was asked (it warns itself
    /// when refused).
    pub fn keeps_source_ip(&self) -> bool {
        match &self.running {
            Running::Helper(_, _, asked) => *asked,
            #[cfg(feature = "in-process")]
            Running::InProcess(p) => p.keeps_source_ip(),
        }
    }

    /// The helper's process id; `None` in-process.
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Helper(h, ..) => Some(h.pid()),
            #[cfg(feature = "in-process")]
            Running::InProcess(_) => None,
        }
    }

    /// Stops it: a helper's exit pipe is closed, then it gets 2 s before
    /// SIGKILL and is reaped; in-process, the forwarder's threads end.
    pub fn stop(self) {
        match self.running {
            Running::Helper(h, ..) => {
                let _ = h.stop(Duration::from_secs(2));
            }
            #[cfg(feature = "in-process")]
            Running::InProcess(p) => p.stop(),
        }
    }
}

/// Our rootlessport's control socket (see `ROOTLESSPORT_CONTROL_SOCKET`), in
/// a private directory removed with the forwarder.
#[derive(Debug)]
struct Control {
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Control {
    fn new() -> Result<Self, ForwarderError> {
        let dir = crate::dirs::private_dir("slirpnet-fwd-").map_err(ForwarderError::ControlDir)?;
        let socket = dir.path().join("control.sock");
        Ok(Control { _dir: dir, socket })
    }
}

/// How long a forwarder may take to answer a port change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

impl PortForwarder {
    fn name(&self) -> String {
        match &self.running {
            Running::Helper(h, ..) => h.program().display().to_string(),
            #[cfg(feature = "in-process")]
            Running::InProcess(_) => "in-process port forwarder".into(),
        }
    }

    fn ask(&self, req: &Request) -> Result<Vec<Forward>, PortChangeError> {
        match &self.running {
            Running::Helper(h, control, _) => {
                if !control.socket.exists() {
                    return Err(PortChangeError::Unsupported(h.program().to_owned()));
                }
                let reply: slirp_api::portctl::Reply =
                    slirp_api::control::request(&control.socket, req, CHANGE_TIMEOUT)?;
                match reply.into_forwards() {
                    Ok(forwards) => Ok(forwards.into_iter().map(Forward::from).collect()),
                    Err(message) => Err(PortChangeError::Refused {
                        forwarder: self.name(),
                        message,
                    }),
                }
            }
            #[cfg(feature = "in-process")]
            Running::InProcess(p) => p.ask(req).map_err(|e| PortChangeError::Refused {
                forwarder: self.name(),
                message: e.to_string(),
            }),
        }
    }

    /// Every forward it serves now.
    ///
    /// # Errors
    ///
    /// It cannot be asked (no control socket, gone).
    pub fn list(&self) -> Result<Vec<Forward>, PortChangeError> {
        self.ask(&Request::List)
    }

    /// Adds `forwards` while it serves: all or none. Returns every forward.
    ///
    /// # Errors
    ///
    /// It refused (a port in use, already forwarded, ...) or cannot be asked.
    pub fn add(&self, forwards: &[Forward]) -> Result<Vec<Forward>, PortChangeError> {
        self.ask(&Request::Add {
            mappings: forwards.iter().map(Forward::to_mapping).collect(),
        })
    }

    /// Removes `ports` while it serves: all or none. Returns every forward.
    ///
    /// # Errors
    ///
    /// It refused (not forwarded) or cannot be asked.
    pub fn remove(&self, ports: &[PortKey]) -> Result<Vec<Forward>, PortChangeError> {
        self.ask(&Request::Remove {
            ports: ports.to_vec(),
        })
    }
}

fn start_helper(
    binary: &Path,
    config: &Config,
    userns: Option<&Path>,
    timeout: Duration,
    control: &Path,
    keep_source_ip: bool,
) -> Result<Helper, ForwarderError> {
    // Config is plain data; serializing it cannot fail.
    let stdin = serde_json::to_vec(config).unwrap_or_default();
    let mut cmd = HelperCommand::new(binary, "rootlessport", stdin);
    cmd.join_userns = userns.map(Path::to_owned);
    cmd.ready_timeout = timeout;
    // Set either way, so that an inherited value does not decide.
    cmd.env.push((
        KEEP_SOURCE_IP_ENV.into(),
        if keep_source_ip { "1" } else { "0" }.into(),
    ));
    // Our rootlessport serves port changes there; another forwarder ignores it.
    cmd.env.push((CONTROL_SOCKET_ENV.into(), control.into()));
    if std::env::var_os("ROOTLESSPORT_LOG").is_none() {
        cmd.env.push(("ROOTLESSPORT_LOG".into(), "warn".into()));
    }
    match cmd.start() {
        Ok(helper) => Ok(helper),
        Err(HelperError::Failed { line, .. }) if !line.is_empty() => Err(ForwarderError::Failed {
            program: binary.to_owned(),
            line,
        }),
        Err(e) => Err(ForwarderError::Start(e)),
    }
}

#[cfg(feature = "in-process")]
mod inprocess {
    use std::thread::JoinHandle;

    use slirp_api::portctl::Request;
    use slirp_opts::rootlessport::Config;

    use super::ForwarderError;

    /// rootlessport's forwarder on a thread of this process, stopped (also
    /// on drop) through its handle, which returns once its ports are
    /// closed, then joined.
    #[derive(Debug)]
    pub(super) struct InProcess {
        thread: Option<JoinHandle<()>>,
        handle: rootlessport::ForwarderHandle,
        keeps_source_ip: bool,
    }

    impl InProcess {
        pub(super) fn start(config: Config, keep_source_ip: bool) -> Result<Self, ForwarderError> {
            let options = rootlessport::ForwardOptions::default().keep_source_ip(keep_source_ip);
            let forwarder = rootlessport::Forwarder::start_with(
                config.validate().map_err(ForwarderError::Config)?,
                options,
            )
            .map_err(ForwarderError::InProcess)?;
            let handle = forwarder.handle();
            let keeps_source_ip = forwarder.keeps_source_ip();
            let thread = std::thread::Builder::new()
                .name("rootlessport".into())
                .spawn(move || {
                    if let Err(e) = forwarder.serve() {
                        tracing::warn!(error = %e, "the in-process port forwarder failed");
                    }
                })
                .map_err(ForwarderError::Thread)?;
            Ok(InProcess {
                thread: Some(thread),
                handle,
                keeps_source_ip,
            })
        }

        pub(super) fn ask(
            &self,
            req: &Request,
        ) -> Result<Vec<slirp_opts::Forward>, rootlessport::HandleError> {
            match req {
                Request::Add { mappings } => self.handle.add(mappings),
                Request::Remove { ports } => self.handle.remove(ports),
                _ => self.handle.list(),
            }
        }

        pub(super) fn keeps_source_ip(&self) -> bool {
            self.keeps_source_ip
        }

        pub(super) fn stop(mut self) {
            self.stop_inner();
        }

        fn stop_inner(&mut self) {
            if let Some(t) = self.thread.take() {
                // Returns once the forwarder has closed its ports (or
                // ended on its own).
                self.handle.stop();
                let _ = t.join();
            }
        }
    }

    impl Drop for InProcess {
        fn drop(&mut self) {
            self.stop_inner();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rootlessport_candidates;
    use std::path::{Path, PathBuf};

    #[test]
    fn rootlessport_is_looked_for_beside_then_in_libexec() {
        assert_eq!(
            rootlessport_candidates(Path::new("/usr/local/bin/slirpnet")),
            [
                PathBuf::from("/usr/local/bin/rootlessport"),
                PathBuf::from("/usr/local/libexec/slirpnet/rootlessport"),
            ]
        );
        assert_eq!(
            rootlessport_candidates(Path::new("/slirpnet")),
            [PathBuf::from("/rootlessport")]
        );
    }
}
