//! Raft-level behaviour with real processes: a follower that missed more than the log
//! keeps catches up from a snapshot (a RocksDB checkpoint shipped over gRPC), the Raft
//! port refuses garbage without harm, and the leader's read lease never serves a stale read.

use std::time::{Duration, Instant};

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::meta_request::Op;
use cairn_common::proto::metadata::metadata_client::MetadataClient as GrpcClient;
use cairn_common::proto::metadata::raft_client::RaftClient;
use cairn_common::proto::metadata::{meta_reply, Errno, Lookup, MetaRequest, RaftEnvelope, ReadDir};
use cairn_common::versions::API_VERSION_MIN;
use cairn_metadata::client::MetadataClient;
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

/// Reads skip the leadership check under the leader's read lease; a leader that stalls
/// past an election and then runs on must not answer from its old state. While it is
/// frozen the other voters elect a leader and commit a file; the moment it runs again it is
/// asked for that file, many times, before anything tells it of the new term: its lease ran
/// out during the stall, so it must check with the quorum, learn it no longer leads and
/// refuse. "No such file" would be a stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_stalled_past_an_election_answers_no_stale_read() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "heartbeat_ms = 50\nelection_timeout_ms = 300").await?;
    cluster.client().create(ROOT, b"before", 0o644, true).await?;
    let old = cluster.leader().await.expect("a leader");
    let mut direct = GrpcClient::connect(format!("http://{}", cluster.nodes[old].addr)).await?;
    let lookup = |name: &[u8]| MetaRequest {
        client_id: Vec::new(),
        request_id: 0,
        api_version: API_VERSION_MIN,
        op: Some(Op::Lookup(Lookup {
            parent: ROOT,
            name: name.to_vec(),
        })),
    };
    // The leader serves a read, and holds a lease from here on.
    let reply = direct.call(lookup(b"before")).await?.into_inner();
    assert!(matches!(reply.result, Some(meta_reply::Result::Attr(_))), "{reply:?}");

    cluster.nodes[old].freeze(true);
    let others: Vec<String> = (0..3)
        .filter(|&i| i != old)
        .map(|i| cluster.nodes[i].addr.to_string())
        .collect();
    let frozen_for = Instant::now();
    MetadataClient::new(others, Duration::from_secs(30))
        .create(ROOT, b"after", 0o644, true)
        .await?;
    cluster.nodes[old].freeze(false);
    let frozen_for = frozen_for.elapsed();

    let mut refused = 0;
    for _ in 0..50 {
        let reply = direct.call(lookup(b"after")).await?.into_inner();
        match reply.result {
            Some(meta_reply::Result::Attr(_)) => {}
            Some(meta_reply::Result::Error(e))
                if matches!(Errno::try_from(e.errno), Ok(Errno::NotLeader | Errno::Unavailable)) =>
            {
                refused += 1
            }
            other => panic!(
                "the former leader, frozen for {frozen_for:?}, answered a read from before the stall: {other:?}\n{}",
                cluster.logs()
            ),
        }
    }
    assert!(refused > 0, "the former leader never noticed it lost the lead");
    Ok(())
}
