//! `cairnctl local up|down` and `cairnctl status`: a whole cluster of real processes on
//! loopback, started idempotently, mounted, reported healthy, unmounted and stopped.

use std::io::{Read, Write};
use std::path::Path;

use cairn_tests::free_ports;
use cairn_tests::local::{cairnctl, PORTS};
use cairn_tests::mount::is_mounted;

/// Stops the cluster even when the test fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cairnctl(&["local", "down", "--dir", &self.0.display().to_string()]);
    }
}

#[test]
fn local_cluster_up_status_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let base_port = free_ports(PORTS);
    let base = base_port.to_string();
    let _down = Down(dir.path());
    let up = cairnctl(&["local", "up", "--dir", &d, "--base-port", &base]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));

    let config = dir.path().join("cluster.toml").display().to_string();
    let status = cairnctl(&["status", "--config", &config, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(report["healthy"], true, "{report}");
    assert_eq!(report["nodes"].as_array().map(Vec::len), Some(4 + 8 + 2));
    // Prometheus can scrape every dataserver, on the ports after the cluster's others.
    for port in base_port + 14..base_port + PORTS {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("metrics request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("metrics answer");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("cairn_dataserver_requests_total"),
            "port {port}: {answer}"
        );
    }

    // It is mounted: a file written there reads back whole (two full stripes, whose data
    // shards keep the client's block checksums, and a tail).
    let mnt = dir.path().join("mnt");
    assert!(is_mounted(&mnt));
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7 + i / 4093) as u8).collect();
    std::fs::write(mnt.join("hello.bin"), &data).expect("write through the mount");
    assert_eq!(std::fs::read(mnt.join("hello.bin")).expect("read back"), data);

    // Twice is fine: nothing new starts.
    let again = cairnctl(&["local", "up", "--dir", &d, "--base-port", &base]);
    assert!(again.status.success());
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        out.contains("0 processes started") && out.contains("mounted at"),
        "{out}"
    );
    // Another cluster on the same ports is refused with a clear error.
    let other = tempfile::tempdir().expect("temp dir");
    let clash = cairnctl(&[
        "local",
        "up",
        "--dir",
        &other.path().display().to_string(),
        "--base-port",
        &base,
    ]);
    assert!(!clash.status.success());
    assert!(String::from_utf8_lossy(&clash.stderr).contains("is taken"));

    let down = cairnctl(&["local", "down", "--dir", &d]);
    assert!(down.status.success());
    let stopped = String::from_utf8_lossy(&down.stdout);
    assert!(stopped.contains("15 processes stopped"), "{stopped}");
    assert!(!is_mounted(&mnt));
    let status = cairnctl(&["status", "--config", &config, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(report["healthy"], false);
}
