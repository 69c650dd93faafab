//! Cairn's metadata group: the only truth about the namespace (DESIGN.md invariants 1–3).
//!
//! A Raft group (openraft) whose log store and state machine live in one RocksDB. Every
//! applied batch commits its effects together with `last_applied`, so a node serves again as
//! soon as RocksDB opens: no journal replay, no fsck.

pub mod apply;
pub mod db;
pub mod errors;
pub mod layout;
pub mod log_store;
pub mod names;
pub mod namespace;
pub mod records;
pub mod snapshot;
pub mod state_machine;
pub mod txn;
pub mod types;
