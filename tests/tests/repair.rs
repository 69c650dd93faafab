//! A corrupt block never reaches a reader, and a reader's stripe repairs it: bytes are
//! flipped in a stored shard file; the read decodes from the other shards, and the
//! damaged shard is rewritten on its dataserver, where it verifies again.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use cairn_common::ids::{ShardId, StripeId};
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, GetLayout};
use cairn_dataserver::client::DataserverClient;
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use cairn_tests::metrics::{sample, scrape};

/// A file of `data` written through the cluster, then one byte flipped on disk in shard
/// `index` of stripe `stripe`: the file's inode, the shard, its crc in the layout and a
/// client of the dataserver holding it.
async fn damaged(
    cluster: &FileCluster,
    data: &bytes::Bytes,
    stripe: usize,
    index: u8,
) -> anyhow::Result<(u64, ShardId, u32, DataserverClient)> {
    let client = cluster.client();
    let dir = client.make_dirs("/repair", 0o755).await?;
    let f = client.create_in(dir, b"data", 0o644, true).await?;
    client.write_file(f.inode, data.clone()).await?;
    let layout = match cluster
        .meta
        .client()
        .call(Op::GetLayout(GetLayout {
            inode: f.inode,
            ..Default::default()
        }))
        .await?
    {
        meta_reply::Result::Layout(l) => l.layout.context("a layout")?,
        other => anyhow::bail!("GetLayout answered {other:?}"),
    };
    let stripe = layout.stripes.get(stripe).context("no such stripe")?;
    let loc = stripe
        .shards
        .iter()
        .find(|l| l.index == u32::from(index))
        .context("no such shard")?;
    let id = ShardId::new(
        StripeId(u128::from_be_bytes(stripe.stripe_id.as_slice().try_into()?)),
        index,
    );
    let ds = &cluster.dataservers[loc.dataserver as usize - 1];
    let path = ds.shard_file(id).context("the shard's file")?;
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, bytes)?;
    let dsc = DataserverClient::connect(ds.addr).await?;
    ensure!(dsc.get(id, 0, None).await.is_err(), "the damage went unnoticed");
    Ok((f.inode, id, loc.crc32c, dsc))
}

/// Waits until shard `id` reads back whole from `dsc`.
async fn repaired(dsc: &DataserverClient, id: ShardId, crc: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match dsc.get(id, 0, None).await {
            Ok(shard) if crc32c::crc32c(&shard) == crc => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => anyhow::bail!("shard not repaired after 30 s: {:?}", other.map(|b| b.len())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_shard_is_decoded_around_and_rewritten() -> anyhow::Result<()> {
    let cluster = FileCluster::start(1, small_stripes()).await?;
    let client = cluster.client();
    let data = pattern(1_000_000, 3);
    let (inode, id, crc, dsc) = damaged(&cluster, &data, 0, 1).await?;
    // A small read of the damaged block (shard 1 holds file bytes 64 to 128 KiB here,
    // flipped in its middle) gets the right bytes too: the whole stripe is read instead.
    let at = 96 * 1024 - 100;
    let (got, _) = client.read_range(inode, at, 200).await?;
    ensure!(
        got == data.slice(at as usize..at as usize + 200),
        "a corrupt block reached a small read"
    );
    // The reader gets the right bytes, decoded from the other shards.
    ensure!(
        client.read_file(inode).await? == data,
        "a corrupt block reached the reader"
    );
    // And the damaged shard is rewritten: it verifies on its dataserver again.
    repaired(&dsc, id, crc).await?;
    ensure!(client.read_file(inode).await? == data);
    // The logic node's metrics tell the operator what happened.
    let seen = scrape(cluster.logic[0].metrics);
    for name in [
        "cairn_logic_corrupt_shards_total",
        "cairn_logic_degraded_stripes_total",
        "cairn_logic_repaired_shards_total",
    ] {
        ensure!(sample(&seen, name) >= Some(1.0), "{name} in:\n{seen}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_repairs_a_corrupt_shard_no_reader_touched() -> anyhow::Result<()> {
    let cluster = FileCluster::start_with(
        1,
        small_stripes(),
        "scrub_bytes_per_sec = 1000000000\nscrub_interval_secs = 1",
        "",
    )
    .await?;
    // A parity shard: no read of the file touches it while its data shards are whole.
    let data = pattern(600_000, 8);
    let (inode, id, crc, dsc) = damaged(&cluster, &data, 1, 5).await?;
    repaired(&dsc, id, crc).await?;
    ensure!(
        dsc.stat().await?.corrupt_blocks >= 1,
        "scrub did not count the corrupt block"
    );
    ensure!(cluster.client().read_file(inode).await? == data);
    Ok(())
}
