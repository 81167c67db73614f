//! Finding the slirp4netns binary and what it supports.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use slirp_opts::Features;

/// How long `slirp4netns --help` may take before it is killed, by default.
pub const HELP_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary cannot be found or asked for its features.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryError {
    /// Not on PATH.
    #[error("slirp4netns not found in PATH; install it, or name it in SetupOptions::binary")]
    NotFound,
    /// The given path is not an executable file.
    #[error("{path} is not an executable file: {reason}")]
    NotExecutable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The binary cannot be read.
    #[error("failed to read {path}: {error}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error (in the message; not also its source).
        error: std::io::Error,
    },
    /// `--help` could not be run, or did not exit in time.
    #[error(transparent)]
    Help(#[from] slirp_proc::RunError),
    /// `--help` exited non-zero.
    #[error("{path} --help failed ({status}): {output}")]
    HelpFailed {
        /// The path.
        path: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
}

/// The binary to use: `explicit` when given (it must be an executable file),
/// else `slirp4netns` on PATH.
///
/// # Errors
///
/// [`BinaryError::NotExecutable`] for a named path that is not an
/// executable file, [`BinaryError::NotFound`] when PATH has none.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, BinaryError> {
    if let Some(path) = explicit {
        let meta = std::fs::metadata(path).map_err(|e| BinaryError::NotExecutable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !executable_file(&meta) {
            return Err(BinaryError::NotExecutable {
                path: path.to_owned(),
                reason: "not a file with execute permission".into(),
            });
        }
        return Ok(path.to_owned());
    }
    let path = std::env::var_os("PATH").ok_or(BinaryError::NotFound)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("slirp4netns"))
        .find(|p| is_executable(p))
        .ok_or(BinaryError::NotFound)
}

/// Whether `meta` is a regular file with an execute bit.
fn executable_file(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// Whether `path` is a regular file with an execute bit (following links).
pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| executable_file(&m))
}

type CacheKey = (PathBuf, u64, u64, i64);

static FEATURES: Mutex<Option<HashMap<CacheKey, Features>>> = Mutex::new(None);

/// Runs `binary --help` (killed after `timeout`) and reads its
/// features; cached per binary (path, device, inode and modification time),
/// so a replaced binary is asked again.
///
/// # Errors
///
/// The binary cannot be read or run, hangs, or `--help` fails.
pub fn detect_features(binary: &Path, timeout: Duration) -> Result<Features, BinaryError> {
    let meta = std::fs::metadata(binary).map_err(|error| BinaryError::Stat {
        path: binary.to_owned(),
        error,
    })?;
    let key = (binary.to_owned(), meta.dev(), meta.ino(), meta.mtime());
    if let Some(f) = FEATURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(&key))
    {
        return Ok(*f);
    }
    let mut cmd = Command::new(binary);
    cmd.arg("--help");
    let out = slirp_proc::output_within(cmd, timeout)?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        return Err(BinaryError::HelpFailed {
            path: binary.to_owned(),
            status: out.status,
            output: text,
        });
    }
    let features = Features::from_help(&String::from_utf8_lossy(&out.stdout));
    FEATURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, features);
    Ok(features)
}
