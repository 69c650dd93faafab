//! openraft's own storage conformance suite, run against Cairn's RocksDB log store and
//! state machine (the same `Suite` openraft's RocksDB example runs).

use cairn_metadata::db::Db;
use cairn_metadata::log_store::LogStore;
use cairn_metadata::state_machine::StateMachine;
use cairn_metadata::types::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(&dir.path().join("db"), 8 << 20).expect("open rocksdb");
        let sm = StateMachine::open(db.clone(), dir.path().join("snapshots"), 10_000)?;
        Ok((dir, LogStore::new(db).expect("log sync thread"), sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("storage suite: {e}");
    }
}
