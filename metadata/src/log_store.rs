//! openraft's log store on the `log` and `raft` column families. An entry is on disk
//! before openraft counts it towards a quorum, and votes are synced writes.
//!
//! An append writes its entries (readable at once) and hands the sync of the write-ahead
//! log to a thread of its own, which tells openraft when they are durable. So the Raft
//! core sends the entries to the followers while the leader's own fsync runs, instead of
//! after it, and appends that arrive during one sync share the next.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{storage_error, u64_key, Cf, Db};
use crate::types::TypeConfig;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone, Debug)]
pub struct LogStore {
    db: Db,
    /// Appends waiting for the write-ahead log's sync (see the module's comment).
    syncs: mpsc::Sender<LogFlushed<TypeConfig>>,
}

type Result<T> = std::result::Result<T, StorageError<u64>>;

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn logs_error(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError<u64> {
    storage_error(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    pub fn new(db: Db) -> std::io::Result<LogStore> {
        let (syncs, waiting) = mpsc::channel();
        let wal = db.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_loop(&wal, &waiting))?;
        Ok(LogStore { db, syncs })
    }

    fn get_value<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        let Some(bytes) = self
            .db
            .get(Cf::Raft, key)
            .map_err(|e| logs_error(ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| logs_error(ErrorVerb::Read, &e))
    }

    fn put_value<T: Serialize>(&self, subject: ErrorSubject<u64>, key: &[u8], value: &T, sync: bool) -> Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?;
        let opts = if sync { synced() } else { WriteOptions::default() };
        self.db
            .raw()
            .put_cf_opt(self.db.cf(Cf::Raft), key, bytes, &opts)
            .map_err(|e| storage_error(subject, ErrorVerb::Write, &e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let from = u64_key(start);
        let mut out = Vec::new();
        for item in self
            .db
            .raw()
            .iterator_cf(self.db.cf(Cf::Log), IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| logs_error(ErrorVerb::Read, &e))?;
            let index = crate::db::read_u64(&key).unwrap_or(u64::MAX);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = postcard::from_bytes(&value).map_err(|e| logs_error(ErrorVerb::Read, &e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.get_value(LAST_PURGED)?;
        let last = self
            .db
            .raw()
            .iterator_cf(self.db.cf(Cf::Log), IteratorMode::End)
            .next()
            .transpose()
            .map_err(|e| logs_error(ErrorVerb::Read, &e))?;
        let last_log_id = match last {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    postcard::from_bytes(&value).map_err(|e| logs_error(ErrorVerb::Read, &e))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        self.put_value(ErrorSubject::Vote, VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        self.get_value(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        // Not synced: after a crash a smaller committed index only means fewer entries are
        // re-applied at start-up; the quorum's logs still hold them.
        self.put_value(ErrorSubject::Store, COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        Ok(self.get_value::<Option<LogId<u64>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(Cf::Log);
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry).map_err(|e| logs_error(ErrorVerb::Write, &e))?;
            batch.put_cf(cf, u64_key(entry.log_id.index), bytes);
        }
        self.db
            .raw()
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| logs_error(ErrorVerb::Write, &e))?;
        self.syncs.send(callback).map_err(|_| {
            logs_error(
                ErrorVerb::Write,
                &std::io::Error::other("the log's sync thread has stopped"),
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        self.db
            .raw()
            .delete_range_cf_opt(self.db.cf(Cf::Log), u64_key(log_id.index), u64_key(u64::MAX), &synced())
            .map_err(|e| logs_error(ErrorVerb::Delete, &e))?;
        // delete_range's end is exclusive.
        self.db
            .raw()
            .delete_cf_opt(self.db.cf(Cf::Log), u64_key(u64::MAX), &synced())
            .map_err(|e| logs_error(ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        // Record the purge point first: a crash between the two leaves entries that are
        // simply purged again, never a gap the log state does not know about.
        self.put_value(ErrorSubject::Logs, LAST_PURGED, &log_id, true)?;
        self.db
            .raw()
            .delete_range_cf(self.db.cf(Cf::Log), u64_key(0), u64_key(log_id.index.saturating_add(1)))
            .map_err(|e| logs_error(ErrorVerb::Delete, &e))
    }
}

/// Syncs the write-ahead log for every append handed over, in order: one fsync covers every
/// append written before it started. Ends when the last `LogStore` is dropped.
fn sync_loop(db: &Db, waiting: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = waiting.recv() {
        let mut done = vec![first];
        done.extend(waiting.try_iter());
        let synced = db.raw().flush_wal(true);
        for callback in done {
            let result = synced
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(result);
        }
    }
}
