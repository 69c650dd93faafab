//! `cairnctl drain NODE`: takes a dataserver out of service without losing redundancy.
//! The metadata group marks it draining: logic nodes stop placing shards on it within a
//! couple of seconds, and the dataservers' rebuild workers (`cairn_dataserver::rebuild`)
//! rebuild every shard a committed layout places on it onto a dataserver that keeps the
//! hall rule, worst stripes first, paced by each dataserver's `rebuild_bytes_per_sec`.
//! With `--wait` the command follows them with a progress bar until no committed layout
//! references the node (the leader counts them; it does not list them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_common::config::Config;
use cairn_common::proto::metadata::{meta_request::Op, SetDraining};
use cairn_metadata::client::MetadataClient;
use indicatif::{ProgressBar, ProgressStyle};

const DEADLINE: Duration = Duration::from_secs(60);
const STATUS_DEADLINE: Duration = Duration::from_secs(3);
/// A drain is not done before this long after the mark: longer than logic nodes take to
/// learn of it (they read the list every 2 s), so writes placed before they knew have
/// committed and been moved too. Stripes a writer keeps uncommitted longer still land
/// on the node when committed; `status` shows them and the workers move them.
const SETTLE: Duration = Duration::from_secs(5);
/// `--wait` gives up when the count of shards left has not gone down for this long.
const STALL: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(500);
/// The wait between two counts, at least, as a multiple of how long the last one took.
const POLL_COST_SHARE: u32 = 20;

fn metadata_client(config: &Config, deadline: Duration) -> MetadataClient {
    MetadataClient::new(
        config.metadata_nodes.iter().map(|n| n.addr.to_string()).collect(),
        deadline,
    )
}

async fn shards_on(meta_addrs: &[SocketAddr], node: u32) -> anyhow::Result<usize> {
    let count = cairn_dataserver::metadata::shard_ref_count(meta_addrs, node)
        .await
        .map_err(|e| anyhow::anyhow!("shard references of dataserver {node}: {e}"))?;
    usize::try_from(count).context("a shard count past this machine's word size")
}

/// Marks dataserver `node` of the cluster in `config` draining; with `wait`, follows the
/// rebuild until nothing committed references it (`progress`: a bar on the terminal).
/// Returns the shards it held when marked.
pub async fn drain(config: &Config, node: u32, wait: bool, progress: bool) -> anyhow::Result<usize> {
    if !config.dataservers.iter().any(|d| d.node_id == node) {
        bail!("dataserver {node} is not in the cluster's config");
    }
    let meta_addrs: Vec<SocketAddr> = config.metadata_nodes.iter().map(|n| n.addr).collect();
    mark(config, node, true)
        .await
        .context("marking the dataserver draining")?;
    let started = Instant::now();
    let held = shards_on(&meta_addrs, node).await?;
    if !wait {
        return Ok(held);
    }
    let bar = if progress {
        ProgressBar::new(held as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} shards, {elapsed} elapsed, {eta} left")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("draining dataserver {node}"));
    // New writes placed before logic nodes learnt of the drain add a few to the total.
    let (mut total, mut previous) = (held, held);
    let (mut fewest, mut last_progress) = (held, Instant::now());
    loop {
        // A metadata election while the drain runs is no reason to stop following it.
        let asked = Instant::now();
        let left = match shards_on(&meta_addrs, node).await {
            Ok(left) => left,
            Err(e) if last_progress.elapsed() < STALL => {
                bar.set_message(format!("draining dataserver {node} (asking again: {e})"));
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        bar.set_message(format!("draining dataserver {node}"));
        total += left.saturating_sub(previous);
        previous = left;
        if left < fewest {
            fewest = left;
            last_progress = Instant::now();
        }
        bar.set_length(total as u64);
        bar.set_position((total - left) as u64);
        if left == 0 && started.elapsed() >= SETTLE {
            bar.finish_with_message(format!("dataserver {node} drained"));
            return Ok(held);
        }
        if last_progress.elapsed() >= STALL {
            bail!(
                "dataserver {node} still holds {left} referenced shards and none moved in {STALL:?}: \
                 see the dataservers' logs (no dataserver that keeps the hall rule, or stripes \
                 that cannot be decoded)"
            );
        }
        // The leader counts by reading the node's references: on a node with millions,
        // ask less often, so following a drain costs the leader a twentieth at most.
        tokio::time::sleep(POLL.max(asked.elapsed() * POLL_COST_SHARE)).await;
    }
}

/// Puts a drained (or draining, or lost) dataserver back in service: new shards may land
/// on it.
pub async fn undrain(config: &Config, node: u32) -> anyhow::Result<()> {
    mark(config, node, false).await
}

/// An operator's drain mark on dataserver `node`, set or cleared (a lost mark too).
async fn mark(config: &Config, node: u32, draining: bool) -> anyhow::Result<()> {
    metadata_client(config, DEADLINE)
        .call(Op::SetDraining(SetDraining {
            dataserver: node,
            draining,
            lost: false,
        }))
        .await?;
    Ok(())
}

/// One draining dataserver for `status`: referenced shards left and whether it is lost.
#[derive(Debug)]
pub struct Draining {
    pub node: u32,
    pub shards_left: usize,
    pub lost: bool,
}

/// The draining dataservers and what each still holds, and the dataservers whose
/// heartbeats the metadata leader has missed lately. For `status`: it gives up after a
/// few seconds without a metadata leader.
pub async fn remaining(config: &Config) -> anyhow::Result<(Vec<Draining>, Vec<u32>)> {
    let meta_addrs: Vec<SocketAddr> = config.metadata_nodes.iter().map(|n| n.addr).collect();
    let listed = metadata_client(config, STATUS_DEADLINE).draining().await?;
    let mut out = Vec::new();
    for &node in &listed.ids {
        out.push(Draining {
            node,
            shards_left: shards_on(&meta_addrs, node).await?,
            lost: listed.lost.contains(&node),
        });
    }
    Ok((out, listed.silent))
}
