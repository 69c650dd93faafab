//! A three-voter metadata group of real processes: namespace operations, their POSIX
//! errors, paging, write sessions and layouts, following the leader.

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{Errno, FileKind};
use cairn_tests::metadata::MetadataCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_operations_on_three_voters() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    let d = c.mkdir(ROOT, b"data", 0o755).await?;
    assert_eq!(d.kind(), FileKind::Directory);
    let f = c.create(d.inode, b"a.bin", 0o644, true).await?;
    assert_eq!(c.lookup(d.inode, b"a.bin").await?.inode, f.inode);
    assert_eq!(
        c.create(d.inode, b"a.bin", 0o644, true).await.unwrap_err().errno(),
        Some(Errno::Eexist)
    );
    assert_eq!(
        c.rmdir(ROOT, b"data").await.unwrap_err().errno(),
        Some(Errno::Enotempty)
    );
    c.rename(d.inode, b"a.bin", ROOT, b"b.bin").await?;
    assert_eq!(
        c.lookup(d.inode, b"a.bin").await.unwrap_err().errno(),
        Some(Errno::Enoent)
    );
    assert_eq!(c.lookup(ROOT, b"b.bin").await?.inode, f.inode);
    c.rmdir(ROOT, b"data").await?;
    let s = c.statfs().await?;
    assert_eq!((s.files, s.directories), (1, 1));
    Ok(())
}
