//! What `cargo xtask test` checks before the tests so the crates stay
//! publishable: `msrv` (also `cargo xtask msrv`) and `package`.
//!
//! `msrv`: is each published crate's `rust-version` true for the locked
//! dependency tree? Only one toolchain is installed here, so this checks
//! statically: it reads `cargo metadata --locked` and, for every publishable
//! workspace member, walks its normal and build dependencies (for every
//! target, with all of the member's features) and takes the highest Rust any
//! of them needs: its `rust-version`, or what its edition needs when that is
//! more. The member's own `rust-version` must be at least that. cargo
//! metadata resolves features for the whole workspace at once, so an
//! optional part of a dependency that only a dev-dependency turns on
//! (rand_core under getrandom, through proptest) counts too: the check errs
//! on the strict side. It cannot see whether our own code uses newer Rust;
//! clippy's `incompatible_msrv` lint (on by default) catches newer standard
//! library items against the declared rust-version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// A Rust version, `major.minor.patch` (a missing part is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RustVersion(u64, u64, u64);

impl RustVersion {
    fn parse(s: &str) -> Result<RustVersion> {
        let mut parts = s.split('.').map(|p| {
            p.parse::<u64>()
                .with_context(|| format!("bad rust-version {s:?}"))
        });
        let major = parts.next().context("empty rust-version")??;
        let minor = parts.next().transpose()?.unwrap_or(0);
        let patch = parts.next().transpose()?.unwrap_or(0);
        ensure!(parts.next().is_none(), "bad rust-version {s:?}");
        Ok(RustVersion(major, minor, patch))
    }

    /// The first Rust that knows `edition`.
    fn for_edition(edition: &str) -> Result<RustVersion> {
        Ok(match edition {
            "2015" => RustVersion(1, 0, 0),
            "2018" => RustVersion(1, 31, 0),
            "2021" => RustVersion(1, 56, 0),
            "2024" => RustVersion(1, 85, 0),
            other => {
                bail!("edition {other:?} is unknown to xtask msrv: add the Rust that first has it")
            }
        })
    }
}

impl fmt::Display for RustVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RustVersion(major, minor, 0) => write!(f, "{major}.{minor}"),
            RustVersion(major, minor, patch) => write!(f, "{major}.{minor}.{patch}"),
        }
    }
}

/// What one package of the tree needs, and why.
#[derive(Debug)]
struct Need<'a> {
    id: &'a str,
    name: String,
    version: String,
    rust: RustVersion,
    why: String,
}

impl<'a> Need<'a> {
    /// What `package` needs; for the member being checked (`itself`) only
    /// its edition counts, as its rust-version is what is checked.
    fn of(package: &'a Value, itself: bool) -> Result<Need<'a>> {
        let field = |key: &str| package[key].as_str().unwrap_or_default().to_owned();
        let (name, version, edition) = (field("name"), field("version"), field("edition"));
        let by_edition = RustVersion::for_edition(&edition)
            .with_context(|| format!("package {name} {version}"))?;
        let declared = package["rust_version"]
            .as_str()
            .filter(|_| !itself)
            .map(RustVersion::parse)
            .transpose()
            .with_context(|| format!("package {name} {version}"))?;
        let (rust, why) = match declared {
            Some(v) if v >= by_edition => (v, format!("rust-version {v}")),
            Some(v) => (by_edition, format!("edition {edition}; rust-version {v}")),
            None if itself => (by_edition, format!("edition {edition}")),
            None => (by_edition, format!("edition {edition}; no rust-version")),
        };
        Ok(Need {
            id: package["id"].as_str().unwrap_or_default(),
            name,
            version,
            rust,
            why,
        })
    }
}

/// Checks every publishable member; fails naming each dependency that needs
/// a newer Rust than the member declares.
pub fn msrv(root: &Path) -> Result<()> {
    let meta = metadata(root, &["--locked", "--all-features"])?;

    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    // id -> ids of its normal and build dependencies (dev ones are not
    // built by someone who depends on the crate).
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?
    {
        let id = node["id"].as_str().context("resolve node without id")?;
        let wanted = node["deps"].as_array().into_iter().flatten().filter(|d| {
            d["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null() || k["kind"].as_str() == Some("build"))
        });
        deps.insert(id, wanted.filter_map(|d| d["pkg"].as_str()).collect());
    }

    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("cargo metadata: no workspace members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();

    let mut failures = Vec::new();
    let mut checked = 0;
    for &id in &members {
        let package = packages
            .get(id)
            .with_context(|| format!("member {id} missing from packages"))?;
        let name = package["name"].as_str().unwrap_or(id);
        if !publishable(package) {
            continue;
        }
        checked += 1;
        let Some(declared) = package["rust_version"].as_str() else {
            failures.push(format!("{name} declares no rust-version"));
            continue;
        };
        let declared = RustVersion::parse(declared).with_context(|| format!("package {name}"))?;

        let mut seen = BTreeSet::new();
        let mut stack = vec![id];
        let mut needs = Vec::new();
        while let Some(next) = stack.pop() {
            if !seen.insert(next) {
                continue;
            }
            let p = packages
                .get(next)
                .with_context(|| format!("{next} missing from packages"))?;
            needs.push(Need::of(p, next == id)?);
            stack.extend(deps.get(next).into_iter().flatten());
        }
        let highest = needs
            .iter()
            .map(|n| n.rust)
            .max()
            .unwrap_or(RustVersion(1, 0, 0));
        // Who sets it: other crates' own choice first, our crates only when
        // nothing else needs as much.
        let at_highest = |n: &&Need| n.rust == highest;
        let mut setters: Vec<String> = needs
            .iter()
            .filter(at_highest)
            .filter(|n| !members.contains(n.id))
            .map(|n| format!("{} {}", n.name, n.version))
            .collect();
        if setters.is_empty() {
            setters = needs
                .iter()
                .filter(at_highest)
                .map(|n| format!("{} {}", n.name, n.version))
                .collect();
        }
        setters.sort();
        let mut too_new: Vec<&Need> = needs.iter().filter(|n| n.rust > declared).collect();
        too_new.sort_by(|a, b| b.rust.cmp(&a.rust).then(a.name.cmp(&b.name)));
        if too_new.is_empty() {
            eprintln!(
                "msrv: {name} declares {declared}; it and the {} locked packages it builds with need {highest} ({})",
                needs.len() - 1,
                setters.join(", ")
            );
        } else {
            let mut message = format!(
                "{name} declares rust-version {declared}, but these locked dependencies need a newer Rust:"
            );
            for n in too_new {
                message += &format!(
                    "\n  {} {} needs Rust {} ({})",
                    n.name, n.version, n.rust, n.why
                );
            }
            failures.push(message);
        }
    }
    ensure!(checked > 0, "no publishable workspace member to check");
    if !failures.is_empty() {
        bail!(
            "{}\n\nRaise rust-version in [workspace.package] of Cargo.toml (only in a minor \
             release, noted in CHANGELOG.md), or lock older dependencies \
             (cargo update -p NAME --precise VERSION).",
            failures.join("\n")
        );
    }
    eprintln!("msrv: ok ({checked} publishable crates)");
    Ok(())
}

/// Builds every publishable member as a user of the library would, without
/// default features, then runs `cargo package` on them, verified (each is
/// built from its tarball, against the others' tarballs). The members with
/// `publish = false` are left out: cargo would package them too, and the
/// tests crate reads files outside its own directory. Uncommitted changes
/// are allowed: this checks the packages, not the git state.
pub fn package(root: &Path) -> Result<()> {
    let meta = metadata(root, &["--no-deps"])?;
    let mut excludes = Vec::new();
    let mut ours = Vec::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().context("package without name")?;
        if publishable(package) {
            let version = package["version"]
                .as_str()
                .context("package without version")?;
            ours.push(format!("{name}-{version}"));
        } else {
            excludes.extend(["--exclude", name]);
        }
    }
    crate::util::run(
        cargo(root)
            .args(["check", "--workspace", "--no-default-features"])
            .args(&excludes),
    )?;
    // cargo unpacks the packages it verifies against each other into
    // $CARGO_HOME/registry/src/<registry hash>/NAME-VERSION and reuses such
    // a directory on the next run from the same path: a later run would
    // verify against an earlier run's sources. Ours are not on crates.io,
    // so any such directory is stale.
    remove_unpacked(&ours)?;
    let packaged = crate::util::run(
        cargo(root)
            .args(["package", "--workspace", "--allow-dirty"])
            .args(&excludes),
    );
    remove_unpacked(&ours)?;
    packaged
}

/// Removes `$CARGO_HOME/registry/src/*/NAME-VERSION` for each of `ours`.
fn remove_unpacked(ours: &[String]) -> Result<()> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let Ok(registries) = std::fs::read_dir(home.join("registry/src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        for name in ours {
            let dir = registry.path().join(name);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("failed to remove {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// `cargo` (the one running xtask) in the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// `cargo metadata --format-version 1` with `args`, parsed.
fn metadata(root: &Path, args: &[&str]) -> Result<Value> {
    let mut cmd = cargo(root);
    cmd.args(["metadata", "--format-version", "1"]).args(args);
    eprintln!("+ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("cargo metadata's JSON")
}

/// Whether a package of `cargo metadata` may be published: `publish = false`
/// is an empty list of registries.
fn publishable(package: &Value) -> bool {
    !package["publish"]
        .as_array()
        .is_some_and(|registries| registries.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(RustVersion::parse("1.85").unwrap(), RustVersion(1, 85, 0));
        assert_eq!(RustVersion::parse("1.70.2").unwrap(), RustVersion(1, 70, 2));
        assert!(RustVersion::parse("1.x").is_err());
        assert!(RustVersion::parse("").is_err());
        assert!(RustVersion::parse("1.2.3.4").is_err());
        assert!(RustVersion(1, 85, 0) > RustVersion(1, 80, 1));
        assert_eq!(RustVersion(1, 85, 0).to_string(), "1.85");
        assert_eq!(RustVersion(1, 70, 2).to_string(), "1.70.2");
    }

    #[test]
    fn edition_can_need_more_than_rust_version() {
        let p = serde_json::json!({
            "name": "x", "version": "1.0.0", "edition": "2024", "rust_version": "1.80"
        });
        assert_eq!(Need::of(&p, false).unwrap().rust, RustVersion(1, 85, 0));
        let p = serde_json::json!({ "name": "y", "version": "1.0.0", "edition": "2018" });
        assert_eq!(Need::of(&p, false).unwrap().rust, RustVersion(1, 31, 0));
        // The checked crate's own rust-version is what is checked, not a need.
        let p = serde_json::json!({
            "name": "z", "version": "1.0.0", "edition": "2021", "rust_version": "1.90"
        });
        assert_eq!(Need::of(&p, true).unwrap().rust, RustVersion(1, 56, 0));
    }
}
