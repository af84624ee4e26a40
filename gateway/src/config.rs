//! Gateway settings, every limit with its default: [`GatewaySettings`]
//! and [`AuthSettings`] are the `[gateway]` and `[auth]` sections of the
//! config file (flags and env layered over them by the binary), checked by
//! their `validate`; [`GatewayConfig`] is what [`crate::run`] takes.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
/// Default of [`GatewaySettings::listen`]: PartyKit's default port.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1999);
/// Default for [`AuthSettings::webhook_timeout`].
pub const DEFAULT_AUTH_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`AuthSettings::cache_ttl`].
pub const DEFAULT_AUTH_CACHE_TTL: Duration = Duration::from_secs(30);
/// Default for [`AuthSettings::cache_entries`].
pub const DEFAULT_AUTH_CACHE_ENTRIES: usize = 10_000;

/// Settings that cannot work together; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `Err(ConfigError(message))` unless `holds`.
fn ensure(holds: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError(message()))
    }
}

/// `[gateway]`: a gateway's settings as written in the config file; each
/// key is also a flag and an env var.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// `None`: [`DEFAULT_LISTEN`] (`partyline dev` then listens on both loopbacks).
    pub listen: Option<SocketAddr>,
    /// Largest client message (one frame or a joined y-pk-batch) in bytes;
    /// larger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// A y-pk-batch (y-partykit's chunked message) not finished this long
    /// after its start marker closes the socket with 1008.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// Longest query string of a room URL in bytes; longer gets HTTP 414
    /// before the upgrade and before any auth webhook call.
    pub max_query_bytes: usize,
    /// How often client sockets are pinged.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A socket silent this long (no frame, no pong) is closed as dead.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// Frames queued toward one client before it is closed as too slow (1008).
    pub session_queue: usize,
    /// Bytes queued toward one client, besides one sync answer (the
    /// document it asked for), before it is closed as too slow (1008); at
    /// least --max-message-bytes.
    pub session_queue_bytes: usize,
    /// How long a room's upstream stream outlives its last local client.
    #[serde(with = "humantime_serde")]
    pub upstream_linger: Duration,
    /// How long a client waits for an unreachable room owner before 1013.
    #[serde(with = "humantime_serde")]
    pub owner_unreachable_timeout: Duration,
    /// Room streams that fail this many times in a row, each within 10 s of
    /// opening, close the room's clients with 1011 "room cannot be served"
    /// instead of re-opening it again (re-opens back off 100 ms → 2 s).
    pub room_reopen_attempts: u32,
    /// WebSocket read buffer per socket in bytes.
    pub ws_read_buffer_bytes: usize,
    /// Client sockets open at once; more get HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// After a new slot map moves a room, how long to wait for the old owner
    /// to release it before re-opening it on the new owner anyway.
    #[serde(with = "humantime_serde")]
    pub release_grace: Duration,
    /// Connection attempts per client address per second, refused with HTTP
    /// 429 past it; 0 turns it off (behind a load balancer every client
    /// shares its address).
    pub max_connects_per_ip: u32,
    /// Open sockets per client address, refused with HTTP 429 past it; 0
    /// turns it off.
    pub max_sockets_per_ip: u32,
    /// Messages per second one session may send on average; past it the
    /// session is closed with 1008; 0 turns it off.
    pub max_messages_per_second: u32,
    /// …and at once.
    pub message_burst: u32,
    /// Bearer key of the HTTP API under /v1/ (separate from client tokens)
    ///.
    pub api_key: Option<String>,
    /// How long an HTTP API call waits for the room's owner.
    #[serde(with = "humantime_serde")]
    pub api_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (CIDRs or
    /// addresses); from any other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Origins whose pages may connect and call the API (`*`,
    /// `https://app.example.com`, `https://*.example.com`); `None`: any.
    pub allowed_origins: Option<Vec<String>>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let limits = crate::limits::LimitsConfig::default();
        Self {
            listen: None,
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
            max_connects_per_ip: limits.max_connects_per_ip,
            max_sockets_per_ip: limits.max_sockets_per_ip,
            max_messages_per_second: limits.max_messages_per_second,
            message_burst: limits.message_burst,
            api_key: None,
            api_timeout: DEFAULT_API_TIMEOUT,
            trusted_proxies: Vec::new(),
            allowed_origins: None,
        }
    }
}

impl GatewaySettings {
    /// The listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }

    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.room_reopen_attempts >= 1, || {
            "gateway.room_reopen_attempts (--room-reopen-attempts) must be at least 1".into()
        })?;
        if let Some(key) = &self.api_key {
            ensure(key.len() >= 16, || {
                "gateway.api_key must be at least 16 characters".into()
            })?;
        }
        ensure(self.session_queue > 0, || {
            "gateway.session_queue must be at least 1".into()
        })?;
        ensure(self.session_queue_bytes >= 64 * 1024, || {
            "gateway.session_queue_bytes (--session-queue-bytes) must be at least 65536".into()
        })?;
        ensure(self.max_message_bytes > 0, || {
            "gateway.max_message_bytes must be at least 1".into()
        })?;
        ensure(self.session_queue_bytes >= self.max_message_bytes, || {
            format!(
                "gateway.session_queue_bytes (--session-queue-bytes) must be at least \
                 gateway.max_message_bytes ({}): an edit of the largest size must fit",
                self.max_message_bytes
            )
        })?;
        ensure(!self.batch_timeout.is_zero(), || {
            "gateway.batch_timeout must be positive".into()
        })?;
        ensure(self.max_query_bytes > 0, || {
            "gateway.max_query_bytes must be at least 1".into()
        })?;
        ensure(!self.ping_interval.is_zero(), || {
            "gateway.ping_interval must be positive".into()
        })?;
        ensure(self.dead_after > self.ping_interval, || {
            "gateway.dead_after must be longer than gateway.ping_interval".into()
        })
    }

    /// The gateway's config with this id, checked (`auth`, `max_session`
    /// and the rest of the wiring are the caller's).
    pub fn into_config(self, gateway_id: impl Into<String>) -> Result<GatewayConfig, ConfigError> {
        self.validate()?;
        let trusted_proxies =
            crate::client_addr::parse_trusted(&self.trusted_proxies).map_err(|e| {
                ConfigError(format!("gateway.trusted_proxies (--trusted-proxies): {e}"))
            })?;
        let allowed_origins = match &self.allowed_origins {
            Some(entries) => Some(
                crate::origins::AllowedOrigins::parse(entries)
                    .map_err(|e| ConfigError(format!("gateway.allowed_origins: {e}")))?,
            ),
            None => None,
        };
        let mut config = self.config(gateway_id.into());
        config.trusted_proxies = trusted_proxies;
        config.allowed_origins = allowed_origins;
        Ok(config)
    }

    /// The config, unchecked.
    fn config(self, gateway_id: String) -> GatewayConfig {
        GatewayConfig {
            gateway_id,
            max_message_bytes: self.max_message_bytes,
            batch_timeout: self.batch_timeout,
            max_query_bytes: self.max_query_bytes,
            ping_interval: self.ping_interval,
            dead_after: self.dead_after,
            session_queue: self.session_queue,
            session_queue_bytes: self.session_queue_bytes,
            upstream_linger: self.upstream_linger,
            owner_unreachable_timeout: self.owner_unreachable_timeout,
            room_reopen_attempts: self.room_reopen_attempts,
            ws_read_buffer_bytes: self.ws_read_buffer_bytes,
            max_connections: self.max_connections,
            release_grace: self.release_grace,
            limits: crate::limits::LimitsConfig {
                max_connects_per_ip: self.max_connects_per_ip,
                max_sockets_per_ip: self.max_sockets_per_ip,
                max_messages_per_second: self.max_messages_per_second,
                message_burst: self.message_burst,
            },
            api_key: self.api_key,
            api_timeout: self.api_timeout,
            trusted_proxies: Vec::new(),
            allowed_origins: None,
            auth: crate::auth::Authorizer::None,
            max_session: None,
            trace_frames: false,
            shutdown_close_code: partyline_proto::close::GOING_AWAY,
        }
    }
}

/// `[auth]`: how clients are authorized, as written in the config file.
/// [`crate::auth::Authorizer`] is built from it by the binary (a JWKS is
/// fetched, a key file read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `none`, `jwt` or `webhook`; `None` is `none`.
    pub mode: Option<String>,
    /// HS256 shared secret for `jwt`, at least 32 bytes (shorter ones, the
    /// empty one included, refuse to start).
    pub jwt_secret: Option<String>,
    /// PEM public key file for `jwt` (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// JWKS URL for `jwt` (the identity provider's keys; fetched again when a
    /// token names an unknown `kid`, so key rotation needs no restart).
    pub jwks_url: Option<String>,
    /// Required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    pub jwt_audience: Option<String>,
    /// The app's permission check for `webhook`: POSTed `{room, party,
    /// token, params, path, ip, headers}`, answers `200 {"access":
    /// "write"|"read", "user": {"id", "name"}, "expires_at"}`, 401 or 403.
    pub webhook_url: Option<String>,
    /// Request headers sent to the webhook (case-insensitive names).
    pub webhook_forward_headers: Vec<String>,
    /// How long the webhook may take; slower is refused (fail closed).
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// How long a webhook answer is reused for the same request.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Webhook answers kept at most.
    pub cache_entries: usize,
    /// Close sessions (1008) after this long, so a revoked grant stops
    /// working within it.
    #[serde(with = "humantime_serde")]
    pub max_session: Option<Duration>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: None,
            webhook_url: None,
            webhook_forward_headers: crate::auth::DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|name| name.to_string())
                .collect(),
            webhook_timeout: DEFAULT_AUTH_WEBHOOK_TIMEOUT,
            cache_ttl: DEFAULT_AUTH_CACHE_TTL,
            cache_entries: DEFAULT_AUTH_CACHE_ENTRIES,
            max_session: None,
        }
    }
}

impl AuthSettings {
    /// `webhook_forward_headers` as header names (lower-cased).
    pub fn forward_headers(&self) -> Result<Vec<axum::http::HeaderName>, ConfigError> {
        self.webhook_forward_headers
            .iter()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(|name| {
                axum::http::HeaderName::try_from(name.to_ascii_lowercase()).map_err(|_| {
                    ConfigError(format!(
                        "auth.webhook_forward_headers (--webhook-forward-headers): {name:?} is not a header name"
                    ))
                })
            })
            .collect()
    }

    /// The mode's name (`none` when unset).
    pub fn mode(&self) -> &str {
        self.mode.as_deref().unwrap_or("none")
    }

    /// Checks that a mode was chosen unless `allow_none` (`partyline dev`,
    /// or the operator said `--insecure-no-auth`).
    pub fn validate(&self, allow_none: bool) -> Result<(), ConfigError> {
        self.forward_headers()?;
        ensure(allow_none || self.mode() != "none", || {
            "no client authorization configured: set --auth-mode jwt (with --jwt-secret or \
             --jwt-public-key), or pass --insecure-no-auth to let anyone open any room"
                .into()
        })
    }
}

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
    /// Peers whose `X-Forwarded-For` is believed (the client's address for
    /// per-address limits and the auth webhook).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins whose pages may connect and call the API; `None`: any
    /// (`partyline gateway` warns at start).
    pub allowed_origins: Option<crate::origins::AllowedOrigins>,
    /// Close code for client sockets when the gateway shuts down: 1001 for
    /// `partyline dev`, 1012 (service restart: reconnect elsewhere) in a
    /// cluster.
    pub shutdown_close_code: u16,
}

impl GatewayConfig {
    /// Defaults for a gateway with this id ([`GatewaySettings::default`]).
    pub fn new(gateway_id: impl Into<String>) -> Self {
        GatewaySettings::default().config(gateway_id.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_limits_name_their_setting() {
        let config = GatewaySettings::default().into_config("g").unwrap();
        assert_eq!(config.ping_interval, DEFAULT_PING_INTERVAL);
        assert_eq!(
            config.limits.message_burst,
            crate::limits::DEFAULT_MESSAGE_BURST
        );
        let slow = GatewaySettings {
            dead_after: DEFAULT_PING_INTERVAL,
            ..Default::default()
        };
        let error = slow.into_config("g").unwrap_err().to_string();
        assert!(error.contains("gateway.dead_after"), "{error}");
        assert!(AuthSettings::default().validate(false).is_err());
        assert!(AuthSettings::default().validate(true).is_ok());
    }
}
