//! kill -9 against the metadata group: the leader again and again, then every voter at
//! once. Clients keep working through it; afterwards the namespace must hold exactly what
//! they were told succeeded, each mutation applied once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_common::namespace::ROOT;
use cairn_tests::metadata::MetadataCluster;

const WORKERS: usize = 6;
const FAST_FAILOVER: &str = "heartbeat_ms = 50\nelection_timeout_ms = 300";

/// What one worker did, as acknowledged: the names it expects in the root directory.
async fn worker(cluster_addrs: Vec<String>, w: usize, stop: Arc<AtomicBool>) -> anyhow::Result<BTreeSet<String>> {
    let c = cairn_metadata::client::MetadataClient::new(cluster_addrs, Duration::from_secs(60));
    let mut names = BTreeSet::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("w{w}-{i}");
        // Exclusive: if a retry applied twice, the second would answer EEXIST.
        c.create(ROOT, name.as_bytes(), 0o644, true)
            .await
            .map_err(|e| anyhow::anyhow!("create {name}: {e}"))?;
        match i % 3 {
            1 => {
                let renamed = format!("r{w}-{i}");
                c.rename(ROOT, name.as_bytes(), ROOT, renamed.as_bytes())
                    .await
                    .map_err(|e| anyhow::anyhow!("rename {name}: {e}"))?;
                names.insert(renamed);
            }
            2 => {
                c.unlink(ROOT, name.as_bytes())
                    .await
                    .map_err(|e| anyhow::anyhow!("unlink {name}: {e}"))?;
            }
            _ => {
                names.insert(name);
            }
        }
        i += 1;
    }
    Ok(names)
}

async fn check_namespace(cluster: &MetadataCluster, expected: &BTreeSet<String>) -> anyhow::Result<()> {
    let c = cluster.client();
    let listed: BTreeSet<String> = c
        .readdir_all(ROOT)
        .await?
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    let missing: Vec<_> = expected.difference(&listed).take(5).collect();
    let extra: Vec<_> = listed.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "namespace differs from the acknowledged operations: missing {missing:?}, extra {extra:?}"
    );
    let s = c.statfs().await?;
    assert_eq!(s.files, expected.len() as u64, "file count");
    Ok(())
}

fn start_workers(
    cluster: &MetadataCluster,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<BTreeSet<String>>>> {
    (0..WORKERS)
        .map(|w| tokio::spawn(worker(cluster.addrs(), w, stop.clone())))
        .collect()
}

async fn join_workers(
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<BTreeSet<String>>>>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut expected = BTreeSet::new();
    for w in workers {
        expected.extend(w.await??);
    }
    Ok(expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_again_and_again() -> anyhow::Result<()> {
    let mut cluster = MetadataCluster::start(3, FAST_FAILOVER).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_workers(&cluster, &stop);
    let mut kills = 0;
    // Five leaders killed; a round where no node reports leadership yet is skipped.
    for _ in 0..15 {
        if kills == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let Some(leader) = cluster.leader().await else {
            continue;
        };
        cluster.nodes[leader].kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.nodes[leader].start()?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let expected = join_workers(workers)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    eprintln!("{kills} leaders killed, {} names acknowledged", expected.len());
    assert_eq!(kills, 5, "leaders killed");
    assert!(expected.len() > 50, "too little work done: {}", expected.len());
    check_namespace(&cluster, &expected).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_voter_killed_at_once() -> anyhow::Result<()> {
    let mut cluster = MetadataCluster::start(3, FAST_FAILOVER).await?;
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = start_workers(&cluster, &stop);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for n in &mut cluster.nodes {
            n.kill9();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in &mut cluster.nodes {
            n.start()?;
        }
        let waited = cluster.wait_serving(Duration::from_secs(30)).await?;
        eprintln!("round {round}: serving again {waited:?} after restart");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.store(true, Ordering::Relaxed);
        // Requests in flight at the kill were retried with their ids until answered.
        let expected = join_workers(workers)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
        eprintln!("round {round}: {} names acknowledged", expected.len());
        check_namespace(&cluster, &expected).await?;
        // The next round starts from this namespace: clear it.
        let c = cluster.client();
        for name in &expected {
            c.unlink(ROOT, name.as_bytes()).await?;
        }
    }
    Ok(())
}
