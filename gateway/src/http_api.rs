//! The gateway's HTTP API for an app's backend (docs/api.md): read a
//! room's figures and state, write to it, delete it, list rooms, warm a
//! room before its first client. Served under `/v1/` on the WebSocket
//! port for requests that are not WebSocket upgrades (an upgrade to
//! `/v1/…` is still a room), list, close and recheck a room's live
//! sessions, behind a bearer API key that is separate from
//! client tokens. `GET /v1/openapi.json` describes it and needs no key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use partyline_proto::{pb, slot_of, RoomName};
use serde::Deserialize;
use serde_json::json;

use crate::room_api::{RoomApi, RoomApiError};

/// The OpenAPI 3.0 document of this API.
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// Default and largest page of `GET /v1/rooms`.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1000;
/// Largest body of `POST …/versions` (`{"label": "…"}`; a label is at most
/// 200 bytes, escapes may take six bytes a character).
const VERSION_BODY_MAX: usize = 2048;
/// Longest version id the routes pass on (the node checks the alphabet).
const VERSION_ID_MAX: usize = 200;

/// What the API handlers share.
struct Api {
    rooms: RoomApi,
    key: Option<String>,
}

/// The `/v1` routes. `key` is the bearer API key; without one every route
/// but the OpenAPI document answers 403. Updates up to `max_update_bytes`
/// are accepted.
pub(crate) fn router(rooms: RoomApi, key: Option<String>, max_update_bytes: usize) -> axum::Router {
    let api = Arc::new(Api { rooms, key });
    let protected = axum::Router::new()
        .route("/v1/rooms", get(list))
        .route("/v1/rooms/{room}", get(info).delete(delete))
        .route("/v1/rooms/{room}/state", get(state))
        .route("/v1/rooms/{room}/update", post(update))
        .route("/v1/rooms/{room}/warm", post(warm))
        .route("/v1/rooms/{room}/restore", post(restore_room))
        .route(
            "/v1/rooms/{room}/sessions",
            get(sessions).delete(close_sessions),
        )
        .route("/v1/rooms/{room}/sessions/recheck", post(recheck_sessions))
        .route("/v1/rooms/{room}/messages", post(send_message))
        .route(
            "/v1/rooms/{room}/versions",
            get(versions)
                .post(take_version)
                .layer(DefaultBodyLimit::max(VERSION_BODY_MAX)),
        )
        .route("/v1/rooms/{room}/versions/{id}", get(version))
        .route("/v1/rooms/{room}/versions/{id}/restore", post(restore))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_key))
        .layer(DefaultBodyLimit::max(max_update_bytes));
    axum::Router::new()
        .route("/v1/openapi.json", get(openapi))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API route") })
        .with_state(api)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

impl IntoResponse for RoomApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound | Self::Deleted(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Refused(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotAllowed(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Node { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        error(status, self)
    }
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of a guessed key was right.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn require_key(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &api.key else {
        return error(
            StatusCode::FORBIDDEN,
            "the HTTP API is disabled: set gateway.api_key (--api-key)",
        );
    };
    // The scheme is case-insensitive (RFC 7235); the key is not.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key);
    match given {
        Some(given) if same_key(given.trim().as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A room name from the path (percent-decoded by the router).
fn room(name: String) -> Result<RoomName, RoomApiError> {
    RoomName::new(name).map_err(|e| RoomApiError::BadRequest(format!("bad room name: {e}")))
}

type Answer = Result<Response, RoomApiError>;

async fn info(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let room = room(name)?;
    let (info, url) = api.rooms.info(&room).await?;
    Ok(Json(json!({
        "room": room.as_str(),
        "slot": slot_of(room.as_str()).get(),
        "owner": { "node_id": info.node_id, "url": url },
        "epoch": info.epoch,
        "loaded": info.loaded,
        "sessions": info.sessions,
        "gateways": info.gateways,
        "doc_bytes": info.doc_bytes,
        "last_snapshot_unix_ms": (info.last_snapshot_unix_ms > 0).then_some(info.last_snapshot_unix_ms),
        "updates_since_snapshot": info.updates_since_snapshot,
        "mode": info.mode,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct StateQuery {
    format: Option<String>,
}

impl StateQuery {
    /// The format asked for, and the answer's content type.
    fn format(&self) -> Result<(pb::StateFormat, &'static str), RoomApiError> {
        Ok(match self.format.as_deref() {
            None | Some("update") => (pb::StateFormat::UpdateV1, "application/octet-stream"),
            Some("json") => (pb::StateFormat::Json, "application/json"),
            Some("prosemirror") => (pb::StateFormat::Prosemirror, "application/json"),
            Some(other) => {
                return Err(RoomApiError::BadRequest(format!(
                    "unknown format {other:?}: update, json or prosemirror"
                )))
            }
        })
    }
}

async fn state(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(query): Query<StateQuery>,
) -> Answer {
    let room = room(name)?;
    let (format, content_type) = query.format()?;
    let (state, _) = api.rooms.state(&room, format).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], state).into_response())
}

/// A stored version as JSON.
fn version_json(version: &pb::VersionInfo) -> serde_json::Value {
    json!({
        "id": version.id,
        "taken_at_unix_ms": version.taken_at_unix_ms,
        "size": version.size,
        "label": version.label,
    })
}

/// A version id from the path, bounded (the room node checks the rest).
fn version_id(id: String) -> Result<String, RoomApiError> {
    if id.is_empty() || id.len() > VERSION_ID_MAX {
        return Err(RoomApiError::BadRequest(format!(
            "bad version id: 1 to {VERSION_ID_MAX} bytes"
        )));
    }
    Ok(id)
}

async fn versions(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let room = room(name)?;
    let versions = api.rooms.versions(&room).await?;
    let versions: Vec<_> = versions.iter().map(version_json).collect();
    Ok(Json(json!({ "room": room.as_str(), "versions": versions })).into_response())
}

async fn version(
    State(api): State<Arc<Api>>,
    Path((name, id)): Path<(String, String)>,
    Query(query): Query<StateQuery>,
) -> Answer {
    let room = room(name)?;
    let id = version_id(id)?;
    let (format, content_type) = query.format()?;
    let state = api.rooms.version(&room, &id, format).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], state).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TakeBody {
    label: Option<String>,
}

async fn take_version(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer {
    let room = room(name)?;
    // No body (or an empty one) takes an unlabelled version.
    let body: TakeBody = if body.iter().all(u8::is_ascii_whitespace) {
        TakeBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            RoomApiError::BadRequest(format!("body must be {{\"label\": \"…\"}}: {e}"))
        })?
    };
    let version = api.rooms.take_version(&room, body.label.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(version_json(&version))).into_response())
}

async fn restore(State(api): State<Arc<Api>>, Path((name, id)): Path<(String, String)>) -> Answer {
    let room = room(name)?;
    let id = version_id(id)?;
    api.rooms.restore_version(&room, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn update(State(api): State<Arc<Api>>, Path(name): Path<String>, body: Bytes) -> Answer {
    let room = room(name)?;
    if body.is_empty() {
        return Err(RoomApiError::BadRequest(
            "empty body: send a Yjs update v1".to_owned(),
        ));
    }
    api.rooms.apply(&room, body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

async fn delete(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Answer {
    let room = room(name)?;
    let deleted = api.rooms.delete(&room, query.purge).await?;
    Ok(Json(json!({
        "room": room.as_str(),
        "deleted": deleted.is_some(),
        "purged": deleted == Some(0),
        "purge_at_unix_ms": deleted.filter(|&at| at > 0),
    }))
    .into_response())
}

async fn restore_room(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let room = room(name)?;
    api.rooms.restore(&room).await?;
    Ok(Json(json!({ "room": room.as_str(), "restored": true })).into_response())
}

async fn warm(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let room = room(name)?;
    let (was_loaded, url) = api.rooms.warm(&room).await?;
    Ok(Json(json!({
        "room": room.as_str(),
        "was_loaded": was_loaded,
        "owner": { "url": url },
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    cursor: String,
    limit: Option<u32>,
}

async fn list(State(api): State<Arc<Api>>, Query(query): Query<ListQuery>) -> Answer {
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(RoomApiError::BadRequest(format!(
            "limit must be 1 to {PAGE_MAX}"
        )));
    }
    let (rooms, more) = api.rooms.list(&query.prefix, &query.cursor, limit).await?;
    let next = more.then(|| rooms.last().cloned()).flatten();
    Ok(Json(json!({ "rooms": rooms, "next_cursor": next })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secreT", b"secret"));
        assert!(!same_key(b"secret1", b"secret"));
        assert!(!same_key(b"", b"secret"));
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/rooms",
            "/v1/rooms/{room}",
            "/v1/rooms/{room}/state",
            "/v1/rooms/{room}/update",
            "/v1/rooms/{room}/warm",
            "/v1/rooms/{room}/versions",
            "/v1/rooms/{room}/versions/{id}",
            "/v1/rooms/{room}/versions/{id}/restore",
            "/v1/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
    }
}

async fn sessions(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let room = room(name)?;
    let sessions = api.rooms.sessions(&room).await?;
    let sessions: Vec<_> = sessions
        .iter()
        .map(|session| {
            let access = match session.permission() {
                pb::Permission::ReadOnly => "read",
                _ => "write",
            };
            json!({
                "id": session.id,
                "user": session.user,
                "access": access,
                "connected_unix_ms": session.connected_unix_ms,
                "gateway": session.gateway,
            })
        })
        .collect();
    Ok(Json(json!({ "room": room.as_str(), "sessions": sessions })).into_response())
}

#[derive(Debug, Deserialize)]
struct UserQuery {
    user: Option<String>,
}

async fn close_sessions(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(query): Query<UserQuery>,
) -> Answer {
    let room = room(name)?;
    let user = query.user.filter(|user| !user.is_empty()).ok_or_else(|| {
        RoomApiError::BadRequest("name the user whose sessions to close: ?user=ID".to_owned())
    })?;
    let closed = api.rooms.close_sessions(&room, &user).await?;
    Ok(Json(json!({ "room": room.as_str(), "user": user, "closed": closed })).into_response())
}

async fn recheck_sessions(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answer {
    let room = room(name)?;
    let sessions = api.rooms.recheck_sessions(&room).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "room": room.as_str(), "rechecking": sessions })),
    )
        .into_response())
}

async fn send_message(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer {
    let room = room(name)?;
    if body.len() > partyline_proto::MAX_SERVER_MESSAGE_BYTES {
        return Err(RoomApiError::BadRequest(format!(
            "a message of {} bytes; at most {}",
            body.len(),
            partyline_proto::MAX_SERVER_MESSAGE_BYTES
        )));
    }
    let message = std::str::from_utf8(&body)
        .map_err(|_| RoomApiError::BadRequest("the message must be UTF-8 text".to_owned()))?;
    let sessions = api.rooms.send_message(&room, message).await?;
    Ok(Json(json!({ "room": room.as_str(), "sessions": sessions })).into_response())
}
