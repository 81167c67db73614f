//! slirpnet laid out as `cargo xtask install` lays it out
//! (`PREFIX/bin/slirpnet`, `PREFIX/libexec/slirpnet/rootlessport`): it finds
//! its forwarder by itself, with no PATH help. Needs neither root nor
//! slirp4netns (a dry run against a fake one); `cargo xtask install-check`
//! runs the real installation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slirpnet_tests::{fake_slirp, rootlessport_bin, slirpnet_bin};

/// The system's directories only: no rootlessport of ours there.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn copy_executable(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// `slirpnet attach --dry-run --json` with a port, through the default
/// (rootlesskit) handler: the plan names the forwarder, or fails.
fn dry_run(slirpnet: &Path, fake: &Path) -> Output {
    Command::new(slirpnet)
        .args([
            "attach",
            "--dry-run",
            "--json",
            "--netns",
            "/run/netns/x",
            "-p",
            "127.0.0.1:8080:80",
            "--slirp4netns",
        ])
        .arg(fake)
        .env("PATH", SYSTEM_PATH)
        .output()
        .unwrap()
}

#[test]
fn installed_slirpnet_finds_its_forwarder_in_libexec() {
    for dir in std::env::split_paths(SYSTEM_PATH) {
        assert!(
            !dir.join("rootlessport").exists(),
            "{}/rootlessport exists: this test cannot tell where slirpnet found its forwarder",
            dir.display()
        );
    }
    let (_fake_dir, fake) = fake_slirp("exit 1").unwrap();
    let prefix = tempfile::tempdir().unwrap();
    let slirpnet = prefix.path().join("bin/slirpnet");
    let forwarder: PathBuf = prefix.path().join("libexec/slirpnet/rootlessport");
    copy_executable(&slirpnet_bin(), &slirpnet);
    copy_executable(&rootlessport_bin(), &forwarder);

    let out = dry_run(&slirpnet, &fake);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["forwarder"]["kind"], "binary", "{plan}");
    assert_eq!(
        plan["forwarder"]["path"].as_str(),
        forwarder.to_str(),
        "{plan}"
    );

    // Without it, nothing else is taken: the plan fails and says where it looked.
    std::fs::remove_file(&forwarder).unwrap();
    let out = dry_run(&slirpnet, &fake);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("rootlessport not found") && err.contains("../libexec/slirpnet/"),
        "{err}"
    );
    // The library's words, then the program's own options, on one line.
    assert!(
        err.contains("ForwarderChoice::Binary") && err.contains("--rootlessport PATH"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn version_names_the_package_version() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../slirpnet/Cargo.toml");
    let manifest = std::fs::read_to_string(manifest).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"');
    let out = Command::new(slirpnet_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("slirpnet {version}")
    );
}
