//! Writers against a metadata group whose entries predate sessionless and per-stripe
//! commits (a cluster formed by an older build, not yet finalized): they open a write
//! session and commit whole layouts, and every byte reads back; once the group writes
//! the newest format, they commit only the stripes they changed.
//!
//! A group whose bootstrap cannot reach every member stays at the oldest entry format
//! (the formats a silent member reads are unknown), which is how this test gets one.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use cairn_client::CairnClient;
use cairn_common::proto::metadata::admin_client::AdminClient;
use cairn_common::proto::metadata::RaiseEntryFormatRequest;
use cairn_common::versions::{ENTRY_FORMAT_MAX, ENTRY_FORMAT_MIN};
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use cairn_tests::metadata::MetadataCluster;
use cairn_tests::metrics::{sample, scrape};

/// Writes a file in several commits (appends of one and a half stripes, then a small
/// overwrite inside a stripe committed before) and checks that it reads back whole.
async fn write_in_commits(client: &std::sync::Arc<CairnClient>, name: &[u8], stripe: usize) -> anyhow::Result<()> {
    let dir = client.make_dirs("/older", 0o755).await?;
    let created = client.create_in(dir, name, 0o644, true).await?;
    let inode = created.inode;
    let mut w = client.new_file_writer(created);
    let mut expect = Vec::new();
    for seed in 0..3u8 {
        let chunk = pattern(stripe * 3 / 2, seed);
        w.write(expect.len() as u64, &chunk).await?;
        expect.extend_from_slice(&chunk);
        w.commit().await?;
    }
    let patch = pattern(1000, 9);
    let at = stripe + 123;
    w.write(at as u64, &patch).await?;
    expect[at..at + patch.len()].copy_from_slice(&patch);
    w.commit().await?;
    w.close().await;
    ensure!(
        client.read_file(inode).await? == expect,
        "{} does not read back",
        String::from_utf8_lossy(name)
    );
    Ok(())
}

/// The leader's count of `op` requests answered with `outcome`.
async fn leader_count(cluster: &FileCluster, op: &str, outcome: &str) -> anyhow::Result<f64> {
    let leader = cluster.meta.leader().await.context("no leader")?;
    let seen = scrape(cluster.meta.nodes[leader].metrics);
    let name = format!("cairn_metadata_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}}");
    Ok(sample(&seen, &name).unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_fall_back_to_whole_layouts_until_the_group_is_raised() -> anyhow::Result<()> {
    let meta = MetadataCluster::start_some(3, "", 2).await?;
    let mut cluster = FileCluster::start_on(meta, 1, small_stripes(), "").await?;
    let e = &cluster.erasure;
    let stripe = e.stripe_bytes();
    let format = cluster.meta.nodes[0].status().await?.entry_format;
    ensure!(
        format == u32::from(ENTRY_FORMAT_MIN),
        "the group writes format {format}"
    );

    write_in_commits(&cluster.client(), b"before", stripe).await?;
    ensure!(leader_count(&cluster, "commit_stripes", "ok").await? == 0.0);
    ensure!(leader_count(&cluster, "commit_stripes", "eopnotsupp").await? >= 1.0);
    ensure!(leader_count(&cluster, "commit_layout", "ok").await? >= 4.0);
    ensure!(leader_count(&cluster, "open_session", "ok").await? >= 1.0);

    // The third member comes up; the group is raised to the newest format.
    cluster.meta.nodes[2].start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = cluster.meta.leader().await.context("no leader")?;
        let addr = cluster.meta.nodes[leader].addr;
        if let Ok(mut admin) = AdminClient::connect(format!("http://{addr}")).await {
            let _ = admin.raise_entry_format(RaiseEntryFormatRequest {}).await;
        }
        if cluster.meta.nodes[leader].status().await?.entry_format == u32::from(ENTRY_FORMAT_MAX) {
            break;
        }
        ensure!(Instant::now() < deadline, "the group was not raised");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A client that has not learnt the old format commits the changed stripes alone.
    write_in_commits(&cluster.client(), b"after", stripe).await?;
    ensure!(leader_count(&cluster, "commit_stripes", "ok").await? >= 4.0);
    Ok(())
}
