//! The live rooms of this node: room name → running actor.
//!
//! The map holds only handles; each room's state lives in its actor. A room
//! is spawned on first attach and removed by its supervisor when the actor
//! exits (idle, shutdown, failure or panic), so the next attach loads it
//! again from storage. Attaching retries while a room is unloading: the old
//! actor finishes its snapshot before it leaves the map, so the new one
//! loads everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use partyline_proto::RoomName;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RoomNodeConfig;
use crate::room::{self, ExitReason, LinkId, LinkSender, RoomCommand, RoomHandle};

/// Why a link could not attach to a room.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The room kept failing to load or unloading past the deadline.
    #[error("room {0} is unavailable")]
    Unavailable(RoomName),
}

struct Entry {
    handle: RoomHandle,
    generation: u64,
}

/// Live rooms. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    rooms: Arc<Mutex<HashMap<RoomName, Entry>>>,
    next_generation: Arc<std::sync::atomic::AtomicU64>,
    config: Arc<RoomNodeConfig>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Registry {
    /// An empty registry whose actors stop on `cancel` and are tracked by
    /// `tracker` (so shutdown can wait for their final snapshots).
    pub fn new(
        config: Arc<RoomNodeConfig>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            rooms: Arc::default(),
            next_generation: Arc::default(),
            config,
            tracker,
            cancel,
        }
    }

    /// Number of rooms in memory.
    pub fn live_rooms(&self) -> usize {
        self.lock().len()
    }

    /// Attaches a gateway stream to `room`, loading the room if needed.
    pub async fn attach(
        &self,
        room: &RoomName,
        epoch: u64,
        link: LinkId,
        tx: LinkSender,
    ) -> Result<RoomHandle, AttachError> {
        let deadline = tokio::time::Instant::now() + room::ATTACH_DEADLINE;
        loop {
            let handle = self.get_or_spawn(room, epoch);
            let (reply_tx, reply_rx) = oneshot::channel();
            let command = RoomCommand::AttachLink {
                link,
                tx: tx.clone(),
                reply: reply_tx,
            };
            if handle.send(command).await.is_ok() && reply_rx.await.is_ok() {
                return Ok(handle);
            }
            if tokio::time::Instant::now() >= deadline || self.cancel.is_cancelled() {
                return Err(AttachError::Unavailable(room.clone()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Entry>> {
        // The map is only handles; a panic elsewhere cannot leave it torn.
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_or_spawn(&self, room: &RoomName, epoch: u64) -> RoomHandle {
        let mut rooms = self.lock();
        if let Some(entry) = rooms.get(room) {
            return entry.handle.clone();
        }
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (handle, actor) = room::spawn_actor(
            room.clone(),
            self.config.clone(),
            epoch,
            self.cancel.child_token(),
        );
        rooms.insert(
            room.clone(),
            Entry {
                handle: handle.clone(),
                generation,
            },
        );
        let task = self.tracker.spawn(actor);
        let registry = self.clone();
        let room = room.clone();
        self.tracker.spawn(async move {
            match task.await {
                Ok(ExitReason::Idle) => {
                    tracing::debug!(room = %room, "room unloaded after idle timeout")
                }
                Ok(ExitReason::Shutdown) => {
                    tracing::debug!(room = %room, "room stopped for shutdown")
                }
                Ok(ExitReason::Failed(error)) => {
                    tracing::error!(room = %room, %error, "room failed")
                }
                Err(join) if join.is_panic() => {
                    tracing::error!(room = %room, "room actor panicked; its sessions were closed")
                }
                Err(join) => tracing::error!(room = %room, %join, "room actor ended abnormally"),
            }
            let mut rooms = registry.lock();
            if rooms.get(&room).is_some_and(|e| e.generation == generation) {
                rooms.remove(&room);
            }
        });
        handle
    }
}
