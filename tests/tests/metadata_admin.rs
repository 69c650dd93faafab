//! Admin RPCs against a real group: status of every member, removing a voter, bringing it
//! back as a learner and promoting it, and refusals for bad requests.

use std::time::{Duration, Instant};

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::admin_client::AdminClient;
use cairn_common::proto::metadata::{AddLearnerRequest, ChangeVotersRequest, Errno};
use cairn_tests::metadata::MetadataCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_and_membership_changes() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    c.mkdir(ROOT, b"d", 0o755).await?;
    let leader = cluster.leader().await.expect("a leader");
    let leader_id = cluster.nodes[leader].id;
    // Every member learns the membership and the leader within a few heartbeats.
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &cluster.nodes {
        loop {
            let s = n.status().await?;
            if s.voters == [1, 2, 3] && s.leader_id == leader_id && s.applied_index >= 2 {
                assert!(s.last_log_index >= s.applied_index, "{s:?}");
                break;
            }
            assert!(Instant::now() < deadline, "node {} status: {s:?}", n.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut admin = AdminClient::connect(format!("http://{}", cluster.nodes[leader].addr)).await?;
    let gone = cluster.nodes[(leader + 1) % 3].id;

    // Bad requests are refused and change nothing.
    let r = admin
        .add_learner(AddLearnerRequest {
            node_id: 9,
            addr: "not an address".into(),
            hall: "h".into(),
        })
        .await?
        .into_inner();
    assert_eq!(r.error.map(|e| e.errno()), Some(Errno::Einval));
    let r = admin
        .change_voters(ChangeVotersRequest {
            add: vec![42],
            remove: vec![],
        })
        .await?
        .into_inner();
    assert_eq!(r.error.map(|e| e.errno()), Some(Errno::Enoent));
    let r = admin.change_voters(ChangeVotersRequest::default()).await?.into_inner();
    assert_eq!(r.error.map(|e| e.errno()), Some(Errno::Einval));

    // Remove a voter; the group keeps serving with two.
    let r = admin
        .change_voters(ChangeVotersRequest {
            add: vec![],
            remove: vec![gone],
        })
        .await?
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    let s = r.status.expect("status");
    assert!(!s.voters.contains(&gone) && !s.learners.contains(&gone), "{s:?}");
    c.mkdir(ROOT, b"e", 0o755).await?;

    // Back as a learner (the leader's housekeeping also re-adds configured nodes), then a voter.
    let node = &cluster.nodes.iter().find(|n| n.id == gone).expect("node");
    let r = admin
        .add_learner(AddLearnerRequest {
            node_id: gone,
            addr: node.addr.to_string(),
            hall: format!("hall-{}", gone - 1),
        })
        .await?
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    let r = admin
        .change_voters(ChangeVotersRequest {
            add: vec![gone],
            remove: vec![],
        })
        .await?
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.status.expect("status").voters, vec![1, 2, 3]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.status().await?;
        if s.role == "follower" && s.applied_index >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "re-added voter did not catch up: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.readdir_all(ROOT).await?.len(), 2);
    Ok(())
}
