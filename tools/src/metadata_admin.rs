//! `cairnctl metadata ...`: status of every member, membership changes (sent to the
//! leader), and a look at the namespace.

use anyhow::{bail, Context};
use cairn_common::config::MetadataEntry;
use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::admin_client::AdminClient;
use cairn_common::proto::metadata::{
    AddLearnerRequest, AdminReply, ChangeVotersRequest, FileKind, NodeStatus, RaiseEntryFormatRequest,
    TransferLeaderRequest,
};
use cairn_metadata::client::{admin, member_status, MetadataClient};
use clap::Subcommand;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Subcommand, Debug)]
pub enum MdCommand {
    /// Role, term, log and applied index, snapshot of every member.
    Status,
    /// Add a node as a learner (it receives the log but does not vote).
    AddLearner {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        hall: String,
    },
    /// Promote learners to voters and/or remove members.
    ChangeVoters {
        #[arg(long, value_delimiter = ',')]
        add: Vec<u64>,
        #[arg(long, value_delimiter = ',')]
        remove: Vec<u64>,
    },
    /// After a rolling upgrade: raise the Raft entry format to the newest one every member
    /// applies (the leader asks each). From then on the group writes it, so the previous
    /// build can no longer run here: `rolling-restart` refuses to roll back past it.
    FinalizeUpgrade,
    /// Hand leadership to another voter (before its node stops). It takes about the
    /// voters' election timeout; requests wait only for the last few milliseconds.
    TransferLeader {
        /// The voter to lead next; by default the one whose log reaches furthest.
        #[arg(long)]
        to: Option<u64>,
    },
    /// List a directory given by its path from the root.
    Ls {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Make a directory (its parent must exist).
    Mkdir {
        path: String,
        #[arg(long, default_value = "755", value_parser = parse_mode)]
        mode: u32,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("mode {s:?} is not octal: {e}"))
}

/// The inode of the directory at `path` (components separated by `/`).
async fn resolve(c: &MetadataClient, path: &str) -> anyhow::Result<u64> {
    let mut dir = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir = c
            .lookup(dir, part.as_bytes())
            .await
            .with_context(|| format!("looking up {part:?}"))?
            .inode;
    }
    Ok(dir)
}

pub async fn status(addr: &str) -> anyhow::Result<NodeStatus> {
    member_status(addr).await.map_err(anyhow::Error::msg)
}

/// Whether the member at `addr` reports itself leader.
async fn leads(addr: &str) -> bool {
    status(addr).await.is_ok_and(|s| s.role == "leader")
}

/// The member that reports itself leader: its address and what it reports.
pub async fn leader_status(addrs: &[String]) -> anyhow::Result<(String, NodeStatus)> {
    for a in addrs {
        if let Ok(s) = status(a).await {
            if s.role == "leader" {
                return Ok((a.clone(), s));
            }
        }
    }
    bail!("no member reports itself leader")
}

async fn leader(addrs: &[String]) -> anyhow::Result<AdminClient<Channel>> {
    admin(&leader_status(addrs).await?.0).await.map_err(anyhow::Error::msg)
}

/// The node id of the member that reports itself leader, if one does.
pub async fn leader_id(nodes: &[MetadataEntry]) -> Option<u64> {
    for n in nodes {
        if leads(&n.addr.to_string()).await {
            return Some(n.node_id);
        }
    }
    None
}

/// Has the leader hand leadership to voter `to` (0: the one whose log reaches furthest);
/// returns the new leader's id, or None when the leader's build predates hand-overs.
pub async fn transfer_leader(addrs: &[String], to: u64) -> anyhow::Result<Option<u64>> {
    match leader(addrs).await?.transfer_leader(TransferLeaderRequest { to }).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            if let Some(e) = reply.error {
                bail!("hand-over refused: {}", e.message);
            }
            Ok(Some(reply.status.map_or(0, |s| s.leader_id)))
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(s.into()),
    }
}

fn report(reply: AdminReply) -> anyhow::Result<()> {
    if let Some(e) = reply.error {
        bail!("refused: {}", e.message);
    }
    if let Some(s) = reply.status {
        println!("voters {:?} learners {:?}", s.voters, s.learners);
    }
    Ok(())
}

pub async fn run(addrs: &[String], command: MdCommand) -> anyhow::Result<()> {
    match command {
        MdCommand::Status => {
            println!(
                "{:<22} {:>4} {:<10} {:>6} {:>10} {:>10} {:>10} {:>7}",
                "addr", "node", "role", "term", "last_log", "applied", "snapshot", "leader"
            );
            for a in addrs {
                match status(a).await {
                    Ok(s) => println!(
                        "{:<22} {:>4} {:<10} {:>6} {:>10} {:>10} {:>10} {:>7}",
                        a, s.node_id, s.role, s.term, s.last_log_index, s.applied_index, s.snapshot_index, s.leader_id
                    ),
                    Err(e) => println!("{a:<22} unreachable: {e}"),
                }
            }
        }
        MdCommand::AddLearner { node_id, addr, hall } => {
            let reply = leader(addrs)
                .await?
                .add_learner(AddLearnerRequest { node_id, addr, hall })
                .await?
                .into_inner();
            report(reply)?;
        }
        MdCommand::ChangeVoters { add, remove } => {
            let reply = leader(addrs)
                .await?
                .change_voters(ChangeVotersRequest { add, remove })
                .await?
                .into_inner();
            report(reply)?;
        }
        MdCommand::FinalizeUpgrade => {
            let (leader, before) = leader_status(addrs).await?;
            let before = before.entry_format;
            let reply = admin(&leader)
                .await
                .map_err(anyhow::Error::msg)?
                .raise_entry_format(RaiseEntryFormatRequest {})
                .await?
                .into_inner();
            if let Some(e) = reply.error {
                bail!("refused: {}", e.message);
            }
            let after = reply.status.map_or(0, |s| s.entry_format);
            if after > before {
                println!("metadata entries are now written in format {after} (was {before})");
            } else {
                println!("metadata entries stay in format {after}: the newest every member applies");
            }
        }
        MdCommand::TransferLeader { to } => match transfer_leader(addrs, to.unwrap_or(0)).await? {
            Some(id) => println!("metadata-{id} leads"),
            None => bail!("the leader's build cannot hand over leadership"),
        },
        MdCommand::Ls { path } => {
            let c = MetadataClient::new(addrs.to_vec(), Duration::from_secs(30));
            let dir = resolve(&c, &path).await?;
            for e in c.readdir_all(dir).await? {
                let a = c.getattr(e.inode).await?;
                let kind = match e.kind() {
                    FileKind::Directory => 'd',
                    FileKind::Symlink => 'l',
                    _ => '-',
                };
                println!(
                    "{kind}{:04o} {:>6} {:>12} {}",
                    a.mode,
                    a.inode,
                    a.size,
                    String::from_utf8_lossy(&e.name)
                );
            }
        }
        MdCommand::Mkdir { path, mode } => {
            let c = MetadataClient::new(addrs.to_vec(), Duration::from_secs(30));
            let trimmed = path.trim_end_matches('/');
            let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
            let parent = resolve(&c, parent).await?;
            let a = c
                .mkdir(parent, name.as_bytes(), mode)
                .await
                .with_context(|| format!("mkdir {path}"))?;
            println!("made {path} (inode {})", a.inode);
        }
    }
    Ok(())
}
