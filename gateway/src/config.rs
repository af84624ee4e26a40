//! Gateway settings, every limit with its default.

use std::time::Duration;

/// Default for [`GatewayConfig::max_message_bytes`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default for [`GatewayConfig::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Default for [`GatewayConfig::dead_after`].
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(30);
/// Default for [`GatewayConfig::session_queue`].
pub const DEFAULT_SESSION_QUEUE: usize = 1024;
/// Default for [`GatewayConfig::session_queue_bytes`].
pub const DEFAULT_SESSION_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Default for [`GatewayConfig::upstream_linger`].
pub const DEFAULT_UPSTREAM_LINGER: Duration = Duration::from_secs(5);
/// Default for [`GatewayConfig::owner_unreachable_timeout`].
pub const DEFAULT_OWNER_UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`GatewayConfig::room_reopen_attempts`].
pub const DEFAULT_ROOM_REOPEN_ATTEMPTS: u32 = 5;
/// Default for [`GatewayConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default for [`GatewayConfig::ws_read_buffer_bytes`].
pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 512;
/// Default for [`GatewayConfig::api_timeout`].
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`GatewayConfig::batch_timeout`]: a 16 MiB batch needs
/// about 4.5 Mbit/s of upload to finish in it.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`GatewayConfig::max_query_bytes`]: room for a large JWT
/// and PartyKit's `_pk`, like common servers' 8 KiB request-line limit.
pub const DEFAULT_MAX_QUERY_BYTES: usize = 8 * 1024;
/// Default for [`GatewayConfig::release_grace`].
pub const DEFAULT_RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Stable id of this gateway, sent to room nodes for logs.
    pub gateway_id: String,
    /// Largest client message, as one frame or as a reassembled
    /// `y-pk-batch`; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// A `y-pk-batch` not finished this long after its start marker closes
    /// the socket with 1008, so a half-sent batch cannot hold its buffer
    /// for as long as the client answers pings.
    pub batch_timeout: Duration,
    /// Longest query string of a room URL; longer gets HTTP 414 before the
    /// upgrade and before any authorizer (webhook) is asked.
    pub max_query_bytes: usize,
    /// How often the gateway pings each client socket.
    pub ping_interval: Duration,
    /// A socket that sent nothing (not even a pong) for this long is closed
    /// as dead and its awareness removed.
    pub dead_after: Duration,
    /// Frames buffered toward one client; a client that falls further
    /// behind is closed with 1008 so the room never waits for it.
    pub session_queue: usize,
    /// Bytes buffered toward one client besides one sync answer; past it
    /// the client is closed with 1008 (a socket that never reads costs one
    /// document plus this, however often it asks).
    pub session_queue_bytes: usize,
    /// How long a room's upstream stream stays open after its last local
    /// session left (reconnects within it reuse the stream).
    pub upstream_linger: Duration,
    /// How long a client waits while its room's owner cannot be reached
    /// before it is closed with 1013.
    pub owner_unreachable_timeout: Duration,
    /// A room whose stream fails this many times in a row, each soon after
    /// opening, is given up: its clients are closed with 1011 instead of
    /// a re-open loop.
    pub room_reopen_attempts: u32,
    /// Per-socket WebSocket read buffer. tungstenite's default is 128 KiB
    /// per socket; larger frames still arrive, the buffer just grows for
    /// them.
    pub ws_read_buffer_bytes: usize,
    /// Client sockets open at once; more get HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// After a new slot map moves a room away, how long to wait for the old
    /// owner's `Released` before re-opening the room on the new owner
    /// anyway (then the clients get the whole document, since nobody can
    /// tell what they are missing).
    pub release_grace: Duration,
    /// Who may open which room (checked before the upgrade).
    pub auth: crate::auth::Authorizer,
    /// Sessions are closed (1008) after this long, so a revoked grant stops
    /// working within it; `None` keeps them open (revocation is lazy).
    pub max_session: Option<Duration>,
    /// Abuse limits: connection attempts and sockets per client address,
    /// messages per second per session.
    pub limits: crate::limits::LimitsConfig,
    /// Start a span per client frame and send its context to the room node
    /// (on when traces are exported).
    pub trace_frames: bool,
    /// Bearer key of the HTTP API (`/v1/…`); `None` disables the API.
    pub api_key: Option<String>,
    /// How long an HTTP API call may wait for the room's owner.
    pub api_timeout: Duration,
    /// Close code for client sockets when the gateway shuts down: 1001 for
    /// `partyline dev`, 1012 (service restart: reconnect elsewhere) in a
    /// cluster.
    pub shutdown_close_code: u16,
}

impl GatewayConfig {
    /// Defaults for a gateway with this id.
    pub fn new(gateway_id: impl Into<String>) -> Self {
        Self {
            gateway_id: gateway_id.into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            max_query_bytes: DEFAULT_MAX_QUERY_BYTES,
            ping_interval: DEFAULT_PING_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
            session_queue: DEFAULT_SESSION_QUEUE,
            session_queue_bytes: DEFAULT_SESSION_QUEUE_BYTES,
            upstream_linger: DEFAULT_UPSTREAM_LINGER,
            owner_unreachable_timeout: DEFAULT_OWNER_UNREACHABLE_TIMEOUT,
            room_reopen_attempts: DEFAULT_ROOM_REOPEN_ATTEMPTS,
            ws_read_buffer_bytes: DEFAULT_WS_READ_BUFFER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            release_grace: DEFAULT_RELEASE_GRACE,
            auth: crate::auth::Authorizer::None,
            max_session: None,
            limits: crate::limits::LimitsConfig::default(),
            trace_frames: false,
            api_key: None,
            api_timeout: DEFAULT_API_TIMEOUT,
            shutdown_close_code: partyline_proto::close::GOING_AWAY,
        }
    }
}
