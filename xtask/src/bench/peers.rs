//! The pasta the bench measures against: the current release, built from
//! its source tarball into a cache under `target/` when it is not there yet.
//! Neither its code nor the binary is part of this repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

/// The passt release measured against (the peer podman 6 and RootlessKit 3
/// ship), and the directory holding its tarball and build script.
pub(super) const PASTA_RELEASE: &str = "2026_07_16";
/// The build script beside the tarball: `build-pasta.sh OUTDIR`.
const BUILD_SCRIPT: &str = "build-pasta.sh";
/// Where the directory holding the tarball can be named explicitly.
const PEERS_ENV: &str = "SLIRPNET_BENCH_PEERS";

/// The directory with `passt-RELEASE.tar.gz` and `build-pasta.sh`:
/// `$SLIRPNET_BENCH_PEERS`, else the first `shared/peers` found beside the
/// workspace or one of its parents (`../shared/peers` of a checkout).
fn peers_dir(root: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PEERS_ENV) {
        return Ok(PathBuf::from(dir));
    }
    for dir in root.ancestors().skip(1) {
        let peers = dir.join("shared/peers");
        if peers.join(BUILD_SCRIPT).is_file() {
            return Ok(peers);
        }
    }
    bail!(
        "no shared/peers/{BUILD_SCRIPT} beside {} or its parents: set {PEERS_ENV} to the \
         directory holding passt-{PASTA_RELEASE}.tar.gz and {BUILD_SCRIPT}",
        root.display()
    )
}

/// The current pasta: `target/peers/passt-RELEASE/pasta`, built from the
/// tarball first when it is missing (about 30 s; needs a C compiler and
/// make, which `cargo xtask bench` installs).
pub(super) fn pasta(root: &Path) -> Result<PathBuf> {
    let out = root.join(format!("target/peers/passt-{PASTA_RELEASE}"));
    let pasta = out.join("pasta");
    if pasta.is_file() {
        return Ok(pasta);
    }
    let peers = peers_dir(root)?;
    let tarball = peers.join(format!("passt-{PASTA_RELEASE}.tar.gz"));
    if !tarball.is_file() {
        bail!(
            "{} is missing: the bench measures against passt {PASTA_RELEASE}",
            tarball.display()
        );
    }
    eprintln!(
        "building pasta {PASTA_RELEASE} from {} into {}",
        tarball.display(),
        out.display()
    );
    crate::util::run(Command::new(peers.join(BUILD_SCRIPT)).arg(&out))?;
    if !pasta.is_file() {
        bail!("{BUILD_SCRIPT} left no {}", pasta.display());
    }
    Ok(pasta)
}
