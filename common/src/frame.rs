//! The data-plane frame: a fixed 24-byte header, then a payload made of a small message
//! part (`meta`, protobuf) and a bulk part (`data`, shard bytes, never copied on its way
//! through).
//!
//! ```text
//! 0      4        6     8            16            20       24
//! | magic | version | kind | request id | payload len | crc32c |
//! payload = meta len (u32 LE) | meta | data
//! ```
//! All integers are little-endian. The crc32c covers header bytes 0..20, the meta length
//! and the meta part. The data part is not covered here: shard bytes carry per-block
//! crc32c checksums in the message part, verified end to end by every receiver
//! (DESIGN.md invariant 5), so checksumming them again per hop would only spend CPU.
//! The decoder bounds the payload length before it allocates and rejects a bad header
//! as soon as the header has arrived.

use std::io::{self, IoSlice};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_util::codec::Decoder;

use crate::aligned::aligned_vec;
use crate::checksum::{crc32c, crc32c_append};
use crate::ids::RequestId;
use crate::lend::LEND_MIN_BYTES;
use crate::transport::WriteHalf;

pub const MAGIC: u32 = 0x5249_4143; // "CAIR" as little-endian bytes
/// The newest protocol version this build reads. The `protocol-next` feature builds the
/// next minor version, so the test suite runs two builds side by side.
pub const VERSION: u16 = if cfg!(feature = "protocol-next") { 2 } else { 1 };
/// The oldest version this build reads: its own and the one before it, so two builds
/// can run side by side during a rolling upgrade (DESIGN.md, "Versions"). Requests are
/// written in this version, which every node of the previous build reads too; replies in
/// the version of the request they answer. A release starts writing a new version by
/// raising this one, once no node of the release before the new version runs.
pub const VERSION_MIN: u16 = 1;
// A build reads its own version and the one before, no more.
const _: () = assert!(VERSION >= VERSION_MIN && VERSION <= VERSION_MIN + 1);
pub const HEADER_BYTES: usize = 24;
const META_LEN_BYTES: usize = 4;
/// Bytes covered by the crc before the payload.
const CRC_HEADER_BYTES: usize = 20;

/// Every frame kind this version knows. Requests go to a server, replies come back with
/// the request's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    PutShard = 1,
    GetShard = 2,
    DeleteShard = 3,
    ListShards = 4,
    Stat = 5,
    /// File protocol (client to logic node): a namespace request for the metadata group.
    FileMeta = 20,
    /// File protocol: store one stripe of a file being written.
    WriteStripe = 21,
    /// File protocol: read a byte range of a file.
    ReadFile = 22,
    /// File protocol: the cluster's usable capacity and free space.
    Capacity = 23,
    PutShardDone = 101,
    ShardData = 102,
    DeleteShardDone = 103,
    ShardList = 104,
    StatReport = 105,
    FileMetaReply = 120,
    StripeWritten = 121,
    FileData = 122,
    CapacityReport = 123,
    Error = 199,
}

impl Kind {
    pub fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::PutShard,
            2 => Kind::GetShard,
            3 => Kind::DeleteShard,
            4 => Kind::ListShards,
            5 => Kind::Stat,
            20 => Kind::FileMeta,
            21 => Kind::WriteStripe,
            22 => Kind::ReadFile,
            23 => Kind::Capacity,
            101 => Kind::PutShardDone,
            102 => Kind::ShardData,
            103 => Kind::DeleteShardDone,
            104 => Kind::ShardList,
            105 => Kind::StatReport,
            120 => Kind::FileMetaReply,
            121 => Kind::StripeWritten,
            122 => Kind::FileData,
            123 => Kind::CapacityReport,
            199 => Kind::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("bad magic {0:#010x}: not a Cairn data-plane stream")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this node reads {VERSION_MIN}..={VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("payload of {payload} bytes cannot hold its {meta}-byte message part")]
    BadMetaLength { meta: u32, payload: u32 },
    #[error("frame checksum mismatch: crc32c {actual:#010x}, header says {expected:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("stream ended in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// One decoded (or to-be-sent) frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub version: u16,
    pub kind: Kind,
    pub request_id: RequestId,
    /// Protobuf-encoded message describing the request or reply.
    pub meta: Bytes,
    /// Bulk bytes (shard data); empty for most kinds.
    pub data: Bytes,
    /// More bulk bytes, sent right after `data` as part of the same data part: a sender
    /// whose bytes are in pieces (a logic node's reply made of several shards) sends
    /// them as they are instead of copying them into one buffer. Empty in a decoded
    /// frame, whose whole data part is `data`.
    pub data_tail: Vec<Bytes>,
}

impl Frame {
    pub fn new(kind: Kind, request_id: RequestId, meta: Bytes, data: Bytes) -> Frame {
        Frame {
            version: VERSION_MIN,
            kind,
            request_id,
            meta,
            data,
            data_tail: Vec::new(),
        }
    }

    /// This frame with `pieces` sent after its data, in order.
    pub fn with_data_tail(mut self, pieces: Vec<Bytes>) -> Frame {
        self.data_tail = pieces;
        self
    }

    /// This frame as the reply to a request of `version`: in the peer's version.
    pub fn answering(mut self, version: u16) -> Frame {
        self.version = version;
        self
    }

    /// Bytes of the data part: `data` and `data_tail`.
    pub fn data_len(&self) -> usize {
        self.data.len() + self.data_tail.iter().map(Bytes::len).sum::<usize>()
    }

    fn payload_len(&self) -> usize {
        META_LEN_BYTES + self.meta.len() + self.data_len()
    }

    /// Header, meta length and meta as one small buffer; `data` follows it on the wire.
    /// Fails if the payload does not fit the 32-bit length field.
    pub fn encode_head(&self) -> io::Result<Bytes> {
        let payload_len = u32::try_from(self.payload_len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame payload over 4 GiB"))?;
        let meta_len = self.meta.len() as u32; // < payload_len, so it fits
        let mut head = BytesMut::with_capacity(HEADER_BYTES + META_LEN_BYTES + self.meta.len());
        head.put_u32_le(MAGIC);
        head.put_u16_le(self.version);
        head.put_u16_le(self.kind as u16);
        head.put_u64_le(self.request_id.0);
        head.put_u32_le(payload_len);
        let mut crc = crc32c(&head[..CRC_HEADER_BYTES]);
        crc = crc32c_append(crc, &meta_len.to_le_bytes());
        crc = crc32c_append(crc, &self.meta);
        head.put_u32_le(crc);
        head.put_u32_le(meta_len);
        head.put_slice(&self.meta);
        Ok(head.freeze())
    }

    /// The whole frame in one buffer (tests and small control messages).
    pub fn encode_to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = self.encode_head()?.to_vec();
        for piece in std::iter::once(&self.data).chain(&self.data_tail) {
            out.extend_from_slice(piece);
        }
        Ok(out)
    }
}

/// Writes frames with vectored writes: each frame's small head and its data go out in
/// the same system call, and the data is never copied into a staging buffer.
pub async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Frame]) -> io::Result<()> {
    write_parts(w, frame_parts(frames)?).await
}

/// Writes a request whose sender keeps `frame`'s data unchanged until the reply comes:
/// on a local socket its large data pieces are lent to the kernel instead of copied
/// (`crate::lend`); elsewhere it is [`write_frames`].
pub async fn write_request_lent(w: &mut WriteHalf, frame: &Frame) -> io::Result<()> {
    write_lent(w, std::slice::from_ref(frame), false).await
}

/// Writes replies like [`write_frames`], except that on a local socket their large
/// data pieces are lent to the kernel and kept by `w` until the peer has read them.
pub async fn write_replies_lent(w: &mut WriteHalf, frames: &[Frame]) -> io::Result<()> {
    write_lent(w, frames, true).await
}

async fn write_lent(w: &mut WriteHalf, frames: &[Frame], keep: bool) -> io::Result<()> {
    let mut copied = Vec::new();
    for part in frame_parts(frames)? {
        if part.len() < LEND_MIN_BYTES || !w.lends() {
            copied.push(part);
            continue;
        }
        write_parts(w, std::mem::take(&mut copied)).await?;
        if !w.lend(&part, keep).await? {
            copied.push(part);
        }
    }
    write_parts(w, copied).await
}

/// Each frame's head, then its data pieces, in order.
fn frame_parts(frames: &[Frame]) -> io::Result<Vec<Bytes>> {
    let mut parts: Vec<Bytes> = Vec::with_capacity(frames.len() * 2);
    for frame in frames {
        parts.push(frame.encode_head()?);
        for piece in std::iter::once(&frame.data).chain(&frame.data_tail) {
            if !piece.is_empty() {
                parts.push(piece.clone());
            }
        }
    }
    Ok(parts)
}

async fn write_parts<W: AsyncWrite + Unpin>(w: &mut W, mut parts: Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<IoSlice<'_>> = parts[first..].iter().map(|p| IoSlice::new(p)).collect();
        let mut written = w.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while first < parts.len() && written >= parts[first].len() {
            written -= parts[first].len();
            first += 1;
        }
        if written > 0 {
            parts[first].advance(written);
        }
    }
    w.flush().await
}

/// Parsed, validated header of the frame being received.
#[derive(Clone, Copy, Debug)]
struct Header {
    version: u16,
    kind: Kind,
    request_id: RequestId,
    payload_len: u32,
    crc: u32,
}

impl Header {
    /// The length of the message part, from the first four bytes of `payload`.
    fn meta_len(&self, payload: &[u8]) -> Result<usize, FrameError> {
        let meta_len = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        if META_LEN_BYTES as u64 + u64::from(meta_len) > u64::from(self.payload_len) {
            return Err(FrameError::BadMetaLength {
                meta: meta_len,
                payload: self.payload_len,
            });
        }
        Ok(meta_len as usize)
    }

    /// Checks the crc32c over the header's first bytes and the payload up to the end of
    /// its message part (its length included).
    fn check_crc(&self, header: &[u8], meta_with_len: &[u8]) -> Result<(), FrameError> {
        let actual = crc32c_append(crc32c(&header[..CRC_HEADER_BYTES]), meta_with_len);
        if actual != self.crc {
            return Err(FrameError::BadChecksum {
                expected: self.crc,
                actual,
            });
        }
        Ok(())
    }

    fn data_len(&self, meta_len: usize) -> usize {
        self.payload_len as usize - META_LEN_BYTES - meta_len
    }

    fn frame(&self, meta: Bytes, data: Bytes) -> Frame {
        Frame {
            version: self.version,
            kind: self.kind,
            request_id: self.request_id,
            meta,
            data,
            data_tail: Vec::new(),
        }
    }
}

/// Incremental decoder: feed it any split of the byte stream (tokio's `FramedRead`, or
/// `decode` by hand); it returns whole, verified frames.
#[derive(Debug)]
pub struct FrameDecoder {
    payload_bytes_max: u32,
    header: Option<Header>,
}

impl FrameDecoder {
    /// `payload_bytes_max` bounds what one frame may make the decoder allocate.
    pub fn new(payload_bytes_max: u32) -> Self {
        FrameDecoder {
            payload_bytes_max,
            header: None,
        }
    }

    fn parse_header(&self, h: &[u8]) -> Result<Header, FrameError> {
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16_at(4);
        if !(VERSION_MIN..=VERSION).contains(&version) {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = Kind::from_u16(u16_at(6)).ok_or(FrameError::UnknownKind(u16_at(6)))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[8..16]);
        let payload_len = u32_at(16);
        if payload_len > self.payload_bytes_max {
            return Err(FrameError::TooLarge {
                len: payload_len,
                max: self.payload_bytes_max,
            });
        }
        if (payload_len as usize) < META_LEN_BYTES {
            return Err(FrameError::BadMetaLength {
                meta: 0,
                payload: payload_len,
            });
        }
        Ok(Header {
            version,
            kind,
            request_id: RequestId(u64::from_le_bytes(id)),
            payload_len,
            crc: u32_at(20),
        })
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                if src.len() < HEADER_BYTES {
                    return Ok(None);
                }
                let h = self.parse_header(&src[..HEADER_BYTES])?;
                self.header = Some(h);
                h
            }
        };
        let total = HEADER_BYTES + header.payload_len as usize;
        if src.len() < total {
            // Bounded by payload_bytes_max, checked in parse_header.
            src.reserve(total - src.len());
            return Ok(None);
        }
        self.header = None;
        let frame_bytes = src.split_to(total).freeze();
        let payload = frame_bytes.slice(HEADER_BYTES..);
        let meta_end = META_LEN_BYTES + header.meta_len(&payload)?;
        header.check_crc(&frame_bytes[..CRC_HEADER_BYTES], &payload[..meta_end])?;
        Ok(Some(header.frame(
            payload.slice(META_LEN_BYTES..meta_end),
            payload.slice(meta_end..),
        )))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

/// Reads frames as [`FrameDecoder`] does under `FramedRead`, except that each frame's
/// data part is read into a buffer of its own that starts on an alignment boundary
/// ([`aligned_vec`]), so a dataserver writes a shard it received with O_DIRECT from
/// where it landed instead of copying it first. Large data parts go from the socket
/// straight into that buffer. Not cancel-safe: a frame read halfway is lost, so a caller
/// that stops waiting must drop the stream.
#[derive(Debug)]
pub struct AlignedFrameReader<R> {
    reader: BufReader<R>,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> AlignedFrameReader<R> {
    /// `payload_bytes_max` bounds what one frame may make the reader allocate.
    pub fn new(reader: R, payload_bytes_max: u32) -> Self {
        AlignedFrameReader {
            reader: BufReader::new(reader),
            decoder: FrameDecoder::new(payload_bytes_max),
        }
    }

    /// The next frame, or `None` where the stream ends between two frames.
    pub async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        self.read_frame(None)
            .await
            .map(|got| got.map(|(frame, _)| frame))
            .transpose()
    }

    /// [`AlignedFrameReader::next`], except that a data part that fits in `dest` is read
    /// straight into it (a client reading into the caller's memory) and the frame's
    /// `data` is then empty; the count says how many bytes of `dest` it filled.
    pub async fn next_into(&mut self, dest: &mut [u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        self.read_frame(Some(dest)).await
    }

    async fn read_frame(&mut self, dest: Option<&mut [u8]>) -> Result<Option<(Frame, usize)>, FrameError> {
        if self.reader.fill_buf().await?.is_empty() {
            return Ok(None);
        }
        let mut head = [0u8; HEADER_BYTES + META_LEN_BYTES];
        self.read_exact(&mut head[..HEADER_BYTES], 0).await?;
        let header = self.decoder.parse_header(&head[..HEADER_BYTES])?;
        self.read_exact(&mut head[HEADER_BYTES..], HEADER_BYTES).await?;
        let meta_len = header.meta_len(&head[HEADER_BYTES..])?;
        let mut meta = vec![0u8; META_LEN_BYTES + meta_len];
        meta[..META_LEN_BYTES].copy_from_slice(&head[HEADER_BYTES..]);
        self.read_exact(&mut meta[META_LEN_BYTES..], head.len()).await?;
        header.check_crc(&head, &meta)?;
        let (data_len, received) = (header.data_len(meta_len), head.len() + meta_len);
        let meta = Bytes::from(meta).slice(META_LEN_BYTES..);
        match dest.filter(|d| d.len() >= data_len) {
            Some(dest) => {
                self.read_exact(&mut dest[..data_len], received).await?;
                Ok(Some((header.frame(meta, Bytes::new()), data_len)))
            }
            None => {
                let data = self.read_aligned(data_len, received).await?;
                Ok(Some((header.frame(meta, data), 0)))
            }
        }
    }

    /// `buf.len()` bytes; `received` bytes of the frame came before them.
    async fn read_exact(&mut self, buf: &mut [u8], received: usize) -> Result<(), FrameError> {
        match self.reader.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated(received)),
            Err(e) => Err(e.into()),
        }
    }

    /// `len` bytes in a buffer of their own that starts on an alignment boundary. The
    /// buffer is not zeroed first: the socket fills it.
    async fn read_aligned(&mut self, len: usize, received: usize) -> Result<Bytes, FrameError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = aligned_vec(len);
        let start = buf.len();
        let mut unfilled = (&mut buf).limit(len);
        while unfilled.has_remaining_mut() {
            if self.reader.read_buf(&mut unfilled).await? == 0 {
                return Err(FrameError::Truncated(received + len - unfilled.remaining_mut()));
            }
        }
        Ok(Bytes::from(buf).slice(start..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(data_len: usize) -> Frame {
        Frame::new(
            Kind::PutShard,
            RequestId(0xdead_beef_0102),
            Bytes::from_static(b"meta-part"),
            Bytes::from((0..data_len).map(|i| i as u8).collect::<Vec<_>>()),
        )
    }

    fn decode_all(bytes: &[u8], splits: &[usize]) -> Result<Vec<Frame>, FrameError> {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
            let s = s.clamp(pos, bytes.len());
            buf.extend_from_slice(&bytes[pos..s]);
            pos = s;
            while let Some(f) = dec.decode(&mut buf)? {
                out.push(f);
            }
        }
        if let Some(f) = dec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    proptest! {
        /// A stream split at any points decodes to the frames that were sent.
        #[test]
        fn decodes_streams_split_anywhere(
            lens in proptest::collection::vec(0usize..5000, 1..4),
            mut splits in proptest::collection::vec(0usize..20_000, 0..8),
        ) {
            let frames: Vec<Frame> = lens.iter().map(|&l| sample(l)).collect();
            let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode_to_vec().unwrap()).collect();
            splits.sort_unstable();
            prop_assert_eq!(decode_all(&bytes, &splits).unwrap(), frames);
        }

        /// Arbitrary bytes never panic the decoder and never yield a frame whose
        /// checksum did not match.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_all(&bytes, &[7, 30]);
        }

        /// Any single flipped bit in the header or message part is rejected (the data
        /// part is covered by block checksums one layer up).
        #[test]
        fn any_flipped_bit_is_rejected(len in 0usize..300, bit in any::<prop::sample::Index>()) {
            let frame = sample(len);
            let mut bytes = frame.encode_to_vec().unwrap();
            let bit = bit.index((bytes.len() - frame.data.len()) * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_all(&bytes, &[]).is_err());
        }
    }

    /// Requests go out in the oldest version this build reads, which the build before
    /// reads too; a reply keeps its request's version; a version past this build's is
    /// refused by name.
    #[test]
    fn versions_for_a_rolling_upgrade() {
        let request = sample(10);
        assert_eq!(request.version, VERSION_MIN);
        for version in VERSION_MIN..=VERSION {
            let reply = sample(3).answering(version);
            let back = decode_all(&reply.encode_to_vec().unwrap(), &[]).unwrap();
            assert_eq!(back, vec![reply]);
        }
        let mut next = request.encode_to_vec().unwrap();
        next[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode_all(&next, &[]),
            Err(FrameError::UnsupportedVersion(v)) if v == VERSION + 1
        ));
    }

    #[test]
    fn rejects_bad_headers_with_typed_errors() {
        let good = sample(10).encode_to_vec().unwrap();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(decode_all(&bad_magic, &[]), Err(FrameError::BadMagic(_))));
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert!(matches!(
            decode_all(&bad_version, &[]),
            Err(FrameError::UnsupportedVersion(9))
        ));
        let mut bad_kind = good.clone();
        bad_kind[6] = 77;
        assert!(matches!(decode_all(&bad_kind, &[]), Err(FrameError::UnknownKind(77))));
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_all(&huge, &[]), Err(FrameError::TooLarge { .. })));
        assert!(matches!(
            decode_all(&good[..good.len() - 1], &[]),
            Err(FrameError::Truncated(_))
        ));
    }

    #[test]
    fn rejects_meta_length_past_the_payload() {
        let mut f = sample(0);
        f.meta = Bytes::new();
        let mut bytes = f.encode_to_vec().unwrap();
        // Claim a 100-byte meta part in a 4-byte payload.
        bytes[24..28].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            decode_all(&bytes, &[]),
            Err(FrameError::BadMetaLength { meta: 100, .. })
        ));
    }

    #[tokio::test]
    async fn vectored_writer_matches_the_encoding() {
        let frames = vec![sample(3), sample(70_000), sample(0)];
        let mut out = Vec::new();
        write_frames(&mut out, &frames).await.unwrap();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.encode_to_vec().unwrap()).collect();
        assert_eq!(out, expected);
    }

    /// A data part sent in pieces arrives as one, in order.
    #[tokio::test]
    async fn a_data_tail_arrives_as_one_data_part() {
        let whole = sample(70_000);
        let pieces = whole.data.clone();
        let split =
            Frame::new(whole.kind, whole.request_id, whole.meta.clone(), pieces.slice(..5)).with_data_tail(vec![
                pieces.slice(5..5),
                pieces.slice(5..65_536),
                pieces.slice(65_536..),
            ]);
        assert_eq!(split.data_len(), 70_000);
        let mut out = Vec::new();
        write_frames(&mut out, &[split.clone(), sample(1)]).await.unwrap();
        assert_eq!(
            out,
            [split.encode_to_vec().unwrap(), sample(1).encode_to_vec().unwrap()].concat()
        );
        assert_eq!(decode_all(&out, &[100, 40_000]).unwrap(), vec![whole, sample(1)]);
    }

    /// Streams read by the aligned reader: through a 100-byte pipe (so every part
    /// arrives in pieces), the same frames as sent, each data part aligned; a bad or
    /// cut stream ends in the decoder's typed errors.
    #[tokio::test]
    async fn the_aligned_reader_reads_what_the_decoder_reads() {
        async fn read_all(bytes: Vec<u8>) -> Result<Vec<Frame>, FrameError> {
            let (mut tx, rx) = tokio::io::duplex(100);
            let writer = tokio::spawn(async move { tx.write_all(&bytes).await });
            let mut reader = AlignedFrameReader::new(rx, 1 << 20);
            let mut out = Vec::new();
            while let Some(frame) = reader.next().await {
                out.push(frame?);
            }
            writer.await.unwrap().unwrap();
            Ok(out)
        }
        let frames = vec![sample(0), sample(5000), sample(3), sample(70_000)];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode_to_vec().unwrap()).collect();
        let got = read_all(bytes.clone()).await.unwrap();
        assert_eq!(got, frames);
        for f in got.iter().filter(|f| !f.data.is_empty()) {
            assert_eq!(f.data.as_ptr() as usize % crate::config::IO_ALIGN_BYTES as usize, 0);
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(matches!(read_all(flipped).await, Err(FrameError::BadChecksum { .. })));
        let mut huge = bytes.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_all(huge).await, Err(FrameError::TooLarge { .. })));
        let first = frames[0].encode_to_vec().unwrap().len();
        for cut in [first + 10, bytes.len() - 1] {
            assert!(matches!(
                read_all(bytes[..cut].to_vec()).await,
                Err(FrameError::Truncated(_))
            ));
        }
    }

    /// A request lent over a local socket and over TCP arrives as the same bytes its
    /// encoding has: pieces past the pipe's size, pieces too small to lend between
    /// them, and an unaligned start, in order.
    #[tokio::test]
    async fn a_lent_request_arrives_as_its_encoding() {
        use crate::transport::{Listener, Stream};
        let data: Bytes = (0..5_000_000u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect::<Vec<_>>()
            .into();
        let frame = Frame::new(
            Kind::PutShard,
            RequestId(9),
            Bytes::from_static(b"meta"),
            data.slice(3..2_500_003),
        )
        .with_data_tail(vec![data.slice(10..1000), data.slice(100..4_900_000)]);
        // Kept until the peer has read them all, as lending asks.
        let second = sample(70_000);
        let expected = [frame.encode_to_vec().unwrap(), second.encode_to_vec().unwrap()].concat();
        for tcp in [false, true] {
            let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = if tcp {
                let s = tokio::net::TcpStream::connect(addr).await.unwrap();
                Stream::Tcp(s)
            } else {
                Stream::connect(addr).await.unwrap()
            };
            assert_eq!(matches!(stream, Stream::Local(_)), !tcp);
            let (_rd, mut wr) = stream.into_split();
            let (peer, _) = listener.accept().await.unwrap();
            let reader = tokio::spawn(async move {
                let (mut rd, _wr) = peer.into_split();
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.unwrap();
                got
            });
            write_request_lent(&mut wr, &frame).await.unwrap();
            write_request_lent(&mut wr, &second).await.unwrap();
            drop(wr);
            let got = reader.await.unwrap();
            let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                got == expected,
                "tcp: {tcp}, {} bytes of {}, first difference at {first_diff:?}",
                got.len(),
                expected.len()
            );
        }
    }

    /// Lent replies whose sender drops them once written, then drops its writer, still
    /// arrive whole: the writer, then a task, keeps them until the peer has read them,
    /// while the freed memory around them is reused.
    #[tokio::test]
    async fn lent_replies_are_kept_until_the_peer_has_read_them() {
        use crate::transport::{Listener, Stream};
        // Under glibc's mmap threshold, so freed buffers are reused at once.
        let piece = |fill: u8| Bytes::from(vec![fill; 100_000]);
        let churn = || (0..64).map(|_| vec![0xEEu8; 100_000]).collect::<Vec<_>>();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let stream = Stream::connect(listener.local_addr().unwrap()).await.unwrap();
        assert!(matches!(stream, Stream::Local(_)));
        let (_rd, mut wr) = stream.into_split();
        let (peer, _) = listener.accept().await.unwrap();
        let (mut rd, _peer_wr) = peer.into_split();
        let frames = |first: u8| {
            vec![
                Frame::new(Kind::ShardData, RequestId(1), Bytes::new(), piece(first)),
                Frame::new(Kind::ShardData, RequestId(2), Bytes::new(), piece(first + 1)),
            ]
        };
        let expected: Vec<u8> = [frames(1), frames(3)]
            .iter()
            .flatten()
            .flat_map(|f| f.encode_to_vec().unwrap())
            .collect();
        write_replies_lent(&mut wr, &frames(1)).await.unwrap();
        let reused = churn();
        let mut got = vec![0u8; expected.len() / 4];
        rd.read_exact(&mut got).await.unwrap();
        write_replies_lent(&mut wr, &frames(3)).await.unwrap();
        drop(wr);
        let reused_again = churn();
        rd.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "a kept reply changed before its peer read it");
        drop((reused, reused_again));
    }
}
