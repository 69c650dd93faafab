//! Messages of the file protocol (client to logic node), carried in the same frames as
//! the dataserver protocol. Namespace requests travel as the metadata group's own
//! `MetaRequest` (with the client's idempotency key, so a retry through another logic
//! node still applies once); stripe writes and file reads carry their bytes in the
//! frame's data part with a crc32c per block, checked by the receiver (invariant 5).
//!
//! The logic node keeps no state between requests: a written stripe's layout record goes
//! back to the client, which commits the file's layout (through `FileMeta`) when it has
//! written them all.

use bytes::Bytes;
use prost::Message;

use crate::checksum::{block_count, crc32c, crc32c_append, verify_blocks};
use crate::frame::{Frame, Kind};
use crate::ids::RequestId;
use crate::proto::metadata::{MetaReply, MetaRequest, Stripe};
use crate::wire::{ErrorCode, Reply, WireError};

/// Bytes one `ReadFile` reply carries at most; larger reads are split by the client.
pub const READ_BYTES_MAX: u64 = 16 << 20;
/// Checksum block of file bytes on this protocol.
pub const FILE_BLOCK_BYTES: u32 = 64 * 1024;

mod pb {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    pub struct WriteStripe {
        #[prost(uint64, tag = "1")]
        pub offset: u64,
        #[prost(fixed32, repeated, tag = "2")]
        pub checksums: Vec<u32>,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct ReadFile {
        #[prost(uint64, tag = "1")]
        pub inode: u64,
        #[prost(uint64, tag = "2")]
        pub offset: u64,
        #[prost(uint64, tag = "3")]
        pub length: u64,
        #[prost(uint64, tag = "4")]
        pub min_version: u64,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct FileData {
        #[prost(uint64, tag = "1")]
        pub size: u64,
        #[prost(uint64, tag = "2")]
        pub layout_version: u64,
        #[prost(fixed32, repeated, tag = "3")]
        pub checksums: Vec<u32>,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum FileRequest {
    Meta(MetaRequest),
    /// Store `data` (one stripe's worth at most) as the file bytes at `offset`;
    /// `checksums` are the crc32c of its blocks of [`FILE_BLOCK_BYTES`], verified on
    /// receipt (build it with [`FileRequest::write_stripe`]). The logic node stores them
    /// with the data shards whose blocks they cover, so they are computed once.
    WriteStripe {
        offset: u64,
        data: Bytes,
        checksums: Vec<u32>,
    },
    /// Up to `length` bytes of file `inode` from `offset` (capped at READ_BYTES_MAX).
    /// With `min_version` 0 they are read from the newest committed layout; otherwise
    /// from any layout of at least that version (the one the reader saw at open or in
    /// an earlier reply: close-to-open consistency), which a logic node may have cached.
    /// A logic node of the build before ignores it and reads the newest.
    Read {
        inode: u64,
        offset: u64,
        length: u64,
        min_version: u64,
    },
    /// The cluster's space, as [`Capacity`].
    Capacity,
}

/// Space for file bytes: the dataservers' sums scaled by the code's k / (k + m), so a
/// file of `free_bytes` fits. Travels as it is (a protobuf message).
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Capacity {
    #[prost(uint64, tag = "1")]
    pub capacity_bytes: u64,
    #[prost(uint64, tag = "2")]
    pub free_bytes: u64,
    /// Dataservers configured, and those that answered.
    #[prost(uint32, tag = "3")]
    pub dataservers: u32,
    #[prost(uint32, tag = "4")]
    pub reachable: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FileReply {
    Meta(MetaReply),
    /// The stored stripe's layout record, to be committed by the client.
    Stripe(Stripe),
    /// File bytes from the requested offset; `size` is the file's size.
    Data {
        size: u64,
        layout_version: u64,
        data: FileBytes,
    },
    Capacity(Capacity),
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// File bytes as a read reply carries them: pieces sent one after the other (a logic
/// node does not copy the shards it read into one buffer), with the crc32c of every
/// [`FILE_BLOCK_BYTES`] block of their concatenation. Received, they are one piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileBytes {
    pieces: Vec<Bytes>,
    checksums: Vec<u32>,
}

impl FileBytes {
    /// `data` as one piece, its blocks checksummed.
    pub fn new(data: Bytes) -> FileBytes {
        let mut b = FileBytesBuilder::default();
        b.push(data, &[]);
        b.finish()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len() as u64).sum()
    }

    pub fn checksums(&self) -> &[u32] {
        &self.checksums
    }

    /// The bytes in one buffer: without a copy when they are one piece, as they always
    /// are once received.
    pub fn into_bytes(self) -> Bytes {
        match <[Bytes; 1]>::try_from(self.pieces) {
            Ok([one]) => one,
            Err(pieces) => pieces.concat().into(),
        }
    }
}

/// Assembles [`FileBytes`] from pieces in file order. A piece that comes with the
/// checksums of its first blocks (a data shard's, which its reader verified) keeps
/// them wherever its blocks line up with the reply's; the rest are computed here.
#[derive(Debug, Default)]
pub struct FileBytesBuilder {
    pieces: Vec<Bytes>,
    checksums: Vec<u32>,
    len: u64,
    /// The crc32c so far of the last block, while it is not whole.
    open: Option<u32>,
}

impl FileBytesBuilder {
    /// Bytes pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes`. `known` holds the crc32c of its first whole blocks of
    /// [`FILE_BLOCK_BYTES`] (any number of them, none included), already verified.
    pub fn push(&mut self, bytes: Bytes, mut known: &[u32]) {
        if bytes.is_empty() {
            return;
        }
        let block = FILE_BLOCK_BYTES as usize;
        let mut rest = &bytes[..];
        let to_fill = (block - (self.len % block as u64) as usize) % block;
        if to_fill > 0 {
            // The last block is open: this piece's blocks are offset against the reply's.
            known = &[];
            let take = to_fill.min(rest.len());
            let crc = crc32c_append(self.open.unwrap_or(0), &rest[..take]);
            rest = &rest[take..];
            self.open = Some(crc);
            if take == to_fill {
                self.checksums.push(crc);
                self.open = None;
            }
        }
        let reused = known.len().min(rest.len() / block);
        self.checksums.extend_from_slice(&known[..reused]);
        for chunk in rest[reused * block..].chunks(block) {
            let crc = crc32c(chunk);
            if chunk.len() == block {
                self.checksums.push(crc);
            } else {
                self.open = Some(crc);
            }
        }
        self.len += bytes.len() as u64;
        self.pieces.push(bytes);
    }

    /// Appends `n` zero bytes (a hole in the file).
    pub fn push_zeros(&mut self, n: usize) {
        self.push(Bytes::from(vec![0u8; n]), &[]);
    }

    pub fn finish(mut self) -> FileBytes {
        self.checksums.extend(self.open.take());
        FileBytes {
            pieces: self.pieces,
            checksums: self.checksums,
        }
    }
}

fn malformed(kind: Kind, reason: impl Into<String>) -> WireError {
    WireError::Malformed {
        kind,
        reason: reason.into(),
    }
}

fn decode<M: Message + Default>(frame: &Frame) -> Result<M, WireError> {
    M::decode(frame.meta.clone()).map_err(|e| malformed(frame.kind, e.to_string()))
}

fn checksummed(kind: Kind, data: &[u8], checksums: &[u32]) -> Result<(), WireError> {
    let blocks = block_count(data.len() as u64, FILE_BLOCK_BYTES).map_err(|e| malformed(kind, e.to_string()))?;
    if checksums.len() as u64 != blocks {
        return Err(malformed(
            kind,
            format!("{} checksums for {blocks} blocks", checksums.len()),
        ));
    }
    verify_blocks(data, FILE_BLOCK_BYTES, 0, checksums)
        .map_err(|e| malformed(kind, format!("data failed its checksum: {e}")))
}

fn no_data(frame: &Frame) -> Result<(), WireError> {
    if frame.data.is_empty() {
        Ok(())
    } else {
        Err(malformed(frame.kind, "unexpected data part"))
    }
}

impl FileRequest {
    /// A request to store `data` at file offset `offset`, with its block checksums.
    pub fn write_stripe(offset: u64, data: Bytes) -> FileRequest {
        FileRequest::WriteStripe {
            offset,
            checksums: crate::checksum::block_checksums(&data, FILE_BLOCK_BYTES),
            data,
        }
    }

    pub fn to_frame(&self, id: RequestId) -> Frame {
        let (kind, meta, data) = match self {
            FileRequest::Meta(m) => (Kind::FileMeta, m.encode_to_vec(), Bytes::new()),
            FileRequest::WriteStripe {
                offset,
                data,
                checksums,
            } => {
                let m = pb::WriteStripe {
                    offset: *offset,
                    checksums: checksums.clone(),
                };
                (Kind::WriteStripe, m.encode_to_vec(), data.clone())
            }
            FileRequest::Read {
                inode,
                offset,
                length,
                min_version,
            } => {
                let m = pb::ReadFile {
                    inode: *inode,
                    offset: *offset,
                    length: *length,
                    min_version: *min_version,
                };
                (Kind::ReadFile, m.encode_to_vec(), Bytes::new())
            }
            FileRequest::Capacity => (Kind::Capacity, Vec::new(), Bytes::new()),
        };
        Frame::new(kind, id, meta.into(), data)
    }

    /// Decodes and checks a request; the bytes of a stripe are verified here.
    pub fn from_frame(frame: &Frame) -> Result<FileRequest, WireError> {
        Ok(match frame.kind {
            Kind::FileMeta => {
                no_data(frame)?;
                FileRequest::Meta(decode(frame)?)
            }
            Kind::WriteStripe => {
                let m: pb::WriteStripe = decode(frame)?;
                checksummed(frame.kind, &frame.data, &m.checksums)?;
                FileRequest::WriteStripe {
                    offset: m.offset,
                    data: frame.data.clone(),
                    checksums: m.checksums,
                }
            }
            Kind::ReadFile => {
                no_data(frame)?;
                let m: pb::ReadFile = decode(frame)?;
                FileRequest::Read {
                    inode: m.inode,
                    offset: m.offset,
                    length: m.length.min(READ_BYTES_MAX),
                    min_version: m.min_version,
                }
            }
            Kind::Capacity => {
                no_data(frame)?;
                FileRequest::Capacity
            }
            other => return Err(WireError::NotARequest(other)),
        })
    }
}

impl FileReply {
    pub fn to_frame(&self, id: RequestId) -> Frame {
        let (kind, meta, data) = match self {
            FileReply::Meta(m) => (Kind::FileMetaReply, m.encode_to_vec(), Bytes::new()),
            FileReply::Stripe(s) => (Kind::StripeWritten, s.encode_to_vec(), Bytes::new()),
            FileReply::Data {
                size,
                layout_version,
                data,
            } => {
                let m = pb::FileData {
                    size: *size,
                    layout_version: *layout_version,
                    checksums: data.checksums.clone(),
                };
                let (first, tail) = match data.pieces.split_first() {
                    Some((first, tail)) => (first.clone(), tail.to_vec()),
                    None => (Bytes::new(), Vec::new()),
                };
                return Frame::new(Kind::FileData, id, m.encode_to_vec().into(), first).with_data_tail(tail);
            }
            FileReply::Capacity(c) => (Kind::CapacityReport, c.encode_to_vec(), Bytes::new()),
            FileReply::Error { code, message } => return Reply::error(*code, message.clone()).to_frame(id),
        };
        Frame::new(kind, id, meta.into(), data)
    }

    /// Decodes a reply; file bytes are verified against their block checksums.
    pub fn from_frame(frame: &Frame) -> Result<FileReply, WireError> {
        FileReply::from_frame_placed(frame, &[])
    }

    /// [`FileReply::from_frame`] for a frame whose data part was read into `placed`
    /// rather than into the frame (`AlignedFrameReader::next_into`); file bytes are
    /// verified there, and the reply's data is then empty.
    pub fn from_frame_placed(frame: &Frame, placed: &[u8]) -> Result<FileReply, WireError> {
        if !placed.is_empty() && frame.kind != Kind::FileData {
            return Err(malformed(frame.kind, "unexpected data part"));
        }
        Ok(match frame.kind {
            Kind::FileMetaReply => {
                no_data(frame)?;
                FileReply::Meta(decode(frame)?)
            }
            Kind::StripeWritten => {
                no_data(frame)?;
                FileReply::Stripe(decode(frame)?)
            }
            Kind::FileData => {
                let m: pb::FileData = decode(frame)?;
                checksummed(
                    frame.kind,
                    if placed.is_empty() { &frame.data } else { placed },
                    &m.checksums,
                )?;
                let pieces = if frame.data.is_empty() {
                    Vec::new()
                } else {
                    vec![frame.data.clone()]
                };
                FileReply::Data {
                    size: m.size,
                    layout_version: m.layout_version,
                    data: FileBytes {
                        pieces,
                        checksums: m.checksums,
                    },
                }
            }
            Kind::CapacityReport => {
                no_data(frame)?;
                FileReply::Capacity(decode(frame)?)
            }
            Kind::Error => match Reply::from_frame(frame)? {
                Reply::Error { code, message } => FileReply::Error { code, message },
                other => return Err(malformed(frame.kind, format!("unexpected {other:?}"))),
            },
            other => return Err(WireError::NotAReply(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::metadata::{meta_request::Op, GetAttr};
    use tokio_util::codec::Decoder;

    #[test]
    fn requests_and_replies_round_trip() {
        let id = RequestId(7);
        let data = Bytes::from((0..200_000).map(|i| i as u8).collect::<Vec<_>>());
        for req in [
            FileRequest::Meta(MetaRequest {
                client_id: vec![1; 16],
                request_id: 3,
                api_version: 1,
                op: Some(Op::Getattr(GetAttr { inode: 9 })),
            }),
            FileRequest::write_stripe(4096, data.clone()),
            FileRequest::Read {
                inode: 2,
                offset: 1,
                length: 10,
                min_version: 5,
            },
            FileRequest::Capacity,
        ] {
            assert_eq!(FileRequest::from_frame(&req.to_frame(id)).unwrap(), req);
        }
        let reply = FileReply::Data {
            size: 9,
            layout_version: 2,
            data: FileBytes::new(data),
        };
        assert_eq!(FileReply::from_frame(&reply.to_frame(id)).unwrap(), reply);
        let reply = FileReply::Capacity(Capacity {
            capacity_bytes: 10,
            free_bytes: 5,
            dataservers: 8,
            reachable: 7,
        });
        assert_eq!(FileReply::from_frame(&reply.to_frame(id)).unwrap(), reply);
    }

    proptest::proptest! {
        /// Pieces of any length, with any number of their blocks' checksums known, make
        /// the checksums of their concatenation, and a reply that carries them in pieces
        /// is received whole and verified.
        #[test]
        fn pieces_keep_the_checksums_of_their_concatenation(
            pieces in proptest::collection::vec((0usize..200_000, 0usize..4), 0..6),
        ) {
            let mut builder = FileBytesBuilder::default();
            let mut whole = Vec::new();
            for (i, &(len, known)) in pieces.iter().enumerate() {
                let piece: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
                let sums = crate::checksum::block_checksums(&piece, FILE_BLOCK_BYTES);
                let whole_blocks = len / FILE_BLOCK_BYTES as usize;
                whole.extend_from_slice(&piece);
                builder.push(piece.into(), &sums[..known.min(whole_blocks)]);
            }
            proptest::prop_assert_eq!(builder.len(), whole.len() as u64);
            let data = builder.finish();
            proptest::prop_assert_eq!(data.checksums(), &crate::checksum::block_checksums(&whole, FILE_BLOCK_BYTES)[..]);
            let reply = FileReply::Data { size: 1, layout_version: 1, data: data.clone() };
            let mut sent = bytes::BytesMut::from(&reply.to_frame(RequestId(1)).encode_to_vec().unwrap()[..]);
            let received = crate::frame::FrameDecoder::new(u32::MAX).decode(&mut sent).unwrap().unwrap();
            match FileReply::from_frame(&received).unwrap() {
                FileReply::Data { data: got, .. } => {
                    proptest::prop_assert_eq!(got.checksums(), data.checksums());
                    proptest::prop_assert_eq!(&got.into_bytes()[..], &whole[..]);
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
            proptest::prop_assert_eq!(&data.into_bytes()[..], &whole[..]);
        }
    }

    #[test]
    fn corrupted_stripe_bytes_are_refused() {
        let req = FileRequest::write_stripe(0, Bytes::from(vec![7u8; 70_000]));
        let mut frame = req.to_frame(RequestId(1));
        let mut bytes = frame.data.to_vec();
        bytes[65_537] ^= 1;
        frame.data = bytes.into();
        assert!(FileRequest::from_frame(&frame).is_err());
        // A read request is capped.
        let r = FileRequest::Read {
            inode: 1,
            offset: 0,
            length: u64::MAX,
            min_version: 0,
        };
        match FileRequest::from_frame(&r.to_frame(RequestId(2))).unwrap() {
            FileRequest::Read { length, .. } => assert_eq!(length, READ_BYTES_MAX),
            other => panic!("{other:?}"),
        }
    }

    /// What a client does with a decoded reply's bytes.
    fn use_reply(reply: FileReply) {
        if let FileReply::Data { data, .. } = reply {
            let _ = (data.len(), data.is_empty(), data.checksums().len());
            let _ = data.into_bytes();
        }
    }

    /// A valid reply of each kind, from arbitrary field values.
    fn any_reply() -> impl proptest::strategy::Strategy<Value = FileReply> {
        use crate::proto::metadata::{meta_reply, Attr, Layout, LayoutReply, MetaError, ShardLocation, StripeCode};
        use proptest::prelude::*;
        let stripe =
            (any::<u64>(), any::<u64>(), 0usize..4, any::<u32>()).prop_map(|(offset, length, n, crc)| Stripe {
                stripe_id: vec![7; 16],
                offset,
                length,
                shards: (0..n)
                    .map(|i| ShardLocation {
                        index: i as u32,
                        dataserver: crc.rotate_left(i as u32),
                        crc32c: crc,
                    })
                    .collect(),
            });
        let meta = (0usize..4, any::<u64>(), stripe.clone(), any::<bool>()).prop_map(|(which, n, stripe, code)| {
            let result = match which {
                0 => meta_reply::Result::Error(MetaError {
                    errno: (n % 40) as i32,
                    message: "no".into(),
                    ..Default::default()
                }),
                1 => meta_reply::Result::Attr(Attr {
                    inode: n,
                    size: n,
                    ..Default::default()
                }),
                2 => meta_reply::Result::LinkTarget(n.to_le_bytes().to_vec()),
                _ => meta_reply::Result::Layout(LayoutReply {
                    attr: None,
                    layout: Some(Layout {
                        version: n,
                        data_shards: 4,
                        parity_shards: 2,
                        shard_unit_bytes: 1 << 20,
                        stripes: vec![stripe],
                        inline_data: Vec::new(),
                    }),
                }),
            };
            FileReply::Meta(MetaReply {
                result: Some(result),
                changed_dirs: Vec::new(),
                stripe_code: code.then_some(StripeCode {
                    data_shards: 4,
                    parity_shards: 2,
                    shard_unit_bytes: 1 << 20,
                    ..Default::default()
                }),
            })
        });
        prop_oneof![
            meta,
            stripe.prop_map(FileReply::Stripe),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..140_000)
            )
                .prop_map(|(size, layout_version, bytes)| FileReply::Data {
                    size,
                    layout_version,
                    data: FileBytes::new(bytes.into()),
                }),
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(c, f, d, r)| FileReply::Capacity(
                Capacity {
                    capacity_bytes: c,
                    free_bytes: f,
                    dataservers: d,
                    reachable: r,
                }
            )),
            (
                proptest::sample::select(vec![
                    ErrorCode::BadRequest,
                    ErrorCode::Corrupt,
                    ErrorCode::NotFound,
                    ErrorCode::Busy,
                    ErrorCode::Unknown,
                ]),
                ".{0,20}"
            )
                .prop_map(|(code, message)| FileReply::Error { code, message }),
        ]
    }

    proptest::proptest! {
        /// Invariant 7 for what a client receives: any kind, message part, data part and
        /// placed bytes decode to a reply or a typed error, never a panic.
        #[test]
        fn arbitrary_reply_frames_never_panic(
            kind in 0u16..200,
            meta in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            placed in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            if let Some(kind) = Kind::from_u16(kind) {
                let frame = Frame::new(kind, RequestId(1), meta.into(), data.into());
                if let Ok(reply) = FileReply::from_frame(&frame) {
                    use_reply(reply);
                }
                if let Ok(reply) = FileReply::from_frame_placed(&frame, &placed) {
                    use_reply(reply);
                }
                let _ = FileRequest::from_frame(&frame);
            }
        }

        /// A valid reply of any kind with its message part mutated (re-framed with a valid
        /// frame checksum, as a buggy or hostile logic node would send it) decodes to a
        /// reply or a typed error of its kind, and what decodes can be used.
        #[test]
        fn mutated_replies_decode_typed_and_never_panic(
            reply in any_reply(),
            mutations in proptest::collection::vec(crate::wire::tests::any_mutation(), 0..4),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            data_change in 0u8..3,
        ) {
            let valid = reply.to_frame(RequestId(3));
            let meta = mutations.iter().fold(valid.meta.to_vec(), crate::wire::tests::mutate);
            let mut data = valid.data.to_vec();
            match data_change {
                1 if !data.is_empty() => {
                    let i = at.index(data.len());
                    data[i] ^= 0x10;
                }
                2 => data.truncate(at.index(data.len() + 1)),
                _ => {}
            }
            let frame = Frame::new(valid.kind, valid.request_id, meta.into(), data.clone().into());
            let mut wire = bytes::BytesMut::from(&frame.encode_to_vec().unwrap()[..]);
            let received = crate::frame::FrameDecoder::new(1 << 20).decode(&mut wire).unwrap().unwrap();
            match FileReply::from_frame(&received) {
                Ok(got) => use_reply(got),
                Err(WireError::Malformed { kind, .. }) => proptest::prop_assert_eq!(kind, valid.kind),
                Err(e) => proptest::prop_assert!(false, "{e:?}"),
            }
            // The same bytes placed in the reader's own buffer instead.
            let mut bare = received.clone();
            bare.data = Bytes::new();
            if let Ok(got) = FileReply::from_frame_placed(&bare, &data) {
                use_reply(got);
            }
            if mutations.is_empty() && data == valid.data {
                proptest::prop_assert_eq!(FileReply::from_frame(&received), Ok(reply));
            }
        }
    }
}
