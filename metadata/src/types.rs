//! The openraft type configuration: what a Raft entry carries and what applying it returns.

use std::fmt;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Cairn's metadata group.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = tokio::fs::File,
);

/// A member of the group as the membership config records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
    pub hall: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.addr, self.hall)
    }
}

/// One Raft entry: a batch of client mutations proposed together (group commit), stamped
/// with the leader's clock so that every voter applies them identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Version of this layout: the group's committed entry format (`SetEntryFormat`). A
    /// voter refuses to apply an entry of a format its build does not read (it stops
    /// rather than guess); the format is raised only once every member reads the new one.
    pub format: u16,
    /// Leader's wall clock in ns since the epoch; the state machine never lets it go back.
    pub now_ns: i64,
    /// Encoded `MetaRequest`s.
    pub requests: Vec<Vec<u8>>,
    /// End write sessions whose lease expired by `now_ns`.
    pub expire_sessions: bool,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal(v{}, {} requests)", self.format, self.requests.len())
    }
}

/// The answers to a [`Proposal`]'s requests, in order (encoded `MetaReply`s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub replies: Vec<Vec<u8>>,
}
