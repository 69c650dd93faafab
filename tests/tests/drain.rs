//! `cairnctl drain` on a cluster from `cairnctl local up`, while files are written and
//! read: afterwards no committed layout references the drained dataserver, every stripe
//! again has all k+m shards on distinct dataservers with at most m per hall, `status`
//! reports nothing left to rebuild, and every file reads back whole.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::CairnClient;
use cairn_common::config::Config;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, GetLayout};
use cairn_metadata::client::MetadataClient;
use cairn_tests::bin_path;
use cairn_tests::cluster::pattern;
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
    let dir = client.make_dirs("/drain", 0o755).await?;
    let mut files = Vec::new();
    for i in 0..12u8 {
        let f = client.create_in(dir, format!("f{i}").as_bytes(), 0o644, true).await?;
        let data = pattern(3_000_000 + usize::from(i) * 1000, i);
        client.write_file(f.inode, data.clone()).await?;
        files.push((f.inode, data));
    }

    // Foreground load while the drain runs: new files written and read back.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut n = 0u8;
            while !stop.load(Ordering::Acquire) {
                n = n.wrapping_add(1);
                let f = client
                    .create_in(dir, format!("load{n}").as_bytes(), 0o644, true)
                    .await?;
                let data = pattern(1_500_000, n);
                client.write_file(f.inode, data.clone()).await?;
                anyhow::ensure!(
                    client.read_file(f.inode).await? == data,
                    "load file {n} read back wrong"
                );
                written.push((f.inode, data));
            }
            anyhow::Ok(written)
        })
    };
    let drain = tokio::task::spawn_blocking({
        let config_path = config_path.clone();
        move || {
            std::process::Command::new(bin_path("cairnctl"))
                .args(["drain", &DRAINED.to_string(), "--config"])
                .arg(&config_path)
                .args(["--rate-mib", "0"])
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
        serde_json::json!([{"dataserver": DRAINED, "shards_left": 0}]),
        "{report}"
    );

    let halls: HashMap<u32, String> = config.dataservers.iter().map(|d| (d.node_id, d.hall.clone())).collect();
    let meta = MetadataClient::new(
        config.metadata_nodes.iter().map(|n| n.addr.to_string()).collect(),
        Duration::from_secs(30),
    );
    for (inode, data) in &files {
        let layout = match meta.call(Op::GetLayout(GetLayout { inode: *inode })).await? {
            meta_reply::Result::Layout(l) => l.layout.unwrap_or_default(),
            other => anyhow::bail!("GetLayout: {other:?}"),
        };
        let (k, m) = (layout.data_shards as usize, layout.parity_shards as usize);
        for s in &layout.stripes {
            let nodes: HashSet<u32> = s.shards.iter().map(|l| l.dataserver).collect();
            assert_eq!(s.shards.len(), k + m, "inode {inode}: a stripe lost a shard");
            assert_eq!(nodes.len(), k + m, "inode {inode}: two shards on one dataserver");
            assert!(
                !nodes.contains(&DRAINED),
                "inode {inode}: a shard left on the drained node"
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
