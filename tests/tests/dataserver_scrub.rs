//! Invariant 5 (end-to-end checksums): bytes flipped on disk never pass a reader (`get`
//! fails as corrupt), and scrub, from the command line and in the background, reports
//! them.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cairn_common::ids::{ShardId, StripeId};
use cairn_tests::{bin_path, Dataserver};

#[tokio::test]
async fn flipped_bytes_give_corrupt_and_scrub_reports_them() {
    let mut ds = Dataserver::start("scrub_bytes_per_sec = 1073741824").await.unwrap();
    let client = ds.client().await.unwrap();
    let good = ShardId::new(StripeId(0x11), 0);
    let bad = ShardId::new(StripeId(0x22), 3);
    let data: Bytes = (0..300_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
    client.put(good, 65_536, data.clone()).await.unwrap();
    client.put(bad, 65_536, data.clone()).await.unwrap();

    let scrub = |config| {
        Command::new(bin_path("cairn-dataserver"))
            .args(["scrub", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    let clean = scrub(&ds.config);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("scrubbed 2 shards"));

    // Flip bytes in the third block of one shard, behind the dataserver's back.
    let path = ds.data_dir().join("shards").join("22").join(bad.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 65_536 + 5] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();

    let err = client.get(bad, 0, None).await.unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let err = client.get(bad, 2 * 65_536, Some(10)).await.unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert_eq!(client.get(bad, 0, Some(65_536)).await.unwrap(), data.slice(..65_536));
    assert_eq!(client.get(good, 0, None).await.unwrap(), data);

    // On demand, beside the running server: exit status 3 and the shard and block named.
    let out = scrub(&ds.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains(&format!("corrupt shard {bad} blocks [2]")), "{stdout}");

    // In the background: the server restarts, scrubs, and counts the corrupt block.
    ds.kill9();
    ds.restart().await.unwrap();
    let client = ds.client().await.unwrap();
    let mut found = 0;
    for _ in 0..200 {
        found = client.stat().await.unwrap().corrupt_blocks;
        if found > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found, 1, "background scrub did not report the corrupt block");
    assert!(ds.log().contains("corrupt shard"), "no log line for the corrupt shard");
}
