//! Load generators for the metadata group, and the limit they are compared with: the rate
//! of synced RocksDB WriteBatches on the same disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_common::namespace::ROOT;
use cairn_metadata::client::MetadataClient;

use crate::run_parallel;

const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// The `q` quantile of `sorted` latencies, in milliseconds (0 when there are none).
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn clients(addrs: &[String], n: usize) -> Vec<Arc<MetadataClient>> {
    (0..n)
        .map(|_| Arc::new(MetadataClient::new(addrs.to_vec(), CALL_DEADLINE)))
        .collect()
}

/// `count` creates in a fresh directory from `n` concurrent clients, then (unless
/// `creates_only`) a getattr of each created file.
pub async fn load(addrs: &[String], n: usize, count: u64, creates_only: bool) -> anyhow::Result<()> {
    let all = clients(addrs, n.max(1));
    let dir_name = format!("bench-{:016x}", rand::random::<u64>());
    let dir = all[0].mkdir(ROOT, dir_name.as_bytes(), 0o755).await?.inode;
    let inodes = Arc::new(
        (0..count)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    let start = Instant::now();
    let ids = inodes.clone();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count as usize)));
    let lat = latencies.clone();
    run_parallel(&all, 1, count, move |c, i| {
        let (ids, lat) = (ids.clone(), lat.clone());
        async move {
            let t = Instant::now();
            let a = c
                .create(dir, format!("f{i:08}").as_bytes(), 0o644, true)
                .await
                .with_context(|| format!("create f{i:08}"))?;
            lat.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed());
            ids[i as usize].store(a.inode, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let create_s = start.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort();
    let pct = |q| percentile_ms(&lat, q);
    let mut line = format!(
        "cairn meta clients={n} count={count} create_ops={:.0} create_p50_ms={:.2} create_p99_ms={:.2}",
        count as f64 / create_s,
        pct(0.5),
        pct(0.99)
    );
    if !creates_only {
        let start = Instant::now();
        let ids = inodes.clone();
        run_parallel(&all, 1, count, move |c, i| {
            let ids = ids.clone();
            async move {
                let ino = ids[i as usize].load(std::sync::atomic::Ordering::Relaxed);
                c.getattr(ino).await.with_context(|| format!("getattr {ino}"))?;
                Ok(())
            }
        })
        .await?;
        line.push_str(&format!(
            " getattr_ops={:.0}",
            count as f64 / start.elapsed().as_secs_f64()
        ));
    }
    println!("{line}");
    Ok(())
}

/// Waits for the first linearizable read; prints the time since `since_ns` (ns since the
/// epoch, when the caller started the processes).
pub async fn ready(addrs: &[String], since_ns: u128, wait: Duration) -> anyhow::Result<()> {
    let c = MetadataClient::new(addrs.to_vec(), wait);
    let s = c.statfs().await.context("first linearizable read")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    println!(
        "cairn meta-ready inodes={} ready_ms={:.1}",
        s.files + s.directories,
        now.saturating_sub(since_ns) as f64 / 1e6
    );
    Ok(())
}

/// The limit for metadata mutations: synced RocksDB WriteBatches of one small record each,
/// one after another, on the file system holding `dir`.
pub fn rocksdb_sync(dir: &Path, count: u64) -> anyhow::Result<()> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, dir).context("open RocksDB")?;
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    let value = vec![0x5au8; 200];
    let start = Instant::now();
    let mut lat = Vec::with_capacity(count as usize);
    for i in 0..count {
        let t = Instant::now();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(i.to_be_bytes(), &value);
        db.write_opt(batch, &w)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |q| percentile_ms(&lat, q);
    println!(
        "limit rocksdb synced_batches={count} batches_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        count as f64 / start.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    drop(db);
    let _ = rocksdb::DB::destroy(&opts, dir);
    Ok(())
}
