//! Scraping a node's `GET /metrics` the way Prometheus does, over plain HTTP on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `request` as it is and returns the answer, read until the server closes (or
/// 10 s pass: a test that hangs fails instead).
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("read timeout: {e}"));
    s.write_all(request).unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The answer to `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The answer to `GET /metrics`, which must be a success.
pub fn scrape(addr: SocketAddr) -> String {
    let answer = get(addr, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200"), "{addr}: {answer}");
    answer
}

/// The value of sample `name` (with its labels, as the text format writes them).
pub fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
