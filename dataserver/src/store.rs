//! The shard store: immutable shards as files under `shards/<xx>/`, indexed in RocksDB.
//!
//! Put (acknowledged only when data and index are on stable storage, invariant 6):
//! 1. verify every block checksum of the received bytes (invariant 5);
//! 2. write the file under `staging/` and fdatasync it (one linked io_uring submission),
//!    then fsync `staging/` so the file survives a power loss;
//! 3. one synced index batch adds the record: from here on the shard exists;
//! 4. rename the file into `shards/<xx>/` (no fsync needed: a rename lost to a crash is
//!    redone at start-up, since the staged file and its record are both durable).
//!
//! Read hands back the blocks with the checksums stored at put, without checking them
//! here: every reader checks them on receipt (the logic node serving a file read, a
//! peer rebuilding a shard), where the bytes are hot in its cache after the socket copy,
//! so one pass over them costs far less than a pass here over bytes the disk has just
//! written to memory. A reader that finds a bad block has the shard repaired (a put of a
//! verified copy), and scrub checks every shard at rest (invariant 5).
//!
//! Delete moves the file to `trash/` (durably), removes the record, then unlinks it.
//! After a crash, start-up looks only at `staging/` and `trash/`, which hold just the
//! operations that were in flight: a staged file with a record is moved into place
//! (its put had committed), one without is removed (its space is reclaimed); a trashed
//! file with a record goes back, one without is removed. Nothing else is scanned, so
//! start-up time does not grow with the number of shards. Shards are never modified:
//! a second put with other bytes is refused.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_common::checksum::{block_count, crc32c, verify_blocks, ChecksummedBlocks};
use cairn_common::config::{BLOCK_BYTES_MAX, IO_ALIGN_BYTES};
use cairn_common::durable_dir::{create_dir_durable, sync_dir};
use cairn_common::ids::ShardId;
use cairn_common::wire::ErrorCode;
use thiserror::Error;
use tracing::{info, warn};

use crate::aligned::{padded_len, AlignedBytes};
use crate::disk::{open_shard_file, DiskChoice};
use crate::index::{Index, IndexError, ShardRecord, FORMAT_VERSION};
use crate::metrics::Metrics;

/// Free space kept back so the index can always be written.
const RESERVE_BYTES: u64 = 64 << 20;
/// Scrub and other whole-shard reads go in pieces of at most this many bytes.
const READ_PIECE_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("shard {0} not found")]
    NotFound(ShardId),
    #[error("shard {0} already exists with different content; shards are never modified")]
    AlreadyExists(ShardId),
    #[error("shard {0} is being written or deleted by another request")]
    Busy(ShardId),
    #[error("shard {shard} is corrupt: {detail}")]
    Corrupt { shard: ShardId, detail: String },
    #[error("shard {shard}: range at {offset} of {length:?} bytes is outside its {len} bytes")]
    OutOfRange {
        shard: ShardId,
        offset: u64,
        length: Option<u64>,
        len: u64,
    },
    #[error("out of space: {needed} bytes needed, {free} free")]
    OutOfSpace { needed: u64, free: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl StoreError {
    /// The one place store errors become wire error codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StoreError::Busy(_) => ErrorCode::Busy,
            StoreError::Corrupt { .. } => ErrorCode::Corrupt,
            StoreError::OutOfRange { .. } => ErrorCode::OutOfRange,
            StoreError::OutOfSpace { .. } => ErrorCode::OutOfSpace,
            StoreError::BadRequest(_) => ErrorCode::BadRequest,
            StoreError::Io { .. } | StoreError::Index(_) => ErrorCode::Io,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Limits a put must respect.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    pub shard_bytes_max: u64,
    pub capacity_bytes: Option<u64>,
}

/// Space figures for `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
}

/// What a read returns: the shard's length and the checksummed blocks that hold
/// [offset, offset + length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRead {
    pub shard_len: u64,
    pub offset: u64,
    pub length: u64,
    pub blocks: ChecksummedBlocks,
}

/// How a put starts: the record of the shard already stored under its id, or the staged
/// file just created for it.
enum PutStart {
    Stored(ShardRecord),
    Created(File),
}

/// Result of re-reading one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubOutcome {
    pub bytes: u64,
    pub corrupt_blocks: Vec<u32>,
}

#[derive(Clone)]
pub struct ShardStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore")
            .field("dir", &self.inner.shards_dir)
            .field("io", &self.inner.disk)
            .finish()
    }
}

struct Inner {
    index: Index,
    disk: DiskChoice,
    shards_dir: PathBuf,
    staging: Workdir,
    trash: Workdir,
    /// The index's counters, kept in memory so no request reads them from RocksDB.
    shard_count: AtomicU64,
    used_bytes: AtomicU64,
    busy: Mutex<HashSet<ShardId>>,
    /// Opened read-only beside a running dataserver: the index is a snapshot, so a
    /// missing file means "deleted since", not corruption.
    read_only: bool,
    limits: StoreLimits,
    metrics: Metrics,
}

/// A directory of files in transit (`staging/`, `trash/`) and a handle to fsync it.
struct Workdir {
    path: PathBuf,
    handle: Arc<File>,
}

impl Workdir {
    fn open(path: PathBuf, create: bool) -> Result<Workdir> {
        if create {
            create_dir_durable(&path).map_err(io_err("create directory", &path))?;
        }
        let handle = Arc::new(File::open(&path).map_err(io_err("open directory", &path))?);
        Ok(Workdir { path, handle })
    }

    fn file(&self, id: ShardId) -> PathBuf {
        self.path.join(id.to_string())
    }

    /// The shards with a file here, and names that are not shard ids.
    fn entries(&self) -> Result<(Vec<ShardId>, Vec<PathBuf>)> {
        let (mut ids, mut strays) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(&self.path).map_err(io_err("list", &self.path))? {
            let entry = entry.map_err(io_err("list", &self.path))?;
            match entry.file_name().to_str().and_then(|n| n.parse::<ShardId>().ok()) {
                Some(id) => ids.push(id),
                None => strays.push(entry.path()),
            }
        }
        Ok((ids, strays))
    }
}

/// The wall clock in Unix milliseconds (0 if it reads before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Marks a shard as being worked on; a second put or delete of it gets `Busy`.
struct BusyGuard {
    inner: Arc<Inner>,
    id: ShardId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

fn subdir(id: ShardId) -> usize {
    (id.stripe.0 & 0xff) as usize
}

impl ShardStore {
    /// Opens the store in `data_dir`, creating it if new, and finishes what a crash
    /// interrupted (only `staging/` and `trash/` are looked at; nothing else is scanned).
    pub fn open(data_dir: &Path, disk: DiskChoice, limits: StoreLimits, metrics: Metrics) -> Result<ShardStore> {
        let index_dir = data_dir.join("index");
        create_dir_durable(&index_dir).map_err(io_err("create directory", &index_dir))?;
        let index = Index::open(&index_dir)?;
        let store = Self::assemble(data_dir, index, disk, limits, metrics, true)?;
        store.recover()?;
        Ok(store)
    }

    /// Opens an existing store read-only (for an on-demand scrub), even while a
    /// dataserver is serving it.
    pub fn open_read_only(data_dir: &Path, disk: DiskChoice, metrics: Metrics) -> Result<ShardStore> {
        let index = Index::open_read_only(&data_dir.join("index"))?;
        let limits = StoreLimits {
            shard_bytes_max: 0,
            capacity_bytes: None,
        };
        Self::assemble(data_dir, index, disk, limits, metrics, false)
    }

    fn assemble(
        data_dir: &Path,
        index: Index,
        disk: DiskChoice,
        limits: StoreLimits,
        metrics: Metrics,
        create: bool,
    ) -> Result<ShardStore> {
        let shards_dir = data_dir.join("shards");
        if create {
            // Each of the 256 created, then one fsync of `shards/` makes them all durable.
            create_dir_durable(&shards_dir).map_err(io_err("create directory", &shards_dir))?;
            for i in 0..256 {
                let d = shards_dir.join(format!("{i:02x}"));
                std::fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
            }
            sync_dir(&shards_dir).map_err(io_err("sync directory", &shards_dir))?;
        }
        let (shard_count, used_bytes) = index.counters()?;
        Ok(ShardStore {
            inner: Arc::new(Inner {
                index,
                disk,
                shards_dir,
                staging: Workdir::open(data_dir.join("staging"), create)?,
                trash: Workdir::open(data_dir.join("trash"), create)?,
                shard_count: AtomicU64::new(shard_count),
                used_bytes: AtomicU64::new(used_bytes),
                busy: Mutex::new(HashSet::new()),
                read_only: !create,
                limits,
                metrics,
            }),
        })
    }

    /// Finishes or rolls back the puts and deletes a crash interrupted.
    fn recover(&self) -> Result<()> {
        let inner = &self.inner;
        let (staged, strays) = inner.staging.entries()?;
        let (trashed, trash_strays) = inner.trash.entries()?;
        for path in strays.iter().chain(&trash_strays) {
            remove_if_present(path)?;
        }
        let mut moved = 0;
        for (dir, ids) in [(&inner.staging, &staged), (&inner.trash, &trashed)] {
            for &id in ids {
                let from = dir.file(id);
                if inner.index.get(id)?.is_some() {
                    let to = inner.path(id);
                    // Not synced: if this is lost too, the next start does it again.
                    std::fs::rename(&from, &to).map_err(io_err("move into place", &from))?;
                    moved += 1;
                } else {
                    remove_if_present(&from)?;
                }
            }
        }
        if !staged.is_empty() || !trashed.is_empty() {
            info!(
                staged = staged.len(),
                trashed = trashed.len(),
                moved_into_place = moved,
                "finished the puts and deletes a crash interrupted; the rest of their space is reclaimed"
            );
        }
        Ok(())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn io_mode(&self) -> &str {
        &self.inner.disk.describe
    }

    fn busy(&self, id: ShardId) -> Result<BusyGuard> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id) {
            return Err(StoreError::Busy(id));
        }
        Ok(BusyGuard {
            inner: self.inner.clone(),
            id,
        })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Io {
                op: "join blocking task",
                path: PathBuf::new(),
                source: io::Error::other(e),
            })?
    }

    /// Stores a shard. Returns false when an identical shard was already stored and still
    /// verifies (a retried put); refuses different bytes under an existing id. A put of
    /// the same shard over a stored copy that no longer verifies replaces that copy: this
    /// is how a logic node repairs a corrupt shard it rebuilt from the others.
    pub async fn put(&self, id: ShardId, block_bytes: u32, checksums: Vec<u32>, data: Bytes) -> Result<bool> {
        self.check_put(id, block_bytes, &checksums, &data)?;
        let _guard = self.busy(id)?;
        let len = data.len() as u64;
        let disk_bytes = padded_len(len);
        let record = ShardRecord {
            format_version: FORMAT_VERSION,
            len,
            block_bytes,
            checksums,
            created_ms: now_ms(),
        };
        let staged = self.inner.staging.file(id);
        // One trip to the blocking pool before the write and one after: each trip wakes a
        // thread, which costs a dataserver as much CPU per shard as its RocksDB work.
        let path = staged.clone();
        let file = match self
            .blocking(move |s| {
                if let Some(old) = s.index.get(id)? {
                    return Ok(PutStart::Stored(old));
                }
                s.check_space(disk_bytes)?;
                let file = open_shard_file(&path, true, s.disk.direct).map_err(io_err("create shard", &path))?;
                Ok(PutStart::Created(file))
            })
            .await?
        {
            PutStart::Created(file) => file,
            PutStart::Stored(old) => {
                let same =
                    (old.len, old.block_bytes, &old.checksums) == (record.len, record.block_bytes, &record.checksums);
                if !same {
                    return Err(StoreError::AlreadyExists(id));
                }
                return self.replace_if_corrupt(id, data, "put").await;
            }
        };
        if let Err(e) = self.write_durable(&staged, file, AlignedBytes::padded(data)).await {
            // Best effort: what is left in staging/ is reclaimed at the next start anyway.
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        // The record, then the move into place. No fsync of the shard's directory is
        // needed: if a crash undoes the rename, the staged file and its record are both
        // durable, and start-up moves it into place.
        self.blocking(move |s| {
            s.index.commit_put(id, &record, disk_bytes)?;
            s.shard_count.fetch_add(1, Ordering::Relaxed);
            s.used_bytes.fetch_add(disk_bytes, Ordering::Relaxed);
            std::fs::rename(&staged, s.path(id)).map_err(io_err("move into place", &staged))
        })
        .await?;
        self.inner.metrics.bytes_written.inc_by(len);
        Ok(true)
    }

    /// Replaces a stored shard that no longer verifies with `data`, which must be the
    /// shard as stored (its length and block checksums); `by` names the repairer for the
    /// counters. Returns false when the stored copy verifies (nothing is written).
    pub async fn repair(&self, id: ShardId, data: Bytes, by: &str) -> Result<bool> {
        let _guard = self.busy(id)?;
        let record = self
            .blocking(move |s| s.index.get(id).map_err(StoreError::from))
            .await?
            .ok_or(StoreError::NotFound(id))?;
        record.checked_block_bytes().map_err(|reason| StoreError::Corrupt {
            shard: id,
            detail: format!("its index record is unusable, nothing written: {reason}"),
        })?;
        if data.len() as u64 != record.len {
            return Err(StoreError::BadRequest(format!(
                "a repair of {} bytes for a shard of {}",
                data.len(),
                record.len
            )));
        }
        verify_blocks(&data, record.block_bytes, 0, &record.checksums).map_err(|e| StoreError::Corrupt {
            shard: id,
            detail: format!("the repair does not match the shard's checksums, nothing written: {e}"),
        })?;
        self.replace_if_corrupt(id, data, by).await
    }

    /// [`ShardStore::repair`] once `data` is known to match the record; the caller holds
    /// the shard's busy guard.
    async fn replace_if_corrupt(&self, id: ShardId, data: Bytes, by: &str) -> Result<bool> {
        if self.scrub(id).await?.corrupt_blocks.is_empty() {
            return Ok(false);
        }
        let staged = self.inner.staging.file(id);
        self.stage(&staged, AlignedBytes::padded(data)).await?;
        // The record stays as it is. After a crash start-up moves the staged file into
        // place (it has a record): whole if staging finished, else as corrupt as the copy
        // it replaces, which checksums catch as before.
        self.blocking(move |s| std::fs::rename(&staged, s.path(id)).map_err(io_err("move into place", &staged)))
            .await?;
        info!(shard = %id, by, "corrupt shard replaced by a verified copy");
        self.inner.metrics.repaired_shards.with_label_values(&[by]).inc();
        Ok(true)
    }

    /// Writes `buf` to the staged file `staged`, durably, its directory entry included.
    async fn stage(&self, staged: &Path, buf: AlignedBytes) -> Result<()> {
        let path = staged.to_owned();
        let file = self
            .blocking(move |s| open_shard_file(&path, true, s.disk.direct).map_err(io_err("create shard", &path)))
            .await?;
        self.write_durable(staged, file, buf).await
    }

    /// Writes `buf` to `file`, just created at `staged`, durably, its directory entry
    /// included.
    async fn write_durable(&self, staged: &Path, file: File, buf: AlignedBytes) -> Result<()> {
        // The directory entry exists once the file is created, so its fsync can run
        // beside the data's write and fdatasync (often sharing one journal commit).
        let disk = &self.inner.disk.disk;
        let (data, entry) = tokio::join!(
            disk.write_durable(Arc::new(file), buf),
            disk.sync(self.inner.staging.handle.clone())
        );
        data.map_err(io_err("write shard", staged))?;
        entry.map_err(io_err("sync directory of", staged))
    }

    fn check_put(&self, id: ShardId, block_bytes: u32, checksums: &[u32], data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        if len > self.inner.limits.shard_bytes_max {
            return Err(StoreError::BadRequest(format!(
                "shard of {len} bytes exceeds the shard limit of {} bytes",
                self.inner.limits.shard_bytes_max
            )));
        }
        if block_bytes < IO_ALIGN_BYTES || !block_bytes.is_multiple_of(IO_ALIGN_BYTES) || block_bytes > BLOCK_BYTES_MAX
        {
            return Err(StoreError::BadRequest(format!(
                "block size {block_bytes} must be a multiple of {IO_ALIGN_BYTES} up to {BLOCK_BYTES_MAX}"
            )));
        }
        let want = block_count(len, block_bytes).map_err(|e| StoreError::BadRequest(e.to_string()))?;
        if checksums.len() as u64 != want {
            return Err(StoreError::BadRequest(format!(
                "{} checksums for {want} blocks of {block_bytes} bytes",
                checksums.len()
            )));
        }
        verify_blocks(data, block_bytes, 0, checksums).map_err(|e| StoreError::Corrupt {
            shard: id,
            detail: format!("damaged in transit, nothing stored: {e}"),
        })
    }

    /// Reads `length` bytes (to the end when `None`) at `offset`: the whole blocks that
    /// cover them, handed back with their stored checksums for the reader to verify (see
    /// the module's comment).
    pub async fn read(&self, id: ShardId, offset: u64, length: Option<u64>) -> Result<ShardRead> {
        let (record, file) = self.blocking(move |s| s.open_indexed(id)).await?;
        let bs = self.usable(id, &record, "read")?;
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(record.len),
        };
        let end = end
            .filter(|&e| offset <= e && e <= record.len)
            .ok_or(StoreError::OutOfRange {
                shard: id,
                offset,
                length,
                len: record.len,
            })?;
        let blocks = if offset == end {
            ChecksummedBlocks {
                block_bytes: record.block_bytes,
                ..ChecksummedBlocks::default()
            }
        } else {
            self.read_blocks(id, &record, bs, file, offset, end).await?
        };
        self.inner.metrics.bytes_read.inc_by(end - offset);
        Ok(ShardRead {
            shard_len: record.len,
            offset,
            length: end - offset,
            blocks,
        })
    }

    /// Reads the blocks covering [start, end) (within the length of `record`, whose block
    /// size `bs` was checked), with their checksums. A file shorter than its record is
    /// corruption found here.
    async fn read_blocks(
        &self,
        id: ShardId,
        record: &ShardRecord,
        bs: u64,
        file: Arc<File>,
        start: u64,
        end: u64,
    ) -> Result<ChecksummedBlocks> {
        // A checked record has fewer than 2^32 blocks of at most BLOCK_BYTES_MAX: none of
        // this overflows, and the conversions below cannot fail.
        let first_block = start / bs;
        let last_block = end.div_ceil(bs);
        let read_start = first_block.saturating_mul(bs);
        let read_end = last_block.saturating_mul(bs).min(padded_len(record.len));
        let path = self.inner.path(id);
        let disk = &self.inner.disk.disk;
        let read_len = fits(id, read_end.saturating_sub(read_start))?;
        let buf = match disk.read_at(file, read_start, read_len).await {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(self.corrupt(id, "read", format!("file is shorter than its {} bytes", record.len), 1));
            }
            Err(e) => return Err(io_err("read shard", &path)(e)),
        };
        // The buffer holds whole blocks; the shard's bytes stop at its length.
        let data_len: usize = fits(id, record.len.min(read_end).saturating_sub(read_start))?;
        let checksums = record
            .checksums
            .get(fits(id, first_block)?..fits(id, last_block)?)
            .ok_or_else(|| self.corrupt(id, "read", "index has too few checksums".into(), 1))?
            .to_vec();
        let bytes = buf.into_bytes();
        if bytes.len() < data_len {
            return Err(self.corrupt(id, "read", format!("file is shorter than its {} bytes", record.len), 1));
        }
        Ok(ChecksummedBlocks {
            block_bytes: record.block_bytes,
            first_block: fits(id, first_block)?,
            checksums,
            bytes: bytes.slice(..data_len),
        })
    }

    /// The block size of `record`, read from the index for shard `id`; a record no put
    /// could have stored (a block size of 0, a length its checksums do not cover) is
    /// corruption found by `found_by`, before any of its fields is used in arithmetic.
    fn usable(&self, id: ShardId, record: &ShardRecord, found_by: &str) -> Result<u64> {
        record
            .checked_block_bytes()
            .map_err(|reason| self.corrupt(id, found_by, format!("its index record is unusable: {reason}"), 1))
    }

    fn corrupt(&self, id: ShardId, found_by: &str, detail: String, blocks: u64) -> StoreError {
        warn!(shard = %id, found_by, %detail, "corrupt shard");
        self.inner
            .metrics
            .corrupt_blocks
            .with_label_values(&[found_by])
            .inc_by(blocks);
        StoreError::Corrupt { shard: id, detail }
    }

    /// Deletes a shard; returns whether it existed.
    pub async fn delete(&self, id: ShardId) -> Result<bool> {
        let _guard = self.busy(id)?;
        let record = self
            .blocking(move |s| s.index.get(id).map_err(StoreError::from))
            .await?;
        let Some(record) = record else { return Ok(false) };
        let trashed = self.inner.trash.file(id);
        let to = trashed.clone();
        // The space the put counted: its padded length, from the record; a damaged
        // record's length says nothing of it (and may not even round up to a u64), so
        // then the file's own size on disk is taken.
        let usable = record.checked_block_bytes().is_ok();
        let disk_bytes = self
            .blocking(move |s| {
                match std::fs::rename(s.path(id), &to) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("move to trash", &to)(e)),
                    _ => {}
                }
                Ok(if usable {
                    padded_len(record.len)
                } else {
                    std::fs::metadata(&to).map_or(0, |m| m.len())
                })
            })
            .await?;
        let trash = self.inner.trash.handle.clone();
        self.inner
            .disk
            .disk
            .sync(trash)
            .await
            .map_err(io_err("sync directory of", &trashed))?;
        self.blocking(move |s| {
            s.index.commit_delete(id, disk_bytes)?;
            s.shard_count.fetch_sub(1, Ordering::Relaxed);
            s.used_bytes.fetch_sub(disk_bytes, Ordering::Relaxed);
            remove_if_present(&trashed)
        })
        .await?;
        Ok(true)
    }

    /// Up to `limit` shards (id, length) after `after`, and whether more follow.
    pub async fn list(&self, after: Option<ShardId>, limit: usize) -> Result<(Vec<(ShardId, u64)>, bool)> {
        self.list_by(after, limit, |r| r.len).await
    }

    /// Like [`ShardStore::list`], with when each shard was stored (Unix milliseconds).
    pub async fn list_created(&self, after: Option<ShardId>, limit: usize) -> Result<(Vec<(ShardId, u64)>, bool)> {
        self.list_by(after, limit, |r| r.created_ms).await
    }

    async fn list_by(
        &self,
        after: Option<ShardId>,
        limit: usize,
        field: fn(&ShardRecord) -> u64,
    ) -> Result<(Vec<(ShardId, u64)>, bool)> {
        self.blocking(move |s| {
            let (page, more) = s.index.list(after, limit)?;
            Ok((page.into_iter().map(|(id, r)| (id, field(&r))).collect(), more))
        })
        .await
    }

    pub fn usage(&self) -> Result<Usage> {
        self.inner.usage()
    }

    /// Re-reads a whole shard and checks every block; a shard deleted meanwhile gives
    /// `NotFound`. Corrupt blocks are counted and logged, not returned as an error; a
    /// shard that cannot be checked block by block (its file is missing, its index
    /// record is unusable) is `Corrupt`.
    pub async fn scrub(&self, id: ShardId) -> Result<ScrubOutcome> {
        let (record, file) = self.blocking(move |s| s.open_indexed(id)).await?;
        let bs = self.usable(id, &record, "scrub")?;
        let piece = READ_PIECE_BYTES.max(bs) / bs * bs;
        let mut corrupt_blocks = Vec::new();
        let mut pos = 0;
        // A checked record has fewer than 2^32 blocks of at most BLOCK_BYTES_MAX: the
        // sums and products below do not overflow, and the conversions do not fail.
        while pos < record.len {
            let end = pos.saturating_add(piece).min(record.len);
            let blocks = fits::<u32>(id, pos / bs)?..fits(id, end.div_ceil(bs))?;
            let len = fits(id, padded_len(end) - pos)?;
            match self.inner.disk.disk.read_at(file.clone(), pos, len).await {
                Ok(buf) => {
                    for b in blocks {
                        let lo = fits(id, u64::from(b) * bs - pos)?;
                        let hi = fits(id, ((u64::from(b) + 1) * bs).min(end) - pos)?;
                        if !buf
                            .as_slice()
                            .get(lo..hi)
                            .is_some_and(|bytes| block_ok(&record, b, bytes))
                        {
                            corrupt_blocks.push(b);
                        }
                    }
                }
                // A short file or a media error: read block by block so that only the
                // blocks that really cannot be read are reported.
                Err(_) => {
                    for b in blocks {
                        let lo = u64::from(b) * bs;
                        let hi = (lo + bs).min(record.len);
                        let len = fits(id, padded_len(hi) - lo)?;
                        let want = fits(id, hi - lo)?;
                        let read = self.inner.disk.disk.read_at(file.clone(), lo, len).await;
                        if !read.is_ok_and(|buf| {
                            buf.as_slice()
                                .get(..want)
                                .is_some_and(|bytes| block_ok(&record, b, bytes))
                        }) {
                            corrupt_blocks.push(b);
                        }
                    }
                }
            }
            pos = end;
        }
        self.inner.metrics.scrubbed_shards.inc();
        self.inner.metrics.scrubbed_bytes.inc_by(record.len);
        if !corrupt_blocks.is_empty() {
            let n = corrupt_blocks.len() as u64;
            self.corrupt(id, "scrub", format!("blocks {corrupt_blocks:?} fail their checksum"), n);
        }
        Ok(ScrubOutcome {
            bytes: record.len,
            corrupt_blocks,
        })
    }

    /// Where shard `id`'s file lives (tests use it to damage shards on purpose).
    pub fn shard_path(&self, id: ShardId) -> PathBuf {
        self.inner.path(id)
    }
}

fn block_ok(record: &ShardRecord, block: u32, bytes: &[u8]) -> bool {
    usize::try_from(block)
        .ok()
        .and_then(|b| record.checksums.get(b))
        .is_some_and(|&want| want == crc32c(bytes))
}

/// `n`, a length or block index derived from a checked index record, as a `T`. It
/// always fits; should it not, the record is to blame, so that is corruption.
fn fits<T: TryFrom<u64>>(id: ShardId, n: u64) -> Result<T> {
    T::try_from(n).map_err(|_| StoreError::Corrupt {
        shard: id,
        detail: format!("{n} is out of range for its index record"),
    })
}

impl Inner {
    fn usage(&self) -> Result<Usage> {
        let shard_count = self.shard_count.load(Ordering::Relaxed);
        let used_bytes = self.used_bytes.load(Ordering::Relaxed);
        let vfs = rustix::fs::statvfs(&self.shards_dir).map_err(|e| io_err("statvfs", &self.shards_dir)(e.into()))?;
        let fs_total = vfs.f_blocks.saturating_mul(vfs.f_frsize);
        let fs_free = vfs.f_bavail.saturating_mul(vfs.f_frsize).saturating_sub(RESERVE_BYTES);
        let capacity_bytes = self.limits.capacity_bytes.unwrap_or(fs_total);
        let free_bytes = fs_free.min(capacity_bytes.saturating_sub(used_bytes));
        Ok(Usage {
            capacity_bytes,
            free_bytes,
            used_bytes,
            shard_count,
        })
    }

    fn check_space(&self, needed: u64) -> Result<()> {
        let usage = self.usage()?;
        if usage.free_bytes < needed {
            return Err(StoreError::OutOfSpace {
                needed,
                free: usage.free_bytes,
            });
        }
        Ok(())
    }

    fn path(&self, id: ShardId) -> PathBuf {
        self.shards_dir.join(format!("{:02x}", subdir(id))).join(id.to_string())
    }

    /// A shard's index record and its file, opened for reading.
    fn open_indexed(&self, id: ShardId) -> Result<(ShardRecord, Arc<File>)> {
        let record = self.index.get(id)?.ok_or(StoreError::NotFound(id))?;
        Ok((record, Arc::new(self.open_for_read(id)?)))
    }

    /// Opens an indexed shard's file. A missing file is `Busy` while a put is moving it
    /// into place, and corruption otherwise: the index says the shard exists.
    fn open_for_read(&self, id: ShardId) -> Result<File> {
        let path = self.path(id);
        open_shard_file(&path, false, self.disk.direct).map_err(|e| {
            if e.kind() != io::ErrorKind::NotFound {
                io_err("open shard", &path)(e)
            } else if self.read_only {
                StoreError::NotFound(id)
            } else if self.busy.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
                StoreError::Busy(id)
            } else {
                self.metrics.corrupt_blocks.with_label_values(&["read"]).inc();
                StoreError::Corrupt {
                    shard: id,
                    detail: "its file is missing".into(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk;
    use cairn_common::checksum::block_checksums;
    use cairn_common::config::IoMode;
    use cairn_common::ids::StripeId;

    const BS: u32 = 4096;

    async fn open(dir: &Path) -> ShardStore {
        open_with_capacity(dir, None).await
    }

    async fn open_with_capacity(dir: &Path, capacity_bytes: Option<u64>) -> ShardStore {
        let choice = disk::choose(dir, IoMode::Auto, 32).await.unwrap();
        let limits = StoreLimits {
            shard_bytes_max: 1 << 20,
            capacity_bytes,
        };
        ShardStore::open(dir, choice, limits, Metrics::new()).unwrap()
    }

    fn data(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect::<Vec<_>>()
            .into()
    }

    /// A read, verified on the reader's side as a client does: a bad block is `Corrupt`.
    async fn get(store: &ShardStore, id: ShardId, offset: u64, length: Option<u64>) -> Result<(u64, Bytes)> {
        let r = store.read(id, offset, length).await?;
        let bytes = r
            .blocks
            .verified_range(r.offset, r.length)
            .map_err(|e| StoreError::Corrupt {
                shard: id,
                detail: e.to_string(),
            })?;
        Ok((r.shard_len, bytes))
    }

    async fn put(store: &ShardStore, id: ShardId, d: &Bytes) -> Result<bool> {
        store.put(id, BS, block_checksums(d, BS), d.clone()).await
    }

    #[tokio::test]
    async fn a_put_past_the_capacity_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two shards of 8 KiB on disk, not three.
        let store = open_with_capacity(dir.path(), Some(2 * 8192 + 4096)).await;
        let ids: Vec<ShardId> = (0..3).map(|i| ShardId::new(StripeId(7), i)).collect();
        for (i, id) in ids[..2].iter().enumerate() {
            assert!(put(&store, *id, &data(5000, i as u8 + 1)).await.unwrap());
        }
        let before = store.usage().unwrap();
        assert!(matches!(
            put(&store, ids[2], &data(5000, 9)).await,
            Err(StoreError::OutOfSpace { needed: 8192, .. })
        ));
        let after = store.usage().unwrap();
        assert_eq!(
            (after.shard_count, after.used_bytes),
            (before.shard_count, before.used_bytes)
        );
        assert!(matches!(
            get(&store, ids[2], 0, None).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!store.shard_path(ids[2]).exists());
        assert_eq!(std::fs::read_dir(&store.inner.staging.path).unwrap().count(), 0);
        // A retried put of a stored shard is answered from its record, even when full.
        assert!(!put(&store, ids[0], &data(5000, 1)).await.unwrap());
        assert_eq!(get(&store, ids[1], 0, None).await.unwrap().1, data(5000, 2));
    }

    #[tokio::test]
    async fn put_get_ranges_and_immutability() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let id = ShardId::new(StripeId(1), 0);
        let d = data(10_000, 3);
        assert!(put(&store, id, &d).await.unwrap());
        assert!(
            !put(&store, id, &d).await.unwrap(),
            "identical retry is accepted as a no-op"
        );
        assert!(matches!(
            put(&store, id, &data(10_000, 4)).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(get(&store, id, 0, None).await.unwrap(), (10_000, d.clone()));
        for (off, len) in [(0, 1), (4095, 2), (4096, 4096), (9999, 1), (5000, 0), (10_000, 0)] {
            let (_, got) = get(&store, id, off, Some(len)).await.unwrap();
            assert_eq!(got, d.slice(off as usize..(off + len) as usize), "range {off}+{len}");
        }
        for (off, len) in [(10_001, None), (0, Some(10_001)), (u64::MAX, Some(2))] {
            assert!(matches!(
                get(&store, id, off, len).await,
                Err(StoreError::OutOfRange { .. })
            ));
        }
        assert!(matches!(
            get(&store, ShardId::new(StripeId(2), 0), 0, None).await,
            Err(StoreError::NotFound(_))
        ));
        let empty = ShardId::new(StripeId(3), 0);
        assert!(put(&store, empty, &Bytes::new()).await.unwrap());
        assert_eq!(get(&store, empty, 0, None).await.unwrap(), (0, Bytes::new()));
        assert_eq!(store.usage().unwrap().shard_count, 2);
    }

    /// The fallbacks chosen at start-up store and verify shards the same way: positioned
    /// I/O instead of io_uring, and buffered I/O where O_DIRECT is refused.
    #[tokio::test]
    async fn fallback_engines_store_and_verify_the_same() {
        let buffered = DiskChoice {
            disk: Arc::new(disk::PosixDisk),
            direct: false,
            describe: "posix".into(),
        };
        for choice in [
            disk::choose(tempfile::tempdir().unwrap().path(), IoMode::Posix, 8)
                .await
                .unwrap(),
            buffered,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let limits = StoreLimits {
                shard_bytes_max: 1 << 20,
                capacity_bytes: None,
            };
            let describe = choice.describe.clone();
            let store = ShardStore::open(dir.path(), choice, limits, Metrics::new()).unwrap();
            assert!(describe.starts_with("posix"), "{describe}");
            let id = ShardId::new(StripeId(11), 2);
            let d = data(70_000, 13);
            assert!(put(&store, id, &d).await.unwrap());
            assert_eq!(get(&store, id, 0, None).await.unwrap().1, d, "{describe}");
            assert_eq!(get(&store, id, 65_000, Some(5000)).await.unwrap().1, d.slice(65_000..));
            let mut bytes = std::fs::read(store.shard_path(id)).unwrap();
            bytes[3] ^= 1;
            std::fs::write(store.shard_path(id), bytes).unwrap();
            assert!(
                matches!(get(&store, id, 0, Some(10)).await, Err(StoreError::Corrupt { .. })),
                "{describe}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_bad_puts_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let id = ShardId::new(StripeId(1), 0);
        let d = data(9000, 5);
        let mut sums = block_checksums(&d, BS);
        sums[1] ^= 1;
        assert!(matches!(
            store.put(id, BS, sums, d.clone()).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.put(id, BS, vec![1], d.clone()).await,
            Err(StoreError::BadRequest(_))
        ));
        assert!(matches!(
            store.put(id, 1000, vec![], d.clone()).await,
            Err(StoreError::BadRequest(_))
        ));
        let big = data((1 << 20) + 1, 1);
        assert!(matches!(put(&store, id, &big).await, Err(StoreError::BadRequest(_))));
        assert!(matches!(get(&store, id, 0, None).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.usage().unwrap().shard_count, 0);
        assert!(!store.shard_path(id).exists());
    }

    #[tokio::test]
    async fn corrupt_blocks_never_pass_a_reader_and_scrub_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let id = ShardId::new(StripeId(7), 1);
        let d = data(3 * 4096 + 100, 9);
        put(&store, id, &d).await.unwrap();
        let path = store.shard_path(id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4096 + 17] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            get(&store, id, 0, None).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            get(&store, id, 5000, Some(10)).await,
            Err(StoreError::Corrupt { .. })
        ));
        // Blocks around the damaged one still read.
        assert_eq!(get(&store, id, 0, Some(4096)).await.unwrap().1, d.slice(..4096));
        assert_eq!(get(&store, id, 8192, None).await.unwrap().1, d.slice(8192..));
        assert_eq!(store.scrub(id).await.unwrap().corrupt_blocks, vec![1]);
        // A truncated file is corrupt too, not an I/O error.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(matches!(
            get(&store, id, 8192, None).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(store.scrub(id).await.unwrap().corrupt_blocks, vec![1, 2, 3]);
        let m = store.metrics();
        assert!(m.corrupt_blocks.with_label_values(&["scrub"]).get() >= 4);
        // The reads that hit the short file found it here; flipped bytes are the reader's
        // to find.
        assert_eq!(m.corrupt_blocks.with_label_values(&["read"]).get(), 1);

        // A put of the same shard repairs it: a verified copy replaces the damaged one.
        assert!(put(&store, id, &d).await.unwrap(), "the repair was not stored");
        assert_eq!(get(&store, id, 0, None).await.unwrap().1, d);
        assert!(store.scrub(id).await.unwrap().corrupt_blocks.is_empty());
        assert_eq!(m.repaired_shards.with_label_values(&["put"]).get(), 1);
        assert_eq!(store.usage().unwrap().shard_count, 1);
        // Once whole, the same put is a retry again: nothing is written.
        assert!(!put(&store, id, &d).await.unwrap());
        assert_eq!(m.repaired_shards.with_label_values(&["put"]).get(), 1);
        // A repair must be the shard as stored; other bytes are refused.
        assert!(matches!(
            store.repair(id, data(d.len(), 10), "scrub").await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!store.repair(id, d.clone(), "scrub").await.unwrap());
    }

    #[tokio::test]
    async fn interrupted_puts_and_deletes_are_finished_or_reclaimed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = |n: u128| ShardId::new(StripeId(n), 0);
        let (kept, torn, committed, deleted, undeleted) = (id(1), id(2), id(3), id(4), id(5));
        {
            let store = open(dir.path()).await;
            for (i, s) in [kept, deleted, undeleted].into_iter().enumerate() {
                put(&store, s, &data(5000, i as u8 + 1)).await.unwrap();
            }
            assert!(store.delete(deleted).await.unwrap());
            assert!(!store.delete(deleted).await.unwrap());
            // What crashes leave behind: a staged file never committed; a staged file
            // whose record committed before the rename; a file moved to trash/ before
            // its record was removed; a stray name.
            let inner = &store.inner;
            std::fs::write(inner.staging.file(torn), vec![1u8; 8192]).unwrap();
            let d = data(5000, 9);
            let rec = ShardRecord {
                format_version: FORMAT_VERSION,
                len: 5000,
                block_bytes: BS,
                checksums: block_checksums(&d, BS),
                created_ms: now_ms(),
            };
            inner.index.commit_put(committed, &rec, 8192).unwrap();
            std::fs::write(
                inner.staging.file(committed),
                crate::aligned::AlignedBuf::padded_copy(&d).as_slice(),
            )
            .unwrap();
            std::fs::rename(inner.path(undeleted), inner.trash.file(undeleted)).unwrap();
            std::fs::write(inner.staging.path.join("junk"), b"x").unwrap();
        }
        let store = open(dir.path()).await;
        let inner = &store.inner;
        assert_eq!(
            std::fs::read_dir(&inner.staging.path).unwrap().count(),
            0,
            "staging/ emptied"
        );
        assert_eq!(
            std::fs::read_dir(&inner.trash.path).unwrap().count(),
            0,
            "trash/ emptied"
        );
        assert!(
            !store.shard_path(torn).exists(),
            "space of the unfinished put is reclaimed"
        );
        assert_eq!(get(&store, kept, 0, None).await.unwrap().1, data(5000, 1));
        assert_eq!(get(&store, committed, 0, None).await.unwrap().1, data(5000, 9));
        assert_eq!(get(&store, undeleted, 0, None).await.unwrap().1, data(5000, 3));
        assert!(matches!(
            get(&store, deleted, 0, None).await,
            Err(StoreError::NotFound(_))
        ));
        let u = store.usage().unwrap();
        assert_eq!((u.shard_count, u.used_bytes), (3, 3 * 8192));
        let (page, more) = store.list(None, 10).await.unwrap();
        assert_eq!(
            (page, more),
            (vec![(kept, 5000), (committed, 5000), (undeleted, 5000)], false)
        );
        // A file that vanished behind the index's back is corruption, not "not found".
        std::fs::remove_file(store.shard_path(kept)).unwrap();
        assert!(matches!(
            get(&store, kept, 0, None).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_shard_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let id = ShardId::new(StripeId(5), 0);
        let d = data(100_000, 7);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (s, d) = (store.clone(), d.clone());
                tokio::spawn(async move { put(&s, id, &d).await })
            })
            .collect();
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(true) => created += 1,
                Ok(false) | Err(StoreError::Busy(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(created, 1);
        assert_eq!(get(&store, id, 0, None).await.unwrap().1, d);
    }

    /// Invariant 7 for what comes off the disk: an index record no put could have
    /// stored (a block size of 0, a length its checksums do not cover, a block size off
    /// the I/O unit) is corruption to every reader of it, named by field, and never a
    /// division by zero, an overflow or a read buffer sized by a damaged length. Scrub
    /// reports it and goes on; the damaged shard can still be deleted.
    #[tokio::test]
    async fn a_damaged_index_record_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let good = ShardId::new(StripeId(100), 0);
        put(&store, good, &data(5000, 1)).await.unwrap();
        let d = data(5000, 2);
        let sums = block_checksums(&d, BS);
        let damaged = |f: fn(&mut ShardRecord)| {
            let mut r = ShardRecord {
                format_version: FORMAT_VERSION,
                len: 5000,
                block_bytes: BS,
                checksums: sums.clone(),
                created_ms: 1,
            };
            f(&mut r);
            r
        };
        let cases = [
            (damaged(|r| r.block_bytes = 0), "block_bytes is 0"),
            (damaged(|r| r.len = u64::MAX), "block indices"),
            (damaged(|r| r.len = 1 << 50), "block indices"),
            (damaged(|r| r.len = 500_000), "2 checksums for len 500000"),
            (
                damaged(|r| {
                    r.len = u64::MAX;
                    r.block_bytes = 0
                }),
                "block_bytes is 0",
            ),
            (damaged(|r| r.block_bytes = u32::MAX), "block_bytes 4294967295"),
            (damaged(|r| r.block_bytes = 4096 * 2048), "block_bytes 8388608"),
            (damaged(|r| r.checksums.truncate(1)), "1 checksums"),
        ];
        let before = store.usage().unwrap().used_bytes;
        assert_eq!(before, 8192);
        for (i, (record, field)) in cases.into_iter().enumerate() {
            let id = ShardId::new(StripeId(200 + i as u128), 0);
            put(&store, id, &d).await.unwrap();
            store.inner.index.commit_put(id, &record, 0).unwrap();
            for length in [None, Some(0), Some(10)] {
                match store.read(id, 0, length).await {
                    Err(StoreError::Corrupt { detail, .. }) => assert!(detail.contains(field), "{field}: {detail}"),
                    other => panic!("{field}: read of {length:?}: {other:?}"),
                }
            }
            assert!(
                matches!(store.scrub(id).await, Err(StoreError::Corrupt { .. })),
                "{field}: scrub"
            );
            match store.repair(id, d.clone(), "scrub").await {
                Err(StoreError::Corrupt { detail, .. }) => assert!(detail.contains(field), "{field}: {detail}"),
                other => panic!("{field}: repair: {other:?}"),
            }
            let report = crate::scrub::scrub_pass(&store, 0, &tokio_util::sync::CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(report.corrupt, vec![(id, vec![])], "{field}");
            assert_eq!(report.shards, 2, "{field}: the pass went past the damaged shard");
            assert!(store.delete(id).await.unwrap(), "{field}: delete");
            assert!(matches!(store.read(id, 0, None).await, Err(StoreError::NotFound(_))));
        }
        assert_eq!(get(&store, good, 0, None).await.unwrap().1, data(5000, 1));
        // Each delete took back the space its put counted, whatever its record said.
        let u = store.usage().unwrap();
        assert_eq!((u.used_bytes, u.shard_count), (before, 1), "{u:?}");
    }
}
