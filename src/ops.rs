//! The operations endpoint every serving role can expose (`--ops-listen`):
//! `GET /metrics` (Prometheus text), `GET /healthz` (the process answers)
//! and `GET /readyz` (the role's own readiness check: 200, or 503 with the
//! reason).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A role's readiness: `Ok` when it can do its job, else why not.
pub(crate) type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Wraps an async check as a [`Readiness`].
pub(crate) fn readiness<F, Fut>(check: F) -> Readiness
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// A room node's readiness ([`partyline_room_node::check_ready`]).
pub(crate) fn room_node_readiness(
    node_id: &partyline_proto::NodeId,
    storage: &partyline_room_node::storage::NodeStorage,
    slot_map: &partyline_room_node::SlotMapWatch,
) -> Readiness {
    let (node_id, storage, slot_map) = (node_id.clone(), storage.clone(), slot_map.clone());
    readiness(move || {
        let (node_id, storage, slot_map) = (node_id.clone(), storage.clone(), slot_map.clone());
        async move { partyline_room_node::check_ready(&node_id, &storage, &slot_map).await }
    })
}

struct Ops {
    registry: prometheus::Registry,
    ready: Readiness,
}

/// Binds `addr` and serves the endpoint until `shutdown`; prints the bound
/// address (for `:0`).
pub(crate) async fn start(
    addr: SocketAddr,
    registry: prometheus::Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind ops endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_check))
        .with_state(Arc::new(Ops { registry, ready }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "ops endpoint failed");
        }
    });
    println!("partyline ops listening on http://{bound}");
    tracing::info!(%bound, "ops endpoint (/metrics, /healthz, /readyz) listening");
    Ok(bound)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let mut text = String::new();
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_utf8(&ops.registry.gather(), &mut text) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn ready_check(State(ops): State<Arc<Ops>>) -> Response {
    match (ops.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}
