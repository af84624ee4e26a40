//! Room node settings. The binary fills them from TOML, env and flags; tests
//! build them directly. Every limit is here with its default.

use std::path::PathBuf;
use std::time::Duration;

use partyline_proto::NodeId;

use crate::remote::RemoteStorage;

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
/// Default for [`RoomNodeConfig::memory_trim_delay`].
pub const DEFAULT_MEMORY_TRIM_DELAY: Duration = Duration::from_secs(1);
/// Default for [`RoomNodeConfig::max_doc_bytes`].
pub const DEFAULT_MAX_DOC_BYTES: u64 = 256 * 1024 * 1024;
/// Default for [`RoomNodeConfig::min_resync_interval`].
pub const DEFAULT_MIN_RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`RoomNodeConfig::room_lock_timeout`].
pub const DEFAULT_ROOM_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Remote storage (Redis log + snapshot store); `None` keeps rooms in
    /// `data_dir`.
    pub remote: Option<RemoteStorage>,
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
    /// Webhooks to the app (state callback, initial content); `None` when
    /// neither URL is configured.
    pub hooks: Option<crate::hooks::Hooks>,
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
}

/// How a room persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomMode {
    /// Log + the newest snapshots (the default).
    Snapshot,
    /// Log + every snapshot version up to `history_versions` /
    /// `history_max_age`, listed and fetched with `partyline admin`
    /// (remote storage only).
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
    /// The limits of `room`: the longest matching prefix's, else none.
    pub fn policy_of(&self, room: &str) -> RoomPolicy {
        self.policies
            .iter()
            .filter(|(prefix, _)| room.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or_else(RoomPolicy::default, |(_, policy)| *policy)
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

    /// Defaults for a node with this id and data dir.
    pub fn new(node_id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            data_dir,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            snapshot_log_updates: DEFAULT_SNAPSHOT_LOG_UPDATES,
            remote: None,
            log_buffer_bytes: DEFAULT_LOG_BUFFER_BYTES,
            snapshots_kept: DEFAULT_SNAPSHOTS_KEPT,
            modes: Vec::new(),
            policies: Vec::new(),
            history_versions: DEFAULT_HISTORY_VERSIONS,
            history_max_age: None,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            link_queue: DEFAULT_LINK_QUEUE,
            room_queue: DEFAULT_ROOM_QUEUE,
            room_locks: false,
            room_lock_timeout: DEFAULT_ROOM_LOCK_TIMEOUT,
            hooks: None,
            limits: crate::protocol::SyncLimits::default(),
            min_resync_interval: DEFAULT_MIN_RESYNC_INTERVAL,
            max_doc_bytes: DEFAULT_MAX_DOC_BYTES,
            memory_trim_delay: Some(DEFAULT_MEMORY_TRIM_DELAY),
            refuse_unlisted_rooms: false,
        }
    }
}
