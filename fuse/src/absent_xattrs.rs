//! Extended attributes the metadata group said a file does not have, remembered for the
//! attribute TTL.
//!
//! Before every write the kernel asks whether the file has `security.capability` (a
//! write must drop a file's capabilities), and FUSE never lets it skip the question. Sent
//! to the leader, that one getxattr cost more than the write of up to 1 MiB it guards
//! (half a millisecond). Remembered, the answer may be as old as the attribute TTL, the
//! same age as the mode bits the kernel checks for set-user-ID in the same step; a change
//! through this mount is seen at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_common::proto::metadata::meta_request::Op;
use cairn_common::proto::metadata::{RemoveXattr, SetXattr};

use crate::recent::Recent;

#[derive(Debug)]
pub struct AbsentXattrs {
    /// `(inode, None)`: the file has no attributes at all (this mount just created it).
    absent: Recent<(u64, Option<Vec<u8>>), ()>,
    /// Counts this mount's attribute changes, so an answer that crossed one is not kept.
    changes: AtomicU64,
}

impl AbsentXattrs {
    pub fn new(fresh_for: Duration) -> AbsentXattrs {
        AbsentXattrs {
            absent: Recent::new(fresh_for),
            changes: AtomicU64::new(0),
        }
    }

    /// What to pass to `absent` for a question asked now.
    pub fn asking(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The metadata group answered that `inode` has no attribute `name`, to a question
    /// asked when `asking` returned `asked`.
    pub fn absent(&self, inode: u64, name: Vec<u8>, asked: u64) {
        self.remember(inode, Some(name), asked);
    }

    /// This mount created `inode`, with no attributes, in a request sent when `asking`
    /// returned `asked`.
    pub fn created(&self, inode: u64, asked: u64) {
        self.remember(inode, None, asked);
    }

    fn remember(&self, inode: u64, name: Option<Vec<u8>>, asked: u64) {
        if self.asking() == asked {
            self.absent.insert((inode, name), (), |_, _| false);
        }
    }

    /// Whether `inode` had no attribute `name` less than the TTL ago.
    pub fn is_absent(&self, inode: u64, name: &[u8]) -> bool {
        self.absent.is_fresh(&(inode, None)) || self.absent.is_fresh(&(inode, Some(name.to_vec())))
    }

    /// Before this mount sends `op`: what it sets or removes an attribute of is forgotten.
    pub fn before(&self, op: &Op) {
        if let Op::SetXattr(SetXattr { inode, .. }) | Op::RemoveXattr(RemoveXattr { inode, .. }) = op {
            self.changes.fetch_add(1, Ordering::AcqRel);
            self.absent.forget(|(i, _)| i == inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(inode: u64) -> Op {
        Op::SetXattr(SetXattr {
            inode,
            ..SetXattr::default()
        })
    }

    #[test]
    fn an_absence_is_served_until_this_mount_changes_the_file_or_the_ttl_passes() {
        let absent = AbsentXattrs::new(Duration::from_millis(50));
        let asked = absent.asking();
        absent.absent(7, b"security.capability".to_vec(), asked);
        absent.absent(8, b"security.capability".to_vec(), asked);
        assert!(absent.is_absent(7, b"security.capability"));
        assert!(absent.is_absent(7, b"security.capability"), "served more than once");
        assert!(!absent.is_absent(7, b"user.other"));
        absent.before(&set(7));
        assert!(
            !absent.is_absent(7, b"security.capability"),
            "a change through this mount"
        );
        assert!(absent.is_absent(8, b"security.capability"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!absent.is_absent(8, b"security.capability"), "stale after the TTL");
    }

    #[test]
    fn a_file_this_mount_created_has_no_attributes_until_it_sets_one() {
        let absent = AbsentXattrs::new(Duration::from_secs(1));
        absent.created(7, absent.asking());
        assert!(absent.is_absent(7, b"security.capability"));
        assert!(absent.is_absent(7, b"user.a"));
        assert!(!absent.is_absent(8, b"user.a"));
        absent.before(&set(7));
        assert!(!absent.is_absent(7, b"user.a"));
    }

    #[test]
    fn an_answer_that_crossed_a_change_is_not_kept() {
        let absent = AbsentXattrs::new(Duration::from_secs(1));
        let asked = absent.asking();
        absent.before(&set(7));
        absent.absent(7, b"user.a".to_vec(), asked);
        assert!(!absent.is_absent(7, b"user.a"));
    }
}
