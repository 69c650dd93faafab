//! A client given another erasure code than the cluster's (a hand-written configuration,
//! or one from before the cluster's code changed) cuts its stripes by the code the logic
//! nodes announce with every namespace reply, so the nodes take its writes. And nodes take
//! shards and stripes of twice their unit, which a later build's code may cut while a
//! rolling upgrade is under way.

use std::time::Duration;

use cairn_client::{CairnClient, ClientError};
use cairn_common::config::ErasureConfig;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, CommitLayout, GetLayout, Layout, OpenSession};
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cuts_stripes_by_the_code_the_logic_nodes_announce() -> anyhow::Result<()> {
    let cluster = FileCluster::start(1, small_stripes()).await?;
    let cluster_code = small_stripes();
    let stripe = cluster_code.stripe_bytes();
    // The compiled default cuts stripes 16 times longer than these logic nodes take.
    let given = ErasureConfig::default();
    assert!(given.shard_unit_bytes > cluster_code.shard_unit_bytes);
    let client = CairnClient::new(
        cluster.logic.iter().map(|l| l.addr).collect(),
        given.clone(),
        Duration::from_secs(60),
    );
    assert_eq!(client.erasure(), given, "nothing announced before the first reply");

    let dir = client.make_dirs("/code", 0o755).await?;
    let created = client.create_in(dir, b"f", 0o644, true).await?;
    assert_eq!(client.erasure(), cluster_code, "the create's reply announced the code");
    let data = pattern(5 * stripe / 2, 3);
    let mut w = client.new_file_writer(created);
    w.write(0, &data).await?;
    w.commit().await?;
    w.close().await;

    assert_eq!(client.read_file(created.inode).await?, data);
    let layout = match client
        .meta(Op::GetLayout(GetLayout {
            inode: created.inode,
            ..Default::default()
        }))
        .await?
    {
        meta_reply::Result::Layout(l) => l.layout.unwrap_or_default(),
        other => anyhow::bail!("GetLayout: {other:?}"),
    };
    assert_eq!(layout.shard_unit_bytes, cluster_code.shard_unit_bytes);
    let lengths: Vec<u64> = layout.stripes.iter().map(|s| s.length).collect();
    assert_eq!(lengths, [stripe as u64, stripe as u64, stripe as u64 / 2]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_take_stripes_and_shards_of_twice_their_unit() -> anyhow::Result<()> {
    let code = small_stripes();
    let cluster = FileCluster::start(1, code.clone()).await?;
    let client = cluster.client();
    let (unit, k) = (code.shard_unit_bytes as usize, usize::from(code.data_shards));
    // A stripe as a build with twice the unit cuts it: shards of 2 units each.
    let data = pattern(2 * k * unit, 5);
    let stripe = client.write_stripe(0, data.clone()).await?;
    assert_eq!(stripe.length, data.len() as u64);
    let refused = client.write_stripe(0, pattern(2 * k * unit + 1, 5)).await;
    assert!(matches!(refused, Err(ClientError::BadRequest(_))), "{refused:?}");

    let dir = client.make_dirs("/grown", 0o755).await?;
    let created = client.create_in(dir, b"f", 0o644, true).await?;
    let session = match client
        .meta(Op::OpenSession(OpenSession {
            inode: created.inode,
            ttl_ms: 60_000,
            no_stripes: true,
        }))
        .await?
    {
        meta_reply::Result::Session(s) => s.session,
        other => anyhow::bail!("OpenSession: {other:?}"),
    };
    client
        .meta(Op::CommitLayout(CommitLayout {
            session,
            inode: created.inode,
            expected_version: created.layout_version,
            layout: Some(Layout {
                data_shards: code.data_shards.into(),
                parity_shards: code.parity_shards.into(),
                shard_unit_bytes: 2 * code.shard_unit_bytes,
                stripes: vec![stripe],
                ..Default::default()
            }),
            size: data.len() as u64,
        }))
        .await?;
    assert_eq!(client.read_file(created.inode).await?, data);
    Ok(())
}
