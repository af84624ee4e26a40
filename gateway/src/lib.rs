//! Partyline gateway: the stateless WebSocket edge.
//!
//! Owns the HTTP server (`server`), the WebSocket handshake (`upgrade`)
//! and sessions (`session`, writing through `client_socket`, handing their
//! room what `messages` defines), URL → room parsing ([`path`]),
//! y-partykit chunk reassembly ([`batch`]), routing rooms to their owner
//! with the slot map ([`Router`]) and the one-stream-per-room upstreams to
//! room nodes (`upstream`); client authorization ([`auth`]), abuse limits
//! (`limits`), the HTTP API for backends (`http_api`, calling room nodes
//! through [`RoomApi`]) and its metrics (`telemetry`). It holds no
//! document state and never touches storage: everything it knows can be
//! rebuilt from the slot map and the room nodes; the HTTP API's reads and
//! writes are done by the room's owner.
//!
//! [`run`] serves until the shutdown token fires, then closes every client
//! socket with 1001 and waits for the session tasks to finish.

// Public for the binary (`src/`) and the fuzz targets (`fuzz/`); the rest
// is the gateway's own, with the few items the binary needs re-exported.
pub mod auth;
pub mod batch;
pub mod config;
pub mod path;

mod client_addr;
mod client_socket;
mod http_api;
mod limits;
mod messages;
pub mod origins;
mod room_api;
mod router;
mod server;
mod session;
mod telemetry;
mod upgrade;
mod upstream;

#[cfg(test)]
mod fuzz_tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use partyline_proto::link::LinkAuth;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::GatewayConfig;
pub use limits::LimitsConfig;
pub use room_api::{RoomApi, RoomApiError};
pub use router::{Router, SlotMapWatch};

use messages::SessionGrant;
use upstream::Upstreams;

/// State shared by every request and session of a gateway.
pub struct Shared {
    config: Arc<GatewayConfig>,
    upstreams: Upstreams,
    sessions: TaskTracker,
    cancel: CancellationToken,
    next_session_id: AtomicU64,
    /// One permit per open client socket (`max_connections`).
    connections: Arc<Semaphore>,
    /// The HTTP API (`/v1/…`, requests that are not upgrades).
    api: axum::Router,
    /// Abuse limits and their refusal counts.
    limits: Arc<limits::Limits>,
    /// For `/readyz`: a gateway is ready once it has a slot map.
    router: router::Router,
}

impl Shared {
    fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Gateway failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The server could not run.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, routing
/// rooms with the maps `slot_map` delivers and reaching room nodes with
/// `link`'s secret.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    slot_map: SlotMapWatch,
    link: LinkAuth,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    run_on(vec![listener], config, slot_map, link, shutdown).await
}

/// [`run`] on several listeners at once (e.g. `127.0.0.1` and `::1`, so
/// `localhost` works whichever address a client resolves it to).
pub async fn run_on(
    listeners: Vec<TcpListener>,
    config: GatewayConfig,
    slot_map: SlotMapWatch,
    link: LinkAuth,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let config_connections = config.max_connections;
    let config_limits = config.limits;
    let config = Arc::new(config);
    let tracker = TaskTracker::new();
    telemetry::observe_epoch(slot_map.clone());
    // Instruments made now, not on the first client (their memory belongs
    // to the process, not to whoever connects first).
    telemetry::metrics();
    let router = router::Router::new(slot_map, link);
    let api = http_api::router(
        room_api::RoomApi::new(router.clone(), config.api_timeout),
        config.api_key.clone(),
        config.max_message_bytes,
    )
    .layer(config.allowed_origins.clone().unwrap_or_default().cors());
    let shared = Arc::new(Shared {
        upstreams: Upstreams::new(
            router.clone(),
            config.clone(),
            tracker.clone(),
            shutdown.clone(),
        ),
        router,
        config,
        sessions: tracker.clone(),
        cancel: shutdown.clone(),
        next_session_id: AtomicU64::new(1),
        connections: Arc::new(Semaphore::new(config_connections)),
        api,
        limits: limits::Limits::new(config_limits),
    });
    let app = axum::Router::new().fallback(handle).with_state(shared);
    futures_util::future::join_all(
        listeners.into_iter().map(|listener| {
            server::serve(listener, app.clone(), shutdown.clone(), tracker.clone())
        }),
    )
    .await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// WebSocket upgrades are rooms, whatever the path; other requests to
/// `/v1/…` are the HTTP API.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let plain_http = !upgrade::is_upgrade(request.headers());
    match request.uri().path() {
        // Load balancer probes on the client port.
        "/healthz" if plain_http => return (StatusCode::OK, "ok\n").into_response(),
        "/readyz" if plain_http => {
            return if shared.router.has_map() {
                (StatusCode::OK, "ready\n").into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no slot map yet\n",
                )
                    .into_response()
            };
        }
        _ => {}
    }
    // Before anything else reads the request: a page of another origin gets
    // nothing from the API and no socket.
    if let Some(origin) = shared
        .config
        .allowed_origins
        .as_ref()
        .and_then(|allowed| allowed.refused(request.headers()))
    {
        telemetry::refuse("origin");
        tracing::info!(origin = ?origin, path = request.uri().path(), "refused request from an origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if request.uri().path().starts_with("/v1/") && plain_http {
        let mut api = shared.api.clone();
        return tower_service::Service::call(&mut api, request)
            .await
            .unwrap_or_else(|never| match never {});
    }
    open_room(shared, request).await
}

/// Validates the room, authorizes the client, then upgrades.
async fn open_room(shared: Arc<Shared>, mut request: Request) -> Response {
    let uri = request.uri().clone();
    let room_path = match path::parse(uri.path()) {
        Ok(room_path) => room_path,
        Err(error) => {
            telemetry::refuse("bad_room_name");
            tracing::info!(path = uri.path(), %error, "refused bad room name");
            return (StatusCode::BAD_REQUEST, format!("bad room name: {error}\n")).into_response();
        }
    };
    // Before anything reads the query (auth, the webhook): a client must not
    // make the gateway parse, hash or forward an unbounded one.
    if let Some(query) = uri
        .query()
        .filter(|q| q.len() > shared.config.max_query_bytes)
    {
        telemetry::refuse("query_too_long");
        tracing::info!(room = %room_path.room, bytes = query.len(), "refused query string over max_query_bytes");
        return (
            StatusCode::URI_TOO_LONG,
            format!(
                "query string of {} bytes; the limit is {}\n",
                query.len(),
                shared.config.max_query_bytes
            ),
        )
            .into_response();
    }
    let upgrade = match upgrade::Upgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal.into_response(),
    };
    let client_ip = request.extensions().get::<server::PeerAddr>().map(|peer| {
        client_addr::client_ip(
            peer.0.ip(),
            request.headers(),
            &shared.config.trusted_proxies,
        )
    });
    // Per-address limits come before anything that costs (auth may ask the
    // app's webhook).
    let admitted = match client_ip {
        Some(ip) => match shared.limits.admit(ip) {
            Ok(admitted) => Some(admitted),
            Err(refused) => {
                telemetry::refuse(match refused {
                    limits::Refused::ConnectRate => "connect_rate",
                    limits::Refused::Sockets => "sockets_per_ip",
                });
                let refusals = &shared.limits.refused;
                tracing::info!(
                    room = %room_path.room,
                    client = %ip,
                    %refused,
                    connect_rate_total = refusals.connect_rate.load(std::sync::atomic::Ordering::Relaxed),
                    sockets_total = refusals.sockets.load(std::sync::atomic::Ordering::Relaxed),
                    "refused connection: per-address limit"
                );
                let retry = shared.limits.retry_after().as_secs().to_string();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry)],
                    format!("{refused}\n"),
                )
                    .into_response();
            }
        },
        None => None,
    };
    let headers = request.headers();
    // Admission control: past the limit, refuse before the upgrade so the
    // client's reconnect backoff spreads the load instead of the server
    // holding sockets it cannot serve.
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        telemetry::refuse("max_connections");
        tracing::info!(room = %room_path.room, "refused connection: gateway at max_connections");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "gateway at its connection limit; retry later\n",
        )
            .into_response();
    };
    let connect = auth::ConnectRequest {
        room: room_path.room.as_str(),
        party: room_path.party.as_deref(),
        path: uri.path(),
        query: uri.query(),
        headers,
        ip: client_ip,
    };
    let access = match shared.config.auth.authorize(&connect).await {
        Ok(access) => access,
        Err(refusal) => {
            telemetry::refuse(refusal.reason());
            tracing::info!(room = %room_path.room, %refusal, "refused connection");
            drop(permit);
            return (refusal.status(), format!("{refusal}\n")).into_response();
        }
    };
    let grant = SessionGrant {
        identity: access.identity,
        read_only: access.read_only,
        record: shared.config.auth.record(&connect).map(Arc::new),
    };
    // A token sent as a subprotocol must be echoed back as the chosen one.
    let upgrade = match auth::protocol_token(headers) {
        Some(token) if shared.config.auth.requires_token() => upgrade.protocol(&token),
        _ => upgrade,
    };
    let (response, upgrading) = upgrade.accept();
    let sessions = shared.sessions.clone();
    sessions.spawn(async move {
        match upgrading.socket().await {
            Ok((stream, read_buf)) => {
                session::serve(
                    stream,
                    read_buf,
                    room_path.room,
                    grant,
                    access.expires_at,
                    shared,
                )
                .await;
            }
            Err(error) => tracing::debug!(room = %room_path.room, %error, "upgrade failed"),
        }
        drop(permit);
        drop(admitted);
    });
    response
}
