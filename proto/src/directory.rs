//! A directory of live actors by room, for the roles that run one actor
//! per room (the room node's rooms, the gateway's upstream streams). Each
//! entry is a handle plus its [`Live`] marker: a generation, so an actor
//! that exits removes only its own entry and never a successor's, and an
//! exit signal, so a caller that met an actor on its way out waits for it
//! to be gone instead of polling. Plain data under a mutex: it spawns
//! nothing and does no I/O (the role spawns the actor and reports its
//! exit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::RoomName;

/// One actor's place in a [`Directory`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Live {
    generation: u64,
    exited: CancellationToken,
}

impl Live {
    /// Resolves once the actor has exited and left the directory (at once
    /// if it has).
    pub async fn exited(&self) {
        self.exited.cancelled().await
    }

    /// Whether the actor has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.is_cancelled()
    }
}

struct Entry<H> {
    handle: H,
    live: Live,
}

/// Live actors by room: at most one per room. Cheap to clone; clones share
/// the directory.
pub struct Directory<H> {
    entries: Arc<Mutex<HashMap<RoomName, Entry<H>>>>,
    next_generation: Arc<AtomicU64>,
}

impl<H> Clone for Directory<H> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            next_generation: self.next_generation.clone(),
        }
    }
}

impl<H> Default for Directory<H> {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
            next_generation: Arc::default(),
        }
    }
}

impl<H: Clone> Directory<H> {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomName, Entry<H>>> {
        // Only handles: a panic elsewhere cannot leave the map torn.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `room`'s live actor, if any.
    pub fn get(&self, room: &RoomName) -> Option<(H, Live)> {
        self.lock()
            .get(room)
            .map(|entry| (entry.handle.clone(), entry.live.clone()))
    }

    /// `room`'s live actor, or a new one made by `spawn` (given the new
    /// entry's [`Live`], to report its exit with [`Self::exited`]) under
    /// the directory's lock, so two callers never start two actors.
    pub fn get_or_spawn(&self, room: &RoomName, spawn: impl FnOnce(&Live) -> H) -> (H, Live) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get(room) {
            return (entry.handle.clone(), entry.live.clone());
        }
        let live = Live {
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            exited: CancellationToken::new(),
        };
        let handle = spawn(&live);
        entries.insert(
            room.clone(),
            Entry {
                handle: handle.clone(),
                live: live.clone(),
            },
        );
        (handle, live)
    }

    /// Reports that the actor `live` marks has exited: its entry leaves
    /// the directory (unless a successor holds the room already), then
    /// everyone waiting on [`Live::exited`] wakes.
    pub fn exited(&self, room: &RoomName, live: &Live) {
        {
            let mut entries = self.lock();
            if entries
                .get(room)
                .is_some_and(|entry| entry.live.generation == live.generation)
            {
                entries.remove(room);
            }
        }
        live.exited.cancel();
    }

    /// Whether `room` has a live actor.
    pub fn contains(&self, room: &RoomName) -> bool {
        self.lock().contains_key(room)
    }

    /// How many actors are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every live room and its handle, as of now.
    pub fn handles(&self) -> Vec<(RoomName, H)> {
        self.lock()
            .iter()
            .map(|(room, entry)| (room.clone(), entry.handle.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_the_actor_exits_and_a_successor_is_kept() {
        let directory = Directory::<u32>::new();
        let mut spawned = 0;
        let (first, live) = directory.get_or_spawn(&room("a"), |_| {
            spawned += 1;
            1
        });
        let (again, _) = directory.get_or_spawn(&room("a"), |_| unreachable!("one per room"));
        assert_eq!((first, again, spawned), (1, 1, 1));

        let waiter = tokio::spawn({
            let live = live.clone();
            async move { live.exited().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "woke before the exit");
        directory.exited(&room("a"), &live);
        waiter.await.unwrap();
        assert!(directory.is_empty());

        // A late exit report of an old actor leaves its successor alone.
        let (second, _) = directory.get_or_spawn(&room("a"), |_| 2);
        assert_eq!(second, 2);
        directory.exited(&room("a"), &live);
        assert_eq!(directory.get(&room("a")).map(|(h, _)| h), Some(2));
        assert_eq!(directory.handles(), vec![(room("a"), 2)]);
    }
}
