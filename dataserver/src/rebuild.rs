//! The rebuild worker: every dataserver runs one. Each pass it asks the metadata leader
//! which dataservers are draining (an operator's `cairnctl drain`, or marked lost by the
//! leader after missing their heartbeats for `dataserver_lost_after_secs`) and which are
//! silent (heartbeats missed lately), then
//! takes its part of the shards that committed layouts place on draining dataservers,
//! worst stripes first (most shards on draining or silent dataservers), and rebuilds
//! each: copied from the draining dataserver when it still serves it, decoded from the
//! rest of the stripe otherwise, stored on its new home (this node or a peer), then moved
//! in the layout by a compare-and-set (`ReplaceShard`: a writer's newer layout is never
//! undone, and a shard stored for a stripe that changed meanwhile is an orphan).
//!
//! The usable dataservers (neither draining nor silent), in id order, split the stripes
//! by `placement::partition_of`: each lists and rebuilds only its part, so a pass costs
//! the cluster one listing of the references, not one per dataserver. A shard's new
//! home is a pure function of the stripe and the usable dataservers (the placement's
//! rendezvous hash under the hall rule). Liveness comes from the one place every worker
//! asks (the leader's heartbeat table), so their views agree; when a leader change makes
//! them differ for a pass, two may rebuild the same shard and the compare-and-set keeps
//! one. Rebuilt bytes are paced to `bytes_per_sec` so foreground I/O keeps most of the
//! disks and the network.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_common::checksum::block_checksums;
use cairn_common::ids::{HallId, NodeId, ShardId, StripeId};
use cairn_common::placement::{place, Candidate};
use cairn_common::proto::metadata::{meta_request::Op, Errno, Layout, ReplaceShard, Stripe};
use futures::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::DataserverClient;
use crate::metadata;
use crate::repair::{fetch, rebuild_shard};
use crate::store::ShardStore;

/// Shards one dataserver rebuilds at once.
const PARALLEL: usize = 4;

#[derive(Clone, Debug)]
pub struct RebuildConfig {
    pub node: u32,
    pub metadata: Vec<SocketAddr>,
    /// Every dataserver of the cluster (this one too), by node id, and its hall.
    pub peers: HashMap<u32, SocketAddr>,
    pub halls: HashMap<u32, HallId>,
    pub block_bytes: u32,
    pub every: Duration,
    /// The most rebuilt bytes per second; 0 is no limit.
    pub bytes_per_sec: u64,
}

/// One shard of a draining dataserver that a committed layout references.
struct Work {
    inode: u64,
    layout: Arc<Layout>,
    stripe: Stripe,
    stripe_id: StripeId,
    index: u8,
    /// The shard's crc32c in the layout.
    crc: u32,
    from: u32,
    /// Shards of the stripe on draining or unreachable dataservers.
    degraded: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Referenced shards on draining dataservers, of this node's part.
    pub pending: usize,
    /// Those of them this node rebuilt and moved.
    pub rebuilt: u64,
}

#[derive(Debug)]
pub struct Rebuilder {
    store: ShardStore,
    config: RebuildConfig,
    /// When the next rebuilt shard may start, for the pacing.
    next_start: tokio::sync::Mutex<Instant>,
}

impl Rebuilder {
    pub fn new(store: ShardStore, config: RebuildConfig) -> Rebuilder {
        Rebuilder {
            store,
            config,
            next_start: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// One pass: this node's share of the rebuild.
    pub async fn pass(&self) -> Result<PassReport, String> {
        let listed = metadata::draining(&self.config.metadata).await?;
        let mut report = PassReport::default();
        let draining: HashSet<u32> = listed.ids.iter().copied().collect();
        let mut unusable = draining.clone();
        unusable.extend(&listed.silent);
        if draining.is_empty() {
            return Ok(report);
        }
        let mut usable: Vec<u32> = self
            .config
            .halls
            .keys()
            .filter(|id| !unusable.contains(id))
            .copied()
            .collect();
        usable.sort_unstable();
        // A draining or silent node rebuilds nothing: the others split its part.
        let Some(rank) = usable.iter().position(|&id| id == self.config.node) else {
            return Ok(report);
        };
        let part = (
            u32::try_from(rank).unwrap_or(0),
            u32::try_from(usable.len()).unwrap_or(1),
        );
        let work = self.work(&draining, &unusable, part).await?;
        report.pending = work.len();
        let planned: Vec<(&Work, u32)> = work
            .iter()
            .filter_map(|w| self.target(w, &unusable).map(|to| (w, to)))
            .collect();
        // Collected first: a lazy map over borrowed work trips the compiler's Send check.
        let moves: Vec<_> = planned.iter().map(|&(w, to)| self.rebuild(w, to)).collect();
        let results: Vec<Result<bool, String>> = stream::iter(moves).buffer_unordered(PARALLEL).collect().await;
        for r in results {
            match r {
                Ok(true) => report.rebuilt += 1,
                Ok(false) => {}
                Err(e) => warn!("rebuild of a shard failed (the next pass tries again): {e}"),
            }
        }
        Ok(report)
    }

    /// The shards committed layouts place on the `draining` dataservers, of the stripes
    /// in part `part.0` of `part.1`, worst first.
    async fn work(
        &self,
        draining: &HashSet<u32>,
        unusable: &HashSet<u32>,
        part: (u32, u32),
    ) -> Result<Vec<Work>, String> {
        let mut layouts: HashMap<u64, Option<Arc<Layout>>> = HashMap::new();
        let mut out = Vec::new();
        for &from in draining {
            for (id, inode) in metadata::shard_refs_in(&self.config.metadata, from, Some(part)).await? {
                let layout = match layouts.entry(inode) {
                    Entry::Occupied(e) => e.into_mut(),
                    // A file removed since the references were read has no layout.
                    Entry::Vacant(e) => {
                        e.insert(metadata::layout(&self.config.metadata, inode).await.ok().map(Arc::new))
                    }
                };
                let Some(layout) = layout else {
                    continue;
                };
                let stripe_id = id.stripe.0.to_be_bytes();
                let Some(stripe) = layout.stripes.iter().find(|s| s.stripe_id == stripe_id) else {
                    continue;
                };
                let Some(crc) = stripe
                    .shards
                    .iter()
                    .find(|l| l.index == u32::from(id.index))
                    .map(|l| l.crc32c)
                else {
                    continue;
                };
                let degraded = stripe
                    .shards
                    .iter()
                    .filter(|l| unusable.contains(&l.dataserver))
                    .count();
                out.push(Work {
                    inode,
                    layout: layout.clone(),
                    stripe: stripe.clone(),
                    stripe_id: id.stripe,
                    index: id.index,
                    crc,
                    from,
                    degraded,
                });
            }
        }
        out.sort_by_key(|w| std::cmp::Reverse(w.degraded));
        Ok(out)
    }

    /// The new home of a shard: a usable dataserver holding no shard of the stripe, in a
    /// hall with fewer than m of its other shards, chosen by the placement's hash.
    fn target(&self, w: &Work, unusable: &HashSet<u32>) -> Option<u32> {
        let m = w.layout.parity_shards as usize;
        let mut per_hall: HashMap<&HallId, usize> = HashMap::new();
        for l in w.stripe.shards.iter().filter(|l| l.index != u32::from(w.index)) {
            if let Some(h) = self.config.halls.get(&l.dataserver) {
                *per_hall.entry(h).or_default() += 1;
            }
        }
        let holders: HashSet<u32> = w.stripe.shards.iter().map(|l| l.dataserver).collect();
        let free: Vec<Candidate> = self
            .config
            .halls
            .iter()
            .filter(|(id, h)| {
                !unusable.contains(id) && !holders.contains(id) && per_hall.get(h).copied().unwrap_or(0) < m
            })
            .map(|(id, h)| Candidate {
                node: NodeId(*id),
                hall: h.clone(),
                free_bytes: 1,
            })
            .collect();
        place(&free, w.stripe_id, 1, m).ok()?.first().map(|n| n.0)
    }

    /// Rebuilds one shard, stores it on dataserver `to` (this node or a peer) and moves it
    /// in the layout; false when the stripe changed meanwhile (rewritten, truncated or
    /// removed: the stored shard is an orphan now).
    async fn rebuild(&self, w: &Work, to: u32) -> Result<bool, String> {
        let id = ShardId::new(w.stripe_id, w.index);
        let data: Bytes = match fetch(&self.config.peers, w.from, id, w.crc).await {
            Some(bytes) => bytes,
            None => rebuild_shard(&self.config.peers, &w.layout, &w.stripe, w.index).await?,
        };
        self.pace(data.len() as u64).await;
        let len = data.len() as u64;
        let checksums = block_checksums(&data, self.config.block_bytes);
        if to == self.config.node {
            self.store
                .put(id, self.config.block_bytes, checksums, data)
                .await
                .map_err(|e| format!("storing shard {id}: {e}"))?;
        } else {
            let addr = self
                .config
                .peers
                .get(&to)
                .ok_or_else(|| format!("dataserver {to} has no address"))?;
            let peer = DataserverClient::connect(*addr)
                .await
                .map_err(|e| format!("storing shard {id} on dataserver {to}: {e}"))?;
            peer.put_checksummed(id, self.config.block_bytes, checksums, data)
                .await
                .map_err(|e| format!("storing shard {id} on dataserver {to}: {e}"))?;
        }
        let moved = metadata::call(
            &self.config.metadata,
            Op::ReplaceShard(ReplaceShard {
                inode: w.inode,
                stripe_id: w.stripe.stripe_id.clone(),
                index: u32::from(w.index),
                from_dataserver: w.from,
                to_dataserver: to,
                stripe_offset: Some(w.stripe.offset),
            }),
        )
        .await;
        match moved {
            Ok(_) => {
                let metrics = self.store.metrics();
                metrics.rebuilt_shards.inc();
                metrics.rebuilt_bytes.inc_by(len);
                Ok(true)
            }
            Err(Ok(refusal)) if refusal.errno == Errno::Estale as i32 || refusal.errno == Errno::Enoent as i32 => {
                Ok(false)
            }
            Err(Ok(refusal)) => Err(format!("moving shard {id}: {}", refusal.message)),
            Err(Err(e)) => Err(format!("moving shard {id}: {e}")),
        }
    }

    /// Waits for this shard's turn under the byte rate.
    async fn pace(&self, bytes: u64) {
        if self.config.bytes_per_sec == 0 {
            return;
        }
        let start = {
            let mut next = self.next_start.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.config.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Runs a pass every `config.every` until `cancel` fires.
pub fn spawn_background(
    store: ShardStore,
    config: RebuildConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = config.every;
        let rebuilder = Rebuilder::new(store, config);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
            let pass = tokio::select! {
                r = rebuilder.pass() => r,
                _ = cancel.cancelled() => return,
            };
            match pass {
                Ok(r) if r.rebuilt > 0 => info!(pending = r.pending, rebuilt = r.rebuilt, "rebuild pass"),
                Ok(_) => {}
                Err(e) => warn!("rebuild pass skipped: {e}"),
            }
        }
    })
}
