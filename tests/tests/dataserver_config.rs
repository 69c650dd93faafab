//! Invariant 7 for configuration: a bad config file stops the dataserver at start-up with
//! a message naming the key, and nothing is created or served.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use cairn_tests::{bin_path, free_port};

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = format!(
        "[dataserver]\nnode_id = 1\nhall = \"h\"\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
        free_port(),
        data.display()
    );
    for (extra, key) in [
        ("scrub_rate = 5\n", "scrub_rate"),
        ("max_connections = 0\n", "dataserver.max_connections"),
        ("[erasure]\nparity_shards = 0\n", "erasure.parity_shards"),
        ("[erasure]\nblock_bytes = 1000\n", "erasure.block_bytes"),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let out = Command::new(bin_path("cairn-dataserver"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {extra:?}");
        assert!(
            stderr.contains(key),
            "error for {extra:?} does not name {key}: {stderr}"
        );
        assert!(!data.exists(), "a refused config created the data directory");
    }
    let out = Command::new(bin_path("cairn-dataserver"))
        .args(["serve", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config /nonexistent.toml"));
}
