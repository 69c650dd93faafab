//! Load generators for the metadata group, and the limit they are compared with: the rate
//! of synced RocksDB WriteBatches on the same disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, CommitLayout, CommitStripes, GetLayout, Layout, ShardLocation, Stripe,
};
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

/// Stripes of the synthetic layouts `layouts` commits: 4+2 of 1 MiB units.
const LAYOUT_STRIPE_BYTES: u64 = 4 << 20;
/// Stripes one commit adds while a file grows to the next size measured.
const FILL_STRIPES: u64 = 2000;
/// What a ranged layout read covers: one 64 KiB file read.
const READ_BYTES: u64 = 64 << 10;

fn synthetic_stripe(slot: u64) -> Stripe {
    Stripe {
        stripe_id: rand::random::<u128>().to_be_bytes().to_vec(),
        offset: slot * LAYOUT_STRIPE_BYTES,
        length: LAYOUT_STRIPE_BYTES,
        shards: (0..6)
            .map(|i| ShardLocation {
                index: i,
                dataserver: i + 1,
                crc32c: rand::random(),
            })
            .collect(),
    }
}

fn synthetic_layout(stripes: Vec<Stripe>) -> Layout {
    Layout {
        data_shards: 4,
        parity_shards: 2,
        shard_unit_bytes: 1 << 20,
        stripes,
        ..Layout::default()
    }
}

/// Latencies of `count` runs of `f` (given the run's index), sorted.
async fn timed<F, Fut>(count: u64, mut f: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut lat = Vec::with_capacity(count as usize);
    for i in 0..count {
        let t = Instant::now();
        f(i).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// What commits and reads of a file's layout cost as the file grows: at each of `sizes`
/// stripes (of 4 MiB, so 1000 stripes are 4 GiB), `commits` appends of one stripe
/// committed as that stripe alone (`CommitStripes`) and as the whole layout
/// (`CommitLayout`: what every commit sent before layouts were stored by stripe, and what
/// a writer sends a group whose entries predate that), then `reads` layout reads for one
/// 64 KiB file read at random offsets, and one read of the whole layout. The stripes are
/// synthetic: only the metadata group is measured.
pub async fn layouts(addrs: &[String], sizes: &[u64], commits: u64, reads: u64) -> anyhow::Result<()> {
    let c = MetadataClient::new(addrs.to_vec(), CALL_DEADLINE);
    let name = format!("layouts-{:016x}", rand::random::<u64>());
    let inode = c.create(ROOT, name.as_bytes(), 0o644, true).await?.inode;
    let mut all: Vec<Stripe> = Vec::new();
    let mut version = 0;
    let commit_stripes = |version: u64, keep_below: u64, stripes: Vec<Stripe>, size: u64| {
        Op::CommitStripes(CommitStripes {
            inode,
            expected_version: version,
            layout: Some(synthetic_layout(stripes)),
            size,
            keep_below,
            ..CommitStripes::default()
        })
    };
    let ms = |lat: &[Duration]| percentile_ms(lat, 0.5);
    for &target in sizes {
        while (all.len() as u64) < target {
            let n = all.len() as u64;
            let new: Vec<Stripe> = (n..target.min(n + FILL_STRIPES)).map(synthetic_stripe).collect();
            let size = (n + new.len() as u64) * LAYOUT_STRIPE_BYTES;
            c.call(commit_stripes(version, n * LAYOUT_STRIPE_BYTES, new.clone(), size))
                .await
                .context("filling the layout")?;
            version += 1;
            all.extend(new);
        }
        let delta = timed(commits, |_| {
            let stripe = synthetic_stripe(all.len() as u64);
            let n = all.len() as u64;
            all.push(stripe.clone());
            let op = commit_stripes(
                version,
                n * LAYOUT_STRIPE_BYTES,
                vec![stripe],
                (n + 1) * LAYOUT_STRIPE_BYTES,
            );
            version += 1;
            let c = &c;
            async move {
                c.call(op).await.context("commit of one stripe")?;
                Ok(())
            }
        })
        .await?;
        let whole = timed(commits, |_| {
            all.push(synthetic_stripe(all.len() as u64));
            let op = Op::CommitLayout(CommitLayout {
                inode,
                expected_version: version,
                layout: Some(synthetic_layout(all.clone())),
                size: all.len() as u64 * LAYOUT_STRIPE_BYTES,
                ..CommitLayout::default()
            });
            version += 1;
            let c = &c;
            async move {
                c.call(op).await.context("commit of the whole layout")?;
                Ok(())
            }
        })
        .await?;
        let size = all.len() as u64 * LAYOUT_STRIPE_BYTES;
        let get = |offset, length| {
            Op::GetLayout(GetLayout {
                inode,
                offset,
                length,
                ..GetLayout::default()
            })
        };
        let ranged = timed(reads, |_| {
            let op = get(rand::random::<u64>() % size, READ_BYTES);
            let c = &c;
            async move {
                match c.call(op).await.context("ranged layout read")? {
                    meta_reply::Result::Layout(l) if l.layout.as_ref().is_some_and(|l| !l.stripes.is_empty()) => Ok(()),
                    other => anyhow::bail!("a ranged read got no stripe: {other:?}"),
                }
            }
        })
        .await?;
        let whole_read = timed(1, |_| {
            let c = &c;
            let op = get(0, 0);
            async move {
                c.call(op).await.context("whole layout read")?;
                Ok(())
            }
        })
        .await?;
        println!(
            "cairn meta-layout stripes={} commit_one_stripe_p50_ms={:.2} commit_whole_layout_p50_ms={:.2} \
             ranged_read_p50_ms={:.2} whole_read_ms={:.2}",
            all.len(),
            ms(&delta),
            ms(&whole),
            ms(&ranged),
            ms(&whole_read)
        );
    }
    c.unlink(ROOT, name.as_bytes()).await?;
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
