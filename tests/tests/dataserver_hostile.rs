//! Invariant 7: hostile byte streams get a typed error frame or a closed connection,
//! store nothing, never panic the server, and never disturb other clients. A fuzz-style
//! test over random and mutated streams that runs in the normal suite.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use bytes::Bytes;
use cairn_common::checksum::block_checksums;
use cairn_common::frame::{Frame, FrameDecoder, Kind, HEADER_BYTES};
use cairn_common::ids::{RequestId, ShardId, StripeId};
use cairn_common::wire::{ErrorCode, Reply, Request};
use cairn_tests::Dataserver;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util_codec::decode_replies;

/// A valid put frame to mutate.
fn valid_put(rng: &mut impl Rng) -> Vec<u8> {
    let len = rng.random_range(0..20_000);
    let data: Bytes = (0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>().into();
    let req = Request::Put {
        shard: ShardId::new(StripeId(rng.random()), 0),
        block_bytes: 4096,
        checksums: block_checksums(&data, 4096),
        data,
    };
    req.to_frame(RequestId(rng.random())).encode_to_vec().unwrap()
}

/// One hostile stream: random bytes, or a valid frame mutated, truncated or stretched.
fn hostile(rng: &mut impl Rng) -> Vec<u8> {
    let mut bytes = valid_put(rng);
    match rng.random_range(0..7) {
        0 => (0..rng.random_range(0..4000)).map(|_| rng.random()).collect(),
        1 => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
            bytes
        }
        2 => {
            bytes.truncate(rng.random_range(0..bytes.len()));
            bytes
        }
        3 => {
            bytes[16..20].copy_from_slice(&rng.random::<u32>().to_le_bytes());
            bytes
        }
        4 => {
            bytes[6..8].copy_from_slice(&rng.random_range(6u16..100).to_le_bytes());
            bytes
        }
        5 => {
            // A well-framed reply kind, or garbage in the message part, with a valid crc.
            let kind = if rng.random() { Kind::ShardData } else { Kind::GetShard };
            let meta: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            Frame::new(kind, RequestId(5), meta.into(), Bytes::new())
                .encode_to_vec()
                .unwrap()
        }
        _ => {
            // Valid header, then the client vanishes mid-payload.
            bytes.truncate(HEADER_BYTES + rng.random_range(0..8));
            bytes
        }
    }
}

mod tokio_util_codec {
    use super::*;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    pub fn decode_replies(bytes: &[u8]) -> Vec<Reply> {
        let mut dec = FrameDecoder::new(64 << 20);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            out.push(Reply::from_frame(&f).expect("server sent a malformed reply"));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_streams_change_nothing_and_never_stop_the_server() {
    let mut ds = Dataserver::start("scrub_bytes_per_sec = 0").await.unwrap();
    let good = ds.client().await.unwrap();
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut error_frames = 0;
    for i in 0..300 {
        let bytes = hostile(&mut rng);
        let mut s = TcpStream::connect(ds.addr).await.unwrap();
        // Split the stream into random pieces, as a network would.
        let mut pos = 0;
        while pos < bytes.len() {
            let n = rng.random_range(1..=bytes.len() - pos);
            if s.write_all(&bytes[pos..pos + n]).await.is_err() {
                break;
            }
            pos += n;
        }
        let _ = s.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        for reply in decode_replies(&answer) {
            match reply {
                Reply::Error { code, .. } => {
                    assert!(
                        matches!(code, ErrorCode::BadRequest | ErrorCode::Corrupt),
                        "stream {i}: {code:?}"
                    );
                    error_frames += 1;
                }
                Reply::PutDone { .. } => {} // an untouched valid frame (a mutation can be a no-op)
                other => panic!("stream {i}: unexpected reply {other:?}"),
            }
        }
        if i % 50 == 0 {
            // Other clients keep being served throughout.
            let id = ShardId::new(StripeId(1_000 + i as u128), 1);
            let data = Bytes::from(vec![i as u8; 5000]);
            good.put(id, 4096, data.clone()).await.unwrap();
            assert_eq!(good.get(id, 0, None).await.unwrap(), data);
        }
    }
    assert!(ds.alive(), "dataserver died; log:\n{}", ds.log());
    assert!(error_frames > 50, "only {error_frames} typed error frames");
    assert!(!ds.log().contains("panicked"), "a task panicked; log:\n{}", ds.log());

    // Nothing was stored but what was valid: every stored shard reads back whole.
    let (listed, _) = good.list(None, 1000).await.unwrap();
    for (id, len) in listed {
        assert_eq!(good.get(id, 0, None).await.unwrap().len() as u64, len);
    }

    // An oversized length is refused from the header alone, before any payload is sent.
    let mut s = TcpStream::connect(ds.addr).await.unwrap();
    let mut header = valid_put(&mut rng)[..HEADER_BYTES].to_vec();
    header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&header).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    match decode_replies(&answer).as_slice() {
        [Reply::Error {
            code: ErrorCode::BadRequest,
            message,
        }] => assert!(message.contains("exceeds"), "{message}"),
        other => panic!("unexpected answer {other:?}"),
    }
}
