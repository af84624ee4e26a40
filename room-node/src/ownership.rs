//! Which rooms this node may serve: the current slot map's answer for this
//! node's id. Every attach is checked here, and so is every map change, so
//! that rooms whose slot moved away are released.

use std::sync::Arc;

use partyline_proto::pb::{self, node_frame};
use partyline_proto::{Epoch, NodeId, RoomName, SlotMap};
use tokio::sync::watch;

/// The slot map as this node sees it; `None` before the first map arrives
/// (a fresh cluster member owns nothing yet).
pub type SlotMapWatch = watch::Receiver<Option<Arc<SlotMap>>>;

/// A room this node does not own under the map of `epoch` (0: no map yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the owner of the room at epoch {epoch}")]
pub struct NotOwner {
    /// The epoch of the map that says so.
    pub epoch: Epoch,
}

impl NotOwner {
    /// The frame that tells a gateway, so it re-reads the map and retries
    /// at the room's owner.
    pub fn frame(self) -> pb::NodeFrame {
        pb::NodeFrame {
            kind: Some(node_frame::Kind::NotOwner(pb::NotOwner {
                epoch: self.epoch.get(),
            })),
        }
    }
}

/// This node's view of ownership. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ownership {
    node_id: NodeId,
    slot_map: SlotMapWatch,
}

impl Ownership {
    /// Ownership of `node_id` under the maps `slot_map` delivers.
    pub fn new(node_id: NodeId, slot_map: SlotMapWatch) -> Self {
        Self { node_id, slot_map }
    }

    /// The current epoch when this node owns `room` under the current
    /// map, else why not.
    pub fn check(&self, room: &RoomName) -> Result<Epoch, NotOwner> {
        match &*self.slot_map.borrow() {
            Some(map) if map.owner_of_room(room.as_str()).id == self.node_id => {
                Ok(Epoch::new(map.epoch()))
            }
            Some(map) => Err(NotOwner {
                epoch: Epoch::new(map.epoch()),
            }),
            None => Err(NotOwner { epoch: Epoch::NONE }),
        }
    }

    /// The current map's epoch ([`Epoch::NONE`] before the first map).
    pub fn epoch(&self) -> Epoch {
        self.slot_map
            .borrow()
            .as_ref()
            .map_or(Epoch::NONE, |map| Epoch::new(map.epoch()))
    }

    /// How many slots the current map gives this node.
    pub fn owned_slots(&self) -> usize {
        let map = self.slot_map.borrow();
        let Some(map) = map.as_ref() else { return 0 };
        map.nodes()
            .iter()
            .position(|node| node.id == self.node_id)
            .map_or(0, |index| map.slot_counts()[index])
    }

    /// Waits for the next map; `false` when no more maps will come.
    pub async fn changed(&mut self) -> bool {
        self.slot_map.changed().await.is_ok()
    }
}
