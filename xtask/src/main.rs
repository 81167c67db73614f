//! `cargo xtask`: set-up, the full test run and benchmarks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

mod bench;
mod examples;
mod install;
mod manual;
mod packaging;
mod podman;
mod util;

use util::{cargo, install_missing, is_root, on_path, run, workspace_root};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup   install what the project needs (slirp4netns, iproute2, util-linux,
          man-db and groff-base) when missing, and make /dev/net/tun usable by unprivileged users
  test    setup, msrv, cargo fmt --check, clippy -D warnings (and
          missing_errors_doc on the libraries), cargo doc -D warnings, the publishable
          crates built without default features and packaged (cargo package,
          verified), then every test, the examples, the library tests as an
          unprivileged user, install-check and the podman runs below
  msrv    check that each publishable crate's rust-version is at least what
          every locked dependency needs (its rust-version, or its edition's)
  examples
          run every crate's examples/ against the real slirp4netns in
          namespaces made for them, then the library crates' own tests as
          an unprivileged user (needs root)
  package build the publishable crates without default features, then
          cargo package them, verified (publish = false members left out)
  install [--prefix DIR] [--destdir DIR]: a release build, then
          PREFIX/bin/slirpnet, its forwarder PREFIX/libexec/slirpnet/rootlessport,
          the man pages (share/man/man1) and the bash, zsh and fish
          completions, all under DESTDIR when given (default prefix /usr/local)
  install-check
          install into a temporary DESTDIR and a temporary prefix; every man
          page renders without a warning, the bash completion loads, and the
          installed slirpnet forwards a port through the installed forwarder
          (needs root)
  bench   [--rounds N] [--seconds S] [--only SECTION]: our
          rootlessport against the current pasta (passt 2026_07_16, built
          from its source tarball into target/peers/ when missing), podman's
          Go helper and direct loopback, then ours with
          ROOTLESSPORT_KEEP_SOURCE_IP=1 against =0 for a client in another
          namespace (installs podman, iperf3 and a C toolchain when missing,
          needs root); prints the tables, writes BENCHMARKS.md and
          the tables in README.md. --only keep-source-ip, loops, sandbox
          (ROOTLESSPORT_SANDBOX on against =0) or publish-auto (listen() to
          host port reachable through slirpnet attach --publish-auto) runs
          just that section and replaces only its section and table
  podman  real rootless podman (a throw-away user, a busybox --rootfs
          container, -p through port_handler=rootlesskit) with podman's Go
          helper and then with our rootlessport; checks the page is served on
          IPv4 and IPv6 loopback and that the helper and its reload socket go
          with the container; then, with ours and ROOTLESSPORT_KEEP_SOURCE_IP=1
          in the user's containers.conf, that the container sees a client's
          real address (podman run inside a network namespace of the run)
          (installs podman, runc, uidmap, busybox-static; needs root)";

/// The library crates, whose own tests must pass without privilege.
const LIBRARY_CRATES: &[&str] = &[
    "slirp-opts",
    "netns-util",
    "slirp-api",
    "slirp-proc",
    "rootlessport",
    "slirpnet",
];

/// Debian packages the project needs, with a program each one provides.
const PACKAGES: &[(&str, &str)] = &[
    ("slirp4netns", "slirp4netns"),
    ("iproute2", "ip"),
    ("util-linux", "unshare"),
    ("util-linux", "nsenter"),
    // For install-check: the man pages are rendered with warnings on.
    ("man-db", "man"),
    ("groff-base", "groff"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(),
        Some("msrv") => packaging::msrv(&workspace_root()),
        Some("package") => packaging::package(&workspace_root()),
        Some("install") => {
            let opts = install::InstallOptions::parse(&args[1..])?;
            install::install(&workspace_root(), &opts).map(drop)
        }
        Some("install-check") => {
            setup()?;
            let t = install::install_check(&workspace_root())?;
            println!(
                "\nxtask install-check: {} passed, {} failed",
                t.passed, t.failed
            );
            ensure!(t.failed == 0, "install checks failed");
            Ok(())
        }
        // The server the installed slirpnet runs in install-check.
        Some("install-serve") => install::serve(&args[1..]),
        Some("examples") => {
            setup()?;
            let mut t = examples::run_examples(&workspace_root())?;
            t.add(examples::run_unprivileged(
                &workspace_root(),
                LIBRARY_CRATES,
            )?);
            println!("\nxtask examples: {} passed, {} failed", t.passed, t.failed);
            ensure!(
                t.failed == 0 && t.passed > 0,
                "examples or unprivileged tests failed"
            );
            Ok(())
        }
        Some("bench") => {
            setup()?;
            install_missing(&[
                ("podman", "/usr/lib/podman/rootlessport"),
                // To build the current pasta from its source.
                ("build-essential", "cc"),
                ("make", "make"),
                ("iperf3", "iperf3"),
            ])?;
            let mut opts = bench::BenchOptions {
                rounds: 3,
                seconds: 3,
                only: None,
            };
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let mut value = |name: &str| -> Result<u64> {
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .with_context(|| format!("{name} takes a number"))
                };
                match a.as_str() {
                    "--rounds" => opts.rounds = value("--rounds")?.max(1) as usize,
                    "--seconds" => opts.seconds = value("--seconds")?.max(1),
                    "--only" => {
                        let name = it.next().context("--only takes a section name")?;
                        opts.only = Some(bench::Section::parse(name)?);
                    }
                    other => bail!("unknown bench option {other:?}"),
                }
            }
            bench::bench(&workspace_root(), &opts)
        }
        Some("podman") => {
            setup()?;
            let t = podman::podman(&workspace_root())?;
            println!("\nxtask podman: {} passed, {} failed", t.passed, t.failed);
            ensure!(t.failed == 0, "podman runs failed");
            Ok(())
        }
        Some("bench-serve") => bench::serve(args.get(1).context("bench-serve ADDR")?),
        Some("bench-conn") => bench::conn_client(&args[1..]),
        Some("bench-rr") => bench::rr_client(&args[1..]),
        Some("bench-who") => bench::who_client(&args[1..]),
        // The podman keep runs' client (in a namespace) and UDP service (in
        // the container).
        Some("podman-peer") => podman::peer_client(&args[1..]),
        Some("podman-udp-peer") => podman::udp_peer(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// Installs the missing packages with apt-get (only as root) and opens up
/// /dev/net/tun.
fn setup() -> Result<()> {
    install_missing(PACKAGES)?;
    for (_, program) in PACKAGES {
        if !on_path(program) {
            bail!("{program} is still missing after setup");
        }
    }

    // Rootless slirp4netns opens /dev/net/tun; distributions ship it 0666.
    let tun = Path::new("/dev/net/tun");
    let meta = std::fs::metadata(tun).with_context(|| {
        format!(
            "{} is missing: load the tun module (modprobe tun)",
            tun.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o666 {
        if is_root() {
            std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666))
                .with_context(|| format!("failed to chmod 0666 {}", tun.display()))?;
            eprintln!("made {} mode 0666 (was {mode:o})", tun.display());
        } else {
            eprintln!(
                "warning: {} is mode {mode:o}; rootless use needs 0666 (run setup as root)",
                tun.display()
            );
        }
    }
    let version = Command::new("slirp4netns").arg("--version").output()?;
    let first = String::from_utf8_lossy(&version.stdout);
    eprintln!(
        "setup done: {}",
        first.lines().next().unwrap_or("slirp4netns")
    );
    Ok(())
}

/// setup, MSRV, formatting, lints, packaging, every test. With CI=true the
/// privileged and slirp4netns tests fail instead of skipping when they
/// cannot run.
fn test() -> Result<()> {
    setup()?;
    packaging::msrv(&workspace_root())?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The public API's promises: every fallible function says how it fails,
    // and the docs build without a warning.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--lib",
        "--no-deps",
        "--all-features",
        "--",
        "-W",
        "clippy::missing_errors_doc",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    packaging::package(&workspace_root())?;
    let mut total = Totals::default();
    total.add(run_tests(cargo().args([
        "test",
        "--workspace",
        "--all-targets",
    ]))?);
    total.add(run_tests(cargo().args(["test", "--workspace", "--doc"]))?);
    // Privileged or not, CI runs these; elsewhere they need root.
    if is_root() || std::env::var("CI").is_ok_and(|v| v == "true") {
        // The examples as a user runs them, against the real slirp4netns.
        total.add(examples::run_examples(&workspace_root())?);
        // The library crates' own tests need no privilege: prove it.
        total.add(examples::run_unprivileged(
            &workspace_root(),
            LIBRARY_CRATES,
        )?);
    } else {
        eprintln!("skipped the examples and the unprivileged run: they need root");
    }
    // Real rootless podman with our helper (and podman's own beside it). It
    // needs root; like the privileged tests it is skipped only off CI.
    if is_root() || std::env::var("CI").is_ok_and(|v| v == "true") {
        total.add(podman::podman(&workspace_root())?);
    } else {
        eprintln!("skipped the podman runs: they need root (they make a user)");
    }
    // Last: installed as a user installs it (a release build); root, like
    // the examples.
    if is_root() || std::env::var("CI").is_ok_and(|v| v == "true") {
        total.add(install::install_check(&workspace_root())?);
    } else {
        eprintln!("skipped install-check: it needs root (it runs slirpnet)");
    }
    println!(
        "\nxtask test: {} passed, {} failed",
        total.passed, total.failed
    );
    if total.failed > 0 || total.passed == 0 {
        bail!("tests failed");
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Runs a `cargo test`, echoing its output, and adds up its
/// `test result: ok. N passed; M failed; ...` lines.
fn run_tests(cmd: &mut Command) -> Result<Totals> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                match (words.next().map(str::parse::<u64>), words.next()) {
                    (Some(Ok(n)), Some("passed")) => totals.passed += n,
                    (Some(Ok(n)), Some("failed")) => totals.failed += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(totals)
}
