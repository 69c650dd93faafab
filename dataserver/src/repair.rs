//! Scrub repair: a shard that scrub found corrupt is rebuilt from the other shards of its
//! stripe and written over the damaged copy, so damage no reader touched is repaired too
//! (a reader's own repair is the logic node's). The stripe comes from the metadata group
//! (the inode from this node's shard references, then its layout); the other shards from
//! the dataservers that hold them; the rebuilt shard must match the layout's checksum.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use cairn_common::erasure::ErasureCode;
use cairn_common::ids::ShardId;
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

async fn fetch(config: &RepairConfig, node: u32, id: ShardId, crc: u32) -> Option<Bytes> {
    let client = DataserverClient::connect(*config.peers.get(&node)?).await.ok()?;
    let bytes = client.get(id, 0, None).await.ok()?;
    (crc32c::crc32c(&bytes) == crc).then_some(bytes)
}

async fn repair_one(store: &ShardStore, config: &RepairConfig, id: ShardId, inode: u64) -> Result<bool, String> {
    let layout = metadata::layout(&config.metadata, inode).await?;
    let stripe_id = id.stripe.0.to_be_bytes();
    let stripe = layout
        .stripes
        .iter()
        .find(|s| s.stripe_id == stripe_id)
        .ok_or("the stripe is no longer in the file's layout")?;
    let want = stripe
        .shards
        .iter()
        .find(|l| l.index == u32::from(id.index))
        .ok_or("the layout names no such shard")?
        .crc32c;
    let code =
        ErasureCode::new(layout.data_shards as usize, layout.parity_shards as usize).map_err(|e| e.to_string())?;
    let others = stripe.shards.iter().filter(|l| l.index != u32::from(id.index));
    let fetched = futures::future::join_all(others.map(|l| async move {
        let index = u8::try_from(l.index).ok()?;
        let bytes = fetch(config, l.dataserver, ShardId::new(id.stripe, index), l.crc32c).await?;
        Some((usize::from(index), bytes))
    }))
    .await;
    let mut shards = vec![None; code.total_shards()];
    for (index, bytes) in fetched.into_iter().flatten() {
        if let Some(slot) = shards.get_mut(index) {
            *slot = Some(bytes);
        }
    }
    let rebuilt = code
        .reconstruct(&shards)
        .map_err(|e| e.to_string())?
        .into_iter()
        .nth(usize::from(id.index))
        .ok_or("the shard index is outside the code")?;
    if crc32c::crc32c(&rebuilt) != want {
        return Err("the rebuilt shard does not match its layout checksum".into());
    }
    store.repair(id, rebuilt, "scrub").await.map_err(|e| e.to_string())
}
