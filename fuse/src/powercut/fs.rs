//! The power-cut disk as a FUSE file system: every kernel call turned into a call on
//! [`Disk`], under one lock (a test disk: simple before fast).
//!
//! Nothing is cached in the kernel: entries and attributes have no time to live and files
//! are opened with direct I/O, so after a power cut no process sees a page or a name that
//! the cut dropped. Calls from the processes that lost power (their threads, listed when
//! the power went) are refused with EIO: a write they had in flight must not land after
//! the cut.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::disk::{Attr, CutReport, Disk, Kind};
use crate::session::{self, done, REQUEST_BYTES_MAX};

const NO_CACHE: Duration = Duration::ZERO;
/// How long calls of threads that lost power are refused: long past any call they had in
/// flight, far shorter than a turn of the thread ids.
const DEAD_FOR: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct State {
    pub disk: Disk,
    /// Threads of processes that lost power, and when: their calls are refused.
    dead_threads: HashMap<u32, Instant>,
    /// Power cuts so far; a handle opened before the latest one is stale.
    epoch: u64,
}

impl State {
    pub fn new(disk: Disk) -> State {
        State {
            disk,
            dead_threads: HashMap::new(),
            epoch: 0,
        }
    }

    /// Cuts the power of the processes `pids` (stopped by the caller): their threads'
    /// calls are refused from now on, and everything unsynced is dropped.
    pub fn cut(&mut self, pids: &[u32]) -> std::io::Result<CutReport> {
        let now = Instant::now();
        self.dead_threads.retain(|_, at| now.duration_since(*at) < DEAD_FOR);
        for pid in pids {
            self.dead_threads.insert(*pid, now);
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                let tids = tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok());
                self.dead_threads.extend(tids.map(|t| (t, now)));
            }
        }
        self.epoch += 1;
        self.disk.cut()
    }
}

#[derive(Debug, Clone)]
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        flags: 0,
        blksize: REQUEST_BYTES_MAX,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

impl PowerCutFs {
    pub fn new(state: Arc<Mutex<State>>) -> PowerCutFs {
        PowerCutFs { state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state, for a call that changes it: refused to a process that lost power.
    fn changing(&self, req: &Request) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.lock();
        match s.dead_threads.get(&req.pid()) {
            Some(at) if at.elapsed() < DEAD_FOR => Err(Errno::EIO),
            _ => Ok(s),
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&NO_CACHE, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, kind: Kind, mode: u32) -> Result<Attr, Errno> {
        self.changing(req)?
            .disk
            .create(parent.0, name, kind, mode, req.uid(), req.gid())
    }
}

impl Filesystem for PowerCutFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        session::request_sizes(config);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.lock().disk.sync_all() {
            tracing::error!(error = %e, "syncing the power-cut disk at unmount");
        }
    }

    // Quiet answers to what programs ask and this disk does not model (fuser's defaults
    // log a warning each time): every access allowed, no extended attributes, no ioctls.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOTSUP);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.lock().disk.lookup(parent.0, name);
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().disk.attr(ino.0) {
            Ok(a) => reply.attr(&NO_CACHE, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.changing(req).and_then(|mut s| {
            if let Some(len) = size {
                s.disk.set_len(ino.0, len)?;
            }
            if let Some(m) = mode {
                s.disk.set_mode(ino.0, m)?;
            }
            s.disk.attr(ino.0)
        });
        match r {
            Ok(a) => reply.attr(&NO_CACHE, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.make(req, parent, name, Kind::Dir, mode & !umask);
        self.entry(reply, r);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let r = self.make(req, parent, name, Kind::File, mode & !umask);
        self.entry(reply, r);
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self
            .changing(req)
            .and_then(|mut s| s.disk.link(ino.0, newparent.0, newname));
        self.entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(
            reply,
            self.changing(req)
                .and_then(|mut s| s.disk.remove(parent.0, name, false)),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(
            reply,
            self.changing(req).and_then(|mut s| s.disk.remove(parent.0, name, true)),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self
            .changing(req)
            .and_then(|mut s| s.disk.rename(parent.0, name, newparent.0, newname, no_replace));
        done(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        match s.disk.opened(ino.0) {
            Ok(()) => reply.opened(FileHandle(s.epoch), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.changing(req).and_then(|mut s| {
            let a = s
                .disk
                .create(parent.0, name, Kind::File, mode & !umask, req.uid(), req.gid())?;
            s.disk.opened(a.ino)?;
            Ok((a, s.epoch))
        });
        match r {
            Ok((a, epoch)) => reply.created(
                &NO_CACHE,
                &file_attr(&a),
                Generation(0),
                FileHandle(epoch),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().disk.read(ino.0, offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(n) = u32::try_from(data.len()) else {
            return reply.error(Errno::EINVAL);
        };
        match self.changing(req).and_then(|mut s| s.disk.write(ino.0, offset, data)) {
            Ok(()) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(reply, self.changing(req).and_then(|mut s| s.disk.sync_file(ino.0)));
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(reply, self.changing(req).and_then(|mut s| s.disk.sync_dir(ino.0)));
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Space is not modelled: reserving it only grows the file when asked to.
        let r = self.changing(req).and_then(|mut s| match mode {
            0 => {
                let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
                if end > s.disk.attr(ino.0)?.size {
                    s.disk.set_len(ino.0, end)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => s.disk.attr(ino.0).map(|_| ()),
            _ => Err(Errno::EOPNOTSUPP),
        });
        done(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        if fh.0 == s.epoch {
            s.disk.released(ino.0);
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.lock().disk.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, Kind::Dir, OsStr::new(".").to_owned()),
            (ino.0, Kind::Dir, OsStr::new("..").to_owned()),
        ];
        for (i, (inode, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(inode), i as u64 + 1, file_type(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let backing = self.lock().disk.backing().to_owned();
        session::statfs_of(&backing, reply);
    }
}
