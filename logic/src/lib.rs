//! Cairn's stateless logic node (DESIGN.md invariant 3): everything it knows lives in the
//! metadata group or on dataservers. This crate holds the file data path: cutting a file
//! into stripes, erasure coding and checksumming them, placing shards under the hall rule,
//! writing them, and committing the layout through Raft; and reading it back, decoding
//! only when a shard is missing or corrupt.

pub mod dataservers;
pub mod files;
pub mod layouts;
pub mod metrics;
pub mod server;
