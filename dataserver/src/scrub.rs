//! Scrub: re-reads stored shards and checks every block (DESIGN.md invariant 5), in the
//! background at a configured rate, or once on demand from the command line.

use std::time::Duration;

use cairn_common::ids::ShardId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::repair::{repair_corrupt, RepairConfig};
use crate::store::{ShardStore, StoreError};

/// Shards fetched from the index per step of a pass.
const PAGE_SHARDS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub shards: u64,
    pub bytes: u64,
    /// Shards with corrupt blocks, and those blocks; none are listed for a shard that
    /// could not be checked block by block (its file is missing, or its index record is
    /// unusable).
    pub corrupt: Vec<(ShardId, Vec<u32>)>,
}

/// One pass over every shard, reading at most `bytes_per_sec` (0: as fast as the disk
/// allows). Shards deleted during the pass are skipped. Stops early when cancelled.
pub async fn scrub_pass(
    store: &ShardStore,
    bytes_per_sec: u64,
    cancel: &CancellationToken,
) -> Result<ScrubReport, StoreError> {
    let start = Instant::now();
    let mut report = ScrubReport::default();
    let mut after = None;
    loop {
        let (page, more) = store.list(after, PAGE_SHARDS).await?;
        for (id, _) in &page {
            if cancel.is_cancelled() {
                return Ok(report);
            }
            match store.scrub(*id).await {
                Ok(outcome) => {
                    report.shards += 1;
                    report.bytes += outcome.bytes;
                    if !outcome.corrupt_blocks.is_empty() {
                        report.corrupt.push((*id, outcome.corrupt_blocks));
                    }
                }
                // Deleted, or being moved, since the page was listed.
                Err(StoreError::NotFound(_) | StoreError::Busy(_)) => {}
                // Already counted and logged by the store; the pass goes on to the
                // other shards rather than stopping at this one every time.
                Err(StoreError::Corrupt { .. }) => {
                    report.shards += 1;
                    report.corrupt.push((*id, Vec::new()));
                }
                Err(e) => return Err(e),
            }
            if bytes_per_sec > 0 {
                let due = start + Duration::from_secs_f64(report.bytes as f64 / bytes_per_sec as f64);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = cancel.cancelled() => return Ok(report),
                }
            }
        }
        after = page.last().map(|(id, _)| *id);
        if !more {
            return Ok(report);
        }
    }
}

/// How a dataserver scrubs in the background.
#[derive(Clone, Debug)]
pub struct ScrubConfig {
    pub bytes_per_sec: u64,
    /// Passes start at most this often, so a small store is not spun over.
    pub every: Duration,
    /// Where to rebuild corrupt shards from; without it they are only counted.
    pub repair: Option<RepairConfig>,
}

/// Scrubs forever in the background until `cancel` fires, repairing what it finds.
pub fn spawn_background(
    store: ShardStore,
    config: ScrubConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            match scrub_pass(&store, config.bytes_per_sec, &cancel).await {
                Ok(r) => {
                    info!(
                        shards = r.shards,
                        bytes = r.bytes,
                        corrupt_shards = r.corrupt.len(),
                        "scrub pass finished"
                    );
                    if let (Some(repair), false) = (&config.repair, r.corrupt.is_empty()) {
                        let ids: Vec<ShardId> = r.corrupt.iter().map(|(id, _)| *id).collect();
                        match repair_corrupt(&store, repair, &ids).await {
                            Ok(n) => info!(repaired = n, corrupt = ids.len(), "scrub repair finished"),
                            Err(e) => tracing::warn!("scrub repair skipped: {e}"),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "scrub pass failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + config.every) => {}
                _ = cancel.cancelled() => return,
            }
        }
    })
}
