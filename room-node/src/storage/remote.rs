//! Cluster storage: each room's update log is a Redis stream, its snapshots
//! are objects in an object store (`s3://`, `gs://`, `az://`, `file://`,
//! `memory://`) or values in Redis (`redis://`).
//!
//! ```text
//! {prefix}:r:{room id}:log      stream; one entry per update, field `u`
//! {prefix}:r:{room id}:snaps    list of "<covered log id> <snapshot name>", newest first
//! {prefix}:r:{room id}:versions hash: snapshot name → its metadata (JSON: taken at, size, label)
//! {prefix}:r:{room id}:snap:{name}   snapshot bytes (redis:// snapshot store)
//! {prefix}:r:{room id}:tombstone set while the room is deleted but restorable
//! {prefix}:tombstones           sorted set: deleted room name, scored by when it is purged (Unix ms)
//! {prefix}:slot:{slot}:epoch    highest slot-map epoch that claimed the slot
//! rooms/{room id}/{name}        snapshot object (object stores)
//! ```
//!
//! `room id` is the hex of the first 16 bytes of SHA-256(room), as on disk.
//!
//! Durability contract (DESIGN.md): an update is appended (XADD through a
//! Lua script, one round trip per batch) before anything that contains it
//! is broadcast. A snapshot is written under a name no other node or epoch
//! can produce, then registered by a Lua script. Every script that writes
//! first checks the slot's epoch in Redis: a node whose epoch is stale
//! appends nothing, registers nothing, trims nothing and deletes nothing
//! (fencing). Appends must be fenced too: a new owner's snapshot records
//! its newest stream id as covered, and an entry a stale owner slipped in
//! before that id would be skipped by every later load and trimmed.
//! Registering keeps the newest `keep` snapshots and trims the log only up
//! to what the *previous* snapshot covered, so a corrupt newest snapshot is
//! recovered from the one before plus the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use partyline_proto::{slot_of, NodeId};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::codec::{self, Covered, SnapshotHeader};
use super::scripts::Scripts;
pub use super::snapshot_store::SnapshotStore;
use super::tombstone::Tombstone;
use super::versions::{Version, VersionMeta};

/// Remote storage failures.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The object store failed.
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    /// A newer epoch claimed the room's slot: this node must not write
    /// snapshots or trim (it is a stale owner).
    #[error("slot {slot} belongs to epoch {current}, newer than ours ({ours})")]
    Fenced {
        /// The room's slot.
        slot: u16,
        /// The epoch in Redis.
        current: u64,
        /// This node's epoch.
        ours: u64,
    },
    /// A `--store` URL this build cannot use.
    #[error(
        "unsupported snapshot store {0:?}: use s3://, gs://, az://, file://, memory:// or redis://"
    )]
    UnsupportedStore(String),
}

/// A node's handle on cluster storage. Cheap to clone.
#[derive(Clone)]
pub struct RemoteStorage {
    pub(super) redis: ConnectionManager,
    snapshots: SnapshotStore,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("snapshots", &self.snapshots)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What loading a room found.
#[derive(Debug, Default)]
pub struct RemoteLoaded {
    /// Snapshot state then log entries, to apply in order.
    pub updates: Vec<Vec<u8>>,
    /// Snapshots skipped because they were missing or corrupt.
    pub corrupt_snapshots: Vec<String>,
    /// How long the load took.
    pub took: Duration,
    /// Log entries read after the snapshot.
    pub log_entries: usize,
    /// Set when the room is deleted (and nothing else was read).
    pub tombstone: Option<Tombstone>,
}

/// One room's remote storage, owned by its actor.
#[derive(Debug)]
pub struct RemoteRoom {
    storage: RemoteStorage,
    room: String,
    id: String,
    node: NodeId,
    epoch: u64,
    /// Last log id appended or read: what a snapshot taken now covers.
    last_id: String,
    /// Whether the room's name is known to be in the room index.
    indexed: bool,
    /// Snapshots kept by `register` (1 previous + the newest, at least).
    keep: usize,
    /// Older snapshots than this are dropped too (history mode).
    max_age: Option<Duration>,
}

impl RemoteStorage {
    /// Connects to Redis (`redis://host:port/db`) and the snapshot store.
    /// The connection reconnects by itself after Redis restarts.
    pub async fn connect(
        redis_url: &str,
        snapshots: SnapshotStore,
        prefix: &str,
    ) -> Result<Self, RemoteError> {
        let client = redis::Client::open(redis_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            redis,
            snapshots,
            prefix: prefix.into(),
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// The Redis key of a room's log.
    pub fn log_key(&self, room: &str) -> String {
        format!("{}:r:{}:log", self.prefix, room_id(room))
    }

    /// The sorted set of every room name with stored state (all scores 0,
    /// so names list in byte order: `ZRANGE … BYLEX`).
    fn index_key(&self) -> String {
        format!("{}:rooms", self.prefix)
    }

    /// Asks Redis for a `PONG` (readiness).
    pub async fn ping(&self) -> Result<(), RemoteError> {
        let mut redis = self.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }

    /// Whether `room` has a log or snapshots, or is deleted but
    /// restorable.
    pub async fn has_state(&self, room: &str) -> Result<bool, RemoteError> {
        let mut redis = self.redis.clone();
        let keys = [
            self.log_key(room),
            self.snaps_key(room),
            self.tombstone_key(room),
        ];
        let count: u64 = redis.exists(&keys).await?;
        Ok(count > 0)
    }

    /// Up to `limit` deleted rooms whose retention ended by `now_ms`,
    /// oldest first.
    pub async fn expired(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, RemoteError> {
        let mut redis = self.redis.clone();
        let names: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.tombstones_key())
            .arg("-inf")
            .arg(now_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut redis)
            .await?;
        Ok(names)
    }

    /// The key of `room`'s tombstone ([`Tombstone`]).
    fn tombstone_key(&self, room: &str) -> String {
        format!("{}:r:{}:tombstone", self.prefix, room_id(room))
    }

    /// The sorted set of deleted rooms by when they are purged.
    fn tombstones_key(&self) -> String {
        format!("{}:tombstones", self.prefix)
    }

    /// Names of rooms with stored state that start with `prefix` and sort
    /// after `after`, in byte order, at most `limit`, and whether more
    /// follow.
    pub async fn list_rooms(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), RemoteError> {
        let mut min = Vec::with_capacity(after.len().max(prefix.len()) + 1);
        if after >= prefix {
            min.push(b'(');
            min.extend_from_slice(after.as_bytes());
        } else {
            min.push(b'[');
            min.extend_from_slice(prefix.as_bytes());
        }
        // 0xff never occurs in UTF-8, so it bounds every name with the prefix.
        let mut max = vec![b'['];
        max.extend_from_slice(prefix.as_bytes());
        max.push(0xff);
        let mut redis = self.redis.clone();
        let mut names: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.index_key())
            .arg(min)
            .arg(max)
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut redis)
            .await?;
        let more = names.len() > limit;
        names.truncate(limit);
        Ok((names, more))
    }

    pub(super) fn snaps_key(&self, room: &str) -> String {
        format!("{}:r:{}:snaps", self.prefix, room_id(room))
    }

    /// The hash of the listed snapshots' metadata ([`VersionMeta`]).
    pub(super) fn versions_key(&self, room: &str) -> String {
        format!("{}:r:{}:versions", self.prefix, room_id(room))
    }

    fn slot_key(&self, room: &str) -> String {
        format!("{}:slot:{}:epoch", self.prefix, slot_of(room).get())
    }

    /// Claims `room`'s slot at `epoch` and reads the room: newest valid
    /// snapshot, then the log after what it covers.
    pub async fn open(
        &self,
        room: &str,
        node: NodeId,
        epoch: u64,
        keep: usize,
    ) -> Result<(RemoteRoom, RemoteLoaded), RemoteError> {
        let started = Instant::now();
        let mut redis = self.redis.clone();
        if epoch > 0 {
            let holder: u64 = self
                .scripts
                .claim
                .key(self.slot_key(room))
                .arg(epoch)
                .invoke_async(&mut redis)
                .await?;
            if holder > epoch {
                return Err(RemoteError::Fenced {
                    slot: slot_of(room).get(),
                    current: holder,
                    ours: epoch,
                });
            }
        }
        let mut loaded = RemoteLoaded::default();
        // The tombstone rides along with the first read: a deleted room
        // costs this one round trip, whatever its size.
        let (entries, tombstone): (Vec<String>, Option<Vec<u8>>) = redis::pipe()
            .lrange(self.snaps_key(room), 0, -1)
            .get(self.tombstone_key(room))
            .query_async(&mut redis)
            .await?;
        let room_storage = |last_id: String| RemoteRoom {
            storage: self.clone(),
            room: room.to_owned(),
            id: room_id(room),
            node,
            epoch,
            last_id,
            indexed: false,
            keep: keep.max(2),
            max_age: None,
        };
        if let Some(marker) = tombstone {
            loaded.tombstone = Some(Tombstone::decode(&marker));
            loaded.took = started.elapsed();
            return Ok((room_storage("0".to_owned()), loaded));
        }
        let mut covered = None;
        for entry in entries {
            let Some((id, name)) = entry.split_once(' ') else {
                loaded.corrupt_snapshots.push(entry);
                continue;
            };
            match self.read_snapshot(room, name).await {
                Ok(Some(state)) => {
                    loaded.updates.push(state);
                    covered = Some(id.to_owned());
                    break;
                }
                Ok(None) => loaded.corrupt_snapshots.push(name.to_owned()),
                Err(error) => return Err(error),
            }
        }
        let start = match &covered {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        let reply: redis::streams::StreamRangeReply =
            redis.xrange(self.log_key(room), start, "+").await?;
        let mut last_id = covered.unwrap_or_else(|| "0".to_owned());
        for entry in reply.ids {
            if let Some(redis::Value::BulkString(update)) = entry.map.get("u") {
                loaded.updates.push(update.clone());
                loaded.log_entries += 1;
            }
            last_id = entry.id;
        }
        loaded.took = started.elapsed();
        Ok((room_storage(last_id), loaded))
    }

    /// A snapshot's state, `None` when it is missing or fails its checks.
    pub(super) async fn read_snapshot(
        &self,
        room: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        let bytes: Option<Vec<u8>> = match &self.snapshots {
            SnapshotStore::Object(store) => match store.get(&object_path(room, name)).await {
                Ok(result) => Some(result.bytes().await?.to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(error) => return Err(error.into()),
            },
            SnapshotStore::Redis => {
                let mut redis = self.redis.clone();
                redis.get(self.snapshot_key(room, name)).await?
            }
        };
        Ok(bytes.and_then(|bytes| decode_snapshot(&bytes, room)))
    }

    fn snapshot_key(&self, room: &str, name: &str) -> String {
        format!("{}:r:{}:snap:{name}", self.prefix, room_id(room))
    }
}

impl RemoteRoom {
    /// Appends a batch of updates to the log in one round trip, fenced by
    /// the slot's epoch (`RemoteError::Fenced` when a newer owner claimed
    /// the slot: nothing of the batch is in the log).
    pub async fn append(&mut self, updates: &[Bytes]) -> Result<(), RemoteError> {
        if updates.is_empty() {
            return Ok(());
        }
        let storage = &self.storage;
        let mut invocation = storage.scripts.append.prepare_invoke();
        invocation
            .key(storage.slot_key(&self.room))
            .key(storage.log_key(&self.room))
            .key(storage.index_key())
            .arg(self.epoch)
            .arg(&self.room)
            // Once per load: the index lists rooms for the server API.
            .arg(if self.indexed { "0" } else { "1" });
        for update in updates {
            invocation.arg(update.as_ref());
        }
        let mut redis = storage.redis.clone();
        let last: String = match invocation.invoke_async(&mut redis).await {
            Ok(last) => last,
            Err(error) => return Err(script_error(&self.room, self.epoch, error)),
        };
        self.indexed = true;
        self.last_id = last;
        Ok(())
    }

    /// Marks the room deleted until `tombstone.purge_at_ms`, its data
    /// kept, and takes it out of the room index. Fenced.
    pub async fn tombstone(&mut self, tombstone: &Tombstone) -> Result<(), RemoteError> {
        let storage = &self.storage;
        let mut redis = storage.redis.clone();
        let marked: Result<(), redis::RedisError> = storage
            .scripts
            .tombstone
            .key(storage.slot_key(&self.room))
            .key(storage.tombstone_key(&self.room))
            .key(storage.tombstones_key())
            .key(storage.index_key())
            .arg(self.epoch)
            .arg(&self.room)
            .arg(tombstone.encode())
            .arg(tombstone.purge_at_ms)
            .invoke_async(&mut redis)
            .await;
        marked.map_err(|error| script_error(&self.room, self.epoch, error))
    }

    /// Takes the room's tombstone away: it is served and listed again.
    /// Fenced.
    pub async fn restore(&mut self) -> Result<(), RemoteError> {
        let storage = &self.storage;
        let mut redis = storage.redis.clone();
        let restored: Result<(), redis::RedisError> = storage
            .scripts
            .restore
            .key(storage.slot_key(&self.room))
            .key(storage.tombstone_key(&self.room))
            .key(storage.tombstones_key())
            .key(storage.index_key())
            .key(storage.log_key(&self.room))
            .key(storage.snaps_key(&self.room))
            .arg(self.epoch)
            .arg(&self.room)
            .invoke_async(&mut redis)
            .await;
        restored.map_err(|error| script_error(&self.room, self.epoch, error))
    }

    /// Deletes the room's log, snapshots, tombstone and index entries.
    /// Fenced: a node whose epoch is stale deletes nothing.
    pub async fn delete(&mut self) -> Result<(), RemoteError> {
        let storage = &self.storage;
        let mut redis = storage.redis.clone();
        let deleted: Result<Vec<String>, redis::RedisError> = storage
            .scripts
            .delete
            .key(storage.slot_key(&self.room))
            .key(storage.snaps_key(&self.room))
            .key(storage.log_key(&self.room))
            .key(storage.index_key())
            .key(storage.versions_key(&self.room))
            .key(storage.tombstone_key(&self.room))
            .key(storage.tombstones_key())
            .arg(self.epoch)
            .arg(&self.room)
            .invoke_async(&mut redis)
            .await;
        let entries = match deleted {
            Ok(entries) => entries,
            Err(error) => return Err(script_error(&self.room, self.epoch, error)),
        };
        self.indexed = false;
        self.last_id = "0".to_owned();
        let target = SnapshotTarget {
            storage: storage.clone(),
            room: self.room.clone(),
        };
        for entry in entries {
            if let Some((_, name)) = entry.split_once(' ') {
                target.delete(name).await;
            }
        }
        Ok(())
    }

    /// Writes `state` as a snapshot covering everything appended so far,
    /// registers it (fenced), and deletes the snapshots that fell out.
    pub async fn snapshot(&mut self, state: Vec<u8>) -> Result<(), RemoteError> {
        self.prepare_snapshot(state, None).write().await
    }

    /// Also drops snapshots older than `max_age` (history mode).
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// A snapshot of `state` covering everything appended so far, labelled
    /// `label` (a version taken through the API), to write later (e.g. on
    /// another task while the room goes on).
    pub fn prepare_snapshot(&self, state: Vec<u8>, label: Option<String>) -> RemoteSnapshot {
        let covered = self.last_id.clone();
        let meta = VersionMeta::now(state.len(), label);
        // Unique per (covered, node, epoch, time): a stale node never
        // overwrites, nor does a second version of an unchanged room.
        let name = format!(
            "snapshot-{covered}-{}-{}-{}.bin",
            sanitize(self.node.as_str()),
            self.epoch,
            meta.at,
        );
        let header = SnapshotHeader {
            room: self.room.clone(),
            epoch: self.epoch,
            covered: Covered::LogId(covered.clone()),
        };
        let bytes = codec::encode(&header, &state);
        RemoteSnapshot {
            target: SnapshotTarget {
                storage: self.storage.clone(),
                room: self.room.clone(),
            },
            epoch: self.epoch,
            keep: self.keep,
            max_age_ms: self.max_age.map_or(0, |age| age.as_millis() as u64),
            entry: format!("{covered} {name}"),
            version: meta.version(name.clone(), covered),
            name,
            bytes,
        }
    }

    /// The room's id in keys and paths.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Where a room's snapshots go: enough to write and delete them.
#[derive(Debug, Clone)]
struct SnapshotTarget {
    storage: RemoteStorage,
    room: String,
}

/// A snapshot ready to be written; see [`RemoteRoom::prepare_snapshot`].
#[derive(Debug)]
pub struct RemoteSnapshot {
    target: SnapshotTarget,
    epoch: u64,
    keep: usize,
    max_age_ms: u64,
    name: String,
    entry: String,
    version: Version,
    bytes: Vec<u8>,
}

impl RemoteSnapshot {
    /// The version it stores.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Stores the snapshot, registers it (fenced: a stale epoch registers,
    /// trims and deletes nothing) and deletes the snapshots that fell out.
    pub async fn write(self) -> Result<(), RemoteError> {
        let Self {
            target,
            epoch,
            keep,
            max_age_ms,
            name,
            entry,
            version,
            bytes,
        } = self;
        let meta = VersionMeta {
            at: version.at_unix_ms,
            size: version.size.unwrap_or_default(),
            label: version.label,
        };
        let storage = &target.storage;
        let room = &target.room;
        match &storage.snapshots {
            SnapshotStore::Object(store) => {
                store
                    .put(&object_path(room, &name), PutPayload::from(bytes))
                    .await?;
            }
            SnapshotStore::Redis => {
                let mut redis = storage.redis.clone();
                let () = redis.set(storage.snapshot_key(room, &name), bytes).await?;
            }
        }
        let mut redis = storage.redis.clone();
        let registered: Result<Vec<String>, redis::RedisError> = storage
            .scripts
            .register
            .key(storage.slot_key(room))
            .key(storage.snaps_key(room))
            .key(storage.log_key(room))
            .key(storage.versions_key(room))
            .arg(epoch)
            .arg(entry)
            .arg(keep)
            .arg(max_age_ms)
            .arg(&name)
            .arg(meta.to_json())
            .invoke_async(&mut redis)
            .await;
        let dropped = match registered {
            Ok(dropped) => dropped,
            Err(error) => {
                let error = script_error(room, epoch, error);
                if matches!(error, RemoteError::Fenced { .. }) {
                    // Our blob is unreferenced; remove it (best effort).
                    target.delete(&name).await;
                }
                return Err(error);
            }
        };
        for entry in dropped {
            if let Some((_, old)) = entry.split_once(' ') {
                target.delete(old).await;
            }
        }
        Ok(())
    }
}

impl SnapshotTarget {
    async fn delete(&self, name: &str) {
        let result = match &self.storage.snapshots {
            SnapshotStore::Object(store) => store
                .delete(&object_path(&self.room, name))
                .await
                .map_err(RemoteError::from),
            SnapshotStore::Redis => {
                let mut redis = self.storage.redis.clone();
                redis
                    .del::<_, ()>(self.storage.snapshot_key(&self.room, name))
                    .await
                    .map_err(RemoteError::from)
            }
        };
        if let Err(error) = result {
            tracing::warn!(room = %self.room, snapshot = name, %error, "cannot delete an old snapshot");
        }
    }
}

/// A fenced script's error: `Fenced` for a `FENCED <epoch>` reply, else
/// the Redis error.
fn script_error(room: &str, ours: u64, error: redis::RedisError) -> RemoteError {
    match fenced_epoch(&error) {
        Some(current) => RemoteError::Fenced {
            slot: slot_of(room).get(),
            current,
            ours,
        },
        None => error.into(),
    }
}

/// The epoch in a `FENCED <epoch>` script error (Redis parses the first
/// word of an error reply as its code).
fn fenced_epoch(error: &redis::RedisError) -> Option<u64> {
    if error.code() == Some("FENCED") {
        return error.detail()?.trim().parse().ok();
    }
    None
}

/// Hex of the first 16 bytes of SHA-256(room): fixed-length, key-safe.
pub fn room_id(room: &str) -> String {
    Sha256::digest(room.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn object_path(room: &str, name: &str) -> ObjectPath {
    ObjectPath::from(format!("rooms/{}/{name}", room_id(room)))
}

fn sanitize(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The state of a snapshot of `room` written by this backend, `None`
/// when any check fails.
fn decode_snapshot(bytes: &[u8], room: &str) -> Option<Vec<u8>> {
    let (header, state) = codec::decode(bytes).ok()?;
    (header.room == room && matches!(header.covered, Covered::LogId(_))).then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_rooms_remote_snapshots_are_read() {
        let header = |room: &str, covered| SnapshotHeader {
            room: room.to_owned(),
            epoch: 7,
            covered,
        };
        let id = || Covered::LogId("1700000000000-3".to_owned());
        let bytes = codec::encode(&header("doc-1", id()), b"state");
        assert_eq!(
            decode_snapshot(&bytes, "doc-1").as_deref(),
            Some(&b"state"[..])
        );
        assert_eq!(decode_snapshot(&bytes, "doc-2"), None, "another room's");
        let file = codec::encode(&header("doc-1", Covered::Segment(3)), b"state");
        assert_eq!(decode_snapshot(&file, "doc-1"), None, "a file snapshot");
        assert_eq!(decode_snapshot(&bytes[..bytes.len() - 1], "doc-1"), None);
    }
}
