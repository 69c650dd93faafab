//! The writes of one applied batch, gathered before they go to RocksDB in one atomic
//! `WriteBatch`. Later requests of a batch read what earlier ones wrote, and a request
//! that fails is rolled back alone, so a refused request changes nothing.

use std::collections::HashMap;

use rocksdb::WriteBatch;

use crate::db::{Cf, Db};
use crate::records::Counters;

const COUNTERS: &[u8] = b"counters";

type Writes = HashMap<(Cf, Vec<u8>), Option<Vec<u8>>>;

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

    /// Keep the current request's writes.
    pub fn keep(&mut self) {
        self.done.extend(self.current.drain());
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
