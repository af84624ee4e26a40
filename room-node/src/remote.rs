//! Cluster storage: each room's update log is a Redis stream, its snapshots
//! are objects in an object store (`s3://`, `gs://`, `az://`, `file://`,
//! `memory://`) or values in Redis (`redis://`).
//!
//! ```text
//! {prefix}:r:{room id}:log      stream; one entry per update, field `u`
//! {prefix}:r:{room id}:snaps    list of "<covered log id> <snapshot name>", newest first
//! {prefix}:r:{room id}:snap:{name}   snapshot bytes (redis:// snapshot store)
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
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use partyline_proto::{slot_of, NodeId};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};

const SNAPSHOT_MAGIC: &[u8; 8] = b"PLRSNAP\x01";
const SNAPSHOT_VERSION: u32 = 1;

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

/// Where snapshots go.
#[derive(Clone)]
pub enum SnapshotStore {
    /// An object store (S3, GCS, Azure, local directory, memory).
    Object(Arc<dyn ObjectStore>),
    /// Values in the log's Redis.
    Redis,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Object(store) => write!(f, "Object({store})"),
            Self::Redis => f.write_str("Redis"),
        }
    }
}

impl SnapshotStore {
    /// Parses a `--store` URL. Object store options (credentials, region,
    /// endpoint) come from the usual environment variables, e.g.
    /// `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`.
    pub fn from_url(url: &str) -> Result<Self, RemoteError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(Self::Redis);
        }
        if let Some(path) = url.strip_prefix("file://") {
            std::fs::create_dir_all(path).map_err(|e| {
                RemoteError::Object(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(path)?;
            return Ok(Self::Object(Arc::new(store)));
        }
        if url.starts_with("memory://") {
            return Ok(Self::Object(
                Arc::new(object_store::memory::InMemory::new()),
            ));
        }
        let parsed =
            url::Url::parse(url).map_err(|_| RemoteError::UnsupportedStore(url.to_owned()))?;
        let (scheme, prefix) = object_store::ObjectStoreScheme::parse(&parsed)
            .map_err(|_| RemoteError::UnsupportedStore(url.to_owned()))?;
        let options: Vec<(String, String)> = std::env::vars()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        // Bounded: an unreachable store fails a request in seconds (the
        // room retries the snapshot later) instead of object_store's
        // default of minutes.
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        // The three cloud builders share one shape: the URL, every option
        // their config keys know, the bounded retry.
        macro_rules! cloud {
            ($builder:ty) => {{
                let mut builder = <$builder>::new().with_url(url);
                for (key, value) in &options {
                    if let Ok(key) = key.parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                Arc::new(builder.with_retry(retry).build()?) as Arc<dyn ObjectStore>
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            object_store::ObjectStoreScheme::AmazonS3 => cloud!(object_store::aws::AmazonS3Builder),
            object_store::ObjectStoreScheme::GoogleCloudStorage => {
                cloud!(object_store::gcp::GoogleCloudStorageBuilder)
            }
            object_store::ObjectStoreScheme::MicrosoftAzure => {
                cloud!(object_store::azure::MicrosoftAzureBuilder)
            }
            _ => return Err(RemoteError::UnsupportedStore(url.to_owned())),
        };
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self::Object(store))
    }
}

/// A node's handle on cluster storage. Cheap to clone.
#[derive(Clone)]
pub struct RemoteStorage {
    redis: ConnectionManager,
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

struct Scripts {
    claim: Script,
    append: Script,
    register: Script,
    delete: Script,
}

/// Takes the slot for `epoch` unless a newer epoch holds it; returns the
/// epoch that holds it afterwards.
const CLAIM: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local ours = tonumber(ARGV[1])
if current > ours then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ours
";

/// KEYS: slot epoch, log, room index. ARGV: epoch, room, index it (1/0),
/// then the updates. Fenced like REGISTER: once a newer epoch claimed the
/// slot, a stale owner (cut off from the coordinator, still reached by a
/// gateway on an old map) appends nothing, so the new owner's snapshot can
/// never "cover" an entry it does not contain. Returns the last entry id.
const APPEND: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
local id
for i = 4, #ARGV do
  id = redis.call('XADD', KEYS[2], '*', 'u', ARGV[i])
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
end
return id
";

/// KEYS: slot epoch, snapshot list, log. ARGV: epoch, entry, keep, max
/// age in ms (0: none; the newest two always stay). Fenced: a stale epoch
/// changes nothing. Returns the entries dropped from the list (to delete),
/// or an error 'FENCED <epoch>'.
const REGISTER: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
local keep = tonumber(ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[2])
local dropped = redis.call('LRANGE', KEYS[2], keep, -1)
redis.call('LTRIM', KEYS[2], 0, keep - 1)
local max_age = tonumber(ARGV[4])
if max_age > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local all = redis.call('LRANGE', KEYS[2], 2, -1)
  for _, entry in ipairs(all) do
    local ms = tonumber(string.match(entry, '^(%d+)%-'))
    if ms and now - ms > max_age then
      redis.call('LREM', KEYS[2], 1, entry)
      table.insert(dropped, entry)
    end
  end
end
local previous = redis.call('LINDEX', KEYS[2], 1)
if previous then
  local covered = string.match(previous, '^(%S+)')
  if covered and covered ~= '0' then
    redis.call('XTRIM', KEYS[3], 'MINID', covered)
  end
end
return dropped
";

/// KEYS: slot epoch, snapshot list, log, room index. ARGV: epoch, room.
/// Fenced like REGISTER. Returns the snapshot entries (their blobs to
/// delete) and deletes the list, the log and the index entry.
const DELETE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
return entries
";

/// One stored snapshot of a room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    /// Its name, to fetch it.
    pub name: String,
    /// The last log id it covers.
    pub covered: String,
    /// When that log entry was written (Unix ms).
    pub at_unix_ms: u64,
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
            scripts: Arc::new(Scripts {
                claim: Script::new(CLAIM),
                append: Script::new(APPEND),
                register: Script::new(REGISTER),
                delete: Script::new(DELETE),
            }),
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

    /// Whether `room` has a log or snapshots.
    pub async fn has_state(&self, room: &str) -> Result<bool, RemoteError> {
        let mut redis = self.redis.clone();
        let count: u64 = redis
            .exists(&[self.log_key(room), self.snaps_key(room)])
            .await?;
        Ok(count > 0)
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

    fn snaps_key(&self, room: &str) -> String {
        format!("{}:r:{}:snaps", self.prefix, room_id(room))
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
        let entries: Vec<String> = redis.lrange(self.snaps_key(room), 0, -1).await?;
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
        Ok((
            RemoteRoom {
                storage: self.clone(),
                room: room.to_owned(),
                id: room_id(room),
                node,
                epoch,
                last_id,
                indexed: false,
                keep: keep.max(2),
                max_age: None,
            },
            loaded,
        ))
    }

    /// A snapshot's state, `None` when it is missing or fails its checks.
    async fn read_snapshot(&self, room: &str, name: &str) -> Result<Option<Vec<u8>>, RemoteError> {
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

    /// The snapshot versions of `room`, newest first (history mode keeps
    /// many; other modes two).
    pub async fn versions(&self, room: &str) -> Result<Vec<Version>, RemoteError> {
        let mut redis = self.redis.clone();
        let entries: Vec<String> = redis.lrange(self.snaps_key(room), 0, -1).await?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let (covered, name) = entry.split_once(' ')?;
                Some(Version {
                    name: name.to_owned(),
                    covered: covered.to_owned(),
                    at_unix_ms: covered.split('-').next()?.parse().ok()?,
                })
            })
            .collect())
    }

    /// One version's document state (a Yjs update v1), `None` when it is
    /// gone or corrupt.
    pub async fn fetch_version(
        &self,
        room: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        self.read_snapshot(room, name).await
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

    /// Deletes the room's log, snapshots and index entry. Fenced: a node
    /// whose epoch is stale deletes nothing.
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
        self.prepare_snapshot(state).write().await
    }

    /// Also drops snapshots older than `max_age` (history mode).
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// A snapshot of `state` covering everything appended so far, to write
    /// later (e.g. on another task while the room goes on).
    pub fn prepare_snapshot(&self, state: Vec<u8>) -> RemoteSnapshot {
        let covered = self.last_id.clone();
        // Unique per (covered, node, epoch): a stale node never overwrites.
        let name = format!(
            "snapshot-{covered}-{}-{}.bin",
            sanitize(self.node.as_str()),
            self.epoch
        );
        let bytes = encode_snapshot(&self.room, self.epoch, &covered, &state);
        RemoteSnapshot {
            target: SnapshotTarget {
                storage: self.storage.clone(),
                room: self.room.clone(),
            },
            epoch: self.epoch,
            keep: self.keep,
            max_age_ms: self.max_age.map_or(0, |age| age.as_millis() as u64),
            entry: format!("{covered} {name}"),
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
    bytes: Vec<u8>,
}

impl RemoteSnapshot {
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
            bytes,
        } = self;
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
            .arg(epoch)
            .arg(entry)
            .arg(keep)
            .arg(max_age_ms)
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

/// `magic | version u32 | epoch u64 | covered (u32 len + bytes) | room (u32
/// len + bytes) | state (u32 len + bytes) | crc32 of everything before`.
pub fn encode_snapshot(room: &str, epoch: u64, covered: &str, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(state.len() + room.len() + covered.len() + 40);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    for part in [covered.as_bytes(), room.as_bytes(), state] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The state of a snapshot of `room`, `None` when any check fails.
pub fn decode_snapshot(bytes: &[u8], room: &str) -> Option<Vec<u8>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let rest = body.strip_prefix(SNAPSHOT_MAGIC)?;
    let (version, rest) = rest.split_at_checked(4)?;
    if u32::from_le_bytes(version.try_into().ok()?) != SNAPSHOT_VERSION {
        return None;
    }
    let (_epoch, mut rest) = rest.split_at_checked(8)?;
    let mut parts = Vec::with_capacity(3);
    for _ in 0..3 {
        let (len, tail) = rest.split_at_checked(4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (part, tail) = tail.split_at_checked(len)?;
        parts.push(part);
        rest = tail;
    }
    (rest.is_empty() && parts[1] == room.as_bytes()).then(|| parts[2].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_codec_round_trips_and_rejects_damage() {
        let bytes = encode_snapshot("doc-1", 7, "1700000000000-3", b"state");
        assert_eq!(
            decode_snapshot(&bytes, "doc-1").as_deref(),
            Some(&b"state"[..])
        );
        assert_eq!(decode_snapshot(&bytes, "doc-2"), None, "another room's");
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(decode_snapshot(&flipped, "doc-1"), None, "bit flip");
        assert_eq!(decode_snapshot(&bytes[..bytes.len() - 1], "doc-1"), None);
        assert_eq!(decode_snapshot(&[], "doc-1"), None);
    }

    #[test]
    fn store_urls_are_parsed_or_refused() {
        assert!(matches!(
            SnapshotStore::from_url("redis://127.0.0.1:6379"),
            Ok(SnapshotStore::Redis)
        ));
        assert!(matches!(
            SnapshotStore::from_url("memory://"),
            Ok(SnapshotStore::Object(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        assert!(matches!(
            SnapshotStore::from_url(&url),
            Ok(SnapshotStore::Object(_))
        ));
        assert!(matches!(
            SnapshotStore::from_url("ftp://x/y"),
            Err(RemoteError::UnsupportedStore(_))
        ));
    }
}
