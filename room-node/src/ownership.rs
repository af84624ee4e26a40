//! Which rooms this node may serve: the current slot map's answer for this
//! node's id. Every attach is checked here, and so is every map change, so
//! that rooms whose slot moved away are released.

use std::sync::Arc;

use partyline_proto::{NodeId, RoomName, SlotMap};
use tokio::sync::watch;

/// The slot map as this node sees it; `None` before the first map arrives
/// (a fresh cluster member owns nothing yet).
pub type SlotMapWatch = watch::Receiver<Option<Arc<SlotMap>>>;

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

    /// `Ok(epoch)` when this node owns `room` at the current epoch,
    /// `Err(epoch)` otherwise (epoch 0 when there is no map yet).
    pub fn check(&self, room: &RoomName) -> Result<u64, u64> {
        match &*self.slot_map.borrow() {
            Some(map) if map.owner_of_room(room.as_str()).id == self.node_id => Ok(map.epoch()),
            Some(map) => Err(map.epoch()),
            None => Err(0),
        }
    }

    /// The current map's epoch, 0 before the first map.
    pub fn epoch(&self) -> u64 {
        self.slot_map.borrow().as_ref().map_or(0, |map| map.epoch())
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
