//! `cairnctl drain NODE`: takes a dataserver out of service without losing redundancy.
//! The metadata group marks it draining (logic nodes stop placing shards on it within a
//! couple of seconds), then every shard a committed layout places on it is rebuilt from
//! the rest of its stripe onto a dataserver that keeps the hall rule, and the layout
//! moves it there (a compare-and-set: a writer's newer layout is never undone). Stripes
//! with the most shards on draining or unreachable dataservers go first; the rebuild is
//! paced to a byte rate so foreground I/O keeps most of the bandwidth. Passes repeat
//! until no committed layout references the node; the command is the worker, so running
//! it again after an interruption carries on where it stopped.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_common::config::Config;
use cairn_common::ids::{HallId, NodeId, ShardId, StripeId};
use cairn_common::placement::{place, Candidate};
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Errno, Layout, ListDraining, ReplaceShard, SetDraining, Stripe,
};
use cairn_dataserver::client::DataserverClient;
use cairn_dataserver::repair::rebuild_shard;
use cairn_metadata::client::{MetaClientError, MetadataClient};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};

/// Shards rebuilt at once.
const PARALLEL: usize = 8;
/// Passes over the node's references before giving up (new writes can add a few while
/// logic nodes learn of the drain).
const PASSES_MAX: usize = 30;
const DEADLINE: Duration = Duration::from_secs(60);
const STATUS_DEADLINE: Duration = Duration::from_secs(3);
/// A drain is not done before this long after the mark: longer than logic nodes take to
/// learn of it (they read the list every 2 s), so writes placed before they knew have
/// committed and been moved too. Stripes a writer keeps uncommitted longer still land
/// on the node when committed; `status` shows them and another drain moves them.
const SETTLE: Duration = Duration::from_secs(5);

struct Drain {
    node: u32,
    meta: MetadataClient,
    meta_addrs: Vec<SocketAddr>,
    peers: HashMap<u32, SocketAddr>,
    halls: HashMap<u32, HallId>,
    block_bytes: u32,
    rate_bytes_per_sec: u64,
    started: Instant,
    rebuilt_bytes: std::sync::atomic::AtomicU64,
}

/// One shard to move: the file, its layout and the stripe.
struct Work {
    inode: u64,
    layout: Arc<Layout>,
    stripe: Stripe,
    index: u8,
    degraded: usize,
}

fn metadata_client(config: &Config, deadline: Duration) -> MetadataClient {
    MetadataClient::new(
        config.metadata_nodes.iter().map(|n| n.addr.to_string()).collect(),
        deadline,
    )
}

pub async fn draining(meta: &MetadataClient) -> anyhow::Result<Vec<u32>> {
    match meta.call(Op::ListDraining(ListDraining {})).await? {
        meta_reply::Result::Draining(d) => Ok(d.ids),
        other => bail!("unexpected answer {other:?}"),
    }
}

impl Drain {
    /// Every dataserver that answers `stat` now.
    async fn reachable(&self) -> HashSet<u32> {
        let probes = self.peers.iter().map(|(id, addr)| async move {
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                DataserverClient::connect(*addr).await?.stat().await
            })
            .await
            .is_ok_and(|r| r.is_ok());
            ok.then_some(*id)
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// The node's shards still referenced, with how degraded each stripe is, worst first.
    async fn work(&self, unusable: &HashSet<u32>) -> anyhow::Result<Vec<Work>> {
        let refs = cairn_dataserver::metadata::shard_refs(&self.meta_addrs, self.node)
            .await
            .map_err(|e| anyhow::anyhow!("shard references of dataserver {}: {e}", self.node))?;
        let mut layouts: HashMap<u64, Arc<Layout>> = HashMap::new();
        let mut out = Vec::new();
        for (id, inode) in refs {
            let layout = match layouts.entry(inode) {
                std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let l = cairn_dataserver::metadata::layout(&self.meta_addrs, inode)
                        .await
                        .map_err(|e| anyhow::anyhow!("layout of inode {inode}: {e}"))?;
                    e.insert(Arc::new(l)).clone()
                }
            };
            let stripe_id = id.stripe.0.to_be_bytes();
            let Some(stripe) = layout.stripes.iter().find(|s| s.stripe_id == stripe_id).cloned() else {
                continue;
            };
            let degraded = stripe
                .shards
                .iter()
                .filter(|l| unusable.contains(&l.dataserver))
                .count();
            out.push(Work {
                inode,
                layout,
                stripe,
                index: id.index,
                degraded,
            });
        }
        out.sort_by_key(|w| std::cmp::Reverse(w.degraded));
        Ok(out)
    }

    /// A dataserver for the shard: not draining or unreachable, holding no shard of the
    /// stripe, in a hall with fewer than m of its shards.
    fn target(&self, w: &Work, unusable: &HashSet<u32>) -> Option<u32> {
        let m = w.layout.parity_shards as usize;
        let mut per_hall: HashMap<&HallId, usize> = HashMap::new();
        for l in w.stripe.shards.iter().filter(|l| l.index != u32::from(w.index)) {
            if let Some(h) = self.halls.get(&l.dataserver) {
                *per_hall.entry(h).or_default() += 1;
            }
        }
        let holders: HashSet<u32> = w.stripe.shards.iter().map(|l| l.dataserver).collect();
        let free: Vec<Candidate> = self
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
        let stripe = StripeId(u128::from_be_bytes(w.stripe.stripe_id.as_slice().try_into().ok()?));
        place(&free, stripe, 1, m).ok()?.first().map(|n| n.0)
    }

    /// Rebuilds one shard onto its new dataserver and moves it in the layout; false when
    /// the layout changed under it (the next pass looks again).
    async fn move_one(&self, w: &Work, unusable: &HashSet<u32>) -> anyhow::Result<bool> {
        let to = self
            .target(w, unusable)
            .context("no dataserver can take the shard under the hall rule")?;
        let data = rebuild_shard(&self.peers, &w.layout, &w.stripe, w.index)
            .await
            .map_err(|e| anyhow::anyhow!("rebuilding: {e}"))?;
        let stripe = StripeId(u128::from_be_bytes(w.stripe.stripe_id.as_slice().try_into()?));
        let len = data.len() as u64;
        DataserverClient::connect(self.peers[&to])
            .await?
            .put(ShardId::new(stripe, w.index), self.block_bytes, data)
            .await?;
        let moved = self
            .meta
            .call(Op::ReplaceShard(ReplaceShard {
                inode: w.inode,
                stripe_id: w.stripe.stripe_id.clone(),
                index: u32::from(w.index),
                from_dataserver: self.node,
                to_dataserver: to,
            }))
            .await;
        self.pace(len).await;
        match moved {
            Ok(_) => Ok(true),
            // Rewritten, truncated or removed meanwhile: the shard put is an orphan now.
            Err(MetaClientError::Refused { errno, .. }) if errno == Errno::Estale || errno == Errno::Enoent => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sleeps so that rebuilt bytes stay under the rate.
    async fn pace(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        let total = self.rebuilt_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.rate_bytes_per_sec > 0 {
            let due = self.started + Duration::from_secs_f64(total as f64 / self.rate_bytes_per_sec as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Drains dataserver `node` of the cluster in `config`: marks it, then rebuilds every
/// shard of it elsewhere, showing progress (`progress`: a bar on the terminal). Returns
/// the shards moved.
pub async fn drain(config: &Config, node: u32, rate_bytes_per_sec: u64, progress: bool) -> anyhow::Result<u64> {
    if !config.dataservers.iter().any(|d| d.node_id == node) {
        bail!("dataserver {node} is not in the cluster's config");
    }
    let meta_addrs: Vec<SocketAddr> = config.metadata_nodes.iter().map(|n| n.addr).collect();
    let meta = metadata_client(config, DEADLINE);
    meta.call(Op::SetDraining(SetDraining {
        dataserver: node,
        draining: true,
    }))
    .await
    .context("marking the dataserver draining")?;
    let mut halls = HashMap::new();
    for d in &config.dataservers {
        halls.insert(d.node_id, HallId::new(d.hall.clone())?);
    }
    let d = Drain {
        node,
        meta,
        meta_addrs,
        peers: config.dataservers.iter().map(|d| (d.node_id, d.addr)).collect(),
        halls,
        block_bytes: config.erasure.block_bytes,
        rate_bytes_per_sec,
        started: Instant::now(),
        rebuilt_bytes: 0.into(),
    };
    let bar = if progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} shards, {elapsed} elapsed, {eta} left")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("draining dataserver {node}"));
    let mut moved = 0u64;
    for _ in 0..PASSES_MAX {
        let reachable = d.reachable().await;
        let mut unusable: HashSet<u32> = draining(&d.meta).await?.into_iter().collect();
        unusable.extend(d.peers.keys().filter(|id| !reachable.contains(id)));
        let work = d.work(&unusable).await?;
        if work.is_empty() {
            if d.started.elapsed() >= SETTLE {
                bar.finish_with_message(format!("dataserver {node} drained"));
                return Ok(moved);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        bar.inc_length(work.len() as u64);
        let results: Vec<anyhow::Result<bool>> = stream::iter(&work)
            .map(|w| {
                let (d, unusable, bar) = (&d, &unusable, &bar);
                async move {
                    let r = d.move_one(w, unusable).await;
                    bar.inc(1);
                    r
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for r in results {
            if r? {
                moved += 1;
            }
        }
    }
    bail!("dataserver {node} still holds referenced shards after {PASSES_MAX} passes")
}

/// Puts a drained (or draining) dataserver back in service: new shards may land on it.
pub async fn undrain(config: &Config, node: u32) -> anyhow::Result<()> {
    metadata_client(config, DEADLINE)
        .call(Op::SetDraining(SetDraining {
            dataserver: node,
            draining: false,
        }))
        .await?;
    Ok(())
}

/// Referenced shards left on each draining dataserver: (node, shards). For `status`: it
/// gives up after a few seconds without a metadata leader.
pub async fn remaining(config: &Config) -> anyhow::Result<Vec<(u32, usize)>> {
    let meta_addrs: Vec<SocketAddr> = config.metadata_nodes.iter().map(|n| n.addr).collect();
    let meta = metadata_client(config, STATUS_DEADLINE);
    let mut out = Vec::new();
    for node in draining(&meta).await? {
        let refs = cairn_dataserver::metadata::shard_refs(&meta_addrs, node)
            .await
            .map_err(|e| anyhow::anyhow!("shard references of dataserver {node}: {e}"))?;
        out.push((node, refs.len()));
    }
    Ok(out)
}
