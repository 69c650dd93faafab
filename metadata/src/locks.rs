//! Advisory byte-range locks shared by every mount: POSIX record locks (`fcntl`), and
//! `flock` as a lock on the whole file. They are state-machine records like any other,
//! so a leader change keeps them; a lock belongs to an owner within a mount's lock
//! session, and a mount that dies loses its locks when its session's lease runs out.
//!
//! An owner's locks never overlap each other: taking a range replaces what the owner held
//! there (a read lock over a write lock downgrades it), an unlock may split a range, and
//! touching ranges of one kind merge, as POSIX has it.

use cairn_common::proto::metadata::{Errno, Lock, LockKind};

use prost::Message;

use crate::errors::{refuse, OpResult};
use crate::records::LockTable;

/// Locks one inode may carry; past it a lock is refused (ENOLCK).
pub const LOCKS_PER_INODE_MAX: usize = 1024;
/// Inodes one lock session may hold locks on at once.
pub const LOCKED_INODES_PER_SESSION_MAX: usize = 10_000;

fn same_owner(a: &Lock, b: &Lock) -> bool {
    a.session == b.session && a.owner == b.owner
}

fn overlap(a: &Lock, b: &Lock) -> bool {
    a.start <= b.end && b.start <= a.end
}

/// A lock request's lock, range and kind, checked before anything looks at it.
pub fn check(want: Option<Lock>) -> OpResult<(Lock, LockKind)> {
    let want = want.ok_or_else(|| refuse(Errno::Einval, "a lock request names no lock"))?;
    if want.start > want.end {
        return Err(refuse(
            Errno::Einval,
            format!("lock range {}..={} ends before it starts", want.start, want.end),
        ));
    }
    let kind =
        LockKind::try_from(want.kind).map_err(|_| refuse(Errno::Einval, format!("unknown lock kind {}", want.kind)))?;
    Ok((want, kind))
}

/// The locks an inode's stored table holds (none when nothing is stored).
pub fn decode(stored: Option<Vec<u8>>) -> OpResult<Vec<Lock>> {
    Ok(match stored {
        Some(bytes) => LockTable::decode(bytes.as_slice())?.locks,
        None => Vec::new(),
    })
}

/// The first lock of another owner that `want` may not coexist with: any overlapping
/// lock when either of the two is a write lock.
pub fn conflict<'a>(held: &'a [Lock], want: &Lock) -> Option<&'a Lock> {
    let write = want.kind() == LockKind::Write;
    held.iter()
        .find(|l| !same_owner(l, want) && overlap(l, want) && (write || l.kind() == LockKind::Write))
}

/// Sets `want` (its owner's locks in its range become `want`, or go for an unlock); the
/// caller has checked that nothing conflicts.
pub fn set(held: &mut Vec<Lock>, want: Lock) {
    let mut out = Vec::with_capacity(held.len() + 2);
    for l in held.drain(..) {
        if !same_owner(&l, &want) || !overlap(&l, &want) {
            out.push(l);
            continue;
        }
        // What lies outside the new range stays as it was.
        if l.start < want.start {
            out.push(Lock {
                end: want.start - 1,
                ..l
            });
        }
        if l.end > want.end {
            out.push(Lock {
                start: want.end + 1,
                ..l
            });
        }
    }
    if want.kind() != LockKind::Unlock {
        let mut merged = want;
        out.retain(|l| {
            let touches = l.end.checked_add(1) == Some(merged.start) || merged.end.checked_add(1) == Some(l.start);
            if same_owner(l, &merged) && l.kind == merged.kind && touches {
                merged.start = merged.start.min(l.start);
                merged.end = merged.end.max(l.end);
                false
            } else {
                true
            }
        });
        out.push(merged);
    }
    out.sort_by_key(|l| (l.start, l.session, l.owner));
    *held = out;
}

/// Drops every lock of `session` (its mount is gone or closed it).
pub fn drop_session(held: &mut Vec<Lock>, session: u64) {
    held.retain(|l| l.session != session);
}

/// Whether `session` still holds a lock in `held`.
pub fn holds(held: &[Lock], session: u64) -> bool {
    held.iter().any(|l| l.session == session)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(session: u64, owner: u64, start: u64, end: u64, kind: LockKind) -> Lock {
        Lock {
            session,
            owner,
            start,
            end,
            kind: kind as i32,
            pid: 0,
        }
    }

    fn ranges(held: &[Lock]) -> Vec<(u64, u64, u64, LockKind)> {
        held.iter().map(|l| (l.owner, l.start, l.end, l.kind())).collect()
    }

    #[test]
    fn readers_share_and_a_writer_excludes_everyone_else() {
        let mut held = Vec::new();
        set(&mut held, lock(1, 10, 0, 99, LockKind::Read));
        // Another mount's reader shares; its writer does not.
        assert!(conflict(&held, &lock(2, 20, 50, 60, LockKind::Read)).is_none());
        assert_eq!(
            conflict(&held, &lock(2, 20, 99, 200, LockKind::Write)).map(|l| l.owner),
            Some(10)
        );
        // Another owner of the same mount is another holder too.
        assert!(conflict(&held, &lock(1, 11, 0, 0, LockKind::Write)).is_some());
        // Past the range, and for the owner itself, nothing conflicts.
        assert!(conflict(&held, &lock(2, 20, 100, u64::MAX, LockKind::Write)).is_none());
        assert!(conflict(&held, &lock(1, 10, 0, 99, LockKind::Write)).is_none());
        set(&mut held, lock(1, 10, 0, 99, LockKind::Write));
        assert_eq!(ranges(&held), [(10, 0, 99, LockKind::Write)]);
        assert!(conflict(&held, &lock(2, 20, 99, 99, LockKind::Read)).is_some());
    }

    #[test]
    fn an_unlock_splits_and_touching_ranges_of_one_kind_merge() {
        let mut held = Vec::new();
        set(&mut held, lock(1, 10, 0, 99, LockKind::Write));
        set(&mut held, lock(1, 10, 40, 59, LockKind::Unlock));
        assert_eq!(
            ranges(&held),
            [(10, 0, 39, LockKind::Write), (10, 60, 99, LockKind::Write)]
        );
        // A read lock in the hole does not merge with the write locks around it ...
        set(&mut held, lock(1, 10, 40, 59, LockKind::Read));
        assert_eq!(held.len(), 3);
        // ... a write lock there merges all three into one.
        set(&mut held, lock(1, 10, 40, 59, LockKind::Write));
        assert_eq!(ranges(&held), [(10, 0, 99, LockKind::Write)]);
        // A downgrade of the middle leaves three ranges, and another owner may read there.
        set(&mut held, lock(1, 10, 50, 50, LockKind::Read));
        assert_eq!(
            ranges(&held),
            [
                (10, 0, 49, LockKind::Write),
                (10, 50, 50, LockKind::Read),
                (10, 51, 99, LockKind::Write)
            ]
        );
        assert!(conflict(&held, &lock(2, 20, 50, 50, LockKind::Read)).is_none());
        // Unlocking everything to the end of the file leaves nothing.
        set(&mut held, lock(1, 10, 0, u64::MAX, LockKind::Unlock));
        assert!(held.is_empty());
    }

    #[test]
    fn ranges_at_the_ends_of_the_offsets_do_not_overflow() {
        let mut held = Vec::new();
        set(&mut held, lock(1, 10, 0, u64::MAX, LockKind::Write));
        set(&mut held, lock(1, 10, 0, 0, LockKind::Unlock));
        set(&mut held, lock(1, 10, u64::MAX, u64::MAX, LockKind::Unlock));
        assert_eq!(ranges(&held), [(10, 1, u64::MAX - 1, LockKind::Write)]);
        set(&mut held, lock(1, 10, u64::MAX, u64::MAX, LockKind::Write));
        set(&mut held, lock(1, 10, 0, 0, LockKind::Write));
        assert_eq!(ranges(&held), [(10, 0, u64::MAX, LockKind::Write)]);
    }

    #[test]
    fn a_session_drops_only_its_own_locks() {
        let mut held = Vec::new();
        set(&mut held, lock(1, 10, 0, 9, LockKind::Read));
        set(&mut held, lock(2, 10, 0, 9, LockKind::Read));
        set(&mut held, lock(1, 11, 20, 29, LockKind::Write));
        assert!(holds(&held, 1));
        drop_session(&mut held, 1);
        assert!(!holds(&held, 1));
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].session, 2);
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(check(None).is_err());
        assert!(check(Some(lock(1, 1, 10, 9, LockKind::Read))).is_err());
        let mut bad = lock(1, 1, 0, 9, LockKind::Read);
        bad.kind = 7;
        assert!(check(Some(bad)).is_err());
        assert_eq!(
            check(Some(lock(1, 1, 0, 0, LockKind::Unlock))).ok().map(|(_, k)| k),
            Some(LockKind::Unlock)
        );
    }
}
