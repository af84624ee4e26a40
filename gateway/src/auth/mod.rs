//! Who may open a room, decided by the gateway before the WebSocket
//! upgrade. The token comes from the `token` query parameter (what
//! y-partykit's `params` and y-websocket's `params` send), an
//! `Authorization: Bearer` header, or the `Sec-WebSocket-Protocol` header.
//!
//! `jwt` verifies a signed token (HS256 with a shared secret; RS256, ES256
//! or EdDSA with a PEM public key or the keys of a JWKS URL, fetched again
//! when a token names an unknown `kid` so key rotation needs no restart;
//! `alg: none` and every other algorithm are refused) and reads a grant of
//! rooms from its `rooms` claim: exact names or prefix patterns ending in
//! `*`, each `"read"` or `"write"`; the exact name wins, then the longest
//! pattern. `none` lets every client write,
//! anonymously (only for `partyline dev` or with `--insecure-no-auth`).
//!
//! Beyond the signature a token must pass `exp` and `nbf` (both with
//! [`LEEWAY_SECS`] of clock skew), carry no `crit` header (we implement no
//! extension, so RFC 7515 §4.1.11 says refuse), and carry an `aud` only
//! when an audience is configured, and then that one: a token minted for
//! another service must not open rooms here.
//!
//! Decisions are made per connect. A grant may end: the session is closed
//! with 4401 at the JWT's `exp` (plus [`LEEWAY_SECS`]) or at the webhook
//! answer's `expires_at` ([`Access::expires_at`]); otherwise an open
//! session continues and the next connect is checked again.
//!
//! This module owns the decision's types ([`Authorizer`], [`Access`],
//! [`Refusal`]) and where a token is read from; `jwt` verifies tokens
//! (static keys and JWKS), `webhook` asks the app's backend and `cache`
//! keeps the webhook's answers. Nothing here touches a socket or a room:
//! the caller turns a [`Refusal`] into the HTTP answer.

mod cache;
mod jwt;
mod webhook;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;

pub use jwt::{JwtAuthorizer, LEEWAY_SECS, MIN_SECRET_BYTES};
pub use webhook::{
    WebhookAuthorizer, WebhookSettings, CONNECTION_ID_PARAM, DEFAULT_FORWARD_HEADERS,
};

/// How clients are authorized.
#[derive(Clone, Default)]
pub enum Authorizer {
    /// Everyone may write, anonymously.
    #[default]
    None,
    /// Signed tokens with a room grant.
    Jwt(Box<JwtAuthorizer>),
    /// The app's backend decides.
    Webhook(Arc<WebhookAuthorizer>),
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Jwt(jwt) => write!(f, "Jwt({:?})", jwt.algorithms()),
            Self::Webhook(hook) => write!(f, "Webhook({})", hook.url()),
        }
    }
}

/// A session's identity and rights, as the room node enforces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The token's `sub`, "" for anonymous.
    pub identity: String,
    /// The token's `name`, when given.
    pub name: Option<String>,
    /// Document updates are refused.
    pub read_only: bool,
    /// When the grant ends (the JWT's `exp` plus leeway, the webhook's
    /// `expires_at`): the session is closed with 4401 then.
    pub expires_at: Option<SystemTime>,
}

/// What the gateway knows of a connect when it asks who may open a room.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    /// The room asked for.
    pub room: &'a str,
    /// Its PartyKit party, if the path named one.
    pub party: Option<&'a str>,
    /// The URL's path as the client sent it.
    pub path: &'a str,
    /// The URL's query string (already bounded by `max_query_bytes`).
    pub query: Option<&'a str>,
    /// The upgrade request's headers.
    pub headers: &'a HeaderMap,
    /// The client's address (`X-Forwarded-For` only from a trusted proxy);
    /// `None` when unknown.
    pub ip: Option<IpAddr>,
}

/// What of a connect is kept with its session, to authorize it again
/// later (`POST /v1/rooms/{room}/sessions/recheck`): the request as the
/// authorizer saw it, minus the headers it does not read.
#[derive(Debug, Clone)]
pub struct ConnectRecord {
    room: String,
    party: Option<String>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    ip: Option<IpAddr>,
}

impl ConnectRecord {
    /// The request, as it was made.
    pub fn request(&self) -> ConnectRequest<'_> {
        ConnectRequest {
            room: &self.room,
            party: self.party.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            ip: self.ip,
        }
    }
}

/// Why a client may not open a room; the HTTP answer before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token where one is needed.
    #[error("a token is required")]
    Missing,
    /// The token is malformed, badly signed, expired or of the wrong issuer.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token without a grant for this room.
    #[error("the token grants no access to room {0}")]
    Forbidden(String),
    /// The authorizer could not decide (webhook down, slow or erring):
    /// refused, fail closed.
    #[error("authorization unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The refusal as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Invalid(_) => "token_invalid",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "auth_unavailable",
        }
    }

    /// 401 for missing or bad tokens, 403 for a valid token without access.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Why an authorizer could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The PEM key could not be read as any supported key type.
    #[error("public key is not an RSA, EC (P-256) or Ed25519 PEM key: {0}")]
    BadKey(String),
    /// Neither a secret nor a key.
    #[error("jwt auth needs a secret or a public key")]
    NoKey,
    /// An HS256 secret shorter than [`MIN_SECRET_BYTES`].
    #[error("the HS256 secret is {0} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)")]
    ShortSecret(usize),
    /// The HTTP client for a webhook or JWKS URL could not be built.
    #[error("http client: {0}")]
    Http(String),
}

/// Longest user id a grant may name (a JWT's `sub`, the webhook's
/// `user.id`), in bytes; the room node takes ids up to this long.
pub const MAX_USER_ID_BYTES: usize = 1024;

/// Largest auth webhook answer or JWKS document read, in bytes. Both are a
/// few hundred bytes to a few KiB; a larger body is refused as it streams
/// in (the client is refused: fail closed), and what is cached per client
/// stays small.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads `response`'s JSON body, refusing one over [`MAX_ANSWER_BYTES`]
/// before reading past it.
async fn bounded_json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
) -> Result<T, String> {
    let too_big = || format!("answer over {MAX_ANSWER_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// An HTTP client that gives up after `timeout`; without one a hung
/// webhook or JWKS server would hold connects forever.
fn http_client(timeout: Duration) -> Result<reqwest::Client, AuthConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| AuthConfigError::Http(e.to_string()))
}

/// A grant of one room (a JWT's `rooms` entry, a webhook's `access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Grant {
    Read,
    Write,
}

impl Authorizer {
    /// Decides whether this upgrade request may open its room. A grant
    /// that has already ended (a cached webhook answer past its
    /// `expires_at`) is refused.
    pub async fn authorize(&self, request: &ConnectRequest<'_>) -> Result<Access, Refusal> {
        let access = match self {
            Self::None => Access {
                identity: String::new(),
                name: None,
                read_only: false,
                expires_at: None,
            },
            Self::Jwt(jwt) => {
                let token = token(request.query, request.headers).ok_or(Refusal::Missing)?;
                jwt.authorize(&token, request.room).await?
            }
            Self::Webhook(hook) => hook.authorize(request).await?,
        };
        if access
            .expires_at
            .is_some_and(|end| end <= SystemTime::now())
        {
            return Err(Refusal::Invalid("the grant has expired".to_owned()));
        }
        // The id travels with the session, is kept by the room and named in
        // every event: an id is a key, not a document.
        if access.identity.len() > MAX_USER_ID_BYTES {
            return Err(Refusal::Invalid(format!(
                "a user id of {} bytes; at most {MAX_USER_ID_BYTES}",
                access.identity.len()
            )));
        }
        Ok(access)
    }

    /// What to keep of `request` to authorize its session again; `None`
    /// when nothing can change (`none` grants everyone the same).
    pub fn record(&self, request: &ConnectRequest<'_>) -> Option<ConnectRecord> {
        let forwarded: &[axum::http::HeaderName] = match self {
            Self::None => return None,
            Self::Jwt(_) => &[],
            Self::Webhook(hook) => hook.forward_headers(),
        };
        // Where a token may come from, and what the webhook is sent, each
        // kept as the webhook is sent it (joined, cut at 16 KiB): what a
        // session keeps is bounded, and a recheck asks about exactly what
        // the connect was asked about.
        let mut headers = HeaderMap::new();
        for name in [header::AUTHORIZATION, header::SEC_WEBSOCKET_PROTOCOL] {
            if let Some(value) = request
                .headers
                .get(&name)
                .filter(|value| value.len() <= webhook::MAX_FORWARDED_VALUE_BYTES)
            {
                headers.insert(name, value.clone());
            }
        }
        for (name, value) in webhook::forwarded(request.headers, forwarded) {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name),
                axum::http::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.insert(name, value);
            }
        }
        Some(ConnectRecord {
            room: request.room.to_owned(),
            party: request.party.map(str::to_owned),
            path: request.path.to_owned(),
            query: request.query.map(str::to_owned),
            headers,
            ip: request.ip,
        })
    }

    /// Authorizes a session again, as [`Self::authorize`] would a new
    /// connect with the same request, but never from the webhook's cache
    /// (its answer replaces the cached one).
    pub async fn recheck(&self, request: &ConnectRequest<'_>) -> Result<Access, Refusal> {
        match self {
            Self::Webhook(hook) => hook.authorize_fresh(request).await,
            other => other.authorize(request).await,
        }
    }

    /// Forgets any cached answer for this request: its session's access
    /// was revoked, so the client's reconnect is asked about again.
    pub async fn forget(&self, request: &ConnectRequest<'_>) {
        if let Self::Webhook(hook) = self {
            hook.forget(request).await;
        }
    }

    /// Whether clients must present a token.
    pub fn requires_token(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// The query's parameters, decoded as a browser's `URLSearchParams`
/// encodes them (later duplicates win). The caller bounds the query's
/// length (`max_query_bytes`) before anything reads it.
fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .map(|query| url::form_urlencoded::parse(query.as_bytes()).into_owned())
        .into_iter()
        .flatten()
        .collect()
}

/// The client's token: `?token=`, `Authorization: Bearer`, or a
/// `Sec-WebSocket-Protocol` entry shaped like a JWT.
pub fn token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query_params(query).remove("token");
    let from_bearer = || {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    };
    from_query
        .filter(|t| !t.is_empty())
        .or_else(from_bearer)
        .or_else(|| protocol_token(headers))
}

/// A JWT-shaped entry of `Sec-WebSocket-Protocol`; the gateway must echo
/// it back as the chosen protocol or browsers drop the connection.
pub fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    value
        .split(',')
        .map(str::trim)
        .find(|entry| entry.matches('.').count() == 2)
        .map(str::to_owned)
}

/// A connect to `room` with `query` and `headers`, from nowhere known.
#[cfg(test)]
fn connect<'a>(
    room: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
) -> ConnectRequest<'a> {
    ConnectRequest {
        room,
        party: None,
        path: "/",
        query,
        headers,
        ip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_query_bearer_or_protocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            token(Some("token=a%2Eb.c"), &headers).as_deref(),
            Some("a.b.c")
        );
        headers.insert(header::AUTHORIZATION, "Bearer x.y.z".parse().unwrap());
        assert_eq!(token(None, &headers).as_deref(), Some("x.y.z"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "y-sync, p.q.r".parse().unwrap(),
        );
        assert_eq!(token(None, &headers).as_deref(), Some("p.q.r"));
        assert_eq!(token(Some("_pk=1"), &HeaderMap::new()), None);
    }

    #[test]
    fn a_connect_record_keeps_what_the_authorizer_reads_cut_as_it_is_sent() {
        let hook = WebhookAuthorizer::new(WebhookSettings {
            url: "http://127.0.0.1:9/auth".into(),
            timeout: Duration::from_secs(1),
            ttl: Duration::from_secs(1),
            max_entries: 1,
            forward_headers: vec![header::COOKIE],
            signer: None,
        })
        .unwrap();
        let authorizer = Authorizer::Webhook(Arc::new(hook));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        headers.insert(header::USER_AGENT, "not read".parse().unwrap());
        for _ in 0..100 {
            headers.append(header::COOKIE, "x".repeat(4096).parse().unwrap());
        }
        let record = authorizer
            .record(&connect("doc", Some("token=t"), &headers))
            .unwrap();
        let kept = &record.request().headers.clone();
        assert_eq!(kept.get(header::AUTHORIZATION).unwrap(), "Bearer a.b.c");
        assert!(kept.get(header::USER_AGENT).is_none());
        assert_eq!(kept.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(
            kept[header::COOKIE].len(),
            webhook::MAX_FORWARDED_VALUE_BYTES
        );
        assert!(Authorizer::None
            .record(&connect("doc", None, &headers))
            .is_none());
    }

    #[test]
    fn query_params_decode_as_browsers_encode() {
        let params = query_params(Some("a=1&b=x+y%2Bz&&c&a=2&d=%E2%9C%93&e=%FF"));
        let expected = [
            ("a", "2"),
            ("b", "x y+z"),
            ("c", ""),
            ("d", "\u{2713}"),
            ("e", "\u{fffd}"),
        ];
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert_eq!(params, expected);
        assert!(query_params(None).is_empty());
        assert!(query_params(Some("")).is_empty());
    }
}
