//! An in-memory backend for unit tests: each room's log and newest
//! snapshot in a map, with an outage switch (while it is on, every call
//! fails `Unavailable` and stores nothing) and a fence (appends and
//! snapshots fail `Fenced`), so the room actor's rules for both are tested
//! without Redis. Compiled only for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::tombstone::Tombstone;
use super::StorageError;

/// The node's in-memory store. Clones share it, so a test keeps one to
/// flip the switches and look inside.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryStorage(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    rooms: BTreeMap<String, Stored>,
    down: bool,
    fenced_at: Option<u64>,
    appends: HashMap<String, usize>,
}

/// One room's data.
#[derive(Debug, Default, Clone)]
struct Stored {
    /// Every update appended, in order (never trimmed).
    log: Vec<Vec<u8>>,
    /// The newest snapshot and how many log entries it covers.
    snapshot: Option<(Vec<u8>, usize)>,
    /// Set while the room is deleted.
    tombstone: Option<Tombstone>,
}

/// The outage's error.
#[derive(Debug, thiserror::Error)]
#[error("the in-memory store is down (test outage)")]
struct Outage;

impl MemoryStorage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts or ends an outage.
    pub(crate) fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// From now on, appends and snapshots are refused as from a node whose
    /// slot `epoch` claimed.
    pub(crate) fn fence(&self, epoch: u64) {
        self.lock().fenced_at = Some(epoch);
    }

    /// The updates logged for `room`.
    pub(crate) fn log(&self, room: &str) -> Vec<Vec<u8>> {
        self.lock()
            .rooms
            .get(room)
            .map(|stored| stored.log.clone())
            .unwrap_or_default()
    }

    /// How many appends reached the store for `room`, failed ones included.
    pub(crate) fn appends(&self, room: &str) -> usize {
        self.lock().appends.get(room).copied().unwrap_or(0)
    }

    /// An error while the store is down.
    pub(crate) fn check(&self) -> Result<(), StorageError> {
        if self.lock().down {
            return Err(StorageError::Unavailable(Outage.into()));
        }
        Ok(())
    }

    /// `room`'s snapshot then the log after it (nothing when it is
    /// deleted), its tombstone, and its handle.
    #[allow(clippy::type_complexity)]
    pub(crate) fn open(
        &self,
        room: &str,
    ) -> Result<(MemoryRoom, Vec<Vec<u8>>, Option<Tombstone>), StorageError> {
        self.check()?;
        let stored = self.lock().rooms.get(room).cloned().unwrap_or_default();
        let handle = MemoryRoom {
            storage: self.clone(),
            room: room.to_owned(),
        };
        if stored.tombstone.is_some() {
            return Ok((handle, Vec::new(), stored.tombstone));
        }
        let (mut updates, covered) = match stored.snapshot {
            Some((state, covered)) => (vec![state], covered),
            None => (Vec::new(), 0),
        };
        updates.extend(stored.log[covered..].iter().cloned());
        Ok((handle, updates, None))
    }

    /// Deleted rooms whose retention ended by `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StorageError> {
        self.check()?;
        let inner = self.lock();
        let due = inner.rooms.iter().filter(|(_, stored)| {
            (stored.tombstone).is_some_and(|tombstone| tombstone.expired(now_ms))
        });
        Ok(due.map(|(name, _)| name.clone()).take(limit).collect())
    }

    pub(crate) fn has_state(&self, room: &str) -> Result<bool, StorageError> {
        self.check()?;
        Ok(self.lock().rooms.contains_key(room))
    }

    pub(crate) fn list_rooms(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StorageError> {
        self.check()?;
        let inner = self.lock();
        let mut names: Vec<String> = inner
            .rooms
            .iter()
            .filter(|(name, stored)| {
                name.starts_with(prefix) && name.as_str() > after && stored.tombstone.is_none()
            })
            .take(limit + 1)
            .map(|(name, _)| name.clone())
            .collect();
        let more = names.len() > limit;
        names.truncate(limit);
        Ok((names, more))
    }

    /// Refusals shared by every write: the outage, then the fence.
    fn writable(inner: &Inner) -> Result<(), StorageError> {
        if inner.down {
            return Err(StorageError::Unavailable(Outage.into()));
        }
        if let Some(epoch) = inner.fenced_at {
            return Err(StorageError::Fenced {
                epoch: partyline_proto::Epoch::new(epoch),
            });
        }
        Ok(())
    }
}

/// One room's handle on the in-memory store.
#[derive(Debug)]
pub(crate) struct MemoryRoom {
    storage: MemoryStorage,
    room: String,
}

impl MemoryRoom {
    pub(crate) fn append(&mut self, updates: &[Bytes]) -> Result<(), StorageError> {
        let mut inner = self.storage.lock();
        *inner.appends.entry(self.room.clone()).or_default() += 1;
        MemoryStorage::writable(&inner)?;
        if !updates.is_empty() {
            let stored = inner.rooms.entry(self.room.clone()).or_default();
            stored.log.extend(updates.iter().map(|u| u.to_vec()));
        }
        Ok(())
    }

    pub(crate) fn delete(self) -> Result<(), StorageError> {
        let mut inner = self.storage.lock();
        MemoryStorage::writable(&inner)?;
        inner.rooms.remove(&self.room);
        Ok(())
    }

    /// Marks the room deleted (`Some`) or restores it (`None`).
    pub(crate) fn set_tombstone(
        &mut self,
        tombstone: Option<Tombstone>,
    ) -> Result<(), StorageError> {
        let mut inner = self.storage.lock();
        MemoryStorage::writable(&inner)?;
        inner.rooms.entry(self.room.clone()).or_default().tombstone = tombstone;
        Ok(())
    }

    /// A snapshot covering every entry logged so far.
    pub(crate) fn begin_snapshot(&mut self, state: Vec<u8>) -> MemorySnapshot {
        let covered = self
            .storage
            .lock()
            .rooms
            .get(&self.room)
            .map_or(0, |stored| stored.log.len());
        MemorySnapshot {
            storage: self.storage.clone(),
            room: self.room.clone(),
            state,
            covered,
        }
    }
}

/// A snapshot to store; see [`MemoryRoom::begin_snapshot`].
#[derive(Debug)]
pub(crate) struct MemorySnapshot {
    storage: MemoryStorage,
    room: String,
    state: Vec<u8>,
    covered: usize,
}

impl MemorySnapshot {
    pub(crate) fn write(self) -> Result<(), StorageError> {
        let mut inner = self.storage.lock();
        MemoryStorage::writable(&inner)?;
        let stored = inner.rooms.entry(self.room).or_default();
        stored.snapshot = Some((self.state, self.covered));
        Ok(())
    }
}
