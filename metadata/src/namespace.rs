//! The namespace mutations, applied to a [`Txn`] identically on every voter. Each one checks
//! everything before it writes, so a refused request leaves no trace (the caller also rolls
//! back the request's writes).

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{
    meta_reply, Attr, CommitLayout, CommitStripes, Create, Errno, FileKind, Layout, LayoutReply, Link, Lock, LockKind,
    MetaReply, Mkdir, OpenLockSession, OpenSession, RemoveXattr, Rename, ReplaceShard, SessionReply, SetAttr,
    SetDraining, SetEntryFormat, SetLock, SetXattr, Symlink,
};
use cairn_common::versions::{SESSIONLESS_COMMIT_FORMAT, STRIPE_KEYS_FORMAT};
use prost::Message;

use crate::db::{u64_key, Cf};
use crate::errors::{refuse, reply, OpError, OpResult};
use crate::layout::{check_layout, check_size, check_stripes};
use crate::layout_store::{self, Change, Wanted};
use crate::names::{check_mode, check_name, check_symlink_target};
use crate::records::{
    decode_entry_format, decode_ids, dentry_key, dentry_value, parse_dentry_value, session_expiry_key, InodeRecord,
    LockTable, SessionRecord, DRAINING_KEY, ENTRY_FORMAT_KEY, LOST_KEY, RECORD_FORMAT,
};
use crate::txn::Txn;
use crate::{locks, xattrs};

pub const SESSION_TTL_MS_MIN: u32 = 100;
pub const SESSION_TTL_MS_MAX: u32 = 3_600_000;
/// The inode a lock session names: none (inode 0 never exists).
const LOCK_SESSION: u64 = 0;

/// The attributes of the root directory before anything changed it.
pub fn root_attr() -> Attr {
    Attr {
        inode: ROOT,
        kind: FileKind::Directory as i32,
        mode: 0o755,
        nlink: 2,
        parent: ROOT,
        ..Attr::default()
    }
}

pub fn decode_inode(bytes: &[u8]) -> OpResult<InodeRecord> {
    let rec = InodeRecord::decode(bytes)?;
    if rec.format > RECORD_FORMAT {
        return Err(OpError::Storage(format!(
            "inode record format {} is newer than this binary ({RECORD_FORMAT})",
            rec.format
        )));
    }
    Ok(rec)
}

/// An inode from what the database holds under its key; the root exists before any write.
pub fn inode_record(stored: Option<Vec<u8>>, ino: u64) -> OpResult<Option<InodeRecord>> {
    match stored {
        Some(bytes) => decode_inode(&bytes).map(Some),
        None if ino == ROOT => Ok(Some(InodeRecord {
            format: RECORD_FORMAT,
            attr: Some(root_attr()),
            ..InodeRecord::default()
        })),
        None => Ok(None),
    }
}

pub fn attr_of(rec: InodeRecord) -> OpResult<Attr> {
    rec.attr
        .ok_or_else(|| OpError::Storage("inode record without attributes".into()))
}

fn attr_reply(attr: Attr) -> MetaReply {
    reply(meta_reply::Result::Attr(attr))
}

fn done() -> MetaReply {
    reply(meta_reply::Result::Done(Default::default()))
}

/// One request's mutation of the namespace at leader time `now`, in an entry of format
/// `format` (what an operation means may depend on it: `cairn_common::versions`).
#[derive(Debug)]
pub struct Apply<'t, 'a> {
    pub txn: &'t mut Txn<'a>,
    pub now: i64,
    pub format: u16,
}

impl Apply<'_, '_> {
    // ----- reading and writing records -----

    fn inode(&self, ino: u64) -> OpResult<Option<InodeRecord>> {
        inode_record(self.txn.get(Cf::Inodes, &u64_key(ino))?, ino)
    }

    fn attr(&self, ino: u64) -> OpResult<Attr> {
        match self.inode(ino)? {
            Some(rec) => attr_of(rec),
            None => Err(refuse(Errno::Enoent, format!("inode {ino} does not exist"))),
        }
    }

    fn dir(&self, ino: u64) -> OpResult<Attr> {
        let attr = self.attr(ino)?;
        if attr.kind() != FileKind::Directory {
            return Err(refuse(Errno::Enotdir, format!("inode {ino} is not a directory")));
        }
        Ok(attr)
    }

    fn put_attr(&mut self, attr: Attr) -> OpResult<()> {
        let mut rec = self.inode(attr.inode)?.unwrap_or_default();
        rec.format = RECORD_FORMAT;
        let ino = attr.inode;
        rec.attr = Some(attr);
        self.txn.put(Cf::Inodes, u64_key(ino), rec.encode_to_vec());
        Ok(())
    }

    fn entry(&self, parent: u64, name: &[u8]) -> OpResult<Option<(u64, FileKind)>> {
        match self.txn.get(Cf::Dentries, &dentry_key(parent, name))? {
            Some(v) => parse_dentry_value(&v)
                .map(Some)
                .ok_or_else(|| OpError::Storage("directory entry does not decode".into())),
            None => Ok(None),
        }
    }

    /// Runs `edit` on the split form of file `ino`'s layout (`layout_store`), keeping it in
    /// one value while the group's entries predate `STRIPE_KEYS_FORMAT`, as the build
    /// before reads it.
    fn edit_layout<T>(&mut self, ino: u64, edit: impl FnOnce(&mut Txn<'_>) -> OpResult<T>) -> OpResult<T> {
        layout_store::split(self.txn, ino)?;
        let out = edit(self.txn)?;
        if self.format < STRIPE_KEYS_FORMAT {
            layout_store::join(self.txn, ino)?;
        }
        Ok(out)
    }

    fn touch_dir(&mut self, mut dir: Attr, entries_delta: i64, nlink_delta: i32) -> OpResult<()> {
        dir.entries = dir.entries.saturating_add_signed(entries_delta);
        dir.nlink = dir.nlink.saturating_add_signed(nlink_delta);
        dir.mtime_ns = self.now;
        dir.ctime_ns = self.now;
        self.put_attr(dir)
    }

    fn new_attr(&mut self, kind: FileKind, mode: u32, uid: u32, gid: u32) -> Attr {
        let ino = self.txn.counters.next_inode;
        self.txn.counters.next_inode += 1;
        Attr {
            inode: ino,
            kind: kind as i32,
            mode,
            uid,
            gid,
            atime_ns: self.now,
            mtime_ns: self.now,
            ctime_ns: self.now,
            nlink: 1,
            ..Attr::default()
        }
    }

    /// Checks shared by everything that adds a name to a directory.
    fn free_name(&self, parent: u64, name: &[u8]) -> OpResult<Attr> {
        check_name(name)?;
        let dir = self.dir(parent)?;
        if self.entry(parent, name)?.is_some() {
            return Err(refuse(Errno::Eexist, "name exists"));
        }
        Ok(dir)
    }

    /// Remove an inode whose last name and last session are gone.
    fn drop_inode(&mut self, attr: &Attr) -> OpResult<()> {
        if attr.kind() == FileKind::Directory {
            self.txn.counters.directories = self.txn.counters.directories.saturating_sub(1);
        } else {
            self.txn.counters.files = self.txn.counters.files.saturating_sub(1);
        }
        if attr.kind() == FileKind::Regular {
            self.txn.counters.bytes = self.txn.counters.bytes.saturating_sub(attr.size);
            layout_store::remove(self.txn, attr.inode)?;
        }
        self.txn.delete(Cf::Inodes, u64_key(attr.inode));
        // Its lock sessions still name it; they find no table when they end.
        self.txn.delete(Cf::Locks, u64_key(attr.inode));
        Ok(())
    }

    /// One name of a non-directory is gone.
    fn unlink_inode(&mut self, ino: u64) -> OpResult<()> {
        let mut attr = self.attr(ino)?;
        attr.nlink = attr.nlink.saturating_sub(1);
        attr.ctime_ns = self.now;
        if attr.nlink == 0 && attr.sessions == 0 {
            self.drop_inode(&attr)
        } else {
            self.put_attr(attr)
        }
    }

    // ----- operations -----

    pub fn create(&mut self, c: Create) -> OpResult<MetaReply> {
        check_name(&c.name)?;
        check_mode(c.mode)?;
        let dir = self.dir(c.parent)?;
        if let Some((ino, kind)) = self.entry(c.parent, &c.name)? {
            if c.exclusive {
                return Err(refuse(Errno::Eexist, "name exists"));
            }
            return match kind {
                FileKind::Regular => Ok(attr_reply(self.attr(ino)?)),
                FileKind::Directory => Err(refuse(Errno::Eisdir, "name is a directory")),
                _ => Err(refuse(Errno::Eexist, "name exists and is not a regular file")),
            };
        }
        let attr = self.new_attr(FileKind::Regular, c.mode, c.uid, c.gid);
        self.txn.counters.files += 1;
        self.link_new(c.parent, &c.name, attr, dir, 0)?;
        Ok(attr_reply(attr))
    }

    fn link_new(&mut self, parent: u64, name: &[u8], attr: Attr, dir: Attr, dir_nlink: i32) -> OpResult<()> {
        self.txn.put(
            Cf::Dentries,
            dentry_key(parent, name),
            dentry_value(attr.inode, attr.kind()).to_vec(),
        );
        self.put_attr(attr)?;
        self.touch_dir(dir, 1, dir_nlink)
    }

    pub fn mkdir(&mut self, m: Mkdir) -> OpResult<MetaReply> {
        check_mode(m.mode)?;
        let dir = self.free_name(m.parent, &m.name)?;
        let mut attr = self.new_attr(FileKind::Directory, m.mode, m.uid, m.gid);
        attr.nlink = 2;
        attr.parent = m.parent;
        self.txn.counters.directories += 1;
        self.link_new(m.parent, &m.name, attr, dir, 1)?;
        Ok(attr_reply(attr))
    }

    pub fn symlink(&mut self, s: Symlink) -> OpResult<MetaReply> {
        check_symlink_target(&s.target)?;
        let dir = self.free_name(s.parent, &s.name)?;
        let mut attr = self.new_attr(FileKind::Symlink, 0o777, s.uid, s.gid);
        attr.size = s.target.len() as u64;
        self.txn.counters.files += 1;
        self.txn.put(
            Cf::Dentries,
            dentry_key(s.parent, &s.name),
            dentry_value(attr.inode, FileKind::Symlink).to_vec(),
        );
        let rec = InodeRecord {
            format: RECORD_FORMAT,
            attr: Some(attr),
            symlink: s.target,
            xattrs: Vec::new(),
        };
        self.txn.put(Cf::Inodes, u64_key(attr.inode), rec.encode_to_vec());
        self.touch_dir(dir, 1, 0)?;
        Ok(attr_reply(attr))
    }

    pub fn link(&mut self, l: Link) -> OpResult<MetaReply> {
        let mut attr = self.attr(l.inode)?;
        if attr.kind() == FileKind::Directory {
            return Err(refuse(Errno::Eperm, "hard links to directories are not allowed"));
        }
        if attr.nlink == 0 {
            return Err(refuse(Errno::Enoent, "the file was unlinked"));
        }
        let dir = self.free_name(l.new_parent, &l.new_name)?;
        attr.nlink += 1;
        attr.ctime_ns = self.now;
        self.link_new(l.new_parent, &l.new_name, attr, dir, 0)?;
        Ok(attr_reply(attr))
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> OpResult<MetaReply> {
        check_name(name)?;
        let dir = self.dir(parent)?;
        let Some((ino, kind)) = self.entry(parent, name)? else {
            return Err(refuse(Errno::Enoent, "no such name"));
        };
        if kind == FileKind::Directory {
            return Err(refuse(Errno::Eisdir, "name is a directory; use rmdir"));
        }
        self.txn.delete(Cf::Dentries, dentry_key(parent, name));
        self.touch_dir(dir, -1, 0)?;
        self.unlink_inode(ino)?;
        Ok(done())
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> OpResult<MetaReply> {
        check_name(name)?;
        let dir = self.dir(parent)?;
        let Some((ino, kind)) = self.entry(parent, name)? else {
            return Err(refuse(Errno::Enoent, "no such name"));
        };
        if kind != FileKind::Directory {
            return Err(refuse(Errno::Enotdir, "name is not a directory"));
        }
        let victim = self.attr(ino)?;
        if victim.entries != 0 {
            return Err(refuse(Errno::Enotempty, "directory is not empty"));
        }
        self.txn.delete(Cf::Dentries, dentry_key(parent, name));
        self.touch_dir(dir, -1, -1)?;
        self.drop_inode(&victim)?;
        Ok(done())
    }

    /// Whether `ino` is `ancestor` or lies below it, following directories' parents.
    fn is_within(&self, mut ino: u64, ancestor: u64) -> OpResult<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            ino = self.dir(ino)?.parent;
        }
    }

    pub fn rename(&mut self, r: Rename) -> OpResult<MetaReply> {
        check_name(&r.name)?;
        check_name(&r.new_name)?;
        self.dir(r.parent)?;
        self.dir(r.new_parent)?;
        let Some((ino, kind)) = self.entry(r.parent, &r.name)? else {
            return Err(refuse(Errno::Enoent, "no such name"));
        };
        let is_dir = kind == FileKind::Directory;
        if is_dir && self.is_within(r.new_parent, ino)? {
            return Err(refuse(Errno::Einval, "cannot move a directory into its own subtree"));
        }
        let target = self.entry(r.new_parent, &r.new_name)?;
        if r.exchange {
            return self.exchange(&r, (ino, kind), target);
        }
        if r.no_replace && target.is_some() {
            return Err(refuse(Errno::Eexist, "the new name exists"));
        }
        if let Some((target_ino, target_kind)) = target {
            if target_ino == ino {
                // Two names of one file (or the same name): POSIX says do nothing.
                return Ok(done());
            }
            match (is_dir, target_kind == FileKind::Directory) {
                (true, false) => return Err(refuse(Errno::Enotdir, "target is not a directory")),
                (false, true) => return Err(refuse(Errno::Eisdir, "target is a directory")),
                (true, true) if self.attr(target_ino)?.entries != 0 => {
                    return Err(refuse(Errno::Enotempty, "target directory is not empty"))
                }
                _ => {}
            }
        }
        // Everything is checked: now the writes.
        let dir_link = i32::from(is_dir);
        self.txn.delete(Cf::Dentries, dentry_key(r.parent, &r.name));
        let old_parent = self.dir(r.parent)?;
        self.touch_dir(old_parent, -1, -dir_link)?;
        let mut new_parent_entries = 1;
        let mut new_parent_links = dir_link;
        if let Some((target_ino, target_kind)) = target {
            new_parent_entries = 0;
            if target_kind == FileKind::Directory {
                new_parent_links -= 1;
                let t = self.attr(target_ino)?;
                self.drop_inode(&t)?;
            } else {
                self.unlink_inode(target_ino)?;
            }
        }
        self.txn.put(
            Cf::Dentries,
            dentry_key(r.new_parent, &r.new_name),
            dentry_value(ino, kind).to_vec(),
        );
        let new_parent = self.dir(r.new_parent)?;
        self.touch_dir(new_parent, new_parent_entries, new_parent_links)?;
        let mut attr = self.attr(ino)?;
        attr.ctime_ns = self.now;
        if is_dir {
            attr.parent = r.new_parent;
        }
        self.put_attr(attr)?;
        Ok(done())
    }

    /// RENAME_EXCHANGE: the two names swap what they name, in one entry.
    fn exchange(
        &mut self,
        r: &Rename,
        (ino, kind): (u64, FileKind),
        target: Option<(u64, FileKind)>,
    ) -> OpResult<MetaReply> {
        let Some((t_ino, t_kind)) = target else {
            return Err(refuse(Errno::Enoent, "no such name to exchange with"));
        };
        if t_ino == ino {
            return Ok(done());
        }
        let (is_dir, t_is_dir) = (kind == FileKind::Directory, t_kind == FileKind::Directory);
        if (is_dir && self.is_within(r.new_parent, ino)?) || (t_is_dir && self.is_within(r.parent, t_ino)?) {
            return Err(refuse(Errno::Einval, "cannot move a directory into its own subtree"));
        }
        self.txn.put(
            Cf::Dentries,
            dentry_key(r.parent, &r.name),
            dentry_value(t_ino, t_kind).to_vec(),
        );
        self.txn.put(
            Cf::Dentries,
            dentry_key(r.new_parent, &r.new_name),
            dentry_value(ino, kind).to_vec(),
        );
        // A directory's ".." link moves with it; between one parent the two cancel out.
        let moved = i32::from(is_dir) - i32::from(t_is_dir);
        let old_parent = self.dir(r.parent)?;
        self.touch_dir(old_parent, 0, -moved)?;
        let new_parent = self.dir(r.new_parent)?;
        self.touch_dir(new_parent, 0, moved)?;
        for (inode, now_in, dir) in [(ino, r.new_parent, is_dir), (t_ino, r.parent, t_is_dir)] {
            let mut attr = self.attr(inode)?;
            attr.ctime_ns = self.now;
            if dir {
                attr.parent = now_in;
            }
            self.put_attr(attr)?;
        }
        Ok(done())
    }

    /// Runs `change` on inode `ino`'s record and stamps its ctime.
    fn change_record(
        &mut self,
        ino: u64,
        change: impl FnOnce(&mut InodeRecord) -> OpResult<()>,
    ) -> OpResult<MetaReply> {
        let mut rec = self
            .inode(ino)?
            .ok_or_else(|| refuse(Errno::Enoent, format!("inode {ino} does not exist")))?;
        change(&mut rec)?;
        let mut attr = attr_of(rec.clone())?;
        attr.ctime_ns = self.now;
        rec.attr = Some(attr);
        rec.format = RECORD_FORMAT;
        self.txn.put(Cf::Inodes, u64_key(ino), rec.encode_to_vec());
        Ok(done())
    }

    pub fn set_xattr(&mut self, s: SetXattr) -> OpResult<MetaReply> {
        self.change_record(s.inode, |rec| xattrs::set(rec, s))
    }

    pub fn remove_xattr(&mut self, r: RemoveXattr) -> OpResult<MetaReply> {
        self.change_record(r.inode, |rec| xattrs::remove(rec, &r.name))
    }

    pub fn setattr(&mut self, s: SetAttr) -> OpResult<MetaReply> {
        let mut attr = self.attr(s.inode)?;
        if let Some(mode) = s.mode {
            check_mode(mode)?;
            attr.mode = mode;
        }
        if let Some(uid) = s.uid {
            attr.uid = uid;
        }
        if let Some(gid) = s.gid {
            attr.gid = gid;
        }
        if let Some(t) = s.atime_ns {
            attr.atime_ns = t;
        }
        if let Some(t) = s.mtime_ns {
            attr.mtime_ns = t;
        }
        if let Some(size) = s.size {
            match attr.kind() {
                FileKind::Regular => {}
                FileKind::Directory => return Err(refuse(Errno::Eisdir, "cannot truncate a directory")),
                _ => return Err(refuse(Errno::Einval, "can only truncate a regular file")),
            }
            crate::layout::check_size(size)?;
            if size != attr.size {
                attr.layout_version += 1;
                let truncate = Change {
                    keep_below: size,
                    layout: Layout::default(),
                    whole: false,
                    size,
                    version: attr.layout_version,
                };
                self.edit_layout(attr.inode, |txn| layout_store::change(txn, attr.inode, truncate))?;
                self.txn.counters.bytes = self.txn.counters.bytes.saturating_sub(attr.size).saturating_add(size);
                attr.size = size;
                if s.mtime_ns.is_none() {
                    attr.mtime_ns = self.now;
                }
            }
        }
        attr.ctime_ns = self.now;
        self.put_attr(attr)?;
        Ok(attr_reply(attr))
    }

    // ----- write sessions -----

    fn check_ttl(ttl_ms: u32) -> OpResult<()> {
        if !(SESSION_TTL_MS_MIN..=SESSION_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(refuse(
                Errno::Einval,
                format!("session ttl {ttl_ms} ms outside {SESSION_TTL_MS_MIN}..={SESSION_TTL_MS_MAX}"),
            ));
        }
        Ok(())
    }

    fn expiry(&self, ttl_ms: u32) -> i64 {
        self.now.saturating_add(i64::from(ttl_ms) * 1_000_000)
    }

    /// A new session record with its expiry, counted.
    fn new_session(&mut self, inode: u64, ttl_ms: u32) -> (u64, i64) {
        let session = self.txn.counters.next_session;
        self.txn.counters.next_session += 1;
        self.txn.counters.sessions += 1;
        let expires_ns = self.expiry(ttl_ms);
        let rec = SessionRecord {
            inode,
            expires_ns,
            locked: Vec::new(),
        };
        self.put_session(session, &rec);
        self.txn.put(
            Cf::SessionExpiry,
            session_expiry_key(expires_ns, session).to_vec(),
            Vec::new(),
        );
        (session, expires_ns)
    }

    pub fn open_session(&mut self, o: OpenSession) -> OpResult<MetaReply> {
        Self::check_ttl(o.ttl_ms)?;
        let mut attr = self.attr(o.inode)?;
        match attr.kind() {
            FileKind::Regular => {}
            FileKind::Directory => return Err(refuse(Errno::Eisdir, "cannot write a directory")),
            _ => return Err(refuse(Errno::Einval, "can only write a regular file")),
        }
        if attr.nlink == 0 {
            return Err(refuse(Errno::Enoent, "the file was unlinked"));
        }
        let (session, expires_ns) = self.new_session(o.inode, o.ttl_ms);
        attr.sessions += 1;
        self.put_attr(attr)?;
        let wanted = if o.no_stripes { Wanted::None } else { Wanted::All };
        let layout = layout_store::layout(&*self.txn, o.inode, wanted)?;
        Ok(reply(meta_reply::Result::Session(SessionReply {
            session,
            expires_ns,
            attr: Some(attr),
            layout: Some(layout),
        })))
    }

    pub fn open_lock_session(&mut self, o: OpenLockSession) -> OpResult<MetaReply> {
        Self::check_ttl(o.ttl_ms)?;
        let (session, expires_ns) = self.new_session(LOCK_SESSION, o.ttl_ms);
        Ok(reply(meta_reply::Result::Session(SessionReply {
            session,
            expires_ns,
            attr: None,
            layout: None,
        })))
    }

    fn put_session(&mut self, session: u64, rec: &SessionRecord) {
        self.txn.put(Cf::Sessions, u64_key(session), rec.encode_to_vec());
    }

    fn session(&self, session: u64) -> OpResult<SessionRecord> {
        let bytes = self
            .txn
            .get(Cf::Sessions, &u64_key(session))?
            .ok_or_else(|| refuse(Errno::Estale, format!("session {session} expired or was closed")))?;
        Ok(SessionRecord::decode(bytes.as_slice())?)
    }

    pub fn renew_session(&mut self, session: u64, ttl_ms: u32) -> OpResult<MetaReply> {
        Self::check_ttl(ttl_ms)?;
        let mut rec = self.session(session)?;
        self.txn
            .delete(Cf::SessionExpiry, session_expiry_key(rec.expires_ns, session).to_vec());
        rec.expires_ns = self.expiry(ttl_ms);
        self.txn.put(
            Cf::SessionExpiry,
            session_expiry_key(rec.expires_ns, session).to_vec(),
            Vec::new(),
        );
        self.put_session(session, &rec);
        Ok(reply(meta_reply::Result::Session(SessionReply {
            session,
            expires_ns: rec.expires_ns,
            attr: None,
            layout: None,
        })))
    }

    pub fn close_session(&mut self, session: u64) -> OpResult<MetaReply> {
        let rec = self.session(session)?;
        self.end_session(session, &rec)?;
        Ok(done())
    }

    pub fn end_session(&mut self, session: u64, rec: &SessionRecord) -> OpResult<()> {
        self.txn.delete(Cf::Sessions, u64_key(session));
        self.txn
            .delete(Cf::SessionExpiry, session_expiry_key(rec.expires_ns, session).to_vec());
        self.txn.counters.sessions = self.txn.counters.sessions.saturating_sub(1);
        if rec.inode == LOCK_SESSION {
            for &inode in &rec.locked {
                let mut held = self.locks(inode)?;
                locks::drop_session(&mut held, session);
                self.put_locks(inode, &held);
            }
            return Ok(());
        }
        let Some(inode) = self.inode(rec.inode)? else {
            return Ok(());
        };
        let mut attr = attr_of(inode)?;
        attr.sessions = attr.sessions.saturating_sub(1);
        if attr.nlink == 0 && attr.sessions == 0 {
            self.drop_inode(&attr)
        } else {
            self.put_attr(attr)
        }
    }

    /// Ends the session `session` if its lease ran out (used by the expiry sweep).
    pub fn expire_session(&mut self, session: u64) -> OpResult<()> {
        let Some(bytes) = self.txn.get(Cf::Sessions, &u64_key(session))? else {
            return Ok(());
        };
        let rec = SessionRecord::decode(bytes.as_slice())?;
        if rec.expires_ns <= self.now {
            self.end_session(session, &rec)?;
        }
        Ok(())
    }

    // ----- byte-range locks -----

    fn locks(&self, inode: u64) -> OpResult<Vec<Lock>> {
        locks::decode(self.txn.get(Cf::Locks, &u64_key(inode))?)
    }

    fn put_locks(&mut self, inode: u64, held: &[Lock]) {
        if held.is_empty() {
            self.txn.delete(Cf::Locks, u64_key(inode));
        } else {
            let table = LockTable { locks: held.to_vec() };
            self.txn.put(Cf::Locks, u64_key(inode), table.encode_to_vec());
        }
    }

    pub fn set_lock(&mut self, s: SetLock) -> OpResult<MetaReply> {
        let (want, kind) = locks::check(s.lock)?;
        let mut session = self.session(want.session)?;
        if session.inode != LOCK_SESSION {
            return Err(refuse(
                Errno::Einval,
                format!("session {} is a write session, not a lock session", want.session),
            ));
        }
        if session.expires_ns < self.now {
            return Err(refuse(Errno::Estale, format!("lock session {} expired", want.session)));
        }
        self.attr(s.inode)?;
        let mut held = self.locks(s.inode)?;
        if kind != LockKind::Unlock {
            if let Some(c) = locks::conflict(&held, &want) {
                return Err(refuse(
                    Errno::Eagain,
                    format!(
                        "bytes {}..={} are locked by owner {} of lock session {} (pid {})",
                        c.start, c.end, c.owner, c.session, c.pid
                    ),
                ));
            }
        }
        locks::set(&mut held, want);
        if held.len() > locks::LOCKS_PER_INODE_MAX {
            return Err(refuse(
                Errno::Enolck,
                format!("an inode carries at most {} locks", locks::LOCKS_PER_INODE_MAX),
            ));
        }
        let at = session.locked.binary_search(&s.inode);
        match (at, locks::holds(&held, want.session)) {
            (Err(i), true) => {
                if session.locked.len() >= locks::LOCKED_INODES_PER_SESSION_MAX {
                    return Err(refuse(
                        Errno::Enolck,
                        format!(
                            "a lock session holds locks on at most {} inodes",
                            locks::LOCKED_INODES_PER_SESSION_MAX
                        ),
                    ));
                }
                session.locked.insert(i, s.inode);
                self.put_session(want.session, &session);
            }
            (Ok(i), false) => {
                session.locked.remove(i);
                self.put_session(want.session, &session);
            }
            _ => {}
        }
        self.put_locks(s.inode, &held);
        Ok(done())
    }

    pub fn replace_shard(&mut self, r: ReplaceShard) -> OpResult<MetaReply> {
        let mut attr = self.attr(r.inode)?;
        attr.layout_version += 1;
        let version = attr.layout_version;
        let layout = self.edit_layout(r.inode, |txn| {
            let stale = || refuse(Errno::Estale, "the stripe no longer names that shard there");
            let old = layout_store::find_stripe(txn, r.inode, &r.stripe_id, r.stripe_offset)?.ok_or_else(stale)?;
            if old.shards.iter().any(|s| s.dataserver == r.to_dataserver) {
                return Err(refuse(Errno::Einval, "the target already holds a shard of the stripe"));
            }
            let mut moved = old.clone();
            let shard = moved
                .shards
                .iter_mut()
                .find(|s| s.index == r.index && s.dataserver == r.from_dataserver)
                .ok_or_else(stale)?;
            shard.dataserver = r.to_dataserver;
            let mut head = layout_store::replace_stripe(txn, r.inode, &old, &moved, version)?;
            head.stripes = vec![moved];
            Ok(head)
        })?;
        attr.ctime_ns = self.now;
        self.put_attr(attr)?;
        Ok(reply(meta_reply::Result::Layout(LayoutReply {
            attr: Some(attr),
            layout: Some(layout),
        })))
    }

    pub fn set_draining(&mut self, d: SetDraining) -> OpResult<MetaReply> {
        let mut draining = self.ids(DRAINING_KEY)?;
        let mut lost = self.ids(LOST_KEY)?;
        let node = d.dataserver;
        let (drain, lose) = match (d.draining, d.lost) {
            // An operator's drain, which outlives the node's return.
            (true, false) => (true, false),
            // Lost: unless an operator drains it already.
            (true, true) => (true, lost.contains(&node) || !draining.contains(&node)),
            // Back from lost: an operator's drain stays.
            (false, true) => (draining.contains(&node) && !lost.contains(&node), false),
            (false, false) => (false, false),
        };
        for (list, keep) in [(&mut draining, drain), (&mut lost, lose)] {
            list.retain(|&id| id != node);
            if keep {
                list.push(node);
                list.sort_unstable();
            }
        }
        self.put_ids(DRAINING_KEY, &draining)?;
        self.put_ids(LOST_KEY, &lost)?;
        Ok(done())
    }

    /// Raises the entry format the group writes. The leader checked that every member
    /// applies `format` before proposing this; here only what every voter decides alike is
    /// checked (whatever its build), so all apply it the same way.
    pub fn set_entry_format(&mut self, s: SetEntryFormat) -> OpResult<MetaReply> {
        let current =
            decode_entry_format(self.txn.get(Cf::SmMeta, ENTRY_FORMAT_KEY)?.as_deref()).map_err(OpError::Storage)?;
        let format = u16::try_from(s.format).ok().filter(|&f| f >= current).ok_or_else(|| {
            refuse(
                Errno::Einval,
                format!(
                    "entry format {} is below the group's {current}: formats are never lowered",
                    s.format
                ),
            )
        })?;
        self.txn
            .put(Cf::SmMeta, ENTRY_FORMAT_KEY.to_vec(), format.to_le_bytes().to_vec());
        Ok(done())
    }

    fn ids(&self, key: &[u8]) -> OpResult<Vec<u32>> {
        decode_ids(self.txn.get(Cf::SmMeta, key)?.as_deref()).map_err(OpError::Storage)
    }

    fn put_ids(&mut self, key: &[u8], ids: &[u32]) -> OpResult<()> {
        let bytes = postcard::to_stdvec(ids).map_err(|e| OpError::Storage(e.to_string()))?;
        self.txn.put(Cf::SmMeta, key.to_vec(), bytes);
        Ok(())
    }

    /// Whether write session `session` (0: none) lets a layout of `inode` be committed.
    fn check_writer(&self, session: u64, inode: u64) -> OpResult<()> {
        if session == 0 && self.format >= SESSIONLESS_COMMIT_FORMAT {
            return Ok(());
        }
        let rec = self.session(session)?;
        if rec.inode != inode {
            let why = format!("session {session} was opened on inode {}, not {inode}", rec.inode);
            return Err(refuse(Errno::Einval, why));
        }
        if rec.expires_ns < self.now {
            return Err(refuse(Errno::Estale, format!("write session {session} expired")));
        }
        Ok(())
    }

    /// The attributes of file `inode` for a commit by `session` on top of
    /// `expected_version`, or why it cannot commit.
    fn commit_base(&self, session: u64, inode: u64, expected_version: u64) -> OpResult<Attr> {
        self.check_writer(session, inode)?;
        let attr = self.attr(inode)?;
        if attr.kind() != FileKind::Regular {
            return Err(refuse(Errno::Einval, "only a regular file has a layout"));
        }
        if attr.layout_version != expected_version {
            return Err(refuse(
                Errno::Eagain,
                format!(
                    "layout of inode {inode} is at version {}, not {expected_version}: another writer committed first",
                    attr.layout_version
                ),
            ));
        }
        Ok(attr)
    }

    /// Applies a checked commit: the layout's `change`, then the file's new size and times.
    fn commit(&mut self, mut attr: Attr, change: Change) -> OpResult<(Attr, Layout)> {
        let size = change.size;
        let head = self.edit_layout(attr.inode, |txn| layout_store::change(txn, attr.inode, change))?;
        self.txn.counters.bytes = self.txn.counters.bytes.saturating_sub(attr.size).saturating_add(size);
        attr.size = size;
        attr.mtime_ns = self.now;
        attr.ctime_ns = self.now;
        self.put_attr(attr)?;
        Ok((attr, head))
    }

    pub fn commit_layout(&mut self, c: CommitLayout) -> OpResult<MetaReply> {
        let mut attr = self.commit_base(c.session, c.inode, c.expected_version)?;
        let mut layout = c.layout.unwrap_or_default();
        check_layout(&layout, c.size)?;
        attr.layout_version += 1;
        layout.version = attr.layout_version;
        let whole = Change {
            keep_below: 0,
            layout: layout.clone(),
            whole: true,
            size: c.size,
            version: attr.layout_version,
        };
        let (attr, _) = self.commit(attr, whole)?;
        // A writer of the build before starts over from the layout it gets back.
        Ok(reply(meta_reply::Result::Layout(LayoutReply {
            attr: Some(attr),
            layout: Some(layout),
        })))
    }

    pub fn commit_stripes(&mut self, c: CommitStripes) -> OpResult<MetaReply> {
        if self.format < STRIPE_KEYS_FORMAT {
            return Err(refuse(
                Errno::Eopnotsupp,
                format!(
                    "the group writes entries of format {}, before commits of changed stripes ({STRIPE_KEYS_FORMAT}): commit the whole layout",
                    self.format
                ),
            ));
        }
        let mut attr = self.commit_base(c.session, c.inode, c.expected_version)?;
        let layout = c.layout.unwrap_or_default();
        check_size(c.size)?;
        if !layout.inline_data.is_empty() {
            return Err(refuse(
                Errno::Einval,
                "inline bytes are committed with the whole layout",
            ));
        }
        check_stripes(&layout, c.size)?;
        attr.layout_version += 1;
        let changed = Change {
            keep_below: c.keep_below,
            layout,
            whole: false,
            size: c.size,
            version: attr.layout_version,
        };
        let (attr, head) = self.commit(attr, changed)?;
        Ok(reply(meta_reply::Result::Layout(LayoutReply {
            attr: Some(attr),
            layout: Some(head),
        })))
    }
}
