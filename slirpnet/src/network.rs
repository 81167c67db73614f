//! A running network: [`Network`] owns slirp4netns, the port handler and
//! the API socket's directory, and changes the forwards while it runs.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slirp_opts::{check_forwards, Forward, PortKey, Protocol, Target};
use slirp_proc::{Exit, Slirp};

use crate::error::SetupError;
use crate::handler::Ports;
use crate::options::AutoPublish;
use crate::portfwd::PortChangeError;
use crate::report::{ForwardInfo, SetupInfo};

/// A networked namespace: owns slirp4netns, the port handler (and the
/// port forwarder it runs) and the API socket's directory. Dropping it
/// tears everything down; [`Network::teardown`] does so and reports how
/// slirp4netns ended.
#[derive(Debug)]
pub struct Network {
    info: SetupInfo,
    // Field order is drop order: the port forwarder stops first, then
    // slirp4netns (which unlinks its socket), then the directory goes.
    ports: Box<dyn Ports>,
    slirp: Slirp,
    _api_dir: Option<tempfile::TempDir>,
    target: Target,
    /// `--publish-auto`, and the forwards it made.
    auto: Option<AutoPublish>,
    auto_keys: HashSet<PortKey>,
}

/// A session's network, shared between the session, its control socket
/// and automatic publishing; `None` once the session is ending.
pub type SharedNetwork = Arc<Mutex<Option<Network>>>;

impl Network {
    pub(crate) fn new(
        info: SetupInfo,
        ports: Box<dyn Ports>,
        slirp: Slirp,
        api_dir: Option<tempfile::TempDir>,
        target: Target,
        auto: Option<AutoPublish>,
    ) -> Self {
        Network {
            info,
            ports,
            slirp,
            _api_dir: api_dir,
            target,
            auto,
            auto_keys: HashSet::new(),
        }
    }

    /// Makes the setup's own forwards through its handler.
    pub(crate) fn start_ports(&mut self, forwards: &[Forward]) -> Result<(), SetupError> {
        self.info.forwards = self.ports.start(&mut self.slirp, forwards)?;
        self.reported();
        Ok(())
    }

    /// What the handler says of itself, into the report.
    fn reported(&mut self) {
        self.info.forwarder = self.ports.forwarder().cloned();
        self.info.keep_source_ip = self.ports.keeps_source_ip();
    }

    /// Every forward now, as the handler reports it (slirp4netns's
    /// `list_hostfwd`, or the forwarder's own list), also kept in
    /// [`info`](Network::info).
    ///
    /// # Errors
    ///
    /// The handler cannot be asked.
    pub fn forwards(&mut self) -> Result<&[ForwardInfo], PortChangeError> {
        self.info.forwards = self.ports.list()?;
        self.mark_auto();
        Ok(&self.info.forwards)
    }

    /// Forwards `forwards` too, at once and through the session's handler:
    /// all of them, or none when one cannot be (a port in use, forwarded
    /// already, ...). With the rootlesskit handler and no forwarder yet, one
    /// is started. Forwards that automatic publishing made exactly so are
    /// taken over instead (no longer automatic). Returns every forward now.
    ///
    /// # Errors
    ///
    /// Two of `forwards` name one host port, one is taken, or the handler
    /// refused; nothing was added.
    pub fn add_ports(&mut self, forwards: &[Forward]) -> Result<&[ForwardInfo], PortChangeError> {
        check_forwards(forwards)?;
        // Asked for exactly as automatic publishing made them: they become
        // the caller's, and stay when their socket closes.
        let automatic = |f: &Forward| {
            self.auto_keys.contains(&f.key())
                && self
                    .info
                    .forwards
                    .iter()
                    .any(|i| i.key() == f.key() && i.forward.container_port == f.container_port)
        };
        if !forwards.is_empty() && forwards.iter().all(automatic) {
            for f in forwards {
                self.auto_keys.remove(&f.key());
            }
            self.mark_auto();
            return Ok(&self.info.forwards);
        }
        for f in forwards {
            let key = f.key();
            if self.info.forwards.iter().any(|i| i.key() == key) {
                return Err(PortChangeError::AlreadyForwarded(key));
            }
        }
        let result = self.ports.add(forwards);
        self.reported();
        self.info.forwards = result?;
        self.mark_auto();
        Ok(&self.info.forwards)
    }

    /// Stops forwarding `ports` (by protocol, host address and host port):
    /// all of them, or none when one is not forwarded. When this returns
    /// their listeners are closed: a new connection is refused, and one
    /// queued but not yet taken by the forwarder is reset. Connections
    /// already open carry on. Returns every forward now.
    ///
    /// # Errors
    ///
    /// A port is not forwarded, or the handler refused; nothing was removed.
    pub fn remove_ports(&mut self, ports: &[PortKey]) -> Result<&[ForwardInfo], PortChangeError> {
        for key in ports {
            if !self.info.forwards.iter().any(|i| i.key() == *key) {
                return Err(PortChangeError::NotForwarded(*key));
            }
        }
        self.info.forwards = self.ports.remove(ports)?;
        self.mark_auto();
        Ok(&self.info.forwards)
    }

    /// Marks the automatic forwards in `info.forwards`, forgetting those
    /// that are gone (removed by hand).
    fn mark_auto(&mut self) {
        // 0.0.0.0 and "all addresses" are one forward (slirp4netns lists
        // the one as the other).
        let plain = |k: &PortKey| {
            let ip = k
                .host_ip
                .filter(|ip| *ip != IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            (k.proto, ip, k.host_port)
        };
        let wanted: HashSet<_> = self.auto_keys.iter().map(plain).collect();
        let mut now = HashSet::new();
        for f in &mut self.info.forwards {
            f.auto = wanted.contains(&plain(&f.key()));
            if f.auto {
                now.insert(f.key());
            }
        }
        self.auto_keys = now;
    }

    /// What automatic publishing this network was set up with.
    pub fn auto_publish(&self) -> Option<&AutoPublish> {
        self.auto.as_ref()
    }

    /// The forwards made by automatic publishing.
    pub(crate) fn auto_forwards(&self) -> impl Iterator<Item = PortKey> + '_ {
        self.auto_keys.iter().copied()
    }

    /// [`Network::add_ports`], marking what it adds as automatic.
    pub(crate) fn add_auto(&mut self, forwards: &[Forward]) -> Result<(), PortChangeError> {
        let added: HashSet<(Protocol, u16)> =
            forwards.iter().map(|f| (f.proto, f.host_port)).collect();
        self.add_ports(forwards)?;
        // As the handler names them (slirp4netns reports 0.0.0.0 as all).
        let keys: Vec<PortKey> = self
            .info
            .forwards
            .iter()
            .filter(|f| added.contains(&(f.forward.proto, f.forward.host_port)))
            .map(ForwardInfo::key)
            .collect();
        self.auto_keys.extend(keys);
        self.mark_auto();
        Ok(())
    }

    /// [`Network::remove_ports`] for automatic forwards.
    pub(crate) fn remove_auto(&mut self, ports: &[PortKey]) -> Result<(), PortChangeError> {
        self.remove_ports(ports).map(drop)
    }

    /// The namespace it serves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What was set up.
    pub fn info(&self) -> &SetupInfo {
        &self.info
    }

    /// The slirp4netns process.
    pub fn slirp(&mut self) -> &mut Slirp {
        &mut self.slirp
    }

    /// Stops the port forwarder first (no new connection is accepted into a
    /// namespace that is losing its network), then slirp4netns (closing its
    /// exit pipe, SIGKILL after 2 s), reaps both and removes the API
    /// socket's directory. Returns how slirp4netns ended.
    pub fn teardown(self) -> Exit {
        let Network {
            ports,
            slirp,
            _api_dir,
            ..
        } = self;
        ports.stop();
        let exit = slirp.stop(Duration::from_secs(2));
        drop(_api_dir);
        exit
    }
}
