//! The shard index in RocksDB: shard id → length, block size and block checksums.
//!
//! Column families:
//! - `shards`: one versioned `ShardRecord` per stored shard. A shard exists exactly when
//!   it has a record here (a file alone means nothing).
//! - `meta`: the on-disk format version, and the shard count and used bytes as counters
//!   updated by a merge operator in the same batches as the records, so start-up reads
//!   two keys instead of counting shards.
//!
//! The WAL is bounded (`max_total_wal_size`, small memtables): a column family written
//! rarely would otherwise keep old WAL files alive, and start-up replay would grow with
//! history instead of staying a small constant.

use std::path::Path;
use std::sync::Arc;

use cairn_common::config::{BLOCK_BYTES_MAX, IO_ALIGN_BYTES};
use cairn_common::ids::ShardId;
use prost::Message;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, MergeOperands, Options, WriteBatch, WriteOptions, DB,
};
use thiserror::Error;

const CF_SHARDS: &str = "shards";
const CF_META: &str = "meta";
const KEY_FORMAT: &[u8] = b"format_version";
const KEY_SHARD_COUNT: &[u8] = b"shard_count";
const KEY_USED_BYTES: &[u8] = b"used_bytes";
/// The most WAL a restart replays.
const WAL_BYTES_MAX: usize = 4 << 20;
/// Version of the records this build writes; it reads this one and older.
pub const FORMAT_VERSION: u32 = cairn_common::versions::SHARD_INDEX_FORMAT;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("shard index {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("shard index entry {key} is unreadable: {reason}")]
    BadEntry { key: String, reason: String },
    #[error("shard index was written by a newer Cairn (format {found}, this build reads up to {FORMAT_VERSION})")]
    TooNew { found: u64 },
}

type Result<T> = std::result::Result<T, IndexError>;

fn db_err(op: &'static str) -> impl FnOnce(rocksdb::Error) -> IndexError {
    move |source| IndexError::Db { op, source }
}

/// What the index knows about one shard.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct ShardRecord {
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    /// Bytes of shard data (the file is padded to the I/O alignment).
    #[prost(uint64, tag = "2")]
    pub len: u64,
    #[prost(uint32, tag = "3")]
    pub block_bytes: u32,
    #[prost(fixed32, repeated, tag = "4")]
    pub checksums: Vec<u32>,
    /// When the shard was stored, in Unix milliseconds (for the orphan collector's grace
    /// period). Added in a later build: records written before it read as 0, as old.
    #[prost(uint64, tag = "5")]
    pub created_ms: u64,
}

impl ShardRecord {
    /// The record's block size, once the record is one a put could have stored: a block
    /// size that is a multiple of `IO_ALIGN_BYTES` up to `BLOCK_BYTES_MAX` (never 0),
    /// and one checksum for each block of its length, every block with a 32-bit index.
    /// A record comes off the disk, so a reader checks it before its fields go into any
    /// arithmetic (invariant 7): a zero block size would divide by zero, and a length
    /// its checksums do not cover would size a read buffer. The reason names the field.
    pub fn checked_block_bytes(&self) -> std::result::Result<u64, String> {
        let bs = self.block_bytes;
        if bs == 0 {
            return Err("block_bytes is 0".into());
        }
        if !(IO_ALIGN_BYTES..=BLOCK_BYTES_MAX).contains(&bs) || !bs.is_multiple_of(IO_ALIGN_BYTES) {
            return Err(format!(
                "block_bytes {bs} is not a multiple of {IO_ALIGN_BYTES} up to {BLOCK_BYTES_MAX}"
            ));
        }
        let bs = u64::from(bs);
        let blocks = self.len.div_ceil(bs);
        if blocks > u64::from(u32::MAX) {
            return Err(format!(
                "len {} is {blocks} blocks of {bs} bytes, more than 32-bit block indices number",
                self.len
            ));
        }
        if u64::try_from(self.checksums.len()).ok() != Some(blocks) {
            return Err(format!(
                "{} checksums for len {} in blocks of {bs} bytes ({blocks} blocks)",
                self.checksums.len(),
                self.len
            ));
        }
        Ok(bs)
    }
}

#[derive(Clone, Debug)]
pub struct Index {
    db: Arc<DB>,
}

/// Adds i64 little-endian operands to the stored i64.
fn add_counter(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let read = |v: &[u8]| <[u8; 8]>::try_from(v).map(i64::from_le_bytes).unwrap_or(0);
    let mut total = existing.map_or(0, read);
    for op in operands {
        total = total.wrapping_add(read(op));
    }
    Some(total.to_le_bytes().to_vec())
}

fn sync_write() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl Index {
    fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
        let mut meta = Options::default();
        meta.set_merge_operator_associative("cairn_add_i64", add_counter);
        vec![
            ColumnFamilyDescriptor::new(CF_SHARDS, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, meta),
        ]
    }

    fn db_options() -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Start-up replays at most the WAL not yet flushed, so both are kept small: the
        // index is ~100 bytes a shard, and flushing a few MiB is cheap. This is what makes
        // start-up time independent of how many shards were ever written (invariant 2).
        opts.set_write_buffer_size(WAL_BYTES_MAX / 2);
        opts.set_max_write_buffer_number(2);
        opts.set_max_total_wal_size(WAL_BYTES_MAX as u64);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        opts
    }

    /// Opens (creating if needed) the index for a serving dataserver.
    pub fn open(path: &Path) -> Result<Index> {
        let db = DB::open_cf_descriptors(&Self::db_options(), path, Self::cf_descriptors()).map_err(db_err("open"))?;
        let index = Index { db: Arc::new(db) };
        match index.meta_u64(KEY_FORMAT)? {
            None => index
                .db
                .put_cf_opt(
                    index.cf(CF_META),
                    KEY_FORMAT,
                    u64::from(FORMAT_VERSION).to_le_bytes(),
                    &sync_write(),
                )
                .map_err(db_err("write format version"))?,
            Some(v) if v > u64::from(FORMAT_VERSION) => return Err(IndexError::TooNew { found: v }),
            Some(_) => {}
        }
        Ok(index)
    }

    /// Opens the index read-only, beside a running dataserver or without one (scrub
    /// from the command line). It sees the index as of the moment it was opened.
    pub fn open_read_only(path: &Path) -> Result<Index> {
        let db = DB::open_cf_descriptors_read_only(&Self::db_options(), path, Self::cf_descriptors(), false)
            .map_err(db_err("open read-only"))?;
        Ok(Index { db: Arc::new(db) })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // The three families are created on open; a missing one is a broken install.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| unreachable!("column family {name} is created on open"))
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        let v = self.db.get_cf(self.cf(CF_META), key).map_err(db_err("read meta"))?;
        v.map(|v| {
            <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| IndexError::BadEntry {
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason: format!("{} bytes, expected 8", v.len()),
                })
        })
        .transpose()
    }

    fn decode(id: ShardId, v: &[u8]) -> Result<ShardRecord> {
        let bad = |reason: String| IndexError::BadEntry {
            key: id.to_string(),
            reason,
        };
        let rec = ShardRecord::decode(v).map_err(|e| bad(e.to_string()))?;
        if rec.format_version > FORMAT_VERSION {
            return Err(IndexError::TooNew {
                found: u64::from(rec.format_version),
            });
        }
        Ok(rec)
    }

    pub fn get(&self, id: ShardId) -> Result<Option<ShardRecord>> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_SHARDS), id.to_bytes())
            .map_err(db_err("read shard"))?;
        v.map(|v| Self::decode(id, &v)).transpose()
    }

    /// Publishes a shard whose file is durable: one synced batch adds the record and
    /// updates the counters.
    pub fn commit_put(&self, id: ShardId, record: &ShardRecord, disk_bytes: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SHARDS), id.to_bytes(), record.encode_to_vec());
        batch.merge_cf(self.cf(CF_META), KEY_SHARD_COUNT, 1i64.to_le_bytes());
        let added = i64::try_from(disk_bytes).unwrap_or(i64::MAX);
        batch.merge_cf(self.cf(CF_META), KEY_USED_BYTES, added.to_le_bytes());
        self.db.write_opt(batch, &sync_write()).map_err(db_err("commit put"))
    }

    /// Unpublishes a shard: one synced batch removes the record and updates the counters.
    pub fn commit_delete(&self, id: ShardId, disk_bytes: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_SHARDS), id.to_bytes());
        batch.merge_cf(self.cf(CF_META), KEY_SHARD_COUNT, (-1i64).to_le_bytes());
        // Saturating: a damaged record's length must not overflow the negation.
        let removed = 0i64.saturating_sub_unsigned(disk_bytes);
        batch.merge_cf(self.cf(CF_META), KEY_USED_BYTES, removed.to_le_bytes());
        self.db.write_opt(batch, &sync_write()).map_err(db_err("commit delete"))
    }

    /// Up to `limit` shards after `after` in id order, and whether more follow.
    pub fn list(&self, after: Option<ShardId>, limit: usize) -> Result<(Vec<(ShardId, ShardRecord)>, bool)> {
        let start = after.map(|a| a.to_bytes());
        let mode = match &start {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_SHARDS), mode) {
            let (k, v) = item.map_err(db_err("list shards"))?;
            if start.as_ref().is_some_and(|s| s[..] == k[..]) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let id = ShardId::from_bytes(&k).ok_or_else(|| IndexError::BadEntry {
                key: format!("shards/{k:02x?}"),
                reason: "not a shard id".into(),
            })?;
            out.push((id, Self::decode(id, &v)?));
        }
        Ok((out, false))
    }

    /// (shard count, bytes used on disk), as of the last committed batch. Read at
    /// start-up; the store keeps them in memory after that.
    pub fn counters(&self) -> Result<(u64, u64)> {
        Ok((
            self.meta_u64(KEY_SHARD_COUNT)?.unwrap_or(0),
            self.meta_u64(KEY_USED_BYTES)?.unwrap_or(0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::ids::StripeId;

    fn rec(len: u64) -> ShardRecord {
        ShardRecord {
            format_version: FORMAT_VERSION,
            len,
            block_bytes: 4096,
            checksums: vec![7; len.div_ceil(4096) as usize],
            created_ms: 1,
        }
    }

    #[test]
    fn put_delete_and_counters_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<ShardId> = (0..5u8).map(|i| ShardId::new(StripeId(9), i)).collect();
        {
            let idx = Index::open(dir.path()).unwrap();
            for (i, &id) in ids.iter().enumerate() {
                idx.commit_put(id, &rec(i as u64 * 5000), 4096).unwrap();
            }
            idx.commit_delete(ids[1], 4096).unwrap();
        }
        let idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.counters().unwrap(), (4, 4 * 4096));
        assert_eq!(idx.get(ids[2]).unwrap(), Some(rec(10_000)));
        assert_eq!(idx.get(ids[1]).unwrap(), None);
        let (page, more) = idx.list(Some(ids[0]), 2).unwrap();
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), vec![ids[2], ids[3]]);
        assert!(more);
        let (page, more) = idx.list(Some(ids[3]), 2).unwrap();
        assert_eq!(page.len(), 1);
        assert!(!more);
        assert!(
            Index::open_read_only(dir.path()).is_ok(),
            "read-only open beside a writer"
        );
    }

    /// A record with a zero block size, or one whose length its checksums do not cover,
    /// is refused by its check with the field named, before any arithmetic uses it.
    #[test]
    fn a_record_with_a_zero_block_size_fails_its_check() {
        assert_eq!(rec(10_000).checked_block_bytes(), Ok(4096));
        assert_eq!(rec(0).checked_block_bytes(), Ok(4096));
        let zero = ShardRecord {
            block_bytes: 0,
            ..rec(10_000)
        };
        assert_eq!(zero.checked_block_bytes(), Err("block_bytes is 0".to_owned()));
        let empty_zero = ShardRecord {
            block_bytes: 0,
            ..rec(0)
        };
        assert!(empty_zero.checked_block_bytes().is_err());
        for bad in [
            ShardRecord {
                block_bytes: 1000,
                ..rec(10_000)
            },
            ShardRecord {
                block_bytes: u32::MAX,
                ..rec(10_000)
            },
            ShardRecord {
                len: u64::MAX,
                ..rec(10_000)
            },
            ShardRecord {
                checksums: vec![7; 2],
                ..rec(10_000)
            },
            ShardRecord {
                checksums: vec![7; 4],
                ..rec(10_000)
            },
        ] {
            let reason = bad.checked_block_bytes().unwrap_err();
            assert!(
                ["block_bytes", "checksums for len", "block indices"]
                    .iter()
                    .any(|field| reason.contains(field)),
                "{reason}"
            );
        }
        // A length of more blocks than 32-bit indices number.
        let huge = ShardRecord {
            len: (u64::from(u32::MAX) + 1) * 4096,
            ..rec(0)
        };
        assert!(huge.checked_block_bytes().unwrap_err().contains("block indices"));
    }
}
