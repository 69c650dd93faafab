//! Cairn's metadata group: the only truth about the namespace (DESIGN.md invariants 1–3).
//!
//! A Raft group (openraft) whose log store and state machine live in one RocksDB. Every
//! applied batch commits its effects together with `last_applied`, so a node serves again as
//! soon as RocksDB opens: no journal replay, no fsck.

// openraft's StorageError (returned through its traits) is large; boxing it here would
// only move the allocation.
#![allow(clippy::result_large_err)]

pub mod apply;
pub mod client;
pub mod db;
pub mod errors;
pub mod handover;
pub mod layout;
pub mod layout_store;
pub mod liveness;
pub mod locks;
pub mod log_store;
pub mod metrics;
pub mod names;
pub mod namespace;
pub mod network;
pub mod node;
pub mod proposer;
pub mod read_lease;
pub mod reads;
pub mod records;
pub mod service;
pub mod snapshot;
pub mod state_machine;
pub mod txn;
pub mod types;
pub mod xattrs;
