//! The power-cut disk's state: a namespace and file contents with two views, what a
//! program sees now (live) and what a power cut would leave (durable).
//!
//! The model is the weakest promise POSIX and ext4 give, so that a program that is
//! durable here is durable on a real disk:
//! - A write stays in memory (pages of this process) until its file is fsynced; then the
//!   file's content and length are written to its object under `objects/` and become
//!   durable. `fdatasync` counts as `fsync`.
//! - A directory change (create, link, unlink, rename, mkdir, rmdir) stays in memory until
//!   its directory is fsynced; then the directory's entries become durable as they are
//!   now. A file fsynced while its name is not yet durable is lost with its name.
//! - A rename between two directories is one journal transaction on ext4: once either
//!   directory is fsynced, the file has left the old one and arrived in the new one
//!   (it is never in neither nor in both, whatever else is synced).
//!
//! A power cut ([`Disk::cut`]) makes live what is durable and forgets the rest. Attributes
//! other than the length (mode, owner, times) are not modelled as separately durable.
//!
//! At rest (between mounts) the disk is `objects/<ino>` for every file's durable content
//! and `manifest.json` for the durable namespace, written on clean unmount (after every
//! file and directory was synced, as an unmount does) and after every power cut.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::Errno;
use serde::{Deserialize, Serialize};

/// The unit in which unsynced writes are kept.
const PAGE: u64 = 4096;
/// The root directory's inode, as FUSE numbers it.
pub const ROOT: u64 = 1;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
}

/// What `stat` shows of an inode, as it is live.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub nlink: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// What a power cut dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Bytes written but not fsynced (whole pages).
    pub bytes: u64,
    /// Directory entries created, removed or changed and not fsynced.
    pub entries: u64,
    /// Inodes that no durable directory names any more, removed with their objects.
    pub inodes: u64,
}

#[derive(Debug, Default)]
struct FileBody {
    durable_len: u64,
    live_len: u64,
    /// Durable content at or past this offset reads as zeros (a truncate not yet synced).
    truncated_to: u64,
    /// Unsynced pages by page index; a page straddling `truncated_to` is always here.
    pages: BTreeMap<u64, Box<[u8]>>,
    object: Option<File>,
}

#[derive(Debug, Default)]
struct DirBody {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Body {
    File(FileBody),
    Dir(DirBody),
}

#[derive(Debug)]
struct Node {
    body: Body,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Live directory entries that name this inode.
    nlink: u32,
    /// Durable directory entries that name it.
    durable_refs: u32,
    /// Handles open on it (opened since the last power cut).
    open: u32,
}

impl Node {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        }
    }
}

/// A rename between directories whose two halves become durable together.
#[derive(Debug)]
struct PendingRename {
    ino: u64,
    from: (u64, OsString),
    to: (u64, OsString),
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    next_ino: u64,
    nodes: Vec<ManifestNode>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestNode {
    ino: u64,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    len: u64,
    /// A directory's durable entries: name bytes and inode.
    entries: Vec<(Vec<u8>, u64)>,
}

#[derive(Debug)]
pub struct Disk {
    backing: PathBuf,
    nodes: BTreeMap<u64, Node>,
    pending_renames: Vec<PendingRename>,
    next_ino: u64,
}

fn os_err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn new_node(body: Body, mode: u32, uid: u32, gid: u32) -> Node {
    Node {
        body,
        mode,
        uid,
        gid,
        mtime: SystemTime::now(),
        nlink: 0,
        durable_refs: 0,
        open: 0,
    }
}

impl Disk {
    /// Opens the disk kept in `backing` (creating an empty one there if it has none).
    pub fn open(backing: &Path) -> io::Result<Disk> {
        std::fs::create_dir_all(backing.join("objects"))?;
        let mut disk = Disk {
            backing: backing.to_owned(),
            nodes: BTreeMap::new(),
            pending_renames: Vec::new(),
            next_ino: ROOT + 1,
        };
        match std::fs::read(backing.join(MANIFEST)) {
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{MANIFEST}: {e}")))?;
                disk.next_ino = m.next_ino;
                for n in m.nodes {
                    let body = match n.kind {
                        Kind::Dir => {
                            let durable: BTreeMap<OsString, u64> =
                                n.entries.into_iter().map(|(k, v)| (OsString::from_vec(k), v)).collect();
                            Body::Dir(DirBody {
                                live: durable.clone(),
                                durable,
                            })
                        }
                        Kind::File => Body::File(FileBody {
                            durable_len: n.len,
                            live_len: n.len,
                            truncated_to: n.len,
                            ..FileBody::default()
                        }),
                    };
                    disk.nodes.insert(n.ino, new_node(body, n.mode, n.uid, n.gid));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let root = new_node(Body::Dir(DirBody::default()), 0o755, 0, 0);
                disk.nodes.insert(ROOT, root);
            }
            Err(e) => return Err(e),
        }
        if !disk.nodes.contains_key(&ROOT) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{MANIFEST} has no root"),
            ));
        }
        disk.recount_and_sweep()?;
        Ok(disk)
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&DirBody, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirBody, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileBody, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn object_path(&self, ino: u64) -> PathBuf {
        self.backing.join("objects").join(ino.to_string())
    }

    /// The directory that holds the disk at rest.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    pub fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        let n = self.node(ino)?;
        let (size, nlink) = match &n.body {
            Body::File(f) => (f.live_len, n.nlink),
            Body::Dir(_) => (0, 2),
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            size,
            nlink,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    /// Live entries of a directory, in name order.
    pub fn entries(&self, dir: u64) -> Result<Vec<(u64, Kind, OsString)>, Errno> {
        let d = self.dir(dir)?;
        Ok(d.live
            .iter()
            .filter_map(|(name, ino)| self.nodes.get(ino).map(|n| (*ino, n.kind(), name.clone())))
            .collect())
    }

    /// Creates a file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::File => Body::File(FileBody::default()),
            Kind::Dir => Body::Dir(DirBody::default()),
        };
        self.nodes.insert(ino, new_node(body, mode & 0o7777, uid, gid));
        self.add_live(parent, name, ino)?;
        self.attr(ino)
    }

    /// A hard link to file `ino`.
    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(Errno::EPERM);
        }
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.add_live(parent, name, ino)?;
        self.attr(ino)
    }

    fn add_live(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        self.dir_mut(parent)?.live.insert(name.to_owned(), ino);
        self.node_mut(ino)?.nlink += 1;
        self.node_mut(parent)?.mtime = SystemTime::now();
        Ok(())
    }

    fn remove_live(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let ino = self.dir_mut(parent)?.live.remove(name).ok_or(Errno::ENOENT)?;
        let n = self.node_mut(ino)?;
        n.nlink = n.nlink.saturating_sub(1);
        self.node_mut(parent)?.mtime = SystemTime::now();
        Ok(ino)
    }

    /// Removes a file's name (`dir` false) or an empty directory (`dir` true).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(Errno::ENOENT)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir(d), true) if !d.live.is_empty() => return Err(Errno::ENOTEMPTY),
            (Body::Dir(_), false) => return Err(Errno::EISDIR),
            (Body::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.remove_live(parent, name)?;
        self.reap(ino);
        Ok(())
    }

    pub fn rename(
        &mut self,
        from: u64,
        name: &OsStr,
        to: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = *self.dir(from)?.live.get(name).ok_or(Errno::ENOENT)?;
        let moving_dir = self.node(ino)?.kind() == Kind::Dir;
        if moving_dir && self.is_within(to, ino) {
            return Err(Errno::EINVAL);
        }
        if let Some(&old) = self.dir(to)?.live.get(new_name) {
            if old == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(old)?.body, moving_dir) {
                (Body::Dir(d), true) if !d.live.is_empty() => return Err(Errno::ENOTEMPTY),
                (Body::Dir(_), false) => return Err(Errno::EISDIR),
                (Body::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
            self.remove_live(to, new_name)?;
            self.reap(old);
        }
        self.remove_live(from, name)?;
        self.add_live(to, new_name, ino)?;
        if from != to {
            self.pending_renames.push(PendingRename {
                ino,
                from: (from, name.to_owned()),
                to: (to, new_name.to_owned()),
            });
        }
        Ok(())
    }

    /// Whether directory `dir` is `ancestor` or below it (live).
    fn is_within(&self, dir: u64, ancestor: u64) -> bool {
        let mut stack = vec![ancestor];
        while let Some(d) = stack.pop() {
            if d == dir {
                return true;
            }
            if let Ok(body) = self.dir(d) {
                stack.extend(body.live.values().filter(|i| self.dir(**i).is_ok()));
            }
        }
        false
    }

    pub fn set_mode(&mut self, ino: u64, mode: u32) -> Result<(), Errno> {
        self.node_mut(ino)?.mode = mode & 0o7777;
        Ok(())
    }

    pub fn opened(&mut self, ino: u64) -> Result<(), Errno> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn released(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
            self.reap(ino);
        }
    }

    /// Forgets an inode that nothing names, live or durable, and no handle holds.
    fn reap(&mut self, ino: u64) {
        let Some(n) = self.nodes.get(&ino) else { return };
        if ino == ROOT || n.nlink > 0 || n.durable_refs > 0 || n.open > 0 {
            return;
        }
        if let Some(Node { body: Body::Dir(d), .. }) = self.nodes.remove(&ino) {
            for child in d.durable.into_values() {
                self.drop_durable_ref(child);
            }
        } else {
            let _ = std::fs::remove_file(self.object_path(ino));
        }
    }

    fn drop_durable_ref(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.durable_refs = n.durable_refs.saturating_sub(1);
            self.reap(ino);
        }
    }

    fn object(&mut self, ino: u64) -> Result<&File, Errno> {
        let path = self.object_path(ino);
        let f = self.file_mut(ino)?;
        if f.object.is_none() {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(os_err)?;
            f.object = Some(file);
        }
        f.object.as_ref().ok_or(Errno::EIO)
    }

    /// Page `p` of the file as it is durable (zeros past its durable end or truncation).
    fn durable_page(&mut self, ino: u64, p: u64) -> Result<Box<[u8]>, Errno> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = p * PAGE;
        let f = self.file_mut(ino)?;
        let end = f.truncated_to.min(f.durable_len);
        if start < end {
            let want = (end - start).min(PAGE) as usize;
            read_full(self.object(ino)?, &mut page[..want], start)?;
        }
        Ok(page)
    }

    pub fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let len = self.file_mut(ino)?.live_len;
        let end = offset.saturating_add(u64::from(size)).min(len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (p, within) = (pos / PAGE, (pos % PAGE) as usize);
            let take = ((PAGE - within as u64).min(end - pos)) as usize;
            match self.file_mut(ino)?.pages.get(&p) {
                Some(page) => out.extend_from_slice(&page[within..within + take]),
                None => out.extend_from_slice(&self.durable_page(ino, p)?[within..within + take]),
            }
            pos += take as u64;
        }
        Ok(out)
    }

    /// The unsynced page `p`, made from its durable content when first written.
    fn page_mut(&mut self, ino: u64, p: u64) -> Result<&mut Box<[u8]>, Errno> {
        if !self.file_mut(ino)?.pages.contains_key(&p) {
            let page = self.durable_page(ino, p)?;
            self.file_mut(ino)?.pages.insert(p, page);
        }
        self.file_mut(ino)?.pages.get_mut(&p).ok_or(Errno::EIO)
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut pos = offset;
        while pos < end {
            let (p, within) = (pos / PAGE, (pos % PAGE) as usize);
            let take = ((PAGE - within as u64).min(end - pos)) as usize;
            let from = (pos - offset) as usize;
            self.page_mut(ino, p)?[within..within + take].copy_from_slice(&data[from..from + take]);
            pos += take as u64;
        }
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        let f = self.file_mut(ino)?;
        f.live_len = f.live_len.max(end);
        Ok(())
    }

    /// Sets the live length: drops pages past it and zeros the rest of its last page.
    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let f = self.file_mut(ino)?;
        if len < f.live_len {
            let first_gone = len.div_ceil(PAGE);
            f.pages.retain(|p, _| *p < first_gone);
            if len < f.truncated_to {
                f.truncated_to = len;
            }
            if !len.is_multiple_of(PAGE) {
                let within = (len % PAGE) as usize;
                self.page_mut(ino, len / PAGE)?[within..].fill(0);
            }
        }
        self.file_mut(ino)?.live_len = len;
        self.node_mut(ino)?.mtime = SystemTime::now();
        Ok(())
    }

    /// fsync of a file: its live content and length become durable.
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        if self.node(ino)?.kind() == Kind::Dir {
            return self.sync_dir(ino);
        }
        let (truncated_to, durable_len, live_len) = {
            let f = self.file_mut(ino)?;
            (f.truncated_to, f.durable_len, f.live_len)
        };
        let pages = std::mem::take(&mut self.file_mut(ino)?.pages);
        let object = self.object(ino)?;
        if truncated_to < durable_len {
            object.set_len(truncated_to).map_err(os_err)?;
        }
        for (p, page) in &pages {
            let start = p * PAGE;
            let take = (live_len.saturating_sub(start)).min(PAGE) as usize;
            object.write_all_at(&page[..take], start).map_err(os_err)?;
        }
        object.set_len(live_len).map_err(os_err)?;
        let f = self.file_mut(ino)?;
        f.durable_len = live_len;
        f.truncated_to = live_len;
        Ok(())
    }

    /// fsync of a directory: its live entries become durable, and so does the other half
    /// of every rename into or out of it.
    pub fn sync_dir(&mut self, dir: u64) -> Result<(), Errno> {
        let d = self.dir(dir)?;
        let (live, old) = (d.live.clone(), d.durable.clone());
        for ino in live.values() {
            if let Some(n) = self.nodes.get_mut(ino) {
                n.durable_refs += 1;
            }
        }
        self.dir_mut(dir)?.durable = live;
        for ino in old.into_values() {
            self.drop_durable_ref(ino);
        }
        let (touching, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_renames)
            .into_iter()
            .partition(|r| r.from.0 == dir || r.to.0 == dir);
        self.pending_renames = rest;
        for r in touching {
            if r.from.0 == dir {
                self.set_durable(r.to.0, &r.to.1, r.ino);
            } else {
                self.unset_durable(r.from.0, &r.from.1, r.ino);
            }
        }
        Ok(())
    }

    fn set_durable(&mut self, dir: u64, name: &OsStr, ino: u64) {
        if !self.nodes.contains_key(&ino) {
            return;
        }
        let Ok(d) = self.dir_mut(dir) else { return };
        let old = d.durable.insert(name.to_owned(), ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.durable_refs += 1;
        }
        if let Some(old) = old {
            self.drop_durable_ref(old);
        }
    }

    fn unset_durable(&mut self, dir: u64, name: &OsStr, ino: u64) {
        let Ok(d) = self.dir_mut(dir) else { return };
        if d.durable.get(name) == Some(&ino) {
            d.durable.remove(name);
            self.drop_durable_ref(ino);
        }
    }

    /// Syncs every file and directory, as a clean unmount does, and writes the manifest.
    pub fn sync_all(&mut self) -> io::Result<()> {
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in inos {
            if self.nodes.contains_key(&ino) {
                self.sync_file(ino)
                    .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
            }
        }
        self.write_manifest()
    }

    /// A power cut: every unsynced write and directory change is gone.
    pub fn cut(&mut self) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        for n in self.nodes.values_mut() {
            n.open = 0;
            match &mut n.body {
                Body::File(f) => {
                    report.bytes += f.pages.len() as u64 * PAGE;
                    f.pages.clear();
                    f.live_len = f.durable_len;
                    f.truncated_to = f.durable_len;
                }
                Body::Dir(d) => {
                    let changed = d.live.iter().filter(|(k, v)| d.durable.get(*k) != Some(*v)).count()
                        + d.durable.keys().filter(|k| !d.live.contains_key(*k)).count();
                    report.entries += changed as u64;
                    d.live = d.durable.clone();
                }
            }
        }
        self.pending_renames.clear();
        report.inodes = self.recount_and_sweep()?;
        self.write_manifest()?;
        Ok(report)
    }

    /// Counts every inode's references from the durable tree (which is now also the live
    /// one) and removes the inodes it does not reach; returns how many it removed.
    fn recount_and_sweep(&mut self) -> io::Result<u64> {
        let mut reached = BTreeSet::from([ROOT]);
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            let Ok(body) = self.dir(d) else { continue };
            for ino in body.durable.values() {
                *counts.entry(*ino).or_default() += 1;
                if reached.insert(*ino) && self.dir(*ino).is_ok() {
                    stack.push(*ino);
                }
            }
        }
        let gone: Vec<u64> = self.nodes.keys().filter(|i| !reached.contains(i)).copied().collect();
        for ino in &gone {
            self.nodes.remove(ino);
        }
        for (ino, n) in self.nodes.iter_mut() {
            let c = counts.get(ino).copied().unwrap_or(0);
            n.nlink = c;
            n.durable_refs = c;
            if let Body::Dir(d) = &mut n.body {
                d.live.retain(|_, i| reached.contains(i));
                d.durable.retain(|_, i| reached.contains(i));
            }
        }
        // Objects of inodes that are gone, including any a crash of this process left.
        for entry in std::fs::read_dir(self.backing.join("objects"))? {
            let entry = entry?;
            let known = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|i| self.nodes.get(&i).is_some_and(|n| n.kind() == Kind::File));
            if !known {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(gone.len() as u64)
    }

    /// Writes the durable namespace to `manifest.json` (atomically, synced).
    fn write_manifest(&self) -> io::Result<()> {
        let nodes = self
            .nodes
            .iter()
            .map(|(ino, n)| {
                let (len, entries) = match &n.body {
                    Body::File(f) => (f.durable_len, Vec::new()),
                    Body::Dir(d) => (0, d.durable.iter().map(|(k, v)| (k.as_bytes().to_vec(), *v)).collect()),
                };
                ManifestNode {
                    ino: *ino,
                    kind: n.kind(),
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                    len,
                    entries,
                }
            })
            .collect();
        let m = Manifest {
            next_ino: self.next_ino,
            nodes,
        };
        let bytes = serde_json::to_vec(&m).map_err(io::Error::other)?;
        let tmp = self.backing.join(format!("{MANIFEST}.tmp"));
        let f = File::create(&tmp)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.backing.join(MANIFEST))?;
        File::open(&self.backing)?.sync_all()
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64).map_err(os_err)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(d: &mut Disk, parent: u64, n: &str) -> u64 {
        d.create(parent, name(n), Kind::File, 0o644, 0, 0).expect("create").ino
    }

    fn dir(d: &mut Disk, parent: u64, n: &str) -> u64 {
        d.create(parent, name(n), Kind::Dir, 0o755, 0, 0).expect("mkdir").ino
    }

    fn content(d: &mut Disk, parent: u64, n: &str) -> Option<Vec<u8>> {
        let ino = d.lookup(parent, name(n)).ok()?.ino;
        Some(d.read(ino, 0, u32::MAX).expect("read"))
    }

    #[test]
    fn unsynced_writes_are_lost_synced_ones_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut d = Disk::open(tmp.path()).expect("open");
        let f = file(&mut d, ROOT, "a");
        d.sync_dir(ROOT).expect("sync dir");
        d.write(f, 0, &[1; 10_000]).expect("write");
        d.sync_file(f).expect("fsync");
        d.write(f, 5_000, &[2; 10_000]).expect("write");
        assert_eq!(d.attr(f).expect("attr").size, 15_000);
        let report = d.cut().expect("cut");
        assert_eq!(content(&mut d, ROOT, "a"), Some(vec![1; 10_000]));
        assert!(report.bytes >= 10_000, "{report:?}");
    }

    #[test]
    fn a_name_needs_its_directory_synced_even_when_the_file_was() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut d = Disk::open(tmp.path()).expect("open");
        let sub = dir(&mut d, ROOT, "sub");
        d.sync_dir(ROOT).expect("sync root");
        let f = file(&mut d, sub, "x");
        d.write(f, 0, b"hello").expect("write");
        d.sync_file(f).expect("fsync");
        let kept = file(&mut d, sub, "y");
        d.write(kept, 0, b"kept").expect("write");
        d.sync_file(kept).expect("fsync");
        d.cut().expect("cut");
        assert_eq!(content(&mut d, sub, "x"), None, "file synced, directory not");
        let f = file(&mut d, sub, "x");
        d.write(f, 0, b"hello").expect("write");
        d.sync_file(f).expect("fsync");
        d.sync_dir(sub).expect("sync dir");
        d.cut().expect("cut");
        assert_eq!(content(&mut d, sub, "x"), Some(b"hello".to_vec()));
        // A removal not synced comes back; synced, it stays gone.
        d.remove(sub, name("x"), false).expect("unlink");
        d.cut().expect("cut");
        assert!(content(&mut d, sub, "x").is_some());
        d.remove(sub, name("x"), false).expect("unlink");
        d.sync_dir(sub).expect("sync");
        d.cut().expect("cut");
        assert_eq!(content(&mut d, sub, "x"), None);
    }

    #[test]
    fn a_rename_between_directories_is_durable_whole_when_either_side_is_synced() {
        for sync_source in [true, false] {
            let tmp = tempfile::tempdir().expect("tmp");
            let mut d = Disk::open(tmp.path()).expect("open");
            let (a, b) = (dir(&mut d, ROOT, "a"), dir(&mut d, ROOT, "b"));
            let f = file(&mut d, a, "f");
            d.write(f, 0, b"data").expect("write");
            d.sync_file(f).expect("fsync");
            for x in [ROOT, a, b] {
                d.sync_dir(x).expect("sync");
            }
            d.rename(a, name("f"), b, name("g"), false).expect("rename");
            d.cut().expect("cut");
            assert!(content(&mut d, a, "f").is_some() && content(&mut d, b, "g").is_none());
            d.rename(a, name("f"), b, name("g"), false).expect("rename");
            d.sync_dir(if sync_source { a } else { b }).expect("sync");
            d.cut().expect("cut");
            assert_eq!(content(&mut d, a, "f"), None, "sync_source {sync_source}");
            assert_eq!(
                content(&mut d, b, "g"),
                Some(b"data".to_vec()),
                "sync_source {sync_source}"
            );
        }
    }

    #[test]
    fn truncates_and_extensions_read_back_as_synced() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut d = Disk::open(tmp.path()).expect("open");
        let f = file(&mut d, ROOT, "t");
        d.sync_dir(ROOT).expect("sync");
        d.write(f, 0, &[7; 9000]).expect("write");
        d.sync_file(f).expect("fsync");
        d.set_len(f, 100).expect("truncate");
        d.set_len(f, 9000).expect("extend");
        let mut want = vec![7u8; 100];
        want.resize(9000, 0);
        assert_eq!(d.read(f, 0, 9000).expect("read"), want, "live");
        d.sync_file(f).expect("fsync");
        d.cut().expect("cut");
        assert_eq!(d.read(f, 0, 9000).expect("read"), want, "after a cut");
    }

    #[test]
    fn the_disk_survives_a_clean_unmount_and_forgets_what_no_durable_name_reaches() {
        let tmp = tempfile::tempdir().expect("tmp");
        {
            let mut d = Disk::open(tmp.path()).expect("open");
            let sub = dir(&mut d, ROOT, "sub");
            let f = file(&mut d, sub, "keep");
            d.write(f, 0, b"kept").expect("write");
            let gone = file(&mut d, ROOT, "gone");
            d.write(gone, 0, b"x").expect("write");
            d.remove(ROOT, name("gone"), false).expect("unlink");
            d.sync_all().expect("sync all");
        }
        let mut d = Disk::open(tmp.path()).expect("reopen");
        let sub = d.lookup(ROOT, name("sub")).expect("sub").ino;
        assert_eq!(content(&mut d, sub, "keep"), Some(b"kept".to_vec()));
        assert_eq!(
            std::fs::read_dir(tmp.path().join("objects")).expect("objects").count(),
            1
        );
    }
}
