//! `slirpnet`: give a command, or an existing network namespace, user-mode
//! networking through slirp4netns.

mod manual;
mod output;

use std::ffi::OsString;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slirp_api::portctl::Request as PortRequest;
use slirp_opts::{expand_all, parse_port_spec, Forward, NetworkOptions, PortMapping, Target};
use slirpnet::session::Session;
use slirpnet::{
    plan, AutoPublish, ForwarderChoice, NsChild, NsCommand, Plan, PortKey, RemovalError,
    SetupOptions, SpawnError,
};

/// Our own failure (bad input, setup failed), as podman and runc use it.
const EXIT_OWN_FAILURE: u8 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "slirpnet",
    version,
    about = "User-mode networking for network namespaces, through slirp4netns",
    long_about = "User-mode networking for network namespaces, through slirp4netns.\n\nslirpnet gives a command (run) or an existing network namespace (attach) user-mode networking: it starts slirp4netns for the namespace, waits until it is ready, and forwards host ports into it, through rootlessport (the default, port_handler=rootlesskit) or through slirp4netns itself (port_handler=slirp4netns). The ports of a running session can be listed and changed without restarting it (ps, port).",
    after_help = "Logs go to stderr; set RUST_LOG=debug for more. Exit status: 0 ok, 125 slirpnet's own failure, otherwise the command's."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a command in a new network namespace with working networking
    /// (plus a new user namespace mapping you to root when not root).
    Run(RunArgs),
    /// Network an existing namespace and stay in the foreground until
    /// SIGINT/SIGTERM or until slirp4netns dies.
    Attach(AttachArgs),
    /// Show a namespace's interface: addresses, MAC and counters.
    Stats(StatsArgs),
    /// List this user's running sessions (run and attach).
    Ps(PsArgs),
    /// List, add or remove the forwarded ports of a running session.
    #[command(subcommand)]
    Port(PortCmd),
}

// The hidden subcommands: parsed with `Cli`'s, but kept out of
// `Cli::command()`, from which the man pages and completions are made. (A
// doc comment here would become the program's about text.)
#[derive(Debug, Subcommand)]
enum Internal {
    /// Internal: write the man pages and shell completions (for
    /// `cargo xtask install`).
    #[command(name = "__generate", hide = true)]
    Generate(manual::GenerateArgs),
}

/// What the command line asks for.
enum Invocation {
    Public(Cli),
    Internal(Internal),
}

/// Parses the command line: the public subcommands and the hidden ones.
fn parse() -> Result<Invocation, clap::Error> {
    let mut cmd = Internal::augment_subcommands(Cli::command());
    let matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
    let parsed = match matches.subcommand_name() {
        Some(name) if Internal::has_subcommand(name) => {
            Internal::from_arg_matches(&matches).map(Invocation::Internal)
        }
        _ => Cli::from_arg_matches(&matches).map(Invocation::Public),
    };
    parsed.map_err(|e| e.format(&mut cmd))
}

#[derive(Debug, Args)]
struct NetArgs {
    /// Publish a port, podman syntax: [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO[,PROTO]]
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
    /// A slirp4netns network option, podman syntax: cidr=, mtu=, enable_ipv6=,
    /// allow_host_loopback=, port_handler=, outbound_addr=, outbound_addr6=
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// The slirp4netns binary (default: slirp4netns on PATH)
    #[arg(long = "slirp4netns", value_name = "PATH")]
    slirp4netns: Option<PathBuf>,
    /// The port forwarder binary for port_handler=rootlesskit, started as
    /// podman starts its rootlessport helper (default: our rootlessport next
    /// to slirpnet, else in ../libexec/slirpnet/ from it, else on PATH;
    /// podman's own is used only when named here)
    #[arg(long = "rootlessport", value_name = "PATH")]
    rootlessport: Option<PathBuf>,
    /// With the rootlesskit port handler, show every client to the
    /// namespace as the namespace's own address (the Go helper's way)
    /// instead of its real address
    #[arg(long)]
    hide_source_ip: bool,
    /// Forward every port the namespace listens on (TCP listeners, bound
    /// UDP sockets; wildcard or the namespace's own address) to the same
    /// port on the host at HOST_IP (default 127.0.0.1), while it listens
    #[arg(
        long = "publish-auto",
        value_name = "HOST_IP",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "127.0.0.1"
    )]
    publish_auto: Option<IpAddr>,
    /// Ports --publish-auto leaves alone: ports and ranges (22,8000-8010);
    /// may be repeated
    #[arg(
        long = "publish-auto-exclude",
        value_name = "PORTS",
        requires = "publish_auto"
    )]
    publish_auto_exclude: Vec<String>,
    /// Print the setup as JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Print the plan (argv, addresses, forwards) and start nothing
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Leave /etc/resolv.conf as it is instead of pointing it at slirp4netns's DNS
    #[arg(long)]
    no_resolv_conf: bool,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct AttachArgs {
    #[command(flatten)]
    net: NetArgs,
    /// The network namespace file (/run/netns/NAME, /proc/PID/ns/net)
    #[arg(long, value_name = "PATH")]
    netns: PathBuf,
    /// The user namespace that owns it, for rootless use
    #[arg(long, value_name = "PATH")]
    userns: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PsArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum PortCmd {
    /// What a session forwards now
    Ls {
        #[command(flatten)]
        session: SessionArgs,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Forward more ports (all of them, or none)
    Add {
        #[command(flatten)]
        session: SessionArgs,
        /// A port, podman syntax, as for run
        #[arg(short = 'p', long = "publish", value_name = "SPEC", required = true)]
        publish: Vec<String>,
    },
    /// Stop forwarding ports (all of them, or none): the spec they were
    /// added with, or a host port alone ([HOST_IP:]HOST_PORT[-END][/PROTO])
    Rm {
        #[command(flatten)]
        session: SessionArgs,
        /// A port, as added, or a host port alone
        #[arg(short = 'p', long = "publish", value_name = "SPEC", required = true)]
        publish: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct SessionArgs {
    /// The session: the pid of a `slirpnet run` or `slirpnet attach`
    #[arg(long)]
    pid: Option<u32>,
    /// The session: the network namespace it serves
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// The network namespace file
    #[arg(long, value_name = "PATH")]
    netns: PathBuf,
    /// The interface
    #[arg(long, default_value = "tap0")]
    interface: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(Invocation::Public(cli)) => cli,
        Ok(Invocation::Internal(Internal::Generate(args))) => {
            return finish(manual::generate(&args, Cli::command()).map(|()| ExitCode::SUCCESS))
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_OWN_FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Attach(args) => attach(args),
        Cmd::Stats(args) => stats(args).map(|()| ExitCode::SUCCESS),
        Cmd::Ps(args) => ps(args).map(|()| ExitCode::SUCCESS),
        Cmd::Port(cmd) => port(cmd).map(|()| ExitCode::SUCCESS),
    };
    finish(result)
}

/// The exit status of `result`, with a failure reported on stderr: the
/// error and its causes on one line (each library error prints its cause
/// either in its message or as its source, never both), and what to change
/// on this command line when the library's words name a setting.
fn finish(result: Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        let mut stderr = std::io::stderr();
        // A closed stderr must not turn a failure into a panic.
        let _ = match advice(&e) {
            Some(advice) => writeln!(stderr, "slirpnet: {e:#}; with this program: {advice}"),
            None => writeln!(stderr, "slirpnet: {e:#}"),
        };
        ExitCode::from(EXIT_OWN_FAILURE)
    })
}

/// The options of this program that fix `e`, where the library names its
/// own settings.
fn advice(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|cause| {
        // Transparent wrappers are not in the chain: look inside them.
        let forwarder = cause
            .downcast_ref::<slirpnet::ForwarderError>()
            .or(match cause.downcast_ref() {
                Some(slirpnet::SetupError::Forwarder(e)) => Some(e),
                _ => None,
            });
        let binary = cause
            .downcast_ref::<slirpnet::BinaryError>()
            .or(match cause.downcast_ref() {
                Some(slirpnet::SetupError::Binary(e)) => Some(e),
                _ => None,
            });
        if let Some(slirpnet::ForwarderError::NotFound) = forwarder {
            return Some(
                "build rootlessport (cargo build -p rootlessport) or install both (cargo xtask install), \
                 name a forwarder with --rootlessport PATH, or use -o port_handler=slirp4netns",
            );
        }
        if let Some(slirpnet::BinaryError::NotFound) = binary {
            return Some("install slirp4netns (apt-get install slirp4netns), or name it with --slirp4netns PATH");
        }
        None
    })
}

/// Parses -o and -p, assigns free host ports where none were given, and
/// checks the ports into forwards.
fn parse_net(net: &NetArgs) -> Result<(NetworkOptions, Vec<Forward>)> {
    let iface_exists = |name: &str| Path::new("/sys/class/net").join(name).exists();
    let options = NetworkOptions::parse(&[] as &[&str], false, &net.options, iface_exists)?;
    let mappings = parse_specs(&net.publish)?;
    Ok((options, expand_all(&mappings)?))
}

/// Parses `-p` values, assigning a free host port where none was given.
fn parse_specs(specs: &[String]) -> Result<Vec<PortMapping>> {
    let mut mappings = Vec::new();
    for spec in specs {
        let mut m = parse_port_spec(spec)?;
        if m.host_port == 0 {
            m.host_port = slirpnet::free_host_port(&m).with_context(|| format!("-p {spec}"))?;
        }
        mappings.push(m);
    }
    Ok(mappings)
}

/// Prints the report of a setup that is running. Its reader may be gone
/// already (a pipe closed after the JSON, `| head`): the network is up and
/// the session goes on, so a failed write is only logged.
fn report_setup(net: &NetArgs, info: &slirpnet::SetupInfo, out: &mut dyn Write) {
    if let Err(e) = output::print(out, net.json, info, output::table) {
        tracing::debug!("the setup report was not written in full: {e}");
    }
}

/// The setup options every subcommand shares.
fn setup_options(
    net: &NetArgs,
    network: NetworkOptions,
    ports: Vec<Forward>,
) -> Result<SetupOptions> {
    let mut opts = SetupOptions::new(network)
        .with_ports(ports)
        .with_keep_source_ip(!net.hide_source_ip);
    if let Some(binary) = &net.slirp4netns {
        opts = opts.with_binary(binary);
    }
    if let Some(path) = &net.rootlessport {
        opts = opts.with_forwarder(ForwarderChoice::Binary(path.clone()));
    }
    if let Some(host_ip) = net.publish_auto {
        let mut auto = AutoPublish::new(host_ip);
        for list in &net.publish_auto_exclude {
            auto.exclude.extend(slirpnet::parse_port_list(list)?);
        }
        opts = opts.with_publish_auto(auto);
    }
    Ok(opts)
}

fn dry_run(net: &NetArgs, plan: &Plan, target: &Target) -> Result<ExitCode> {
    let args = plan.args_for(target)?;
    let report = output::DryRun::new(&plan.info, &plan.binary, &args);
    output::print(
        &mut std::io::stdout().lock(),
        net.json,
        &report,
        output::dry_run,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn attach(args: AttachArgs) -> Result<ExitCode> {
    let (network, ports) = parse_net(&args.net)?;
    let target = Target::Path {
        netns: args.netns.clone(),
        userns: args.userns.clone(),
    };
    // SetupOptions::new chose what this process's privilege allows.
    let mut opts = setup_options(&args.net, network, ports)?;
    if args.userns.is_some() {
        // Rootless with the namespace's user namespace named: slirp4netns
        // runs in it, where it may make its sandbox's mount namespace.
        opts = opts.with_sandbox_in_userns();
    }
    let checked = plan(&opts)?;
    if args.net.dry_run {
        return dry_run(&args.net, &checked, &target);
    }
    netns_util::Netns::open(&args.netns)?;
    let signals = block_signals()?;
    let net = checked.start(target)?;
    report_setup(&args.net, net.info(), &mut std::io::stdout().lock());
    let session = Session::serve(net, std::process::id())?;
    loop {
        let sig = next_signal(&signals)?;
        if sig == Signal::SIGCHLD {
            let died = session.with(|net| {
                let exit = net.slirp().exited_within(std::time::Duration::ZERO)?;
                Some(format!("{exit}): {}", net.slirp().log_text()))
            });
            if let Some(what) = died {
                session.end();
                bail!("slirp4netns exited ({what}");
            }
            continue;
        }
        tracing::info!(%sig, "tearing down");
        session.end();
        return Ok(ExitCode::SUCCESS);
    }
}

fn ps(args: PsArgs) -> Result<()> {
    let sessions = slirpnet::session::sessions();
    output::print(
        &mut std::io::stdout().lock(),
        args.json,
        &sessions,
        |s, out| output::sessions(s, out),
    )?;
    Ok(())
}

/// The control socket of the session `args` names.
fn session_path(args: &SessionArgs) -> Result<PathBuf> {
    match (args.pid, &args.netns) {
        (Some(pid), _) => Ok(slirpnet::session::socket_of_pid(pid)?),
        (None, Some(netns)) => Ok(slirpnet::session::socket_of_netns(netns)?),
        (None, None) => bail!("--pid or --netns"),
    }
}

fn port(cmd: PortCmd) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let ask = |path: &Path, req: &PortRequest| slirpnet::session::ports(path, req);
    match cmd {
        PortCmd::Ls { session, json } => {
            let forwards = ask(&session_path(&session)?, &PortRequest::List)?;
            output::print(&mut out, json, &forwards, |f, out| output::forwards(f, out))?;
        }
        PortCmd::Add { session, publish } => {
            let path = session_path(&session)?;
            let mappings = parse_specs(&publish)?;
            let forwards = ask(&path, &PortRequest::Add { mappings })?;
            output::forwards(&forwards, &mut out)?;
        }
        PortCmd::Rm { session, publish } => {
            let path = session_path(&session)?;
            let now: Vec<Forward> = ask(&path, &PortRequest::List)?
                .into_iter()
                .map(Forward::from)
                .collect();
            let mut keys: Vec<PortKey> = Vec::new();
            for spec in &publish {
                let named = slirpnet::removal_keys(spec, &now).map_err(|e| match e {
                    RemovalError::NotForwarded { .. } => anyhow!("-p {e}"),
                    e => e.into(),
                })?;
                for key in named {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
            let forwards = ask(&path, &PortRequest::Remove { ports: keys })?;
            output::forwards(&forwards, &mut out)?;
        }
    }
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    let ns = netns_util::Netns::open(&args.netns)?;
    let info = netns_util::interface_info(&ns, &args.interface)?;
    output::print(
        &mut std::io::stdout().lock(),
        args.json,
        &info,
        output::stats,
    )?;
    Ok(())
}

/// Blocks the signals we handle in this thread (before any other starts)
/// and returns a signalfd for them. Children get a clean mask from std.
fn block_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        mask.add(sig);
    }
    mask.thread_block().context("failed to block signals")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).context("failed to create a signalfd")
}

/// The next signal, and whether a process (not the terminal) sent it.
fn next_signal_info(fd: &SignalFd) -> Result<(Signal, bool)> {
    loop {
        match fd.read_signal() {
            Ok(Some(info)) => {
                let sig = Signal::try_from(info.ssi_signo as i32)
                    .map_err(|e| anyhow!("bad signal number: {e}"))?;
                let from_process = info.ssi_code <= 0; // SI_USER, SI_QUEUE, SI_TKILL
                return Ok((sig, from_process));
            }
            Ok(None) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("failed to read the signalfd"),
        }
    }
}

fn next_signal(fd: &SignalFd) -> Result<Signal> {
    next_signal_info(fd).map(|(s, _)| s)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let (network, ports) = parse_net(&args.net)?;
    // SetupOptions::new chose what this process's privilege allows (the
    // rootless settings when it lacks CAP_SYS_ADMIN); rootless,
    // slirp4netns runs in the command's user namespace, where it may make
    // the mount namespace its sandbox (`--enable-sandbox`) needs.
    let mut opts = setup_options(&args.net, network, ports)?.with_sandbox_in_userns();
    // The namespace's init holds accept_dad from inside.
    opts.toggle_accept_dad = false;
    // Everything that can be checked is checked before anything starts.
    let checked = plan(&opts)?;
    let mut ns = checked.ns_options();
    if args.no_resolv_conf {
        ns.nameservers.clear();
    }
    if args.net.dry_run {
        // The namespaces do not exist yet: show where they will be.
        let shown = Target::Path {
            netns: "/proc/PID/ns/net".into(),
            userns: ns.user_namespace.then(|| "/proc/PID/ns/user".into()),
        };
        return dry_run(&args.net, &checked, &shown);
    }
    let mut command = NsCommand::new(&args.command[0]);
    command.args(&args.command[1..]);

    let signals = block_signals()?;
    // The library's way, step by step, so that the report and the session's
    // control socket come before the command runs.
    let mut child = match NsChild::spawn(&command, &ns) {
        Ok(child) => child,
        Err(e @ SpawnError::NotFound { .. }) => {
            let _ = writeln!(std::io::stderr(), "slirpnet: {e}");
            return Ok(ExitCode::from(127));
        }
        Err(e) => return Err(e.into()),
    };
    let net = checked.start(child.target())?; // on failure the child is killed
    if args.net.json || std::env::var_os("SLIRPNET_QUIET").is_none() {
        report_setup(&args.net, net.info(), &mut std::io::stderr().lock());
    }
    // On failure the child is dropped, which kills its namespace.
    let session = Session::serve(net, std::process::id())?;
    match child.go() {
        Ok(()) => {}
        // It exits 127 or 126, which becomes ours below.
        Err(e @ SpawnError::Command { .. }) => {
            let _ = writeln!(std::io::stderr(), "slirpnet: {e}");
        }
        Err(e) => {
            session.end();
            return Err(e.into());
        }
    }
    supervise(&signals, &mut child, session)
}

/// Waits for the command, passing on signals sent to us, then tears down.
/// The command's namespace ends with it: whatever it left running is killed
/// by the kernel when the namespace's init exits.
fn supervise(signals: &SignalFd, child: &mut NsChild, session: Session) -> Result<ExitCode> {
    let mut warned = false;
    loop {
        let (sig, from_process) = next_signal_info(signals)?;
        if sig == Signal::SIGCHLD {
            if let Some(status) = child.try_wait()? {
                // What the command sent last may still be on its way out.
                let waited = session.with(|net| {
                    Some(
                        net.slirp()
                            .drain(Duration::from_millis(100), Duration::from_secs(2)),
                    )
                });
                tracing::debug!(?waited, "drained slirp4netns");
                let exit = session.end();
                tracing::debug!(?exit, "slirp4netns stopped");
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(EXIT_OWN_FAILURE.into());
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            if !warned {
                let died = session.with(|net| {
                    let exit = net.slirp().exited_within(std::time::Duration::ZERO)?;
                    Some(format!(
                        "{exit}); the namespace has no network now: {}",
                        net.slirp().log_text()
                    ))
                });
                if let Some(what) = died {
                    warned = true;
                    tracing::error!("slirp4netns exited ({what}");
                }
            }
            continue;
        }
        // A terminal's signal already reached the command (same process
        // group); pass on only what a process sent to us. The namespace's
        // init passes it on to the command.
        if from_process {
            let _ = child.signal(sig);
        }
    }
}
