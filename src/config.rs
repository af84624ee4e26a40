//! `partyline` configuration: TOML file (`--config`) ← env
//! (`PARTYLINE_<SECTION>_<KEY>`) ← flags, later wins. The TOML sections
//! mirror the env names: `[gateway]`, `[room_node]`, `[node]` (how a room
//! node joins a cluster), `[cluster]` (NATS), `[link]` (the gRPC link's
//! secret), `[coordinator]`, `[auth]`, `[webhooks]` and `[telemetry]`.
//! Unknown keys are an error, durations are written like `"30s"` or `"2m"`.
//!
//! Each section is its role's own settings type (`GatewaySettings`,
//! `RoomNodeSettings`, `CoordinatorConfig`, …: serde with
//! `default, deny_unknown_fields`, defaults as named consts, `validate()`
//! in the role's crate). The file is parsed into those types (toml names
//! the line of a bad value); clap reads flags and env into [`flags`], whose
//! fields carry the file's key names; [`layer`] lays what was given over
//! the file's section, generically, through serde. URLs are checked here,
//! where the flag a message should name is known.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::json;

pub(crate) mod effective;
pub(crate) mod flags;
#[cfg(test)]
mod tests;

pub(crate) use crate::telemetry::TelemetrySettings;
pub(crate) use partyline_coordinator::CoordinatorConfig;
pub(crate) use partyline_gateway::config::{AuthSettings, GatewaySettings};
pub(crate) use partyline_room_node::config::{NodeSettings, RoomNodeSettings};
pub(crate) use partyline_room_node::hooks::HooksConfig;

/// Schemes of an HTTP endpoint setting (webhooks, JWKS, OTLP, `--advertise`).
pub(crate) const HTTP_SCHEMES: &[&str] = &["http", "https"];
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
pub(crate) fn check_url(
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

/// The config file: every section, defaults filled in for what it omits.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// `[gateway]`.
    pub gateway: GatewaySettings,
    /// `[room_node]`.
    pub room_node: RoomNodeSettings,
    /// `[node]`: how a room node joins a cluster.
    pub node: NodeSettings,
    /// `[cluster]`: NATS.
    pub cluster: ClusterSettings,
    /// `[link]`: the gRPC link's secret.
    pub link: LinkSettings,
    /// `[coordinator]`.
    pub coordinator: CoordinatorConfig,
    /// `[auth]`: client authorization.
    pub auth: AuthSettings,
    /// `[webhooks]`: callbacks to the app.
    pub webhooks: HooksConfig,
    /// `[telemetry]`: metrics, health and traces.
    pub telemetry: TelemetrySettings,
}

impl FileConfig {
    /// Reads `path`, or defaults when there is none.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
    }
}

/// `section` (from the file, defaults filled in) with every setting
/// `flags` holds laid over it: the one merge of every section. `flags`
/// serializes with the file's key names, `None` for what neither a flag
/// nor its env var gave; clap has parsed and checked each value already.
pub(crate) fn layer<T: Serialize + DeserializeOwned>(
    section: T,
    flags: &impl Serialize,
) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(section).context("encode a config section")?;
    let serde_json::Value::Object(given) = serde_json::to_value(flags).context("encode flags")?
    else {
        anyhow::bail!("flags are not a table");
    };
    let table = merged
        .as_object_mut()
        .context("a config section is not a table")?;
    table.extend(given.into_iter().filter(|(_, value)| !value.is_null()));
    serde_json::from_value(merged).context("apply flags to the config")
}

/// Checks a `--redis` URL (room nodes and `partyline admin`).
pub(crate) fn check_redis(url: &str) -> anyhow::Result<()> {
    let parsed = check_url("--redis", url, REDIS_SCHEMES, false)?;
    if matches!(parsed.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
        check_url("--redis", url, REDIS_SCHEMES, true)?;
    }
    Ok(())
}

/// Checks a `--store` URL (room nodes and `partyline admin`); the store
/// itself says later whether it can reach the place.
pub(crate) fn check_store(url: &str) -> anyhow::Result<()> {
    check_url("--store", url, STORE_SCHEMES, false).map(drop)
}

/// The machine's host name, the default node id: stable across restarts
/// and unique per container. Linux's `/proc/sys/kernel/hostname`, else the
/// `HOSTNAME` (Unix shells) or `COMPUTERNAME` (Windows) variable.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `[cluster]`: where the cluster's NATS is.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterSettings {
    /// NATS server URL(s), comma-separated.
    pub nats: Option<String>,
    /// Namespace of the cluster's NATS buckets and subjects.
    pub name: Option<String>,
}

impl ClusterSettings {
    /// Typed options; each `--nats` entry is checked as async-nats will
    /// read it (`host:port` alone means `nats://host:port`).
    pub(crate) fn build(&self) -> anyhow::Result<partyline_coordinator::cluster::ClusterOptions> {
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
        if let Some(nats) = &self.nats {
            options.nats_url = nats.clone();
        }
        if let Some(name) = &self.name {
            options.cluster = name.clone();
        }
        Ok(options)
    }
}

/// `[link]`: the cluster's link secret (the gateway → room node gRPC
/// link, and room nodes' heartbeat proofs).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LinkSettings {
    /// File of the shared link secret, one per line.
    pub grpc_secret_file: Option<PathBuf>,
    /// `--insecure-no-grpc-secret` (a flag only).
    #[serde(skip)]
    pub insecure_no_grpc_secret: bool,
}

impl LinkSettings {
    /// The file's `[link]` under `--grpc-secret-file` and `--insecure-no-grpc-secret`.
    pub(crate) fn layered(self, flags: &flags::LinkFlags) -> anyhow::Result<Self> {
        Ok(Self {
            insecure_no_grpc_secret: flags.insecure_no_grpc_secret,
            ..layer(self, flags)?
        })
    }

    /// The link's authentication: the secret file, watched until
    /// `shutdown`, or none when the operator said so.
    pub(crate) async fn build(
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
    pub(crate) fn effective(&self) -> anyhow::Result<serde_json::Value> {
        self.check()?;
        Ok(json!({
            "grpc_secret_file": self.grpc_secret_file,
            "insecure_no_grpc_secret": self.insecure_no_grpc_secret,
        }))
    }

    /// Exactly one of a secret file and `--insecure-no-grpc-secret`.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
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

/// The webhooks' URLs checked, naming the flag of a bad one, and their
/// settings validated.
pub(crate) fn check_webhooks(config: &HooksConfig) -> anyhow::Result<()> {
    for (flag, url) in [
        ("--callback-url", &config.callback_url),
        ("--load-url", &config.load_url),
        ("--events-url", &config.events_url),
    ] {
        if let Some(url) = url {
            check_url(flag, url, HTTP_SCHEMES, true)?;
        }
    }
    Ok(config.validate()?)
}

/// How long a stopping node waits for its last lifecycle events (its
/// rooms' `room.unloaded`) to be delivered.
const EVENTS_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Gives the events still queued [`EVENTS_FLUSH`] to go out.
pub(crate) async fn flush_events(
    events: Option<std::sync::Arc<partyline_room_node::events::Events>>,
) {
    if let Some(events) = events {
        events.flush(EVENTS_FLUSH).await;
    }
}

/// The room node's hooks, checked; `None` when no webhook URL is set.
pub(crate) fn hooks(
    config: &HooksConfig,
) -> anyhow::Result<Option<partyline_room_node::hooks::Hooks>> {
    check_webhooks(config)?;
    if !config.any() {
        return Ok(None);
    }
    if config.callback_url.is_some() && config.secret.is_none() {
        tracing::warn!(
            "state callbacks are unsigned: set --webhook-secret so the app can verify them"
        );
    }
    Ok(Some(partyline_room_node::hooks::Hooks::new(
        config.clone(),
    )?))
}

/// Checks the auth URLs, naming the flag of a bad one, and that a mode
/// was chosen unless `allow_none` (dev, or `--insecure-no-auth`).
pub(crate) fn check_auth(auth: &AuthSettings, allow_none: bool) -> anyhow::Result<()> {
    for (flag, url) in [
        ("--jwks-url", &auth.jwks_url),
        ("--webhook-url", &auth.webhook_url),
    ] {
        if let Some(url) = url {
            check_url(flag, url, HTTP_SCHEMES, true)?;
        }
    }
    Ok(auth.validate(allow_none)?)
}

/// The authorizer; `none` only when `allow_none` (dev, or the
/// operator said `--insecure-no-auth`).
pub(crate) async fn authorizer(
    auth: &AuthSettings,
    allow_none: bool,
    signer: Option<partyline_proto::webhook::WebhookSigner>,
) -> anyhow::Result<partyline_gateway::auth::Authorizer> {
    use partyline_gateway::auth::{Authorizer, JwtAuthorizer};
    check_auth(auth, allow_none)?;
    match auth.mode.as_deref() {
        None | Some("none") => {
            tracing::warn!("auth mode none: every client may open and edit every room");
            Ok(Authorizer::None)
        }
        Some("jwt") => {
            let mut jwt = match (&auth.jwt_secret, &auth.jwt_public_key, &auth.jwks_url) {
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
            if let Some(issuer) = &auth.jwt_issuer {
                jwt = jwt.issuer(issuer);
            }
            if let Some(audience) = &auth.jwt_audience {
                jwt = jwt.audience(audience);
            }
            Ok(Authorizer::Jwt(Box::new(jwt)))
        }
        Some("webhook") => {
            let url = auth
                .webhook_url
                .as_deref()
                .context("--auth-mode webhook needs --webhook-url")?;
            if signer.is_none() {
                tracing::warn!("auth webhook requests are unsigned: set --webhook-secret so the app can verify them");
            }
            Ok(Authorizer::Webhook(std::sync::Arc::new(
                partyline_gateway::auth::WebhookAuthorizer::new(
                    partyline_gateway::auth::WebhookSettings {
                        url: url.to_owned(),
                        timeout: auth.webhook_timeout,
                        ttl: auth.cache_ttl,
                        max_entries: auth.cache_entries.max(1),
                        forward_headers: auth.forward_headers()?,
                        signer,
                    },
                )?,
            )))
        }
        Some(other) => anyhow::bail!("unknown auth mode {other:?}: none, jwt or webhook"),
    }
}

/// `--print-effective-config`'s `auth`.
pub(crate) fn effective_auth(auth: &AuthSettings) -> serde_json::Value {
    let mut value = json!(auth);
    value["mode"] = auth.mode().into();
    value["jwt_secret"] = effective::secret(auth.jwt_secret.as_deref());
    value
}
