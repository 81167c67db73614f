//! The crates' `examples/` programs, run as a user would run them (against
//! the real slirp4netns, in namespaces made here), and the crates' own tests
//! run again as an unprivileged user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Totals;

/// A namespace under /run/netns with lo up and 10.77.0.1 on a veth pair
/// inside; deleted on drop.
struct ExampleNetns(String);

impl ExampleNetns {
    fn new(name: &str) -> Result<Self> {
        let name = format!("slirpnet-example-{}-{name}", std::process::id());
        crate::util::run_quiet(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = ExampleNetns(name);
        for args in [
            "link set lo up",
            "link add v0 type veth peer name v1",
            "addr add 10.77.0.1/24 dev v0",
            "link set v0 up",
            "link set v1 up",
        ] {
            crate::util::run_quiet(Command::new("ip").args(["-n", &ns.0]).args(args.split(' ')))?;
        }
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for ExampleNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// slirp4netns with an API socket for the slirp-api example; killed on drop
/// (with the namespace holder of a rootless one).
struct SlirpWithApi {
    child: Child,
    holder: Option<Child>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl SlirpWithApi {
    /// As root, attached to `netns`.
    fn start(netns: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("api.sock");
        let child = Command::new("slirp4netns")
            .args(["--netns-type=path", "--disable-host-loopback", "-c"])
            .arg(format!("--api-socket={}", socket.display()))
            .args([netns, "tap0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start slirp4netns for the slirp-api example")?;
        SlirpWithApi {
            child,
            holder: None,
            socket,
            _dir: dir,
        }
        .wait_for_socket()
    }

    /// As nobody, as a rootless user starts it: a holder process in a user
    /// and network namespace of its own, and slirp4netns joining them
    /// through --userns-path. The socket is in `dir`, which nobody owns.
    fn start_rootless(dir: tempfile::TempDir) -> Result<Self> {
        let socket = dir.path().join("api.sock");
        let holder = spawn_holder()?;
        let pid = holder.id();
        let child = Command::new("setpriv")
            .args(NOBODY)
            .args([
                "slirp4netns",
                "--netns-type=path",
                "--disable-host-loopback",
                "-c",
            ])
            .arg(format!("--userns-path=/proc/{pid}/ns/user"))
            .arg(format!("--api-socket={}", socket.display()))
            .args([format!("/proc/{pid}/ns/net").as_str(), "tap0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start slirp4netns as nobody for the slirp-api example")?;
        SlirpWithApi {
            child,
            holder: Some(holder),
            socket,
            _dir: dir,
        }
        .wait_for_socket()
    }

    fn wait_for_socket(self) -> Result<Self> {
        let mut slirp = self;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !slirp.socket.exists() {
            if let Some(status) = slirp.child.try_wait()? {
                bail!("slirp4netns exited ({status}) before its API socket appeared");
            }
            if Instant::now() > deadline {
                bail!("slirp4netns's API socket did not appear within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(slirp)
    }
}

impl Drop for SlirpWithApi {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.holder.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// setpriv's arguments that make the rest run as nobody (uid and gid
/// 65534, no groups, no capabilities).
const NOBODY: [&str; 5] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

/// As nobody, `unshare --user --map-root-user --net sleep 600`, returned
/// once its namespaces exist (a rootless engine's pause process).
fn spawn_holder() -> Result<Child> {
    let mut holder = Command::new("setpriv")
        .args(NOBODY)
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .spawn()
        .context("failed to start a namespace holder as nobody")?;
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let theirs = format!("/proc/{}/ns/net", holder.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&theirs).ok().as_ref() == Some(&ours) {
        if let Some(status) = holder.try_wait()? {
            bail!("the namespace holder ended ({status}) before unsharing");
        }
        if Instant::now() > deadline {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!("the namespace holder made no network namespace within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(holder)
}

/// How an example runs as nobody, or why it cannot.
enum Rootless {
    /// As nobody: `wrap` (a command line ahead of the example, such as
    /// `unshare ...`), then the example with `args`; `{tmp}` in either is a
    /// directory nobody owns.
    Run {
        wrap: &'static [&'static str],
        args: &'static [&'static str],
    },
    /// slirp-api's: against a slirp4netns nobody started, as a rootless
    /// user's own.
    WithRootlessSlirp,
    /// Not run rootless, for this reason.
    Cannot(&'static str),
}

/// Which examples run rootless and how; why others cannot (one line each).
/// An example missing here fails: each new one must say.
fn rootless_plan(krate: &str, name: &str) -> Option<Rootless> {
    Some(match (krate, name) {
        // Pure: builds an argv, starts nothing.
        ("slirp-opts", "options_to_argv") => Rootless::Run { wrap: &[], args: &[] },
        // Starts a helper it re-executes; needs no privilege.
        ("slirp-proc", "helper") => Rootless::Run { wrap: &[], args: &[] },
        // Without a path it makes its own namespace holder (unshare) and
        // slirp4netns joins it through --userns-path, as rootless podman.
        ("slirp-proc", "start_slirp") => Rootless::Run { wrap: &[], args: &[] },
        // The library picks a user namespace itself when not root.
        ("slirpnet", "run_command") => Rootless::Run { wrap: &[], args: &[] },
        // Its docs: in a user and mount namespace of one's own, at a path
        // one may write.
        ("netns-util", "persistent") => Rootless::Run {
            wrap: &["unshare", "--user", "--map-root-user", "--mount"],
            args: &["{tmp}/ns"],
        },
        // Its docs: inside a user and network namespace of one's own, whose
        // namespace is both the host side and the service's.
        ("rootlessport", "in_process") => Rootless::Run {
            wrap: &[
                "unshare",
                "--user",
                "--map-root-user",
                "--net",
                "sh",
                "-ec",
                "ip link set lo up; ip link add v0 type veth peer name v1; \
                 ip addr add 10.77.0.1/24 dev v0; ip link set v0 up; ip link set v1 up; \
                 exec \"$0\" \"$@\"",
            ],
            args: &["/proc/self/ns/net", "10.77.0.1"],
        },
        // Against the API socket of a slirp4netns a rootless user started.
        ("slirp-api", "forwards") => Rootless::WithRootlessSlirp,
        ("slirpnet", "attach") => Rootless::Cannot(
            "it enters the namespace it is given (setns needs CAP_SYS_ADMIN over it) to start a service there, and its docs say it needs root; run_command is the rootless one",
        ),
        _ => return None,
    })
}

/// Every `<crate>/examples/*.rs` of the workspace, as (crate, name).
fn examples(root: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for krate in std::fs::read_dir(root)? {
        let krate = krate?;
        let dir = krate.path().join("examples");
        if !krate.path().join("Cargo.toml").exists() || !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir)? {
            let path = file?.path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_stem().context("example name")?;
                out.push((
                    krate.file_name().to_string_lossy().into_owned(),
                    name.to_string_lossy().into_owned(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Builds and runs every example with the arguments it needs. Each one is
/// built as a user would build it: as the only source of a new package
/// outside the workspace whose one dependency is the crate it shows (by
/// path), so an example that needs a second crate fails to build. Each one
/// that builds and exits 0 within a minute passes.
pub fn run_examples(root: &Path) -> Result<Totals> {
    let found = examples(root)?;
    let outside = root.join("target/outside-examples");
    let mut built = Vec::new();
    for (krate, name) in &found {
        built.push(build_outside(root, &outside, krate, name));
    }
    let ns = ExampleNetns::new("a")?;
    let api_ns = ExampleNetns::new("api")?;
    let proc_ns = ExampleNetns::new("proc")?;
    let mut slirp: Option<SlirpWithApi> = None;
    let mut totals = Totals::default();
    let mut runnable = Vec::new();
    for ((krate, name), bin) in found.into_iter().zip(built) {
        let bin = match bin {
            Ok(bin) => bin,
            Err(e) => {
                println!("example {krate}/{name}: FAILED to build with only {krate} as a dependency: {e:#}");
                totals.failed += 1;
                continue;
            }
        };
        runnable.push((krate.clone(), name.clone(), bin.clone()));
        let args: Vec<String> = match name.as_str() {
            "attach" => vec![ns.path()],
            "start_slirp" => vec![proc_ns.path()],
            "in_process" => vec![ns.path(), "10.77.0.1".into()],
            "forwards" => {
                if slirp.is_none() {
                    slirp = Some(SlirpWithApi::start(&api_ns.path())?);
                }
                let socket = &slirp.as_ref().expect("started above").socket;
                vec![socket.display().to_string()]
            }
            _ => Vec::new(),
        };
        eprintln!("+ {} {}", bin.display(), args.join(" "));
        let ok = run_limited(Command::new(&bin).args(&args), Duration::from_secs(60))?;
        println!(
            "example {krate}/{name}: {}",
            if ok { "ok" } else { "FAILED" }
        );
        if ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
    }
    drop(slirp);
    totals.add(run_rootless(&runnable)?);
    Ok(totals)
}

/// Runs each example that can work rootless again as nobody (uid 65534, no
/// capabilities), as [`rootless_plan`] says; one missing from the plan
/// fails. Where unprivileged user namespaces are off, those runs fail under
/// CI=true and are skipped (loudly) elsewhere.
fn run_rootless(runnable: &[(String, String, PathBuf)]) -> Result<Totals> {
    let mut totals = Totals::default();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let userns_ok = Command::new("setpriv")
        .args(NOBODY)
        .args(["unshare", "--user", "--map-root-user", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for (krate, name, bin) in runnable {
        let label = format!("example {krate}/{name} as nobody");
        let plan = match rootless_plan(krate, name) {
            None => {
                println!(
                    "{label}: FAILED: no line for it in xtask/src/examples.rs's rootless_plan"
                );
                totals.failed += 1;
                continue;
            }
            Some(Rootless::Cannot(why)) => {
                println!("{label}: not run: {why}");
                continue;
            }
            Some(plan) => plan,
        };
        if !userns_ok {
            if ci {
                println!("{label}: FAILED: nobody cannot make a user namespace here (`unshare --user --map-root-user true` fails)");
                totals.failed += 1;
            } else {
                println!("{label}: SKIPPED: nobody cannot make a user namespace here (with CI=true this fails)");
            }
            continue;
        }
        // A HOME and TMPDIR nobody owns.
        let tmp = tempfile::tempdir()?;
        std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534))?;
        let tmp_str = tmp.path().display().to_string();
        let mut cmd = Command::new("setpriv");
        cmd.args(NOBODY)
            .env("HOME", tmp.path())
            .env("TMPDIR", tmp.path())
            .current_dir(tmp.path());
        let _slirp;
        match plan {
            Rootless::Run { wrap, args } => {
                cmd.args(wrap.iter().map(|a| a.replace("{tmp}", &tmp_str)))
                    .arg(bin)
                    .args(args.iter().map(|a| a.replace("{tmp}", &tmp_str)));
            }
            Rootless::WithRootlessSlirp => {
                let dir = tempfile::tempdir()?;
                std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534))?;
                let slirp = match SlirpWithApi::start_rootless(dir) {
                    Ok(started) => started,
                    Err(e) => {
                        println!("{label}: FAILED: starting slirp4netns as nobody: {e:#}");
                        totals.failed += 1;
                        continue;
                    }
                };
                cmd.arg(bin).arg(&slirp.socket);
                _slirp = slirp;
            }
            Rootless::Cannot(_) => continue,
        }
        eprintln!("+ {cmd:?}");
        let ok = run_limited(&mut cmd, Duration::from_secs(60))?;
        println!("{label}: {}", if ok { "ok" } else { "FAILED" });
        if ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
    }
    Ok(totals)
}

/// Writes a package under `outside/<crate>-<name>` whose `src/main.rs` is
/// the example and whose one dependency is `krate` (by path, default
/// features, as a user adds it), builds it, and returns the program. The
/// workspace's Cargo.lock is copied in so it builds the same versions; the
/// packages share one target directory.
fn build_outside(root: &Path, outside: &Path, krate: &str, name: &str) -> Result<PathBuf> {
    let package = format!("outside-{krate}-{name}").replace('_', "-");
    let dir = outside.join(&package);
    std::fs::create_dir_all(dir.join("src"))?;
    let manifest = format!(
        "[package]\nname = \"{package}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\n{krate} = {{ path = \"{}\" }}\n\n\
         # Not a member of the slirpnet workspace.\n[workspace]\n",
        root.join(krate).display()
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::copy(
        root.join(krate).join("examples").join(format!("{name}.rs")),
        dir.join("src/main.rs"),
    )?;
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
    let target = outside.join("target");
    crate::util::run(
        crate::util::cargo()
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--quiet"]),
    )?;
    Ok(target.join("debug").join(package))
}

/// Runs `cmd`, killing it after `limit`; whether it exited 0 in time.
fn run_limited(cmd: &mut Command, limit: Duration) -> Result<bool> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("{cmd:?} did not end within {limit:?}; killed");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The library crates' own tests (unit, integration, not doc), run as
/// nobody (uid 65534) with no capabilities: they must need no privilege.
pub fn run_unprivileged(root: &Path, crates: &[&str]) -> Result<Totals> {
    let mut cmd = crate::util::cargo();
    cmd.args(["test", "--no-run", "--message-format=json"]);
    for c in crates {
        cmd.args(["-p", c]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("failed to build the crates' tests")?;
    if !out.status.success() {
        bail!("building the crates' tests failed");
    }
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true {
            if let Some(exe) = msg["executable"].as_str() {
                executables.push(PathBuf::from(exe));
            }
        }
    }
    if executables.is_empty() {
        bail!("no test executables were built for {crates:?}");
    }
    let mut totals = Totals::default();
    for exe in executables {
        totals.add(crate::run_tests(
            Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                ])
                .arg(&exe)
                .current_dir(root)
                // As nobody: a HOME and TMPDIR it may write.
                .env("HOME", "/tmp")
                .env("TMPDIR", "/tmp"),
        )?);
    }
    Ok(totals)
}
