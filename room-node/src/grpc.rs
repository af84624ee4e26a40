//! The room node's gRPC server: HTTP/2 (cleartext) connections from
//! gateways and `partyline admin`, served by hyper with tonic's routes.
//!
//! Served here rather than by `tonic::transport::Server` so that hyper's
//! per-stream tasks are spawned through [`partyline_proto::rt::Executor`]
//! (tonic's server always spawns them plainly, and each response message
//! then wakes a second worker thread), and so every accepted socket gets
//! TCP_NODELAY (tonic's setting does not reach sockets from a listener we
//! pass in).

use std::io;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use partyline_proto::rt::{self, Executor};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// Serves `routes` on `listener` until `shutdown`; then stops accepting,
/// asks every connection to finish (GOAWAY: open streams run to their end)
/// and returns once all have closed.
pub async fn serve(listener: TcpListener, routes: Routes, shutdown: CancellationToken) {
    let mut builder = hyper::server::conn::http2::Builder::new(Executor);
    builder
        .timer(TokioTimer::new())
        // A gateway opens one stream per room it serves from this node over
        // one connection; hyper's default would stall the 201st room.
        .max_concurrent_streams(None);
    let graceful = GracefulShutdown::new();
    while let Some((stream, _)) = rt::accept(&listener, &shutdown).await {
        let connection = graceful.watch(builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(routes.clone()),
        ));
        rt::spawn(async move {
            if let Err(error) = connection.await {
                log_connection_error(&error);
            }
        });
    }
    // Refuse new connections at once rather than leave them hanging
    // while the open ones finish.
    drop(listener);
    graceful.shutdown().await;
}

fn log_connection_error(error: &hyper::Error) {
    // A gateway that goes away mid-stream is routine; say it quietly.
    if error.is_closed() || error.is_incomplete_message() || io_error(error).is_some() {
        tracing::debug!(%error, "gRPC connection ended");
    } else {
        tracing::info!(%error, "gRPC connection failed");
    }
}

fn io_error(error: &hyper::Error) -> Option<&io::Error> {
    std::error::Error::source(error)?.downcast_ref::<io::Error>()
}
