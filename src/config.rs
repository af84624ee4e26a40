//! `partyline` configuration: TOML file (`--config`) ← env
//! (`PARTYLINE_<SECTION>_<KEY>`) ← flags, later wins. The TOML sections
//! mirror the env names: `[gateway]`, `[room_node]`, `[node]` (how a room
//! node joins a cluster), `[cluster]` (NATS), `[link]` (the gRPC link's
//! secret) and `[coordinator]`. Unknown
//! keys are an error, durations are written like `"30s"` or `"2m"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use serde_json::json;

pub mod effective;

/// Schemes of an HTTP endpoint setting (webhooks, JWKS, OTLP, `--advertise`).
const HTTP_SCHEMES: &[&str] = &["http", "https"];
/// Schemes `--nats` takes (async-nats; a bare `host:port` means `nats://`).
const NATS_SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];
/// Schemes `--redis` takes (the redis crate's).
const REDIS_SCHEMES: &[&str] = &["redis", "rediss", "redis+unix", "unix", "valkey", "valkeys"];
/// Schemes `--store` takes: a directory, memory, Redis, or an object store
/// (object_store's own URL forms).
const STORE_SCHEMES: &[&str] = &[
    "file", "memory", "redis", "rediss", "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss",
    "http", "https",
];

/// Checks `value` of the setting `flag` as a URL with one of `schemes`
/// (and a host when `needs_host`). Every address is checked at start-up so
/// that a typo stops the process there with the flag's name, instead of
/// surfacing later as "unreachable" far from its cause.
pub fn check_url(
    flag: &str,
    value: &str,
    schemes: &[&str],
    needs_host: bool,
) -> anyhow::Result<url::Url> {
    let expected = schemes
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect::<Vec<_>>()
        .join(", ");
    // `127.0.0.1:7001` fails to parse and `host:7001` parses with the
    // scheme `host`: either way a missing scheme, the usual mistake.
    let hint = if value.contains("://") {
        String::new()
    } else {
        format!(" (did you mean {}://{value}?)", schemes[0])
    };
    let parsed = url::Url::parse(value).map_err(|error| {
        anyhow::anyhow!("{flag} {value:?} is not a URL ({error}); expected {expected}{hint}")
    })?;
    anyhow::ensure!(
        schemes.contains(&parsed.scheme()),
        "{flag} {value:?} has the scheme {:?}; expected {expected}{hint}",
        parsed.scheme()
    );
    anyhow::ensure!(
        !needs_host || parsed.host_str().is_some_and(|host| !host.is_empty()),
        "{flag} {value:?} names no host"
    );
    Ok(parsed)
}

/// Default gateway address: PartyKit's default port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1999";
/// Default data directory of `partyline dev`.
pub const DEFAULT_DATA_DIR: &str = ".partyline";

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[gateway]`.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// `[room_node]`.
    #[serde(default)]
    pub room_node: RoomNodeSection,
    /// `[node]`.
    #[serde(default)]
    pub node: NodeSection,
    /// `[cluster]`.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// `[link]`.
    #[serde(default)]
    pub link: LinkSection,
    /// `[coordinator]`.
    #[serde(default)]
    pub coordinator: CoordinatorSection,
    /// `[auth]`.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[webhooks]`.
    #[serde(default)]
    pub webhooks: WebhooksSection,
    /// `[telemetry]`.
    #[serde(default)]
    pub telemetry: TelemetrySection,
}

impl FileConfig {
    /// Reads `path`, or defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
    }
}

/// Gateway settings: flags, env `PARTYLINE_GATEWAY_*`, or `[gateway]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
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
    #[serde(default, with = "humantime_serde")]
    pub batch_timeout: Option<Duration>,
    /// Longest query string of a room URL in bytes; longer gets HTTP 414
    /// before the upgrade and before any auth webhook call [default: 8192].
    #[arg(long, env = "PARTYLINE_GATEWAY_MAX_QUERY_BYTES")]
    pub max_query_bytes: Option<usize>,
    /// How often client sockets are pinged [default: 10s].
    #[arg(long, env = "PARTYLINE_GATEWAY_PING_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// A socket silent this long (no frame, no pong) is closed as dead [default: 30s].
    #[arg(long, env = "PARTYLINE_GATEWAY_DEAD_AFTER", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
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
    #[serde(default, with = "humantime_serde")]
    pub upstream_linger: Option<Duration>,
    /// How long a client waits for an unreachable room owner before 1013 [default: 10s].
    #[arg(long, env = "PARTYLINE_GATEWAY_OWNER_UNREACHABLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
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
    #[serde(default, with = "humantime_serde")]
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
    #[serde(default, with = "humantime_serde")]
    pub api_timeout: Option<Duration>,
}

/// Room node settings: flags, env `PARTYLINE_ROOM_NODE_*`, or `[room_node]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomNodeSection {
    /// Directory for room logs and snapshots [default: ./.partyline].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unload a room this long after its last client left (snapshot first) [default: 30s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Snapshot a room with new updates this often [default: 60s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_SNAPSHOT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
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
    #[serde(default, with = "humantime_serde")]
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
    #[serde(default, with = "humantime_serde")]
    pub memory_trim_delay: Option<Duration>,
    /// Largest document a room holds (its policy's `max_doc_bytes` wins);
    /// updates growing it past this are refused and the writer is told [default: 268435456].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MAX_DOC_BYTES")]
    pub max_doc_bytes: Option<u64>,
    /// A session's SyncStep1 or QueryAwareness is answered at most once
    /// per this interval; repeats are dropped [default: 1s].
    #[arg(long, env = "PARTYLINE_ROOM_NODE_MIN_RESYNC_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
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
    /// `[room_node.modes]` in the file: prefix = "mode".
    #[arg(skip)]
    pub modes: Option<std::collections::BTreeMap<String, String>>,
    /// `[room_node.policies."prefix"]` in the file: limits by room-name
    /// prefix (`""` for every other room).
    #[arg(skip)]
    pub policies: Option<std::collections::BTreeMap<String, PolicySection>>,
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
    #[serde(default, with = "humantime_serde")]
    pub history_max_age: Option<Duration>,
}

/// Metrics, health and traces of a serving role: flags, env
/// `PARTYLINE_TELEMETRY_*`, or `[telemetry]` (docs/operations.md).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
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

impl TelemetrySection {
    /// Flags/env over file.
    pub fn merge(self, file: TelemetrySection) -> Self {
        Self {
            ops_listen: or(self.ops_listen, file.ops_listen),
            // An empty value (e.g. an unset variable in a compose file) is none.
            otlp_endpoint: or(self.otlp_endpoint, file.otlp_endpoint)
                .filter(|endpoint| !endpoint.is_empty()),
            trace_sample_ratio: or(self.trace_sample_ratio, file.trace_sample_ratio),
        }
    }

    /// Checks the OTLP endpoint, naming the flag when it is bad.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(endpoint) = &self.otlp_endpoint {
            check_url("--otlp-endpoint", endpoint, HTTP_SCHEMES, true)?;
        }
        Ok(())
    }

    /// `--print-effective-config`'s `telemetry`, checked.
    pub fn effective(&self) -> anyhow::Result<serde_json::Value> {
        self.check()?;
        Ok(json!({
            "ops_listen": self.ops_listen,
            "otlp_endpoint": self.otlp_endpoint,
            "trace_sample_ratio": self.sample_ratio()?,
        }))
    }

    /// The sample ratio, checked.
    pub fn sample_ratio(&self) -> anyhow::Result<f64> {
        let ratio = self.trace_sample_ratio.unwrap_or(0.05);
        anyhow::ensure!(
            (0.0..=1.0).contains(&ratio),
            "telemetry.trace_sample_ratio must be between 0 and 1"
        );
        Ok(ratio)
    }
}

/// Webhooks to the app's backend, run by room nodes: flags, env
/// `PARTYLINE_WEBHOOKS_*`, or `[webhooks]` (docs/webhooks.md).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    /// POST each room's state here (JSON: room, base64 Yjs update, top-level
    /// types) after it changed, debounced [default: no callback].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Key of the callbacks' `X-Partyline-Signature` (HMAC-SHA256 of
    /// "<t>.<body>") [default: unsigned].
    #[arg(
        long,
        env = "PARTYLINE_WEBHOOKS_CALLBACK_SECRET",
        hide_env_values = true
    )]
    pub callback_secret: Option<String>,
    /// A callback waits for the room to be quiet this long… [default: 2s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_DEBOUNCE_WAIT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub debounce_wait: Option<Duration>,
    /// …but no longer than this after the first unsent change [default: 10s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_DEBOUNCE_MAX_WAIT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub debounce_max_wait: Option<Duration>,
    /// How long one callback request may take [default: 5s].
    #[arg(long, env = "PARTYLINE_WEBHOOKS_CALLBACK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
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
    #[serde(default, with = "humantime_serde")]
    pub load_timeout: Option<Duration>,
}

impl WebhooksSection {
    /// Flags/env over file.
    pub fn merge(self, file: WebhooksSection) -> Self {
        Self {
            callback_url: or(self.callback_url, file.callback_url),
            callback_secret: or(self.callback_secret, file.callback_secret),
            debounce_wait: or(self.debounce_wait, file.debounce_wait),
            debounce_max_wait: or(self.debounce_max_wait, file.debounce_max_wait),
            callback_timeout: or(self.callback_timeout, file.callback_timeout),
            callback_retries: or(self.callback_retries, file.callback_retries),
            load_url: or(self.load_url, file.load_url),
            load_timeout: or(self.load_timeout, file.load_timeout),
        }
    }

    /// Checks the URLs, naming the flag of a bad one.
    pub fn check(&self) -> anyhow::Result<()> {
        for (flag, url) in [
            ("--callback-url", &self.callback_url),
            ("--load-url", &self.load_url),
        ] {
            if let Some(url) = url {
                check_url(flag, url, HTTP_SCHEMES, true)?;
            }
        }
        Ok(())
    }

    /// The hooks' settings, defaults filled in and checked.
    pub fn config(&self) -> anyhow::Result<partyline_room_node::hooks::HooksConfig> {
        use partyline_room_node::hooks::HooksConfig;
        self.check()?;
        let mut config = HooksConfig {
            callback_url: self.callback_url.clone(),
            callback_secret: self.callback_secret.clone(),
            load_url: self.load_url.clone(),
            ..HooksConfig::default()
        };
        set(&mut config.debounce_wait, self.debounce_wait);
        set(&mut config.debounce_max_wait, self.debounce_max_wait);
        set(&mut config.callback_timeout, self.callback_timeout);
        set(&mut config.callback_retries, self.callback_retries);
        set(&mut config.load_timeout, self.load_timeout);
        anyhow::ensure!(
            config.debounce_max_wait >= config.debounce_wait,
            "webhooks.debounce_max_wait must be at least webhooks.debounce_wait"
        );
        Ok(config)
    }

    /// The room node's hooks; `None` when neither URL is set.
    pub fn build(&self) -> anyhow::Result<Option<partyline_room_node::hooks::Hooks>> {
        let config = self.config()?;
        if config.callback_url.is_none() && config.load_url.is_none() {
            return Ok(None);
        }
        if config.callback_url.is_some() && config.callback_secret.is_none() {
            tracing::warn!(
                "state callbacks are unsigned: set --callback-secret so the app can verify them"
            );
        }
        Ok(Some(partyline_room_node::hooks::Hooks::new(config)?))
    }
}

/// One `[room_node.policies."prefix"]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Sessions open at once in one room; the next is closed with 1008.
    pub max_sessions: Option<usize>,
    /// Document size limit in bytes; growing updates past it are refused.
    pub max_doc_bytes: Option<u64>,
    /// Relay one session's awareness at most once per this window (latest
    /// wins), e.g. `"100ms"` for cursor floods.
    #[serde(default, with = "humantime_serde")]
    pub awareness_throttle: Option<Duration>,
    /// Largest client message in bytes; a larger one closes the session
    /// with 1009.
    pub max_frame_bytes: Option<usize>,
    /// Unload the room this long after its last client left, instead of
    /// `idle_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Persistence mode (snapshot, history, ephemeral), as in
    /// `[room_node.modes]`.
    pub mode: Option<String>,
    /// Relay `__YPS:` custom messages from read-only sessions too
    /// (default false).
    pub read_only_custom_messages: Option<bool>,
}

/// `a` where set, else `b`.
fn or<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.or(b)
}

impl GatewaySection {
    /// Flags/env over file.
    pub fn merge(self, file: GatewaySection) -> Self {
        Self {
            listen: or(self.listen, file.listen),
            max_message_bytes: or(self.max_message_bytes, file.max_message_bytes),
            batch_timeout: or(self.batch_timeout, file.batch_timeout),
            max_query_bytes: or(self.max_query_bytes, file.max_query_bytes),
            ping_interval: or(self.ping_interval, file.ping_interval),
            dead_after: or(self.dead_after, file.dead_after),
            session_queue: or(self.session_queue, file.session_queue),
            session_queue_bytes: or(self.session_queue_bytes, file.session_queue_bytes),
            upstream_linger: or(self.upstream_linger, file.upstream_linger),
            owner_unreachable_timeout: or(
                self.owner_unreachable_timeout,
                file.owner_unreachable_timeout,
            ),
            room_reopen_attempts: or(self.room_reopen_attempts, file.room_reopen_attempts),
            ws_read_buffer_bytes: or(self.ws_read_buffer_bytes, file.ws_read_buffer_bytes),
            max_connections: or(self.max_connections, file.max_connections),
            release_grace: or(self.release_grace, file.release_grace),
            max_connects_per_ip: or(self.max_connects_per_ip, file.max_connects_per_ip),
            max_sockets_per_ip: or(self.max_sockets_per_ip, file.max_sockets_per_ip),
            max_messages_per_second: or(self.max_messages_per_second, file.max_messages_per_second),
            message_burst: or(self.message_burst, file.message_burst),
            api_key: or(self.api_key, file.api_key),
            api_timeout: or(self.api_timeout, file.api_timeout),
        }
    }

    /// The listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses")
        })
    }

    /// Typed gateway config.
    pub fn build(&self, gateway_id: String) -> anyhow::Result<partyline_gateway::GatewayConfig> {
        let mut config = partyline_gateway::GatewayConfig::new(gateway_id);
        set(&mut config.max_message_bytes, self.max_message_bytes);
        set(&mut config.batch_timeout, self.batch_timeout);
        set(&mut config.max_query_bytes, self.max_query_bytes);
        set(&mut config.ping_interval, self.ping_interval);
        set(&mut config.dead_after, self.dead_after);
        set(&mut config.session_queue, self.session_queue);
        set(&mut config.session_queue_bytes, self.session_queue_bytes);
        set(&mut config.upstream_linger, self.upstream_linger);
        set(
            &mut config.owner_unreachable_timeout,
            self.owner_unreachable_timeout,
        );
        set(&mut config.room_reopen_attempts, self.room_reopen_attempts);
        anyhow::ensure!(
            config.room_reopen_attempts >= 1,
            "gateway.room_reopen_attempts (--room-reopen-attempts) must be at least 1"
        );
        set(&mut config.ws_read_buffer_bytes, self.ws_read_buffer_bytes);
        set(&mut config.max_connections, self.max_connections);
        set(&mut config.release_grace, self.release_grace);
        set(&mut config.api_timeout, self.api_timeout);
        set(
            &mut config.limits.max_connects_per_ip,
            self.max_connects_per_ip,
        );
        set(
            &mut config.limits.max_sockets_per_ip,
            self.max_sockets_per_ip,
        );
        set(
            &mut config.limits.max_messages_per_second,
            self.max_messages_per_second,
        );
        set(&mut config.limits.message_burst, self.message_burst);
        if let Some(key) = &self.api_key {
            anyhow::ensure!(
                key.len() >= 16,
                "gateway.api_key must be at least 16 characters"
            );
            config.api_key = Some(key.clone());
        }
        anyhow::ensure!(
            config.session_queue > 0,
            "gateway.session_queue must be at least 1"
        );
        anyhow::ensure!(
            config.session_queue_bytes >= 64 * 1024,
            "gateway.session_queue_bytes (--session-queue-bytes) must be at least 65536"
        );
        anyhow::ensure!(
            config.max_message_bytes > 0,
            "gateway.max_message_bytes must be at least 1"
        );
        anyhow::ensure!(
            config.session_queue_bytes >= config.max_message_bytes,
            "gateway.session_queue_bytes (--session-queue-bytes) must be at least gateway.max_message_bytes ({}): an edit of the largest size must fit",
            config.max_message_bytes
        );
        anyhow::ensure!(
            !config.batch_timeout.is_zero(),
            "gateway.batch_timeout must be positive"
        );
        anyhow::ensure!(
            config.max_query_bytes > 0,
            "gateway.max_query_bytes must be at least 1"
        );
        anyhow::ensure!(
            !config.ping_interval.is_zero(),
            "gateway.ping_interval must be positive"
        );
        anyhow::ensure!(
            config.dead_after > config.ping_interval,
            "gateway.dead_after must be longer than gateway.ping_interval"
        );
        Ok(config)
    }
}

impl RoomNodeSection {
    /// Flags/env over file.
    pub fn merge(self, file: RoomNodeSection) -> Self {
        Self {
            data_dir: or(self.data_dir, file.data_dir),
            idle_timeout: or(self.idle_timeout, file.idle_timeout),
            snapshot_interval: or(self.snapshot_interval, file.snapshot_interval),
            snapshot_log_bytes: or(self.snapshot_log_bytes, file.snapshot_log_bytes),
            snapshot_log_updates: or(self.snapshot_log_updates, file.snapshot_log_updates),
            log_buffer_bytes: or(self.log_buffer_bytes, file.log_buffer_bytes),
            fsync_interval: or(self.fsync_interval, file.fsync_interval),
            link_queue: or(self.link_queue, file.link_queue),
            room_queue: or(self.room_queue, file.room_queue),
            max_type_depth: or(self.max_type_depth, file.max_type_depth),
            min_resync_interval: or(self.min_resync_interval, file.min_resync_interval),
            max_doc_bytes: or(self.max_doc_bytes, file.max_doc_bytes),
            memory_trim_delay: or(self.memory_trim_delay, file.memory_trim_delay),
            awareness_max_clients: or(self.awareness_max_clients, file.awareness_max_clients),
            awareness_max_bytes: or(self.awareness_max_bytes, file.awareness_max_bytes),
            room_mode: if self.room_mode.is_empty() {
                file.room_mode
            } else {
                self.room_mode
            },
            modes: or(self.modes, file.modes),
            policies: or(self.policies, file.policies),
            history_versions: or(self.history_versions, file.history_versions),
            refuse_unlisted_rooms: or(self.refuse_unlisted_rooms, file.refuse_unlisted_rooms),
            history_max_age: or(self.history_max_age, file.history_max_age),
        }
    }

    /// Typed room node config.
    pub fn build(
        &self,
        node_id: partyline_proto::NodeId,
    ) -> anyhow::Result<partyline_room_node::RoomNodeConfig> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut config = partyline_room_node::RoomNodeConfig::new(node_id, data_dir);
        set(&mut config.idle_timeout, self.idle_timeout);
        set(&mut config.snapshot_interval, self.snapshot_interval);
        set(&mut config.snapshot_log_bytes, self.snapshot_log_bytes);
        set(&mut config.snapshot_log_updates, self.snapshot_log_updates);
        set(&mut config.log_buffer_bytes, self.log_buffer_bytes);
        set(&mut config.history_versions, self.history_versions);
        config.history_max_age = self.history_max_age;
        let policy_modes = self
            .policies
            .iter()
            .flatten()
            .filter_map(|(p, policy)| Some((p.clone(), policy.mode.clone()?)));
        let file_modes = self
            .modes
            .iter()
            .flatten()
            .map(|(p, m)| (p.clone(), m.clone()))
            .chain(policy_modes);
        let flag_modes = self.room_mode.iter().map(|pair| {
            let (prefix, mode) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
            (prefix.to_owned(), mode.to_owned())
        });
        // Flags after the file: a prefix given twice takes the flag's mode.
        for (prefix, mode) in file_modes.chain(flag_modes) {
            let mode = mode
                .parse()
                .map_err(|e| anyhow::anyhow!("room mode for prefix {prefix:?}: {e}"))?;
            config.modes.retain(|(p, _)| *p != prefix);
            config.modes.push((prefix, mode));
        }
        for (prefix, policy) in self.policies.iter().flatten() {
            config.policies.push((
                prefix.clone(),
                partyline_room_node::RoomPolicy {
                    max_sessions: policy.max_sessions,
                    max_doc_bytes: policy.max_doc_bytes,
                    awareness_throttle: policy.awareness_throttle,
                    max_frame_bytes: policy.max_frame_bytes,
                    idle_timeout: policy.idle_timeout,
                    read_only_custom_messages: policy.read_only_custom_messages.unwrap_or(false),
                },
            ));
        }
        config.refuse_unlisted_rooms = self.refuse_unlisted_rooms.unwrap_or(false);
        anyhow::ensure!(
            !config.refuse_unlisted_rooms || !config.policies.is_empty(),
            "room_node.refuse_unlisted_rooms needs at least one [room_node.policies.\"prefix\"] table"
        );
        anyhow::ensure!(
            config.history_versions >= 2,
            "room_node.history_versions must be at least 2"
        );
        anyhow::ensure!(
            config.snapshot_log_updates > 0,
            "room_node.snapshot_log_updates must be at least 1"
        );
        set(&mut config.fsync_interval, self.fsync_interval);
        set(&mut config.link_queue, self.link_queue);
        set(&mut config.room_queue, self.room_queue);
        set(&mut config.limits.max_type_depth, self.max_type_depth);
        set(&mut config.min_resync_interval, self.min_resync_interval);
        set(&mut config.max_doc_bytes, self.max_doc_bytes);
        if let Some(delay) = self.memory_trim_delay {
            config.memory_trim_delay = (!delay.is_zero()).then_some(delay);
        }
        // The server API moves whole documents in one gRPC message.
        let largest_doc = config
            .policies
            .iter()
            .filter_map(|(_, policy)| policy.max_doc_bytes)
            .chain([config.max_doc_bytes])
            .max()
            .unwrap_or(0);
        anyhow::ensure!(
            largest_doc <= partyline_proto::chunk::MAX_UNARY_MESSAGE as u64 / 2,
            "room_node.max_doc_bytes (--max-doc-bytes, or a policy's max_doc_bytes) must be at most {} bytes",
            partyline_proto::chunk::MAX_UNARY_MESSAGE / 2
        );
        set(
            &mut config.limits.awareness_max_clients,
            self.awareness_max_clients,
        );
        set(
            &mut config.limits.awareness_max_bytes,
            self.awareness_max_bytes,
        );
        anyhow::ensure!(
            config.limits.max_type_depth >= 2,
            "room_node.max_type_depth (--max-type-depth) must be at least 2"
        );
        anyhow::ensure!(
            config.link_queue > 0,
            "room_node.link_queue must be at least 1"
        );
        anyhow::ensure!(
            config.room_queue > 0,
            "room_node.room_queue must be at least 1"
        );
        anyhow::ensure!(
            !config.snapshot_interval.is_zero(),
            "room_node.snapshot_interval must be positive"
        );
        anyhow::ensure!(
            !config.fsync_interval.is_zero(),
            "room_node.fsync_interval must be positive"
        );
        Ok(config)
    }
}

/// Client authorization: flags, env `PARTYLINE_AUTH_*`, or `[auth]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
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
    /// token, params}`, answers `200 {"access": "write"|"read", "user": {"id", "name"}}`,
    /// 401 or 403.
    #[arg(long, env = "PARTYLINE_AUTH_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// How long the webhook may take; slower is refused (fail closed) [default: 2s].
    #[arg(long, env = "PARTYLINE_AUTH_WEBHOOK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub webhook_timeout: Option<Duration>,
    /// How long a webhook answer is reused for the same request [default: 30s].
    #[arg(long, env = "PARTYLINE_AUTH_CACHE_TTL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Webhook answers kept at most [default: 10000].
    #[arg(long, env = "PARTYLINE_AUTH_CACHE_ENTRIES")]
    pub cache_entries: Option<usize>,
    /// Close sessions (1008) after this long, so a revoked grant stops
    /// working within it [default: never; revocation applies at the next connect].
    #[arg(long = "auth-max-session", env = "PARTYLINE_AUTH_MAX_SESSION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub max_session: Option<Duration>,
}

impl AuthSection {
    /// Flags/env over file.
    pub fn merge(self, file: AuthSection) -> Self {
        Self {
            mode: or(self.mode, file.mode),
            jwt_secret: or(self.jwt_secret, file.jwt_secret),
            jwt_public_key: or(self.jwt_public_key, file.jwt_public_key),
            jwks_url: or(self.jwks_url, file.jwks_url),
            jwt_issuer: or(self.jwt_issuer, file.jwt_issuer),
            jwt_audience: or(self.jwt_audience, file.jwt_audience),
            webhook_url: or(self.webhook_url, file.webhook_url),
            webhook_timeout: or(self.webhook_timeout, file.webhook_timeout),
            cache_ttl: or(self.cache_ttl, file.cache_ttl),
            cache_entries: or(self.cache_entries, file.cache_entries),
            max_session: or(self.max_session, file.max_session),
        }
    }

    /// Checks the URLs, naming the flag of a bad one, and that a mode was
    /// chosen unless `allow_none`.
    pub fn check(&self, allow_none: bool) -> anyhow::Result<()> {
        for (flag, url) in [
            ("--jwks-url", &self.jwks_url),
            ("--webhook-url", &self.webhook_url),
        ] {
            if let Some(url) = url {
                check_url(flag, url, HTTP_SCHEMES, true)?;
            }
        }
        anyhow::ensure!(
            allow_none || !matches!(self.mode.as_deref(), None | Some("none")),
            "no client authorization configured: set --auth-mode jwt (with --jwt-secret or \
             --jwt-public-key), or pass --insecure-no-auth to let anyone open any room"
        );
        Ok(())
    }

    /// `--print-effective-config`'s `auth`, defaults filled in.
    pub fn effective(&self) -> serde_json::Value {
        use effective::{opt_duration, secret};
        json!({
            "mode": self.mode.as_deref().unwrap_or("none"),
            "jwt_secret": secret(self.jwt_secret.as_deref()),
            "jwt_public_key": self.jwt_public_key,
            "jwks_url": self.jwks_url,
            "jwt_issuer": self.jwt_issuer,
            "jwt_audience": self.jwt_audience,
            "webhook_url": self.webhook_url,
            "webhook_timeout": effective::duration(self.webhook_timeout.unwrap_or(Duration::from_secs(2))),
            "cache_ttl": effective::duration(self.cache_ttl.unwrap_or(Duration::from_secs(30))),
            "cache_entries": self.cache_entries.unwrap_or(10_000),
            "max_session": opt_duration(self.max_session),
        })
    }

    /// The authorizer; `none` only when `allow_none` (dev, or the
    /// operator said `--insecure-no-auth`).
    pub async fn build(
        &self,
        allow_none: bool,
    ) -> anyhow::Result<partyline_gateway::auth::Authorizer> {
        use partyline_gateway::auth::{Authorizer, JwtAuthorizer};
        self.check(allow_none)?;
        match self.mode.as_deref() {
            None | Some("none") => {
                tracing::warn!("auth mode none: every client may open and edit every room");
                Ok(Authorizer::None)
            }
            Some("jwt") => {
                let mut jwt = match (&self.jwt_secret, &self.jwt_public_key, &self.jwks_url) {
                    (Some(secret), None, None) => JwtAuthorizer::with_secret(secret.as_bytes())
                        .context("--jwt-secret (PARTYLINE_AUTH_JWT_SECRET, [auth] jwt_secret)")?,
                    (None, Some(path), None) => {
                        let pem = std::fs::read(path)
                            .with_context(|| format!("read jwt public key {}", path.display()))?;
                        JwtAuthorizer::with_public_key(&pem)?
                    }
                    (None, None, Some(url)) => JwtAuthorizer::with_jwks(url).await?,
                    (None, None, None) => anyhow::bail!(
                        "--auth-mode jwt needs --jwt-secret, --jwt-public-key or --jwks-url"
                    ),
                    _ => anyhow::bail!("give one of --jwt-secret, --jwt-public-key, --jwks-url"),
                };
                if let Some(issuer) = &self.jwt_issuer {
                    jwt = jwt.issuer(issuer);
                }
                if let Some(audience) = &self.jwt_audience {
                    jwt = jwt.audience(audience);
                }
                Ok(Authorizer::Jwt(Box::new(jwt)))
            }
            Some("webhook") => {
                let url = self
                    .webhook_url
                    .as_deref()
                    .context("--auth-mode webhook needs --webhook-url")?;
                Ok(Authorizer::Webhook(std::sync::Arc::new(
                    partyline_gateway::auth::WebhookAuthorizer::new(
                        url,
                        self.webhook_timeout.unwrap_or(Duration::from_secs(2)),
                        self.cache_ttl.unwrap_or(Duration::from_secs(30)),
                        self.cache_entries.unwrap_or(10_000).max(1),
                    )?,
                )))
            }
            Some(other) => anyhow::bail!("unknown auth mode {other:?}: none, jwt or webhook"),
        }
    }
}

/// How a room node joins a cluster: flags, env `PARTYLINE_NODE_*`, or `[node]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
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
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// On SIGTERM, how long to wait for the cluster to move every room
    /// away before stopping anyway [default: 30s].
    #[arg(long, env = "PARTYLINE_NODE_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    /// How long loading a room waits for its previous owner to let go [default: 10s].
    #[arg(long, env = "PARTYLINE_NODE_ROOM_LOCK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub room_lock_timeout: Option<Duration>,
}

/// Default gRPC address of `partyline room-node`.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7001";
/// Default heartbeat interval of a room node.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default drain timeout of a room node.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl NodeSection {
    /// Flags/env over file.
    pub fn merge(self, file: NodeSection) -> Self {
        Self {
            node_id: or(self.node_id, file.node_id),
            grpc_listen: or(self.grpc_listen, file.grpc_listen),
            advertise: or(self.advertise, file.advertise),
            store: or(self.store, file.store),
            redis: or(self.redis, file.redis),
            heartbeat_interval: or(self.heartbeat_interval, file.heartbeat_interval),
            drain_timeout: or(self.drain_timeout, file.drain_timeout),
            room_lock_timeout: or(self.room_lock_timeout, file.room_lock_timeout),
        }
    }

    /// Checks `--advertise`, `--redis` and `--store`, naming the flag of a
    /// bad one. `--advertise` must be a URL: a bare `host:port` is refused
    /// rather than guessed, since gateways dial exactly what is published.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(advertise) = &self.advertise {
            check_url("--advertise", advertise, HTTP_SCHEMES, true)?;
        }
        if let Some(redis) = &self.redis {
            check_redis(redis)?;
        }
        if let Some(store) = &self.store {
            check_store(store)?;
        }
        Ok(())
    }

    /// `--print-effective-config`'s `node`, defaults filled in.
    pub fn effective(&self) -> serde_json::Value {
        json!({
            "node_id": self.node_id(),
            "grpc_listen": self.grpc_listen(),
            "advertise": self.advertise(self.grpc_listen()),
            "store": self.store,
            "redis": self.redis.as_deref().map(effective::without_credentials),
            "heartbeat_interval": effective::duration(self.heartbeat_interval.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)),
            "drain_timeout": effective::duration(self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT)),
        })
    }

    /// The node id: the flag, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(host_name)
    }

    /// The gRPC listen address.
    pub fn grpc_listen(&self) -> SocketAddr {
        self.grpc_listen
            .unwrap_or_else(|| DEFAULT_GRPC_LISTEN.parse().expect("default parses"))
    }

    /// The URL gateways dial, given the address actually bound.
    pub fn advertise(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.advertise {
            return url.clone();
        }
        if bound.ip().is_unspecified() {
            format!("http://{}:{}", host_name(), bound.port())
        } else {
            format!("http://{bound}")
        }
    }

    /// The store directory from `--store file:///dir`.
    pub fn store_dir(&self) -> anyhow::Result<PathBuf> {
        let Some(url) = &self.store else {
            return Ok(PathBuf::from(DEFAULT_DATA_DIR));
        };
        match url.strip_prefix("file://") {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => anyhow::bail!(
                "--store {url:?} is not supported without --redis: logs need a shared directory, \
                 file:///path (object stores and redis:// hold snapshots of a --redis log)"
            ),
        }
    }
}

/// Checks a `--redis` URL (room nodes and `partyline admin`).
pub fn check_redis(url: &str) -> anyhow::Result<()> {
    let parsed = check_url("--redis", url, REDIS_SCHEMES, false)?;
    if matches!(parsed.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
        check_url("--redis", url, REDIS_SCHEMES, true)?;
    }
    Ok(())
}

/// Checks a `--store` URL (room nodes and `partyline admin`); the store
/// itself says later whether it can reach the place.
pub fn check_store(url: &str) -> anyhow::Result<()> {
    check_url("--store", url, STORE_SCHEMES, false).map(drop)
}

/// The machine's host name, the default node id: stable across restarts
/// and unique per container. Linux's `/proc/sys/kernel/hostname`, else the
/// `HOSTNAME` (Unix shells) or `COMPUTERNAME` (Windows) variable.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Where the cluster's NATS is: flags, env `PARTYLINE_CLUSTER_*`, or `[cluster]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222]; credentials in the URL (nats://USER:PASSWORD@host, nats://TOKEN@host).
    #[arg(long = "nats", env = "PARTYLINE_CLUSTER_NATS")]
    pub nats: Option<String>,
    /// Namespace of the cluster's NATS buckets and subjects, so clusters can
    /// share one NATS [default: partyline].
    #[arg(long = "cluster-name", env = "PARTYLINE_CLUSTER_NAME")]
    pub name: Option<String>,
}

impl ClusterSection {
    /// Flags/env over file.
    pub fn merge(self, file: ClusterSection) -> Self {
        Self {
            nats: or(self.nats, file.nats),
            name: or(self.name, file.name),
        }
    }

    /// Typed options; each `--nats` entry is checked as async-nats will
    /// read it (`host:port` alone means `nats://host:port`).
    pub fn build(&self) -> anyhow::Result<partyline_coordinator::cluster::ClusterOptions> {
        if let Some(nats) = &self.nats {
            anyhow::ensure!(!nats.trim().is_empty(), "--nats is empty");
            for entry in nats.split(',').map(str::trim) {
                let url = if entry.contains("://") {
                    entry.to_owned()
                } else {
                    format!("nats://{entry}")
                };
                check_url("--nats", &url, NATS_SCHEMES, true)
                    .with_context(|| format!("--nats entry {entry:?}"))?;
            }
        }
        let mut options = partyline_coordinator::cluster::ClusterOptions::default();
        set(&mut options.nats_url, self.nats.clone());
        set(&mut options.cluster, self.name.clone());
        Ok(options)
    }
}

/// The cluster's link secret (the gateway → room node gRPC link, and room
/// nodes' heartbeat proofs): flags, env, or `[link]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
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

impl LinkSection {
    /// Flags/env over file.
    pub fn merge(self, file: LinkSection) -> Self {
        Self {
            grpc_secret_file: or(self.grpc_secret_file, file.grpc_secret_file),
            insecure_no_grpc_secret: self.insecure_no_grpc_secret,
        }
    }

    /// The link's authentication: the secret file, watched until
    /// `shutdown`, or none when the operator said so.
    pub async fn build(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<partyline_proto::link::LinkAuth> {
        use partyline_proto::link::{LinkAuth, LinkSecret};
        self.check()?;
        match &self.grpc_secret_file {
            Some(path) => Ok(LinkAuth::Secret(
                LinkSecret::watch_file(path, shutdown).await?,
            )),
            None => {
                tracing::warn!(
                    "no link secret (--insecure-no-grpc-secret): anyone who reaches a room \
                     node's gRPC port can read and write every room, and any NATS client \
                     allowed to heartbeat can join as a room node"
                );
                Ok(LinkAuth::Insecure)
            }
        }
    }

    /// `--print-effective-config`'s `link`.
    pub fn effective(&self) -> anyhow::Result<serde_json::Value> {
        self.check()?;
        Ok(json!({
            "grpc_secret_file": self.grpc_secret_file,
            "insecure_no_grpc_secret": self.insecure_no_grpc_secret,
        }))
    }

    /// Exactly one of a secret file and `--insecure-no-grpc-secret`.
    pub fn check(&self) -> anyhow::Result<()> {
        match (&self.grpc_secret_file, self.insecure_no_grpc_secret) {
            (Some(_), true) => {
                anyhow::bail!("give --grpc-secret-file or --insecure-no-grpc-secret, not both")
            }
            (Some(_), false) | (None, true) => Ok(()),
            (None, false) => anyhow::bail!(
                "the cluster needs its link secret: --grpc-secret-file FILE (one secret \
                 per line, at least 16 characters; e.g. `openssl rand -hex 32 > FILE`), \
                 the same file for gateways, room nodes and coordinators; or \
                 --insecure-no-grpc-secret on a network you trust entirely"
            ),
        }
    }
}

/// Coordinator settings: flags, env `PARTYLINE_COORDINATOR_*`, or `[coordinator]`.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// This coordinator's id, for the leader lease and logs [default: host name, pid and a random suffix].
    #[arg(long = "coordinator-id", env = "PARTYLINE_COORDINATOR_ID")]
    pub id: Option<String>,
    /// Heartbeat interval the room nodes use [default: 1s].
    #[arg(long, env = "PARTYLINE_COORDINATOR_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// A room node silent this long is dead and its slots move [default: 3s].
    #[arg(long, env = "PARTYLINE_COORDINATOR_DEAD_AFTER", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub dead_after: Option<Duration>,
    /// Leader lease: a standby takes over this long after the leader dies [default: 3s].
    #[arg(long, env = "PARTYLINE_COORDINATOR_LEASE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// Give a joining node its share of slots at once; with false it gets
    /// slots only on `partyline admin rebalance` [default: true].
    #[arg(long, env = "PARTYLINE_COORDINATOR_REBALANCE_ON_JOIN")]
    pub rebalance_on_join: Option<bool>,
}

impl CoordinatorSection {
    /// Flags/env over file.
    pub fn merge(self, file: CoordinatorSection) -> Self {
        Self {
            id: or(self.id, file.id),
            heartbeat_interval: or(self.heartbeat_interval, file.heartbeat_interval),
            dead_after: or(self.dead_after, file.dead_after),
            lease: or(self.lease, file.lease),
            rebalance_on_join: or(self.rebalance_on_join, file.rebalance_on_join),
        }
    }

    /// Typed coordinator config.
    pub fn build(&self) -> anyhow::Result<partyline_coordinator::CoordinatorConfig> {
        let mut config = partyline_coordinator::CoordinatorConfig::default();
        config.id = self.id.clone().unwrap_or_default();
        config.id = config.effective_id();
        set(&mut config.heartbeat_interval, self.heartbeat_interval);
        set(&mut config.dead_after, self.dead_after);
        set(&mut config.lease, self.lease);
        set(&mut config.rebalance_on_join, self.rebalance_on_join);
        config.validate()?;
        Ok(config)
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let file: FileConfig = toml::from_str(
            "[gateway]\nlisten = \"127.0.0.1:7000\"\nping_interval = \"5s\"\n[room_node]\nidle_timeout = \"2m\"\n",
        )
        .unwrap();
        let (gateway, room_node) = (file.gateway, file.room_node);
        let flags = GatewaySection {
            ping_interval: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        let gateway = flags.merge(gateway);
        assert_eq!(gateway.listen(), "127.0.0.1:7000".parse().unwrap());
        assert_eq!(gateway.ping_interval, Some(Duration::from_secs(3)));
        let room = RoomNodeSection::default()
            .merge(room_node)
            .build(partyline_proto::NodeId::new("n"))
            .unwrap();
        assert_eq!(room.idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<FileConfig>("[gateway]\nlisen = \"x\"\n").is_err());
        assert!(toml::from_str::<FileConfig>("[gateway]\nping_interval = \"soon\"\n").is_err());
        let bad = GatewaySection {
            session_queue: Some(0),
            ..Default::default()
        };
        assert!(bad.build("g".into()).is_err());
    }

    #[test]
    fn room_modes_come_from_the_file_and_flags() {
        let file: FileConfig = toml::from_str(
            "[room_node.modes]\n\"doc-\" = \"history\"\n\"cursor-\" = \"ephemeral\"\n",
        )
        .unwrap();
        let flags = RoomNodeSection {
            room_mode: vec!["doc-=snapshot".into(), "doc-big-=history".into()],
            ..Default::default()
        };
        let config = flags
            .merge(file.room_node)
            .build(partyline_proto::NodeId::new("n"))
            .unwrap();
        use partyline_room_node::RoomMode;
        assert_eq!(config.mode_of("doc-1"), RoomMode::Snapshot, "the flag wins");
        assert_eq!(
            config.mode_of("doc-big-1"),
            RoomMode::History,
            "longest prefix"
        );
        assert_eq!(config.mode_of("cursor-1"), RoomMode::Ephemeral);
        assert_eq!(config.mode_of("other"), RoomMode::Snapshot);
        let bad = RoomNodeSection {
            room_mode: vec!["doc-=forever".into()],
            ..Default::default()
        };
        assert!(bad.build(partyline_proto::NodeId::new("n")).is_err());
    }

    #[test]
    fn cluster_sections_parse_merge_and_check() {
        let file: FileConfig = toml::from_str(
            "[cluster]\nnats = \"nats://10.0.0.1:4222\"\n[node]\nnode_id = \"n7\"\nstore = \"file:///srv/rooms\"\ndrain_timeout = \"45s\"\n[coordinator]\ndead_after = \"5s\"\nrebalance_on_join = false\n",
        )
        .unwrap();
        let cluster = ClusterSection {
            name: Some("blue".into()),
            ..Default::default()
        }
        .merge(file.cluster)
        .build()
        .unwrap();
        assert_eq!(cluster.nats_url, "nats://10.0.0.1:4222");
        assert_eq!(cluster.cluster, "blue");
        let node = NodeSection::default().merge(file.node);
        assert_eq!(node.node_id(), "n7");
        assert_eq!(node.store_dir().unwrap(), PathBuf::from("/srv/rooms"));
        assert_eq!(node.drain_timeout, Some(Duration::from_secs(45)));
        assert_eq!(
            node.advertise("0.0.0.0:7001".parse().unwrap()),
            format!("http://{}:7001", host_name())
        );
        assert_eq!(
            node.advertise("127.0.0.1:7001".parse().unwrap()),
            "http://127.0.0.1:7001"
        );
        let coordinator = CoordinatorSection::default()
            .merge(file.coordinator)
            .build()
            .unwrap();
        assert_eq!(coordinator.dead_after, Duration::from_secs(5));
        assert!(!coordinator.rebalance_on_join);
        assert!(!coordinator.id.is_empty(), "a generated id");

        let s3 = NodeSection {
            store: Some("s3://bucket/rooms".into()),
            ..Default::default()
        };
        assert!(s3.store_dir().is_err(), "only file:// stores for now");
        let too_fast = CoordinatorSection {
            dead_after: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        assert!(too_fast.build().is_err(), "dead_after below the heartbeat");
    }
}
