//! The WebSocket opening handshake (RFC 6455 §4.2), answered by the
//! gateway itself so it gets the client's TCP socket back from hyper:
//! room frames are then written into that socket directly
//! ([`crate::client_socket`]) instead of through a per-socket task.

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request that asked for a WebSocket, ready to be answered with 101.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
    protocol: Option<HeaderValue>,
}

/// Why a request is not a WebSocket upgrade this gateway can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotWebSocket {
    /// Missing or wrong `Connection`/`Upgrade`/method: a plain HTTP request.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("unsupported WebSocket version (13 is supported)")]
    Version,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    Key,
    /// hyper gave no upgrade handle (the connection cannot be upgraded).
    #[error("connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotUpgrade | Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::Key | Self::NotUpgradable => StatusCode::BAD_REQUEST,
        };
        let body = format!(
            "{self}: this is a Yjs WebSocket endpoint; connect with a y-websocket or y-partykit provider\n"
        );
        let mut response = (status, body).into_response();
        if status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }
}

/// Whether a header holds `token` among its comma-separated values.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Whether a request asks for a WebSocket (`Connection: upgrade` and
/// `Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
}

impl Upgrade {
    /// Checks the handshake headers and takes hyper's upgrade handle.
    pub(crate) fn from_request<B>(request: &mut Request<B>) -> Result<Self, NotWebSocket> {
        let headers = request.headers();
        if request.method() != Method::GET || !is_upgrade(headers) {
            return Err(NotWebSocket::NotUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotWebSocket::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotWebSocket::Key)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| NotWebSocket::Key)?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(NotWebSocket::NotUpgradable)?;
        Ok(Self {
            on_upgrade,
            accept,
            protocol: None,
        })
    }

    /// Answers with this subprotocol (a token sent as one must be echoed).
    pub(crate) fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = HeaderValue::from_str(protocol).ok();
        self
    }

    /// The 101 response, and the handshake's completion to await after it
    /// is sent.
    pub(crate) fn accept(self) -> (Response, Upgrading) {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        (response, Upgrading(self.on_upgrade))
    }
}

/// An accepted upgrade whose 101 is on its way.
pub(crate) struct Upgrading(OnUpgrade);

/// The upgrade did not give back a TCP socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeFailed {
    /// The client went away before the upgrade finished.
    #[error("upgrade failed: {0}")]
    Hyper(#[from] hyper::Error),
    /// The connection was not served over a plain TCP socket by
    /// [`crate::server`].
    #[error("upgraded connection is not a TCP socket")]
    NotTcp,
}

impl Upgrading {
    /// The client's socket and any bytes hyper read past the request
    /// (copied out: hyper's `Bytes` would pin its whole read buffer for the
    /// life of the session).
    pub(crate) async fn socket(self) -> Result<(TcpStream, Vec<u8>), UpgradeFailed> {
        let upgraded = self.0.await?;
        let parts = upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map_err(|_| UpgradeFailed::NotTcp)?;
        Ok((parts.io.into_inner(), parts.read_buf.to_vec()))
    }
}
