//! Test harness: prerequisites that fail on CI and skip elsewhere, and the
//! namespaces and slirp4netns processes the tests make for themselves.
// The harness is not published and its functions panic or fail a test with
// context: it documents no `# Errors` sections.
#![allow(clippy::missing_errors_doc)]

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

/// [`require`] with the real slirp4netns (and the privilege to run it) as
/// the prerequisite: what most end-to-end tests need.
pub fn require_slirp(test: &str) -> bool {
    require(test, real_slirp().map(drop))
}

/// What a rootless run as uid 65534 needs: the real slirp4netns, setpriv,
/// unprivileged user namespaces, and a `/dev/net/tun` everyone may open.
pub fn rootless_possible() -> Result<()> {
    real_slirp()?;
    which("setpriv").context("setpriv (util-linux) is missing")?;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "-rn", "true"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "unprivileged user namespaces are off: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/net/tun")?.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode == 0o666,
        "/dev/net/tun is mode {mode:o}, not 0666 (run cargo xtask setup)"
    );
    Ok(())
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

/// [`require`] with the privilege to make and administer network
/// namespaces (CAP_SYS_ADMIN and CAP_NET_ADMIN) and each of `tools` on PATH
/// as the prerequisite: what the forwarder's end-to-end tests need.
pub fn require_net_admin(test: &str, tools: &[&str]) -> bool {
    require(
        test,
        can_admin_net().and_then(|()| {
            for tool in tools {
                if which(tool).is_none() {
                    bail!("{tool} is missing (util-linux, iproute2)");
                }
            }
            Ok(())
        }),
    )
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

/// The `slirpnet` binary, freshly built (see [`built_bin`]).
pub fn slirpnet_bin() -> PathBuf {
    built_bin("slirpnet", "slirpnet")
}

/// The `rootlessport` binary, freshly built (see [`built_bin`]).
pub fn rootlessport_bin() -> PathBuf {
    built_bin("rootlessport", "rootlessport")
}

/// Binary `bin` of workspace package `package`, freshly built: `cargo test`
/// builds only the tested package's own binaries, so this runs `cargo build`
/// once per binary and test process (a no-op when it is up to date).
pub fn built_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == bin) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin} failed"
        );
        built.push(bin.to_owned());
    }
    dir.join(bin)
}

/// Example `name` of workspace package `package`, freshly built (once per
/// test process, as [`built_bin`] builds binaries).
pub fn built_example(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--example", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --example {name} failed"
        );
        built.push(name.to_owned());
    }
    dir.join("examples").join(name)
}

/// Copies programs into a fresh directory every user can read and run, for
/// tests that run them as an unprivileged user. Returns the directory and
/// the copies' paths, in order.
pub fn world_runnable(programs: &[&Path]) -> Result<(tempfile::TempDir, Vec<PathBuf>)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("slirpnet-bin-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut out = Vec::new();
    for p in programs {
        let dest = dir.path().join(p.file_name().context("program name")?);
        copy_by_child(p, &dest)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        out.push(dest);
    }
    Ok((dir, out))
}

/// A script that runs `program` inside `ns`'s network namespace (through
/// `nsenter`), keeping its argv empty and every inherited fd: for running a
/// forwarder in a namespace that plays the host, so that its clients can
/// have addresses the test made. Returns the directory and the script.
pub fn in_netns(ns: &PersistentNetns, program: &Path) -> Result<(tempfile::TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("slirpnet-in-netns-")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let path = dir.path().join("run-in-netns");
    let script = format!(
        "#!/bin/sh\nexec nsenter --net={} {}\n",
        ns.path.display(),
        program.display()
    );
    write_runnable(&path, script.as_bytes())?;
    Ok((dir, path))
}

/// Copies `from` to `to` with cp(1). A file this process opened for writing
/// may still be open in a child that another test's thread forked and that
/// has not exec'd yet; running the file then fails with ETXTBSY. cp's copy
/// was never open in this process.
pub fn copy_by_child(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp").arg(from).arg(to).status()?;
    anyhow::ensure!(
        status.success(),
        "cp {} {}: {status}",
        from.display(),
        to.display()
    );
    Ok(())
}

/// Writes an executable (mode 0755) file at `path` with `contents`, without
/// ever holding `path` open for writing in this process (see
/// [`copy_by_child`]): the text goes to a draft beside it first.
pub fn write_runnable(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut draft = path.as_os_str().to_owned();
    draft.push(".draft");
    let draft = PathBuf::from(draft);
    std::fs::write(&draft, contents)?;
    copy_by_child(&draft, path)?;
    std::fs::remove_file(&draft)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Writes an executable shell script standing in for slirp4netns: `--help`
/// prints the 1.2.0 help text, anything else runs `body`.
pub fn fake_slirp(body: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("fake-slirp-").tempdir()?;
    let path = dir.path().join("slirp4netns");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --help ]; then\ncat <<'HELP'\n{}\nHELP\nexit 0\nfi\n{body}\n",
        include_str!("../../slirp-opts/tests/data/help-1.2.0.txt")
    );
    write_runnable(&path, script.as_bytes())?;
    Ok((dir, path))
}

/// A persistent network namespace made by `netns_util::create_persistent`
/// under /run/netns, removed on drop.
#[derive(Debug)]
pub struct PersistentNetns {
    /// The bind-mount path.
    pub path: PathBuf,
}

impl PersistentNetns {
    /// Makes `/run/netns/slirpnet-test-<pid>-<name>`.
    pub fn new(name: &str) -> Result<Self> {
        let path = PathBuf::from(format!(
            "/run/netns/slirpnet-test-{}-{name}",
            std::process::id()
        ));
        if path.exists() {
            netns_util::remove_persistent(&path)?;
        }
        netns_util::create_persistent(&path)?;
        Ok(PersistentNetns { path })
    }

    /// Opens it.
    pub fn open(&self) -> netns_util::Netns {
        netns_util::Netns::open(&self.path).expect("open the test netns")
    }

    /// The name under /run/netns.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a /run/netns name")
    }

    /// Runs `ip -n NAME ARGS` (ARGS split at spaces); panics with its
    /// stderr when it fails.
    pub fn ip(&self, args: &str) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(self.name())
            .args(args.split(' '))
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {args}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A namespace with lo up and a veth pair v0 (10.77.0.1, fd77::1) and
    /// v1 (10.77.0.2, fd77::2), both ends inside: addresses a forwarder can
    /// dial that are not loopback.
    pub fn with_veth(name: &str) -> Self {
        let ns = PersistentNetns::new(name).expect("make a test netns");
        for args in [
            "link set lo up",
            "link add v0 type veth peer name v1",
            "addr add 10.77.0.1/24 dev v0",
            "addr add 10.77.0.2/24 dev v1",
            "addr add fd77::1/64 dev v0 nodad",
            "addr add fd77::2/64 dev v1 nodad",
            "link set v0 up",
            "link set v1 up",
        ] {
            ns.ip(args);
        }
        ns
    }

    /// rootlessport's stdin configuration for forwarding into this
    /// namespace, as podman writes it (no reload socket).
    pub fn rootlessport_config(&self, mappings: serde_json::Value, child_ip: &str) -> String {
        serde_json::json!({
            "Mappings": mappings,
            "NetNSPath": self.path,
            "ExitFD": 3,
            "ReadyFD": 4,
            "TmpDir": "/tmp",
            "ChildIP": child_ip,
            "ContainerID": "0123456789abcdef",
            "RootlessCNI": false,
        })
        .to_string()
    }
}

impl Drop for PersistentNetns {
    fn drop(&mut self) {
        if let Err(e) = netns_util::remove_persistent(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

/// Whether a process with this pid exists (zombies count).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Two `sleep` durations (in seconds) no other process is likely to use,
/// so that a command's background sleeps can be found on the host by
/// their argv, whatever PID namespace they run in.
pub fn unique_sleeps() -> (u64, u64) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    let base = 400_000 + u64::from(std::process::id() % 100_000) * 16 + n;
    (base, base + 1)
}

/// `program`, run directly or, with `as_user`, through setpriv as that uid
/// with no capabilities (rootless).
pub fn command_as(program: &Path, as_user: Option<u32>) -> Command {
    match as_user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
            ]);
            c.arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Starts `cmd` (ending in `sh -c`) with a script that leaves two `sleep`s
/// running in the background, then says "ready"; returns once both sleeps
/// run, with a function that lists their host pids (found by argv, so in
/// any PID namespace).
pub fn start_with_background_sleeps(mut cmd: Command) -> (Child, impl Fn() -> Vec<u32>) {
    use std::io::BufRead;
    let (a, b) = unique_sleeps();
    let mut child = cmd
        .arg(format!("sleep {a} & sleep {b} & echo ready; wait"))
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the command did not start");
    let (a, b) = (a.to_string(), b.to_string());
    let sleeps = move || {
        [&a, &b]
            .iter()
            .flat_map(|s| live_pids_with_argv(&["sleep", s]))
            .collect::<Vec<u32>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || sleeps().len() == 2),
        "the background sleeps did not start: {:?}",
        sleeps()
    );
    (child, sleeps)
}

/// The host pids of the live (not zombie) processes whose argv is `argv`.
pub fn live_pids_with_argv(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| {
            !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
                .unwrap_or(true)
        })
        .collect()
}

/// Waits up to `limit` until `done` holds; whether it did.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// rootlessport started exactly as podman starts it (argv `["rootlessport"]`,
/// the configuration on stdin, exit pipe at fd 3, ready pipe at fd 4), by
/// slirp-proc's helper start.
#[derive(Debug)]
pub struct Rootlessport {
    helper: Option<slirp_proc::Helper>,
    pid: u32,
}

impl Rootlessport {
    fn command(bin: &Path, config: &str) -> slirp_proc::HelperCommand {
        let mut cmd =
            slirp_proc::HelperCommand::new(bin, "rootlessport", config.as_bytes().to_vec());
        cmd.stderr = slirp_proc::HelperStderr::Null;
        cmd.ready_timeout = Duration::from_secs(20);
        cmd
    }

    /// Starts `bin` with `config` (any text) on stdin and waits for ready.
    pub fn start(bin: &Path, config: &str) -> std::result::Result<Self, slirp_proc::HelperError> {
        let helper = Self::command(bin, config).start()?;
        Ok(Rootlessport {
            pid: helper.pid(),
            helper: Some(helper),
        })
    }

    /// Starts a configuration that must fail before ready; returns its stdout
    /// (podman's error line) and how it ended. Panics if it became ready.
    pub fn failure(bin: &Path, config: &str) -> (String, slirp_proc::Exit) {
        match Self::command(bin, config).start() {
            Err(slirp_proc::HelperError::Failed { line, exit, .. }) => (line, exit),
            Err(other) => panic!("{config}: failed in the wrong way: {other}"),
            Ok(_) => panic!("{config}: became ready"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Closes the exit pipe, as podman does to stop it; an error when it
    /// had not exited within `limit` (it is then killed).
    pub fn stop(&mut self, limit: Duration) -> Result<slirp_proc::Exit> {
        let helper = self.helper.take().context("already stopped")?;
        helper.stop(limit).map_err(|killed| {
            anyhow::anyhow!(
                "rootlessport did not exit within {limit:?} of the exit pipe closing ({killed})"
            )
        })
    }

    /// How it ended, once it has ended by itself (a signal, say) within
    /// `limit`; `None` while it still runs. The exit pipe stays open.
    pub fn exited_within(&mut self, limit: Duration) -> Option<slirp_proc::Exit> {
        self.helper.as_mut()?.exited_within(limit)
    }

    /// The process's open fds, as link targets.
    pub fn fds(&self) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A free port on 127.0.0.1 for both TCP and UDP.
pub fn free_port_both() -> u16 {
    loop {
        let port = free_tcp_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `n` consecutive ports free on 127.0.0.1 for TCP and UDP a moment ago
/// (each checked alone: holding thousands at once needs as many fds),
/// below the ephemeral range, from a start of this process's own.
pub fn free_run(n: u16) -> u16 {
    let mut first = 10_000 + (std::process::id() % 20_000) as u16;
    let mut wrapped = false;
    loop {
        if u32::from(first) + u32::from(n) > 65_000 {
            assert!(!wrapped, "found no {n} consecutive free ports");
            (first, wrapped) = (1025, true);
        }
        let taken = (first..first + n).find(|&p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_err()
                || std::net::UdpSocket::bind(("127.0.0.1", p)).is_err()
        });
        match taken {
            None => return first,
            Some(p) => first = p + 1,
        }
    }
}
