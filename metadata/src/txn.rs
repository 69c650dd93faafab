//! The writes of one applied batch, gathered before they go to RocksDB in one atomic
//! `WriteBatch`. Later requests of a batch read what earlier ones wrote, and a request
//! that fails is rolled back alone, so a refused request changes nothing.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::{Bound, Range};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use crate::db::{Cf, Db};
use crate::records::Counters;

const COUNTERS: &[u8] = b"counters";

/// Ordered, so that a scan sees the batch's writes in key order beside the database's.
type Writes = BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>;

/// Records a scan found, in the order it found them.
pub type Scanned = Result<Vec<(Vec<u8>, Vec<u8>)>, rocksdb::Error>;

/// A record as a scan meets it in one layer (`None`: deleted in that layer).
type Layered = Result<(Vec<u8>, Option<Vec<u8>>), rocksdb::Error>;

/// Records a query reads, from the database or from a batch being applied.
pub trait Records {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>;

    /// Up to `limit` records of `cf` with keys in `keys`, in key order or, with `reverse`,
    /// from the last.
    fn scan(&self, cf: Cf, keys: Range<&[u8]>, reverse: bool, limit: usize) -> Scanned;
}

/// Read options bounding an iterator to `keys`.
pub fn bounded(keys: &Range<&[u8]>) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys.start.to_vec());
    opts.set_iterate_upper_bound(keys.end.to_vec());
    opts
}

pub fn direction(reverse: bool) -> IteratorMode<'static> {
    if reverse {
        IteratorMode::End
    } else {
        IteratorMode::Start
    }
}

/// What a scan reads of one layer of a batch's own writes.
fn written<'s>(
    writes: &'s Writes,
    cf: Cf,
    keys: &Range<&[u8]>,
    reverse: bool,
) -> Box<dyn Iterator<Item = Layered> + 's> {
    let bounds = (
        Bound::Included((cf, keys.start.to_vec())),
        Bound::Excluded((cf, keys.end.to_vec())),
    );
    let records = writes.range(bounds).map(|((_, k), v)| Ok((k.clone(), v.clone())));
    if reverse {
        Box::new(records.rev())
    } else {
        Box::new(records)
    }
}

/// Merges sorted layers, the first the newest: a key takes its value from the newest
/// layer holding it, and a deletion hides it. Stops after `limit` records.
fn merge_layers<I: Iterator<Item = Layered>>(mut layers: Vec<Peekable<I>>, reverse: bool, limit: usize) -> Scanned {
    let mut out = Vec::new();
    while out.len() < limit {
        let mut next: Option<Vec<u8>> = None;
        for layer in &mut layers {
            if let Some(Err(_)) = layer.peek() {
                if let Some(Err(e)) = layer.next() {
                    return Err(e);
                }
            }
            if let Some(Ok((key, _))) = layer.peek() {
                let first = next.as_ref().is_none_or(|n| if reverse { key > n } else { key < n });
                if first {
                    next = Some(key.clone());
                }
            }
        }
        let Some(key) = next else { break };
        let mut value = None;
        let mut found = false;
        for layer in &mut layers {
            if layer.peek().is_some_and(|r| r.as_ref().is_ok_and(|(k, _)| *k == key)) {
                if let Some(Ok((_, v))) = layer.next() {
                    if !found {
                        value = v;
                        found = true;
                    }
                }
            }
        }
        if let Some(v) = value {
            out.push((key, v));
        }
    }
    Ok(out)
}

#[derive(Debug)]
pub struct Txn<'a> {
    db: &'a Db,
    /// Writes of requests that succeeded.
    done: Writes,
    /// Writes of the request being applied.
    current: Writes,
    pub counters: Counters,
    counters_at_start: Counters,
}

pub fn load_counters(db: &Db) -> Result<Counters, rocksdb::Error> {
    Ok(db
        .get(Cf::SmMeta, COUNTERS)?
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or(Counters {
            // 1 is the root directory.
            next_inode: 2,
            next_session: 1,
            directories: 1,
            ..Counters::default()
        }))
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a Db) -> Result<Txn<'a>, rocksdb::Error> {
        let counters = load_counters(db)?;
        Ok(Txn {
            db,
            done: Writes::new(),
            current: Writes::new(),
            counters_at_start: counters.clone(),
            counters,
        })
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        let k = (cf, key.to_vec());
        if let Some(v) = self.current.get(&k).or_else(|| self.done.get(&k)) {
            return Ok(v.clone());
        }
        self.db.get(cf, key)
    }

    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.current.insert((cf, key.into()), Some(value.into()));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.current.insert((cf, key.into()), None);
    }

    pub fn scan(&self, cf: Cf, keys: Range<&[u8]>, reverse: bool, limit: usize) -> Scanned {
        if keys.start >= keys.end {
            return Ok(Vec::new());
        }
        let stored: Box<dyn Iterator<Item = Layered>> = Box::new(
            self.db
                .raw()
                .iterator_cf_opt(self.db.cf(cf), bounded(&keys), direction(reverse))
                .map(|r| r.map(|(k, v)| (k.into_vec(), Some(v.into_vec())))),
        );
        let layers = vec![
            written(&self.current, cf, &keys, reverse).peekable(),
            written(&self.done, cf, &keys, reverse).peekable(),
            stored.peekable(),
        ];
        merge_layers(layers, reverse, limit)
    }

    /// Keep the current request's writes.
    pub fn keep(&mut self) {
        self.done.append(&mut self.current);
        self.counters_at_start = self.counters.clone();
    }

    /// Drop the current request's writes.
    pub fn roll_back(&mut self) {
        self.current.clear();
        self.counters = self.counters_at_start.clone();
    }

    /// Everything kept, plus the counters, as one batch.
    pub fn into_batch(mut self) -> Result<WriteBatch, postcard::Error> {
        self.roll_back();
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in &self.done {
            let handle = self.db.cf(*cf);
            match value {
                Some(v) => batch.put_cf(handle, key, v),
                None => batch.delete_cf(handle, key),
            }
        }
        batch.put_cf(self.db.cf(Cf::SmMeta), COUNTERS, postcard::to_stdvec(&self.counters)?);
        Ok(batch)
    }
}

impl Records for Txn<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        Txn::get(self, cf, key)
    }

    fn scan(&self, cf: Cf, keys: Range<&[u8]>, reverse: bool, limit: usize) -> Scanned {
        Txn::scan(self, cf, keys, reverse, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan sees the database, then the kept writes, then the current request's, each
    /// over the one before; deletions hide keys; the limit and the direction hold.
    #[test]
    fn a_scan_sees_the_batch_over_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), 8 << 20).expect("db");
        let mut txn = Txn::new(&db).expect("txn");
        for k in [b"a1", b"a3", b"a5", b"a7"] {
            txn.put(Cf::Dentries, k.to_vec(), b"db".to_vec());
        }
        txn.keep();
        db.raw().write(txn.into_batch().expect("batch")).expect("write");
        let mut txn = Txn::new(&db).expect("txn");
        txn.put(Cf::Dentries, b"a2".to_vec(), b"kept".to_vec());
        txn.delete(Cf::Dentries, b"a3".to_vec());
        txn.put(Cf::Dentries, b"a5".to_vec(), b"kept".to_vec());
        txn.keep();
        txn.put(Cf::Dentries, b"a3".to_vec(), b"now".to_vec());
        txn.delete(Cf::Dentries, b"a5".to_vec());
        txn.delete(Cf::Dentries, b"a7".to_vec());
        // Another family and keys outside the range are never seen.
        txn.put(Cf::Inodes, b"a4".to_vec(), b"other".to_vec());
        txn.put(Cf::Dentries, b"b".to_vec(), b"out".to_vec());
        let all = |txn: &Txn<'_>, reverse, limit| {
            txn.scan(Cf::Dentries, b"a".as_slice()..b"a9".as_slice(), reverse, limit)
                .expect("scan")
                .into_iter()
                .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&txn, false, usize::MAX), ["a1=db", "a2=kept", "a3=now"]);
        assert_eq!(all(&txn, true, 2), ["a3=now", "a2=kept"]);
        assert_eq!(all(&txn, false, 1), ["a1=db"]);
        txn.roll_back();
        assert_eq!(all(&txn, false, usize::MAX), ["a1=db", "a2=kept", "a5=kept", "a7=db"]);
        assert!(txn
            .scan(Cf::Dentries, b"a5".as_slice()..b"a5".as_slice(), false, 9)
            .expect("scan")
            .is_empty());
    }
}
