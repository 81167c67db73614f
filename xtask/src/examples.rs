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

/// slirp4netns with an API socket for the slirp-api example; killed on drop.
struct SlirpWithApi {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl SlirpWithApi {
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
        let mut slirp = SlirpWithApi {
            child,
            socket,
            _dir: dir,
        };
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut slirp: Option<SlirpWithApi> = None;
    let mut totals = Totals::default();
    for ((krate, name), bin) in found.into_iter().zip(built) {
        let bin = match bin {
            Ok(bin) => bin,
            Err(e) => {
                println!("example {krate}/{name}: FAILED to build with only {krate} as a dependency: {e:#}");
                totals.failed += 1;
                continue;
            }
        };
        let args: Vec<String> = match name.as_str() {
            "attach" => vec![ns.path()],
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
