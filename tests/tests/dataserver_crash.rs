//! Invariant 6 (durability is explicit) across `kill -9` and across power cuts (the data
//! directory on a power-cut disk, which drops every write and directory change that was
//! not synced): every acknowledged shard verifies by checksum after a restart; an
//! unacknowledged one is whole or absent; the space of unfinished puts is reclaimed; and
//! start-up looks only at the puts in flight, never at every shard.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn_common::ids::{ShardId, StripeId};
use cairn_common::wire::ErrorCode;
use cairn_tests::powercut::{power_cut, PowerCutDisk};
use cairn_tests::Dataserver;
use rand::{Rng, SeedableRng};

const BLOCK: u32 = 64 * 1024;

fn shard_data(seed: u64, len: usize) -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v.into()
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("shards"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_shard_survives_kill_9() {
    let mut ds = Dataserver::start("scrub_bytes_per_sec = 0").await.unwrap();
    puts_survive_crashes(&mut ds, |ds| ds.kill9()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_shard_survives_power_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let disk = PowerCutDisk::start(dir.path()).unwrap();
    let mut ds = Dataserver::start_on(disk.mountpoint.join("data"), "scrub_bytes_per_sec = 0")
        .await
        .unwrap();
    let engine = ds
        .log()
        .lines()
        .find(|l| l.contains("disk I/O engine chosen"))
        .map(str::to_owned);
    eprintln!("on the power-cut disk: {}", engine.unwrap_or_default());
    puts_survive_crashes(&mut ds, |ds| {
        let report = power_cut(&mut [ds.process()], &[&disk]).unwrap();
        eprintln!("power cut: {report:?}");
    })
    .await;
}

/// Three rounds of puts streamed from 8 writers, each round ended by `crash` mid-stream
/// and a restart; then every acknowledged shard must verify.
async fn puts_survive_crashes(ds: &mut Dataserver, mut crash: impl FnMut(&mut Dataserver)) {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    for round in 0..3u64 {
        let acked: Arc<Mutex<HashMap<ShardId, u32>>> = Arc::default();
        let sent: Arc<Mutex<HashMap<ShardId, u32>>> = Arc::default();
        let client = Arc::new(ds.client().await.unwrap());
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let (client, acked, sent) = (client.clone(), acked.clone(), sent.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let n = seed ^ (round << 40) ^ (w << 32) ^ i;
                    let id = ShardId::new(StripeId(u128::from(n) << 8 | u128::from(w)), (i % 6) as u8);
                    let len = [1 << 20, 1, 4095, 4096, 65_537, 300_000][(n % 6) as usize];
                    let data = shard_data(n, len);
                    let crc = crc32c::crc32c(&data);
                    sent.lock().unwrap().insert(id, crc);
                    match client.put(id, BLOCK, data).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id, crc);
                        }
                        Err(_) => return, // the server died under us
                    }
                }
            }));
        }
        // Let puts stream, then cut the power mid-stream.
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        crash(ds);
        for w in writers {
            w.await.unwrap();
        }
        ds.restart().await.unwrap();
        // In flight: a put per writer, and the puts whose move into place no later
        // fsync of `staging/` made durable (one per writer at most).
        let staged = staged_at_start(&ds.log());
        assert!(
            staged <= 16,
            "round {round}: start-up went through {staged} staged files"
        );
        let client = ds.client().await.unwrap();
        let acked = acked.lock().unwrap().clone();
        let sent = sent.lock().unwrap().clone();
        assert!(
            acked.len() > 10,
            "round {round}: only {} puts acknowledged",
            acked.len()
        );
        let mut whole_unacked = 0;
        for (id, crc) in &sent {
            match client.get(*id, 0, None).await {
                Ok(data) => {
                    assert_eq!(crc32c::crc32c(&data), *crc, "shard {id} came back different");
                    if !acked.contains_key(id) {
                        whole_unacked += 1;
                    }
                }
                Err(e) => {
                    assert!(!acked.contains_key(id), "acknowledged shard {id} lost: {e}");
                    assert_eq!(e.code(), Some(ErrorCode::NotFound), "unacknowledged shard {id}: {e}");
                }
            }
        }
        let stat = client.stat().await.unwrap();
        assert_eq!(
            count_files(&ds.data_dir()) as u64,
            stat.shard_count,
            "round {round}: files of unfinished puts were not reclaimed"
        );
        eprintln!(
            "round {round}: {} acknowledged, {} sent, {} unacknowledged but whole, {} stored",
            acked.len(),
            sent.len(),
            whole_unacked,
            stat.shard_count
        );
    }
}

/// How many staged and trashed files the dataserver's last start found: only the puts and
/// deletes in flight at the crash, however many shards it holds.
fn staged_at_start(log: &str) -> u64 {
    let Some(line) = log.rsplit("disk I/O engine chosen").next() else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    field("staged=") + field("trashed=")
}
