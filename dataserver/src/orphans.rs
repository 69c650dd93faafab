//! The orphan collector: deletes this dataserver's shards that no committed layout
//! references, once they are older than a grace period (DESIGN.md invariant 1). A writer
//! that dies before its commit, an overwrite or truncate that replaced stripes, a shard
//! re-placed after a timeout whose first put landed after all, a hall that was dark while
//! its files were rewritten: each leaves such shards, and this is what reconciles a
//! returning dataserver with the committed layouts, in the background, without blocking
//! service.
//!
//! Each pass lists the shards stored more than the grace period ago *first*, then asks
//! the metadata group's leader for every shard of this node a committed layout references
//! (`ShardRefs`, answered after a linearizable barrier), and deletes the listed shards
//! that are not among them. Listing first is what makes it safe: a layout committed after
//! the answer can only name a listed shard if its writer kept it uncommitted for longer
//! than the grace period, so the grace period must outlast the longest a writer goes
//! between storing a stripe and committing it (`fsync`, `close`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_common::ids::ShardId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{now_ms, ShardStore, StoreError};

/// Shards fetched from the index per step of a pass.
const PAGE_SHARDS: usize = 1024;

#[derive(Clone, Debug)]
pub struct OrphanConfig {
    pub node: u32,
    pub metadata: Vec<SocketAddr>,
    pub grace: Duration,
    pub every: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Shards past the grace period, and those of them deleted as unreferenced.
    pub old_enough: u64,
    pub deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    #[error("shard store: {0}")]
    Store(#[from] StoreError),
    #[error("no metadata leader answered for the shard references: {0}")]
    Metadata(String),
}

/// One pass: deletes the shards stored before `grace` ago that no committed layout
/// references. Nothing is deleted unless the metadata group answered.
pub async fn collect(store: &ShardStore, config: &OrphanConfig) -> Result<OrphanReport, OrphanError> {
    let cutoff = now_ms().saturating_sub(config.grace.as_millis() as u64);
    let mut old = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = store.list_created(after, PAGE_SHARDS).await?;
        after = page.last().map(|(id, _)| *id);
        old.extend(
            page.into_iter()
                .filter(|(_, created)| *created <= cutoff)
                .map(|(id, _)| id),
        );
        if !more {
            break;
        }
    }
    let mut report = OrphanReport {
        old_enough: old.len() as u64,
        deleted: 0,
    };
    if old.is_empty() {
        return Ok(report);
    }
    let refs: HashSet<ShardId> = crate::metadata::shard_refs(&config.metadata, config.node)
        .await
        .map_err(OrphanError::Metadata)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for id in old.into_iter().filter(|id| !refs.contains(id)) {
        match store.delete(id).await {
            Ok(true) => {
                report.deleted += 1;
                store.metrics().orphans_deleted.inc();
            }
            // Gone already, or being read: the next pass sees it again.
            Ok(false) | Err(StoreError::NotFound(_) | StoreError::Busy(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// Collects every `config.every` until `cancel` fires.
pub fn spawn_background(
    store: ShardStore,
    config: OrphanConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(config.every) => {}
                _ = cancel.cancelled() => return,
            }
            match collect(&store, &config).await {
                Ok(r) if r.deleted > 0 => info!(
                    old_enough = r.old_enough,
                    deleted = r.deleted,
                    "orphan collection deleted unreferenced shards"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "orphan collection pass skipped"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_common::checksum::block_checksums;
    use cairn_common::config::IoMode;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::StoreLimits;
    use cairn_common::ids::StripeId;

    async fn store_with_shards(dir: &std::path::Path, n: u8) -> (ShardStore, Vec<ShardId>) {
        let choice = crate::disk::choose(dir, IoMode::Posix, 32).await.expect("disk");
        let limits = StoreLimits {
            shard_bytes_max: 1 << 20,
            capacity_bytes: None,
        };
        let store = ShardStore::open(dir, choice, limits, Metrics::new()).expect("store");
        let mut ids = Vec::new();
        for i in 0..n {
            let id = ShardId::new(StripeId(u128::from(i) + 1), 0);
            let data = Bytes::from(vec![i; 5000]);
            store
                .put(id, 4096, block_checksums(&data, 4096), data)
                .await
                .expect("put");
            ids.push(id);
        }
        (store, ids)
    }

    fn config(grace: Duration, metadata: Vec<SocketAddr>) -> OrphanConfig {
        OrphanConfig {
            node: 1,
            metadata,
            grace,
            every: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn young_shards_and_an_unanswered_question_delete_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, ids) = store_with_shards(dir.path(), 3).await;
        // No metadata node listens there: nothing may be deleted without its answer.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let r = collect(&store, &config(Duration::ZERO, vec![closed])).await;
        assert!(matches!(r, Err(OrphanError::Metadata(_))), "{r:?}");
        // Within the grace period the metadata group is not even asked.
        let r = collect(&store, &config(Duration::from_secs(3600), vec![closed])).await;
        assert_eq!(r.expect("young shards"), OrphanReport::default());
        for id in ids {
            assert!(store.read(id, 0, None).await.is_ok(), "shard {id} was deleted");
        }
    }
}
