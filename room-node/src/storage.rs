//! A room's storage as its actor sees it: the embedded file store
//! ([`crate::store`], `partyline dev` and shared-directory clusters) or
//! remote storage ([`crate::remote`], Redis log + snapshot store). The actor
//! appends before it broadcasts and snapshots on its triggers; this module
//! hides which store does the work and sorts failures into "retry later"
//! (Redis unreachable) and "stop the room" (a local disk error).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use partyline_proto::RoomName;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use crate::config::{RoomMode, RoomNodeConfig};
use crate::remote::{RemoteError, RemoteRoom};
use crate::store::{RoomFiles, RoomLock, StoreError, SyncQueue};

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

/// Where a room's log and snapshots live.
#[derive(Debug)]
pub enum RoomStorage {
    /// Log files and snapshots in a directory.
    Local(RoomFiles),
    /// A Redis stream and a snapshot store.
    Remote(RemoteRoom),
    /// Nothing is stored (`ephemeral` rooms: awareness, cursors).
    Ephemeral,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The store cannot take writes now; hold the batch and retry.
    #[error("log unavailable: {0}")]
    Unavailable(RemoteError),
    /// The local disk is full; hold the batch and retry, as for an
    /// unreachable log (nothing of it is in the file).
    #[error("log unavailable: {0}")]
    DiskFull(StoreError),
    /// The room cannot persist at all; stop it.
    #[error(transparent)]
    Failed(StoreError),
    /// A newer owner claimed the room's slot at `epoch`: nothing of the
    /// batch was logged, and nothing ever will be from this node. Release
    /// the room without acknowledging the batch (its clients still hold it
    /// and send it to the new owner).
    #[error("log fenced: the room's slot belongs to epoch {epoch}")]
    Fenced {
        /// The newer epoch.
        epoch: u64,
    },
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
}

/// Why a room could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Local files.
    #[error(transparent)]
    Local(#[from] StoreError),
    /// Redis or the snapshot store.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The initial-content hook (`load_url`) failed.
    #[error("initial content: {0}")]
    Hook(#[from] crate::hooks::HookError),
}

/// Loads `room`: newest valid snapshot plus the log after it.
pub async fn load(
    config: &RoomNodeConfig,
    room: &RoomName,
    sync_queue: SyncQueue,
    epoch: u64,
) -> Result<Loaded, LoadError> {
    let mode = config.mode_of(room.as_str());
    if mode == RoomMode::Ephemeral {
        tracing::debug!(room = %room, updates = 0, "room loaded");
        return Ok(Loaded {
            doc: Doc::new(),
            storage: RoomStorage::Ephemeral,
            lock: None,
            stored: false,
        });
    }
    let (updates, storage, lock) = match &config.remote {
        Some(remote) => {
            let (keep, max_age) = match mode {
                RoomMode::History => (config.history_versions, config.history_max_age),
                _ => (config.snapshots_kept, None),
            };
            let (storage, loaded) = remote
                .open(room.as_str(), config.node_id.clone(), epoch, keep)
                .await?;
            let storage = storage.with_max_age(max_age);
            for name in &loaded.corrupt_snapshots {
                let total = count_corrupt();
                tracing::error!(room = %room, snapshot = %name, total, "corrupt or missing snapshot skipped; loading the previous one and the log");
            }
            tracing::debug!(room = %room, log_entries = loaded.log_entries, fetch = ?loaded.took, "room read from remote storage");
            (loaded.updates, RoomStorage::Remote(storage), None)
        }
        None => {
            if mode == RoomMode::History {
                tracing::warn!(room = %room, "history mode needs remote storage (--redis); keeping the newest snapshots only");
            }
            let config = config.clone();
            let room = room.clone();
            let task = tokio::task::spawn_blocking(move || {
                let lock = if config.room_locks {
                    let started = Instant::now();
                    let lock = RoomLock::acquire(
                        &config.data_dir,
                        room.as_str(),
                        config.room_lock_timeout,
                    )?;
                    tracing::debug!(room = %room, waited = ?started.elapsed(), "room lock acquired");
                    Some(lock)
                } else {
                    None
                };
                let (files, loaded) = RoomFiles::open(&config.data_dir, room.as_str(), sync_queue)?;
                for path in &loaded.corrupt_snapshots {
                    let total = count_corrupt();
                    tracing::error!(room = %room, path = %path.display(), total, "corrupt snapshot skipped; loading the previous one and the log");
                }
                if loaded.truncated_bytes > 0 {
                    tracing::warn!(room = %room, bytes = loaded.truncated_bytes, "cut a torn record from the end of the log");
                }
                Ok::<_, StoreError>((loaded.updates, RoomStorage::Local(files), lock))
            });
            task.await.map_err(|join| StoreError::Io {
                action: "load room",
                path: Default::default(),
                source: std::io::Error::other(join.to_string()),
            })??
        }
    };
    let stored = !updates.is_empty();
    let room_name = room.clone();
    // Decoding a large document is CPU work: off the async workers.
    let doc = tokio::task::spawn_blocking(move || apply_all(&room_name, &updates))
        .await
        .map_err(|join| StoreError::Io {
            action: "decode room",
            path: Default::default(),
            source: std::io::Error::other(join.to_string()),
        })?;
    Ok(Loaded {
        doc,
        storage,
        lock,
        stored,
    })
}

/// Runs blocking store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    action: &'static str,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| StoreError::Io {
            action,
            path: Default::default(),
            source: std::io::Error::other(join.to_string()),
        })?
}

/// Whether the node's storage answers within a second: Redis `PING`, or
/// the data directory is there.
pub async fn check_reachable(config: &RoomNodeConfig) -> Result<(), String> {
    let check = async {
        match &config.remote {
            Some(remote) => remote.ping().await.map_err(|e| format!("redis: {e}")),
            None => tokio::fs::metadata(&config.data_dir)
                .await
                .map(|_| ())
                .map_err(|e| format!("data dir {}: {e}", config.data_dir.display())),
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), check)
        .await
        .map_err(|_| "storage did not answer within 1 s".to_owned())?
}

/// Whether `room` has stored state (a log or snapshots), without loading
/// it.
pub async fn has_state(config: &RoomNodeConfig, room: &RoomName) -> Result<bool, LoadError> {
    if config.mode_of(room.as_str()) == RoomMode::Ephemeral {
        return Ok(false);
    }
    match &config.remote {
        Some(remote) => Ok(remote.has_state(room.as_str()).await?),
        None => {
            let (dir, room) = (config.data_dir.clone(), room.as_str().to_owned());
            Ok(blocking("look for room", move || RoomFiles::has_state(&dir, &room)).await?)
        }
    }
}

/// Names of rooms with stored state starting with `prefix`, after
/// `after`, in order, at most `limit`, and whether more follow.
pub async fn list_rooms(
    config: &RoomNodeConfig,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<(Vec<String>, bool), LoadError> {
    match &config.remote {
        Some(remote) => Ok(remote.list_rooms(prefix, after, limit).await?),
        None => {
            let dir = config.data_dir.clone();
            let (prefix, after) = (prefix.to_owned(), after.to_owned());
            Ok(blocking("list rooms", move || {
                RoomFiles::list_rooms(&dir, &prefix, &after, limit)
            })
            .await?)
        }
    }
}

/// A document with every stored update applied; undecodable ones are
/// skipped and logged (the rest of the room still loads).
fn apply_all(room: &RoomName, updates: &[Vec<u8>]) -> Doc {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for (index, bytes) in updates.iter().enumerate() {
            let applied = Update::decode_v1(bytes)
                .map_err(|e| e.to_string())
                .and_then(|u| txn.apply_update(u).map_err(|e| e.to_string()));
            if let Err(error) = applied {
                tracing::error!(room = %room, index, %error, "stored update could not be applied; skipped");
            }
        }
    }
    tracing::debug!(room = %room, updates = updates.len(), "room loaded");
    doc
}

impl RoomStorage {
    /// Appends a batch (one write or one round trip).
    pub async fn append(&mut self, updates: &[Bytes]) -> Result<(), AppendError> {
        match self {
            Self::Local(files) => files.append(updates).map_err(|error| {
                if error.is_disk_full() {
                    AppendError::DiskFull(error)
                } else {
                    AppendError::Failed(error)
                }
            }),
            Self::Remote(remote) => remote.append(updates).await.map_err(|error| match error {
                RemoteError::Fenced { current, .. } => AppendError::Fenced { epoch: current },
                error => AppendError::Unavailable(error),
            }),
            Self::Ephemeral => Ok(()),
        }
    }

    /// Deletes the room's log and snapshots (fenced on remote storage).
    pub async fn delete(self) -> Result<(), String> {
        match self {
            Self::Local(mut files) => blocking("delete room", move || files.delete())
                .await
                .map_err(|e| e.to_string()),
            Self::Remote(mut remote) => remote.delete().await.map_err(|e| e.to_string()),
            Self::Ephemeral => Ok(()),
        }
    }

    /// A snapshot of `state` covering everything appended so far, to be
    /// written by [`SnapshotWork::write`] (on another task: a slow object
    /// store must not hold up the room).
    pub fn begin_snapshot(&mut self, epoch: u64, state: Vec<u8>) -> SnapshotWork {
        match self {
            Self::Local(files) => SnapshotWork::Local(files.begin_snapshot(epoch, state)),
            Self::Remote(remote) => SnapshotWork::Remote(remote.prepare_snapshot(state)),
            Self::Ephemeral => SnapshotWork::Nothing,
        }
    }
}

/// Why a snapshot was not stored. The log still holds every update.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SnapshotError {
    /// A newer owner holds the room's slot: this node's snapshot was
    /// refused, as it must be (its load reads every update from the log).
    pub fenced: bool,
    message: String,
}

impl From<tokio::task::JoinError> for SnapshotError {
    fn from(join: tokio::task::JoinError) -> Self {
        Self::other(join)
    }
}

impl SnapshotError {
    fn other(message: impl ToString) -> Self {
        Self {
            fenced: false,
            message: message.to_string(),
        }
    }
}

/// A snapshot on its way to storage.
#[derive(Debug)]
pub enum SnapshotWork {
    /// Files: temp file, fsync, rename, trim.
    Local(crate::store::SnapshotJob),
    /// Object store or Redis, registered and trimmed by a fenced script.
    Remote(crate::remote::RemoteSnapshot),
    /// Ephemeral rooms store nothing.
    Nothing,
}

impl SnapshotWork {
    /// Writes it. A failure leaves the log untouched (it still holds every
    /// update).
    pub async fn write(self) -> Result<(), SnapshotError> {
        match self {
            Self::Local(job) => match tokio::task::spawn_blocking(move || job.write()).await {
                Ok(result) => result.map_err(SnapshotError::other),
                Err(join) => Err(SnapshotError::other(join)),
            },
            Self::Remote(snapshot) => snapshot.write().await.map_err(|error| SnapshotError {
                fenced: matches!(error, RemoteError::Fenced { .. }),
                message: error.to_string(),
            }),
            Self::Nothing => Ok(()),
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
        let mut loaded = load(&config, &room, SyncQueue::default(), 1).await.unwrap();
        for text in ["a;", "b;"] {
            loaded.storage.append(&[edit(&doc, text)]).await.unwrap();
            loaded
                .storage
                .begin_snapshot(1, state(&doc))
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
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snapshot-")
            })
            .max()
            .unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&newest, bytes).unwrap();

        let before = corrupt_snapshots_total();
        let loaded = load(&config, &room, SyncQueue::default(), 1).await.unwrap();
        assert_eq!(corrupt_snapshots_total(), before + 1);
        let t = loaded.doc.get_or_insert_text("t");
        assert_eq!(t.get_string(&loaded.doc.transact()), "a;b;c;");
    }
}
