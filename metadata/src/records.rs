//! What the state machine stores besides the wire types: records with a format number so
//! a later version can read them, and the counters kept under one key.

use cairn_common::proto::metadata::{Attr, FileKind};
use serde::{Deserialize, Serialize};

pub const RECORD_FORMAT: u32 = 1;

/// An inode: its attributes and, for a symlink, the target.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InodeRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(message, optional, tag = "2")]
    pub attr: Option<Attr>,
    #[prost(bytes = "vec", tag = "3")]
    pub symlink: Vec<u8>,
    /// Extended attributes, by name (kept sorted).
    #[prost(message, repeated, tag = "4")]
    pub xattrs: Vec<Xattr>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Xattr {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// A write session (on `inode`) or, with inode 0, a mount's lock session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRecord {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(int64, tag = "2")]
    pub expires_ns: i64,
    /// A lock session: the inodes it holds locks on (sorted), released with it.
    #[prost(uint64, repeated, tag = "3")]
    pub locked: Vec<u64>,
}

/// The byte-range locks held on one inode, by start.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockTable {
    #[prost(message, repeated, tag = "1")]
    pub locks: Vec<cairn_common::proto::metadata::Lock>,
}

/// The first answer to a mutation, returned again to a retry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DedupeRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub reply: Vec<u8>,
}

/// State machine totals and allocators, read once per applied batch and written back with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_inode: u64,
    pub next_session: u64,
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    pub sessions: u64,
    pub dedupe_count: u64,
    /// Sequence of the oldest dedupe record still kept, and of the next one.
    pub dedupe_oldest: u64,
    pub dedupe_next: u64,
    /// The largest leader clock applied: time never goes back across leader changes.
    pub clock_ns: i64,
}

/// A directory entry's value: the child and its kind (so readdir needs no inode reads).
pub fn dentry_value(inode: u64, kind: FileKind) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&inode.to_be_bytes());
    v[8] = u8::try_from(kind as i32).unwrap_or(0);
    v
}

pub fn parse_dentry_value(v: &[u8]) -> Option<(u64, FileKind)> {
    let inode = crate::db::read_u64(v)?;
    let kind = FileKind::try_from(i32::from(*v.get(8)?)).ok()?;
    Some((inode, kind))
}

pub fn dentry_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn session_expiry_key(expires_ns: i64, session: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    // Offset so that byte order is numeric order for negative values too.
    k[..8].copy_from_slice(&((expires_ns as u64) ^ (1 << 63)).to_be_bytes());
    k[8..].copy_from_slice(&session.to_be_bytes());
    k
}

pub fn parse_session_expiry_key(k: &[u8]) -> Option<(i64, u64)> {
    let expires = (crate::db::read_u64(k)? ^ (1 << 63)) as i64;
    Some((expires, crate::db::read_u64(k.get(8..)?)?))
}

pub fn dedupe_key(client_id: &[u8], request_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(client_id);
    k.extend_from_slice(&request_id.to_be_bytes());
    k
}

pub fn shard_ref_key(dataserver: u32, stripe_id: &[u8], index: u32, inode: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + 16 + 1 + 8);
    k.extend_from_slice(&dataserver.to_be_bytes());
    k.extend_from_slice(stripe_id);
    // Layout validation bounds the index below 48.
    k.push(u8::try_from(index).unwrap_or(u8::MAX));
    k.extend_from_slice(&inode.to_be_bytes());
    k
}

/// Under these keys in `sm_meta`, as postcard lists of ids: the dataservers being drained,
/// and those of them the leader marked lost (a subset).
pub const DRAINING_KEY: &[u8] = b"draining";
pub const LOST_KEY: &[u8] = b"lost";

/// Under this key in `sm_meta`: the Raft entry format the group writes (a little-endian
/// u16); absent means `ENTRY_FORMAT_MIN`.
pub const ENTRY_FORMAT_KEY: &[u8] = b"entry_format";

pub fn decode_entry_format(bytes: Option<&[u8]>) -> Result<u16, String> {
    match bytes {
        None => Ok(cairn_common::versions::ENTRY_FORMAT_MIN),
        Some(b) => <[u8; 2]>::try_from(b)
            .map(u16::from_le_bytes)
            .map_err(|_| format!("entry format record of {} bytes", b.len())),
    }
}

/// The entry format the group writes, as this node has applied it.
pub fn entry_format(db: &crate::db::Db) -> Result<u16, String> {
    let bytes = db
        .get(crate::db::Cf::SmMeta, ENTRY_FORMAT_KEY)
        .map_err(|e| e.to_string())?;
    decode_entry_format(bytes.as_deref())
}

pub fn decode_ids(bytes: Option<&[u8]>) -> Result<Vec<u32>, String> {
    bytes.map_or(Ok(Vec::new()), |b| {
        postcard::from_bytes(b).map_err(|e| format!("dataserver list: {e}"))
    })
}

/// The dataserver list under `key` (`DRAINING_KEY`, `LOST_KEY`), as this node has
/// applied it.
pub fn ids(db: &crate::db::Db, key: &[u8]) -> Result<Vec<u32>, String> {
    let bytes = db.get(crate::db::Cf::SmMeta, key).map_err(|e| e.to_string())?;
    decode_ids(bytes.as_deref())
}
