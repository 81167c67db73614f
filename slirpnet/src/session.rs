//! A running session's control socket: `slirpnet ps` and `slirpnet port`
//! talk to it to list and change the forwarded ports of a namespace that is
//! already networked.
//!
//! Each session serves `<session_dir>/<pid>.sock` (mode 0600, in a 0700
//! directory: `$XDG_RUNTIME_DIR/slirpnet`, `/run/slirpnet` for root), removed
//! when the session ends; a socket left by a crash is removed by the next
//! [`sessions`] that finds nobody answering. The socket is slirp-api's
//! control socket ([`slirp_api::control`]: one JSON request per connection,
//! read to EOF within [`CLIENT_DEADLINE`], one JSON reply of any size, only
//! the session's own user served), carrying slirp-api's port requests and
//! the session's own [`SessionRequest::Session`].

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use slirp_api::control::{ControlReply, ControlServer};
// What this module's signatures name, so that a caller needs no second
// dependency to name it.
pub use slirp_api::control::{ControlError, ServeError};
pub use slirp_api::portctl::{ForwardEntry, Reply, Request};
use slirp_opts::{expand_all, PortHandler, PortKey, PortMapping};

use crate::autopublish::{AutoPublishError, AutoPublisher};
use crate::network::{Network, SharedNetwork};
use crate::portfwd::ForwarderInfo;

/// How long a client may take to send its whole request.
pub const CLIENT_DEADLINE: Duration = slirp_api::control::REQUEST_DEADLINE;
/// How long a client waits for the whole exchange: the session may itself
/// wait up to 10 s on its port forwarder.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A failure to serve or reach a session's control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session directory cannot be made or is not ours.
    #[error("cannot use the session directory {}: {error}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The socket cannot be bound or served.
    #[error("cannot serve the session socket: {0}")]
    Serve(ServeError),
    /// The session could not be asked, or did not answer.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The session refused: nothing changed.
    #[error("{0}")]
    Refused(String),
    /// No session of this user has this pid.
    #[error("no slirpnet session of this user with pid {pid} (no socket {})", socket.display())]
    NoPid {
        /// The pid asked for.
        pid: u32,
        /// Where its socket would be.
        socket: PathBuf,
    },
    /// No session of this user serves this namespace.
    #[error("no slirpnet session of this user serves {}", netns.display())]
    NoNetns {
        /// The namespace asked for.
        netns: PathBuf,
    },
    /// The namespace asked for cannot be read.
    #[error("cannot read {}: {error}", netns.display())]
    Netns {
        /// The namespace asked for.
        netns: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Automatic publishing could not start (the session was ended).
    #[error(transparent)]
    AutoPublish(#[from] AutoPublishError),
    /// The session answered something else than was asked.
    #[error("unexpected reply from {}: {reply}", path.display())]
    Unexpected {
        /// The socket.
        path: PathBuf,
        /// The reply, as JSON.
        reply: String,
    },
}

/// A request to a session: a port request, or its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
#[non_exhaustive]
pub enum SessionRequest {
    /// The session's pid, namespace, handler and forwards (answered with
    /// [`SessionReply::Session`]).
    Session,
    /// List, add or remove ports, as a forwarder's control socket does.
    #[serde(untagged)]
    Ports(Request),
}

impl<'de> Deserialize<'de> for SessionRequest {
    // By hand, so that a bad port request is told what is wrong with it,
    // not only that it matches no variant.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if value.get("op").and_then(serde_json::Value::as_str) == Some("session") {
            return match value.as_object().map(serde_json::Map::len) {
                Some(1) => Ok(SessionRequest::Session),
                _ => Err(serde::de::Error::custom(
                    "a session request has no field but `op`",
                )),
            };
        }
        Request::deserialize(value)
            .map(SessionRequest::Ports)
            .map_err(serde::de::Error::custom)
    }
}

/// A session's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SessionReply {
    /// The session's status.
    Session(SessionStatus),
    /// The answer to a port request, or a refusal.
    #[serde(untagged)]
    Ports(Reply),
}

impl<'de> Deserialize<'de> for SessionReply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(d)?;
        if let Some(status) = value.get_mut("session").map(serde_json::Value::take) {
            return SessionStatus::deserialize(status)
                .map(SessionReply::Session)
                .map_err(serde::de::Error::custom);
        }
        Reply::deserialize(value)
            .map(SessionReply::Ports)
            .map_err(serde::de::Error::custom)
    }
}

impl ControlReply for SessionReply {
    fn error(message: String) -> Self {
        SessionReply::Ports(Reply::Error { message })
    }
}

/// What a running slirpnet session reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The session's pid (`slirpnet run` or `slirpnet attach`).
    pub pid: u32,
    /// The network namespace it serves.
    pub netns: String,
    /// Who forwards the ports (`rootlesskit` or `slirp4netns` on the wire).
    pub port_handler: PortHandler,
    /// The port forwarder, when one runs.
    pub forwarder: Option<ForwarderInfo>,
    /// slirp4netns's pid.
    pub slirp4netns_pid: u32,
    /// Every forward now.
    pub forwards: Vec<ForwardEntry>,
}

/// Where this user's session sockets live: `$XDG_RUNTIME_DIR/slirpnet`,
/// else `/run/slirpnet` for root, else `<tmp>/slirpnet-<uid>`.
pub fn session_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("slirpnet"),
        None if uid.is_root() => PathBuf::from("/run/slirpnet"),
        None => std::env::temp_dir().join(format!("slirpnet-{uid}")),
    }
}

/// The control socket of session `pid`.
pub fn session_socket(pid: u32) -> PathBuf {
    session_dir().join(format!("{pid}.sock"))
}

/// The control socket of this user's session with pid `pid`.
///
/// # Errors
///
/// [`SessionError::NoPid`]: there is no socket for it.
pub fn socket_of_pid(pid: u32) -> Result<PathBuf, SessionError> {
    let socket = session_socket(pid);
    if socket.exists() {
        Ok(socket)
    } else {
        Err(SessionError::NoPid { pid, socket })
    }
}

/// The control socket of this user's session that serves `netns`, however
/// the namespace is named (its nsfs inode is compared).
///
/// # Errors
///
/// [`SessionError::Netns`] when `netns` cannot be read,
/// [`SessionError::NoNetns`] when no running session serves it.
pub fn socket_of_netns(netns: &Path) -> Result<PathBuf, SessionError> {
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let wanted = id(netns).map_err(|error| SessionError::Netns {
        netns: netns.to_owned(),
        error,
    })?;
    sessions()
        .into_iter()
        .find(|s| id(Path::new(&s.netns)).is_ok_and(|i| i == wanted))
        .map(|s| session_socket(s.pid))
        .ok_or_else(|| SessionError::NoNetns {
            netns: netns.to_owned(),
        })
}

/// Makes the session directory (0700) and checks that it is ours and
/// private, following no symlink at its last component.
fn ensure_dir(dir: &Path) -> Result<(), SessionError> {
    let fail = |error| SessionError::Dir {
        path: dir.to_owned(),
        error,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
    if !meta.is_dir() {
        return Err(fail(io::Error::other("it is not a directory")));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(fail(io::Error::other(format!(
            "it belongs to uid {}, not to us",
            meta.uid()
        ))));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

/// Serves a session's control socket on threads of its own. Dropping it
/// stops serving and removes the socket.
#[derive(Debug)]
pub struct SessionServer(ControlServer);

impl SessionServer {
    /// Serves [`session_socket(pid)`](session_socket) for `network`, the
    /// session of process `pid` (ours). A socket left there by a killed
    /// session of a reused pid is replaced; anything else there is an
    /// error.
    ///
    /// # Errors
    ///
    /// The directory or the socket cannot be made.
    pub fn start(network: SharedNetwork, pid: u32) -> Result<Self, SessionError> {
        ensure_dir(&session_dir())?;
        ControlServer::start(&session_socket(pid), "session", move |req| {
            respond(req, &network, pid)
        })
        .map(SessionServer)
        .map_err(SessionError::Serve)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A running session: its network, shared with the session's control
/// socket ([`SessionServer`]) and with automatic publishing
/// ([`AutoPublisher`]), as `slirpnet run` and `slirpnet attach` keep it.
/// [`Session::end`] (or dropping it) stops serving, stops publishing, then
/// tears the network down.
#[derive(Debug)]
pub struct Session {
    shared: SharedNetwork,
    server: Option<SessionServer>,
    auto: Option<AutoPublisher>,
}

impl Session {
    /// Serves the control socket of session `pid` for `net`; without it
    /// the session still runs (its ports just cannot be changed), with a
    /// warning. Starts automatic publishing when the network was set up
    /// with it.
    ///
    /// # Errors
    ///
    /// Automatic publishing cannot start; the network has been torn down.
    pub fn serve(net: Network, pid: u32) -> Result<Self, SessionError> {
        let shared: SharedNetwork = Arc::new(Mutex::new(Some(net)));
        let server = match SessionServer::start(shared.clone(), pid) {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::warn!("ports cannot be changed while this session runs: {e}");
                None
            }
        };
        let mut session = Session {
            shared,
            server,
            auto: None,
        };
        match AutoPublisher::start(&session.shared) {
            Ok(auto) => session.auto = auto,
            Err(e) => {
                session.end();
                return Err(e.into());
            }
        }
        Ok(session)
    }

    /// The control socket, when it is served.
    pub fn path(&self) -> Option<&Path> {
        self.server.as_ref().map(SessionServer::path)
    }

    /// Runs `f` on the network while the session runs; the default after
    /// it ended.
    pub fn with<T: Default>(&self, f: impl FnOnce(&mut Network) -> T) -> T {
        let mut guard = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().map(f).unwrap_or_default()
    }

    /// Stops serving the control socket (removing it) and publishing, then
    /// tears the network down: forwarder first, then slirp4netns. Returns
    /// how slirp4netns ended.
    pub fn end(mut self) -> Option<slirp_proc::Exit> {
        self.stop()
    }

    fn stop(&mut self) -> Option<slirp_proc::Exit> {
        drop(self.server.take());
        drop(self.auto.take());
        let net = self.shared.lock().unwrap_or_else(|p| p.into_inner()).take();
        net.map(Network::teardown)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

fn error(message: impl Into<String>) -> SessionReply {
    SessionReply::error(message.into())
}

/// Answers one request.
fn respond(request: SessionRequest, network: &SharedNetwork, pid: u32) -> SessionReply {
    let mut guard = network.lock().unwrap_or_else(|p| p.into_inner());
    let Some(net) = guard.as_mut() else {
        return error("the session is ending");
    };
    let result = match request {
        SessionRequest::Session => {
            return match net.forwards() {
                Ok(_) => SessionReply::Session(status(net, pid)),
                Err(e) => error(e.to_string()),
            }
        }
        SessionRequest::Ports(Request::List) => net.forwards().map(drop),
        SessionRequest::Ports(Request::Add { mappings }) => add(net, &mappings),
        SessionRequest::Ports(Request::Remove { ports }) => remove(net, &ports),
        _ => return error("unsupported request"),
    };
    match result {
        Ok(()) => SessionReply::Ports(Reply::Ok {
            forwards: entries(net),
        }),
        Err(e) => error(e.to_string()),
    }
}

/// The mappings of a port request, expanded once here where they enter,
/// then forwarded.
fn add(net: &mut Network, mappings: &[PortMapping]) -> Result<(), crate::PortChangeError> {
    net.add_ports(&expand_all(mappings)?).map(drop)
}

fn remove(net: &mut Network, ports: &[PortKey]) -> Result<(), crate::PortChangeError> {
    net.remove_ports(ports).map(drop)
}

fn entries(net: &Network) -> Vec<ForwardEntry> {
    net.info()
        .forwards
        .iter()
        .map(|f| ForwardEntry {
            auto: f.auto,
            ..ForwardEntry::from(&f.forward)
        })
        .collect()
}

fn status(net: &Network, pid: u32) -> SessionStatus {
    let info = net.info();
    SessionStatus {
        pid,
        netns: net.target().netns_path().display().to_string(),
        port_handler: info.port_handler,
        forwarder: info.forwarder.clone(),
        slirp4netns_pid: info.pid,
        forwards: entries(net),
    }
}

/// Sends `req` to the session socket at `path`; its reply, within
/// [`REPLY_TIMEOUT`].
///
/// # Errors
///
/// Nobody answers there, no reply came in time, or it is malformed.
pub fn request(path: &Path, req: &SessionRequest) -> Result<SessionReply, ControlError> {
    slirp_api::control::request(path, req, REPLY_TIMEOUT)
}

/// Sends the port request `req` to the session socket at `path`; every
/// forward after it.
///
/// # Errors
///
/// The errors of [`request`], [`SessionError::Refused`] with the
/// session's own words when nothing changed.
pub fn ports(path: &Path, req: &Request) -> Result<Vec<ForwardEntry>, SessionError> {
    match request(path, &SessionRequest::Ports(req.clone()))? {
        SessionReply::Ports(reply) => reply.into_forwards().map_err(SessionError::Refused),
        other => Err(SessionError::Unexpected {
            path: path.to_owned(),
            reply: serde_json::to_string(&other).unwrap_or_default(),
        }),
    }
}

/// Every running session of this user that answers, by pid. A socket
/// nobody answers (its session was killed) is removed.
pub fn sessions() -> Vec<SessionStatus> {
    let Ok(dir) = std::fs::read_dir(session_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        let is_session = path.extension().is_some_and(|e| e == "sock")
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.parse::<u32>().is_ok());
        if !is_session {
            continue;
        }
        match request(&path, &SessionRequest::Session) {
            Ok(SessionReply::Session(status)) => out.push(status),
            // Refused: nobody listens (a killed session). A session that is
            // only slow is left alone, and so is anything but a socket.
            Err(ControlError::Connect { error, .. })
                if error.raw_os_error() == Some(nix::libc::ECONNREFUSED)
                    && std::fs::symlink_metadata(&path).is_ok_and(|m| {
                        std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
                    }) =>
            {
                tracing::debug!(path = %path.display(), "removing a dead session's socket");
                let _ = std::fs::remove_file(&path);
            }
            other => tracing::warn!(path = %path.display(), ?other, "a session answered oddly"),
        }
    }
    out.sort_by_key(|s| s.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::{PortHandler, Reply, Request, SessionReply, SessionRequest, SessionStatus};

    #[test]
    fn the_wire_is_the_port_protocol_plus_the_session_request() {
        let cases = [
            (SessionRequest::Session, r#"{"op":"session"}"#),
            (SessionRequest::Ports(Request::List), r#"{"op":"list"}"#),
            (
                SessionRequest::Ports(Request::Remove { ports: Vec::new() }),
                r#"{"op":"remove","ports":[]}"#,
            ),
        ];
        for (req, text) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), text);
            assert_eq!(serde_json::from_str::<SessionRequest>(text).unwrap(), req);
        }
        let err = serde_json::from_str::<SessionRequest>(r#"{"op":"remove","ports":[],"x":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
        let err = serde_json::from_str::<SessionRequest>(r#"{"op":"session","x":1}"#).unwrap_err();
        assert!(err.to_string().contains("no field but `op`"), "{err}");

        let status = SessionStatus {
            pid: 1,
            netns: "/n".into(),
            port_handler: PortHandler::Rootlesskit,
            forwarder: None,
            slirp4netns_pid: 2,
            forwards: Vec::new(),
        };
        let replies = [
            (
                SessionReply::Session(status),
                r#"{"session":{"pid":1,"netns":"/n","port_handler":"rootlesskit","forwarder":null,"slirp4netns_pid":2,"forwards":[]}}"#,
            ),
            (
                SessionReply::Ports(Reply::Ok {
                    forwards: Vec::new(),
                }),
                r#"{"ok":{"forwards":[]}}"#,
            ),
            (
                SessionReply::Ports(Reply::Error {
                    message: "no".into(),
                }),
                r#"{"error":{"message":"no"}}"#,
            ),
        ];
        for (reply, text) in replies {
            assert_eq!(serde_json::to_string(&reply).unwrap(), text);
            assert_eq!(serde_json::from_str::<SessionReply>(text).unwrap(), reply);
        }
    }
}
