//! The orphan collector on a real cluster: the shards an overwrite replaced and those a
//! writer stored but never committed (it died) are deleted once past the grace period;
//! every shard a committed layout references stays, checked against the metadata group's
//! references, and every file still reads back whole.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use cairn_common::ids::ShardId;
use cairn_dataserver::client::DataserverClient;
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};

/// Every shard a dataserver holds, as (stripe id bytes, index).
async fn stored(addr: std::net::SocketAddr) -> anyhow::Result<BTreeSet<(Vec<u8>, u32)>> {
    let c = DataserverClient::connect(addr).await?;
    let (mut out, mut after) = (BTreeSet::new(), None::<ShardId>);
    loop {
        let (page, more) = c.list(after, 1000).await?;
        after = page.last().map(|(id, _)| *id);
        out.extend(
            page.into_iter()
                .map(|(id, _)| (id.stripe.0.to_be_bytes().to_vec(), u32::from(id.index))),
        );
        if !more {
            return Ok(out);
        }
    }
}

/// Per dataserver: (stored, referenced).
async fn census(cluster: &FileCluster) -> anyhow::Result<Vec<(BTreeSet<(Vec<u8>, u32)>, BTreeSet<(Vec<u8>, u32)>)>> {
    let mut out = Vec::new();
    for (i, ds) in cluster.dataservers.iter().enumerate() {
        let refs = cluster.meta.shard_refs(i as u32 + 1).await?.into_iter().collect();
        out.push((stored(ds.addr).await?, refs));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreferenced_shards_go_and_referenced_ones_stay() -> anyhow::Result<()> {
    let cluster =
        FileCluster::start_with(1, small_stripes(), "orphan_grace_secs = 4\norphan_pass_secs = 1", "").await?;
    let client = cluster.client();
    let dir = client.make_dirs("/orphans", 0o755).await?;
    let mut files = Vec::new();
    for i in 0..4u8 {
        let f = client.create_in(dir, format!("f{i}").as_bytes(), 0o644, true).await?;
        let data = pattern(700_000, i);
        client.write_file(f.inode, data.clone()).await?;
        files.push((f.inode, data));
    }
    // An overwrite: the replaced stripes' shards lose their references.
    files[0].1 = pattern(300_000, 40);
    client.write_file(files[0].0, files[0].1.clone()).await?;
    // A writer that dies before its commit: stripes stored, never referenced.
    for i in 0..3u8 {
        client.write_stripe(0, pattern(256 * 1024, 50 + i)).await?;
    }

    let before = census(&cluster).await?;
    for (stored, refs) in &before {
        ensure!(
            refs.is_subset(stored),
            "a referenced shard is missing: {refs:?} vs {stored:?}"
        );
    }
    let orphans: usize = before.iter().map(|(s, r)| s.len() - r.len()).sum();
    ensure!(orphans >= 3 * 6, "only {orphans} unreferenced shards to start with");

    // Past the grace period every dataserver holds exactly what layouts reference.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = census(&cluster).await?;
        for (stored, refs) in &now {
            ensure!(refs.is_subset(stored), "a referenced shard was deleted");
        }
        if now.iter().all(|(s, r)| s == r) {
            break;
        }
        ensure!(Instant::now() < deadline, "orphans still there after 60 s: {now:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (inode, data) in &files {
        ensure!(client.read_file(*inode).await? == *data, "file {inode} changed");
    }
    Ok(())
}
