//! A room's storage as its actor sees it. The backend is chosen once, when
//! the node starts ([`NodeStorage`], handed to [`crate::run`]): the
//! embedded file store ([`files`]: `partyline dev` and shared-directory
//! clusters) or remote storage ([`remote`]: a Redis log and a snapshot
//! store), plus an in-memory one with an outage switch for unit tests.
//! Every backend reads and writes snapshots with the one [`codec`].
//!
//! The actor appends before it broadcasts and snapshots on its triggers;
//! failures are sorted once, into [`StorageError`]: retry later
//! (`Unavailable`: Redis or the object store unreachable, the local disk
//! full), hand the room over (`Fenced`: a newer owner holds its slot), or
//! stop the room (`Failed`: a local disk error). This module never decides
//! when to snapshot or what to hold (the room does).
//!
//! Backends are an enum, not trait objects: every room's actor future
//! holds its append future, and an enum keeps that inline, unboxed.

pub mod codec;
pub mod files;
mod locks;
#[cfg(test)]
pub(crate) mod memory;
pub mod remote;
mod scripts;
mod snapshot_store;
mod sync_queue;
mod tombstone;
mod versions;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use partyline_proto::{Epoch, RoomName};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update, WriteTxn};

use crate::config::{RoomMode, RoomNodeConfig};
pub use files::{DataDirLock, Retention, RoomFiles, RoomLock, StoreError, SyncQueue};
pub use remote::{RemoteError, RemoteRoom, RemoteStorage, SnapshotStore};
pub use tombstone::Tombstone;
pub use versions::{valid_id, valid_label, Version, MAX_LABEL_BYTES};

/// Any backend's underlying error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Corrupt or missing snapshots skipped by loads in this process, for
/// logs now and metrics later.
static CORRUPT_SNAPSHOTS: AtomicU64 = AtomicU64::new(0);

/// How many corrupt or missing snapshots loads in this process skipped.
pub fn corrupt_snapshots_total() -> u64 {
    CORRUPT_SNAPSHOTS.load(Ordering::Relaxed)
}

fn count_corrupt() -> u64 {
    crate::telemetry::metrics().corrupt_snapshots.add(1, &[]);
    CORRUPT_SNAPSHOTS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Why storage failed, sorted by what the room must do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store cannot take requests now (Redis or the object store
    /// unreachable, or the local disk full; nothing of the request was
    /// kept): hold what waits and retry.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// A newer owner claimed the room's slot at `epoch`: nothing was
    /// written, and nothing ever will be from this node. Release the room
    /// without acknowledging what waits (its clients still hold it and
    /// send it to the new owner).
    #[error("fenced: the room's slot belongs to epoch {epoch}")]
    Fenced {
        /// The newer epoch.
        epoch: Epoch,
    },
    /// The local files failed: the room cannot persist; stop it. (Boxed:
    /// errors travel in every room's actor future.)
    #[error(transparent)]
    Failed(Box<StoreError>),
    /// The blocking task doing the work panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<StoreError> for StorageError {
    fn from(error: StoreError) -> Self {
        if error.is_disk_full() {
            Self::Unavailable(error.into())
        } else {
            Self::Failed(Box::new(error))
        }
    }
}

impl From<RemoteError> for StorageError {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Fenced { current, .. } => Self::Fenced {
                epoch: Epoch::new(current),
            },
            error => Self::Unavailable(error.into()),
        }
    }
}

/// Why a room could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The room's storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The initial-content hook (`load_url`) failed.
    #[error("initial content: {0}")]
    Hook(#[from] crate::hooks::HookError),
    /// The loaded room's document stopped matching its log (see
    /// [`crate::protocol::SyncRoom::diverged`]); it is loaded again.
    #[error("the document no longer matches its log; the room is loaded again")]
    Diverged,
}

/// The node's storage, chosen once at start-up. Cheap to clone (and one
/// pointer wide: every room's actor future holds one).
#[derive(Debug, Clone)]
pub struct NodeStorage(Arc<Backend>);

#[derive(Debug)]
enum Backend {
    Files(FilesNode),
    Remote(RemoteStorage),
    #[cfg(test)]
    Memory(memory::MemoryStorage),
}

/// The file backend's node-wide parts.
#[derive(Debug, Clone)]
struct FilesNode {
    data_dir: PathBuf,
    /// Lock each room's files while it is loaded (nodes share the
    /// directory).
    room_locks: bool,
    room_lock_timeout: Duration,
    sync_queue: SyncQueue,
}

/// A loaded room: its document, storage and (shared directories) lock.
pub struct Loaded {
    /// The document, with the snapshot and log applied.
    pub doc: Doc,
    /// The room's storage, ready for appends.
    pub storage: RoomStorage,
    /// Held while the room is loaded, when nodes share a directory.
    pub lock: Option<RoomLock>,
    /// Whether anything was stored for the room (a new room has nothing).
    pub stored: bool,
    /// Set when the room is deleted but restorable: nothing else was read
    /// (`doc` is empty), and the room refuses its clients.
    pub tombstone: Option<Tombstone>,
}

impl NodeStorage {
    /// Rooms in `config.data_dir` (locked per room when
    /// `config.room_locks`). The caller holds the directory's
    /// [`DataDirLock`] unless nodes share it.
    pub fn files(config: &RoomNodeConfig) -> Self {
        Self(Arc::new(Backend::Files(FilesNode {
            data_dir: config.data_dir.clone(),
            room_locks: config.room_locks,
            room_lock_timeout: config.room_lock_timeout,
            sync_queue: SyncQueue::default(),
        })))
    }

    /// Rooms in Redis and a snapshot store.
    pub fn remote(remote: RemoteStorage) -> Self {
        Self(Arc::new(Backend::Remote(remote)))
    }

    /// Rooms in memory (unit tests).
    #[cfg(test)]
    pub(crate) fn memory(memory: memory::MemoryStorage) -> Self {
        Self(Arc::new(Backend::Memory(memory)))
    }

    /// The log segments waiting for an fsync (file backend only).
    pub fn sync_queue(&self) -> Option<SyncQueue> {
        match &*self.0 {
            Backend::Files(files) => Some(files.sync_queue.clone()),
            _ => None,
        }
    }

    /// Loads `room`: newest valid snapshot plus the log after it, claiming
    /// its slot at `epoch` on remote storage.
    pub async fn load(
        &self,
        config: &RoomNodeConfig,
        room: &RoomName,
        epoch: Epoch,
    ) -> Result<Loaded, StorageError> {
        let mode = config.mode_of(room.as_str());
        if mode == RoomMode::Ephemeral {
            tracing::debug!(room = %room, updates = 0, "room loaded");
            return Ok(Loaded {
                doc: Doc::new(),
                storage: RoomStorage::ephemeral(),
                lock: None,
                stored: false,
                tombstone: None,
            });
        }
        let retention = match mode {
            RoomMode::History => Retention {
                keep: config.history_versions,
                max_age: config.history_max_age,
            },
            _ => Retention {
                keep: config.snapshots_kept,
                max_age: None,
            },
        };
        let (updates, storage, lock, tombstone) = match &*self.0 {
            Backend::Remote(remote) => {
                let Retention { keep, max_age } = retention;
                let (storage, loaded) = remote
                    .open(room.as_str(), config.node_id.clone(), epoch.get(), keep)
                    .await?;
                let storage = storage.with_max_age(max_age);
                for name in &loaded.corrupt_snapshots {
                    let total = count_corrupt();
                    tracing::error!(room = %room, snapshot = %name, total, "corrupt or missing snapshot skipped; loading the previous one and the log");
                }
                tracing::debug!(room = %room, log_entries = loaded.log_entries, fetch = ?loaded.took, "room read from remote storage");
                let storage = RoomStorage(Room::Remote(storage));
                (loaded.updates, storage, None, loaded.tombstone)
            }
            Backend::Files(files) => files.load(room, retention).await?,
            #[cfg(test)]
            Backend::Memory(memory) => {
                let (storage, updates, tombstone) = memory.open(room.as_str())?;
                (updates, RoomStorage(Room::Memory(storage)), None, tombstone)
            }
        };
        if tombstone.is_some() {
            tracing::debug!(room = %room, "deleted room: nothing read");
            return Ok(Loaded {
                doc: Doc::new(),
                storage,
                lock,
                stored: true,
                tombstone,
            });
        }
        let stored = !updates.is_empty();
        let room_name = room.clone();
        let keep_deleted = config.policy_of(room.as_str()).keep_deleted;
        // Decoding a large document is CPU work: off the async workers.
        let doc =
            tokio::task::spawn_blocking(move || apply_all(&room_name, &updates, keep_deleted))
                .await?;
        Ok(Loaded {
            doc,
            storage,
            lock,
            stored,
            tombstone: None,
        })
    }

    /// Up to `limit` deleted rooms whose retention ended by `now_ms`
    /// (any node's: the caller purges those it owns).
    pub async fn expired_tombstones(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        match &*self.0 {
            Backend::Remote(remote) => Ok(remote.expired(now_ms, limit).await?),
            Backend::Files(files) => {
                let dir = files.data_dir.clone();
                blocking(move || RoomFiles::expired(&dir, now_ms, limit)).await
            }
            #[cfg(test)]
            Backend::Memory(memory) => memory.expired(now_ms, limit),
        }
    }

    /// Whether the storage answers within a second: Redis `PING`, or the
    /// data directory is there.
    pub async fn check_reachable(&self) -> Result<(), String> {
        let check = async {
            match &*self.0 {
                Backend::Remote(remote) => remote.ping().await.map_err(|e| format!("redis: {e}")),
                Backend::Files(files) => tokio::fs::metadata(&files.data_dir)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("data dir {}: {e}", files.data_dir.display())),
                #[cfg(test)]
                Backend::Memory(memory) => memory.check().map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(Duration::from_secs(1), check)
            .await
            .map_err(|_| "storage did not answer within 1 s".to_owned())?
    }

    /// Whether `room` has stored state (a log or snapshots), without
    /// loading it.
    pub async fn has_state(
        &self,
        config: &RoomNodeConfig,
        room: &RoomName,
    ) -> Result<bool, StorageError> {
        if config.mode_of(room.as_str()) == RoomMode::Ephemeral {
            return Ok(false);
        }
        match &*self.0 {
            Backend::Remote(remote) => Ok(remote.has_state(room.as_str()).await?),
            Backend::Files(files) => {
                let (dir, room) = (files.data_dir.clone(), room.as_str().to_owned());
                blocking(move || RoomFiles::has_state(&dir, &room)).await
            }
            #[cfg(test)]
            Backend::Memory(memory) => memory.has_state(room.as_str()),
        }
    }

    /// Names of rooms with stored state starting with `prefix`, after
    /// `after`, in order, at most `limit`, and whether more follow.
    pub async fn list_rooms(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StorageError> {
        match &*self.0 {
            Backend::Remote(remote) => Ok(remote.list_rooms(prefix, after, limit).await?),
            Backend::Files(files) => {
                let dir = files.data_dir.clone();
                let (prefix, after) = (prefix.to_owned(), after.to_owned());
                blocking(move || RoomFiles::list_rooms(&dir, &prefix, &after, limit)).await
            }
            #[cfg(test)]
            Backend::Memory(memory) => memory.list_rooms(prefix, after, limit),
        }
    }
}

impl NodeStorage {
    /// The stored versions of `room`, newest first (read from storage: the
    /// room need not be loaded, and any node may answer).
    pub async fn versions(
        &self,
        config: &RoomNodeConfig,
        room: &RoomName,
    ) -> Result<Vec<Version>, StorageError> {
        if config.mode_of(room.as_str()) == RoomMode::Ephemeral {
            return Ok(Vec::new());
        }
        match &*self.0 {
            Backend::Remote(remote) => Ok(remote.versions(room.as_str()).await?),
            Backend::Files(files) => {
                let (dir, room) = (files.data_dir.clone(), room.as_str().to_owned());
                blocking(move || RoomFiles::versions(&dir, &room)).await
            }
            #[cfg(test)]
            Backend::Memory(_) => Ok(Vec::new()),
        }
    }

    /// The state (one Yjs update v1) of `room`'s version `id`; `None` when
    /// no valid version has that id.
    pub async fn fetch_version(
        &self,
        config: &RoomNodeConfig,
        room: &RoomName,
        id: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        if config.mode_of(room.as_str()) == RoomMode::Ephemeral || !valid_id(id) {
            return Ok(None);
        }
        match &*self.0 {
            Backend::Remote(remote) => Ok(remote.fetch_version(room.as_str(), id).await?),
            Backend::Files(files) => {
                let dir = files.data_dir.clone();
                let (room, id) = (room.as_str().to_owned(), id.to_owned());
                blocking(move || RoomFiles::fetch_version(&dir, &room, &id)).await
            }
            #[cfg(test)]
            Backend::Memory(_) => Ok(None),
        }
    }
}

impl FilesNode {
    /// Locks (shared directories) and reads `room`'s files.
    async fn load(
        &self,
        room: &RoomName,
        retention: Retention,
    ) -> Result<
        (
            Vec<Vec<u8>>,
            RoomStorage,
            Option<RoomLock>,
            Option<Tombstone>,
        ),
        StorageError,
    > {
        let files = self.clone();
        let room = room.clone();
        blocking(move || {
            let lock = if files.room_locks {
                let started = Instant::now();
                let lock =
                    RoomLock::acquire(&files.data_dir, room.as_str(), files.room_lock_timeout)?;
                tracing::debug!(room = %room, waited = ?started.elapsed(), "room lock acquired");
                Some(lock)
            } else {
                None
            };
            let (opened, loaded) =
                RoomFiles::open(&files.data_dir, room.as_str(), files.sync_queue)?;
            for path in &loaded.corrupt_snapshots {
                let total = count_corrupt();
                tracing::error!(room = %room, path = %path.display(), total, "corrupt snapshot skipped; loading the previous one and the log");
            }
            if loaded.truncated_bytes > 0 {
                tracing::warn!(room = %room, bytes = loaded.truncated_bytes, "cut a torn record from the end of the log");
            }
            let opened = RoomStorage(Room::Files(opened.with_retention(retention)));
            Ok((loaded.updates, opened, lock, loaded.tombstone))
        })
        .await
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StorageError> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

/// A document with every stored update applied, each in its own
/// transaction as the live room applied it (yrs's cleanup at the end of a
/// transaction depends on what the transaction held: one transaction for
/// the whole log gave a crafted room another document after a restart;
/// the cost was 2 % of 5,000 updates' load); undecodable ones are skipped
/// and logged (the rest of the room still loads). With `keep_deleted`
/// (policy `gc = false`) deleted content is kept.
fn apply_all(room: &RoomName, updates: &[Vec<u8>], keep_deleted: bool) -> Doc {
    let doc = Doc::with_options(yrs::Options {
        skip_gc: keep_deleted,
        ..yrs::Options::default()
    });
    for (index, bytes) in updates.iter().enumerate() {
        let mut txn = doc.transact_mut();
        let applied = Update::decode_v1(bytes)
            .map_err(|e| e.to_string())
            .and_then(|u| txn.apply_update(u).map_err(|e| e.to_string()));
        if let Err(error) = applied {
            tracing::error!(room = %room, index, %error, "stored update could not be applied; skipped");
        }
        // As the live room does after every update: held-back blocks are
        // content nobody can see, and re-encoding them can panic in yrs
        // 0.28 (a log written before the room dropped them may hold one).
        if txn.prune_pending().is_some() {
            tracing::warn!(room = %room, index, "stored update depends on content the room does not have; that part dropped");
        }
    }
    tracing::debug!(room = %room, updates = updates.len(), "room loaded");
    doc
}

/// One room's log and snapshots, owned by its actor.
#[derive(Debug)]
pub struct RoomStorage(Room);

#[derive(Debug)]
enum Room {
    /// Log files and snapshots in a directory.
    Files(RoomFiles),
    /// A Redis stream and a snapshot store.
    Remote(RemoteRoom),
    /// Memory (unit tests).
    #[cfg(test)]
    Memory(memory::MemoryRoom),
    /// Nothing is stored (`ephemeral` rooms: awareness, cursors).
    Ephemeral,
}

impl RoomStorage {
    /// Storage that keeps nothing (`ephemeral` rooms).
    pub fn ephemeral() -> Self {
        Self(Room::Ephemeral)
    }

    /// Whether it keeps nothing.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self.0, Room::Ephemeral)
    }

    /// Appends a batch (one write or one round trip). On an error nothing
    /// of the batch is stored.
    pub async fn append(&mut self, updates: &[Bytes]) -> Result<(), StorageError> {
        match &mut self.0 {
            Room::Files(files) => Ok(files.append(updates)?),
            Room::Remote(remote) => Ok(remote.append(updates).await?),
            #[cfg(test)]
            Room::Memory(memory) => memory.append(updates),
            Room::Ephemeral => Ok(()),
        }
    }

    /// Deletes the room's log, snapshots and `tombstone` (its marker and
    /// index entry) for good (fenced on remote storage).
    pub async fn delete(self, tombstone: Option<Tombstone>) -> Result<(), StorageError> {
        match self.0 {
            Room::Files(mut files) => blocking(move || files.delete(tombstone)).await,
            Room::Remote(mut remote) => Ok(remote.delete().await?),
            #[cfg(test)]
            Room::Memory(memory) => memory.delete(),
            Room::Ephemeral => Ok(()),
        }
    }

    /// Marks the room deleted until `tombstone` expires, its data kept
    /// (fenced on remote storage).
    pub async fn tombstone(&mut self, tombstone: Tombstone) -> Result<(), StorageError> {
        match &mut self.0 {
            Room::Files(files) => {
                let marker = files.marker();
                blocking(move || marker.tombstone(&tombstone)).await
            }
            Room::Remote(remote) => Ok(remote.tombstone(&tombstone).await?),
            #[cfg(test)]
            Room::Memory(memory) => memory.set_tombstone(Some(tombstone)),
            Room::Ephemeral => Ok(()),
        }
    }

    /// Takes the room's `tombstone` away: it is served again (fenced on
    /// remote storage).
    pub async fn restore(&mut self, tombstone: Tombstone) -> Result<(), StorageError> {
        match &mut self.0 {
            Room::Files(files) => {
                let marker = files.marker();
                blocking(move || marker.restore(&tombstone)).await
            }
            Room::Remote(remote) => Ok(remote.restore().await?),
            #[cfg(test)]
            Room::Memory(memory) => memory.set_tombstone(None),
            Room::Ephemeral => Ok(()),
        }
    }

    /// A snapshot of `state` covering everything appended so far, labelled
    /// `label` (a version taken through the API), to be written by
    /// [`SnapshotWork::write`] (on another task: a slow object store must
    /// not hold up the room).
    pub fn begin_snapshot(
        &mut self,
        epoch: Epoch,
        state: Vec<u8>,
        label: Option<String>,
    ) -> SnapshotWork {
        SnapshotWork(match &mut self.0 {
            Room::Files(files) => Work::Files(files.begin_snapshot(epoch.get(), state, label)),
            Room::Remote(remote) => Work::Remote(remote.prepare_snapshot(state, label)),
            #[cfg(test)]
            Room::Memory(memory) => Work::Memory(memory.begin_snapshot(state)),
            Room::Ephemeral => Work::Nothing,
        })
    }
}

/// A snapshot on its way to storage.
#[derive(Debug)]
pub struct SnapshotWork(Work);

#[derive(Debug)]
enum Work {
    /// Files: temp file, fsync, rename, trim.
    Files(files::SnapshotJob),
    /// Object store or Redis, registered and trimmed by a fenced script.
    Remote(remote::RemoteSnapshot),
    /// Memory (unit tests).
    #[cfg(test)]
    Memory(memory::MemorySnapshot),
    /// Ephemeral rooms store nothing.
    Nothing,
}

impl SnapshotWork {
    /// The version it stores (none for memory and ephemeral rooms).
    pub fn version(&self) -> Option<&Version> {
        match &self.0 {
            Work::Files(job) => Some(job.version()),
            Work::Remote(snapshot) => Some(snapshot.version()),
            #[cfg(test)]
            Work::Memory(_) => None,
            Work::Nothing => None,
        }
    }

    /// Writes it. A failure leaves the log untouched (it still holds every
    /// update); `Fenced` means a newer owner holds the room's slot, so this
    /// node's snapshot was refused, as it must be.
    pub async fn write(self) -> Result<(), StorageError> {
        match self.0 {
            Work::Files(job) => blocking(move || job.write()).await,
            Work::Remote(snapshot) => Ok(snapshot.write().await?),
            #[cfg(test)]
            Work::Memory(snapshot) => snapshot.write(),
            Work::Nothing => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use partyline_proto::NodeId;
    use yrs::{GetString, ReadTxn, StateVector, Text};

    fn edit(doc: &Doc, text: &str) -> Bytes {
        let t = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let len = t.len(&txn);
            t.insert(&mut txn, len, text);
        }
        doc.transact().encode_state_as_update_v1(&before).into()
    }

    #[test]
    fn a_load_applies_each_update_as_the_live_room_did() {
        // Found by fuzzing: a crafted update (formats beside text whose
        // origins the same update deletes, the rest held back) that one
        // transaction for the whole log turned into more deletions than
        // the live room made. The base is the fuzz target's.
        let base = Doc::with_client_id(1);
        let (text, map) = (base.get_or_insert_text("t"), base.get_or_insert_map("m"));
        let array = base.get_or_insert_array("a");
        {
            let mut txn = base.transact_mut();
            text.insert(&mut txn, 0, "hello");
            let inner = yrs::Map::insert(&map, &mut txn, "inner", yrs::MapPrelim::default());
            yrs::Map::insert(&inner, &mut txn, "x", 1);
            yrs::Array::push_back(&array, &mut txn, "one");
            yrs::Array::push_back(&array, &mut txn, 2);
        }
        let state = base
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let world = vec![
            0x01, 0x01, 0x2a, 0x00, 0x84, 0x01, 0x05, 0x06, 0x20, 0x77, 0x6f, 0x72, 0x6c, 0x64,
            0x00,
        ];
        let crafted = vec![
            0x01, 0x05, 0x2a, 0x06, 0xc1, 0x01, 0x06, 0x01, 0x03, 0x0a, 0xc4, 0x2a, 0x06, 0x01,
            0x03, 0x01, 0x62, 0xc6, 0x2a, 0x07, 0x01, 0x00, 0x04, 0x62, 0x6f, 0x6c, 0x64, 0x04,
            0x6e, 0x75, 0x6c, 0x6c, 0xc6, 0x01, 0x01, 0x01, 0x31, 0x04, 0x62, 0x6f, 0x6c, 0x64,
            0x04, 0x74, 0x72, 0x75, 0x65, 0x00, 0x12, 0x00, 0x00, 0x02, 0x45, 0x01, 0x00, 0x28,
            0x7b, 0x22, 0x61, 0x22, 0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x67, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xd4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x01,
            0x03, 0x00,
        ];
        let log = [state, world, crafted];
        let live = Doc::new();
        for update in &log {
            let mut txn = live.transact_mut();
            txn.apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
            txn.prune_pending();
        }
        let loaded = apply_all(&RoomName::new("r").unwrap(), &log, false);
        assert_eq!(loaded.transact().snapshot(), live.transact().snapshot());
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_is_counted_and_the_room_still_loads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = RoomNodeConfig::new(NodeId::new("n"), dir.path().to_owned());
        let room = RoomName::new("doc-counted").unwrap();
        let doc = Doc::new();
        let state = |doc: &Doc| {
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
        };
        let storage = NodeStorage::files(&config);
        let mut loaded = storage.load(&config, &room, Epoch::new(1)).await.unwrap();
        for text in ["a;", "b;"] {
            loaded.storage.append(&[edit(&doc, text)]).await.unwrap();
            loaded
                .storage
                .begin_snapshot(Epoch::new(1), state(&doc), None)
                .write()
                .await
                .unwrap();
        }
        loaded.storage.append(&[edit(&doc, "c;")]).await.unwrap();
        drop(loaded);
        let room_dir = RoomFiles::room_dir(dir.path(), room.as_str());
        let newest = std::fs::read_dir(&room_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("snapshot-") && name.ends_with(".bin")
            })
            .max()
            .unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&newest, bytes).unwrap();

        let before = corrupt_snapshots_total();
        let loaded = storage.load(&config, &room, Epoch::new(1)).await.unwrap();
        assert_eq!(corrupt_snapshots_total(), before + 1);
        let t = loaded.doc.get_or_insert_text("t");
        assert_eq!(t.get_string(&loaded.doc.transact()), "a;b;c;");
    }

    #[tokio::test]
    async fn a_gc_false_room_keeps_deleted_content_for_snapshot_diffs() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RoomNodeConfig::new(NodeId::new("n"), dir.path().to_owned());
        let policy = crate::config::RoomPolicy {
            keep_deleted: true,
            ..Default::default()
        };
        config.policies.push(("keep-".to_owned(), policy));
        let storage = NodeStorage::files(&config);
        for (name, kept) in [("keep-1", true), ("other", false)] {
            let room = RoomName::new(name).unwrap();
            let mut loaded = storage.load(&config, &room, Epoch::new(1)).await.unwrap();
            loaded
                .storage
                .append(&[edit(&Doc::new(), "forgotten words")])
                .await
                .unwrap();
            drop(loaded);
            let loaded = storage.load(&config, &room, Epoch::new(1)).await.unwrap();
            let doc = loaded.doc;
            let t = doc.get_or_insert_text("t");
            {
                let mut txn = doc.transact_mut();
                let len = t.len(&txn);
                t.remove_range(&mut txn, 0, len);
            }
            let state = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            let found = state.windows(9).any(|w| w == b"forgotten");
            assert_eq!(found, kept, "{name}: deleted text kept");
        }
    }
}
