//! POSIX semantics of the namespace, hostile input, write sessions and layouts, dedupe of
//! retried requests and orphan accounting, against a real three-voter group.

use std::time::Duration;

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::meta_request::Op;
use cairn_common::proto::metadata::metadata_client::MetadataClient as Grpc;
use cairn_common::proto::metadata::{
    meta_reply, Attr, Create, Errno, FileKind, GetAttr, GetLock, Layout, Lock, LockKind, MetaReply, MetaRequest, Mkdir,
    OpenLockSession, Rename, SetAttr, SetLock, ShardLocation, Stripe,
};
use cairn_common::versions::{API_VERSION_MAX, API_VERSION_MIN};
use cairn_metadata::client::{MetaClientError, MetadataClient};
use cairn_tests::metadata::MetadataCluster;

fn errno<T: std::fmt::Debug>(r: Result<T, MetaClientError>) -> Errno {
    match r {
        Err(e) => e.errno().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_semantics_and_hostile_input() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    let before = c.statfs().await?;

    // Hostile names: typed errors, nothing created.
    for (name, want) in [
        (&b""[..], Errno::Einval),
        (b".", Errno::Einval),
        (b"..", Errno::Einval),
        (b"a/b", Errno::Einval),
        (b"a\0b", Errno::Einval),
        (&[b'n'; 256][..], Errno::Enametoolong),
    ] {
        assert_eq!(errno(c.create(ROOT, name, 0o644, true).await), want, "{name:?}");
        assert_eq!(errno(c.mkdir(ROOT, name, 0o755).await), want, "{name:?}");
    }
    assert_eq!(errno(c.create(ROOT, b"m", 0o100644, true).await), Errno::Einval);
    assert_eq!(errno(c.create(999_999, b"x", 0o644, true).await), Errno::Enoent);
    assert_eq!(errno(c.readdir(ROOT, b"", 1_000_000).await), Errno::Einval);
    assert_eq!(errno(c.symlink(ROOT, b"s", b"").await), Errno::Enoent);
    assert_eq!(errno(c.symlink(ROOT, b"s", &[b't'; 5000]).await), Errno::Enametoolong);
    let after = c.statfs().await?;
    assert_eq!((after.files, after.directories), (before.files, before.directories));

    // Paths through non-directories.
    let f = c.create(ROOT, b"file", 0o644, true).await?;
    assert_eq!(errno(c.create(f.inode, b"x", 0o644, true).await), Errno::Enotdir);
    assert_eq!(errno(c.lookup(f.inode, b"x").await), Errno::Enotdir);
    assert_eq!(errno(c.readdir(f.inode, b"", 10).await), Errno::Enotdir);
    assert_eq!(errno(c.rmdir(ROOT, b"file").await), Errno::Enotdir);
    assert_eq!(errno(c.unlink(ROOT, b"nope").await), Errno::Enoent);

    // Directories, rename rules.
    let a = c.mkdir(ROOT, b"a", 0o755).await?;
    let b = c.mkdir(a.inode, b"b", 0o755).await?;
    assert_eq!(errno(c.unlink(ROOT, b"a").await), Errno::Eisdir);
    assert_eq!(errno(c.rename(ROOT, b"a", b.inode, b"inside").await), Errno::Einval);
    assert_eq!(errno(c.rename(ROOT, b"a", a.inode, b"self").await), Errno::Einval);
    assert_eq!(errno(c.rename(ROOT, b"file", ROOT, b"a").await), Errno::Eisdir);
    assert_eq!(errno(c.rename(ROOT, b"a", ROOT, b"file").await), Errno::Enotdir);
    let e = c.mkdir(ROOT, b"empty", 0o755).await?;
    assert_eq!(errno(c.rename(ROOT, b"empty", ROOT, b"a").await), Errno::Enotempty);
    // A whole directory moves atomically and replaces an empty one.
    c.rename(ROOT, b"a", ROOT, b"empty").await?;
    assert_eq!(c.lookup(ROOT, b"empty").await?.inode, a.inode);
    assert_eq!(c.lookup(a.inode, b"b").await?.inode, b.inode);
    assert_eq!(errno(c.getattr(e.inode).await), Errno::Enoent);
    assert_eq!(c.getattr(b.inode).await?.parent, a.inode);
    // A file replaces a file; the replaced inode is gone.
    let g = c.create(ROOT, b"g", 0o600, true).await?;
    c.rename(ROOT, b"file", ROOT, b"g").await?;
    assert_eq!(c.lookup(ROOT, b"g").await?.inode, f.inode);
    assert_eq!(errno(c.getattr(g.inode).await), Errno::Enoent);
    // Directory link counts.
    assert_eq!(c.getattr(a.inode).await?.nlink, 3);

    // RENAME_NOREPLACE refuses an existing name; RENAME_EXCHANGE swaps a directory and a
    // file between two parents, and the directory's ".." link moves with it.
    let rename = |parent, name: &[u8], new_parent, new_name: &[u8], no_replace, exchange| {
        Op::Rename(Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            no_replace,
            exchange,
        })
    };
    let refused = c.call(rename(ROOT, b"g", ROOT, b"empty", true, false)).await;
    assert_eq!(errno(refused), Errno::Eexist);
    assert_eq!(c.lookup(ROOT, b"empty").await?.inode, a.inode);
    let root_links = c.getattr(ROOT).await?.nlink;
    c.call(rename(a.inode, b"b", ROOT, b"g", false, true)).await?;
    assert_eq!(c.lookup(ROOT, b"g").await?.inode, b.inode);
    assert_eq!(c.lookup(a.inode, b"b").await?.inode, f.inode);
    assert_eq!(c.getattr(b.inode).await?.parent, ROOT);
    assert_eq!(c.getattr(a.inode).await?.nlink, 2);
    assert_eq!(c.getattr(ROOT).await?.nlink, root_links + 1);
    let missing = c.call(rename(ROOT, b"g", a.inode, b"nothing", false, true)).await;
    assert_eq!(errno(missing), Errno::Enoent);
    c.call(rename(a.inode, b"b", ROOT, b"g", false, true)).await?;
    assert_eq!(c.lookup(a.inode, b"b").await?.inode, b.inode);
    assert_eq!(c.getattr(a.inode).await?.nlink, 3);
    let into_itself = c.call(rename(ROOT, b"empty", a.inode, b"b", false, true)).await;
    assert_eq!(errno(into_itself), Errno::Einval);

    // Hard links and symlinks.
    let l = c.link(f.inode, b.inode, b"g-link").await?;
    assert_eq!(l.nlink, 2);
    assert_eq!(errno(c.link(a.inode, ROOT, b"dirlink").await), Errno::Eperm);
    assert_eq!(errno(c.link(f.inode, ROOT, b"g").await), Errno::Eexist);
    c.unlink(ROOT, b"g").await?;
    assert_eq!(c.getattr(f.inode).await?.nlink, 1);
    let s = c.symlink(ROOT, b"sym", b"empty/b").await?;
    assert_eq!(s.kind(), FileKind::Symlink);
    match c
        .call(Op::Readlink(cairn_common::proto::metadata::ReadLink { inode: s.inode }))
        .await?
    {
        meta_reply::Result::LinkTarget(t) => assert_eq!(t, b"empty/b"),
        other => panic!("{other:?}"),
    }

    // setattr: mode, owner, times, truncate.
    let set = c
        .setattr(SetAttr {
            inode: f.inode,
            mode: Some(0o600),
            uid: Some(1000),
            gid: Some(1000),
            mtime_ns: Some(42),
            size: Some(1 << 20),
            ..SetAttr::default()
        })
        .await?;
    assert_eq!((set.mode, set.uid, set.size, set.mtime_ns), (0o600, 1000, 1 << 20, 42));
    assert_eq!(
        errno(
            c.setattr(SetAttr {
                inode: a.inode,
                size: Some(0),
                ..SetAttr::default()
            })
            .await
        ),
        Errno::Eisdir
    );

    // Paging: every entry exactly once, in order, with pages of 7 under concurrent inserts.
    let p = c.mkdir(ROOT, b"paged", 0o755).await?;
    for i in 0..50 {
        c.create(p.inode, format!("f{i:03}").as_bytes(), 0o644, true).await?;
    }
    let mut seen = Vec::new();
    let mut after = Vec::new();
    loop {
        let (page, done) = c.readdir(p.inode, &after, 7).await?;
        assert!(page.len() <= 7);
        // Concurrent change: names sorting before the cursor never show up again.
        c.create(p.inode, format!("a-new-{}", seen.len()).as_bytes(), 0o644, true)
            .await?;
        seen.extend(page.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()));
        if done {
            break;
        }
        after = page.last().map(|e| e.name.clone()).unwrap_or_default();
    }
    let originals: Vec<String> = (0..50).map(|i| format!("f{i:03}")).collect();
    let seen_originals: Vec<&String> = seen.iter().filter(|n| n.starts_with('f')).collect();
    assert_eq!(seen_originals, originals.iter().collect::<Vec<_>>());
    Ok(())
}

fn layout(stripe_byte: u8, servers: &[u32], length: u64) -> Layout {
    Layout {
        data_shards: 4,
        parity_shards: 2,
        shard_unit_bytes: 1 << 20,
        stripes: vec![Stripe {
            stripe_id: vec![stripe_byte; 16],
            offset: 0,
            length,
            shards: servers
                .iter()
                .enumerate()
                .map(|(i, &d)| ShardLocation {
                    index: i as u32,
                    dataserver: d,
                    crc32c: 7,
                })
                .collect(),
        }],
        inline_data: Vec::new(),
        version: 0,
    }
}

/// The stripes of `dataserver`'s referenced shards; the count the leader gives for a
/// drain's progress must agree with the list.
async fn shard_refs(cluster: &MetadataCluster, dataserver: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let refs: Vec<Vec<u8>> = cluster.shard_refs(dataserver).await?.into_iter().map(|r| r.0).collect();
    assert_eq!(cluster.shard_ref_count(dataserver).await?, refs.len() as u64);
    Ok(refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_sessions_layouts_and_orphans() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    let f = c.create(ROOT, b"ckpt", 0o644, true).await?;

    // Two writers start from version 0; the second commit loses the compare-and-set.
    let s1 = c.open_session(f.inode, 30_000).await?;
    let s2 = c.open_session(f.inode, 30_000).await?;
    let v0 = s1.layout.clone().unwrap_or_default().version;
    let committed = c
        .commit_layout(s1.session, f.inode, v0, layout(1, &[1, 2, 3, 4, 5, 6], 100), 100)
        .await?;
    assert_eq!(committed.attr.map(|a| (a.size, a.layout_version)), Some((100, 1)));
    assert_eq!(
        errno(
            c.commit_layout(s2.session, f.inode, v0, layout(2, &[1, 2, 3, 4, 5, 6], 50), 50)
                .await
        ),
        Errno::Eagain
    );
    // Broken layouts are refused and change nothing.
    let mut bad = layout(3, &[1, 2, 3, 4, 5, 6], 100);
    bad.stripes[0].shards[5].index = 0;
    assert_eq!(
        errno(c.commit_layout(s1.session, f.inode, 1, bad, 100).await),
        Errno::Einval
    );
    assert_eq!(
        errno(
            c.commit_layout(s1.session, f.inode, 1, layout(3, &[1, 2, 3, 4, 5, 6], 100), 10)
                .await
        ),
        Errno::Einval
    );
    assert_eq!(c.getattr(f.inode).await?.layout_version, 1);

    // Orphan accounting: dataserver 1 holds one shard of stripe 1.
    assert_eq!(shard_refs(&cluster, 1).await?, vec![vec![1u8; 16]]);
    // Replacing the layout moves the references.
    c.commit_layout(s1.session, f.inode, 1, layout(4, &[7, 2, 3, 4, 5, 6], 100), 100)
        .await?;
    assert!(shard_refs(&cluster, 1).await?.is_empty());
    assert_eq!(shard_refs(&cluster, 7).await?, vec![vec![4u8; 16]]);

    // Unlinking an open file keeps it until the last session ends.
    c.close_session(s2.session).await?;
    c.unlink(ROOT, b"ckpt").await?;
    assert_eq!(c.getattr(f.inode).await?.nlink, 0);
    assert_eq!(shard_refs(&cluster, 7).await?.len(), 1);
    c.close_session(s1.session).await?;
    assert_eq!(errno(c.getattr(f.inode).await), Errno::Enoent);
    assert!(
        shard_refs(&cluster, 7).await?.is_empty(),
        "shards of a deleted file are orphans"
    );
    assert_eq!(errno(c.close_session(s1.session).await), Errno::Estale);

    // A lease that is not renewed expires; the leader's sweep ends it.
    let h = c.create(ROOT, b"held", 0o644, true).await?;
    let s = c.open_session(h.inode, 200).await?;
    c.unlink(ROOT, b"held").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while c.getattr(h.inode).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "expired session still holds the file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(errno(c.getattr(h.inode).await), Errno::Enoent);
    assert_eq!(
        errno(c.commit_layout(s.session, h.inode, 0, Layout::default(), 0).await),
        Errno::Estale
    );
    assert_eq!(c.statfs().await?.open_sessions, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_request_applies_once_and_gets_the_first_answer() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    let id = c.new_request_id();
    let create = || {
        Op::Create(Create {
            parent: ROOT,
            name: b"once".to_vec(),
            mode: 0o644,
            exclusive: true,
            ..Create::default()
        })
    };
    let first = c.call_as(id, create()).await?;
    let again = c.call_as(id, create()).await?;
    assert_eq!(first, again, "a retry returns the first answer");
    // A new request id is a new operation.
    assert_eq!(errno(c.call(create()).await), Errno::Eexist);
    assert_eq!(c.statfs().await?.files, 1);

    // Raw requests without an idempotency key are refused before they reach the log.
    let leader = cluster.leader().await.expect("a leader");
    let mut g = Grpc::connect(format!("http://{}", cluster.nodes[leader].addr)).await?;
    let reply = g
        .call(MetaRequest {
            client_id: vec![1; 3],
            request_id: 1,
            api_version: API_VERSION_MIN,
            op: Some(create()),
        })
        .await?
        .into_inner();
    match reply.result {
        Some(meta_reply::Result::Error(e)) => assert_eq!(e.errno(), Errno::Einval),
        other => panic!("{other:?}"),
    }
    let reply = g.call(MetaRequest::default()).await?.into_inner();
    assert!(matches!(reply.result, Some(meta_reply::Result::Error(_))));
    // A request in an API version this node does not serve gets a typed refusal, and the
    // mutation it carries is not applied.
    let unknown = Op::Mkdir(Mkdir {
        parent: ROOT,
        name: b"from-the-future".to_vec(),
        mode: 0o755,
        ..Mkdir::default()
    });
    let reply = g
        .call(MetaRequest {
            client_id: vec![2; 16],
            request_id: 1,
            api_version: API_VERSION_MAX + 1,
            op: Some(unknown),
        })
        .await?
        .into_inner();
    match reply.result {
        Some(meta_reply::Result::Error(e)) => assert_eq!(e.errno(), Errno::Version, "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert_eq!(errno(c.lookup(ROOT, b"from-the-future").await), Errno::Enoent);

    // A follower answers NotLeader with the leader's address; the client library follows it.
    // (A follower that has not heard from the leader yet answers NotLeader without an address.)
    let follower = (leader + 1) % 3;
    let mut f = Grpc::connect(format!("http://{}", cluster.nodes[follower].addr)).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = f
            .call(MetaRequest {
                op: Some(Op::Statfs(Default::default())),
                ..MetaRequest::default()
            })
            .await?
            .into_inner();
        match reply.result {
            Some(meta_reply::Result::Error(e)) => {
                assert_eq!(e.errno(), Errno::NotLeader);
                if e.leader_addr == cluster.nodes[leader].addr.to_string() {
                    break;
                }
                assert!(e.leader_addr.is_empty(), "wrong leader named: {e:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never named the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let only_follower = MetadataClient::new(vec![cluster.nodes[follower].addr.to_string()], Duration::from_secs(10));
    assert_eq!(only_follower.lookup(ROOT, b"once").await?.kind(), FileKind::Regular);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutation_reply_carries_the_directories_it_changed() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    let d1 = c.mkdir(ROOT, b"d1", 0o755).await?.inode;
    let d2 = c.mkdir(ROOT, b"d2", 0o755).await?.inode;
    let leader = cluster.leader().await.expect("a leader");
    let mut g = Grpc::connect(format!("http://{}", cluster.nodes[leader].addr)).await?;
    let mut next_id = 0;
    let mut call = |op: Op| {
        next_id += 1;
        let req = MetaRequest {
            client_id: vec![9; 16],
            request_id: next_id,
            api_version: API_VERSION_MIN,
            op: Some(op),
        };
        let mut g = g.clone();
        async move { anyhow::Ok(g.call(req).await?.into_inner()) }
    };
    let getattr = |inode| c.getattr(inode);
    let inodes = |r: &MetaReply| r.changed_dirs.iter().map(|a| a.inode).collect::<Vec<_>>();
    let create = |parent, name: &[u8]| {
        Op::Create(Create {
            parent,
            name: name.to_vec(),
            mode: 0o644,
            exclusive: true,
            ..Create::default()
        })
    };

    // A create names its parent as it is after the create: what a getattr then reads.
    let made = call(create(d1, b"f")).await?;
    let Some(meta_reply::Result::Attr(file)) = &made.result else {
        panic!("{made:?}");
    };
    assert_eq!(inodes(&made), vec![d1]);
    let after: &Attr = &made.changed_dirs[0];
    assert_eq!(after, &getattr(d1).await?);
    assert_eq!(after.entries, 1);
    assert!(
        after.mtime_ns >= file.ctime_ns,
        "the directory's mtime moved with the create"
    );

    // A rename between directories names both; a refused mutation and a read name none.
    let moved = call(Op::Rename(Rename {
        parent: d1,
        name: b"f".to_vec(),
        new_parent: d2,
        new_name: b"g".to_vec(),
        ..Rename::default()
    }))
    .await?;
    assert_eq!(inodes(&moved), vec![d1, d2]);
    assert_eq!(moved.changed_dirs, vec![getattr(d1).await?, getattr(d2).await?]);
    let refused = call(create(d2, b"g")).await?;
    assert!(
        matches!(refused.result, Some(meta_reply::Result::Error(_))),
        "{refused:?}"
    );
    assert!(refused.changed_dirs.is_empty());
    let read = g
        .call(MetaRequest {
            op: Some(Op::Getattr(GetAttr { inode: d2 })),
            ..MetaRequest::default()
        })
        .await?
        .into_inner();
    assert!(read.changed_dirs.is_empty());
    Ok(())
}

async fn lock_session(c: &MetadataClient, ttl_ms: u32) -> anyhow::Result<u64> {
    match c.call(Op::OpenLockSession(OpenLockSession { ttl_ms })).await? {
        meta_reply::Result::Session(s) => Ok(s.session),
        other => anyhow::bail!("not a session: {other:?}"),
    }
}

fn lock(session: u64, start: u64, end: u64, kind: LockKind) -> Lock {
    Lock {
        session,
        owner: 7,
        start,
        end,
        kind: kind as i32,
        pid: 42,
    }
}

async fn set_lock(c: &MetadataClient, inode: u64, lock: Lock) -> Result<meta_reply::Result, MetaClientError> {
    c.call(Op::SetLock(SetLock {
        inode,
        lock: Some(lock),
    }))
    .await
}

async fn conflict(c: &MetadataClient, inode: u64, lock: Lock) -> anyhow::Result<Option<Lock>> {
    match c
        .call(Op::GetLock(GetLock {
            inode,
            lock: Some(lock),
        }))
        .await?
    {
        meta_reply::Result::Lock(l) => Ok(l.conflict),
        other => anyhow::bail!("not a lock reply: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_refuse_bad_requests_and_go_with_their_session() -> anyhow::Result<()> {
    let cluster = MetadataCluster::start(3, "").await?;
    let c = cluster.client();
    let f = c.create(ROOT, b"locked", 0o644, true).await?;
    let (one, two) = (lock_session(&c, 30_000).await?, lock_session(&c, 30_000).await?);
    assert_eq!(c.statfs().await?.open_sessions, 2);

    // Bad requests: typed errors, nothing locked.
    let write_session = c.open_session(f.inode, 30_000).await?.session;
    let mut unknown_kind = lock(one, 0, 9, LockKind::Write);
    unknown_kind.kind = 9;
    for (inode, bad, want) in [
        (f.inode, lock(one, 10, 9, LockKind::Write), Errno::Einval),
        (f.inode, unknown_kind, Errno::Einval),
        (f.inode, lock(write_session, 0, 9, LockKind::Write), Errno::Einval),
        (f.inode, lock(999_999, 0, 9, LockKind::Write), Errno::Estale),
        (999_999, lock(one, 0, 9, LockKind::Write), Errno::Enoent),
    ] {
        assert_eq!(errno(set_lock(&c, inode, bad).await), want, "{bad:?}");
    }
    let no_lock = c
        .call(Op::SetLock(SetLock {
            inode: f.inode,
            lock: None,
        }))
        .await;
    assert_eq!(errno(no_lock), Errno::Einval);
    assert_eq!(
        conflict(&c, f.inode, lock(two, 0, u64::MAX, LockKind::Write)).await?,
        None
    );
    c.close_session(write_session).await?;

    // One session's write lock excludes the other's, which sees who holds it.
    set_lock(&c, f.inode, lock(one, 0, 99, LockKind::Write)).await?;
    assert_eq!(
        errno(set_lock(&c, f.inode, lock(two, 50, 50, LockKind::Read)).await),
        Errno::Eagain
    );
    let held = conflict(&c, f.inode, lock(two, 99, 200, LockKind::Read)).await?;
    assert_eq!(held.map(|l| (l.session, l.start, l.end, l.pid)), Some((one, 0, 99, 42)));
    set_lock(&c, f.inode, lock(two, 100, 100, LockKind::Write)).await?;

    // An inode carries a bounded number of locks.
    let limit = cairn_metadata::locks::LOCKS_PER_INODE_MAX as u64;
    let spread = |i: u64| lock(one, 1000 + 2 * i, 1000 + 2 * i, LockKind::Read);
    for i in 0..limit - 2 {
        set_lock(&c, f.inode, spread(i)).await?;
    }
    assert_eq!(errno(set_lock(&c, f.inode, spread(limit)).await), Errno::Enolck);

    // Closing a session releases its locks; another session's stay.
    c.close_session(one).await?;
    assert_eq!(conflict(&c, f.inode, lock(99, 0, 99, LockKind::Write)).await?, None);
    assert!(conflict(&c, f.inode, lock(99, 0, u64::MAX, LockKind::Write))
        .await?
        .is_some());
    assert_eq!(
        errno(set_lock(&c, f.inode, lock(one, 0, 0, LockKind::Read)).await),
        Errno::Estale
    );

    // A session whose lease runs out loses its locks, even on a file since removed.
    let short = lock_session(&c, 1_000).await?;
    let g = c.create(ROOT, b"gone", 0o644, true).await?;
    set_lock(&c, g.inode, lock(short, 0, u64::MAX, LockKind::Write)).await?;
    set_lock(&c, f.inode, lock(short, 500, 500, LockKind::Write)).await?;
    c.unlink(ROOT, b"gone").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while conflict(&c, f.inode, lock(99, 500, 500, LockKind::Write))
        .await?
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "an expired session still holds its lock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.close_session(two).await?;
    assert_eq!(
        conflict(&c, f.inode, lock(99, 0, u64::MAX, LockKind::Write)).await?,
        None
    );
    assert_eq!(c.statfs().await?.open_sessions, 0);
    Ok(())
}
