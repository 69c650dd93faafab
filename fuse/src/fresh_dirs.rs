//! Directories this mount just changed, with their attributes as the metadata group
//! returned them with the change.
//!
//! The kernel drops its cached attributes of a directory whenever it creates, removes or
//! renames something in it, and the next path walk through the directory asks for them
//! again (a getattr, one round trip to the leader) before it can check permissions. A
//! mount creating or removing many files in one directory would pay that round trip for
//! every file. The change's reply already carries the directory's attributes, read right
//! after the change was applied, so the first getattr that follows is answered from here.
//! What it returns is never older than what the kernel would have kept cached for the
//! same time had it not dropped it (`fresh_for`, the attribute TTL).

use std::time::Duration;

use cairn_common::proto::metadata::meta_request::Op;
use cairn_common::proto::metadata::{Attr, RemoveXattr, SetAttr, SetXattr};

use crate::recent::Recent;

#[derive(Debug)]
pub struct FreshDirs {
    dirs: Recent<u64, Attr>,
}

impl FreshDirs {
    pub fn new(fresh_for: Duration) -> FreshDirs {
        FreshDirs {
            dirs: Recent::new(fresh_for),
        }
    }

    /// Remembers `changed`, received now. Of two replies about one directory that cross
    /// each other, the later change (by ctime) stays.
    pub fn changed(&self, changed: Vec<Attr>) {
        for attr in changed {
            self.dirs
                .insert(attr.inode, attr, |held, new| held.ctime_ns > new.ctime_ns);
        }
    }

    /// The attributes of `inode` if this mount changed it less than `fresh_for` ago; taken
    /// once (the kernel caches what it gets for the TTL itself).
    pub fn take(&self, inode: u64) -> Option<Attr> {
        self.dirs.take(&inode)
    }

    /// Before this mount sends `op`: forgets what `op` may change without its reply
    /// showing it (a directory's mode or extended attributes, a renamed directory's
    /// parent), so nothing older than the change is served after it.
    pub fn before(&self, op: &Op) {
        // Every request of the mount passes here: the lock is taken only by those that
        // change something.
        match op {
            Op::Setattr(SetAttr { inode, .. })
            | Op::SetXattr(SetXattr { inode, .. })
            | Op::RemoveXattr(RemoveXattr { inode, .. }) => {
                self.dirs.take(inode);
            }
            Op::Rename(_) => self.dirs.forget(|_| true),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(inode: u64, ctime_ns: i64) -> Attr {
        Attr {
            inode,
            ctime_ns,
            ..Attr::default()
        }
    }

    #[test]
    fn a_changed_directory_is_served_once_and_only_while_fresh() {
        let fresh = FreshDirs::new(Duration::from_millis(50));
        fresh.changed(vec![dir(7, 10)]);
        assert_eq!(fresh.take(7).map(|a| a.ctime_ns), Some(10));
        assert!(fresh.take(7).is_none(), "served once");
        fresh.changed(vec![dir(8, 10)]);
        std::thread::sleep(Duration::from_millis(60));
        assert!(fresh.take(8).is_none(), "stale after the TTL");
    }

    #[test]
    fn changes_the_reply_does_not_show_drop_what_is_remembered() {
        let fresh = FreshDirs::new(Duration::from_secs(1));
        fresh.changed(vec![dir(7, 10), dir(8, 10)]);
        fresh.before(&Op::Setattr(SetAttr {
            inode: 7,
            ..SetAttr::default()
        }));
        assert!(fresh.take(7).is_none(), "a chmod of the directory");
        assert!(fresh.take(8).is_some());
        fresh.changed(vec![dir(7, 10), dir(8, 10)]);
        fresh.before(&Op::Rename(Default::default()));
        assert!(fresh.take(7).is_none() && fresh.take(8).is_none(), "a rename");
    }

    #[test]
    fn the_later_change_wins_when_replies_cross() {
        let fresh = FreshDirs::new(Duration::from_secs(1));
        fresh.changed(vec![dir(7, 20)]);
        fresh.changed(vec![dir(7, 10)]);
        assert_eq!(fresh.take(7).map(|a| a.ctime_ns), Some(20));
    }
}
