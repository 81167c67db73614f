//! Which table is this forwarder's: slots, each held through an abstract
//! unix socket bound inside the namespace, each with a table that nobody
//! else may use; and what dead forwarders left in theirs.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::rule::RuleMessage;
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::error::SourceIpError;
use crate::rtnl::{Found, Rtnl};

/// The protocol field of every rule and route we add (unassigned in
/// iproute2's rt_protos).
pub const MARK: u8 = 82;
/// Slot `n` uses table `TABLE_BASE + n` ("rp" in its high bytes).
pub const TABLE_BASE: u32 = 0x7270_0000;
/// How many forwarders may keep client addresses in one namespace at once.
pub const SLOTS: u32 = 1024;

/// A slot this forwarder holds while the process lives.
#[derive(Debug)]
pub(super) struct Slot {
    /// Its number.
    pub(super) number: u32,
    /// Its table.
    pub(super) table: u32,
    _lock: OwnedFd,
}

/// Takes the lowest slot that no live forwarder holds and whose table
/// nobody else uses (no rule or route of another protocol is in it or
/// looks it up), then clears what dead forwarders left in it and in every
/// other slot nobody holds: only what carries [`MARK`].
pub(super) fn take(rtnl: &mut Rtnl) -> Result<Slot, SourceIpError> {
    // Tables known to hold someone else's rules or routes.
    let mut others = BTreeSet::new();
    loop {
        let (number, lock) = lowest_free(&others)?;
        // Listed while holding the lock: whatever of ours is in its table
        // now was left by a dead forwarder.
        let rules = rtnl
            .rules()
            .map_err(|error| SourceIpError::ListRules { error })?;
        let routes = rtnl
            .routes()
            .map_err(|error| SourceIpError::ListRoutes { error })?;
        let table = TABLE_BASE + number;
        let foreign = tables(&rules, &routes, |mark| mark != MARK);
        if foreign.contains(&table) {
            tracing::debug!(
                table,
                "the table holds rules or routes not ours; taking another"
            );
            others.extend(foreign);
            continue;
        }
        clear_leftovers(rtnl, number, &rules, &routes)?;
        return Ok(Slot {
            number,
            table,
            _lock: lock,
        });
    }
}

/// The lowest slot nobody holds whose table is not in `skip`, and its lock.
fn lowest_free(skip: &BTreeSet<u32>) -> Result<(u32, OwnedFd), SourceIpError> {
    for slot in (0..SLOTS).filter(|s| !skip.contains(&(TABLE_BASE + s))) {
        match lock_slot(slot) {
            Ok(Some(fd)) => return Ok((slot, fd)),
            Ok(None) => continue,
            Err(error) => {
                return Err(SourceIpError::Lock {
                    slot,
                    error: error.into(),
                })
            }
        }
    }
    Err(SourceIpError::NoSlot)
}

/// The slots' tables that rules or routes whose protocol field passes
/// `pick` are in or look up.
fn tables(
    rules: &[Found<RuleMessage>],
    routes: &[Found<RouteMessage>],
    pick: impl Fn(u8) -> bool,
) -> BTreeSet<u32> {
    let slots = TABLE_BASE..TABLE_BASE + SLOTS;
    rules
        .iter()
        .map(|r| (r.table, r.mark))
        .chain(routes.iter().map(|r| (r.table, r.mark)))
        .filter(|&(table, mark)| slots.contains(&table) && pick(mark))
        .map(|(table, _)| table)
        .collect()
}

/// Removes what carries our mark in the tables of `slot` (ours) and of
/// every other slot nobody holds.
fn clear_leftovers(
    rtnl: &mut Rtnl,
    slot: u32,
    rules: &[Found<RuleMessage>],
    routes: &[Found<RouteMessage>],
) -> Result<(), SourceIpError> {
    for table in tables(rules, routes, |mark| mark == MARK) {
        let other = table - TABLE_BASE;
        // A slot whose lock we can take belongs to a dead forwarder;
        // holding its lock while clearing keeps a new one out of it.
        let _held = if other == slot {
            None
        } else {
            match lock_slot(other) {
                Ok(Some(fd)) => Some(fd),
                Ok(None) => continue,
                Err(error) => {
                    return Err(SourceIpError::Lock {
                        slot: other,
                        error: error.into(),
                    })
                }
            }
        };
        for r in rules.iter().filter(|r| r.mark == MARK && r.table == table) {
            rtnl.delete_rule_message(r.message.clone())
                .map_err(|error| SourceIpError::ClearRule { table, error })?;
        }
        for r in routes.iter().filter(|r| r.mark == MARK && r.table == table) {
            rtnl.delete_route_message(r.message.clone())
                .map_err(|error| SourceIpError::ClearRoute { table, error })?;
        }
        if other != slot {
            tracing::info!(
                table,
                "removed the rules and routes of a forwarder that did not clean up"
            );
        }
    }
    Ok(())
}

/// Binds slot `slot`'s abstract name in the calling thread's namespace:
/// `None` when a live forwarder holds it.
fn lock_slot(slot: u32) -> nix::Result<Option<OwnedFd>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn found<T: Default>(table: u32, mark: u8) -> Found<T> {
        Found {
            table,
            mark,
            message: T::default(),
        }
    }

    #[test]
    fn only_the_slots_tables_count_by_their_owner() {
        let rules = [
            found(TABLE_BASE, MARK),
            found(TABLE_BASE + 1, 4),
            // The main table, and one past the last slot: never a slot's.
            found(254, 4),
            found(TABLE_BASE + SLOTS, 4),
        ];
        let routes = [
            found(TABLE_BASE + 2, MARK),
            found(TABLE_BASE + 2, 3),
            found(TABLE_BASE + SLOTS - 1, 4),
        ];
        let ours = tables(&rules, &routes, |m| m == MARK);
        assert_eq!(ours, BTreeSet::from([TABLE_BASE, TABLE_BASE + 2]));
        let theirs = tables(&rules, &routes, |m| m != MARK);
        assert_eq!(
            theirs,
            BTreeSet::from([TABLE_BASE + 1, TABLE_BASE + 2, TABLE_BASE + SLOTS - 1])
        );
    }
}
