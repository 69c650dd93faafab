//! Messages of the dataserver protocol, carried in frames (`frame.rs`). The message part
//! of a frame is protobuf (prost), which tolerates fields it does not know, so a newer
//! peer can add optional fields during a rolling upgrade; shard bytes travel in the
//! frame's data part. `Request` and `Reply` are the typed forms; converting a frame into
//! one validates it, so handlers only ever see well-formed requests.

use bytes::Bytes;
use prost::Message;
use thiserror::Error;

use crate::checksum::ChecksummedBlocks;
use crate::frame::{Frame, Kind};
use crate::ids::{RequestId, ShardId};

/// The most entries one `ListShards` reply carries (keeps the reply's message part
/// well under the frame's limit).
pub const LIST_LIMIT_MAX: u32 = 1000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame kind {0:?} is not a request")]
    NotARequest(Kind),
    #[error("frame kind {0:?} is not a reply")]
    NotAReply(Kind),
    #[error("malformed {kind:?} message: {reason}")]
    Malformed { kind: Kind, reason: String },
}

/// Why a request failed, as the wire carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    /// The request was malformed or violated a limit; retrying it will not help.
    BadRequest = 1,
    /// Stored bytes failed their checksum; read the stripe from other shards.
    Corrupt = 2,
    NotFound = 3,
    /// The shard exists with different content; shards are never modified.
    AlreadyExists = 4,
    /// Another request for the same shard is in progress, or the server is saturated;
    /// retry later.
    Busy = 5,
    /// The server's disk failed the operation.
    Io = 6,
    OutOfSpace = 7,
    /// A byte range outside the shard.
    OutOfRange = 8,
    /// A code this build does not know (sent by a newer peer).
    Unknown = 0,
}

impl ErrorCode {
    fn from_i32(v: i32) -> ErrorCode {
        match v {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::Corrupt,
            3 => ErrorCode::NotFound,
            4 => ErrorCode::AlreadyExists,
            5 => ErrorCode::Busy,
            6 => ErrorCode::Io,
            7 => ErrorCode::OutOfSpace,
            8 => ErrorCode::OutOfRange,
            _ => ErrorCode::Unknown,
        }
    }

    /// The code's name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Busy => "busy",
            ErrorCode::Io => "io",
            ErrorCode::OutOfSpace => "out_of_space",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// What a dataserver reports about itself.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct StatReport {
    #[prost(uint32, tag = "1")]
    pub node_id: u32,
    #[prost(string, tag = "2")]
    pub hall: String,
    #[prost(uint64, tag = "3")]
    pub capacity_bytes: u64,
    #[prost(uint64, tag = "4")]
    pub free_bytes: u64,
    #[prost(uint64, tag = "5")]
    pub used_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub shard_count: u64,
    /// Corrupt blocks found since start, by reads and by scrub.
    #[prost(uint64, tag = "7")]
    pub corrupt_blocks: u64,
    /// "uring+direct", "posix+direct", "posix" ...
    #[prost(string, tag = "8")]
    pub io_mode: String,
    #[prost(string, tag = "9")]
    pub build_version: String,
    /// The newest data-plane protocol version the node reads (`frame::VERSION`); absent
    /// (0) from nodes older than the field.
    #[prost(uint32, tag = "10")]
    pub protocol_version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Store a shard. `checksums` are the crc32c of each `block_bytes` block of `data`.
    Put {
        shard: ShardId,
        block_bytes: u32,
        checksums: Vec<u32>,
        data: Bytes,
    },
    /// Read `length` bytes (to the end when `None`) from `offset`.
    Get {
        shard: ShardId,
        offset: u64,
        length: Option<u64>,
    },
    Delete {
        shard: ShardId,
    },
    /// Shards in id order after `start_after`, at most `limit` (capped at LIST_LIMIT_MAX).
    List {
        start_after: Option<ShardId>,
        limit: u32,
    },
    Stat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `created` is false when an identical shard was already stored (a retried put).
    PutDone {
        created: bool,
    },
    /// The bytes [offset, offset + length) of a shard, inside the whole blocks that cover
    /// them, with those blocks' checksums so the reader verifies what it received.
    Data {
        shard_len: u64,
        offset: u64,
        length: u64,
        blocks: ChecksummedBlocks,
    },
    DeleteDone {
        existed: bool,
    },
    List {
        shards: Vec<(ShardId, u64)>,
        more: bool,
    },
    Stat(StatReport),
    Error {
        code: ErrorCode,
        message: String,
    },
}

// Protobuf forms of the message parts. Private: the enums above are the interface.
mod pb {
    use bytes::Bytes;
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    pub struct Put {
        #[prost(bytes = "bytes", tag = "1")]
        pub shard: Bytes,
        #[prost(uint32, tag = "2")]
        pub block_bytes: u32,
        #[prost(fixed32, repeated, tag = "3")]
        pub checksums: Vec<u32>,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct Get {
        #[prost(bytes = "bytes", tag = "1")]
        pub shard: Bytes,
        #[prost(uint64, tag = "2")]
        pub offset: u64,
        #[prost(uint64, optional, tag = "3")]
        pub length: Option<u64>,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct ShardRef {
        #[prost(bytes = "bytes", tag = "1")]
        pub shard: Bytes,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct List {
        #[prost(bytes = "bytes", optional, tag = "1")]
        pub start_after: Option<Bytes>,
        #[prost(uint32, tag = "2")]
        pub limit: u32,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct Empty {}
    #[derive(Clone, PartialEq, Message)]
    pub struct PutDone {
        #[prost(bool, tag = "1")]
        pub created: bool,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct Data {
        #[prost(uint64, tag = "1")]
        pub shard_len: u64,
        #[prost(uint64, tag = "2")]
        pub offset: u64,
        #[prost(uint64, tag = "3")]
        pub length: u64,
        #[prost(uint32, tag = "4")]
        pub block_bytes: u32,
        #[prost(uint32, tag = "5")]
        pub first_block: u32,
        #[prost(fixed32, repeated, tag = "6")]
        pub checksums: Vec<u32>,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct DeleteDone {
        #[prost(bool, tag = "1")]
        pub existed: bool,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct ListEntry {
        #[prost(bytes = "bytes", tag = "1")]
        pub shard: Bytes,
        #[prost(uint64, tag = "2")]
        pub len: u64,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct ListReply {
        #[prost(message, repeated, tag = "1")]
        pub shards: Vec<ListEntry>,
        #[prost(bool, tag = "2")]
        pub more: bool,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct Error {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }
}

fn shard_bytes(id: ShardId) -> Bytes {
    Bytes::copy_from_slice(&id.to_bytes())
}

struct Parse<'a> {
    frame: &'a Frame,
}

impl Parse<'_> {
    fn bad(&self, reason: impl Into<String>) -> WireError {
        WireError::Malformed {
            kind: self.frame.kind,
            reason: reason.into(),
        }
    }

    fn meta<M: Message + Default>(&self) -> Result<M, WireError> {
        M::decode(self.frame.meta.clone()).map_err(|e| self.bad(e.to_string()))
    }

    fn shard(&self, b: &[u8]) -> Result<ShardId, WireError> {
        ShardId::from_bytes(b).ok_or_else(|| {
            self.bad(format!(
                "shard id is {} bytes, expected {}",
                b.len(),
                ShardId::ENCODED_BYTES
            ))
        })
    }

    fn no_data(&self) -> Result<(), WireError> {
        if self.frame.data.is_empty() {
            Ok(())
        } else {
            Err(self.bad("unexpected data part"))
        }
    }
}

impl Request {
    pub fn to_frame(&self, id: RequestId) -> Frame {
        let (kind, meta, data) = match self {
            Request::Put {
                shard,
                block_bytes,
                checksums,
                data,
            } => {
                let m = pb::Put {
                    shard: shard_bytes(*shard),
                    block_bytes: *block_bytes,
                    checksums: checksums.clone(),
                };
                (Kind::PutShard, m.encode_to_vec(), data.clone())
            }
            Request::Get { shard, offset, length } => {
                let m = pb::Get {
                    shard: shard_bytes(*shard),
                    offset: *offset,
                    length: *length,
                };
                (Kind::GetShard, m.encode_to_vec(), Bytes::new())
            }
            Request::Delete { shard } => (
                Kind::DeleteShard,
                pb::ShardRef {
                    shard: shard_bytes(*shard),
                }
                .encode_to_vec(),
                Bytes::new(),
            ),
            Request::List { start_after, limit } => {
                let m = pb::List {
                    start_after: start_after.map(shard_bytes),
                    limit: *limit,
                };
                (Kind::ListShards, m.encode_to_vec(), Bytes::new())
            }
            Request::Stat => (Kind::Stat, Vec::new(), Bytes::new()),
        };
        Frame::new(kind, id, meta.into(), data)
    }

    pub fn from_frame(frame: &Frame) -> Result<Request, WireError> {
        let p = Parse { frame };
        Ok(match frame.kind {
            Kind::PutShard => {
                let m: pb::Put = p.meta()?;
                Request::Put {
                    shard: p.shard(&m.shard)?,
                    block_bytes: m.block_bytes,
                    checksums: m.checksums,
                    data: frame.data.clone(),
                }
            }
            Kind::GetShard => {
                p.no_data()?;
                let m: pb::Get = p.meta()?;
                Request::Get {
                    shard: p.shard(&m.shard)?,
                    offset: m.offset,
                    length: m.length,
                }
            }
            Kind::DeleteShard => {
                p.no_data()?;
                let m: pb::ShardRef = p.meta()?;
                Request::Delete {
                    shard: p.shard(&m.shard)?,
                }
            }
            Kind::ListShards => {
                p.no_data()?;
                let m: pb::List = p.meta()?;
                let start_after = m.start_after.map(|b| p.shard(&b)).transpose()?;
                Request::List {
                    start_after,
                    limit: m.limit,
                }
            }
            Kind::Stat => {
                p.no_data()?;
                let _: pb::Empty = p.meta()?;
                Request::Stat
            }
            other => return Err(WireError::NotARequest(other)),
        })
    }
}

impl Reply {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
        }
    }

    pub fn to_frame(&self, id: RequestId) -> Frame {
        let (kind, meta, data) = match self {
            Reply::PutDone { created } => (
                Kind::PutShardDone,
                pb::PutDone { created: *created }.encode_to_vec(),
                Bytes::new(),
            ),
            Reply::Data {
                shard_len,
                offset,
                length,
                blocks,
            } => {
                let m = pb::Data {
                    shard_len: *shard_len,
                    offset: *offset,
                    length: *length,
                    block_bytes: blocks.block_bytes,
                    first_block: blocks.first_block,
                    checksums: blocks.checksums.clone(),
                };
                (Kind::ShardData, m.encode_to_vec(), blocks.bytes.clone())
            }
            Reply::DeleteDone { existed } => (
                Kind::DeleteShardDone,
                pb::DeleteDone { existed: *existed }.encode_to_vec(),
                Bytes::new(),
            ),
            Reply::List { shards, more } => {
                let m = pb::ListReply {
                    shards: shards
                        .iter()
                        .map(|(s, len)| pb::ListEntry {
                            shard: shard_bytes(*s),
                            len: *len,
                        })
                        .collect(),
                    more: *more,
                };
                (Kind::ShardList, m.encode_to_vec(), Bytes::new())
            }
            Reply::Stat(report) => (Kind::StatReport, report.encode_to_vec(), Bytes::new()),
            Reply::Error { code, message } => {
                let m = pb::Error {
                    code: *code as i32,
                    message: message.clone(),
                };
                (Kind::Error, m.encode_to_vec(), Bytes::new())
            }
        };
        Frame::new(kind, id, meta.into(), data)
    }

    pub fn from_frame(frame: &Frame) -> Result<Reply, WireError> {
        let p = Parse { frame };
        Ok(match frame.kind {
            Kind::PutShardDone => Reply::PutDone {
                created: p.meta::<pb::PutDone>()?.created,
            },
            Kind::ShardData => {
                let m: pb::Data = p.meta()?;
                let blocks = ChecksummedBlocks {
                    block_bytes: m.block_bytes,
                    first_block: m.first_block,
                    checksums: m.checksums,
                    bytes: frame.data.clone(),
                };
                // A block size of 0 or block indices past u32::MAX: no arithmetic on
                // these blocks would be sound (invariant 7).
                blocks.check_shape().map_err(|e| p.bad(e.to_string()))?;
                Reply::Data {
                    shard_len: m.shard_len,
                    offset: m.offset,
                    length: m.length,
                    blocks,
                }
            }
            Kind::DeleteShardDone => Reply::DeleteDone {
                existed: p.meta::<pb::DeleteDone>()?.existed,
            },
            Kind::ShardList => {
                let m: pb::ListReply = p.meta()?;
                let shards = m
                    .shards
                    .iter()
                    .map(|e| Ok((p.shard(&e.shard)?, e.len)))
                    .collect::<Result<_, WireError>>()?;
                Reply::List { shards, more: m.more }
            }
            Kind::StatReport => Reply::Stat(p.meta()?),
            Kind::Error => {
                let m: pb::Error = p.meta()?;
                Reply::Error {
                    code: ErrorCode::from_i32(m.code),
                    message: m.message,
                }
            }
            other => return Err(WireError::NotAReply(other)),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::StripeId;
    use proptest::prelude::*;

    fn shard(i: u8) -> ShardId {
        ShardId::new(StripeId(0x1234_5678_9abc_def0_1122_3344_5566_7788), i)
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let requests = [
            Request::Put {
                shard: shard(3),
                block_bytes: 4096,
                checksums: vec![1, 2, 3],
                data: Bytes::from_static(b"abc"),
            },
            Request::Get {
                shard: shard(0),
                offset: 7,
                length: Some(9),
            },
            Request::Get {
                shard: shard(0),
                offset: 0,
                length: None,
            },
            Request::Delete { shard: shard(5) },
            Request::List {
                start_after: Some(shard(1)),
                limit: 10,
            },
            Request::List {
                start_after: None,
                limit: 0,
            },
            Request::Stat,
        ];
        for r in requests {
            let frame = r.to_frame(RequestId(9));
            assert_eq!(Request::from_frame(&frame), Ok(r));
            assert!(Reply::from_frame(&frame).is_err());
        }
        let replies = [
            Reply::PutDone { created: true },
            Reply::Data {
                shard_len: 10,
                offset: 2,
                length: 1,
                blocks: ChecksummedBlocks {
                    block_bytes: 4096,
                    first_block: 0,
                    checksums: vec![9],
                    bytes: Bytes::from_static(b"xyz"),
                },
            },
            Reply::DeleteDone { existed: false },
            Reply::List {
                shards: vec![(shard(1), 5), (shard(2), 0)],
                more: true,
            },
            Reply::Stat(StatReport {
                node_id: 3,
                hall: "h".into(),
                shard_count: 4,
                ..Default::default()
            }),
            Reply::error(ErrorCode::Corrupt, "block 3"),
        ];
        for r in replies {
            let frame = r.to_frame(RequestId(9));
            assert_eq!(Reply::from_frame(&frame), Ok(r));
            assert!(Request::from_frame(&frame).is_err());
        }
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let mut frame = Request::Delete { shard: shard(1) }.to_frame(RequestId(1));
        frame.meta = Bytes::from_static(&[0x0a, 0x02, 1, 2]); // a 2-byte shard id
        assert!(matches!(Request::from_frame(&frame), Err(WireError::Malformed { .. })));
        frame.meta = Bytes::from_static(&[0xff, 0xff, 0xff]);
        assert!(matches!(Request::from_frame(&frame), Err(WireError::Malformed { .. })));
        let mut get = Request::Stat.to_frame(RequestId(1));
        get.data = Bytes::from_static(b"x");
        assert!(matches!(Request::from_frame(&get), Err(WireError::Malformed { .. })));
    }

    /// What a client or logic node does with a decoded reply: for shard data, verify and
    /// slice the range and sum the blocks. None of it may panic, whatever the reply held.
    fn use_reply(reply: &Reply) {
        if let Reply::Data {
            shard_len,
            offset,
            length,
            blocks,
        } = reply
        {
            // The range the reply claims, the range a reader asked for (its own length,
            // whatever the reply says), the whole shard, and every byte held.
            let _ = blocks.verified_range(*offset, *length);
            let _ = blocks.verified_range(*offset, 1);
            let _ = blocks.verified_range(0, *shard_len);
            let start = u64::from(blocks.first_block) * u64::from(blocks.block_bytes);
            let _ = blocks.verified_range(start, blocks.bytes.len() as u64);
            let _ = blocks.crc32c();
        }
    }

    /// A valid reply of each kind, from arbitrary field values.
    fn any_reply() -> impl Strategy<Value = Reply> {
        let data = (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(4096u32), Just(0), Just(1), any::<u32>()],
            prop_oneof![Just(0u32), Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..9000),
        )
            .prop_map(|(shard_len, offset, length, block_bytes, first_block, bytes)| {
                let checksums = crate::checksum::block_checksums(&bytes, block_bytes);
                Reply::Data {
                    shard_len,
                    offset,
                    length,
                    blocks: ChecksummedBlocks {
                        block_bytes,
                        first_block,
                        checksums,
                        bytes: bytes.into(),
                    },
                }
            });
        prop_oneof![
            any::<bool>().prop_map(|created| Reply::PutDone { created }),
            data,
            any::<bool>().prop_map(|existed| Reply::DeleteDone { existed }),
            (
                proptest::collection::vec((any::<u8>(), any::<u64>()), 0..5),
                any::<bool>()
            )
                .prop_map(|(shards, more)| Reply::List {
                    shards: shards.into_iter().map(|(i, len)| (shard(i), len)).collect(),
                    more,
                }),
            (any::<u32>(), ".{0,8}", any::<u64>()).prop_map(|(node_id, hall, free_bytes)| Reply::Stat(StatReport {
                node_id,
                hall,
                free_bytes,
                ..Default::default()
            })),
            (0i32..10, ".{0,20}").prop_map(|(code, message)| Reply::error(ErrorCode::from_i32(code), message)),
        ]
    }

    /// One way a hostile or broken peer may change a valid message part.
    #[derive(Clone, Debug)]
    pub(crate) enum Mutation {
        FlipBit(prop::sample::Index, u8),
        SetByte(prop::sample::Index, u8),
        Truncate(prop::sample::Index),
        Insert(prop::sample::Index, Vec<u8>),
        /// A field appended with any varint value: protobuf keeps the last value of a
        /// scalar field, so this overrides a field of the message with any value.
        AppendVarint(u32, u64),
        /// A length-delimited field appended (any bytes under any tag).
        AppendBytes(u32, Vec<u8>),
        /// A nested message appended under `.0`, holding any bytes under tag `.1`: a
        /// list entry or a metadata reply's part whose own fields are hostile.
        AppendNested(u32, u32, Vec<u8>),
    }

    pub(crate) fn any_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            (
                any::<prop::sample::Index>(),
                proptest::collection::vec(any::<u8>(), 1..8)
            )
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            (
                1u32..12,
                prop_oneof![
                    Just(0u64),
                    Just(u64::from(u32::MAX)),
                    Just(u64::from(u32::MAX - 1)),
                    Just(u64::MAX),
                    any::<u64>()
                ]
            )
                .prop_map(|(tag, v)| Mutation::AppendVarint(tag, v)),
            (1u32..12, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(tag, b)| Mutation::AppendBytes(tag, b)),
            (1u32..12, 1u32..6, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(tag, inner, b)| Mutation::AppendNested(tag, inner, b)),
        ]
    }

    pub(crate) fn mutate(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        match m {
            Mutation::FlipBit(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << b;
            }
            Mutation::SetByte(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
            Mutation::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::AppendVarint(tag, v) => {
                encode_key(*tag, WireType::Varint, &mut bytes);
                encode_varint(*v, &mut bytes);
            }
            Mutation::AppendBytes(tag, b) => {
                encode_key(*tag, WireType::LengthDelimited, &mut bytes);
                encode_varint(b.len() as u64, &mut bytes);
                bytes.extend_from_slice(b);
            }
            Mutation::AppendNested(tag, inner, b) => {
                let nested = mutate(Vec::new(), &Mutation::AppendBytes(*inner, b.clone()));
                bytes = mutate(bytes, &Mutation::AppendBytes(*tag, nested));
            }
            _ => {}
        }
        bytes
    }

    /// A shard-data reply with `block_bytes` and `first_block` as a peer sent them.
    fn data_reply(block_bytes: u32, first_block: u32, checksums: Vec<u32>, bytes: &'static [u8]) -> Frame {
        let m = pb::Data {
            shard_len: 1 << 40,
            offset: u64::from(first_block) * u64::from(block_bytes),
            length: bytes.len() as u64,
            block_bytes,
            first_block,
            checksums,
        };
        Frame::new(
            Kind::ShardData,
            RequestId(1),
            m.encode_to_vec().into(),
            Bytes::from_static(bytes),
        )
    }

    fn malformed_reason(frame: &Frame) -> String {
        match Reply::from_frame(frame) {
            Err(WireError::Malformed { reason, .. }) => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    /// Invariant 7: a shard-data reply whose blocks are of 0 bytes is malformed, on
    /// decoding, with a message naming the field; blocks of no bytes and no checksums
    /// (an empty read) are harmless and pass.
    #[test]
    fn a_data_reply_with_zero_block_bytes_is_malformed() {
        let sums = crate::checksum::block_checksums(b"abc", 4096);
        for (checksums, bytes) in [(sums.clone(), &b"abc"[..]), (vec![], &b"abc"[..]), (sums, &b""[..])] {
            let reason = malformed_reason(&data_reply(0, 0, checksums, bytes));
            assert!(reason.contains("block_bytes is 0"), "{reason}");
        }
        assert!(Reply::from_frame(&data_reply(0, 0, vec![], b"")).is_ok());
    }

    /// Invariant 7: a shard-data reply whose blocks run past block index u32::MAX is
    /// malformed on decoding; blocks that end exactly at u32::MAX decode, and verify.
    #[test]
    fn a_data_reply_past_the_last_block_index_is_malformed() {
        let one = vec![0u8; 4096];
        let sums = crate::checksum::block_checksums(&one, 4096);
        for first_block in [u32::MAX, u32::MAX - 1] {
            match Reply::from_frame(&data_reply(4096, first_block, sums.clone(), &[0u8; 4096])) {
                Ok(Reply::Data {
                    offset, length, blocks, ..
                }) => {
                    assert_eq!(blocks.verified_range(offset, length).map(|b| b.len()), Ok(4096));
                }
                other => panic!("first_block {first_block}: {other:?}"),
            }
        }
        let reason = malformed_reason(&data_reply(4096, u32::MAX, vec![sums[0]; 2], &[0u8; 4096]));
        assert!(reason.contains("first_block 4294967295"), "{reason}");
        // Bytes for two blocks from u32::MAX, checksums for one.
        let reason = malformed_reason(&data_reply(4096, u32::MAX, sums.clone(), &[0u8; 4097]));
        assert!(reason.contains("past the last block index"), "{reason}");
        // Two blocks from u32::MAX - 1 end at u32::MAX; three do not.
        let two = vec![sums[0]; 2];
        assert!(Reply::from_frame(&data_reply(4096, u32::MAX - 1, two, &[0u8; 8192])).is_ok());
        let reason = malformed_reason(&data_reply(4096, u32::MAX - 1, vec![sums[0]; 3], &[0u8; 8192]));
        assert!(reason.contains("3 blocks"), "{reason}");
    }

    proptest! {
        #[test]
        fn arbitrary_message_parts_never_panic(
            kind in 0u16..200,
            meta in proptest::collection::vec(any::<u8>(), 0..64),
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Some(kind) = Kind::from_u16(kind) {
                let frame = Frame::new(kind, RequestId(1), meta.into(), data.into());
                let _ = Request::from_frame(&frame);
                if let Ok(reply) = Reply::from_frame(&frame) {
                    use_reply(&reply);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Replies as a client or logic node receives them (invariant 7 holds both ways):
        /// a valid reply of any kind with its message part mutated, re-framed with a
        /// valid frame checksum (a peer's own bug or a hostile peer, not line noise),
        /// decodes to a reply or a typed error, and using what decodes never panics.
        #[test]
        fn mutated_replies_decode_typed_and_never_panic(
            reply in any_reply(),
            mutations in proptest::collection::vec(any_mutation(), 0..4),
            data in prop_oneof![Just(None), proptest::collection::vec(any::<u8>(), 0..9000).prop_map(Some)],
        ) {
            let valid = reply.to_frame(RequestId(3));
            let meta = mutations.iter().fold(valid.meta.to_vec(), mutate);
            let mut frame = Frame::new(valid.kind, valid.request_id, meta.into(), valid.data.clone());
            if let Some(data) = data {
                frame.data = data.into();
            }
            // Through the frame codec, as it arrives.
            let mut wire = bytes::BytesMut::from(&frame.encode_to_vec().unwrap()[..]);
            let received = tokio_util::codec::Decoder::decode(&mut crate::frame::FrameDecoder::new(1 << 20), &mut wire)
                .unwrap()
                .unwrap();
            match Reply::from_frame(&received) {
                Ok(reply) => use_reply(&reply),
                Err(WireError::Malformed { kind, .. }) => prop_assert_eq!(kind, valid.kind),
                Err(e) => prop_assert!(false, "{e:?}"),
            }
            prop_assert!(Request::from_frame(&received).is_err());
            // Unmutated, it round-trips (when its own blocks are well formed).
            if mutations.is_empty() && received.data == valid.data {
                let round = Reply::from_frame(&received);
                if let Reply::Data { blocks, .. } = &reply {
                    prop_assert_eq!(round.is_ok(), blocks.check_shape().is_ok());
                } else {
                    prop_assert_eq!(round, Ok(reply));
                }
            }
        }
    }
}
