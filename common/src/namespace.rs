//! Facts about the namespace that its clients and the metadata group share: the root
//! inode, size limits, which requests change state and which directories they change,
//! and how a layout is truncated.

use crate::proto::metadata::{meta_request::Op, Layout};

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
