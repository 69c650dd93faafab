//! The narrow disk interface of the shard store (DESIGN.md invariant 8), and the choice,
//! made once at start-up, between io_uring and positioned I/O, with or without O_DIRECT.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use cairn_common::config::IoMode;
use tracing::{info, warn};

use crate::aligned::{AlignedBuf, AlignedBytes};
use crate::uring::UringDisk;

pub type DiskFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// Reads and writes of whole, aligned ranges of shard files.
pub trait ShardDisk: Send + Sync + 'static {
    /// Writes `buf` at offset 0 of `file` and flushes it to stable storage (fdatasync).
    fn write_durable(&self, file: Arc<File>, buf: AlignedBytes) -> DiskFuture<()>;
    /// Reads exactly `len` bytes (aligned) at `offset` (aligned).
    fn read_at(&self, file: Arc<File>, offset: u64, len: usize) -> DiskFuture<AlignedBuf>;
    /// fsync, for directories whose new entries must survive a power loss.
    fn sync(&self, file: Arc<File>) -> DiskFuture<()>;
}

/// Positioned I/O on tokio's blocking pool: the fallback where io_uring is not allowed.
#[derive(Debug, Default)]
pub struct PosixDisk;

impl ShardDisk for PosixDisk {
    fn write_durable(&self, file: Arc<File>, buf: AlignedBytes) -> DiskFuture<()> {
        Box::pin(blocking(move || {
            file.write_all_at(buf.as_slice(), 0)?;
            file.sync_data()
        }))
    }

    fn read_at(&self, file: Arc<File>, offset: u64, len: usize) -> DiskFuture<AlignedBuf> {
        Box::pin(blocking(move || {
            let mut buf = AlignedBuf::zeroed(len);
            file.read_exact_at(buf.as_mut_slice(), offset)?;
            Ok(buf)
        }))
    }

    fn sync(&self, file: Arc<File>) -> DiskFuture<()> {
        Box::pin(blocking(move || file.sync_all()))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// The disk engine and file flags chosen at start-up.
#[derive(Clone)]
pub struct DiskChoice {
    pub disk: Arc<dyn ShardDisk>,
    pub direct: bool,
    /// "uring+direct", "posix", ... for logs and `stat`.
    pub describe: String,
}

impl std::fmt::Debug for DiskChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

/// Opens `path` for reading or writing shards, with O_DIRECT when `direct`.
pub fn open_shard_file(path: &Path, write: bool, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    if write {
        opts.write(true).create(true).truncate(true);
    } else {
        opts.read(true);
    }
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path)
}

/// Probes what `dir`'s file system and this kernel allow and picks the engine once.
/// `Auto` falls back, with a log line, from io_uring to positioned I/O and from
/// O_DIRECT to buffered I/O; `Uring` fails instead of falling back from io_uring.
pub async fn choose(dir: &Path, mode: IoMode, uring_entries: u32) -> io::Result<DiskChoice> {
    let probe = dir.join(".io-probe");
    let direct = match open_shard_file(&probe, true, true) {
        Ok(_) => true,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "O_DIRECT not permitted here; using buffered I/O");
            false
        }
    };
    let posix = || -> Arc<dyn ShardDisk> { Arc::new(PosixDisk) };
    let (disk, engine): (Arc<dyn ShardDisk>, &str) = match mode {
        IoMode::Posix => (posix(), "posix"),
        IoMode::Uring | IoMode::Auto => match probe_uring(&probe, direct, uring_entries).await {
            Ok(disk) => (disk, "uring"),
            Err(e) if mode == IoMode::Uring => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io = \"uring\" but io_uring failed: {e}"),
                ))
            }
            Err(e) => {
                warn!(error = %e, "io_uring not permitted here; using positioned I/O");
                (posix(), "posix")
            }
        },
    };
    // The probe file only matters during the probe.
    let _ = std::fs::remove_file(&probe);
    let describe = if direct {
        format!("{engine}+direct")
    } else {
        engine.to_owned()
    };
    info!(io = %describe, "disk I/O engine chosen");
    Ok(DiskChoice { disk, direct, describe })
}

/// Starts an io_uring engine and checks a write, fsync and read through it really work
/// (a seccomp filter can allow ring setup and still refuse the operations).
async fn probe_uring(probe: &Path, direct: bool, entries: u32) -> io::Result<Arc<dyn ShardDisk>> {
    let disk = UringDisk::start(entries)?;
    let file = Arc::new(open_shard_file(probe, true, direct)?);
    let buf = AlignedBytes::padded(bytes::Bytes::from_static(b"cairn io probe"));
    disk.write_durable(file, buf).await?;
    let file = Arc::new(open_shard_file(probe, false, direct)?);
    let back = disk.read_at(file, 0, 4096).await?;
    if &back.as_slice()[..14] != b"cairn io probe" {
        return Err(io::Error::other("io_uring probe read back different bytes"));
    }
    Ok(Arc::new(disk))
}
