//! Room node settings, every limit with its default. [`RoomNodeSettings`]
//! and [`NodeSettings`] are the `[room_node]` and `[node]` sections of the
//! config file (the binary layers env and flags over them), checked by
//! their `validate`; [`RoomNodeConfig`] is what [`crate::run`] takes, and
//! tests build it directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use partyline_proto::NodeId;

/// Default for [`RoomNodeConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`RoomNodeConfig::snapshot_interval`].
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
/// Default for [`RoomNodeConfig::snapshot_log_bytes`].
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 16 * 1024 * 1024;
/// Default for [`RoomNodeConfig::fsync_interval`].
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`RoomNodeConfig::link_queue`].
pub const DEFAULT_LINK_QUEUE: usize = 8192;
/// Default for [`RoomNodeConfig::room_queue`].
pub const DEFAULT_ROOM_QUEUE: usize = 1024;
/// Default for [`RoomNodeConfig::snapshot_log_updates`].
pub const DEFAULT_SNAPSHOT_LOG_UPDATES: u64 = 1000;
/// Default for [`RoomNodeConfig::log_buffer_bytes`].
pub const DEFAULT_LOG_BUFFER_BYTES: u64 = 16 * 1024 * 1024;
/// Default for [`RoomNodeConfig::snapshots_kept`].
pub const DEFAULT_SNAPSHOTS_KEPT: usize = 2;
/// Default for [`RoomNodeConfig::history_versions`].
pub const DEFAULT_HISTORY_VERSIONS: usize = 50;
/// How long a deleted room's data stays restorable.
pub const DEFAULT_DELETE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default for [`RoomNodeConfig::memory_trim_delay`].
pub const DEFAULT_MEMORY_TRIM_DELAY: Duration = Duration::from_secs(1);
/// Default for [`RoomNodeConfig::max_doc_bytes`].
pub const DEFAULT_MAX_DOC_BYTES: u64 = 256 * 1024 * 1024;
/// Default for [`RoomNodeConfig::min_resync_interval`].
pub const DEFAULT_MIN_RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`RoomNodeConfig::room_lock_timeout`].
pub const DEFAULT_ROOM_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Default data directory (`partyline dev`; a room node's `file://` store).
pub const DEFAULT_DATA_DIR: &str = ".partyline";
/// Default of [`NodeSettings::grpc_listen`].
pub const DEFAULT_GRPC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7001);
/// Default of [`NodeSettings::heartbeat_interval`].
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default of [`NodeSettings::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings that cannot work together; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `Err(ConfigError(message))` unless `holds`.
fn ensure(holds: bool, message: &str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError(message.to_owned()))
    }
}

/// `[room_node]`: a room node's settings as written in the config file;
/// each key but the tables is also a flag and an env var.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomNodeSettings {
    /// `None`: [`DEFAULT_DATA_DIR`], or the `[node]` store's directory.
    pub data_dir: Option<PathBuf>,
    /// Unload a room this long after its last client left (snapshot first).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Snapshot a room with new updates this often.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// …or once this many log bytes piled up since the last snapshot.
    pub snapshot_log_bytes: u64,
    /// …or once this many updates were logged since the last snapshot.
    pub snapshot_log_updates: u64,
    /// While the update log is unreachable, hold up to this many bytes of
    /// updates per room; past it writes are refused until it is back.
    pub log_buffer_bytes: u64,
    /// fsync room logs this often; appends reach the OS before any echo.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Frames queued toward one gateway stream before it is dropped as too slow.
    pub link_queue: usize,
    /// Commands queued per room.
    pub room_queue: usize,
    /// Deepest nesting of shared types a document may reach (a top-level
    /// type is 1); an update nesting deeper is refused and its session
    /// closed with 1002.
    pub max_type_depth: u16,
    /// `0s` never trims.
    #[serde(with = "humantime_serde")]
    pub memory_trim_delay: Duration,
    /// Largest document a room holds (its policy's `max_doc_bytes` wins);
    /// updates growing it past this are refused and the writer is told.
    pub max_doc_bytes: u64,
    /// Formatting bytes a JSON or ProseMirror render (API, state
    /// callback) or a version restore may copy; a document past it is
    /// refused those (see [`crate::render::budget`]).
    pub max_render_bytes: u64,
    /// JSON renders and version restores a node runs at once.
    pub render_concurrency: usize,
    /// A session's SyncStep1 or QueryAwareness is answered at most once
    /// per this interval; repeats are dropped.
    #[serde(with = "humantime_serde")]
    pub min_resync_interval: Duration,
    /// Awareness client ids one session may speak for; entries for more
    /// are dropped.
    pub awareness_max_clients: usize,
    /// Bytes of awareness state one session may hold; entries past it are
    /// dropped.
    pub awareness_max_bytes: usize,
    /// `[room_node.modes]`: prefix = "mode".
    pub modes: BTreeMap<String, String>,
    /// `[room_node.policies."prefix"]`.
    pub policies: BTreeMap<String, PolicySettings>,
    /// Refuse rooms whose names match no `[room_node.policies."prefix"]`
    /// table (sessions closed with 4400, API writes 403).
    pub refuse_unlisted_rooms: bool,
    /// Snapshot versions a `history` room keeps.
    pub history_versions: usize,
    /// …and how old they may get; the newest two always stay.
    #[serde(with = "humantime_serde")]
    pub history_max_age: Option<Duration>,
    /// How long `DELETE /v1/rooms/{room}` keeps the room's data,
    /// restorable, before it is purged; `0s` purges at once.
    #[serde(with = "humantime_serde")]
    pub delete_retention: Duration,
}

/// One `[room_node.policies."prefix"]` table: a [`RoomPolicy`] and
/// optionally the prefix's mode.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Sessions open at once in one room; the next is closed with 1008.
    pub max_sessions: Option<usize>,
    /// Document size limit in bytes; growing updates past it are refused.
    pub max_doc_bytes: Option<u64>,
    /// Relay one session's awareness at most once per this window (latest
    /// wins), e.g. `"100ms"` for cursor floods.
    #[serde(with = "humantime_serde")]
    pub awareness_throttle: Option<Duration>,
    /// Largest client message in bytes; a larger one closes the session
    /// with 1009.
    pub max_frame_bytes: Option<usize>,
    /// Unload the room this long after its last client left, instead of
    /// `idle_timeout`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// As in `[room_node.modes]`.
    pub mode: Option<String>,
    /// Relay `__YPS:` custom messages from read-only sessions too
    /// (default false).
    pub read_only_custom_messages: bool,
    /// Garbage-collect deleted content (default true); `false` keeps it,
    /// so clients can diff `Y.snapshot`s of the room.
    pub gc: Option<bool>,
}

impl Default for RoomNodeSettings {
    fn default() -> Self {
        let limits = crate::protocol::SyncLimits::default();
        Self {
            data_dir: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            snapshot_log_updates: DEFAULT_SNAPSHOT_LOG_UPDATES,
            log_buffer_bytes: DEFAULT_LOG_BUFFER_BYTES,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            link_queue: DEFAULT_LINK_QUEUE,
            room_queue: DEFAULT_ROOM_QUEUE,
            max_type_depth: limits.max_type_depth,
            memory_trim_delay: DEFAULT_MEMORY_TRIM_DELAY,
            max_doc_bytes: DEFAULT_MAX_DOC_BYTES,
            max_render_bytes: crate::render::budget::DEFAULT_MAX_RENDER_BYTES,
            render_concurrency: crate::render::DEFAULT_RENDER_CONCURRENCY,
            min_resync_interval: DEFAULT_MIN_RESYNC_INTERVAL,
            awareness_max_clients: limits.awareness_max_clients,
            awareness_max_bytes: limits.awareness_max_bytes,
            modes: BTreeMap::new(),
            policies: BTreeMap::new(),
            refuse_unlisted_rooms: false,
            history_versions: DEFAULT_HISTORY_VERSIONS,
            history_max_age: None,
            delete_retention: DEFAULT_DELETE_RETENTION,
        }
    }
}

impl RoomNodeSettings {
    /// The node's config, checked: `flag_modes` (`PREFIX=MODE`, from
    /// `--room-mode`) win over the file's modes for the same prefix.
    /// Storage ([`crate::storage::NodeStorage`]), locks and hooks are the
    /// caller's.
    pub fn into_config(
        self,
        node_id: NodeId,
        flag_modes: &[String],
    ) -> Result<RoomNodeConfig, ConfigError> {
        let policy_modes = self
            .policies
            .iter()
            .filter_map(|(prefix, policy)| Some((prefix.clone(), policy.mode.clone()?)));
        let flag_modes = flag_modes.iter().map(|pair| {
            let (prefix, mode) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
            (prefix.to_owned(), mode.to_owned())
        });
        let file_modes = (self.modes.iter()).map(|(prefix, mode)| (prefix.clone(), mode.clone()));
        let mut modes: Vec<(String, RoomMode)> = Vec::new();
        // Flags after the file: a prefix given twice takes the flag's mode.
        for (prefix, mode) in file_modes.chain(policy_modes).chain(flag_modes) {
            let mode = mode
                .parse()
                .map_err(|e| ConfigError(format!("room mode for prefix {prefix:?}: {e}")))?;
            modes.retain(|(p, _)| *p != prefix);
            modes.push((prefix, mode));
        }
        let policies = (self.policies.iter())
            .map(|(prefix, policy)| {
                let policy = RoomPolicy {
                    max_sessions: policy.max_sessions,
                    max_doc_bytes: policy.max_doc_bytes,
                    awareness_throttle: policy.awareness_throttle,
                    max_frame_bytes: policy.max_frame_bytes,
                    idle_timeout: policy.idle_timeout,
                    read_only_custom_messages: policy.read_only_custom_messages,
                    keep_deleted: policy.gc == Some(false),
                };
                (prefix.clone(), policy)
            })
            .collect();
        let config = RoomNodeConfig {
            modes,
            policies,
            ..self.config(node_id)
        };
        config.validate()?;
        Ok(config)
    }

    /// The config without modes and policies, unchecked.
    fn config(self, node_id: NodeId) -> RoomNodeConfig {
        RoomNodeConfig {
            node_id,
            data_dir: (self.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            idle_timeout: self.idle_timeout,
            snapshot_interval: self.snapshot_interval,
            snapshot_log_bytes: self.snapshot_log_bytes,
            snapshot_log_updates: self.snapshot_log_updates,
            log_buffer_bytes: self.log_buffer_bytes,
            snapshots_kept: DEFAULT_SNAPSHOTS_KEPT,
            modes: Vec::new(),
            policies: Vec::new(),
            refuse_unlisted_rooms: self.refuse_unlisted_rooms,
            history_versions: self.history_versions,
            history_max_age: self.history_max_age,
            delete_retention: self.delete_retention,
            fsync_interval: self.fsync_interval,
            link_queue: self.link_queue,
            room_queue: self.room_queue,
            room_locks: false,
            room_lock_timeout: DEFAULT_ROOM_LOCK_TIMEOUT,
            limits: crate::protocol::SyncLimits {
                max_type_depth: self.max_type_depth,
                awareness_max_clients: self.awareness_max_clients,
                awareness_max_bytes: self.awareness_max_bytes,
            },
            memory_trim_delay: (!self.memory_trim_delay.is_zero())
                .then_some(self.memory_trim_delay),
            max_doc_bytes: self.max_doc_bytes,
            max_render_bytes: self.max_render_bytes,
            render_concurrency: self.render_concurrency,
            min_resync_interval: self.min_resync_interval,
        }
    }
}

/// `[node]`: how a room node joins a cluster, as written in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// `None`: the host name.
    pub node_id: Option<String>,
    /// Address the room node's gRPC server listens on.
    pub grpc_listen: SocketAddr,
    /// `None`: `http://<grpc_listen>`, with the host name for an
    /// unspecified address.
    pub advertise: Option<String>,
    /// Where snapshots (and, without --redis, logs) live, shared by every
    /// room node: `file:///dir`; with --redis also `s3://bucket/prefix`,
    /// `gs://…`, `az://…`, `memory://` or `redis://`.
    pub store: Option<String>,
    /// Redis for the rooms' update logs (one stream per room), e.g.
    /// `redis://127.0.0.1:6379/0`. Without it logs are files in the store directory.
    pub redis: Option<String>,
    /// How often the node tells the coordinators it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// On SIGTERM, how long to wait for the cluster to move every room
    /// away before stopping anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long loading a room waits for its previous owner to let go.
    #[serde(with = "humantime_serde")]
    pub room_lock_timeout: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            node_id: None,
            grpc_listen: DEFAULT_GRPC_LISTEN,
            advertise: None,
            store: None,
            redis: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            room_lock_timeout: DEFAULT_ROOM_LOCK_TIMEOUT,
        }
    }
}

/// Room node settings.
#[derive(Debug, Clone)]
pub struct RoomNodeConfig {
    /// This node's id, stamped on `Attached` frames and logs.
    pub node_id: NodeId,
    /// Root of the embedded store (`rooms/…` below it).
    pub data_dir: PathBuf,
    /// A room with no sessions for this long is snapshotted and unloaded.
    pub idle_timeout: Duration,
    /// A room with unsnapshotted updates is snapshotted this often.
    pub snapshot_interval: Duration,
    /// …or as soon as this many log bytes accumulated since the last one.
    pub snapshot_log_bytes: u64,
    /// …or as soon as this many updates were logged since the last one
    /// (bounds the log: it keeps at most about twice this many entries).
    pub snapshot_log_updates: u64,
    /// While the log is unreachable, updates wait (unacknowledged) up to
    /// this many bytes per room; past it the room refuses writes (clients
    /// get an auth message) until the log is back.
    pub log_buffer_bytes: u64,
    /// Snapshots kept per room (remote storage; at least 2, so a corrupt
    /// newest one falls back to the previous).
    pub snapshots_kept: usize,
    /// Persistence mode by room-name prefix (longest match wins); other
    /// rooms are [`RoomMode::Snapshot`].
    pub modes: Vec<(String, RoomMode)>,
    /// Limits by room-name prefix (longest match wins; `""` is the
    /// default for every other room).
    pub policies: Vec<(String, RoomPolicy)>,
    /// Refuse rooms whose names match no policy prefix (a `""` policy
    /// matches every name).
    pub refuse_unlisted_rooms: bool,
    /// Versions a `history` room keeps.
    pub history_versions: usize,
    /// …and how old they may get (the newest two always stay).
    pub history_max_age: Option<Duration>,
    /// How long a deleted room stays restorable (its data kept, its
    /// sessions refused with 4404) before its owner purges it; zero
    /// purges at once.
    pub delete_retention: Duration,
    /// Log appends reach the page cache at once (enough for `kill -9`);
    /// they are fsynced this often (the window a power loss can take).
    pub fsync_interval: Duration,
    /// Frames buffered toward one gateway link before it is dropped as too
    /// slow (the gateway reconnects its sessions).
    pub link_queue: usize,
    /// Commands buffered per room; senders wait when it is full.
    pub room_queue: usize,
    /// Lock each loaded room's files (`rooms/<id>/lock`) so two nodes that
    /// share one store directory never write a room at once: the new owner
    /// of a moved room waits for the old one to let go. On in a cluster;
    /// `partyline dev` holds the whole data dir's lock instead.
    pub room_locks: bool,
    /// How long loading a room waits for another node to release its lock.
    pub room_lock_timeout: Duration,
    /// What a room takes from its sessions: type nesting, awareness ids
    /// and bytes per session.
    pub limits: crate::protocol::SyncLimits,
    /// After rooms unload, once unloads stop for this long, return the
    /// allocator's free memory to the OS (`malloc_trim`, glibc only);
    /// `None` never does.
    pub memory_trim_delay: Option<Duration>,
    /// Largest document a room holds unless its policy says otherwise:
    /// updates that would grow it past this are refused and the writer is
    /// told (an auth permission-denied message).
    pub max_doc_bytes: u64,
    /// Formatting bytes a JSON or ProseMirror render or a version restore
    /// may copy ([`crate::render::budget`]); past it they are refused
    /// (the API answers 413, the state callback sends `data: null`).
    pub max_render_bytes: u64,
    /// JSON renders (API, state callbacks) and version restores run at
    /// once on the node's blocking pool; more wait their turn.
    pub render_concurrency: usize,
    /// A session's SyncStep1 (or QueryAwareness) is answered at most once
    /// per this interval; repeats are dropped (each answer may be the
    /// whole document).
    pub min_resync_interval: Duration,
}

/// Limits of the rooms whose names start with a prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomPolicy {
    /// Sessions open at once; the next one is closed (1008, "room is full").
    pub max_sessions: Option<usize>,
    /// Document size (its stored state plus updates since); updates that
    /// would grow it past this are refused and the client is told.
    pub max_doc_bytes: Option<u64>,
    /// Awareness from one session is relayed at most once per this window;
    /// updates in between are coalesced, the latest wins (cursor floods).
    pub awareness_throttle: Option<Duration>,
    /// Largest client message in the room; a larger one closes the session
    /// with 1009 (the gateway's `max_message_bytes` caps every room).
    pub max_frame_bytes: Option<usize>,
    /// The room unloads this long after its last gateway left, instead of
    /// the node's `idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// Relay y-partyserver custom messages (`__YPS:`) from read-only
    /// sessions too; off by default, so a viewer cannot message every
    /// client of the app.
    pub read_only_custom_messages: bool,
    /// Keep deleted content in the room's document (policy `gc = false`):
    /// no garbage collection, so clients can diff `Y.snapshot`s. Off by
    /// default.
    pub keep_deleted: bool,
}

/// How a room persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomMode {
    /// Log + the newest snapshots (the default).
    Snapshot,
    /// Log + every snapshot version up to `history_versions` /
    /// `history_max_age`, on every store: listed, fetched, taken and
    /// restored through the server API (and `partyline admin` on remote
    /// storage).
    History,
    /// Nothing stored: awareness and cursor rooms.
    Ephemeral,
}

impl RoomMode {
    /// Its name in config and the server API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::History => "history",
            Self::Ephemeral => "ephemeral",
        }
    }
}

impl std::str::FromStr for RoomMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "snapshot" => Ok(Self::Snapshot),
            "history" => Ok(Self::History),
            "ephemeral" => Ok(Self::Ephemeral),
            other => Err(format!(
                "unknown room mode {other:?}: snapshot, history or ephemeral"
            )),
        }
    }
}

impl RoomNodeConfig {
    /// Checks that the limits make sense together (the same rules
    /// whether it came from the config file or a test).
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            !self.refuse_unlisted_rooms || !self.policies.is_empty(),
            "room_node.refuse_unlisted_rooms needs at least one [room_node.policies.\"prefix\"] table",
        )?;
        ensure(
            self.history_versions >= 2,
            "room_node.history_versions must be at least 2",
        )?;
        ensure(
            self.snapshot_log_updates > 0,
            "room_node.snapshot_log_updates must be at least 1",
        )?;
        ensure(
            self.render_concurrency > 0,
            "room_node.render_concurrency (--render-concurrency) must be at least 1",
        )?;
        // The server API moves whole documents in one gRPC message.
        let largest_doc = (self.policies.iter())
            .filter_map(|(_, policy)| policy.max_doc_bytes)
            .chain([self.max_doc_bytes])
            .max()
            .unwrap_or(0);
        let most = partyline_proto::chunk::MAX_UNARY_MESSAGE / 2;
        if largest_doc > most as u64 {
            return Err(ConfigError(format!(
                "room_node.max_doc_bytes (--max-doc-bytes, or a policy's max_doc_bytes) must be at most {most} bytes"
            )));
        }
        ensure(
            self.limits.max_type_depth >= 2,
            "room_node.max_type_depth (--max-type-depth) must be at least 2",
        )?;
        ensure(
            self.link_queue > 0,
            "room_node.link_queue must be at least 1",
        )?;
        ensure(
            self.room_queue > 0,
            "room_node.room_queue must be at least 1",
        )?;
        ensure(
            !self.snapshot_interval.is_zero(),
            "room_node.snapshot_interval must be positive",
        )?;
        ensure(
            !self.fsync_interval.is_zero(),
            "room_node.fsync_interval must be positive",
        )
    }

    /// The limits of `room`: the longest matching prefix's, else none.
    pub fn policy_of(&self, room: &str) -> RoomPolicy {
        self.policies
            .iter()
            .filter(|(prefix, _)| room.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or_else(RoomPolicy::default, |(_, policy)| *policy)
    }

    /// The largest document `room` may hold (its policy's, else the
    /// node's `max_doc_bytes`).
    pub fn max_doc_bytes_of(&self, room: &str) -> u64 {
        self.policy_of(room)
            .max_doc_bytes
            .unwrap_or(self.max_doc_bytes)
    }

    /// Whether `room` may be opened: any name, unless
    /// `refuse_unlisted_rooms` asks for a matching policy.
    pub fn allows(&self, room: &str) -> bool {
        !self.refuse_unlisted_rooms
            || self
                .policies
                .iter()
                .any(|(prefix, _)| room.starts_with(prefix.as_str()))
    }

    /// The mode of `room`: the longest matching prefix's, else snapshot.
    pub fn mode_of(&self, room: &str) -> RoomMode {
        self.modes
            .iter()
            .filter(|(prefix, _)| room.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(RoomMode::Snapshot, |(_, mode)| *mode)
    }

    /// Defaults for a node with this id and data dir
    /// ([`RoomNodeSettings::default`]).
    pub fn new(node_id: NodeId, data_dir: PathBuf) -> Self {
        let settings = RoomNodeSettings {
            data_dir: Some(data_dir),
            ..RoomNodeSettings::default()
        };
        settings.config(node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_limits_name_their_setting() {
        let config = RoomNodeSettings::default()
            .into_config(NodeId::new("n"), &[])
            .unwrap();
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.memory_trim_delay, Some(DEFAULT_MEMORY_TRIM_DELAY));
        let never_trims = RoomNodeSettings {
            memory_trim_delay: Duration::ZERO,
            ..Default::default()
        };
        let config = never_trims.into_config(NodeId::new("n"), &[]).unwrap();
        assert_eq!(config.memory_trim_delay, None, "0s never trims");
        let short = RoomNodeSettings {
            history_versions: 1,
            ..Default::default()
        };
        let error = short.into_config(NodeId::new("n"), &[]).unwrap_err();
        assert!(error.to_string().contains("room_node.history_versions"));
        let hooks = crate::hooks::HooksConfig {
            debounce_max_wait: Duration::from_millis(1),
            ..Default::default()
        };
        assert!(hooks.validate().is_err());
    }
}
