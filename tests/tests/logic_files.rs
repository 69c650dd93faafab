//! The file data path end to end on real processes: a three-voter metadata group and
//! eight dataservers in four halls. Files of awkward sizes are written (stripes coded
//! 4+2, placed at most 2 per hall, layout committed through Raft) and read back by
//! checksum; then with dataservers killed: reads decode, writes re-place shards.

use std::sync::Arc;

use bytes::Bytes;
use cairn_common::checksum::block_checksums;
use cairn_common::config::DataserverEntry;
use cairn_common::file_wire::FILE_BLOCK_BYTES;
use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, GetLayout};
use cairn_logic::dataservers::Dataservers;
use cairn_logic::files::Files;
use cairn_tests::cluster::{pattern, small_stripes};
use cairn_tests::metadata::MetadataCluster;
use cairn_tests::Dataserver;

const SIZES: [usize; 11] = [
    0,
    1,
    4095,
    4096,
    64 * 1024,
    64 * 1024 + 1,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    5 << 20,
    (5 << 20) + 12345,
];

/// Every written file reads back whole, by checksum.
async fn check(files: &Files, written: &[(u64, u32, usize)], label: &str) -> anyhow::Result<()> {
    for &(inode, crc, len) in written {
        let (attr, bytes) = files.read(inode).await?;
        assert_eq!(
            (attr.size, bytes.len()),
            (len as u64, len),
            "{label}: size of a {len}-byte file"
        );
        assert_eq!(crc32c::crc32c(&bytes), crc, "{label}: content of a {len}-byte file");
    }
    Ok(())
}

/// Ranges of `whole`, the content of file `inode`: across stripe boundaries (`sb` bytes
/// each), inside one shard, at the end and past it. Each reads back with the checksums of
/// its blocks, whichever shards served it.
async fn check_ranges(files: &Files, inode: u64, whole: &Bytes, label: &str) -> anyhow::Result<()> {
    let len = whole.len() as u64;
    let sb = files.stripe_bytes() as u64;
    for (offset, length) in [
        (0, 1),
        (5000, 3000),
        (sb - 1, 2),
        (3 * sb - 5, sb + 10),
        (4 * sb + 70_000, 200_000),
        (len - 10, 100),
        (len + 5, 10),
    ] {
        let (_, got) = files.read_range(inode, offset, length, 0).await?;
        let from = offset.min(len) as usize;
        let to = offset.saturating_add(length).min(len) as usize;
        let sums = block_checksums(&whole[from..to], FILE_BLOCK_BYTES);
        assert_eq!(
            got.checksums(),
            &sums[..],
            "{label}: checksums of range {offset}+{length}"
        );
        assert_eq!(
            got.into_bytes(),
            whole.slice(from..to),
            "{label}: range {offset}+{length}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_round_trip_and_survive_lost_dataservers() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let mut servers = Vec::new();
    let mut entries = Vec::new();
    for i in 0..8u32 {
        let hall = format!("hall-{}", i / 2);
        let ds = Dataserver::start_in(i + 1, &hall, "scrub_bytes_per_sec = 0").await?;
        entries.push(DataserverEntry {
            node_id: i + 1,
            hall,
            addr: ds.addr,
        });
        servers.push(ds);
    }
    let meta = Arc::new(cluster.client());
    let files = Files::new(meta.clone(), Dataservers::new(&entries)?, &small_stripes());

    let mut written = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let f = meta.create(ROOT, format!("f{len}").as_bytes(), 0o644, true).await?;
        let data = pattern(len, i as u8);
        let attr = files.write(f.inode, data.clone()).await?;
        assert_eq!(attr.size, len as u64);
        written.push((f.inode, crc32c::crc32c(&data), len));
    }
    check(&files, &written, "all dataservers up").await?;

    // Ranges (a stripe holds 256 KiB here): parts of stripes come from their data shards.
    let (ranged, _, len) = written[10];
    let whole = pattern(len, 10);
    check_ranges(&files, ranged, &whole, "all dataservers up").await?;
    let sb = files.stripe_bytes() as u64;

    // The metadata group hands a reader of a range only the stripes that overlap it.
    let stripe_offsets_of = |offset, length, no_stripes| {
        let meta = meta.clone();
        async move {
            match meta
                .call(Op::GetLayout(GetLayout {
                    inode: ranged,
                    offset,
                    length,
                    no_stripes,
                }))
                .await?
            {
                meta_reply::Result::Layout(l) => Ok(l
                    .layout
                    .unwrap_or_default()
                    .stripes
                    .iter()
                    .map(|s| s.offset)
                    .collect::<Vec<_>>()),
                other => anyhow::bail!("GetLayout answered {other:?}"),
            }
        }
    };
    let stripe_offsets = |offset, length| stripe_offsets_of(offset, length, false);
    let all: Vec<u64> = (0..(len as u64).div_ceil(sb)).map(|i| i * sb).collect();
    assert!(
        stripe_offsets_of(0, 0, true).await?.is_empty(),
        "a writer's start: no stripes"
    );
    assert_eq!(stripe_offsets(0, 0).await?, all, "no length: every stripe");
    assert_eq!(stripe_offsets(0, 1).await?, [0]);
    assert_eq!(stripe_offsets(sb - 1, 2).await?, [0, sb]);
    assert_eq!(stripe_offsets(3 * sb, sb).await?, [3 * sb]);
    assert_eq!(stripe_offsets(len as u64 + 5, 10).await?, Vec::<u64>::new());

    // A writer streaming stripe by stripe: nothing is visible until the commit.
    let f = meta.create(ROOT, b"streamed", 0o644, true).await?;
    let session = meta.open_session(f.inode, 30_000).await?;
    let data = pattern(3 * sb as usize + 777, 42);
    let mut stripes = Vec::new();
    for (i, chunk) in data.chunks(sb as usize).enumerate() {
        stripes.push(
            files
                .write_stripe(i as u64 * sb, Bytes::copy_from_slice(chunk), None)
                .await?,
        );
    }
    assert_eq!(
        files.read(f.inode).await?.1.len(),
        0,
        "uncommitted stripes are invisible"
    );
    let committed = meta
        .commit_layout(
            session.session,
            f.inode,
            0,
            files.layout(stripes.clone()),
            data.len() as u64,
        )
        .await?;
    meta.close_session(session.session).await?;
    assert_eq!(files.read(f.inode).await?.1, data);

    // A stripe shortened as a truncate leaves it: its shards keep the length they were
    // encoded at, longer than its new length implies, so a part of it is found by reading
    // the whole stripe. Past its new end the file reads as zeros.
    let session = meta.open_session(f.inode, 30_000).await?;
    stripes[1].length = 100_000;
    let version = committed.layout.map_or(0, |l| l.version);
    meta.commit_layout(
        session.session,
        f.inode,
        version,
        files.layout(stripes),
        data.len() as u64,
    )
    .await?;
    meta.close_session(session.session).await?;
    let (_, got) = files.read_range(f.inode, sb + 70_000, 50_000, 0).await?;
    let mut expect = data[(sb + 70_000) as usize..(sb + 100_000) as usize].to_vec();
    expect.resize(50_000, 0);
    assert_eq!(got.into_bytes(), expect, "a part of a shortened stripe");

    // Overwrite: the new content replaces the old as one commit.
    let (inode, _, _) = written[9];
    let new = pattern(3 << 20, 99);
    files.write(inode, new.clone()).await?;
    assert_eq!(files.read(inode).await?.1, new);
    written[9] = (inode, crc32c::crc32c(&new), new.len());

    // One dataserver gone: every read still verifies (decoding where its shards were),
    // and the node's metrics show it: stripes read by decoding, the failed dataserver.
    let metrics = files.metrics();
    assert_eq!(metrics.degraded_stripes.get(), 0, "all shards were up");
    servers[0].kill9();
    check(&files, &written, "one dataserver down").await?;
    check_ranges(&files, ranged, &whole, "one dataserver down").await?;
    assert!(metrics.degraded_stripes.get() > 0);
    assert!(metrics.dataserver_failures.with_label_values(&["1"]).get() > 0);
    assert_eq!(metrics.dataserver_failures.with_label_values(&["2"]).get(), 0);
    // Two gone in different halls (m = 2): still readable.
    servers[3].kill9();
    check(&files, &written, "two dataservers down").await?;

    // Writes with dataservers down: shards go elsewhere, the hall rule still holds.
    let f = meta.create(ROOT, b"while-degraded", 0o644, true).await?;
    let data = pattern(2 << 20, 7);
    files.write(f.inode, data.clone()).await?;
    assert_eq!(files.read(f.inode).await?.1, data);

    // More than m shards of a stripe gone: the stripe cannot be decoded, yet a read of
    // bytes whose data shard is up is served from that shard alone.
    let layout = match meta
        .call(Op::GetLayout(GetLayout {
            inode: f.inode,
            ..Default::default()
        }))
        .await?
    {
        meta_reply::Result::Layout(l) => l.layout.unwrap_or_default(),
        other => anyhow::bail!("GetLayout answered {other:?}"),
    };
    let holder = |index: u32| {
        layout.stripes[0]
            .shards
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.dataserver as usize - 1)
    };
    let kept = holder(0).ok_or_else(|| anyhow::anyhow!("stripe 0 has no shard 0"))?;
    for index in 1..6 {
        match holder(index) {
            Some(node) if node != kept => servers[node].kill9(),
            _ => {}
        }
    }
    let (_, got) = files.read_range(f.inode, 1000, 20_000, 0).await?;
    assert_eq!(
        got.into_bytes(),
        data.slice(1000..21_000),
        "a part of a stripe with its shard up"
    );
    assert!(
        files.read_range(f.inode, 0, sb, 0).await.is_err(),
        "a whole stripe with 5 of its 6 shards gone"
    );
    Ok(())
}
