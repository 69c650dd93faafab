//! The FUSE mount: the kernel's file calls turned into namespace requests, streaming
//! writes and read-ahead reads through the Rust client (and so through the logic nodes).
//!
//! Writes stream: each inode written through this mount has one [`FileWriter`], shared by
//! the handles that write it, which sends full stripes as they fill (memory per writer is
//! bounded, whatever the file's size). `flush` (every `close`), `fsync` and the last
//! `release` commit it: they return only once the new content is durable and visible to
//! every later `open` (close-to-open consistency). A read through this mount first
//! publishes this mount's pending writes to the inode (read-your-writes).
//!
//! Caching: attributes and entries for one second; the kernel keeps a file's page cache
//! across opens only while its layout version is unchanged, and drops it when this mount
//! takes a lock on the file (locks are the cluster's, see `locks`).
//!
//! A writer lives until its inode's last handle here closes. Unlink (or rename over) an
//! inode this mount still has open opens its writer if needed and has it hold a write
//! session, which keeps the inode alive, so it stays readable and writable, as POSIX
//! wants.

mod absent_xattrs;
mod attrs;
mod fresh_dirs;
mod locks;
pub mod passthrough;
pub mod powercut;
mod recent;
mod removals;
pub mod session;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use cairn_client::{CairnClient, FileReader, FileWriter};
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, Create, FileKind, GetAttr, GetXattr, Link, ListXattr, LockKind, ReadLink,
    RemoveXattr, Rename, Rmdir, SetAttr, SetXattr, StatFs, Symlink, Unlink,
};
use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::XattrFlags;
use tokio::runtime::Handle;
use tracing::warn;

use crate::absent_xattrs::AbsentXattrs;
use crate::attrs::{errno, file_attr, kind, ns};
use crate::fresh_dirs::FreshDirs;
use crate::locks::{caller_interrupted, kind_of, typ_of, MountLocks, Want};
use crate::removals::Removals;
use crate::session::{done, REQUEST_BYTES_MAX};

const TTL: Duration = Duration::from_secs(1);
/// Layout versions remembered for page caching; past this the memory is cleared.
const OPENED_VERSIONS_MAX: usize = 100_000;
const O_EXCL: i32 = 0o200;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This mount's readers of `inode` forget what they read ahead.
fn changed(st: &mut State, inode: u64) {
    if st.open_per_inode.contains_key(&inode) {
        *st.commits.entry(inode).or_default() += 1;
    }
}

/// A lock was taken: what another mount committed before it released the lock must be
/// what this mount reads now and builds on, so the kernel's cached pages and attributes
/// of the file and this mount's read-ahead go, and a clean writer of the file starts
/// over from the committed content.
fn lock_taken(state: &Mutex<State>, notifier: &OnceLock<Notifier>, rt: &Handle, ino: INodeNo, inode: u64) {
    let shared = {
        let mut st = lock(state);
        changed(&mut st, inode);
        st.writers.get(&inode).map(SharedWriter::handles)
    };
    if let Some((writer, size)) = shared {
        let mut w = lock(&writer);
        if let Err(e) = rt.block_on(w.refresh()) {
            warn!(inode, "reading the committed layout after a lock: {e}");
        }
        size.store(w.size(), Ordering::Release);
    }
    if let Some(n) = notifier.get() {
        if let Err(e) = n.inval_inode(ino, 0, -1) {
            // The kernel no longer knows the inode: nothing of it is cached.
            tracing::debug!(inode, "dropping cached pages after a lock: {e}");
        }
    }
}

#[derive(Debug)]
struct OpenFile {
    inode: u64,
    reader: Mutex<FileReader>,
    /// The count of this mount's commits to the inode that the reader has seen.
    seen_commits: AtomicU64,
    /// Whether this handle wrote (its `flush` commits).
    writes: AtomicBool,
    /// The lock owners that took a lock through this handle: an open file's own locks
    /// (OFD locks) go with its last close, which only this tells apart.
    lock_owners: Mutex<Vec<u64>>,
}

impl OpenFile {
    fn took_lock(&self, owner: u64) {
        let mut owners = lock(&self.lock_owners);
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }
}

/// The writer of an inode, shared by its handles; it closes with the inode's last handle.
#[derive(Debug)]
struct SharedWriter {
    writer: Arc<Mutex<FileWriter>>,
    /// The file's size with the writer's changes, for attribute replies.
    size: Arc<AtomicU64>,
}

/// A shared writer as a request uses it: the writer and its published size.
type WriterHandles = (Arc<Mutex<FileWriter>>, Arc<AtomicU64>);

impl SharedWriter {
    fn handles(&self) -> WriterHandles {
        (self.writer.clone(), self.size.clone())
    }
}

type Listing = Arc<Vec<(u64, FileType, Vec<u8>)>>;

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, Arc<OpenFile>>,
    open_per_inode: HashMap<u64, usize>,
    /// Writers of open inodes; a writer's session (once held) keeps an unlinked inode alive.
    writers: HashMap<u64, SharedWriter>,
    /// This mount's commits per open inode (readers drop their read-ahead on a change).
    commits: HashMap<u64, u64>,
    opened_versions: HashMap<u64, u64>,
    dirs: HashMap<u64, Listing>,
}

#[derive(Debug)]
pub struct CairnFs {
    client: Arc<CairnClient>,
    /// The directory mounted: the namespace's root, or a subtree's. The kernel knows it
    /// as inode 1 (`FUSE_ROOT_ID`); every other inode keeps its number.
    root: u64,
    runtime: tokio::runtime::Runtime,
    state: Arc<Mutex<State>>,
    removals: Removals,
    next_fh: AtomicU64,
    locks: Arc<MountLocks>,
    /// Set once the session is mounted: drops the kernel's cached pages of a file whose
    /// lock this mount takes.
    notifier: Arc<OnceLock<Notifier>>,
    fresh_dirs: FreshDirs,
    absent_xattrs: AbsentXattrs,
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// An extended attribute's value or name list as the kernel asks for it: its size when
/// `size` is 0, the bytes when they fit, ERANGE when not.
fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    match u32::try_from(data.len()) {
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len <= size => reply.data(data),
        _ => reply.error(Errno::ERANGE),
    }
}

impl CairnFs {
    /// A file system of the directory `subtree` ("/" for the whole namespace); a lock of
    /// this mount lasts `lock_lease` past the mount's end.
    pub fn new(client: Arc<CairnClient>, subtree: &str, lock_lease: Duration) -> Result<CairnFs, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let root = runtime
            .block_on(client.resolve(subtree))
            .map_err(|e| format!("subtree {subtree:?}: {e}"))?;
        if root.kind() != FileKind::Directory {
            return Err(format!("subtree {subtree:?} is not a directory"));
        }
        let locks = MountLocks::new(client.clone(), lock_lease);
        runtime.spawn(locks.clone().renew_forever());
        Ok(CairnFs {
            client,
            root: root.inode,
            runtime,
            state: Arc::new(Mutex::new(State::default())),
            removals: Removals::default(),
            next_fh: AtomicU64::new(1),
            locks,
            notifier: Arc::new(OnceLock::new()),
            fresh_dirs: FreshDirs::new(TTL),
            absent_xattrs: AbsentXattrs::new(TTL),
        })
    }

    /// Where the mounted session's notifier goes (see `notifier`).
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// The namespace inode behind the kernel's inode `ino`.
    fn inode(&self, ino: INodeNo) -> u64 {
        if ino == INodeNo::ROOT {
            self.root
        } else {
            ino.0
        }
    }

    /// The kernel's inode for namespace inode `inode`. The namespace's own root never
    /// shows under a subtree (no directory has two names), so inode 1 stays unambiguous.
    fn kernel_ino(&self, inode: u64) -> INodeNo {
        if inode == self.root {
            INodeNo::ROOT
        } else {
            INodeNo(inode)
        }
    }

    fn kernel_attr(&self, a: &Attr) -> fuser::FileAttr {
        let mut attr = file_attr(a);
        attr.ino = self.kernel_ino(a.inode);
        attr
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&TTL, &self.kernel_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn meta(&self, op: Op) -> Result<meta_reply::Result, Errno> {
        self.fresh_dirs.before(&op);
        self.absent_xattrs.before(&op);
        let (result, changed) = self
            .runtime
            .block_on(self.client.meta_and_dirs(op))
            .map_err(|e| errno(&e))?;
        self.fresh_dirs.changed(changed);
        Ok(result)
    }

    /// Attributes as this mount sees them: a file being written has the writer's size.
    fn patched(&self, mut a: Attr) -> Attr {
        if let Some(w) = self.state().writers.get(&a.inode) {
            a.size = w.size.load(Ordering::Acquire);
        }
        a
    }

    fn attr_of(&self, op: Op) -> Result<Attr, Errno> {
        match self.meta(op)? {
            meta_reply::Result::Attr(a) => Ok(self.patched(a)),
            _ => Err(Errno::EIO),
        }
    }

    fn getattr_fresh(&self, inode: u64) -> Result<Attr, Errno> {
        self.attr_of(Op::Getattr(GetAttr { inode }))
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.state().files.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_handle(&self, inode: u64) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        let commits = st.commits.get(&inode).copied().unwrap_or(0);
        st.files.insert(
            fh,
            Arc::new(OpenFile {
                inode,
                // Always the newest layout: taking a lock must show the last holder's
                // writes to a file this mount already has open.
                reader: Mutex::new(self.client.open_reader(inode, None)),
                seen_commits: AtomicU64::new(commits),
                writes: AtomicBool::new(false),
                lock_owners: Mutex::new(Vec::new()),
            }),
        );
        *st.open_per_inode.entry(inode).or_default() += 1;
        FileHandle(fh)
    }

    /// Whether the kernel may keep the inode's cached pages: its layout is the one it had
    /// at its last open, and nothing of this mount is writing it.
    fn keep_cache(&self, attr: &Attr) -> FopenFlags {
        let mut st = self.state();
        if st.opened_versions.len() >= OPENED_VERSIONS_MAX {
            st.opened_versions.clear();
        }
        let before = st.opened_versions.insert(attr.inode, attr.layout_version);
        if before == Some(attr.layout_version) && !st.writers.contains_key(&attr.inode) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// The inode's shared writer, opened on first use.
    fn writer(&self, inode: u64) -> Result<WriterHandles, Errno> {
        if let Some(w) = self.existing_writer(inode) {
            return Ok(w);
        }
        let opened = self
            .runtime
            .block_on(self.client.open_writer(inode))
            .map_err(|e| errno(&e))?;
        Ok(self.install_writer(inode, opened))
    }

    /// Makes `opened` the inode's shared writer, unless another thread installed one
    /// meanwhile: then that one.
    fn install_writer(&self, inode: u64, opened: FileWriter) -> WriterHandles {
        let mut st = self.state();
        if let Some(w) = st.writers.get(&inode) {
            self.runtime.spawn(opened.close());
            return w.handles();
        }
        let shared = SharedWriter {
            size: Arc::new(AtomicU64::new(opened.size())),
            writer: Arc::new(Mutex::new(opened)),
        };
        let out = shared.handles();
        st.writers.insert(inode, shared);
        out
    }

    fn existing_writer(&self, inode: u64) -> Option<WriterHandles> {
        self.state().writers.get(&inode).map(SharedWriter::handles)
    }

    fn changed(&self, inode: u64) {
        changed(&mut self.state(), inode);
    }

    /// A lock request of the kernel's as Cairn's.
    fn want(&self, ino: INodeNo, owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Result<Want, Errno> {
        Ok(Want {
            inode: self.inode(ino),
            owner: owner.0,
            start,
            end,
            kind: kind_of(typ)?,
            pid,
        })
    }

    /// Releases every lock `owner` took on `inode` through this mount (a close).
    fn unlock_all(&self, inode: u64, owner: LockOwner) -> Result<(), Errno> {
        if !self.locks.took(inode, owner.0) {
            return Ok(());
        }
        self.unlock(Want::everything(inode, owner.0))
    }

    /// Releases `want`: what this mount wrote is published first, so the next holder
    /// reads it, and the lock goes even when that fails.
    fn unlock(&self, want: Want) -> Result<(), Errno> {
        let committed = self.commit(want.inode);
        let unlocked = self.runtime.block_on(self.locks.set(want));
        committed.and(unlocked)
    }

    /// Publishes what this mount wrote to `inode` and has not committed yet.
    fn commit(&self, inode: u64) -> Result<(), Errno> {
        let Some((writer, size)) = self.existing_writer(inode) else {
            return Ok(());
        };
        let mut w = lock(&writer);
        if !w.is_dirty() {
            return Ok(());
        }
        let result = self.runtime.block_on(w.commit());
        size.store(w.size(), Ordering::Release);
        drop(w);
        self.changed(inode);
        result.map(|_| ()).map_err(|e| errno(&e))
    }

    /// Before `name` in `parent` goes away: if this mount has it open, make sure its
    /// writer exists and holds a write session, so that it stays readable and writable
    /// until its last handle closes. Call it holding the removal's ticket.
    fn pin_if_open(&self, parent: u64, name: &[u8]) {
        if self.state().open_per_inode.is_empty() {
            return;
        }
        let Ok(attr) = self.runtime.block_on(self.client.lookup(parent, name)) else {
            return;
        };
        if !self.state().open_per_inode.contains_key(&attr.inode) {
            return;
        }
        let held = self
            .writer(attr.inode)
            .and_then(|(w, _)| self.runtime.block_on(lock(&w).hold()).map_err(|e| errno(&e)));
        if let Err(e) = held {
            warn!(inode = attr.inode, "holding an open file being unlinked: {e:?}");
        }
    }

    /// A handle is gone: commit what it wrote; with the inode's last handle, close its
    /// writer and forget it.
    fn release_handle(&self, fh: FileHandle) -> Result<(), Errno> {
        let Some(file) = self.state().files.remove(&fh.0) else {
            return Err(Errno::EBADF);
        };
        let result = if file.writes.load(Ordering::Acquire) {
            self.commit(file.inode)
        } else {
            Ok(())
        };
        let closing = {
            let mut st = self.state();
            let left = st.open_per_inode.get_mut(&file.inode).map(|n| {
                *n = n.saturating_sub(1);
                *n
            });
            if left == Some(0) {
                st.open_per_inode.remove(&file.inode);
                st.commits.remove(&file.inode);
                st.writers.remove(&file.inode)
            } else {
                None
            }
        };
        if let Some(w) = closing {
            // No handle is left, so no request holds the writer any more. Its commit is
            // done: ending the session need not delay `close` (a lost end just lets the
            // lease run out).
            if let Ok(m) = Arc::try_unwrap(w.writer) {
                self.runtime
                    .spawn(m.into_inner().unwrap_or_else(|p| p.into_inner()).close());
            }
        }
        result
    }

    fn list(&self, dir: u64) -> Result<Listing, Errno> {
        // The mount's root is its own parent, as a file system's root is.
        let parent = match dir == self.root {
            true => dir,
            false => self.getattr_fresh(dir)?.parent,
        };
        // Offsets: entry i has offset i + 1 (the kernel asks from the last one it got).
        let mut entries = vec![
            (dir, FileType::Directory, b".".to_vec()),
            (parent.max(1), FileType::Directory, b"..".to_vec()),
        ];
        let listing = self
            .runtime
            .block_on(self.client.list_dir(dir))
            .map_err(|e| errno(&e))?;
        entries.extend(listing.into_iter().map(|e| (e.inode, kind(e.kind()), e.name)));
        Ok(Arc::new(entries))
    }
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        session::request_sizes(config);
        // Locks go to this file system (and so to every mount), not the kernel's table.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS) {
            warn!("the kernel offers no {missing:?}: locks are local to this machine");
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self
            .runtime
            .block_on(self.client.lookup(self.inode(parent), name.as_bytes()));
        self.entry(reply, r.map(|a| self.patched(a)).map_err(|e| errno(&e)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let inode = self.inode(ino);
        if let Some(a) = self.fresh_dirs.take(inode) {
            return reply.attr(&TTL, &self.kernel_attr(&a));
        }
        match self.getattr_fresh(inode) {
            Ok(a) => reply.attr(&TTL, &self.kernel_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut size_through_metadata = size;
        if let (Some(len), Some((writer, shared_size))) = (size, self.existing_writer(self.inode(ino))) {
            // This mount is writing the file: the truncate goes through its writer.
            let mut w = lock(&writer);
            let r = self.runtime.block_on(async {
                w.set_len(len).await?;
                w.commit().await
            });
            shared_size.store(w.size(), Ordering::Release);
            drop(w);
            if let Err(e) = r {
                return reply.error(errno(&e));
            }
            size_through_metadata = None;
        }
        if size.is_some() {
            self.changed(self.inode(ino));
        }
        let set = SetAttr {
            inode: self.inode(ino),
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size: size_through_metadata,
            atime_ns: atime.map(ns),
            mtime_ns: mtime.map(ns),
        };
        let r = if set
            == (SetAttr {
                inode: self.inode(ino),
                ..SetAttr::default()
            }) {
            self.getattr_fresh(self.inode(ino))
        } else {
            self.attr_of(Op::Setattr(set))
        };
        match r {
            Ok(a) => reply.attr(&TTL, &self.kernel_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.meta(Op::Readlink(ReadLink { inode: self.inode(ino) })) {
            Ok(meta_reply::Result::LinkTarget(t)) => reply.data(&t),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let op = Op::Mkdir(cairn_common::proto::metadata::Mkdir {
            parent: self.inode(parent),
            name: name_bytes(name),
            mode: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
        });
        self.entry(reply, self.attr_of(op));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _removal = self.removals.begin();
        self.pin_if_open(self.inode(parent), name.as_bytes());
        let op = Op::Unlink(Unlink {
            parent: self.inode(parent),
            name: name_bytes(name),
        });
        done(reply, self.meta(op).map(|_| ()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Rmdir(Rmdir {
            parent: self.inode(parent),
            name: name_bytes(name),
        });
        done(reply, self.meta(op).map(|_| ()));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let op = Op::Symlink(Symlink {
            parent: self.inode(parent),
            name: name_bytes(link_name),
            target: target.as_os_str().as_bytes().to_vec(),
            uid: req.uid(),
            gid: req.gid(),
        });
        self.entry(reply, self.attr_of(op));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (no_replace, exchange) = (RenameFlags::RENAME_NOREPLACE, RenameFlags::RENAME_EXCHANGE);
        if !(no_replace | exchange).contains(flags) || flags.contains(no_replace | exchange) {
            // RENAME_WHITEOUT is for overlay file systems; both at once is meaningless.
            return reply.error(Errno::EINVAL);
        }
        let _removal = self.removals.begin();
        if !flags.contains(exchange) {
            self.pin_if_open(self.inode(newparent), newname.as_bytes());
        }
        let op = Op::Rename(Rename {
            parent: self.inode(parent),
            name: name_bytes(name),
            new_parent: self.inode(newparent),
            new_name: name_bytes(newname),
            no_replace: flags.contains(no_replace),
            exchange: flags.contains(exchange),
        });
        done(reply, self.meta(op).map(|_| ()));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let op = Op::Link(Link {
            inode: self.inode(ino),
            new_parent: self.inode(newparent),
            new_name: name_bytes(newname),
        });
        self.entry(reply, self.attr_of(op));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The handle is registered before the inode is checked, so a removal racing this
        // open either sees the handle (and keeps the inode alive) or is waited for.
        let fh = self.new_handle(self.inode(ino));
        self.removals.wait_for_earlier();
        match self.getattr_fresh(self.inode(ino)) {
            Ok(a) => {
                let flags = self.keep_cache(&a);
                reply.opened(fh, flags);
            }
            Err(e) => {
                if let Err(release) = self.release_handle(fh) {
                    warn!(inode = self.inode(ino), "dropping a failed open's handle: {release:?}");
                }
                // The kernel's cached name led to an inode that is gone (renamed over,
                // say): ESTALE makes it look the name up again.
                reply.error(if e == Errno::ENOENT { Errno::ESTALE } else { e });
            }
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let create = Create {
            parent: self.inode(parent),
            name: name_bytes(name),
            mode: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            exclusive: true,
        };
        // Asked as an exclusive create even without O_EXCL, so that a success says the
        // file is new (it has no extended attributes to ask about before its first
        // write); the name a concurrent create took is then opened as it is.
        let asked = self.absent_xattrs.asking();
        let created = match self.attr_of(Op::Create(create.clone())) {
            Ok(a) => {
                self.absent_xattrs.created(a.inode, asked);
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    // Empty and new: its writer needs nothing read first.
                    self.install_writer(a.inode, self.client.new_file_writer(a));
                }
                Ok(a)
            }
            Err(Errno::EEXIST) if flags & O_EXCL == 0 => self.attr_of(Op::Create(Create {
                exclusive: false,
                ..create
            })),
            Err(e) => Err(e),
        };
        match created {
            Ok(a) => {
                let keep = self.keep_cache(&a);
                let fh = self.new_handle(a.inode);
                reply.created(&TTL, &self.kernel_attr(&a), Generation(0), fh, keep);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = self.commit(file.inode) {
            return reply.error(e);
        }
        let commits = self.state().commits.get(&file.inode).copied().unwrap_or(0);
        let mut reader = lock(&file.reader);
        if file.seen_commits.swap(commits, Ordering::AcqRel) != commits {
            reader.invalidate();
        }
        match self.runtime.block_on(reader.read(offset, u64::from(size))) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let (writer, size) = match self.writer(file.inode) {
            Ok(w) => w,
            Err(e) => return reply.error(e),
        };
        file.writes.store(true, Ordering::Release);
        let mut w = lock(&writer);
        let r = self.runtime.block_on(w.write(offset, data));
        size.store(w.size(), Ordering::Release);
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let r = self.file(fh).and_then(|f| {
            if f.writes.load(Ordering::Acquire) {
                self.commit(f.inode)
            } else {
                Ok(())
            }
        });
        // A close releases the closing process's POSIX locks on the file.
        let unlocked = self.unlock_all(self.inode(ino), lock_owner);
        done(reply, r.and(unlocked));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(reply, self.commit(self.inode(ino)));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The open file's last close: its flock (the owner given) and any lock taken
        // through it go; a process's record locks went with its `flush` already.
        let inode = self.inode(ino);
        let mut owners = self
            .file(fh)
            .map(|f| std::mem::take(&mut *lock(&f.lock_owners)))
            .unwrap_or_default();
        owners.extend(lock_owner.map(|o| o.0));
        let unlocked = owners
            .into_iter()
            .map(|owner| self.unlock_all(inode, LockOwner(owner)))
            .fold(Ok(()), Result::and);
        done(reply, self.release_handle(fh).and(unlocked));
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let found = self
            .want(ino, lock_owner, start, end, typ, pid)
            .and_then(|want| self.runtime.block_on(self.locks.conflict(want)));
        match found {
            Ok(Some(l)) => reply.locked(l.start, l.end, typ_of(l.kind()), l.pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let want = match self.want(ino, lock_owner, start, end, typ, pid) {
            Ok(w) => w,
            Err(e) => return reply.error(e),
        };
        if want.kind == LockKind::Unlock {
            return done(reply, self.unlock(want));
        }
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let rt = self.runtime.handle().clone();
        if !sleep {
            let r = rt.block_on(self.locks.set(want));
            if r.is_ok() {
                file.took_lock(want.owner);
                lock_taken(&self.state, &self.notifier, &rt, ino, want.inode);
            }
            return done(reply, r);
        }
        // A waiting lock must not hold one of the mount's few threads.
        let (locks, state, notifier, tid) = (self.locks.clone(), self.state.clone(), self.notifier.clone(), req.pid());
        std::thread::spawn(move || {
            let r = rt.block_on(locks.wait(want, || caller_interrupted(tid)));
            if r.is_ok() {
                file.took_lock(want.owner);
                lock_taken(&state, &notifier, &rt, ino, want.inode);
            }
            done(reply, r);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.list(self.inode(ino)) {
            Ok(listing) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.state().dirs.insert(fh, listing);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(listing) = self.state().dirs.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (inode, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(self.kernel_ino(*inode), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state().dirs.remove(&fh.0);
        reply.ok();
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let flags = XattrFlags::from_bits_retain(flags as u32);
        let op = Op::SetXattr(SetXattr {
            inode: self.inode(ino),
            name: name_bytes(name),
            value: value.to_vec(),
            create: flags.contains(XattrFlags::CREATE),
            replace: flags.contains(XattrFlags::REPLACE),
        });
        done(reply, self.meta(op).map(|_| ()));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let inode = self.inode(ino);
        let name = name_bytes(name);
        if self.absent_xattrs.is_absent(inode, &name) {
            return reply.error(Errno::ENODATA);
        }
        let asked = self.absent_xattrs.asking();
        let op = Op::GetXattr(GetXattr {
            inode,
            name: name.clone(),
        });
        match self.meta(op) {
            Ok(meta_reply::Result::XattrValue(v)) => xattr_reply(reply, size, &v),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => {
                if e == Errno::ENODATA {
                    self.absent_xattrs.absent(inode, name, asked);
                }
                reply.error(e)
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.meta(Op::ListXattr(ListXattr { inode: self.inode(ino) })) {
            Ok(meta_reply::Result::XattrNames(n)) => {
                // The kernel's format: every name followed by a NUL.
                let list: Vec<u8> = n
                    .names
                    .iter()
                    .flat_map(|name| name.iter().copied().chain([0]))
                    .collect();
                xattr_reply(reply, size, &list);
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::RemoveXattr(RemoveXattr {
            inode: self.inode(ino),
            name: name_bytes(name),
        });
        done(reply, self.meta(op).map(|_| ()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let names = match self.meta(Op::Statfs(StatFs {})) {
            Ok(meta_reply::Result::Statfs(s)) => s,
            Ok(_) => return reply.error(Errno::EIO),
            Err(e) => return reply.error(e),
        };
        let space = match self.runtime.block_on(self.client.capacity()) {
            Ok(c) => c,
            Err(e) => return reply.error(errno(&e)),
        };
        let block = u64::from(REQUEST_BYTES_MAX);
        let (total, free) = (space.capacity_bytes / block, space.free_bytes / block);
        let files = names.files + names.directories;
        reply.statfs(
            total,
            free,
            free,
            files.saturating_add(free),
            free,
            REQUEST_BYTES_MAX,
            255,
            REQUEST_BYTES_MAX,
        );
    }
}
