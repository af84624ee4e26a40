//! The flags of each config section, each also read from its env var
//! `PARTYLINE_<SECTION>_<KEY>`; their doc comments are the `--help`. A
//! field is named as its key in the config file, so that
//! [`super::layer`] can lay what was given over the file's section; one
//! that is not a file key is `#[serde(skip)]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

/// Metrics, health and traces of a serving role: flags, env
/// `PARTYLINE_TELEMETRY_*`, or `[telemetry]` (docs/operations.md).
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct TelemetryFlags {
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address
    /// [default: not served].
    #[arg(long, env = "PARTYLINE_TELEMETRY_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// Export traces and metrics over OTLP/gRPC to this collector, e.g.
    /// http://otel-collector:4317 [default: no export].
    #[arg(long, env = "PARTYLINE_TELEMETRY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of client frames that start a trace (0 to 1) [default: 0.05].
    #[arg(long, env = "PARTYLINE_TELEMETRY_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
}

/// Gateway settings: flags, env `PARTYLINE_GATEWAY_*`, or `[gateway]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct GatewayFlags {
    /// Address the WebSocket gateway listens on [default: 127.0.0.1:1999].
    #[arg(long, env = "PARTYLINE_GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Largest client message (one frame or a joined y-pk-batch) in bytes;
    /// larger closes the socket with 1009 [default: 16777216].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// A y-pk-batch (y-partykit's chunked message) not finished this long
    /// after its start marker closes the socket with 1008 [default: 30s].
    #[arg(long, env = "PARTYLINE_GATEWAY_BATCH_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Option<Duration>,
    /// Longest query string of a room URL in bytes; longer gets HTTP 414
    /// before the upgrade and before any auth webhook call [default: 8192].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_QUERY_BYTES")]
    pub max_query_bytes: Option<usize>,
    /// How often client sockets are pinged [default: 10s].
    #[arg(long, env = "PARTYLINE_GATEWAY_PING_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// A socket silent this long (no frame, no pong) is closed as dead [default: 30s].
    #[arg(long, env = "PARTYLINE_GATEWAY_DEAD_AFTER", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub dead_after: Option<Duration>,
    /// Frames queued toward one client before it is closed as too slow (1008) [default: 1024].
    #[arg(long, env = "PARTYLINE_GATEWAY_SESSION_QUEUE")]
    pub session_queue: Option<usize>,
    /// Bytes queued toward one client, besides one sync answer (the
    /// document it asked for), before it is closed as too slow (1008); at
    /// least --max-message-bytes [default: 33554432].
    #[arg(long, env = "PARTYLINE_GATEWAY_SESSION_QUEUE_BYTES")]
    pub session_queue_bytes: Option<usize>,
    /// How long a room's upstream stream outlives its last local client [default: 5s].
    #[arg(long, env = "PARTYLINE_GATEWAY_UPSTREAM_LINGER", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub upstream_linger: Option<Duration>,
    /// How long a client waits for an unreachable room owner before 1013 [default: 10s].
    #[arg(long, env = "PARTYLINE_GATEWAY_OWNER_UNREACHABLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub owner_unreachable_timeout: Option<Duration>,
    /// Room streams that fail this many times in a row, each within 10 s of
    /// opening, close the room's clients with 1011 "room cannot be served"
    /// instead of re-opening it again (re-opens back off 100 ms → 2 s) [default: 5].
    #[arg(long, env = "PARTYLINE_GATEWAY_ROOM_REOPEN_ATTEMPTS")]
    pub room_reopen_attempts: Option<u32>,
    /// WebSocket read buffer per socket in bytes [default: 512].
    #[arg(long, env = "PARTYLINE_GATEWAY_WS_READ_BUFFER_BYTES")]
    pub ws_read_buffer_bytes: Option<usize>,
    /// Client sockets open at once; more get HTTP 503 before the upgrade [default: 100000].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// After a new slot map moves a room, how long to wait for the old owner
    /// to release it before re-opening it on the new owner anyway [default: 2s].
    #[arg(long, env = "PARTYLINE_GATEWAY_RELEASE_GRACE", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub release_grace: Option<Duration>,
    /// Connection attempts per client address per second, refused with HTTP
    /// 429 past it; 0 turns it off (behind a load balancer every client
    /// shares its address) [default: 0].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_CONNECTS_PER_IP")]
    pub max_connects_per_ip: Option<u32>,
    /// Open sockets per client address, refused with HTTP 429 past it; 0
    /// turns it off [default: 0].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_SOCKETS_PER_IP")]
    pub max_sockets_per_ip: Option<u32>,
    /// Messages per second one session may send on average; past it the
    /// session is closed with 1008; 0 turns it off [default: 500].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_MESSAGES_PER_SECOND")]
    pub max_messages_per_second: Option<u32>,
    /// …and at once [default: 5000].
    #[arg(long, env = "PARTYLINE_GATEWAY_MESSAGE_BURST")]
    pub message_burst: Option<u32>,
    /// Bearer key of the HTTP API under /v1/ (separate from client tokens)
    /// [default: none, the API answers 403].
    #[arg(long, env = "PARTYLINE_GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// How long an HTTP API call waits for the room's owner [default: 10s].
    #[arg(long, env = "PARTYLINE_GATEWAY_API_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub api_timeout: Option<Duration>,
    /// Proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For
    /// names the client, for per-address limits and the auth webhook's
    /// `ip`; from any other peer the header is ignored [default: none].
    #[arg(long, env = "PARTYLINE_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Origins whose pages may open sockets and call the HTTP API,
    /// comma-separated: `*`, `https://app.example.com`,
    /// `https://*.example.com`; another Origin gets 403 before the upgrade
    /// (requests without an Origin pass) [default: any origin; `partyline
    /// gateway` warns].
    #[arg(long, env = "PARTYLINE_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
}

/// Room node settings: flags, env `PARTYLINE_ROOM_NODE_*`, or `[room_node]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct RoomNodeFlags {
    /// Directory for room logs and snapshots [default: ./.partyline].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unload a room this long after its last client left (snapshot first) [default: 30s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Snapshot a room with new updates this often [default: 60s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_SNAPSHOT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Option<Duration>,
    /// …or once this many log bytes piled up since the last snapshot [default: 16777216].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_SNAPSHOT_LOG_BYTES")]
    pub snapshot_log_bytes: Option<u64>,
    /// …or once this many updates were logged since the last snapshot [default: 1000].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_SNAPSHOT_LOG_UPDATES")]
    pub snapshot_log_updates: Option<u64>,
    /// While the update log is unreachable, hold up to this many bytes of
    /// updates per room; past it writes are refused until it is back [default: 16777216].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_LOG_BUFFER_BYTES")]
    pub log_buffer_bytes: Option<u64>,
    /// fsync room logs this often; appends reach the OS before any echo [default: 1s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_FSYNC_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Option<Duration>,
    /// Frames queued toward one gateway stream before it is dropped as too slow [default: 8192].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_LINK_QUEUE")]
    pub link_queue: Option<usize>,
    /// Commands queued per room [default: 1024].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_ROOM_QUEUE")]
    pub room_queue: Option<usize>,
    /// Deepest nesting of shared types a document may reach (a top-level
    /// type is 1); an update nesting deeper is refused and its session
    /// closed with 1002 [default: 256].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MAX_TYPE_DEPTH")]
    pub max_type_depth: Option<u16>,
    /// After rooms unload and unloads stop for this long, return the
    /// allocator's free memory to the OS (glibc `malloc_trim`); 0s never [default: 1s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MEMORY_TRIM_DELAY", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub memory_trim_delay: Option<Duration>,
    /// Largest document a room holds (its policy's `max_doc_bytes` wins);
    /// updates growing it past this are refused and the writer is told [default: 268435456].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MAX_DOC_BYTES")]
    pub max_doc_bytes: Option<u64>,
    /// Formatting a JSON or ProseMirror render (the state API, the JSON
    /// state callback) or a version restore may copy, in bytes: a text
    /// cut into many runs under many attributes costs their product, so a
    /// document past it is refused those (413; the callback's `data` is
    /// null) [default: 134217728].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MAX_RENDER_BYTES")]
    pub max_render_bytes: Option<u64>,
    /// JSON renders (state API, JSON state callbacks) and version restores
    /// a room node runs at once; more wait their turn (each holds a whole
    /// document and its rendering in memory) [default: 4].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_RENDER_CONCURRENCY")]
    pub render_concurrency: Option<usize>,
    /// A session's SyncStep1 or QueryAwareness is answered at most once
    /// per this interval; repeats are dropped [default: 1s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MIN_RESYNC_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub min_resync_interval: Option<Duration>,
    /// Awareness client ids one session may speak for; entries for more
    /// are dropped [default: 8].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_AWARENESS_MAX_CLIENTS")]
    pub awareness_max_clients: Option<usize>,
    /// Bytes of awareness state one session may hold; entries past it are
    /// dropped [default: 65536].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_AWARENESS_MAX_BYTES")]
    pub awareness_max_bytes: Option<usize>,
    /// Persistence mode by room-name prefix, PREFIX=MODE with MODE one of
    /// snapshot, history, ephemeral (e.g. `cursor-=ephemeral`); repeatable,
    /// longest prefix wins [default: snapshot for every room].
    #[arg(
        long = "room-mode",
        env = "PARTYLINE_ROOM_NODE_ROOM_MODES",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub room_mode: Vec<String>,
    /// Refuse rooms whose names match no `[room_node.policies."prefix"]`
    /// table (sessions closed with 4400, API writes 403) [default: false].
    #[arg(
        long,
        env = "PARTYLINE_ROOM_NODE_REFUSE_UNLISTED_ROOMS",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub refuse_unlisted_rooms: Option<bool>,
    /// Snapshot versions a `history` room keeps [default: 50].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_HISTORY_VERSIONS")]
    pub history_versions: Option<usize>,
    /// …and how old they may get; the newest two always stay [default: no limit].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_HISTORY_MAX_AGE", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub history_max_age: Option<Duration>,
    /// How long a deleted room (`DELETE /v1/rooms/{room}`) stays
    /// restorable: its data is kept and its clients are refused with 4404
    /// until `POST /v1/rooms/{room}/restore` or the purge; `0s` purges at
    /// once [default: 7d].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_DELETE_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub delete_retention: Option<Duration>,
}

/// Webhooks to the app's backend, run by room nodes: flags, env
/// `PARTYLINE_WEBHOOKS_*`, or `[webhooks]` (docs/webhooks.md).
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct WebhooksFlags {
    /// POST each room's state here (JSON: room, base64 Yjs update, top-level
    /// types) after it changed, debounced [default: no callback].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Retired: use --webhook-secret (callbacks are signed the Standard
    /// Webhooks way now); refused with a message saying so.
    #[arg(
        long,
        env = "PARTYLINE_WEBHOOKS_CALLBACK_SECRET",
        hide_env_values = true,
        hide = true
    )]
    pub callback_secret: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub signing: WebhookSecretFlags,
    /// The callback's body: `json` ({room, epoch, taken_unix_ms, state,
    /// data}) or `binary` (the raw Yjs update, application/octet-stream,
    /// the room in X-Partyline-Room; load_url is then asked with an empty
    /// body and that header) [default: json].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_CALLBACK_FORMAT", value_parser = ["json", "binary"])]
    pub callback_format: Option<String>,
    /// A header added to callback and load_url requests, `Name: value`
    /// (e.g. `Authorization: Bearer …`); repeat for several (env: separated
    /// by newlines) [default: none].
    #[arg(
        long = "callback-header",
        env = "PARTYLINE_WEBHOOKS_CALLBACK_HEADERS",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub callback_headers: Option<Vec<String>>,
    /// A callback waits for the room to be quiet this long… [default: 2s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_DEBOUNCE_WAIT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub debounce_wait: Option<Duration>,
    /// …but no longer than this after the first unsent change [default: 10s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_DEBOUNCE_MAX_WAIT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub debounce_max_wait: Option<Duration>,
    /// How long one callback request may take [default: 5s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_CALLBACK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Option<Duration>,
    /// Retries of a failed callback, 1 s, 2 s, 4 s … apart [default: 5].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_CALLBACK_RETRIES")]
    pub callback_retries: Option<u32>,
    /// Ask this URL (POST {"room"}) for a new room's first content: 200 with
    /// a Yjs update, or 204/404 to start empty [default: new rooms start empty].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_LOAD_URL")]
    pub load_url: Option<String>,
    /// How long the initial-content request may take [default: 5s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_LOAD_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub load_timeout: Option<Duration>,
    /// POST lifecycle events here (session.opened, session.closed,
    /// room.loaded, room.unloaded, room.deleted, room.restored; JSON
    /// {type, timestamp, data}), in order per room, signed like every
    /// webhook; each request may take --callback-timeout [default: no events].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Events queued at most; more are dropped and counted [default: 10000].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_EVENTS_QUEUE")]
    pub events_queue: Option<usize>,
    /// Retries of an event that failed, 1 s, 2 s, 4 s … apart (jittered,
    /// at most 30 s); then it is given up and counted [default: 5].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_EVENTS_RETRIES")]
    pub events_retries: Option<u32>,
}

/// The secret every outgoing webhook is signed with: `--webhook-secret`,
/// env `PARTYLINE_WEBHOOKS_SECRET`, or `[webhooks] secret`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct WebhookSecretFlags {
    /// Sign every outgoing webhook (auth webhook, state callback, load_url,
    /// events) with Standard Webhooks headers (webhook-id,
    /// webhook-timestamp, webhook-signature) under this `whsec_<base64>`
    /// secret; give two, space-separated, while rotating (both sign)
    /// [default: unsigned].
    #[arg(
        long = "webhook-secret",
        env = "PARTYLINE_WEBHOOKS_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
}

/// Client authorization: flags, env `PARTYLINE_AUTH_*`, or `[auth]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct AuthFlags {
    /// How clients are authorized before the upgrade: `none` (everyone
    /// writes; `partyline dev` or `--insecure-no-auth` only), `jwt` or `webhook`
    /// [default: none in dev; a cluster gateway requires a choice].
    #[arg(long = "auth-mode", env = "PARTYLINE_AUTH_MODE")]
    pub mode: Option<String>,
    /// HS256 shared secret for `jwt`, at least 32 bytes (shorter ones, the
    /// empty one included, refuse to start).
    #[arg(long, env = "PARTYLINE_AUTH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file for `jwt` (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, env = "PARTYLINE_AUTH_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS URL for `jwt` (the identity provider's keys; fetched again when a
    /// token names an unknown `kid`, so key rotation needs no restart).
    #[arg(long, env = "PARTYLINE_AUTH_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "PARTYLINE_AUTH_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim [default: none; then tokens that carry an `aud` are refused].
    #[arg(long, env = "PARTYLINE_AUTH_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The app's permission check for `webhook`: POSTed `{room, party,
    /// token, params, path, ip, headers}`, answers `200 {"access":
    /// "write"|"read", "user": {"id", "name"}, "expires_at"}` (the session
    /// is closed with 4401 at `expires_at`), 401 or 403.
    #[arg(long, env = "PARTYLINE_AUTH_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Request headers sent to the auth webhook, comma-separated
    /// [default: cookie,origin,user-agent].
    #[arg(
        long,
        env = "PARTYLINE_AUTH_WEBHOOK_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    pub webhook_forward_headers: Option<Vec<String>>,
    /// How long the webhook may take; slower is refused (fail closed) [default: 2s].
    #[arg(long, env = "PARTYLINE_AUTH_WEBHOOK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Option<Duration>,
    /// How long a webhook answer is reused for the same request [default: 30s].
    #[arg(long, env = "PARTYLINE_AUTH_CACHE_TTL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Webhook answers kept at most [default: 10000].
    #[arg(long, env = "PARTYLINE_AUTH_CACHE_ENTRIES")]
    pub cache_entries: Option<usize>,
    /// Close sessions (1008) after this long, so a revoked grant stops
    /// working within it [default: never; revocation applies at the next connect].
    #[arg(long = "auth-max-session", env = "PARTYLINE_AUTH_MAX_SESSION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub max_session: Option<Duration>,
}

/// How a room node joins a cluster: flags, env `PARTYLINE_NODE_*`, or `[node]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct NodeFlags {
    /// This node's stable id in the slot map [default: the host name].
    #[arg(long, env = "PARTYLINE_NODE_ID")]
    pub node_id: Option<String>,
    /// Address the room node's gRPC server listens on [default: 127.0.0.1:7001].
    #[arg(long, env = "PARTYLINE_NODE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// gRPC URL gateways dial to reach this node [default: http://<grpc-listen>,
    /// with the host name for an unspecified address].
    #[arg(long, env = "PARTYLINE_NODE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where snapshots (and, without --redis, logs) live, shared by every
    /// room node: `file:///dir`; with --redis also `s3://bucket/prefix`,
    /// `gs://…`, `az://…`, `memory://` or `redis://` [default: file://./.partyline,
    /// redis:// with --redis].
    #[arg(long, env = "PARTYLINE_NODE_STORE")]
    pub store: Option<String>,
    /// Redis for the rooms' update logs (one stream per room), e.g.
    /// `redis://127.0.0.1:6379/0`. Without it logs are files in the store directory.
    #[arg(long, env = "PARTYLINE_NODE_REDIS")]
    pub redis: Option<String>,
    /// How often the node tells the coordinators it is alive [default: 1s].
    #[arg(long, env = "PARTYLINE_NODE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// On SIGTERM, how long to wait for the cluster to move every room
    /// away before stopping anyway [default: 30s].
    #[arg(long, env = "PARTYLINE_NODE_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    /// How long loading a room waits for its previous owner to let go [default: 10s].
    #[arg(long, env = "PARTYLINE_NODE_ROOM_LOCK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub room_lock_timeout: Option<Duration>,
}

/// Where the cluster's NATS is: flags, env `PARTYLINE_CLUSTER_*`, or `[cluster]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct ClusterFlags {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222]; credentials in the URL (nats://USER:PASSWORD@host, nats://TOKEN@host).
    #[arg(long = "nats", env = "PARTYLINE_CLUSTER_NATS")]
    pub nats: Option<String>,
    /// Namespace of the cluster's NATS buckets and subjects, so clusters can
    /// share one NATS [default: partyline].
    #[arg(long = "cluster-name", env = "PARTYLINE_CLUSTER_NAME")]
    pub name: Option<String>,
}

/// The cluster's link secret (the gateway → room node gRPC link, and room
/// nodes' heartbeat proofs): flags, env, or `[link]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct LinkFlags {
    /// File of the cluster's shared link secret: one per line (at least 16
    /// printable characters, e.g. `openssl rand -hex 32`), the first sent,
    /// every line accepted; read again every 2 s, so secrets rotate without
    /// a restart. Gateways send it on the gRPC link, room nodes check it
    /// and prove it in every heartbeat, coordinators check those proofs,
    /// `partyline admin export|import` send it.
    #[arg(long, env = "PARTYLINE_GRPC_SECRET_FILE")]
    pub grpc_secret_file: Option<PathBuf>,
    /// Run without a link secret: anyone who reaches a room node's gRPC
    /// port may read, write and delete every room it serves, and anyone
    /// who may heartbeat on NATS may join as a room node. Only on a
    /// network you trust entirely.
    #[arg(long, env = "PARTYLINE_INSECURE_NO_GRPC_SECRET")]
    #[serde(skip)]
    pub insecure_no_grpc_secret: bool,
}

/// Coordinator settings: flags, env `PARTYLINE_COORDINATOR_*`, or `[coordinator]`.
#[derive(Debug, Default, Clone, Args, Serialize)]
pub(crate) struct CoordinatorFlags {
    /// This coordinator's id, for the leader lease and logs [default: host name, pid and a random suffix].
    #[arg(long = "coordinator-id", env = "PARTYLINE_COORDINATOR_ID")]
    pub id: Option<String>,
    /// Heartbeat interval the room nodes use [default: 1s].
    #[arg(long, env = "PARTYLINE_COORDINATOR_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// A room node silent this long is dead and its slots move [default: 3s].
    #[arg(long, env = "PARTYLINE_COORDINATOR_DEAD_AFTER", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub dead_after: Option<Duration>,
    /// Leader lease: a standby takes over this long after the leader dies [default: 3s].
    #[arg(long, env = "PARTYLINE_COORDINATOR_LEASE", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// Give a joining node its share of slots at once; with false it gets
    /// slots only on `partyline admin rebalance` [default: true].
    #[arg(long, env = "PARTYLINE_COORDINATOR_REBALANCE_ON_JOIN")]
    pub rebalance_on_join: Option<bool>,
}
