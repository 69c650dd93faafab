//! A logic node serves a reader's reads from its cached layouts, yet a reader that opens
//! a file after another client replaced it sees the new content (close-to-open), and a
//! reader whose cached layout lost its shards (collected after the replacement) gets
//! the new content instead of an error.

use anyhow::{ensure, Context};
use cairn_common::ids::{ShardId, StripeId};
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, GetLayout, Layout};
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use cairn_tests::metrics::{sample, scrape};

async fn layout(cluster: &FileCluster, inode: u64) -> anyhow::Result<Layout> {
    let only = GetLayout {
        inode,
        ..Default::default()
    };
    match cluster.meta.client().call(Op::GetLayout(only)).await? {
        meta_reply::Result::Layout(l) => l.layout.context("a layout"),
        other => anyhow::bail!("GetLayout answered {other:?}"),
    }
}

/// Sample `name` of the logic node's metrics (0 when it has none yet).
fn count(cluster: &FileCluster, name: &str) -> f64 {
    sample(&scrape(cluster.logic[0].metrics), name).unwrap_or(0.0)
}

/// The logic node's count of reads by layout cache result.
fn cache_count(cluster: &FileCluster, result: &str) -> f64 {
    count(
        cluster,
        &format!("cairn_logic_layout_cache_total{{result=\"{result}\"}}"),
    )
}

const FAILED_READS: &str = r#"cairn_logic_requests_total{op="read",outcome="io"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_layouts_never_hide_a_newer_close() -> anyhow::Result<()> {
    let cluster = FileCluster::start(1, small_stripes()).await?;
    let client = cluster.client();
    let dir = client.make_dirs("/cache", 0o755).await?;
    let f = client.create_in(dir, b"data", 0o644, true).await?;
    let old = pattern(1_500_000, 1);
    let v1 = client.write_file(f.inode, old.clone()).await?.layout_version;

    // Random reads of one version: the first fetches the layout, the rest use it.
    let reader = &mut client.open_reader(f.inode, Some(v1));
    for at in [700_000u64, 10_000, 1_200_000, 300_000, 900_000] {
        let got = reader.read(at, 4096).await?;
        ensure!(got == old.slice(at as usize..at as usize + 4096), "read at {at}");
    }
    ensure!(
        cache_count(&cluster, "hit") >= 4.0,
        "reads of one version share a layout"
    );

    // Another client replaces the file; a reader that opens it now sees the new bytes,
    // though the logic node still holds the old layout.
    let new = pattern(1_500_000, 2);
    let other = cluster.client();
    let v2 = other.write_file(f.inode, new.clone()).await?.layout_version;
    ensure!(v2 > v1);
    let opened = client.getattr(f.inode).await?;
    ensure!(opened.layout_version == v2);
    let mut fresh = client.open_reader(f.inode, Some(opened.layout_version));
    ensure!(
        fresh.read(700_000, 4096).await? == new.slice(700_000..704_096),
        "a reader opened after the close read the old content"
    );

    // The old version's shards are collected: a reader still at v1, served the cached v1
    // layout, finds them gone and is answered from the newest layout instead.
    let v3_data = pattern(1_500_000, 3);
    let before = layout(&cluster, f.inode).await?;
    let mut stale = client.open_reader(f.inode, Some(v2));
    ensure!(stale.read(10_000, 4096).await? == new.slice(10_000..14_096));
    other.write_file(f.inode, v3_data.clone()).await?;
    let mut removed = 0;
    for stripe in &before.stripes {
        let id = StripeId(u128::from_be_bytes(stripe.stripe_id.as_slice().try_into()?));
        for loc in &stripe.shards {
            let shard = ShardId::new(id, u8::try_from(loc.index)?);
            let ds = &cluster.dataservers[loc.dataserver as usize - 1];
            if let Some(path) = ds.shard_file(shard) {
                std::fs::remove_file(path)?;
                removed += 1;
            }
        }
    }
    ensure!(removed > 0, "no shard file of the replaced layout was found");
    let failed = cache_count(&cluster, "failed");
    let errors = count(&cluster, FAILED_READS);
    ensure!(
        stale.read(300_000, 4096).await? == v3_data.slice(300_000..304_096),
        "a read from a layout whose shards were collected"
    );
    ensure!(cache_count(&cluster, "failed") > failed);
    // The logic node read it again itself: the client was not sent an error to retry.
    ensure!(
        count(&cluster, FAILED_READS) == errors,
        "a failed read reached the client"
    );
    Ok(())
}
