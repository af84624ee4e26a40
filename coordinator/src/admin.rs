//! Operator commands: what `partyline admin …` runs.
//!
//! Owns the client side of the admin surface: asking the leader over
//! request/reply (`nodes`, `rebalance`), reading the published map (`slots`,
//! `locate`), and writing drain marks (`drain`, `undrain`). Results are
//! plain `Serialize` structs; printing them (tables or `--json`) is the
//! binary's job. It never writes the slot map: only the leader does.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::RequestErrorKind;
use bytes::Bytes;
use partyline_proto::{slot_of, NodeId, Slot, SlotMap};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::{sleep, Instant};

use crate::cluster::{drain_key, is_valid_node_key, Cluster, ClusterError};

/// How long to wait for the leader to answer.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// Poll period while waiting for a drain to take effect.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// What an admin command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nobody answered on the leader's subjects in time.
    #[error("no coordinator leader answered within {0:?}")]
    NoLeader(Duration),
    /// The leader answered with an error.
    #[error("the coordinator leader refused: {0}")]
    Refused(String),
    /// The leader's answer was not understood.
    #[error("unexpected answer from the coordinator leader: {0}")]
    BadReply(#[from] serde_json::Error),
    /// The request could not be sent.
    #[error("request to the coordinator leader failed: {0}")]
    Request(#[from] async_nats::RequestError),
    /// No coordinator has published a slot map yet.
    #[error("no slot map has been published yet (is a coordinator running?)")]
    NoSlotMap,
    /// The node id cannot be a KV key.
    #[error("node id {0:?} cannot be drained: use only letters, digits and -/_=.")]
    InvalidNodeId(String),
    /// Writing the drain mark failed.
    #[error("cannot write the drain mark: {0}")]
    Put(#[from] kv::PutError),
    /// Removing the drain mark failed.
    #[error("cannot remove the drain mark: {0}")]
    Delete(#[from] kv::DeleteError),
    /// The node still owned slots when the wait ended.
    #[error("node {node} still owns {slots} slots after {waited:?}")]
    DrainTimeout {
        /// The node.
        node: String,
        /// Slots it still owns in the newest map.
        slots: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// Talking to NATS failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// One node in the leader's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: String,
    /// gRPC endpoint.
    pub grpc_url: String,
    /// Excluded from placement (its heartbeat says so, or a drain mark exists).
    pub draining: bool,
    /// Milliseconds since the leader last heard its heartbeat.
    pub last_seen_ms: u64,
    /// Slots it owns in the current map.
    pub slots: usize,
}

/// The leader's listing of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesReport {
    /// The id of the coordinator that answered (the leader).
    pub leader: String,
    /// Live nodes, draining ones included.
    pub nodes: Vec<NodeStatus>,
}

/// The leader's answer to a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceReport {
    /// The epoch in force afterwards (unchanged when nothing moved).
    pub epoch: u64,
    /// Slots whose owner changed.
    pub moved_slots: usize,
}

/// One node's share of the published map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlots {
    /// Node id.
    pub id: String,
    /// gRPC endpoint.
    pub grpc_url: String,
    /// How many slots it owns.
    pub slots: usize,
}

/// The published slot map, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotsReport {
    /// The map's epoch.
    pub epoch: u64,
    /// Each node of the map and its slot count.
    pub nodes: Vec<NodeSlots>,
    /// The owner's node id of every slot, indexed by slot number.
    pub owners: Vec<String>,
}

/// Where a room lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The room name asked about.
    pub room: String,
    /// Its slot.
    pub slot: u16,
    /// The epoch of the map answering.
    pub epoch: u64,
    /// The owning node's id.
    pub node: String,
    /// The owning node's gRPC endpoint.
    pub grpc_url: String,
}

/// Result of [`drain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// The node.
    pub node: String,
    /// Epoch of the newest map seen (0 when there is none).
    pub epoch: u64,
    /// Slots the node owns in that map (0 when the drain was awaited).
    pub slots: usize,
}

/// The envelope of a leader's reply: the result, or `{"error": …}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Reply<T> {
    Failed { error: String },
    Done(T),
}

/// Lists the live nodes, as the leader sees them, and names the leader.
pub async fn nodes(cluster: &Cluster) -> Result<NodesReport, AdminError> {
    ask_leader(cluster, cluster.admin_nodes_subject()).await
}

/// Has the leader recompute the map from scratch over the live nodes now.
pub async fn rebalance(cluster: &Cluster) -> Result<RebalanceReport, AdminError> {
    ask_leader(cluster, cluster.admin_rebalance_subject()).await
}

/// The published map: epoch, per-node slot counts, every slot's owner.
pub async fn slots(cluster: &Cluster) -> Result<SlotsReport, AdminError> {
    let (map, _) = cluster
        .read_slot_map()
        .await?
        .ok_or(AdminError::NoSlotMap)?;
    let counts = map.slot_counts();
    Ok(SlotsReport {
        epoch: map.epoch(),
        nodes: map
            .nodes()
            .iter()
            .zip(counts)
            .map(|(node, slots)| NodeSlots {
                id: node.id.to_string(),
                grpc_url: node.grpc_url.clone(),
                slots,
            })
            .collect(),
        owners: Slot::all()
            .map(|slot| map.owner(slot).id.to_string())
            .collect(),
    })
}

/// Which node owns `room`, per the published map.
pub async fn locate(cluster: &Cluster, room: &str) -> Result<Location, AdminError> {
    let (map, _) = cluster
        .read_slot_map()
        .await?
        .ok_or(AdminError::NoSlotMap)?;
    let slot = slot_of(room);
    let owner = map.owner(slot);
    Ok(Location {
        room: room.to_owned(),
        slot: slot.get(),
        epoch: map.epoch(),
        node: owner.id.to_string(),
        grpc_url: owner.grpc_url.clone(),
    })
}

/// Marks `node` as draining; with `wait`, also waits until the published map
/// gives it no slot (failing with [`AdminError::DrainTimeout`] after `wait`).
///
/// The mark stays until [`undrain`]; a node that is not running is marked
/// all the same, so it gets no slots when it starts. Draining the last
/// placeable node never completes: the leader never publishes a map without
/// nodes, so the wait ends in [`AdminError::DrainTimeout`].
pub async fn drain(
    cluster: &Cluster,
    node: &str,
    wait: Option<Duration>,
) -> Result<DrainReport, AdminError> {
    let id = node_key(node)?;
    let store = cluster.map_store().await?;
    store
        .put(drain_key(&id), Bytes::from_static(b"draining"))
        .await?;
    let started = Instant::now();
    loop {
        let map = cluster.read_slot_map().await?.map(|(map, _)| map);
        let report = DrainReport {
            node: node.to_owned(),
            epoch: map.as_ref().map_or(0, SlotMap::epoch),
            slots: map.as_ref().map_or(0, |map| slots_of(map, &id)),
        };
        let Some(wait) = wait else { return Ok(report) };
        if report.slots == 0 {
            return Ok(report);
        }
        if started.elapsed() >= wait {
            return Err(AdminError::DrainTimeout {
                node: report.node,
                slots: report.slots,
                waited: started.elapsed(),
            });
        }
        sleep(DRAIN_POLL).await;
    }
}

/// Removes `node`'s drain mark; the leader gives it slots again (at once
/// with `rebalance_on_join`, otherwise on the next [`rebalance`]).
pub async fn undrain(cluster: &Cluster, node: &str) -> Result<(), AdminError> {
    let id = node_key(node)?;
    let store = cluster.map_store().await?;
    store.delete(drain_key(&id)).await?;
    Ok(())
}

/// How many slots `node` owns in `map`.
pub fn slots_of(map: &SlotMap, node: &NodeId) -> usize {
    map.nodes()
        .iter()
        .zip(map.slot_counts())
        .filter(|(info, _)| &info.id == node)
        .map(|(_, count)| count)
        .sum()
}

fn node_key(node: &str) -> Result<NodeId, AdminError> {
    let id = NodeId::new(node);
    if is_valid_node_key(&id) {
        Ok(id)
    } else {
        Err(AdminError::InvalidNodeId(node.to_owned()))
    }
}

/// Requests `subject` from the leader, retrying while nobody listens (a
/// leader change in progress) until [`LEADER_TIMEOUT`].
async fn ask_leader<T: DeserializeOwned>(
    cluster: &Cluster,
    subject: String,
) -> Result<T, AdminError> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let request = cluster.client().request(subject.clone(), Bytes::new());
        let answer = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => return Err(AdminError::NoLeader(LEADER_TIMEOUT)),
            Ok(answer) => answer,
        };
        match answer {
            Ok(message) => {
                return match serde_json::from_slice::<Reply<T>>(&message.payload)? {
                    Reply::Done(result) => Ok(result),
                    Reply::Failed { error } => Err(AdminError::Refused(error)),
                };
            }
            Err(err) if err.kind() == RequestErrorKind::NoResponders => {
                if Instant::now() + DRAIN_POLL >= deadline {
                    return Err(AdminError::NoLeader(LEADER_TIMEOUT));
                }
                sleep(DRAIN_POLL).await;
            }
            Err(err) if err.kind() == RequestErrorKind::TimedOut => {
                return Err(AdminError::NoLeader(LEADER_TIMEOUT));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_results_or_errors() {
        let ok: Reply<RebalanceReport> =
            serde_json::from_str(r#"{"epoch":4,"moved_slots":1024}"#).unwrap();
        assert!(matches!(
            ok,
            Reply::Done(RebalanceReport {
                epoch: 4,
                moved_slots: 1024
            })
        ));
        let failed: Reply<Vec<NodeStatus>> =
            serde_json::from_str(r#"{"error":"not ready"}"#).unwrap();
        assert!(matches!(failed, Reply::Failed { error } if error == "not ready"));
        let listing: Reply<Vec<NodeStatus>> = serde_json::from_str("[]").unwrap();
        assert!(matches!(listing, Reply::Done(nodes) if nodes.is_empty()));
    }

    #[test]
    fn the_no_leader_message_is_clear() {
        let message = AdminError::NoLeader(LEADER_TIMEOUT).to_string();
        assert!(
            message.starts_with("no coordinator leader answered"),
            "{message}"
        );
    }

    #[test]
    fn node_ids_must_fit_a_key() {
        assert!(node_key("room-node-1").is_ok());
        assert!(matches!(node_key("a b"), Err(AdminError::InvalidNodeId(_))));
    }
}
