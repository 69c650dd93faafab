//! Snapshots are RocksDB checkpoints (hard links, taken in the state machine's task so they
//! hold exactly the applied state). One is kept, under `snapshots/<id>/` with its
//! metadata; `snapshots/CURRENT` names it. To send one to a lagging follower the
//! checkpoint is packed into a tar file (built once per snapshot); the follower unpacks it
//! and copies the state machine's column families into its own database in one batch.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{ErrorSubject, ErrorVerb, SnapshotMeta, StorageError};
use rocksdb::WriteBatch;

use crate::db::{storage_error, Cf, Db, KEY_END};
use crate::types::NodeInfo;

pub type Meta = SnapshotMeta<u64, NodeInfo>;
type Result<T> = std::result::Result<T, StorageError<u64>>;

const CURRENT: &str = "CURRENT";
const META: &str = "meta";
const CHECKPOINT: &str = "db";
const INCOMING: &str = "incoming-";

fn snap_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError<u64> {
    storage_error(ErrorSubject::Snapshot(None), verb, e)
}

fn io_err(verb: ErrorVerb, what: &str, e: std::io::Error) -> StorageError<u64> {
    snap_err(verb, &std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

#[derive(Clone, Debug)]
pub struct Snapshots {
    root: PathBuf,
    /// Serializes changes to the directory (building runs beside the state machine task).
    lock: Arc<Mutex<()>>,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Snapshots {
    pub fn open(root: PathBuf) -> std::io::Result<Snapshots> {
        fs::create_dir_all(&root)?;
        let s = Snapshots {
            root,
            lock: Arc::new(Mutex::new(())),
        };
        s.remove_stale(true)?;
        Ok(s)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove unfinished builds and snapshots other than the current one; with `transfers`
    /// also partly received snapshots (only at start-up, when none can be under way).
    fn remove_stale(&self, transfers: bool) -> std::io::Result<()> {
        let current = self.current_id();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == CURRENT || (!transfers && name.starts_with(INCOMING)) {
                continue;
            }
            let keep = current
                .as_deref()
                .is_some_and(|id| name == id || name == format!("{id}.tar"));
            if !keep {
                let p = entry.path();
                if p.is_dir() {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
        }
        Ok(())
    }

    fn current_id(&self) -> Option<String> {
        fs::read_to_string(self.root.join(CURRENT))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// A fresh directory for a checkpoint being built.
    pub fn staging_dir(&self, tag: &str) -> PathBuf {
        self.root.join(format!("{tag}.tmp"))
    }

    /// Turn a finished checkpoint in `staging` into the current snapshot.
    pub fn publish(&self, staging: &Path, meta: &Meta) -> Result<()> {
        let _g = self.guard();
        self.publish_locked(staging, meta)
    }

    /// [`Snapshots::publish`], then the snapshot packed for sending, opened at its start.
    /// Both under one hold of the lock: a snapshot published in between would remove
    /// this one's directory before it is packed.
    pub fn publish_packed(&self, staging: &Path, meta: &Meta) -> Result<fs::File> {
        let _g = self.guard();
        self.publish_locked(staging, meta)?;
        self.packed_locked(&meta.snapshot_id)
    }

    fn publish_locked(&self, staging: &Path, meta: &Meta) -> Result<()> {
        let bytes = postcard::to_stdvec(meta).map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        let meta_path = staging.join(META);
        fs::write(&meta_path, bytes).map_err(|e| io_err(ErrorVerb::Write, "snapshot meta", e))?;
        fs::File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(ErrorVerb::Write, "snapshot meta", e))?;
        let dir = self.root.join(&meta.snapshot_id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| io_err(ErrorVerb::Write, "old snapshot", e))?;
        }
        fs::rename(staging, &dir).map_err(|e| io_err(ErrorVerb::Write, "snapshot rename", e))?;
        let tmp = self.root.join("CURRENT.tmp");
        let mut f = fs::File::create(&tmp).map_err(|e| io_err(ErrorVerb::Write, "CURRENT", e))?;
        f.write_all(meta.snapshot_id.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err(ErrorVerb::Write, "CURRENT", e))?;
        fs::rename(&tmp, self.root.join(CURRENT)).map_err(|e| io_err(ErrorVerb::Write, "CURRENT", e))?;
        fsync_dir(&self.root).map_err(|e| io_err(ErrorVerb::Write, "snapshot dir", e))?;
        self.remove_stale(false)
            .map_err(|e| io_err(ErrorVerb::Delete, "old snapshots", e))
    }

    /// The current snapshot, if any, with its packed form opened at its start. Read and
    /// packed under the lock, so a newer snapshot cannot remove it in between; once
    /// opened, the packed file stays readable even after a newer one replaces it.
    pub fn current_packed(&self) -> Result<Option<(Meta, fs::File)>> {
        let _g = self.guard();
        let Some(id) = self.current_id() else {
            return Ok(None);
        };
        let bytes =
            fs::read(self.root.join(&id).join(META)).map_err(|e| io_err(ErrorVerb::Read, "snapshot meta", e))?;
        let meta: Meta = postcard::from_bytes(&bytes).map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        let file = self.packed_locked(&id)?;
        Ok(Some((meta, file)))
    }

    /// Snapshot `id` packed for sending (packed now unless it was received packed or
    /// already sent), opened at its start. The caller holds the lock.
    fn packed_locked(&self, id: &str) -> Result<fs::File> {
        let tar_path = self.root.join(format!("{id}.tar"));
        if !tar_path.exists() {
            let tmp = self.root.join(format!("{id}.tar.tmp"));
            let pack = || -> std::io::Result<()> {
                let mut builder = tar::Builder::new(fs::File::create(&tmp)?);
                builder.append_dir_all(CHECKPOINT, self.root.join(id).join(CHECKPOINT))?;
                builder.into_inner()?.sync_all()?;
                fs::rename(&tmp, &tar_path)
            };
            pack().map_err(|e| io_err(ErrorVerb::Read, "packing snapshot", e))?;
        }
        fs::File::open(&tar_path).map_err(|e| io_err(ErrorVerb::Read, "packed snapshot", e))
    }

    /// A new file to receive a snapshot into, and its path. openraft receives one snapshot
    /// at a time, so earlier transfers (installed or abandoned) are removed first.
    pub fn incoming_file(&self) -> Result<(fs::File, PathBuf)> {
        let _g = self.guard();
        self.remove_stale(true)
            .map_err(|e| io_err(ErrorVerb::Delete, "old transfers", e))?;
        let path = self.root.join(format!("{INCOMING}{}.tar", rand::random::<u64>()));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(ErrorVerb::Write, "incoming snapshot", e))?;
        Ok((file, path))
    }

    /// Unpack a received snapshot and replace the state machine in `db` with it, atomically.
    /// `records` adds the state machine's own records (last applied, membership) last.
    /// The received file, when its path is known, is kept as the packed form of the new
    /// current snapshot (so it need not be packed again to serve another follower).
    pub fn install(
        &self,
        db: &Db,
        meta: &Meta,
        (mut packed, packed_path): (fs::File, Option<PathBuf>),
        records: impl FnOnce(&mut WriteBatch) -> Result<()>,
    ) -> Result<()> {
        let staging = self.staging_dir(&format!("install-{}", rand::random::<u64>()));
        fs::create_dir_all(&staging).map_err(|e| io_err(ErrorVerb::Write, "snapshot staging", e))?;
        packed
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_err(ErrorVerb::Read, "received snapshot", e))?;
        tar::Archive::new(&mut packed)
            .unpack(&staging)
            .map_err(|e| io_err(ErrorVerb::Read, "unpacking snapshot", e))?;
        {
            let src = Db::open_read_only(&staging.join(CHECKPOINT)).map_err(|e| snap_err(ErrorVerb::Read, &e))?;
            let mut batch = WriteBatch::default();
            for cf in Cf::STATE_MACHINE {
                let dst = db.cf(cf);
                batch.delete_range_cf(dst, &[][..], &KEY_END[..]);
                for item in src.raw().iterator_cf(src.cf(cf), rocksdb::IteratorMode::Start) {
                    let (k, v) = item.map_err(|e| snap_err(ErrorVerb::Read, &e))?;
                    batch.put_cf(dst, k, v);
                }
            }
            records(&mut batch)?;
            let mut opts = rocksdb::WriteOptions::default();
            opts.set_sync(true);
            db.raw()
                .write_opt(batch, &opts)
                .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        }
        // Only if the file handed back is still the one received into that path.
        let same_file = |p: &Path| -> std::io::Result<bool> {
            use std::os::unix::fs::MetadataExt;
            let (a, b) = (packed.metadata()?, fs::metadata(p)?);
            Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
        };
        if let Some(p) = packed_path.filter(|p| same_file(p).unwrap_or(false)) {
            fs::rename(&p, self.root.join(format!("{}.tar", meta.snapshot_id)))
                .map_err(|e| io_err(ErrorVerb::Write, "keeping the received snapshot", e))?;
        }
        self.publish(&staging, meta)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A finished checkpoint for snapshot `id`: a `db/` directory holding one file that
    /// names the snapshot, standing in for RocksDB's files.
    fn checkpoint(snapshots: &Snapshots, id: &str) -> (PathBuf, Meta) {
        let staging = snapshots.staging_dir(id);
        fs::create_dir_all(staging.join(CHECKPOINT)).unwrap();
        fs::write(staging.join(CHECKPOINT).join("state"), id).unwrap();
        let meta = Meta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: id.to_owned(),
        };
        (staging, meta)
    }

    /// The id a packed snapshot holds, read back from its tar.
    fn packed_id(file: fs::File) -> String {
        let mut archive = tar::Archive::new(file);
        let mut entry = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("state"))
            .expect("the packed snapshot holds the checkpoint");
        let mut id = String::new();
        entry.read_to_string(&mut id).unwrap();
        id
    }

    #[test]
    fn the_current_snapshot_is_served_whole_while_newer_ones_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Snapshots::open(dir.path().join("snapshots")).unwrap();
        assert!(snapshots.current_packed().unwrap().is_none());
        let (staging, meta) = checkpoint(&snapshots, "s0");
        assert_eq!(packed_id(snapshots.publish_packed(&staging, &meta).unwrap()), "s0");

        // A sender of the current snapshot (a leader feeding a lagging follower) beside a
        // builder publishing newer ones: every send is a whole snapshot, packed as named.
        let builder = {
            let snapshots = snapshots.clone();
            std::thread::spawn(move || {
                for i in 1..200 {
                    let (staging, meta) = checkpoint(&snapshots, &format!("s{i}"));
                    snapshots.publish(&staging, &meta).unwrap();
                }
            })
        };
        let mut sent = 0;
        while !builder.is_finished() {
            let (meta, file) = snapshots.current_packed().unwrap().expect("a current snapshot");
            assert_eq!(packed_id(file), meta.snapshot_id);
            sent += 1;
        }
        builder.join().unwrap();
        assert!(sent > 0);

        // A snapshot opened before a newer one is published stays readable after.
        let (old_meta, old_file) = snapshots.current_packed().unwrap().unwrap();
        let (staging, meta) = checkpoint(&snapshots, "newest");
        snapshots.publish(&staging, &meta).unwrap();
        assert!(!dir.path().join("snapshots").join(&old_meta.snapshot_id).exists());
        assert_eq!(packed_id(old_file), old_meta.snapshot_id);
        assert_eq!(snapshots.current_packed().unwrap().unwrap().0.snapshot_id, "newest");
    }
}
