//! `cargo xtask install`: slirpnet, its forwarder, the man pages and the
//! shell completions, laid out as a distribution lays out a system tool
//! (`--prefix`, and `--destdir` for staging a package);
//! `cargo xtask install-check` installs into temporary places and checks
//! what a user gets: pages that render without a warning, a bash completion
//! that loads, and a slirpnet that forwards a port through the forwarder
//! installed with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::Totals;

/// Where `install` puts things.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where the files will live (absolute; default /usr/local).
    pub prefix: PathBuf,
    /// A staging directory the prefix is put under (a package's build
    /// root); the installed program still looks relative to itself.
    pub destdir: Option<PathBuf>,
}

impl InstallOptions {
    /// Parses `[--prefix DIR] [--destdir DIR]` (also `--prefix=DIR`).
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut opts = InstallOptions {
            prefix: PathBuf::from("/usr/local"),
            destdir: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("{name} takes a directory"))
            };
            match name {
                "--prefix" => opts.prefix = PathBuf::from(value()?),
                "--destdir" => opts.destdir = Some(PathBuf::from(value()?)),
                other => bail!("unknown install option {other:?} (--prefix DIR, --destdir DIR)"),
            }
        }
        ensure!(
            opts.prefix.is_absolute(),
            "--prefix must be an absolute path, not {}",
            opts.prefix.display()
        );
        Ok(opts)
    }
}

/// The installed files of one installation (under DESTDIR when staged).
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(opts: &InstallOptions) -> Self {
        let root = match &opts.destdir {
            // The prefix is absolute: put it under DESTDIR as it is.
            Some(dest) => dest.join(opts.prefix.strip_prefix("/").unwrap_or(&opts.prefix)),
            None => opts.prefix.clone(),
        };
        Layout { root }
    }

    fn slirpnet(&self) -> PathBuf {
        self.root.join("bin/slirpnet")
    }

    /// A directory of our own: podman's helper directories
    /// (`libexec/podman`, `lib/podman`) are never written.
    fn forwarder(&self) -> PathBuf {
        self.root.join("libexec/slirpnet/rootlessport")
    }

    fn man1(&self) -> PathBuf {
        self.root.join("share/man/man1")
    }

    /// Where each shell looks for completions of a system tool, as
    /// (file clap_complete writes, where it is installed).
    fn completions(&self) -> [(&'static str, PathBuf); 3] {
        [
            (
                "slirpnet.bash",
                self.root.join("share/bash-completion/completions/slirpnet"),
            ),
            (
                "_slirpnet",
                self.root.join("share/zsh/site-functions/_slirpnet"),
            ),
            (
                "slirpnet.fish",
                self.root
                    .join("share/fish/vendor_completions.d/slirpnet.fish"),
            ),
        ]
    }
}

/// The man pages every installation has, at least.
const PAGES: &[&str] = &[
    "slirpnet.1",
    "slirpnet-run.1",
    "slirpnet-attach.1",
    "slirpnet-stats.1",
    "slirpnet-ps.1",
    "slirpnet-port.1",
    "rootlessport.1",
];

/// A release build, then every file into place. Returns the layout.
pub fn install(root: &Path, opts: &InstallOptions) -> Result<Layout> {
    crate::util::run(crate::util::cargo().args([
        "build",
        "--release",
        "-p",
        "slirpnet",
        "--bin",
        "slirpnet",
        "-p",
        "rootlessport",
        "--bin",
        "rootlessport",
    ]))?;
    let built = root.join("target/release");
    let layout = Layout::new(opts);

    let staging = tempfile::Builder::new()
        .prefix("slirpnet-install-")
        .tempdir()?;
    let man = staging.path().join("man");
    let completions = staging.path().join("completions");
    std::fs::create_dir(&man)?;
    std::fs::create_dir(&completions)?;
    crate::util::run_quiet(
        Command::new(built.join("slirpnet"))
            .arg("__generate")
            .arg("--man")
            .arg(&man)
            .arg("--completions")
            .arg(&completions),
    )?;
    let mut page = Vec::new();
    crate::manual::rootlessport_page(&package_version(root, "rootlessport")?, &mut page)?;
    std::fs::write(man.join("rootlessport.1"), page)?;

    install_file(&built.join("slirpnet"), &layout.slirpnet(), 0o755)?;
    install_file(&built.join("rootlessport"), &layout.forwarder(), 0o755)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    for page in pages {
        let name = page.file_name().context("page name")?;
        install_file(&page, &layout.man1().join(name), 0o644)?;
    }
    for (file, dest) in layout.completions() {
        install_file(&completions.join(file), &dest, 0o644)?;
    }
    println!(
        "installed slirpnet into {} (forwarder {}, man pages in {})",
        layout.slirpnet().display(),
        layout.forwarder().display(),
        layout.man1().display()
    );
    Ok(layout)
}

/// The `version` of workspace package `package`, from its manifest.
fn package_version(root: &Path, package: &str) -> Result<String> {
    let manifest = root.join(package).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("failed to read {}", manifest.display()))?;
    text.lines()
        .find_map(|l| {
            let value = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("no version in {}", manifest.display()))
}

/// Copies `src` to `dest` with `mode`, through a new file renamed over it,
/// so that a running copy of a program being replaced keeps running.
fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let dir = dest.parent().context("an installed file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let name = dest.file_name().context("an installed file has a name")?;
    let tmp = dir.join(format!(".{}.xtask-new", name.to_string_lossy()));
    let copied = std::fs::copy(src, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, dest));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("failed to install {}", dest.display()));
    }
    Ok(())
}

/// What the installed slirpnet's command writes to a client, in
/// `install-serve`.
const GREETING: &[u8] = b"slirpnet install-check\n";

/// The PATH the installed slirpnet runs with: the system's directories
/// only, so that it can find its forwarder only by itself.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long one run of the installed slirpnet may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// `cargo xtask install-check`: installs into a temporary DESTDIR (prefix
/// /usr/local under it) and into a temporary `--prefix`, and checks each.
pub fn install_check(root: &Path) -> Result<Totals> {
    crate::util::install_missing(&[("man-db", "man"), ("groff-base", "groff"), ("bash", "bash")])?;
    if let Some(dir) = std::env::split_paths(SYSTEM_PATH).find(|d| d.join("rootlessport").exists())
    {
        bail!(
            "{} exists: the check could not tell whether slirpnet found its own forwarder",
            dir.join("rootlessport").display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("slirpnet-install-check-")
        .tempdir()?;
    let staged = install(
        root,
        &InstallOptions {
            prefix: PathBuf::from("/usr/local"),
            destdir: Some(tmp.path().join("destdir")),
        },
    )?;
    let prefixed = install(
        root,
        &InstallOptions {
            prefix: tmp.path().join("prefix"),
            destdir: None,
        },
    )?;
    let version = package_version(root, "slirpnet")?;
    let mut checks: Vec<(String, Result<String>)> = Vec::new();
    for (how, layout) in [("--destdir", &staged), ("--prefix", &prefixed)] {
        checks.push((format!("{how}: files"), check_files(layout)));
        let mut pages: Vec<PathBuf> = match std::fs::read_dir(layout.man1()) {
            Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                checks.push((format!("{how}: man pages"), Err(e.into())));
                Vec::new()
            }
        };
        pages.sort();
        for page in pages {
            let name = page
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            checks.push((format!("{how}: man {name}"), check_man(&page)));
        }
        checks.push((format!("{how}: bash completion"), check_bash(layout)));
        checks.push((
            format!("{how}: slirpnet --version"),
            check_version(layout, &version),
        ));
        checks.push((
            format!("{how}: run -p through the installed forwarder"),
            check_forwarding(layout),
        ));
    }
    checks.push((
        "slirpnet installed without its forwarder".into(),
        check_missing_forwarder(&prefixed, tmp.path()),
    ));
    println!("\ninstall-check ({}):", tmp.path().display());
    let mut totals = Totals::default();
    for (what, result) in &checks {
        match result {
            Ok(detail) => {
                totals.passed += 1;
                println!("  ok    {what}: {detail}");
            }
            Err(e) => {
                totals.failed += 1;
                println!("  FAIL  {what}: {e:#}");
            }
        }
    }
    Ok(totals)
}

/// Every file in place, programs executable.
fn check_files(layout: &Layout) -> Result<String> {
    let mut files = vec![(layout.slirpnet(), 0o755), (layout.forwarder(), 0o755)];
    files.extend(PAGES.iter().map(|p| (layout.man1().join(p), 0o644)));
    files.extend(layout.completions().into_iter().map(|(_, f)| (f, 0o644)));
    for (file, mode) in &files {
        let meta =
            std::fs::metadata(file).with_context(|| format!("{} is missing", file.display()))?;
        let has = meta.permissions().mode() & 0o777;
        ensure!(
            meta.is_file() && has == *mode,
            "{} is not a file of mode {mode:o} (mode {has:o})",
            file.display()
        );
    }
    ensure!(
        !layout.root.join("libexec/podman").exists() && !layout.root.join("lib/podman").exists(),
        "something was installed into podman's helper directories"
    );
    Ok(format!("{} files", files.len()))
}

/// `man --warnings -l PAGE` (as lintian runs it: 80 columns, UTF-8) prints
/// no warning.
fn check_man(page: &Path) -> Result<String> {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .env("MANROFFSEQ", "")
        .env("MANWIDTH", "80")
        .stdin(Stdio::null())
        .output()
        .context("failed to run man")?;
    let warnings = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && warnings.trim().is_empty(),
        "man --warnings ({}): {}",
        out.status,
        warnings.trim()
    );
    // A page that renders to nothing would pass the above.
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("NAME"), "the page has no NAME section");
    Ok("no warnings".into())
}

/// The bash completion loads and completes `slirpnet`.
fn check_bash(layout: &Layout) -> Result<String> {
    let (_, file) = &layout.completions()[0];
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p slirpnet")
        .arg("bash")
        .arg(file)
        .output()
        .context("failed to run bash")?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.trim_end().ends_with(" slirpnet"),
        "bash: {}{}",
        said.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(said.trim().to_owned())
}

/// `slirpnet --version` names the version.
fn check_version(layout: &Layout, version: &str) -> Result<String> {
    let out = Command::new(layout.slirpnet())
        .arg("--version")
        .output()
        .context("failed to run the installed slirpnet")?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && said == format!("slirpnet {version}"),
        "printed {said:?} ({})",
        out.status
    );
    Ok(said)
}

/// A running `slirpnet run`, killed (with what it started) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Lines of `stream`, as they come, on a channel.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The installed slirpnet, with only the system's PATH, runs a server in a
/// new namespace with `-p 127.0.0.1:PORT:PORT --json`; `--json` and the
/// forwarder's /proc/PID/exe must name the installed forwarder, and a
/// client on the host's loopback must get the server's greeting.
fn check_forwarding(layout: &Layout) -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let xtask = std::env::current_exe()?;
    let mut child = Command::new(layout.slirpnet())
        .args(["run", "--json", "-p"])
        .arg(format!("127.0.0.1:{port}:{port}"))
        .arg("--")
        .arg(&xtask)
        .arg("install-serve")
        .arg(port.to_string())
        .env("PATH", SYSTEM_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run the installed slirpnet")?;
    let stdout = lines_of(child.stdout.take().context("stdout is piped")?);
    let stderr = lines_of(child.stderr.take().context("stderr is piped")?);
    let mut running = Running(child);
    let deadline = Instant::now() + RUN_LIMIT;

    // The report: the JSON on stderr, after any log line.
    let mut seen = Vec::new();
    let mut json = String::new();
    loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "no --json report on stderr ({}): {}",
                    exit_of(&mut running.0),
                    seen.join("\n")
                )
            })?;
        if json.is_empty() && line != "{" {
            seen.push(line);
            continue;
        }
        json.push_str(&line);
        json.push('\n');
        if line == "}" {
            break;
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("--json printed {json}"))?;
    let forwarder = &report["forwarder"];
    let installed = layout.forwarder();
    ensure!(
        forwarder["kind"] == "binary" && forwarder["path"].as_str() == installed.to_str(),
        "--json names forwarder {forwarder}, not {}",
        installed.display()
    );
    let pid = forwarder["pid"]
        .as_u64()
        .with_context(|| format!("--json gives no forwarder pid: {forwarder}"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("failed to read /proc/{pid}/exe"))?;
    ensure!(
        exe == installed.canonicalize()?,
        "forwarder {pid} runs {}, not {}",
        exe.display(),
        installed.display()
    );

    // The server says when it listens; then a client on the host's
    // loopback must reach it through the forwarder.
    let line = stdout
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| anyhow::anyhow!("the server in the namespace did not start"))?;
    ensure!(line == "listening", "the server printed {line:?}");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("failed to connect to 127.0.0.1:{port}"))?;
    conn.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .with_context(|| format!("failed to read from 127.0.0.1:{port}"))?;
    ensure!(
        got == GREETING,
        "127.0.0.1:{port} answered {:?}",
        String::from_utf8_lossy(&got)
    );
    let status = loop {
        if let Some(status) = running.0.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "slirpnet run did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(status.success(), "slirpnet run: {status}");
    Ok(format!(
        "forwarder pid {pid} runs {}; 127.0.0.1:{port} reached the namespace",
        exe.display()
    ))
}

/// The exit status of `child` once it ends (its output may close a moment
/// before), for messages.
fn exit_of(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return "still running".into(),
        }
    }
}

/// slirpnet installed alone (no libexec/slirpnet/rootlessport, nothing on
/// PATH) must refuse to forward with the rootlessport handler, saying why:
/// so the forwarding check above saw the forwarder it found by itself.
fn check_missing_forwarder(layout: &Layout, tmp: &Path) -> Result<String> {
    let alone = tmp.join("alone/bin/slirpnet");
    install_file(&layout.slirpnet(), &alone, 0o755)?;
    let out = Command::new(&alone)
        .args(["run", "--dry-run", "-p", "127.0.0.1:8080:80", "--", "true"])
        .env("PATH", SYSTEM_PATH)
        .output()
        .context("failed to run slirpnet")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(125) && err.contains("rootlessport not found"),
        "exit {}: {}",
        out.status,
        err.trim()
    );
    Ok(err.trim().to_owned())
}

/// `xtask install-serve PORT`: the command the installed slirpnet runs in
/// its namespace. Listens on every address at PORT, prints `listening`,
/// greets one client and exits; gives up after the run's limit.
pub fn serve(args: &[String]) -> Result<()> {
    let port: u16 = args
        .first()
        .and_then(|p| p.parse().ok())
        .context("install-serve PORT")?;
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    std::thread::spawn(|| {
        std::thread::sleep(RUN_LIMIT);
        eprintln!("install-serve: no client came");
        std::process::exit(1);
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening")?;
    out.flush()?;
    let (mut conn, _) = listener.accept()?;
    conn.write_all(GREETING)?;
    Ok(())
}
