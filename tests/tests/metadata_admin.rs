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

/// Creates directories under `parent` from `tasks` tasks until `stop`; returns how many
/// were acknowledged and how many failed, and the longest a create took.
async fn create_until(
    c: std::sync::Arc<cairn_metadata::client::MetadataClient>,
    parent: u64,
    tasks: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize, Duration) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (c, stop) = (c.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut longest) = (0, 0, Duration::ZERO);
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                match c.mkdir(parent, format!("t{t}-{i}").as_bytes(), 0o755).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                longest = longest.max(started.elapsed());
            }
            (ok, failed, longest)
        }));
    }
    let mut total = (0, 0, Duration::ZERO);
    for h in handles {
        let (ok, failed, longest) = h.await.expect("create task");
        total = (total.0 + ok, total.1 + failed, total.2.max(longest));
    }
    total
}

/// Under a stream of creates, the leader hands over to the voter it is told to, and then,
/// idle, to the one furthest along; no create fails and every acknowledged one is there. Covers
/// both ways a hand-over goes: with three voters the target stands as soon as the leader's
/// own election is a lease old; with four the leader first silences a follower for a
/// lease, serving on with the other three. Bad requests, and a target that is down, are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_hands_over_with_no_failed_request() -> anyhow::Result<()> {
    use cairn_common::proto::metadata::{CampaignRequest, TransferLeaderRequest};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    for voters in [3, 4] {
        let mut cluster = MetadataCluster::start(voters, "").await?;
        let c = Arc::new(cluster.client());
        let parent = c.mkdir(ROOT, b"load", 0o755).await?.inode;
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(create_until(c.clone(), parent, 4, stop.clone()));
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let old = cluster.leader().await.expect("a leader");
        let to = cluster.nodes[(old + 1) % voters].id;
        let mut admin = AdminClient::connect(format!("http://{}", cluster.nodes[old].addr)).await?;
        let started = Instant::now();
        let r = admin.transfer_leader(TransferLeaderRequest { to }).await?.into_inner();
        let took = started.elapsed();
        assert!(r.error.is_none(), "{voters} voters: {r:?}");
        assert_eq!(r.status.expect("status").leader_id, to);
        assert_eq!(cluster.leader().await.map(|i| cluster.nodes[i].id), Some(to));

        // The old leader follows now and refuses to hand over; the new one refuses to hand
        // over to itself or to a stranger, and a campaign of a past term is refused.
        let r = admin
            .transfer_leader(TransferLeaderRequest { to: 0 })
            .await?
            .into_inner();
        assert_eq!(r.error.map(|e| e.errno()), Some(Errno::NotLeader));
        let new = cluster.nodes.iter().position(|n| n.id == to).expect("new leader");
        let mut new_admin = AdminClient::connect(format!("http://{}", cluster.nodes[new].addr)).await?;
        for (bad, errno) in [(to, Errno::Einval), (99, Errno::Enoent)] {
            let r = new_admin
                .transfer_leader(TransferLeaderRequest { to: bad })
                .await?
                .into_inner();
            assert_eq!(r.error.map(|e| e.errno()), Some(errno), "to {bad}");
        }
        let r = admin
            .campaign(CampaignRequest {
                term: 1,
                last_log_index: 0,
            })
            .await?
            .into_inner();
        assert_eq!(r.error.map(|e| e.errno()), Some(Errno::Estale));

        stop.store(true, Ordering::Relaxed);
        let (ok, failed, longest) = load.await?;

        // Back, with nothing else going on, to whichever voter is furthest along.
        let started = Instant::now();
        let r = new_admin
            .transfer_leader(TransferLeaderRequest { to: 0 })
            .await?
            .into_inner();
        let back = started.elapsed();
        assert!(r.error.is_none(), "{voters} voters, second hand-over: {r:?}");
        assert_ne!(r.status.expect("status").leader_id, to);
        println!("{voters} voters: hand-overs {took:.2?} and {back:.2?}, {ok} creates, longest {longest:.2?}");
        assert_eq!(failed, 0, "{voters} voters: creates failed");
        assert!(ok > 0);
        assert_eq!(
            c.readdir_all(parent).await?.len(),
            ok,
            "{voters} voters: an acknowledged create is missing"
        );

        // A target that is down is refused before anything pauses; the leader leads on.
        let leader = cluster.leader().await.expect("a leader");
        let down = (leader + 1) % voters;
        cluster.nodes[down].kill9();
        let mut admin = AdminClient::connect(format!("http://{}", cluster.nodes[leader].addr)).await?;
        let r = admin
            .transfer_leader(TransferLeaderRequest {
                to: cluster.nodes[down].id,
            })
            .await?
            .into_inner();
        assert_eq!(r.error.map(|e| e.errno()), Some(Errno::Unavailable), "{voters} voters");
        assert_eq!(cluster.leader().await, Some(leader));
        c.mkdir(parent, b"after-a-refused-hand-over", 0o755).await?;
    }
    Ok(())
}
