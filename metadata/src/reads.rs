//! Read-only namespace queries, served from the local database once a linearizable
//! barrier has passed (see `service`).

use std::ops::Range;

use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, Dataservers, DirEntry, Entries, Errno, FileKind, LayoutReply, LockReply,
    MetaReply, StatFsReply, XattrNames,
};
use rocksdb::{Direction, IteratorMode};

use crate::db::{u64_key, Cf, Db};
use crate::errors::{refuse, reply, OpError, OpResult};
use crate::layout_store::{self, Wanted};
use crate::names::{check_name, NAME_BYTES_MAX};
use crate::namespace::{attr_of, inode_record};
use crate::records::{decode_ids, dentry_key, parse_dentry_value, InodeRecord, DRAINING_KEY, LOST_KEY};
use crate::txn::{bounded, direction, load_counters, Records, Scanned};
use crate::{locks, xattrs};

/// Entries one readdir page may ask for.
pub const READDIR_LIMIT_MAX: u32 = 10_000;
/// A page when the request leaves the size to the server.
const READDIR_LIMIT_DEFAULT: u32 = 1_000;

/// One point in time of the database: every record a read looks at comes from the same
/// applied state (a file's attributes and its layout always belong together).
struct View<'a> {
    db: &'a Db,
    snapshot: rocksdb::Snapshot<'a>,
}

impl Records for View<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.snapshot.get_cf(self.db.cf(cf), key)
    }

    fn scan(&self, cf: Cf, keys: Range<&[u8]>, reverse: bool, limit: usize) -> Scanned {
        if keys.start >= keys.end {
            return Ok(Vec::new());
        }
        self.snapshot
            .iterator_cf_opt(self.db.cf(cf), bounded(&keys), direction(reverse))
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())))
            .collect()
    }
}

fn inode(view: &View<'_>, ino: u64) -> OpResult<InodeRecord> {
    inode_record(view.get(Cf::Inodes, &u64_key(ino))?, ino)?
        .ok_or_else(|| refuse(Errno::Enoent, format!("inode {ino} does not exist")))
}

fn ids(view: &View<'_>, key: &[u8]) -> OpResult<Vec<u32>> {
    decode_ids(view.get(Cf::SmMeta, key)?.as_deref()).map_err(OpError::Storage)
}

/// Answer a read `op`.
pub fn read(db: &Db, op: &Op) -> OpResult<MetaReply> {
    let view = View {
        db,
        snapshot: db.raw().snapshot(),
    };
    match op {
        Op::Lookup(l) => {
            check_name(&l.name)?;
            let dir = attr_of(inode(&view, l.parent)?)?;
            if dir.kind() != FileKind::Directory {
                return Err(refuse(Errno::Enotdir, format!("inode {} is not a directory", l.parent)));
            }
            let v = view
                .get(Cf::Dentries, &dentry_key(l.parent, &l.name))?
                .ok_or_else(|| refuse(Errno::Enoent, "no such name"))?;
            let (ino, _) = parse_dentry_value(&v).ok_or_else(|| OpError::Storage("bad directory entry".into()))?;
            Ok(reply(meta_reply::Result::Attr(attr_of(inode(&view, ino)?)?)))
        }
        Op::Getattr(g) => Ok(reply(meta_reply::Result::Attr(attr_of(inode(&view, g.inode)?)?))),
        Op::Readdir(r) => readdir(&view, r.dir, &r.after, r.limit),
        Op::Readlink(r) => {
            let rec = inode(&view, r.inode)?;
            if attr_of(rec.clone())?.kind() != FileKind::Symlink {
                return Err(refuse(Errno::Einval, "not a symlink"));
            }
            Ok(reply(meta_reply::Result::LinkTarget(rec.symlink)))
        }
        Op::GetLayout(g) => {
            let attr = attr_of(inode(&view, g.inode)?)?;
            match attr.kind() {
                FileKind::Regular => {}
                FileKind::Directory => return Err(refuse(Errno::Eisdir, "a directory has no layout")),
                _ => return Err(refuse(Errno::Einval, "not a regular file")),
            }
            let wanted = if g.no_stripes {
                Wanted::None
            } else if g.length > 0 {
                Wanted::Range(g.offset..g.offset.saturating_add(g.length))
            } else {
                Wanted::All
            };
            let layout = layout_store::layout(&view, g.inode, wanted)?;
            Ok(reply(meta_reply::Result::Layout(LayoutReply {
                attr: Some(attr),
                layout: Some(layout),
            })))
        }
        Op::Statfs(_) => {
            let c = load_counters(view.db)?;
            Ok(reply(meta_reply::Result::Statfs(StatFsReply {
                files: c.files,
                directories: c.directories,
                bytes: c.bytes,
                open_sessions: c.sessions,
            })))
        }
        Op::ListDraining(_) => Ok(reply(meta_reply::Result::Draining(Dataservers {
            ids: ids(&view, DRAINING_KEY)?,
            lost: ids(&view, LOST_KEY)?,
            // The leader's liveness table fills it in (`service`).
            silent: Vec::new(),
        }))),
        Op::GetXattr(g) => Ok(reply(meta_reply::Result::XattrValue(xattrs::get(
            &inode(&view, g.inode)?,
            &g.name,
        )?))),
        Op::GetLock(g) => {
            let (want, _) = locks::check(g.lock)?;
            inode(&view, g.inode)?;
            let held = locks::decode(view.get(Cf::Locks, &u64_key(g.inode))?)?;
            Ok(reply(meta_reply::Result::Lock(LockReply {
                conflict: locks::conflict(&held, &want).copied(),
            })))
        }
        Op::ListXattr(l) => Ok(reply(meta_reply::Result::XattrNames(XattrNames {
            names: xattrs::names(&inode(&view, l.inode)?),
        }))),
        _ => Err(refuse(Errno::Einval, "not a read")),
    }
}

/// The attributes of those of `dirs` that exist, from one point in time; read-your-write
/// hints, so a missing or unreadable one is left out rather than failing anything.
pub fn dir_attrs(db: &Db, dirs: &[u64]) -> Vec<Attr> {
    let view = View {
        db,
        snapshot: db.raw().snapshot(),
    };
    dirs.iter()
        .filter_map(|&d| inode(&view, d).and_then(attr_of).ok())
        .filter(|a| a.kind() == FileKind::Directory)
        .collect()
}

/// Entries of `dir` after the name `after`, in byte order. Paging by name is stable under
/// concurrent changes: an entry present for the whole listing is returned exactly once.
fn readdir(view: &View<'_>, dir: u64, after: &[u8], limit: u32) -> OpResult<MetaReply> {
    if limit > READDIR_LIMIT_MAX {
        return Err(refuse(
            Errno::Einval,
            format!("readdir page of {limit} entries, at most {READDIR_LIMIT_MAX}"),
        ));
    }
    if after.len() > NAME_BYTES_MAX {
        return Err(refuse(Errno::Enametoolong, "readdir cursor longer than a name"));
    }
    let limit = if limit == 0 { READDIR_LIMIT_DEFAULT } else { limit } as usize;
    let attr = attr_of(inode(view, dir)?)?;
    if attr.kind() != FileKind::Directory {
        return Err(refuse(Errno::Enotdir, format!("inode {dir} is not a directory")));
    }
    let prefix = u64_key(dir);
    let start = dentry_key(dir, after);
    let mut entries = Vec::new();
    let mut done = true;
    for item in view
        .snapshot
        .iterator_cf(view.db.cf(Cf::Dentries), IteratorMode::From(&start, Direction::Forward))
    {
        let (key, value) = item?;
        if !key.starts_with(&prefix) {
            break;
        }
        let name = &key[8..];
        if name == after {
            continue;
        }
        if entries.len() == limit {
            done = false;
            break;
        }
        let (ino, kind) = parse_dentry_value(&value).ok_or_else(|| OpError::Storage("bad directory entry".into()))?;
        entries.push(DirEntry {
            name: name.to_vec(),
            inode: ino,
            kind: kind as i32,
        });
    }
    Ok(reply(meta_reply::Result::Entries(Entries { entries, done })))
}
