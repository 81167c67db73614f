//! A command in its own networked namespace: [`Plan::run`] puts an
//! [`NsChild`] and a [`Network`] together, as `slirpnet run` does.

use std::net::IpAddr;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::child::{NsChild, NsCommand, NsOptions, SpawnError};
use crate::error::SetupError;
use crate::network::Network;
use crate::plan::Plan;
use crate::report::SetupInfo;

/// A failure of [`Plan::run`]. Nothing it started is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Starting the command in its namespaces.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Networking its namespace.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

impl Plan {
    /// How [`Plan::run`] isolates a command for this plan: [`NsOptions::new`]
    /// (a user namespace when this process lacks CAP_SYS_ADMIN), a
    /// resolv.conf naming the network's DNS, IPv6 `accept_dad` held at 0
    /// while slirp4netns starts when IPv6 is on.
    pub fn ns_options(&self) -> NsOptions {
        let mut ns = NsOptions::new();
        ns.nameservers.push(IpAddr::V4(self.info.dns));
        if let Some(dns6) = self.info.dns_v6 {
            ns.nameservers.push(IpAddr::V6(dns6));
        }
        ns.hold_accept_dad = self.info.ipv6;
        ns
    }

    /// Runs `command` in new namespaces networked by this plan: starts it
    /// there ([`NsChild::spawn`]), starts slirp4netns and the port forwarder
    /// for them ([`Plan::start`]), then lets the command run. The guarantee
    /// is `slirpnet run`'s: when the command ends, or the returned value is
    /// dropped, or this process dies (even by SIGKILL), every process in
    /// the namespace is killed, and the network goes with it.
    ///
    /// The `accept_dad` toggle is done from inside (`ns.hold_accept_dad`),
    /// so the plan's own is not used.
    ///
    /// # Errors
    ///
    /// The command cannot be started in its namespaces, the network cannot
    /// be set up, or the command cannot be executed; whatever was started
    /// is stopped.
    pub fn run(self, command: &NsCommand, ns: &NsOptions) -> Result<RunningCommand, RunError> {
        let mut child = NsChild::spawn(command, ns)?;
        let network = self.accept_dad_from_inside().start(child.target())?;
        child.go()?;
        Ok(RunningCommand { child, network })
    }
}

/// A command running in its own networked namespace, from [`Plan::run`].
/// Dropping it kills everything in the namespace, then tears the network
/// down.
#[derive(Debug)]
pub struct RunningCommand {
    // Field order is drop order: the namespace's processes go first.
    child: NsChild,
    network: Network,
}

impl RunningCommand {
    /// The namespace's init, as this process sees it (see [`NsChild::pid`]).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What the network's setup made: addresses, forwards.
    pub fn info(&self) -> &SetupInfo {
        self.network.info()
    }

    /// The network: its addresses and forwards, ports to add or remove.
    pub fn network(&mut self) -> &mut Network {
        &mut self.network
    }

    /// Sends `signal` to the command (through the namespace's init).
    ///
    /// # Errors
    ///
    /// kill(2) failed.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        self.child.signal(signal)
    }

    /// The command's exit status, if it has exited (without blocking).
    ///
    /// # Errors
    ///
    /// waitpid(2) failed.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Errno> {
        self.child.try_wait()
    }

    /// Waits for the command, lets what it sent last leave slirp4netns, and
    /// tears the network down. Returns the command's exit status.
    ///
    /// # Errors
    ///
    /// waitpid(2) failed; the network is torn down all the same.
    pub fn wait(mut self) -> Result<ExitStatus, Errno> {
        let status = self.child.wait()?;
        self.network
            .slirp()
            .drain(Duration::from_millis(100), Duration::from_secs(2));
        let RunningCommand { child, network } = self;
        drop(child);
        network.teardown();
        Ok(status)
    }

    /// The parts, for a caller that supervises them itself (as `slirpnet
    /// run` does). Dropping either still ends what it owns.
    pub fn into_parts(self) -> (NsChild, Network) {
        (self.child, self.network)
    }
}
