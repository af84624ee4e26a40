//! Room → slot → node.
//!
//! `slot = crc32(room name as UTF-8) mod 4096`, CRC-32 being the IEEE 802.3
//! polynomial (the one zlib, PNG and Ethernet use). Both the hash and
//! [`SLOTS`] are fixed for the life of a deployment: changing either moves
//! every room. The slot map assigns each slot to a node at an epoch; the
//! coordinator computes it, every gateway and room node reads it.

use std::fmt;

/// Number of slots rooms hash into. Never changes for a deployment.
pub const SLOTS: u16 = 4096;

/// A slot number in `0..SLOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u16);

impl Slot {
    /// The slot with this number; `None` when out of range.
    pub fn new(number: u16) -> Option<Self> {
        (number < SLOTS).then_some(Self(number))
    }

    /// The slot number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// All slots in order.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOTS).map(Slot)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The slot a room lives in.
pub fn slot_of(room: &str) -> Slot {
    let hash = crc32fast::hash(room.as_bytes());
    Slot((hash % u32::from(SLOTS)) as u16)
}

/// Stable identity of a room node (`--node-id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Wraps a node id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room node as the slot map knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// gRPC endpoint gateways dial, e.g. `http://127.0.0.1:7001`.
    pub grpc_url: String,
}

/// A slot map's epoch: each new assignment has a higher one, and 0 means
/// no map yet. A node writes only at the epoch it owns a room at, and
/// storage refuses writes older than the newest epoch that claimed the
/// room's slot (fencing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// Before the first map.
    pub const NONE: Self = Self(0);

    /// The epoch numbered `epoch`.
    pub const fn new(epoch: u64) -> Self {
        Self(epoch)
    }

    /// Its number, as the wire and storage carry it.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Epoch {
    fn from(epoch: u64) -> Self {
        Self(epoch)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Which node owns each slot, at one epoch. Immutable: a new assignment is a
/// new map with a higher epoch, published as `Arc<SlotMap>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    epoch: u64,
    nodes: Vec<NodeInfo>,
    /// `owners[slot]` indexes `nodes`; one entry per slot.
    owners: Vec<u16>,
}

/// Why a slot map could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotMapError {
    /// Not exactly [`SLOTS`] owners.
    #[error("slot map has {0} owners, expected {SLOTS}")]
    WrongLength(usize),
    /// An owner index past the node list.
    #[error("slot {slot} names node index {index}, but there are {nodes} nodes")]
    UnknownNode {
        /// The slot.
        slot: u16,
        /// The bad index.
        index: u16,
        /// How many nodes the map has.
        nodes: usize,
    },
    /// A map must have at least one node.
    #[error("slot map has no nodes")]
    NoNodes,
}

impl SlotMap {
    /// Builds a map from a node list and one owner index per slot.
    pub fn new(epoch: u64, nodes: Vec<NodeInfo>, owners: Vec<u16>) -> Result<Self, SlotMapError> {
        if nodes.is_empty() {
            return Err(SlotMapError::NoNodes);
        }
        if owners.len() != usize::from(SLOTS) {
            return Err(SlotMapError::WrongLength(owners.len()));
        }
        if let Some((slot, &index)) = owners
            .iter()
            .enumerate()
            .find(|(_, &index)| usize::from(index) >= nodes.len())
        {
            return Err(SlotMapError::UnknownNode {
                slot: slot as u16,
                index,
                nodes: nodes.len(),
            });
        }
        Ok(Self {
            epoch,
            nodes,
            owners,
        })
    }

    /// The static map of `partyline dev`: one node owns every slot.
    pub fn single(epoch: u64, node: NodeInfo) -> Self {
        Self {
            epoch,
            nodes: vec![node],
            owners: vec![0; usize::from(SLOTS)],
        }
    }

    /// The map's epoch; higher is newer.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The nodes that own at least one slot, or could.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The node owning `slot`.
    pub fn owner(&self, slot: Slot) -> &NodeInfo {
        &self.nodes[usize::from(self.owners[usize::from(slot.get())])]
    }

    /// The node owning `room`.
    pub fn owner_of_room(&self, room: &str) -> &NodeInfo {
        self.owner(slot_of(room))
    }

    /// How many slots each node owns, in `nodes()` order.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for &owner in &self.owners {
            counts[usize::from(owner)] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id),
            grpc_url: format!("http://{id}"),
        }
    }

    #[test]
    fn slot_hash_is_the_documented_crc32() {
        // crc32("123456789") = 0xCBF43926, the standard check value.
        assert_eq!(slot_of("123456789").get(), (0xCBF4_3926u32 % 4096) as u16);
        assert_eq!(slot_of("doc-abc123"), slot_of("doc-abc123"));
        assert!(slot_of("").get() < SLOTS);
    }

    #[test]
    fn single_map_routes_everything_to_its_node() {
        let map = SlotMap::single(7, node("a"));
        assert_eq!(map.epoch(), 7);
        assert_eq!(map.owner_of_room("anything").id.as_str(), "a");
        assert_eq!(map.slot_counts(), vec![usize::from(SLOTS)]);
    }

    #[test]
    fn new_rejects_bad_maps() {
        assert_eq!(
            SlotMap::new(1, vec![], vec![0; 4096]),
            Err(SlotMapError::NoNodes)
        );
        assert_eq!(
            SlotMap::new(1, vec![node("a")], vec![0; 3]),
            Err(SlotMapError::WrongLength(3))
        );
        let mut owners = vec![0; 4096];
        owners[9] = 1;
        assert_eq!(
            SlotMap::new(1, vec![node("a")], owners),
            Err(SlotMapError::UnknownNode {
                slot: 9,
                index: 1,
                nodes: 1
            })
        );
    }
}
