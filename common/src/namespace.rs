//! Facts about the namespace that its clients and the metadata group share: the root
//! inode, size limits, which requests change state and which directories they change,
//! how a layout is truncated, and which stripes a range of a file lies in.

use std::ops::Range;

use crate::proto::metadata::{meta_request::Op, Layout, Stripe};

/// The root directory's inode; it exists before anything is written.
pub const ROOT: u64 = 1;
/// The largest file size accepted (far beyond any device; keeps offsets clear of overflow).
pub const FILE_BYTES_MAX: u64 = 1 << 60;
/// Small files keep their bytes in the metadata; above this they must use stripes.
pub const INLINE_BYTES_MAX: usize = 64 * 1024;
pub const STRIPE_ID_BYTES: usize = 16;

/// Whether `op` changes the namespace (and so is a Raft entry with an idempotency key).
pub fn is_mutation(op: &Op) -> bool {
    !matches!(
        op,
        Op::Lookup(_)
            | Op::Getattr(_)
            | Op::Readdir(_)
            | Op::Readlink(_)
            | Op::GetLayout(_)
            | Op::Statfs(_)
            | Op::ListDraining(_)
            | Op::Heartbeat(_)
            | Op::GetXattr(_)
            | Op::ListXattr(_)
            | Op::GetLock(_)
    )
}

/// The name of `op` as a metric label: the request's field name in the protocol.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Lookup(_) => "lookup",
        Op::Getattr(_) => "getattr",
        Op::Readdir(_) => "readdir",
        Op::Readlink(_) => "readlink",
        Op::GetLayout(_) => "get_layout",
        Op::Statfs(_) => "statfs",
        Op::ListDraining(_) => "list_draining",
        Op::GetXattr(_) => "get_xattr",
        Op::ListXattr(_) => "list_xattr",
        Op::GetLock(_) => "get_lock",
        Op::Create(_) => "create",
        Op::Mkdir(_) => "mkdir",
        Op::Symlink(_) => "symlink",
        Op::Link(_) => "link",
        Op::Unlink(_) => "unlink",
        Op::Rmdir(_) => "rmdir",
        Op::Rename(_) => "rename",
        Op::Setattr(_) => "setattr",
        Op::OpenSession(_) => "open_session",
        Op::RenewSession(_) => "renew_session",
        Op::CloseSession(_) => "close_session",
        Op::CommitLayout(_) => "commit_layout",
        Op::ReplaceShard(_) => "replace_shard",
        Op::SetDraining(_) => "set_draining",
        Op::SetEntryFormat(_) => "set_entry_format",
        Op::Heartbeat(_) => "heartbeat",
        Op::SetXattr(_) => "set_xattr",
        Op::RemoveXattr(_) => "remove_xattr",
        Op::OpenLockSession(_) => "open_lock_session",
        Op::SetLock(_) => "set_lock",
        Op::CommitStripes(_) => "commit_stripes",
    }
}

/// The directories whose entries `op` changes when it succeeds.
pub fn changed_dirs(op: &Op) -> Vec<u64> {
    match op {
        Op::Create(c) => vec![c.parent],
        Op::Mkdir(m) => vec![m.parent],
        Op::Symlink(s) => vec![s.parent],
        Op::Link(l) => vec![l.new_parent],
        Op::Unlink(u) => vec![u.parent],
        Op::Rmdir(r) => vec![r.parent],
        Op::Rename(r) if r.parent == r.new_parent => vec![r.parent],
        Op::Rename(r) => vec![r.parent, r.new_parent],
        _ => Vec::new(),
    }
}

/// The bytes of the file range `range` that stripe `s` holds, as offsets in the stripe;
/// `None` when it holds none of them (a reader of the range needs nothing from it).
pub fn stripe_part(s: &Stripe, range: &Range<u64>) -> Option<Range<u64>> {
    let start = range.start.max(s.offset);
    let end = range.end.min(s.offset.saturating_add(s.length));
    (start < end).then(|| start - s.offset..end - s.offset)
}

/// The layout of a file cut (or extended with zeros) to `size` bytes: stripes past the end
/// are dropped, the one across it is shortened; shards are never rewritten.
pub fn truncate_layout(old: &Layout, size: u64) -> Layout {
    let mut new = old.clone();
    new.inline_data.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    new.stripes.retain(|s| s.offset < size);
    if let Some(last) = new.stripes.last_mut() {
        last.length = last.length.min(size - last.offset);
    }
    new
}

/// The stripes of `old` after a commit of changed stripes (`CommitStripes`): those below
/// `keep_below` (the one across it shortened), less those a stripe of `new` (in file
/// order) covers, with `new` in their place, in file order. It is what the leader stores;
/// a writer that must commit a whole layout instead (to a group that predates such
/// commits) sends it.
pub fn overlay_stripes(old: &Layout, keep_below: u64, new: &[Stripe]) -> Vec<Stripe> {
    let covered = |s: &Stripe| {
        let i = new.partition_point(|n| n.offset <= s.offset);
        i > 0 && s.offset < new[i - 1].offset.saturating_add(new[i - 1].length)
    };
    let mut stripes: Vec<Stripe> = truncate_layout(old, keep_below)
        .stripes
        .into_iter()
        .filter(|s| !covered(s))
        .chain(new.iter().cloned())
        .collect();
    stripes.sort_by_key(|s| s.offset);
    stripes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_stripes_take_the_place_of_those_they_cover_below_what_is_kept() {
        let at = |offset, length, id: u8| Stripe {
            stripe_id: vec![id; 16],
            offset,
            length,
            ..Stripe::default()
        };
        let old = Layout {
            stripes: vec![at(0, 10, 1), at(10, 10, 2), at(20, 10, 3), at(30, 5, 4)],
            ..Layout::default()
        };
        let view = |stripes: Vec<Stripe>| -> Vec<(u64, u64, u8)> {
            stripes.iter().map(|s| (s.offset, s.length, s.stripe_id[0])).collect()
        };
        // Kept below 25: the stripe at 20 is shortened, the one at 30 goes; the new one at
        // 10 takes the place of the old one there, and one past the end is added.
        assert_eq!(
            view(overlay_stripes(&old, 25, &[at(10, 10, 9), at(40, 10, 8)])),
            [(0, 10, 1), (10, 10, 9), (20, 5, 3), (40, 10, 8)]
        );
        // Nothing kept: only the new ones.
        assert_eq!(view(overlay_stripes(&old, 0, &[at(0, 3, 7)])), [(0, 3, 7)]);
        // All kept, nothing new.
        assert_eq!(view(overlay_stripes(&old, 35, &[])), view(old.stripes.clone()));
    }

    #[test]
    fn a_range_takes_from_a_stripe_only_the_bytes_it_holds() {
        let s = Stripe {
            offset: 100,
            length: 50,
            ..Stripe::default()
        };
        assert_eq!(stripe_part(&s, &(0..1000)), Some(0..50));
        assert_eq!(stripe_part(&s, &(120..130)), Some(20..30));
        assert_eq!(stripe_part(&s, &(90..101)), Some(0..1));
        assert_eq!(stripe_part(&s, &(149..u64::MAX)), Some(49..50));
        assert_eq!(stripe_part(&s, &(0..100)), None);
        assert_eq!(stripe_part(&s, &(150..200)), None);
        assert_eq!(stripe_part(&s, &(120..120)), None);
        let empty = Stripe { length: 0, ..s };
        assert_eq!(stripe_part(&empty, &(0..1000)), None);
    }
}
