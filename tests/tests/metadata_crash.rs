//! kill -9 and power cuts against the metadata group: the leader again and again, then
//! every voter at once. Clients keep working through it; afterwards the namespace must
//! hold exactly what they were told succeeded, each mutation applied once. In the power
//! cut tests every voter's RocksDB directory sits on a power-cut disk, which drops every
//! write and directory change not synced when the power goes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_common::namespace::ROOT;
use cairn_tests::metadata::MetadataCluster;
use cairn_tests::powercut::{power_cut, PowerCutDisk};

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
        let attr = c
            .create(ROOT, name.as_bytes(), 0o644, true)
            .await
            .map_err(|e| anyhow::anyhow!("create {name}: {e}"))?;
        // What a writer does next: the inode the create acknowledged must be there.
        let session = c
            .open_session(attr.inode, 60_000)
            .await
            .map_err(|e| anyhow::anyhow!("open a session on {name} (inode {}): {e}", attr.inode))?;
        c.close_session(session.session)
            .await
            .map_err(|e| anyhow::anyhow!("close the session on {name}: {e}"))?;
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

/// One power-cut disk per voter, and a group whose voters keep their data on them.
async fn cluster_on_power_cut_disks(dir: &std::path::Path) -> anyhow::Result<(MetadataCluster, Vec<PowerCutDisk>)> {
    let disks = (0..3)
        .map(|i| PowerCutDisk::start(&dir.join(format!("disk{i}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = disks.iter().map(|d| d.mountpoint.join("metadata")).collect();
    Ok((MetadataCluster::start_on(FAST_FAILOVER, data).await?, disks))
}

/// Cuts the power of voters `which`: frozen, their disks' unsynced state dropped, killed.
fn cut_voters(cluster: &mut MetadataCluster, disks: &[PowerCutDisk], which: &[usize]) -> anyhow::Result<()> {
    let mut nodes: Vec<_> = cluster
        .nodes
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| which.contains(i))
        .map(|(_, n)| n.process())
        .collect();
    let disks: Vec<&PowerCutDisk> = which.iter().map(|i| &disks[*i]).collect();
    let reports = power_cut(&mut nodes, &disks)?;
    eprintln!("power cut of voters {which:?}: {reports:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_again_and_again() -> anyhow::Result<()> {
    let mut cluster = MetadataCluster::start(3, FAST_FAILOVER).await?;
    leader_crashed_again_and_again(&mut cluster, |c, leader| {
        c.nodes[leader].kill9();
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_hall_loses_power_again_and_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cluster, disks) = cluster_on_power_cut_disks(dir.path()).await?;
    leader_crashed_again_and_again(&mut cluster, |c, leader| cut_voters(c, &disks, &[leader])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_voter_killed_at_once() -> anyhow::Result<()> {
    let mut cluster = MetadataCluster::start(3, FAST_FAILOVER).await?;
    every_voter_crashed_at_once(&mut cluster, |c| {
        for n in &mut c.nodes {
            n.kill9();
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_voter_loses_power_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cluster, disks) = cluster_on_power_cut_disks(dir.path()).await?;
    every_voter_crashed_at_once(&mut cluster, |c| cut_voters(c, &disks, &[0, 1, 2])).await
}

/// Five leaders crashed by `crash` under load, each restarted; then the namespace must
/// hold exactly what was acknowledged.
async fn leader_crashed_again_and_again(
    cluster: &mut MetadataCluster,
    mut crash: impl FnMut(&mut MetadataCluster, usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_workers(cluster, &stop);
    let mut kills = 0;
    // Five leaders crashed; a round where no node reports leadership yet is skipped.
    for _ in 0..15 {
        if kills == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let Some(leader) = cluster.leader().await else {
            continue;
        };
        crash(cluster, leader)?;
        kills += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.nodes[leader].start()?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let expected = join_workers(workers)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    eprintln!("{kills} leaders crashed, {} names acknowledged", expected.len());
    assert_eq!(kills, 5, "leaders crashed");
    assert!(expected.len() > 50, "too little work done: {}", expected.len());
    check_namespace(cluster, &expected).await
}

/// Two rounds of load ended by `crash` of every voter at once and a restart; after each
/// the namespace must hold exactly what was acknowledged.
async fn every_voter_crashed_at_once(
    cluster: &mut MetadataCluster,
    mut crash: impl FnMut(&mut MetadataCluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = start_workers(cluster, &stop);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        crash(cluster)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in &mut cluster.nodes {
            n.start()?;
        }
        let waited = cluster.wait_serving(Duration::from_secs(30)).await?;
        eprintln!("round {round}: serving again {waited:?} after restart");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.store(true, Ordering::Relaxed);
        // Requests in flight at the crash were retried with their ids until answered.
        let expected = join_workers(workers)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
        eprintln!("round {round}: {} names acknowledged", expected.len());
        check_namespace(cluster, &expected).await?;
        // The next round starts from this namespace: clear it.
        let c = cluster.client();
        for name in &expected {
            c.unlink(ROOT, name.as_bytes()).await?;
        }
    }
    Ok(())
}
