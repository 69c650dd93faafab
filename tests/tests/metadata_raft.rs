//! Raft-level behaviour with real processes: a follower that missed more than the log
//! keeps catches up from a snapshot (a RocksDB checkpoint shipped over gRPC), and the Raft
//! port refuses garbage without harm.

use std::time::{Duration, Instant};

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::meta_request::Op;
use cairn_common::proto::metadata::raft_client::RaftClient;
use cairn_common::proto::metadata::{meta_reply, RaftEnvelope, ReadDir};
use cairn_metadata::db::Db;
use cairn_metadata::reads::read;
use cairn_tests::metadata::MetadataCluster;

fn names_in_root(db: &Db) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    loop {
        let op = Op::Readdir(ReadDir {
            dir: ROOT,
            after: names.last().cloned().unwrap_or_default(),
            limit: 1000,
        });
        match read(db, &op).map(|r| r.result) {
            Ok(Some(meta_reply::Result::Entries(e))) => {
                names.extend(e.entries.into_iter().map(|e| e.name));
                if e.done {
                    return names;
                }
            }
            other => panic!("readdir on the stopped node: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_from_a_snapshot() -> anyhow::Result<()> {
    let mut cluster = MetadataCluster::start(3, "snapshot_every_entries = 100").await?;
    let c = cluster.client();
    let leader = cluster.leader().await.expect("a leader");
    let lagging = (leader + 1) % 3;
    cluster.nodes[lagging].kill9();
    let missed_from = cluster.nodes[leader].status().await?.last_log_index;
    for i in 0..600 {
        c.create(ROOT, format!("f{i:04}").as_bytes(), 0o644, true).await?;
    }
    let leader_status = cluster.nodes[leader].status().await?;
    assert!(
        leader_status.purged_index > missed_from,
        "the leader purged its log past what the follower has ({} <= {missed_from})",
        leader_status.purged_index
    );
    cluster.nodes[lagging].start()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = cluster.nodes[lagging].status().await {
            if s.applied_index >= leader_status.applied_index {
                assert!(s.snapshot_index > missed_from, "caught up without a snapshot: {s:?}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "follower did not catch up\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop it and read its own database: the installed snapshot holds every file.
    cluster.nodes[lagging].kill9();
    let db = Db::open_read_only(&cluster.dir.path().join(format!("m{}/db", cluster.nodes[lagging].id)))?;
    let expected: Vec<Vec<u8>> = (0..600).map(|i| format!("f{i:04}").into_bytes()).collect();
    assert_eq!(names_in_root(&db), expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_port_refuses_garbage() -> anyhow::Result<()> {
    let mut cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    c.mkdir(ROOT, b"before", 0o755).await?;
    for node in &cluster.nodes {
        let mut raft = RaftClient::connect(format!("http://{}", node.addr)).await?;
        let bad = [
            RaftEnvelope {
                version: 99,
                payload: vec![1, 2, 3],
            },
            RaftEnvelope {
                version: 1,
                payload: (0..4096).map(|i| (i * 7 % 251) as u8).collect(),
            },
            RaftEnvelope {
                version: 1,
                payload: Vec::new(),
            },
        ];
        for env in bad {
            let e = raft.append_entries(env.clone()).await.expect_err("garbage accepted");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            let e = raft.vote(env.clone()).await.expect_err("garbage accepted");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            let e = raft.install_snapshot(env).await.expect_err("garbage accepted");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        }
    }
    for n in &mut cluster.nodes {
        assert!(n.alive(), "a node died on garbage input");
    }
    c.mkdir(ROOT, b"after", 0o755).await?;
    assert_eq!(c.readdir_all(ROOT).await?.len(), 2);
    Ok(())
}
