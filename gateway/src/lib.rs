//! Partyline gateway: the stateless WebSocket edge.
//!
//! Owns HTTP + WebSocket handling ([`session`]), URL → room parsing
//! ([`path`]), y-partykit chunk reassembly ([`batch`]), routing rooms to
//! their owner with the slot map ([`router`]) and the one-stream-per-room
//! upstreams to room nodes ([`upstream`]). It holds no document state and
//! never touches storage: everything it knows can be rebuilt from the slot
//! map and the room nodes.
//!
//! [`run`] serves until the shutdown token fires, then closes every client
//! socket with 1001 and waits for the session tasks to finish.

pub mod auth;
pub mod batch;
pub mod config;
pub mod outbox;
pub mod path;
pub mod room_api;
pub mod router;
pub mod session;
pub mod upstream;

#[cfg(test)]
mod fuzz_tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::GatewayConfig;
pub use router::SlotMapWatch;
use upstream::{SessionGrant, Upstreams};

/// State shared by every request and session of a gateway.
pub struct Shared {
    config: Arc<GatewayConfig>,
    upstreams: Upstreams,
    sessions: TaskTracker,
    cancel: CancellationToken,
    next_session_id: AtomicU64,
    /// One permit per open client socket (`max_connections`).
    connections: Arc<Semaphore>,
}

impl Shared {
    fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Gateway failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Accepting connections failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, routing
/// rooms with the maps `slot_map` delivers.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    slot_map: SlotMapWatch,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let config_connections = config.max_connections;
    let config = Arc::new(config);
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        upstreams: Upstreams::new(
            router::Router::new(slot_map),
            config.clone(),
            tracker.clone(),
            shutdown.clone(),
        ),
        config,
        sessions: tracker.clone(),
        cancel: shutdown.clone(),
        next_session_id: AtomicU64::new(1),
        connections: Arc::new(Semaphore::new(config_connections)),
    });
    let app = axum::Router::new().fallback(handle).with_state(shared);
    // Without TCP_NODELAY a small frame waits behind the client's delayed
    // ACK of the previous one: tens of milliseconds of fan-out latency.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a client socket");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    tracker.close();
    tracker.wait().await;
    Ok(result?)
}

/// Every path is a room path: validate the room, then upgrade.
async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let room_path = match path::parse(uri.path()) {
        Ok(room_path) => room_path,
        Err(error) => {
            tracing::info!(path = uri.path(), %error, "refused bad room name");
            return (StatusCode::BAD_REQUEST, format!("bad room name: {error}\n")).into_response();
        }
    };
    let Ok(upgrade) = upgrade else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this is a Yjs WebSocket endpoint; connect with a y-websocket or y-partykit provider\n",
        )
            .into_response();
    };
    // Admission control: past the limit, refuse before the upgrade so the
    // client's reconnect backoff spreads the load instead of the server
    // holding sockets it cannot serve.
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        tracing::info!(room = %room_path.room, "refused connection: gateway at max_connections");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "gateway at its connection limit; retry later\n",
        )
            .into_response();
    };
    let access = match shared
        .config
        .auth
        .authorize(
            room_path.room.as_str(),
            room_path.party.as_deref(),
            uri.query(),
            &headers,
        )
        .await
    {
        Ok(access) => access,
        Err(refusal) => {
            tracing::info!(room = %room_path.room, %refusal, "refused connection");
            drop(permit);
            return (refusal.status(), format!("{refusal}\n")).into_response();
        }
    };
    let grant = SessionGrant {
        identity: access.identity,
        read_only: access.read_only,
    };
    let config = &shared.config;
    let max = config.max_message_bytes;
    // A token sent as a subprotocol must be echoed back as the chosen one.
    let upgrade = match auth::protocol_token(&headers) {
        Some(token) if config.auth.requires_token() => upgrade.protocols([token]),
        _ => upgrade,
    };
    let shared = shared.clone();
    upgrade
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let sessions = shared.sessions.clone();
            sessions.track_future(async move {
                session::serve(socket, room_path.room, grant, shared).await;
                drop(permit);
            })
        })
}
