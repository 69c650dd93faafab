//! A minimal pass-through FUSE file system (fuser, 1 MiB requests, the same thread count
//! as `cairn-fuse`): every call goes straight to a local directory. Benchmarks mount it
//! beside Cairn to show what FUSE itself costs on the machine. Not for production use:
//! inodes are the paths seen so far, kept for the life of the mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::session::{self, done, REQUEST_BYTES_MAX};

const TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Tables {
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    files: HashMap<u64, Arc<File>>,
}

#[derive(Debug)]
pub struct Passthrough {
    tables: Mutex<Tables>,
    next: AtomicU64,
}

/// EIO, for an error without an OS code.
const EIO: i32 = 5;

fn io(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(EIO))
}

fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32);
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        ctime: t(m.ctime(), m.ctime_nsec()),
        crtime: t(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        flags: 0,
        blksize: REQUEST_BYTES_MAX,
    }
}

impl Passthrough {
    pub fn new(source: &Path) -> Passthrough {
        let mut t = Tables::default();
        t.paths.insert(1, source.to_owned());
        t.inodes.insert(source.to_owned(), 1);
        Passthrough {
            tables: Mutex::new(t),
            next: AtomicU64::new(2),
        }
    }

    fn t(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.t().paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn inode(&self, path: &Path) -> u64 {
        let mut t = self.t();
        if let Some(i) = t.inodes.get(path) {
            return *i;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        t.inodes.insert(path.to_owned(), i);
        t.paths.insert(i, path.to_owned());
        i
    }

    fn entry(&self, path: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(path).map_err(io)?;
        Ok(attr(self.inode(path), &m))
    }

    fn handle(&self, f: File) -> FileHandle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.t().files.insert(fh, Arc::new(f));
        FileHandle(fh)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.t().files.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn forget_path(&self, path: &Path) {
        let mut t = self.t();
        if let Some(i) = t.inodes.remove(path) {
            t.paths.remove(&i);
        }
    }
}

impl Filesystem for Passthrough {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        session::request_sizes(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.entry(&p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.entry(&p)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
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
        let r = self.path(ino).and_then(|p| {
            if let Some(len) = size {
                File::options()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(len))
                    .map_err(io)?;
            }
            if let Some(m) = mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m & 0o7777)).map_err(io)?;
            }
            self.entry(&p)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let r = self
            .child(parent, name)
            .and_then(|p| std::fs::create_dir(&p).map_err(io).and_then(|_| self.entry(&p)));
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            std::fs::remove_file(&p).map_err(io)?;
            self.forget_path(&p);
            Ok(())
        });
        done(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            std::fs::remove_dir(&p).map_err(io)?;
            self.forget_path(&p);
            Ok(())
        });
        done(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            std::fs::rename(&from, &to).map_err(io)?;
            self.forget_path(&from);
            self.forget_path(&to);
            Ok(())
        });
        done(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & 0o3 != 0;
        match self
            .path(ino)
            .and_then(|p| File::options().read(true).write(write).open(p).map_err(io))
        {
            Ok(f) => reply.opened(self.handle(f), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.child(parent, name).and_then(|p| {
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(mode & !umask & 0o7777)
                .open(&p)
                .map_err(io)?;
            Ok((self.entry(&p)?, f))
        });
        match r {
            Ok((a, f)) => reply.created(&TTL, &a, Generation(0), self.handle(f), FopenFlags::empty()),
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
        let r = self.file(fh).and_then(|f| {
            let mut buf = vec![0; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64).map_err(io)? {
                    0 => break,
                    n => got += n,
                }
            }
            buf.truncate(got);
            Ok(buf)
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
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
        match self.file(fh).and_then(|f| f.write_all_at(data, offset).map_err(io)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(reply, self.file(fh).and_then(|f| f.sync_all().map_err(io)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.t().files.remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dir = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(Result::ok).collect::<Vec<_>>(),
            Err(e) => return reply.error(io(e)),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
            (1, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        let all = dots.into_iter().chain(entries.iter().map(|e| {
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            (self.inode(&e.path()), kind, e.file_name())
        }));
        for (i, (inode, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(inode), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.path(INodeNo(1)) {
            Ok(p) => session::statfs_of(&p, reply),
            Err(e) => reply.error(e),
        }
    }
}

/// Mounts `source` at `mountpoint` until unmounted.
pub fn mount(source: &Path, mountpoint: &Path, threads: usize) -> anyhow::Result<()> {
    let options = session::config(vec![MountOption::FSName("passthrough".into())], threads);
    fuser::mount(Passthrough::new(source), mountpoint, &options)?;
    Ok(())
}
