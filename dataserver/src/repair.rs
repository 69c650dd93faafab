//! Scrub repair: a shard that scrub found corrupt is rebuilt from the other shards of its
//! stripe and written over the damaged copy, so damage no reader touched is repaired too
//! (a reader's own repair is the logic node's). The stripe comes from the metadata group
//! (the inode from this node's shard references, then its layout); the other shards from
//! the dataservers that hold them; the rebuilt shard must match the layout's checksum.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use cairn_common::checksum::crc32c;
use cairn_common::erasure::ErasureCode;
use cairn_common::ids::{ShardId, StripeId};
use cairn_common::proto::metadata::{Layout, Stripe};
use tracing::warn;

use crate::client::DataserverClient;
use crate::metadata;
use crate::store::ShardStore;

#[derive(Clone, Debug)]
pub struct RepairConfig {
    pub node: u32,
    pub metadata: Vec<SocketAddr>,
    /// Every dataserver of the cluster, by node id.
    pub peers: HashMap<u32, SocketAddr>,
}

/// Repairs the `corrupt` shards that a committed layout references (the others are the
/// orphan collector's); returns how many were rewritten.
pub async fn repair_corrupt(store: &ShardStore, config: &RepairConfig, corrupt: &[ShardId]) -> Result<u64, String> {
    let inodes: HashMap<ShardId, u64> = metadata::shard_refs(&config.metadata, config.node)
        .await?
        .into_iter()
        .collect();
    let mut repaired = 0;
    for id in corrupt {
        let Some(&inode) = inodes.get(id) else { continue };
        match repair_one(store, config, *id, inode).await {
            Ok(true) => repaired += 1,
            Ok(false) => {}
            Err(e) => warn!(shard = %id, inode, "scrub repair failed: {e}"),
        }
    }
    Ok(repaired)
}

/// Shard `id` from dataserver `node`, if it serves it intact (its crc is `crc`).
pub(crate) async fn fetch(peers: &HashMap<u32, SocketAddr>, node: u32, id: ShardId, crc: u32) -> Option<Bytes> {
    let client = DataserverClient::connect(*peers.get(&node)?).await.ok()?;
    let blocks = client.get_whole(id).await.ok()?;
    (blocks.crc32c() == crc).then_some(blocks.bytes)
}

/// Shard `index` of `stripe` (coded k+m as in `layout`), rebuilt from the stripe's other
/// shards on the dataservers in `peers` and checked against the layout's crc: what scrub
/// repair writes over a corrupt copy and a drain writes to a new dataserver.
pub async fn rebuild_shard(
    peers: &HashMap<u32, SocketAddr>,
    layout: &Layout,
    stripe: &Stripe,
    index: u8,
) -> Result<Bytes, String> {
    let want = stripe
        .shards
        .iter()
        .find(|l| l.index == u32::from(index))
        .ok_or("the layout names no such shard")?
        .crc32c;
    let code =
        ErasureCode::new(layout.data_shards as usize, layout.parity_shards as usize).map_err(|e| e.to_string())?;
    let stripe_id = StripeId(u128::from_be_bytes(
        stripe
            .stripe_id
            .as_slice()
            .try_into()
            .map_err(|_| "a malformed stripe id")?,
    ));
    let others = stripe.shards.iter().filter(|l| l.index != u32::from(index));
    let fetched = futures::future::join_all(others.map(|l| async move {
        let i = u8::try_from(l.index).ok()?;
        let bytes = fetch(peers, l.dataserver, ShardId::new(stripe_id, i), l.crc32c).await?;
        Some((usize::from(i), bytes))
    }))
    .await;
    let mut shards = vec![None; code.total_shards()];
    for (i, bytes) in fetched.into_iter().flatten() {
        if let Some(slot) = shards.get_mut(i) {
            *slot = Some(bytes);
        }
    }
    let rebuilt = code
        .reconstruct(&shards)
        .map_err(|e| e.to_string())?
        .into_iter()
        .nth(usize::from(index))
        .ok_or("the shard index is outside the code")?;
    if crc32c(&rebuilt) != want {
        return Err("the rebuilt shard does not match its layout checksum".into());
    }
    Ok(rebuilt)
}

async fn repair_one(store: &ShardStore, config: &RepairConfig, id: ShardId, inode: u64) -> Result<bool, String> {
    let layout = metadata::layout(&config.metadata, inode).await?;
    let stripe_id = id.stripe.0.to_be_bytes();
    let stripe = layout
        .stripes
        .iter()
        .find(|s| s.stripe_id == stripe_id)
        .ok_or("the stripe is no longer in the file's layout")?;
    let rebuilt = rebuild_shard(&config.peers, &layout, stripe, id.index).await?;
    store.repair(id, rebuilt, "scrub").await.map_err(|e| e.to_string())
}
