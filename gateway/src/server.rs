//! The gateway's HTTP/1.1 server: accepts TCP connections and serves each
//! with hyper, upgrades on. The gateway runs its own accept loop (not
//! `axum::serve`) so an upgraded connection is still the plain
//! `TcpStream` underneath — [`crate::upgrade`] takes it back for direct
//! writes — and every request knows its peer address ([`PeerAddr`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

/// Serves `app` on `listener` until `shutdown`; connections are spawned on
/// `tracker` and finish their current request gracefully on shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    while let Some((stream, peer)) = partyline_proto::rt::accept(&listener, &shutdown).await {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                let mut app = app.clone();
                async move {
                    Ok::<_, Infallible>(app.call(request).await.unwrap_or_else(|e| match e {}))
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
}
