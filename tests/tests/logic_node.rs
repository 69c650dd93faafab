//! Clients through logic node processes: files written and read back by checksum, a logic
//! node killed with -9 in the middle of a large write (the client finishes on the other),
//! a dataserver killed with -9 while clients read (they go on, decoding), and garbage sent
//! to a logic node (typed errors, nothing committed, still serving).

use std::time::Duration;

use bytes::Bytes;
use cairn_common::file_wire::FileRequest;
use cairn_common::frame::{FrameDecoder, Kind};
use cairn_common::ids::RequestId;
use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{meta_request::Op, Errno, ReplaceShard, SetDraining};
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_through_logic_nodes_survive_a_killed_logic_node() -> anyhow::Result<()> {
    let mut cluster = FileCluster::start(2, small_stripes()).await?;
    let c = cluster.client();
    let dir = c.mkdir(ROOT, b"data", 0o755).await?;
    for (i, len) in [0usize, 1, 4095, 4096, 65_537, (1 << 20) + 1].into_iter().enumerate() {
        let f = c.create(dir.inode, format!("f{len}").as_bytes(), 0o644).await?;
        let data = pattern(len, i as u8);
        assert_eq!(c.write_file(f.inode, data.clone()).await?.size, len as u64);
        let back = c.read_file(f.inode).await?;
        assert_eq!(crc32c::crc32c(&back), crc32c::crc32c(&data), "{len} bytes");
        assert_eq!(back.len(), len);
    }

    // A large write; the logic node in use dies in the middle of it: once the first
    // stripes are on the dataservers, long before the last.
    let shards = |cluster: &FileCluster| {
        let addrs: Vec<_> = cluster.dataservers.iter().map(|d| d.addr).collect();
        async move {
            let mut n = 0;
            for a in addrs {
                n += cairn_dataserver::client::DataserverClient::connect(a)
                    .await?
                    .stat()
                    .await?
                    .shard_count;
            }
            anyhow::Ok(n)
        }
    };
    let before = shards(&cluster).await?;
    let big = c.create(dir.inode, b"big", 0o644).await?;
    let data = pattern(48 << 20, 77);
    let write = {
        let data = data.clone();
        async move { c.write_file(big.inode, data).await.map(|_| c) }
    };
    let task = tokio::spawn(write);
    while shards(&cluster).await? < before + 12 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!task.is_finished(), "the write ended before the logic node was killed");
    cluster.logic[0].child.kill9();
    let c = task.await??;
    let back = c.read_file(big.inode).await?;
    assert_eq!(back.len(), data.len());
    assert_eq!(
        crc32c::crc32c(&back),
        crc32c::crc32c(&data),
        "content after the logic node died"
    );
    cluster.logic[0].start().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_go_on_while_a_dataserver_is_killed() -> anyhow::Result<()> {
    let mut cluster = FileCluster::start(2, small_stripes()).await?;
    let c = cluster.client();
    let f = c.create(ROOT, b"big", 0o644).await?;
    let data = pattern(24 << 20, 5);
    c.write_file(f.inode, data.clone()).await?;
    // Sequential readers (with read-ahead) go over the file again and again, checking
    // every piece; a dataserver dies under them.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (c, data) = (c.clone(), data.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    let mut r = c.open_reader(f.inode, None);
                    let mut at = 0;
                    while at < data.len() {
                        let piece = r.read(at as u64, 1 << 20).await?;
                        anyhow::ensure!(piece[..] == data[at..at + piece.len()], "bytes at {at} differ");
                        anyhow::ensure!(!piece.is_empty(), "short read at {at}");
                        at += piece.len();
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "the reads ended before the kill"
    );
    cluster.dataservers[0].kill9();
    for r in readers {
        r.await??;
    }
    // With the dataserver still dead, a whole read verifies.
    assert_eq!(crc32c::crc32c(&c.read_file(f.inode).await?), crc32c::crc32c(&data));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logic_node_refuses_garbage() -> anyhow::Result<()> {
    let cluster = FileCluster::start(1, small_stripes()).await?;
    let addr = cluster.logic[0].addr;
    let c = cluster.client();
    let before = c
        .meta(cairn_common::proto::metadata::meta_request::Op::Statfs(
            Default::default(),
        ))
        .await?;

    // Random bytes: one error frame, then the connection closes.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.write_all(&junk).await?;
    let mut frames = tokio_util::codec::FramedRead::new(s, FrameDecoder::new(1 << 20));
    let first = frames.next().await.expect("an error frame")?;
    assert_eq!(first.kind, Kind::Error);
    assert!(frames.next().await.is_none(), "connection closed after a bad frame");

    // Well-framed but bad requests: typed errors, the connection stays.
    let s = tokio::net::TcpStream::connect(addr).await?;
    let (rd, mut wr) = s.into_split();
    let mut frames = tokio_util::codec::FramedRead::new(rd, FrameDecoder::new(64 << 20));
    let mut corrupt = FileRequest::write_stripe(0, pattern(100_000, 1)).to_frame(RequestId(1));
    let mut flipped = corrupt.data.to_vec();
    flipped[70_000] ^= 0x40;
    corrupt.data = flipped.into();
    let empty = FileRequest::write_stripe(0, Bytes::new()).to_frame(RequestId(2));
    let unknown_inode = FileRequest::Read {
        inode: 987_654,
        offset: 0,
        length: 10,
        min_version: 0,
    }
    .to_frame(RequestId(3));
    let shard_request = cairn_common::wire::Request::Stat.to_frame(RequestId(4));
    for f in [corrupt, empty, unknown_inode, shard_request] {
        wr.write_all(&f.encode_to_vec()?).await?;
        let reply = frames.next().await.expect("a reply")?;
        assert_eq!(reply.request_id, f.request_id);
        match f.request_id.0 {
            3 => assert_eq!(
                reply.kind,
                Kind::FileMetaReply,
                "ENOENT comes back as a namespace error"
            ),
            _ => assert_eq!(reply.kind, Kind::Error),
        }
    }
    // Admin operations are not taken from clients.
    let move_shard = Op::ReplaceShard(ReplaceShard {
        inode: 1,
        stripe_id: vec![0; 16],
        index: 0,
        from_dataserver: 1,
        to_dataserver: 2,
        stripe_offset: None,
    });
    let drain = Op::SetDraining(SetDraining {
        dataserver: 1,
        draining: true,
        lost: true,
    });
    for op in [move_shard, drain] {
        let refused = c.meta(op).await.expect_err("an admin op through a logic node");
        assert_eq!(refused.errno(), Some(Errno::Eperm), "{refused}");
    }
    // Nothing was committed, and the node still serves.
    let after = c
        .meta(cairn_common::proto::metadata::meta_request::Op::Statfs(
            Default::default(),
        ))
        .await?;
    assert_eq!(before, after);
    Ok(())
}
