//! Whether this process holds the capabilities a step needs.

use caps::{CapSet, Capability};

/// A step needs a capability this process lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} needs {cap} {scope}")]
pub struct PrivilegeError {
    /// What was being done, such as `joining network namespace /run/netns/x`.
    pub action: String,
    /// The capability, such as `CAP_SYS_ADMIN`.
    pub cap: String,
    /// Where it is needed, such as `in the namespace's owning user namespace`.
    pub scope: &'static str,
}

/// Whether the effective set holds `cap` (in this process's own user namespace).
pub fn has_cap(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// `Ok` when the effective set holds `cap`, else an error naming the action.
pub fn require_cap(
    cap: Capability,
    action: impl Into<String>,
    scope: &'static str,
) -> Result<(), PrivilegeError> {
    if has_cap(cap) {
        Ok(())
    } else {
        Err(PrivilegeError {
            action: action.into(),
            cap: cap.to_string(),
            scope,
        })
    }
}
