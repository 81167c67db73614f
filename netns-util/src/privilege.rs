//! Whether this process holds the capabilities a step needs.

use caps::{CapSet, Capability};

/// A step needs a capability this process lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} needs {cap} {scope}")]
#[non_exhaustive]
pub struct PrivilegeError {
    /// What was being done, such as `joining network namespace /run/netns/x`.
    pub action: String,
    /// The capability, such as [`Capability::CAP_SYS_ADMIN`].
    pub cap: Capability,
    /// Where it is needed, such as `in the namespace's owning user namespace`.
    pub scope: &'static str,
}

impl PrivilegeError {
    /// `action` needs `cap` `scope`; for a caller's own checks, like
    /// [`require_cap`] makes.
    pub fn new(action: impl Into<String>, cap: Capability, scope: &'static str) -> Self {
        PrivilegeError {
            action: action.into(),
            cap,
            scope,
        }
    }
}

/// Whether the effective set holds `cap` (in this process's own user namespace).
pub fn has_cap(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// `Ok` when the effective set holds `cap`, else an error naming the action.
///
/// ```
/// use netns_util::{has_cap, require_cap, Capability};
///
/// let checked = require_cap(Capability::CAP_NET_ADMIN, "adding a route", "in this user namespace");
/// match checked {
///     Ok(()) => assert!(has_cap(Capability::CAP_NET_ADMIN)),
///     Err(e) => assert_eq!(e.to_string(), "adding a route needs CAP_NET_ADMIN in this user namespace"),
/// }
/// ```
///
/// # Errors
///
/// A [`PrivilegeError`] when the effective set lacks `cap`.
pub fn require_cap(
    cap: Capability,
    action: impl Into<String>,
    scope: &'static str,
) -> Result<(), PrivilegeError> {
    if has_cap(cap) {
        Ok(())
    } else {
        Err(PrivilegeError::new(action, cap, scope))
    }
}
