//! `cairnctl local up|down` and `cairnctl status`: a whole cluster of real processes on
//! loopback, started idempotently, mounted, reported healthy, unmounted and stopped.

use std::path::Path;

use cairn_tests::free_ports;
use cairn_tests::local::{cairnctl, PORTS};
use cairn_tests::metrics::sample;
use cairn_tests::mount::is_mounted;

/// Stops the cluster even when the test fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cairnctl(&["local", "down", "--dir", &self.0.display().to_string()]);
    }
}

/// `GET /metrics` on a loopback port.
fn scrape(port: u16) -> String {
    cairn_tests::metrics::scrape(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
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
    // Prometheus can scrape every node, on the ports after the cluster's others:
    // dataservers, then metadata nodes, then logic nodes.
    let (md_ports, logic_ports) = (base_port + 22..base_port + 26, base_port + 26..base_port + PORTS);
    for port in base_port + 14..base_port + 22 {
        assert!(scrape(port).contains("cairn_dataserver_requests_total"), "port {port}");
    }

    // It is mounted: a file written there reads back whole (two full stripes, whose data
    // shards keep the client's block checksums, and a tail).
    let mnt = dir.path().join("mnt");
    assert!(is_mounted(&mnt));
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7 + i / 4093) as u8).collect();
    std::fs::write(mnt.join("hello.bin"), &data).expect("write through the mount");
    assert_eq!(std::fs::read(mnt.join("hello.bin")).expect("read back"), data);

    // The logic nodes counted those bytes, and a lookup the metadata group refused; the
    // metadata nodes agree on one leader, which reports how far each follower lags.
    let missing = cairnctl(&["file", "--config", &config, "get", "/missing.bin", &format!("{d}/x")]);
    assert!(!missing.status.success());
    let logic: Vec<String> = logic_ports.map(scrape).collect();
    let total = |name: &str| logic.iter().filter_map(|b| sample(b, name)).sum::<f64>();
    assert!(total("cairn_logic_written_bytes_total") >= 9e6, "{logic:?}");
    assert!(total("cairn_logic_read_bytes_total") >= 9e6, "{logic:?}");
    assert!(total(r#"cairn_logic_requests_total{op="write_stripe",outcome="ok"}"#) >= 2.0);
    assert!(total(r#"cairn_logic_requests_total{op="meta",outcome="enoent"}"#) >= 1.0);
    assert!(logic.iter().all(|b| b.contains("cairn_logic_request_seconds_bucket")));
    let md: Vec<String> = md_ports.map(scrape).collect();
    let leaders: Vec<&String> = md
        .iter()
        .filter(|b| sample(b, "cairn_metadata_raft_is_leader") == Some(1.0))
        .collect();
    assert_eq!(leaders.len(), 1, "{md:?}");
    let named: std::collections::HashSet<String> = md
        .iter()
        .map(|b| format!("{:?}", sample(b, "cairn_metadata_raft_leader")))
        .collect();
    assert_eq!(named.len(), 1, "{md:?}");
    assert!(sample(leaders[0], "cairn_metadata_raft_applied_index") > Some(0.0));
    assert_eq!(
        leaders[0].matches("cairn_metadata_raft_follower_lag_entries{").count(),
        3
    );
    assert!(
        sample(
            leaders[0],
            r#"cairn_metadata_requests_total{op="lookup",outcome="enoent"}"#
        ) >= Some(1.0)
    );

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
