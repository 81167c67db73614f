//! Where slirpnet puts its private sockets.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Where private socket directories go (the API socket's, a forwarder's
/// control socket's): $XDG_RUNTIME_DIR when set and short enough for a
/// socket path, else the temporary directory.
pub(crate) fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && p.as_os_str().len() < 64)
        .unwrap_or_else(std::env::temp_dir)
}

/// A new directory `<runtime_dir>/<prefix>XXXXXX`, mode 0700 from the
/// moment it exists (the umask only takes bits away), removed on drop.
pub(crate) fn private_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(runtime_dir())
}
