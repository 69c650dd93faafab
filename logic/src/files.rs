//! Whole-file writes and reads over the data path.
//!
//! Write: the bytes are cut into stripes of k × shard unit; each stripe is erasure coded
//! (k data + m parity shards, crc32c per block verified by the dataserver before it
//! acknowledges: a data shard cut at the client's block boundaries keeps the client's
//! checksums, verified on receipt, the others are computed here), its k+m shards are
//! placed with at most m in any hall and written in parallel; a dataserver that fails
//! gets its shard re-placed on another. Only when every stripe is durable is the new
//! layout committed through Raft (compare-and-set on the version the write session
//! started from), so a crash at any point leaves the previous content whole
//! (invariant 1).
//!
//! Small files: a file of at most `INLINE_BYTES_MAX` bytes keeps its bytes in the
//! metadata (one Raft entry, no shard I/O at all) instead of costing k+m shard writes;
//! the metadata group replicates it to every voter, which is at least as durable as the
//! stripe it replaces.
//!
//! Read: the k data shards of each stripe are fetched in parallel and checked (block
//! checksums by the dataserver client, the whole-shard crc32c, derived from them, against
//! the layout); only when one is missing, unreachable or corrupt are parity shards
//! fetched and the stripe decoded. A corrupt shard (a block failing its checksum) never
//! reaches the reader; it is rebuilt from the decoded stripe and written back over the
//! damaged copy. A read of part of a stripe (a small or unaligned read, an S3 range)
//! fetches only the blocks that hold it, from the data shards alone, each block checked;
//! if one of those shards cannot give its part, the whole stripe is read as above.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cairn_common::checksum::{block_checksums, crc_of_blocks, ChecksummedBlocks};
use cairn_common::config::ErasureConfig;
use cairn_common::erasure::{ErasureCode, ErasureError};
use cairn_common::file_wire::{Capacity, FileBytes, FileBytesBuilder, FILE_BLOCK_BYTES};
use cairn_common::ids::{NodeId, ShardId, StripeId};
use cairn_common::namespace::{stripe_part, INLINE_BYTES_MAX, STRIPE_ID_BYTES};
use cairn_common::placement::{place, PlacementError};
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, GetLayout, Layout, ShardLocation, Stripe, StripeCode,
};
use cairn_common::wire::ErrorCode;
use cairn_metadata::client::{MetaClientError, MetadataClient};
use futures::stream::{self, StreamExt, TryStreamExt};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::dataservers::Dataservers;
use crate::layouts::LayoutCache;
use crate::metrics::Metrics;

/// Bytes of a stripe read: their offset in the stripe, and the checksums of their
/// first whole blocks of [`FILE_BLOCK_BYTES`] that a dataserver sent.
type Piece = (u64, Bytes, Vec<u32>);

/// Lease of a write session; a whole-file write renews nothing, so it must fit.
const SESSION_TTL_MS: u32 = 120_000;
/// Stripes written or read at once.
const STRIPES_IN_FLIGHT: usize = 4;
/// Dataservers tried for one shard before the stripe fails.
const PUT_ATTEMPTS: usize = 3;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("metadata: {0}")]
    Meta(#[from] MetaClientError),
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("erasure code: {0}")]
    Erasure(#[from] ErasureError),
    #[error("stripe at offset {offset}: {reason}")]
    Stripe { offset: u64, reason: String },
    #[error("bad layout from the metadata group: {0}")]
    Layout(String),
}

/// What one shard read gave.
enum Fetched {
    /// The blocks asked for (the whole shard, or those covering a part of it), every one
    /// verified, and the shard's length.
    Verified { shard_len: u64, blocks: ChecksummedBlocks },
    /// It failed a checksum: the shard needs repair.
    Corrupt,
    /// Its dataserver did not answer.
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct Files {
    meta: Arc<MetadataClient>,
    ds: Dataservers,
    /// This node's code: what it writes, and announces to clients.
    erasure: ErasureConfig,
    code: ErasureCode,
    /// The largest shard this node cuts from a client's stripe
    /// (`ErasureConfig::shard_bytes_taken`, kept: it validates a code to find out).
    unit_taken: usize,
    metrics: Metrics,
    layouts: Arc<LayoutCache>,
}

impl Files {
    pub fn new(meta: Arc<MetadataClient>, ds: Dataservers, erasure: &ErasureConfig) -> Files {
        Files {
            meta,
            ds,
            erasure: erasure.clone(),
            code: erasure.code(),
            unit_taken: erasure.shard_bytes_taken() as usize,
            metrics: Metrics::new(),
            layouts: Arc::new(LayoutCache::new(erasure.stripe_bytes() as u64)),
        }
    }

    /// This logic node's metrics (the file path counts into them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `node` failed a request: counted, its connection dropped, placement avoids it.
    async fn dataserver_failed(&self, node: NodeId) {
        self.metrics
            .dataserver_failures
            .with_label_values(&[&node.0.to_string()])
            .inc();
        self.ds.failed(node).await;
    }

    /// Replace the content of file `inode` with `data`; returns once the new layout is
    /// committed (the durability point `fsync`/`close` wait for).
    pub async fn write(&self, inode: u64, data: Bytes) -> Result<Attr, FileError> {
        let session = self.meta.open_session(inode, SESSION_TTL_MS).await?;
        let expected = session.layout.as_ref().map_or(0, |l| l.version);
        let result = async {
            let layout = if data.len() <= INLINE_BYTES_MAX {
                Layout {
                    inline_data: data.to_vec(),
                    ..Layout::default()
                }
            } else {
                self.write_stripes(&data).await?
            };
            let committed = self
                .meta
                .commit_layout(session.session, inode, expected, layout, data.len() as u64)
                .await?;
            Ok(committed.attr.unwrap_or_default())
        }
        .await;
        if let Err(e) = self.meta.close_session(session.session).await {
            // The lease expires on its own; the commit (if any) stands.
            warn!(session = session.session, "closing write session: {e}");
        }
        result
    }

    /// The cluster's space for file bytes.
    pub async fn capacity(&self) -> Capacity {
        self.ds
            .capacity(self.code.data_shards(), self.code.parity_shards())
            .await
    }

    /// This node's code, which clients cut their stripes by.
    pub fn stripe_code(&self) -> StripeCode {
        self.erasure.stripe_code()
    }

    /// The most file bytes one stripe of this node's code holds.
    pub fn stripe_bytes(&self) -> usize {
        self.erasure.stripe_bytes()
    }

    /// The most file bytes of one stripe this node takes from a client.
    pub fn stripe_bytes_taken(&self) -> usize {
        self.unit_taken * self.code.data_shards()
    }

    /// A layout of `stripes` (written by [`Files::write_stripe`]) in this store's code.
    pub fn layout(&self, stripes: Vec<Stripe>) -> Layout {
        Layout {
            version: 0,
            data_shards: self.code.data_shards() as u32,
            parity_shards: self.code.parity_shards() as u32,
            shard_unit_bytes: self.erasure.shard_unit_bytes,
            stripes,
            inline_data: Vec::new(),
        }
    }

    async fn write_stripes(&self, data: &Bytes) -> Result<Layout, FileError> {
        let stripe_bytes = self.stripe_bytes();
        let chunks: Vec<(u64, Bytes)> = (0..data.len())
            .step_by(stripe_bytes)
            .map(|start| (start as u64, data.slice(start..(start + stripe_bytes).min(data.len()))))
            .collect();
        let stripes = stream::iter(chunks)
            .map(|(offset, chunk)| self.write_stripe(offset, chunk, None))
            .buffered(STRIPES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(self.layout(stripes))
    }

    /// Store one stripe: `chunk` (at most k × shard unit bytes) at file offset `offset`;
    /// `chunk_checksums`, when the client sent them, are the crc32c of its blocks of
    /// `FILE_BLOCK_BYTES` (already verified). Returns its layout record once all k+m
    /// shards are durable; nothing is visible to readers until a layout holding it is
    /// committed (`MetadataClient::commit_layout`).
    pub async fn write_stripe(
        &self,
        offset: u64,
        chunk: Bytes,
        chunk_checksums: Option<&[u32]>,
    ) -> Result<Stripe, FileError> {
        let id = StripeId(rand::random());
        let shards = self.code.encode(&chunk, self.unit_taken)?;
        let checksums = self.shard_checksums(&shards, chunk.len(), chunk_checksums);
        let m = self.code.parity_shards();
        let mut nodes = place(&self.ds.candidates(), id, shards.len(), m)?;
        let puts = shards
            .iter()
            .zip(&checksums)
            .enumerate()
            .map(|(i, (s, c))| self.put_shard(id, i, s.clone(), c.clone(), nodes[i]));
        let results = futures::future::join_all(puts).await;
        for (i, result) in results.into_iter().enumerate() {
            let mut last = match result {
                Ok(()) => continue,
                Err(e) => e,
            };
            let mut placed = false;
            for _ in 1..PUT_ATTEMPTS {
                let Some(other) = self.replacement(id, &nodes, i) else {
                    break;
                };
                match self
                    .put_shard(id, i, shards[i].clone(), checksums[i].clone(), other)
                    .await
                {
                    Ok(()) => {
                        nodes[i] = other;
                        placed = true;
                        break;
                    }
                    Err(e) => {
                        nodes[i] = other;
                        last = e;
                    }
                }
            }
            if !placed {
                return Err(FileError::Stripe {
                    offset,
                    reason: format!("shard {i} could not be stored: {last}"),
                });
            }
        }
        Ok(Stripe {
            stripe_id: id.0.to_be_bytes().to_vec(),
            offset,
            length: chunk.len() as u64,
            shards: shards
                .iter()
                .zip(&nodes)
                .zip(&checksums)
                .enumerate()
                .map(|(i, ((s, n), c))| ShardLocation {
                    index: i as u32,
                    dataserver: n.0,
                    crc32c: crc_of_blocks(c, self.erasure.block_bytes, s.len() as u64),
                })
                .collect(),
        })
    }

    /// The block checksums of each shard. A data shard that is a whole slice of the chunk,
    /// cut at block boundaries the client's checksums share, takes those; the others
    /// (parity, a padded tail) are computed.
    fn shard_checksums(&self, shards: &[Bytes], chunk_len: usize, chunk_checksums: Option<&[u32]>) -> Vec<Vec<u32>> {
        let block = self.erasure.block_bytes as usize;
        let shard_len = shards.first().map_or(0, Bytes::len);
        let blocks_per_shard = shard_len / block.max(1);
        let reusable =
            chunk_checksums.filter(|_| self.erasure.block_bytes == FILE_BLOCK_BYTES && shard_len.is_multiple_of(block));
        shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let whole_slice = i < self.code.data_shards() && (i + 1) * shard_len <= chunk_len;
                match reusable.and_then(|c| c.get(i * blocks_per_shard..(i + 1) * blocks_per_shard)) {
                    Some(c) if whole_slice => c.to_vec(),
                    _ => block_checksums(s, self.erasure.block_bytes),
                }
            })
            .collect()
    }

    /// Another dataserver for shard `index`: not holding a shard of this stripe, in a
    /// hall that still has room under the hall rule.
    fn replacement(&self, id: StripeId, nodes: &[NodeId], index: usize) -> Option<NodeId> {
        let m = self.code.parity_shards();
        let mut per_hall: HashMap<_, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if i != index {
                if let Some(h) = self.ds.hall(*n) {
                    *per_hall.entry(h.clone()).or_default() += 1;
                }
            }
        }
        let free: Vec<_> = self
            .ds
            .candidates()
            .into_iter()
            .filter(|c| !nodes.contains(&c.node) && per_hall.get(&c.hall).copied().unwrap_or(0) < m)
            .collect();
        place(&free, id, 1, m).ok().and_then(|v| v.first().copied())
    }

    async fn put_shard(
        &self,
        id: StripeId,
        index: usize,
        data: Bytes,
        checksums: Vec<u32>,
        node: NodeId,
    ) -> Result<(), String> {
        let shard = ShardId::new(id, index as u8);
        let result = match self.ds.client(node).await {
            Ok(c) => c
                .put_checksummed(shard, self.erasure.block_bytes, checksums, data)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.ds.answered(node);
                Ok(())
            }
            Err(e) => {
                self.dataserver_failed(node).await;
                Err(format!("dataserver {node}: {e}"))
            }
        }
    }

    /// The whole content of file `inode`, with its attributes.
    pub async fn read(&self, inode: u64) -> Result<(Attr, Bytes), FileError> {
        let (attr, data) = self.read_range(inode, 0, u64::MAX, 0).await?;
        Ok((attr, data.into_bytes()))
    }

    /// Up to `length` bytes of file `inode` from `offset` (fewer at the end of the file,
    /// none past it), with its attributes. Only the stripes that overlap are read; bytes
    /// no stripe covers read as zero. With `min_version` 0 the newest committed layout is
    /// read; otherwise any of at least that version, from the layout cache where it has
    /// one (see `layouts`).
    pub async fn read_range(
        &self,
        inode: u64,
        offset: u64,
        length: u64,
        min_version: u64,
    ) -> Result<(Attr, FileBytes), FileError> {
        let window = (min_version > 0)
            .then(|| self.layouts.window_of(offset, length))
            .flatten();
        let Some(w) = window else {
            let (attr, mut layout) = self.get_layout(inode, offset, length).await?;
            let inline = Bytes::from(std::mem::take(&mut layout.inline_data));
            return self.read_layout(&attr, &layout, inline, offset, length).await;
        };
        let cache = &self.metrics.layout_cache;
        if let Some(hit) = self.layouts.get(inode, w, min_version) {
            match self
                .read_layout(&hit.attr, &hit.layout, hit.inline.clone(), offset, length)
                .await
            {
                Ok(read) => {
                    cache.with_label_values(&["hit"]).inc();
                    return Ok(read);
                }
                Err(e) => {
                    // Its shards may have been collected after a newer commit.
                    debug!(inode, "a read from a cached layout failed ({e}): reading it again");
                    cache.with_label_values(&["failed"]).inc();
                    self.layouts.forget(inode, w);
                }
            }
        } else {
            cache.with_label_values(&["miss"]).inc();
        }
        let (start, len) = self.layouts.window_range(w);
        let (attr, layout) = self.get_layout(inode, start, len).await?;
        let fetched = self.layouts.put(inode, w, attr, layout);
        self.read_layout(&fetched.attr, &fetched.layout, fetched.inline.clone(), offset, length)
            .await
    }

    /// The layout of bytes `offset..offset + length` of file `inode` (its stripes that
    /// overlap them), from the metadata group, with the file's attributes.
    async fn get_layout(&self, inode: u64, offset: u64, length: u64) -> Result<(Attr, Layout), FileError> {
        let only = GetLayout {
            inode,
            offset,
            length,
            ..GetLayout::default()
        };
        match self.meta.call(Op::GetLayout(only)).await? {
            meta_reply::Result::Layout(l) => Ok((l.attr.unwrap_or_default(), l.layout.unwrap_or_default())),
            other => Err(FileError::Layout(format!("unexpected reply {other:?}"))),
        }
    }

    /// [`Files::read_range`] from `layout` (whose inline bytes are `inline`).
    async fn read_layout(
        &self,
        attr: &Attr,
        layout: &Layout,
        inline: Bytes,
        offset: u64,
        length: u64,
    ) -> Result<(Attr, FileBytes), FileError> {
        let start = offset.min(attr.size);
        let end = offset.saturating_add(length).min(attr.size);
        let len = usize::try_from(end - start).map_err(|_| FileError::Layout("range beyond memory".into()))?;
        let mut out = FileBytesBuilder::default();
        place_piece(&mut out, start..end, 0, inline, &[]);
        // An older leader sends every stripe, whatever the range.
        let wanted: Vec<(Stripe, Range<u64>)> = layout
            .stripes
            .iter()
            .filter_map(|s| stripe_part(s, &(start..end)).map(|part| (s.clone(), part)))
            .collect();
        if !wanted.is_empty() {
            let code = ErasureCode::new(layout.data_shards as usize, layout.parity_shards as usize)?;
            let mut stripes = stream::iter(wanted)
                .map(|(s, part)| async move {
                    let pieces = self.read_part(&code, &s, part).await?;
                    Ok::<_, FileError>((s.offset, pieces))
                })
                .buffered(STRIPES_IN_FLIGHT);
            while let Some((stripe_at, pieces)) = stripes.try_next().await? {
                for (at, piece, checksums) in pieces {
                    place_piece(&mut out, start..end, stripe_at + at, piece, &checksums);
                }
            }
        }
        // Bytes no stripe covers (a hole, or a stripe shorter than the file) read as zero.
        out.push_zeros(len - out.len() as usize);
        Ok((*attr, out.finish()))
    }

    /// Reads shard `loc` of stripe `id`: the whole shard, checked against the layout's
    /// crc32c, or with `part` the blocks that cover those bytes of it.
    async fn fetch(&self, stripe: &Stripe, id: StripeId, loc: &ShardLocation, part: Option<Range<u64>>) -> Fetched {
        let node = NodeId(loc.dataserver);
        let Ok(index) = u8::try_from(loc.index) else {
            return Fetched::Unavailable;
        };
        let shard = ShardId::new(id, index);
        let got = match (self.ds.client(node).await, part) {
            (Ok(c), None) => c
                .get_whole(shard)
                .await
                .map(|blocks| (blocks.crc32c() == loc.crc32c).then(|| (blocks.bytes.len() as u64, blocks))),
            (Ok(c), Some(part)) => c.get_part(shard, part.start, part.end - part.start).await.map(Some),
            (Err(e), _) => Err(e),
        };
        match got {
            Ok(Some((shard_len, blocks))) => {
                self.ds.answered(node);
                Fetched::Verified { shard_len, blocks }
            }
            Ok(None) => {
                warn!(
                    stripe = stripe.offset,
                    index = loc.index,
                    "shard does not match its layout checksum"
                );
                Fetched::Corrupt
            }
            // A block failed its checksum: the node itself is fine.
            Err(e) if e.is_corrupt() => {
                warn!(
                    stripe = stripe.offset,
                    index = loc.index,
                    "corrupt shard on {node}: {e}"
                );
                Fetched::Corrupt
            }
            // The node answered that it holds no such shard (collected after a newer
            // commit, or never stored): the shard is missing, the node is fine.
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                warn!(stripe = stripe.offset, index = loc.index, "shard missing on {node}");
                self.ds.answered(node);
                Fetched::Unavailable
            }
            Err(e) => {
                warn!(
                    stripe = stripe.offset,
                    index = loc.index,
                    "reading shard from {node}: {e}"
                );
                self.dataserver_failed(node).await;
                Fetched::Unavailable
            }
        }
    }

    /// Rewrites the `corrupt` shards of stripe `id` from its decoded bytes `full` (all k
    /// data shards, padding included) onto the dataservers that hold them, which replace
    /// their damaged copies. A rebuilt shard is written only if it matches the layout's
    /// checksum.
    async fn repair(self, code: ErasureCode, id: StripeId, full: Bytes, corrupt: Vec<ShardLocation>) {
        let shard_len = full.len() / code.data_shards().max(1);
        let shards = match code.encode(&full, shard_len) {
            Ok(s) => s,
            Err(e) => return warn!(stripe = %id.0, "re-encoding a stripe to repair it: {e}"),
        };
        for loc in corrupt {
            let Some(bytes) = shards.get(loc.index as usize) else {
                continue;
            };
            let checksums = block_checksums(bytes, self.erasure.block_bytes);
            if crc_of_blocks(&checksums, self.erasure.block_bytes, bytes.len() as u64) != loc.crc32c {
                warn!(stripe = %id.0, index = loc.index, "a rebuilt shard does not match its layout: not written");
                continue;
            }
            let node = NodeId(loc.dataserver);
            match self
                .put_shard(id, loc.index as usize, bytes.clone(), checksums, node)
                .await
            {
                Ok(()) => {
                    self.metrics.repaired_shards.inc();
                    info!(stripe = %id.0, index = loc.index, dataserver = loc.dataserver, "corrupt shard repaired")
                }
                Err(e) => warn!(stripe = %id.0, index = loc.index, "repairing a corrupt shard: {e}"),
            }
        }
    }

    /// Bytes `part` of stripe `s` (offsets in the stripe, within its length), as pieces
    /// in order, each with its offset in the stripe and the checksums of its whole blocks
    /// of [`FILE_BLOCK_BYTES`] where a dataserver sent them (none for decoded shards), so
    /// that a reply neither copies nor checksums them again. A piece may start before
    /// `part` and end after it.
    async fn read_part(&self, code: &ErasureCode, s: &Stripe, part: Range<u64>) -> Result<Vec<Piece>, FileError> {
        let id_bytes: [u8; STRIPE_ID_BYTES] = s.stripe_id.as_slice().try_into().map_err(|_| FileError::Stripe {
            offset: s.offset,
            reason: "stripe id is not 16 bytes".into(),
        })?;
        let id = StripeId(u128::from_be_bytes(id_bytes));
        if part.start > 0 || part.end < s.length {
            if let Some(pieces) = self.read_stripe_part(code, s, id, part).await {
                return Ok(pieces);
            }
        }
        self.read_stripe(code, s, id).await
    }

    /// [`Files::read_part`] from the data shards that hold `part` alone, each asked for
    /// the blocks that cover its share. `None` when one of them cannot give it: its
    /// dataserver is down or suspect, a block is corrupt, or the shard is longer than the
    /// stripe's length implies (a truncate shortened the stripe, so its bytes lie
    /// elsewhere); the whole stripe is then read, decoding and repairing as needed.
    async fn read_stripe_part(
        &self,
        code: &ErasureCode,
        s: &Stripe,
        id: StripeId,
        part: Range<u64>,
    ) -> Option<Vec<Piece>> {
        let shard_len = code.shard_len(usize::try_from(s.length).ok()?) as u64;
        let shards = part.start / shard_len..part.end.div_ceil(shard_len);
        let reads = shards.map(|i| async move {
            let from = i * shard_len;
            let loc = s
                .shards
                .iter()
                .find(|l| u64::from(l.index) == i)
                .filter(|l| !self.ds.is_suspect(NodeId(l.dataserver)))?;
            let share = part.start.max(from) - from..part.end.min(from + shard_len) - from;
            let Fetched::Verified { shard_len: len, blocks } = self.fetch(s, id, loc, Some(share)).await else {
                return None;
            };
            if len != shard_len {
                return None;
            }
            let at = from + u64::from(blocks.first_block) * u64::from(blocks.block_bytes);
            let (bytes, mut sums) = reusable_checksums(blocks);
            // What lies past the stripe's length is padding.
            let keep = s.length.saturating_sub(at).min(bytes.len() as u64) as usize;
            sums.truncate(keep / FILE_BLOCK_BYTES as usize);
            Some((at, bytes.slice(..keep), sums))
        });
        futures::future::join_all(reads).await.into_iter().collect()
    }

    /// The whole of stripe `s` ([`Files::read_part`]): its data shards, decoded where
    /// needed.
    async fn read_stripe(&self, code: &ErasureCode, s: &Stripe, id: StripeId) -> Result<Vec<Piece>, FileError> {
        let bad = |reason: String| FileError::Stripe {
            offset: s.offset,
            reason,
        };
        let (k, total) = (code.data_shards(), code.total_shards());
        let mut shards: Vec<Option<Bytes>> = vec![None; total];
        // Block checksums of the shards fetched whole; a shard decoded later has none.
        let mut checksums: Vec<Vec<u32>> = vec![Vec::new(); total];
        let mut corrupt = Vec::new();
        // k shards first: data shards (no decoding needed), with parity in place of those
        // on dataservers that failed lately (a dark hall costs no second round trip);
        // the rest only for what is missing.
        let mut order: Vec<&ShardLocation> = s.shards.iter().filter(|l| (l.index as usize) < total).collect();
        order.sort_by_key(|l| (self.ds.is_suspect(NodeId(l.dataserver)), l.index as usize >= k, l.index));
        let (first, rest) = order.split_at(k.min(order.len()));
        for wanted in [first.to_vec(), rest.to_vec()] {
            let fetched = futures::future::join_all(wanted.iter().map(|l| self.fetch(s, id, l, None))).await;
            for (loc, got) in wanted.iter().zip(fetched) {
                match got {
                    Fetched::Verified { blocks, .. } => {
                        let i = loc.index as usize;
                        let (bytes, sums) = reusable_checksums(blocks);
                        (shards[i], checksums[i]) = (Some(bytes), sums);
                    }
                    Fetched::Corrupt => corrupt.push(**loc),
                    Fetched::Unavailable => {}
                }
            }
            if shards.iter().flatten().count() >= k {
                break;
            }
        }
        let shard_len = shards
            .iter()
            .flatten()
            .map(Bytes::len)
            .next()
            .ok_or_else(|| bad("no shard could be read".into()))?;
        if shards[..k].iter().any(Option::is_none) {
            self.metrics.degraded_stripes.inc();
        }
        self.metrics.corrupt_shards.inc_by(corrupt.len() as u64);
        // Decode at the encoded length (a truncate may have shortened the stripe since).
        let data = code.decode(&shards, shard_len * k)?;
        if !corrupt.is_empty() {
            let mut full = BytesMut::with_capacity(shard_len * k);
            for d in &data {
                full.extend_from_slice(d);
            }
            // The reader does not wait for the repair.
            tokio::spawn(self.clone().repair(*code, id, full.freeze(), corrupt));
        }
        // The stripe's bytes end inside its shards: what follows is padding.
        let mut left = usize::try_from(s.length).unwrap_or(usize::MAX);
        Ok(data
            .into_iter()
            .zip(checksums)
            .enumerate()
            .map(|(i, (d, mut sums))| {
                let piece = d.slice(..d.len().min(left));
                left -= piece.len();
                // A fetched shard's checksums hold for the whole blocks the piece keeps;
                // a decoded one has none.
                sums.truncate(piece.len() / FILE_BLOCK_BYTES as usize);
                ((i * shard_len) as u64, piece, sums)
            })
            .filter(|(_, piece, _)| !piece.is_empty())
            .collect())
    }
}

/// A fetched shard's bytes, with its block checksums where its blocks are the file
/// protocol's ([`FILE_BLOCK_BYTES`]), so that a reply reuses them; none otherwise.
fn reusable_checksums(blocks: ChecksummedBlocks) -> (Bytes, Vec<u32>) {
    let sums = match blocks.block_bytes {
        FILE_BLOCK_BYTES => blocks.checksums,
        _ => Vec::new(),
    };
    (blocks.bytes, sums)
}

/// Appends to `out`, which holds the file bytes of `range` from its start on, the part of
/// `piece` (file bytes from `at`, with the checksums `known` of its first whole blocks)
/// that falls in the range. Pieces come in file order without overlapping (layouts are
/// checked for that); a gap before one is filled with zeros.
fn place_piece(out: &mut FileBytesBuilder, range: std::ops::Range<u64>, at: u64, piece: Bytes, known: &[u32]) {
    let from = at.max(range.start + out.len());
    let to = (at + piece.len() as u64).min(range.end);
    if from >= to {
        return;
    }
    let skip = from - at;
    let block = u64::from(FILE_BLOCK_BYTES);
    let known = match known.get((skip / block) as usize..) {
        Some(rest) if skip.is_multiple_of(block) => rest,
        _ => &[],
    };
    out.push_zeros((from - range.start - out.len()) as usize);
    out.push(piece.slice(skip as usize..(to - at) as usize), known);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_land_where_they_belong_and_gaps_read_as_zero() {
        // The range 2..12 of a file: inline bytes, a hole, pieces that start before the
        // range and run past it.
        let mut out = FileBytesBuilder::default();
        place_piece(&mut out, 2..12, 0, Bytes::from_static(b"abcd"), &[]);
        place_piece(&mut out, 2..12, 5, Bytes::from_static(b"Fgh"), &[]);
        place_piece(&mut out, 2..12, 10, Bytes::from_static(b"klmnop"), &[]);
        place_piece(&mut out, 2..12, 20, Bytes::from_static(b"past the range"), &[]);
        assert_eq!(&out.finish().into_bytes()[..], b"cd\0Fgh\0\0kl");
    }

    #[test]
    fn known_checksums_are_kept_only_where_blocks_line_up() {
        let block = FILE_BLOCK_BYTES as usize;
        let piece: Bytes = (0..3 * block).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
        let sums = block_checksums(&piece, FILE_BLOCK_BYTES);
        // Deliberately wrong "known" checksums show where they are used.
        let wrong: Vec<u32> = sums.iter().map(|c| !c).collect();
        for (start, used) in [(0, 3), (block as u64, 2), (100, 0)] {
            let mut out = FileBytesBuilder::default();
            place_piece(&mut out, start..3 * block as u64, 0, piece.clone(), &wrong);
            let got = out.finish();
            let first = start as usize / block;
            let expect_used: Vec<u32> = wrong[first..first + used].to_vec();
            assert_eq!(&got.checksums()[..used], &expect_used[..], "range from {start}");
            let fresh = block_checksums(&piece[start as usize..], FILE_BLOCK_BYTES);
            assert_eq!(&got.checksums()[used..], &fresh[used..], "range from {start}");
        }
    }
}
