//! What an admin's Prometheus sees: a dataserver with `metrics_listen` serves its counters
//! at `GET /metrics`, they follow the requests it served, and bad HTTP requests get an
//! error status without stopping either port.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;

use bytes::Bytes;
use cairn_common::ids::{ShardId, StripeId};
use cairn_tests::metrics::{get, http};
use cairn_tests::{free_port, Dataserver};

#[tokio::test]
async fn counters_are_served_for_prometheus() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ds = Dataserver::start(&format!("metrics_listen = \"{metrics}\""))
        .await
        .unwrap();
    let client = ds.client().await.unwrap();
    let id = ShardId::new(StripeId(0x33), 2);
    let data: Bytes = (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    client.put(id, 65_536, data.clone()).await.unwrap();
    assert_eq!(client.get(id, 0, None).await.unwrap(), data);
    assert!(client.get(ShardId::new(StripeId(0x44), 0), 0, None).await.is_err());

    let answer = get(metrics, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{answer}"
    );
    for line in [
        "cairn_dataserver_written_bytes_total 300000",
        "cairn_dataserver_read_bytes_total 300000",
        "cairn_dataserver_requests_total{op=\"put\",outcome=\"ok\"} 1",
        "cairn_dataserver_requests_total{op=\"get\",outcome=\"ok\"} 1",
        "cairn_dataserver_requests_total{op=\"get\",outcome=\"not_found\"} 1",
        "cairn_dataserver_connections 1",
    ] {
        assert!(answer.lines().any(|l| l == line), "no line {line:?} in:\n{answer}");
    }

    // Bad requests: an error status each, and both ports keep serving.
    assert!(get(metrics, "/nothing-here").starts_with("HTTP/1.1 404"));
    let garbage = http(metrics, b"\x00\x01\xffnot http at all\r\n\r\n");
    assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let post = http(
        metrics,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(get(metrics, "/metrics").starts_with("HTTP/1.1 200"));
    assert_eq!(client.get(id, 0, None).await.unwrap(), data);
}
