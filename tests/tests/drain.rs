//! Rebuild: `cairnctl drain --wait` on a cluster from `cairnctl local up` while files are
//! written and read, and a dataserver killed for longer than the lost timeout. Afterwards
//! no committed layout references the node, every stripe again has all k+m shards on
//! distinct dataservers with at most m per hall, and every file reads back whole.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;

use cairn_client::CairnClient;
use cairn_common::config::Config;
use cairn_common::placement::partition_of;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, Dataservers, GetLayout, ListDraining, SetDraining};
use cairn_dataserver::metadata::shard_refs_in;
use cairn_metadata::client::MetadataClient;
use cairn_tests::bin_path;
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use cairn_tests::local::{cairnctl, LocalCluster};

const DRAINED: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_dataserver_leaves_every_stripe_whole_elsewhere() -> anyhow::Result<()> {
    let cluster = LocalCluster::up()?;
    let config_path = cluster.path().join("cluster.toml");
    let config = Config::load(&config_path)?;
    let client = CairnClient::new(
        config.logic_nodes.iter().map(|l| l.addr).collect(),
        config.erasure.clone(),
        Duration::from_secs(60),
    );
    let (dir, mut files) = written(&client, "/drain", 12, 3_000_000).await?;

    // Foreground load while the drain runs: new files written and read back. How many
    // depends on how fast this build is against the drain (hundreds in a release build),
    // so the names come from a counter that never wraps: an exclusive create of a name
    // already used fails with EEXIST. Contents repeat every 256 files (a pattern's seed is
    // a byte), so the files kept for the final check share 256 buffers at most.
    let stop = Arc::new(AtomicBool::new(false));
    let (first_written, load_running) = tokio::sync::oneshot::channel::<()>();
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut contents: HashMap<u8, bytes::Bytes> = HashMap::new();
            let mut first_written = Some(first_written);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let f = client
                    .create_in(dir, format!("load{n}").as_bytes(), 0o644, true)
                    .await?;
                let seed = n.to_le_bytes()[0];
                let data = contents.entry(seed).or_insert_with(|| pattern(1_500_000, seed)).clone();
                client.write_file(f.inode, data.clone()).await?;
                anyhow::ensure!(
                    client.read_file(f.inode).await? == data,
                    "load file {n} read back wrong"
                );
                written.push((f.inode, data));
                if let Some(tx) = first_written.take() {
                    let _ = tx.send(());
                }
            }
            anyhow::Ok(written)
        })
    };
    // However fast the drain (a release build's is), it starts with the load under way.
    if load_running.await.is_err() {
        // The load stopped before its first file: its error says why.
        load.await??;
        anyhow::bail!("the load stopped before writing a file");
    }
    let drain = tokio::task::spawn_blocking({
        let config_path = config_path.clone();
        move || {
            std::process::Command::new(bin_path("cairnctl"))
                .args(["drain", &DRAINED.to_string(), "--config"])
                .arg(&config_path)
                .arg("--wait")
                .output()
        }
    })
    .await??;
    stop.store(true, Ordering::Release);
    files.extend(load.await??);
    assert!(
        drain.status.success(),
        "drain failed: {}\n{}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );

    let status = cairnctl(&["status", "--config", &config_path.display().to_string(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(
        report["draining"],
        serde_json::json!([{"dataserver": DRAINED, "shards_left": 0, "lost": false}]),
        "{report}"
    );

    let halls: HashMap<u32, String> = config.dataservers.iter().map(|d| (d.node_id, d.hall.clone())).collect();
    let meta = MetadataClient::new(
        config.metadata_nodes.iter().map(|n| n.addr.to_string()).collect(),
        Duration::from_secs(30),
    );
    every_stripe_whole_without(DRAINED, &halls, &meta, &client, &files).await
}

/// `n` files of about `bytes` each written under `path`: the directory, and each file's
/// inode and content.
async fn written(client: &Arc<CairnClient>, path: &str, n: u8, bytes: usize) -> anyhow::Result<(u64, Files)> {
    let dir = client.make_dirs(path, 0o755).await?;
    let mut files = Vec::new();
    for i in 0..n {
        let f = client.create_in(dir, format!("f{i}").as_bytes(), 0o644, true).await?;
        let data = pattern(bytes + usize::from(i) * 1000, i);
        client.write_file(f.inode, data.clone()).await?;
        files.push((f.inode, data));
    }
    Ok((dir, files))
}

type Files = Vec<(u64, bytes::Bytes)>;

/// Every file's stripes have k+m shards on distinct dataservers, at most m per hall, none
/// on `gone`, and every file reads back as written.
async fn every_stripe_whole_without(
    gone: u32,
    halls: &HashMap<u32, String>,
    meta: &MetadataClient,
    client: &CairnClient,
    files: &[(u64, bytes::Bytes)],
) -> anyhow::Result<()> {
    for (inode, data) in files {
        let layout = match meta
            .call(Op::GetLayout(GetLayout {
                inode: *inode,
                ..Default::default()
            }))
            .await?
        {
            meta_reply::Result::Layout(l) => l.layout.unwrap_or_default(),
            other => anyhow::bail!("GetLayout: {other:?}"),
        };
        let (k, m) = (layout.data_shards as usize, layout.parity_shards as usize);
        for s in &layout.stripes {
            let nodes: HashSet<u32> = s.shards.iter().map(|l| l.dataserver).collect();
            assert_eq!(s.shards.len(), k + m, "inode {inode}: a stripe lost a shard");
            assert_eq!(nodes.len(), k + m, "inode {inode}: two shards on one dataserver");
            assert!(
                !nodes.contains(&gone),
                "inode {inode}: a shard left on dataserver {gone}"
            );
            let mut per_hall: HashMap<&str, usize> = HashMap::new();
            for n in &nodes {
                *per_hall.entry(halls[n].as_str()).or_default() += 1;
            }
            assert!(
                per_hall.values().all(|&c| c <= m),
                "inode {inode}: hall rule broken {per_hall:?}"
            );
        }
        assert!(client.read_file(*inode).await? == *data, "inode {inode} changed");
    }
    Ok(())
}

async fn listed(meta: &MetadataClient) -> anyhow::Result<Dataservers> {
    match meta.call(Op::ListDraining(ListDraining {})).await? {
        meta_reply::Result::Draining(d) => Ok(d),
        other => anyhow::bail!("ListDraining: {other:?}"),
    }
}

/// A dataserver whose heartbeats stop for `dataserver_lost_after_secs` is marked lost by
/// the metadata leader, and its peers rebuild its shards elsewhere with no command; when
/// it is heard again the mark goes, while an operator's drain survives a "back" notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_dataserver_is_rebuilt_elsewhere_and_welcomed_back() -> anyhow::Result<()> {
    const LOST: u32 = 3;
    let mut cluster = FileCluster::start_with(
        1,
        small_stripes(),
        "rebuild_pass_secs = 1\nrebuild_bytes_per_sec = 0",
        "dataserver_lost_after_secs = 3",
    )
    .await?;
    let client = cluster.client();
    let meta = cluster.meta.client();
    let (_, files) = written(&client, "/lost", 8, 600_000).await?;
    ensure!(
        !cluster.meta.shard_refs(LOST).await?.is_empty(),
        "dataserver {LOST} holds no shard"
    );
    // The rebuild workers split the references by stripe: parts cover them once each.
    let addrs: Vec<std::net::SocketAddr> = cluster.meta.nodes.iter().map(|n| n.addr).collect();
    let mut all = shard_refs_in(&addrs, LOST, None).await.map_err(anyhow::Error::msg)?;
    let mut parts = Vec::new();
    for p in 0..3 {
        let part = shard_refs_in(&addrs, LOST, Some((p, 3)))
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            part.iter().all(|(id, _)| partition_of(id.stripe, 3) == p),
            "part {p} holds another part's stripe"
        );
        parts.extend(part);
    }
    all.sort_unstable();
    parts.sort_unstable();
    ensure!(parts == all, "the parts do not add up to the references");

    cluster.dataservers[LOST as usize - 1].kill9();
    let start = Instant::now();
    loop {
        let d = listed(&meta).await?;
        if d.lost.contains(&LOST) && cluster.meta.shard_refs(LOST).await?.is_empty() {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "dataserver {LOST} not rebuilt elsewhere: listed {d:?}, {} shards left",
            cluster.meta.shard_refs(LOST).await?.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let halls: HashMap<u32, String> = (1..=8u32).map(|n| (n, format!("hall-{}", (n - 1) / 2))).collect();
    every_stripe_whole_without(LOST, &halls, &meta, &client, &files).await?;

    // Back: its peers clear the mark, and new stripes may land on it again.
    cluster.dataservers[LOST as usize - 1].restart().await?;
    let start = Instant::now();
    while listed(&meta).await?.ids.contains(&LOST) {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "dataserver {LOST} still marked lost"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every dataserver's heartbeats reach the leader: none is silent.
    let d = listed(&meta).await?;
    ensure!(d.silent.is_empty(), "dataservers silent while all run: {d:?}");

    // An operator's drain is not undone by "back".
    let drain = |draining, lost| {
        Op::SetDraining(SetDraining {
            dataserver: 5,
            draining,
            lost,
        })
    };
    meta.call(drain(true, false)).await?;
    meta.call(drain(false, true)).await?;
    meta.call(drain(true, true)).await?;
    let d = listed(&meta).await?;
    ensure!(d.ids == [5] && d.lost.is_empty(), "operator drain changed: {d:?}");
    meta.call(drain(false, false)).await?;
    ensure!(listed(&meta).await?.ids.is_empty());
    Ok(())
}
