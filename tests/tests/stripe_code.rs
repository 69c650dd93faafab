//! A client given another erasure code than the cluster's (a hand-written configuration,
//! or one from before the cluster's code changed) cuts its stripes by the code the logic
//! nodes announce with every namespace reply, so the nodes take its writes.

use std::time::Duration;

use cairn_client::CairnClient;
use cairn_common::config::ErasureConfig;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, GetLayout};
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cuts_stripes_by_the_code_the_logic_nodes_announce() -> anyhow::Result<()> {
    let cluster = FileCluster::start(1, small_stripes()).await?;
    let cluster_code = small_stripes();
    let stripe = cluster_code.shard_unit_bytes as usize * usize::from(cluster_code.data_shards);
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
