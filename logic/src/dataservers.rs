//! The dataservers a logic node writes to: their halls for placement, and one connection
//! each, made on first use and dropped when it fails (the next use reconnects).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_common::config::DataserverEntry;
use cairn_common::file_wire::Capacity;
use cairn_common::ids::{HallId, IdError, NodeId};
use cairn_common::placement::Candidate;
use cairn_dataserver::client::{ClientError, DataserverClient};

const SUSPECT_FOR: Duration = Duration::from_secs(10);
const STAT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Member {
    addr: SocketAddr,
    hall: HallId,
    client: tokio::sync::Mutex<Option<Arc<DataserverClient>>>,
}

#[derive(Debug, Clone)]
pub struct Dataservers {
    members: Arc<HashMap<NodeId, Member>>,
    /// Nodes that failed recently, and when: placement avoids them for `SUSPECT_FOR`, then
    /// tries them again (a restarted dataserver comes back into use on its own).
    suspect: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// Nodes being drained (the metadata group's list): read from, never placed on.
    draining: Arc<Mutex<HashSet<NodeId>>>,
}

impl Dataservers {
    pub fn new(entries: &[DataserverEntry]) -> Result<Dataservers, IdError> {
        let mut members = HashMap::new();
        for e in entries {
            members.insert(
                NodeId(e.node_id),
                Member {
                    addr: e.addr,
                    hall: HallId::new(e.hall.clone())?,
                    client: tokio::sync::Mutex::new(None),
                },
            );
        }
        Ok(Dataservers {
            members: Arc::new(members),
            suspect: Arc::new(Mutex::new(HashMap::new())),
            draining: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    fn suspects(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.suspect.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Placement candidates; a recently failed or draining one reports no free space, so
    /// placement passes it over while others can take the shards.
    pub fn candidates(&self) -> Vec<Candidate> {
        let draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        self.members
            .iter()
            .map(|(id, m)| Candidate {
                node: *id,
                hall: m.hall.clone(),
                free_bytes: u64::from(!self.is_suspect(*id) && !draining.contains(id)),
            })
            .collect()
    }

    /// The metadata group's current list of draining dataservers.
    pub fn set_draining(&self, ids: impl IntoIterator<Item = u32>) {
        *self.draining.lock().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().map(NodeId).collect();
    }

    /// Whether `node` failed within the last `SUSPECT_FOR`.
    pub fn is_suspect(&self, node: NodeId) -> bool {
        self.suspects()
            .get(&node)
            .is_some_and(|since| since.elapsed() < SUSPECT_FOR)
    }

    pub fn hall(&self, node: NodeId) -> Option<&HallId> {
        self.members.get(&node).map(|m| &m.hall)
    }

    /// The connection to `node`, made if needed.
    pub async fn client(&self, node: NodeId) -> Result<Arc<DataserverClient>, ClientError> {
        let member = self
            .members
            .get(&node)
            .ok_or_else(|| ClientError::Io(std::io::Error::other(format!("dataserver {node} is not configured"))))?;
        let mut slot = member.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(DataserverClient::connect(member.addr).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// `node` failed a request: drop its connection and avoid it in placement.
    pub async fn failed(&self, node: NodeId) {
        if let Some(m) = self.members.get(&node) {
            *m.client.lock().await = None;
        }
        self.suspects().insert(node, Instant::now());
    }

    /// The space of the dataservers that answer within `STAT_TIMEOUT`, as file bytes
    /// under a code of `data_shards` + `parity_shards`.
    pub async fn capacity(&self, data_shards: usize, parity_shards: usize) -> Capacity {
        // The connect counts against the timeout too: a dead node must not hold statfs.
        let stats = futures::future::join_all(self.members.keys().map(|id| async move {
            let stat = async { self.client(*id).await.ok()?.stat().await.ok() };
            tokio::time::timeout(STAT_TIMEOUT, stat).await.ok().flatten()
        }))
        .await;
        let usable = |raw: u64| {
            let total = (data_shards + parity_shards) as u128;
            (u128::from(raw) * data_shards as u128 / total.max(1)) as u64
        };
        let reports: Vec<_> = stats.into_iter().flatten().collect();
        Capacity {
            capacity_bytes: usable(reports.iter().map(|r| r.capacity_bytes).sum()),
            free_bytes: usable(reports.iter().map(|r| r.free_bytes).sum()),
            dataservers: self.members.len() as u32,
            reachable: reports.len() as u32,
        }
    }

    /// `node` answered: it is healthy again.
    pub fn answered(&self, node: NodeId) {
        self.suspects().remove(&node);
    }
}
