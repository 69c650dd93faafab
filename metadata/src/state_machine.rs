//! openraft's state machine over the namespace column families. Every applied batch
//! writes its effects, `last_applied` and the membership in one atomic `WriteBatch`, so a
//! restarted node resumes from exactly where its database says, with nothing to replay
//! but the committed entries it had not applied yet.

use std::path::PathBuf;

use cairn_common::versions::{ENTRY_FORMAT_MAX, ENTRY_FORMAT_MIN};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StoredMembership,
};
use rocksdb::WriteBatch;

use crate::apply::apply_proposal;
use crate::db::{sm_read_error, sm_write_error, storage_error, Cf, Db};
use crate::snapshot::{Meta, Snapshots};
use crate::txn::Txn;
use crate::types::{Applied, NodeInfo, TypeConfig};

const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";

type Result<T> = std::result::Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, NodeInfo>;

#[derive(Debug)]
pub struct StateMachine {
    db: Db,
    snapshots: Snapshots,
    dedupe_max: u64,
    /// Where the snapshot being received is written.
    receiving: Option<PathBuf>,
}

fn msg_error(verb: ErrorVerb, msg: String) -> StorageError<u64> {
    storage_error(ErrorSubject::StateMachine, verb, &std::io::Error::other(msg))
}

impl StateMachine {
    pub fn open(db: Db, snapshot_dir: PathBuf, dedupe_max: u64) -> Result<StateMachine> {
        let snapshots = Snapshots::open(snapshot_dir).map_err(|e| sm_write_error(&e))?;
        Ok(StateMachine {
            db,
            snapshots,
            dedupe_max,
            receiving: None,
        })
    }

    fn read_applied(&self) -> Result<(Option<LogId<u64>>, Membership)> {
        let get = |key| self.db.get(Cf::SmMeta, key).map_err(|e| sm_read_error(&e));
        let applied = match get(LAST_APPLIED)? {
            Some(b) => Some(postcard::from_bytes(&b).map_err(|e| sm_read_error(&e))?),
            None => None,
        };
        let membership = match get(MEMBERSHIP)? {
            Some(b) => postcard::from_bytes(&b).map_err(|e| sm_read_error(&e))?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    fn put_applied(
        &self,
        batch: &mut WriteBatch,
        applied: Option<&LogId<u64>>,
        membership: Option<&Membership>,
    ) -> Result<()> {
        let cf = self.db.cf(Cf::SmMeta);
        match applied {
            Some(a) => batch.put_cf(
                cf,
                LAST_APPLIED,
                postcard::to_stdvec(a).map_err(|e| sm_write_error(&e))?,
            ),
            None => batch.delete_cf(cf, LAST_APPLIED),
        }
        if let Some(m) = membership {
            batch.put_cf(cf, MEMBERSHIP, postcard::to_stdvec(m).map_err(|e| sm_write_error(&e))?);
        }
        Ok(())
    }
}

/// Builds a snapshot from a checkpoint taken when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    snapshots: Snapshots,
    checkpoint: std::result::Result<(PathBuf, Meta), String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (dir, meta) = self.checkpoint.clone().map_err(|e| msg_error(ErrorVerb::Read, e))?;
        let snapshots = self.snapshots.clone();
        let published = meta.clone();
        let file = tokio::task::spawn_blocking(move || snapshots.publish_packed(&dir, &published))
            .await
            .map_err(|e| msg_error(ErrorVerb::Write, e.to_string()))??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership)> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut txn = Txn::new(&self.db).map_err(|e| sm_read_error(&e))?;
        let mut out = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            let applied = match &entry.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(p) => {
                    if !(ENTRY_FORMAT_MIN..=ENTRY_FORMAT_MAX).contains(&p.format) {
                        return Err(msg_error(
                            ErrorVerb::Read,
                            format!(
                                "entry {} has format {}; this build applies {ENTRY_FORMAT_MIN}..={ENTRY_FORMAT_MAX}: \
                                 run a build that reads it",
                                entry.log_id, p.format
                            ),
                        ));
                    }
                    let replies = apply_proposal(&self.db, &mut txn, p, self.dedupe_max)
                        .map_err(|e| msg_error(ErrorVerb::Write, e))?;
                    Applied { replies }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(entry.log_id), m.clone()));
                    Applied::default()
                }
            };
            last = Some(entry.log_id);
            out.push(applied);
        }
        let Some(last) = last else {
            return Ok(out);
        };
        let mut batch = txn.into_batch().map_err(|e| sm_write_error(&e))?;
        self.put_applied(&mut batch, Some(&last), membership.as_ref())?;
        // Not synced: the entries are durable in the log, and this write reaches disk with
        // the next synced log append (one WAL). A crash before that re-applies them.
        self.db.raw().write(batch).map_err(|e| sm_write_error(&e))?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Taken here, in the state machine's task, so no entry is applied half-way through.
        let checkpoint = (|| {
            let (applied, membership) = self.read_applied().map_err(|e| e.to_string())?;
            let id = match &applied {
                Some(a) => format!("t{}-n{}-i{}", a.leader_id.term, a.leader_id.node_id, a.index),
                None => "empty".to_owned(),
            };
            let id = format!("{id}-{:08x}", rand::random::<u32>());
            let staging = self.snapshots.staging_dir(&id);
            std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
            self.db.checkpoint(&staging.join("db")).map_err(|e| e.to_string())?;
            Ok((
                staging,
                Meta {
                    last_log_id: applied,
                    last_membership: membership,
                    snapshot_id: id,
                },
            ))
        })();
        SnapshotBuilder {
            snapshots: self.snapshots.clone(),
            checkpoint,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>> {
        let (file, path) = self.snapshots.incoming_file()?;
        self.receiving = Some(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<tokio::fs::File>) -> Result<()> {
        let file = snapshot.into_std().await;
        let last = meta.last_log_id;
        let path = self.receiving.take();
        let records = |batch: &mut WriteBatch| self.put_applied(batch, last.as_ref(), Some(&meta.last_membership));
        self.snapshots.install(&self.db, meta, (file, path), records)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        // Packing reads the whole checkpoint: off the state machine's task.
        let snapshots = self.snapshots.clone();
        let current = tokio::task::spawn_blocking(move || snapshots.current_packed())
            .await
            .map_err(|e| msg_error(ErrorVerb::Read, e.to_string()))??;
        let Some((meta, file)) = current else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
