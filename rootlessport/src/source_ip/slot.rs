//! Which table is this forwarder's: slots, each held through an abstract
//! unix socket bound inside the namespace.

use std::os::fd::OwnedFd;

use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::error::SourceIpError;

/// The protocol field of every rule and route we add (unassigned in
/// iproute2's rt_protos).
pub const MARK: u8 = 82;
/// Slot `n` uses table `TABLE_BASE + n` ("rp" in its high bytes).
pub const TABLE_BASE: u32 = 0x7270_0000;
/// How many forwarders may keep client addresses in one namespace at once.
pub const SLOTS: u32 = 1024;

/// The lowest free slot and its lock.
pub(super) fn take_slot() -> Result<(u32, OwnedFd), SourceIpError> {
    for slot in 0..SLOTS {
        match lock_slot(slot) {
            Ok(Some(fd)) => return Ok((slot, fd)),
            Ok(None) => continue,
            Err(error) => return Err(SourceIpError::Lock { slot, error }),
        }
    }
    Err(SourceIpError::NoSlot)
}

/// Binds slot `slot`'s abstract name in the calling thread's namespace:
/// `None` when a live forwarder holds it.
pub(super) fn lock_slot(slot: u32) -> nix::Result<Option<OwnedFd>> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let name = format!("rootlessport/keep-source-ip/{:08x}", TABLE_BASE + slot);
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    match bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        Ok(()) => Ok(Some(fd)),
        Err(nix::Error::EADDRINUSE) => Ok(None),
        Err(e) => Err(e),
    }
}
