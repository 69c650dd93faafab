//! Invariant 6 (durability is explicit) across `kill -9`: every acknowledged shard
//! verifies by checksum after a restart; an unacknowledged one is whole or absent; the
//! space of unfinished puts is reclaimed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn_common::ids::{ShardId, StripeId};
use cairn_common::wire::ErrorCode;
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
        ds.kill9();
        for w in writers {
            w.await.unwrap();
        }
        ds.restart().await.unwrap();
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
