//! Nodes of one host reach each other through local sockets, and TCP still serves. One
//! test, in order, because the transport is chosen by the environment of each process:
//! a cluster on 127.0.0.1 carries a file client -> logic node -> dataservers over local
//! sockets; a client that asks one thing at a time keeps to one connection; a client
//! told to use TCP reads it back from the same nodes (a process of the previous build,
//! or on another host, speaks TCP to them); a cluster whose every process is told to use
//! TCP binds no local socket and serves the same bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_common::namespace::ROOT;
use cairn_common::transport::TRANSPORT_ENV;
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};

/// The kernel's Unix sockets named after `addr` (see `common/src/transport.rs`): how
/// many listen, and how many connections were accepted on them and are still open.
fn local_sockets(addr: SocketAddr) -> (usize, usize) {
    let table = std::fs::read_to_string("/proc/net/unix").expect("read /proc/net/unix");
    let name = format!("@cairn/{addr}");
    let (mut listening, mut connected) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path: St 01 unconnected, 03 connected.
        if fields.len() == 8 && fields[7] == name {
            match fields[5] {
                "01" => listening += 1,
                "03" => connected += 1,
                _ => {}
            }
        }
    }
    (listening, connected)
}

/// Waits until the connections of the clients dropped so far have closed.
async fn wait_for_no_local_connections(logic: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_sockets(logic).1 > 0 {
        assert!(
            Instant::now() < deadline,
            "a dropped client's local connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The content of the file written with `seed`: several stripes and a short last one.
fn content(seed: u8) -> bytes::Bytes {
    pattern((3 << 20) + 4321, seed)
}

/// Checks that `back` is the content written with `seed`.
fn check(back: &[u8], seed: u8, label: &str) {
    let data = content(seed);
    assert_eq!(back.len(), data.len(), "{label}");
    assert_eq!(crc32c::crc32c(back), crc32c::crc32c(&data), "{label}");
}

async fn write_and_check(cluster: &FileCluster, name: &str, seed: u8) -> anyhow::Result<u64> {
    let c = cluster.client();
    let f = c.create(ROOT, name.as_bytes(), 0o644).await?;
    c.write_file(f.inode, content(seed)).await?;
    check(&c.read_file(f.inode).await?, seed, name);
    Ok(f.inode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_of_one_host_use_local_sockets_and_tcp_still_serves() -> anyhow::Result<()> {
    std::env::remove_var(TRANSPORT_ENV);
    let local = FileCluster::start(1, small_stripes()).await?;
    let logic = local.logic[0].addr;
    let inode = write_and_check(&local, "local", 1).await?;
    assert_eq!(local_sockets(logic).0, 1, "the logic node listens on its local socket");
    let ds_connections: usize = local.dataservers.iter().map(|d| local_sockets(d.addr).1).sum();
    assert!(
        ds_connections > 0,
        "the logic node reaches the dataservers through local sockets"
    );

    // A client asking one thing at a time keeps to one connection.
    wait_for_no_local_connections(logic).await;
    let c = local.client();
    for _ in 0..40 {
        c.getattr(ROOT).await?;
    }
    assert_eq!(
        local_sockets(logic).1,
        1,
        "one request at a time opened more than one connection"
    );
    drop(c);

    // A client that speaks TCP alone, beside the logic node's local clients.
    std::env::set_var(TRANSPORT_ENV, "tcp");
    wait_for_no_local_connections(logic).await;
    let c = local.client();
    check(&c.read_file(inode).await?, 1, "read back over TCP");
    assert_eq!(
        local_sockets(logic).1,
        0,
        "a TCP client connected through the local socket"
    );
    drop(c);
    drop(local);

    // Every process told to use TCP.
    let tcp = FileCluster::start(1, small_stripes()).await?;
    write_and_check(&tcp, "tcp", 2).await?;
    for addr in std::iter::once(tcp.logic[0].addr).chain(tcp.dataservers.iter().map(|d| d.addr)) {
        assert_eq!(local_sockets(addr), (0, 0), "{addr} bound a local socket");
    }
    std::env::remove_var(TRANSPORT_ENV);
    Ok(())
}
