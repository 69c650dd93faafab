//! The one RocksDB holding a metadata node's Raft log and its state machine, one column
//! family per kind of record. Memory is bounded by the configured block cache and the
//! memtable budget, not by the namespace; the WAL is capped so opening it is fast.

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};

/// Column families. `Log` and `Raft` belong to the log store; the rest are the state
/// machine, copied whole by snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// log index (u64 BE) → entry
    Log,
    /// vote, committed, last purged
    Raft,
    /// last applied, membership, counters, clock
    SmMeta,
    /// inode (u64 BE) → InodeRecord
    Inodes,
    /// parent (u64 BE) ++ name → DentryValue
    Dentries,
    /// inode (u64 BE) ++ b'h' → Layout without stripes (code, version, inline bytes);
    /// inode ++ b's' ++ offset (u64 BE) → Stripe; or, as entries before
    /// `STRIPE_KEYS_FORMAT` store it, inode → the whole Layout (see `layout_store`)
    Layouts,
    /// session (u64 BE) → SessionRecord
    Sessions,
    /// expiry ns (i64 BE, offset) ++ session (u64 BE) → ()
    SessionExpiry,
    /// client id (16) ++ request id (u64 BE) → DedupeRecord
    Dedupe,
    /// sequence (u64 BE) → dedupe key
    DedupeAge,
    /// dataserver (u32 BE) ++ stripe id (16) ++ shard index (u8) ++ inode (u64 BE) → ()
    ShardRefs,
    /// inode (u64 BE) → LockTable (the byte-range locks held on it)
    Locks,
}

impl Cf {
    /// What a snapshot carries.
    pub const STATE_MACHINE: [Cf; 10] = [
        Cf::SmMeta,
        Cf::Inodes,
        Cf::Dentries,
        Cf::Layouts,
        Cf::Sessions,
        Cf::SessionExpiry,
        Cf::Dedupe,
        Cf::DedupeAge,
        Cf::ShardRefs,
        Cf::Locks,
    ];

    /// Every column family: the log store's and the state machine's.
    pub fn all() -> impl Iterator<Item = Cf> {
        [Cf::Log, Cf::Raft].into_iter().chain(Cf::STATE_MACHINE)
    }

    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::Raft => "raft",
            Cf::SmMeta => "sm_meta",
            Cf::Inodes => "inodes",
            Cf::Dentries => "dentries",
            Cf::Layouts => "layouts",
            Cf::Sessions => "sessions",
            Cf::SessionExpiry => "session_expiry",
            Cf::Dedupe => "dedupe",
            Cf::DedupeAge => "dedupe_age",
            Cf::ShardRefs => "shard_refs",
            Cf::Locks => "locks",
        }
    }
}

/// A key greater than every key any column family holds (the longest is a dentry:
/// 8 + 255 bytes), used as the end of a whole-family range delete.
pub const KEY_END: [u8; 300] = [0xff; 300];

/// Handle on the open database.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<DB>,
}

/// WAL kept before RocksDB flushes memtables: bounds what opening the database replays.
const WAL_BYTES_MAX: u64 = 16 << 20;
/// Memtables across all column families.
const MEMTABLE_BYTES_MAX: usize = 64 << 20;

pub fn options(cache_bytes: u64) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_total_wal_size(WAL_BYTES_MAX);
    opts.set_db_write_buffer_size(MEMTABLE_BYTES_MAX);
    opts.set_write_buffer_size(MEMTABLE_BYTES_MAX / 4);
    opts.set_skip_stats_update_on_db_open(true);
    opts.set_max_open_files(512);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cache = Cache::new_lru_cache(usize::try_from(cache_bytes).unwrap_or(usize::MAX));
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts
}

impl Db {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Db, rocksdb::Error> {
        let opts = options(cache_bytes);
        let cfs = Cf::all().map(|cf| ColumnFamilyDescriptor::new(cf.name(), opts.clone()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Db { inner: Arc::new(db) })
    }

    /// A database opened read-only: a checkpoint to copy from, or a stopped node's data
    /// for inspection.
    pub fn open_read_only(path: &Path) -> Result<Db, rocksdb::Error> {
        let opts = options(8 << 20);
        let db = DB::open_cf_for_read_only(&opts, path, Cf::all().map(Cf::name), false)?;
        Ok(Db { inner: Arc::new(db) })
    }

    pub fn raw(&self) -> &DB {
        &self.inner
    }

    pub fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        handle(&self.inner, cf)
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.inner.get_cf(self.cf(cf), key)
    }

    /// A consistent point-in-time copy made of hard links.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), rocksdb::Error> {
        rocksdb::checkpoint::Checkpoint::new(&self.inner)?.create_checkpoint(dir)
    }
}

/// Column family handles exist for every `Cf`: the database is always opened with all.
pub fn handle(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    db.cf_handle(cf.name())
        .unwrap_or_else(|| unreachable!("column family {} is created on open", cf.name()))
}

pub fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

pub fn sm_read_error(e: &(impl std::error::Error + 'static)) -> StorageError<u64> {
    storage_error(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

pub fn sm_write_error(e: &(impl std::error::Error + 'static)) -> StorageError<u64> {
    storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}
