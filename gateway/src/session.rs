//! One client WebSocket: a task that reads the client's frames into the
//! room's upstream and writes the room's frames out.
//!
//! Binary frames are y-sync messages, passed through whole (the room node
//! decodes them). Text frames are side protocols: `y-pk-batch#` markers
//! bracket chunks that are joined here into one message, `__YPS:` messages
//! are relayed to the room's other sessions, anything else closes the
//! socket with 1003. The gateway pings every `ping_interval` and closes a
//! socket silent for `dead_after`. On exit the room is told, so the
//! client's awareness is removed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use partyline_proto::{close, RoomName};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite;

use crate::batch::{BatchError, Reassembler, BATCH_PREFIX};
use crate::outbox::Outbox;
use crate::upstream::{CloseReason, SessionGrant, ToClient, UpstreamHandle};
use crate::Shared;

/// How long a closing socket keeps reading for the client's close reply.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a client session until either side closes.
pub async fn serve(
    mut socket: WebSocket,
    room: RoomName,
    grant: SessionGrant,
    shared: Arc<Shared>,
) {
    let session_id = shared.next_session_id();
    let outbox = Outbox::new(shared.config.session_queue);
    let upstream = tokio::select! {
        opened = shared.upstreams.open(&room, session_id, grant, &outbox) => opened,
        _ = shared.cancel.cancelled() => Err(CloseReason::new(shared.config.shutdown_close_code, "gateway shutting down")),
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(reason) => {
            send_close(&mut socket, &reason).await;
            return;
        }
    };
    let reason = pump(&mut socket, &room, session_id, &upstream, &shared, &outbox).await;
    upstream.close(session_id).await;
    if let Some(reason) = reason {
        send_close(&mut socket, &reason).await;
    }
}

/// Moves frames both ways; returns how to close, or `None` when the client
/// is already gone.
async fn pump(
    socket: &mut WebSocket,
    room: &RoomName,
    session_id: u64,
    upstream: &UpstreamHandle,
    shared: &Shared,
    outbox: &Outbox,
) -> Option<CloseReason> {
    let config = &shared.config;
    let mut reassembler = Reassembler::new(config.max_message_bytes);
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut frames = VecDeque::new();
    // `max_session` bounds how long a revoked grant stays usable.
    let expires = tokio::time::sleep(config.max_session.unwrap_or(Duration::MAX));
    tokio::pin!(expires);
    // Registered once, not on every wake-up of the loop.
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        // Busiest branch first: a wake-up for outbound frames polls nothing
        // else. Shutdown is last; it also empties every outbox.
        tokio::select! {
            biased;
            close = outbox.drain(&mut frames) => {
                // Frames the room queued before it ended the session go out first.
                if write_all(socket, &mut frames).await.is_err() {
                    return None;
                }
                if close.is_some() {
                    return close;
                }
            }
            message = socket.recv() => {
                last_heard = Instant::now();
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::debug!(room = %room, session = session_id, %error, "socket read failed");
                        return too_big(&error);
                    }
                    None => return None,
                };
                let forward = match message {
                    Message::Binary(data) if reassembler.is_open() => {
                        reassembler.chunk(&data).map(|()| None)
                    }
                    Message::Binary(data) => Ok(Some((data, false))),
                    Message::Text(text) if text.as_str().starts_with(BATCH_PREFIX) => {
                        reassembler.marker(text.as_str()).map(|joined| joined.map(|data| (data, false)))
                    }
                    Message::Text(text) if text.as_str().starts_with("__YPS:") => {
                        Ok(Some((Bytes::from(text), true)))
                    }
                    Message::Text(_) => {
                        tracing::info!(room = %room, session = session_id, "unsupported text frame");
                        return Some(CloseReason::new(close::UNSUPPORTED_DATA, "unsupported text message"));
                    }
                    Message::Close(_) => return None,
                    Message::Ping(_) | Message::Pong(_) => Ok(None),
                };
                match forward {
                    Ok(Some((payload, text))) => {
                        if upstream.client_frame(session_id, payload, text).await.is_err() {
                            return Some(CloseReason::new(close::INTERNAL_ERROR, "room unavailable"));
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::info!(room = %room, session = session_id, %error, "bad y-pk-batch");
                        let code = match error {
                            BatchError::TooLarge(_) => close::MESSAGE_TOO_BIG,
                            _ => close::PROTOCOL_ERROR,
                        };
                        return Some(CloseReason::new(code, error.to_string()));
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.dead_after {
                    tracing::debug!(room = %room, session = session_id, "socket silent too long; closing");
                    return None;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return None;
                }
            }
            _ = &mut expires => {
                tracing::debug!(room = %room, session = session_id, "session reached max_session; closing");
                return Some(CloseReason::new(close::POLICY_VIOLATION, "session expired; reconnect to be authorized again"));
            }
            _ = &mut cancelled => {
                return Some(CloseReason::new(config.shutdown_close_code, "server shutting down"));
            }
        }
    }
}

/// Writes every drained frame, then flushes once.
async fn write_all(
    socket: &mut WebSocket,
    frames: &mut VecDeque<ToClient>,
) -> Result<(), axum::Error> {
    for frame in frames.drain(..) {
        if let Some(message) = to_message(frame) {
            socket.feed(message).await?;
        }
    }
    socket.flush().await
}

/// Text payloads were text frames from a client, so they are UTF-8; one
/// that is not is dropped rather than sent in a frame the client misreads.
fn to_message(frame: ToClient) -> Option<Message> {
    if frame.text {
        Utf8Bytes::try_from(frame.payload).ok().map(Message::Text)
    } else {
        Some(Message::Binary(frame.payload))
    }
}

/// tungstenite refuses an over-limit frame or message with a capacity
/// error; the client gets 1009 for it.
fn too_big(error: &axum::Error) -> Option<CloseReason> {
    let source = std::error::Error::source(error)?;
    matches!(
        source.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
    .then(|| CloseReason::new(close::MESSAGE_TOO_BIG, "message over the size limit"))
}

async fn send_close(socket: &mut WebSocket, reason: &CloseReason) {
    let mut text = reason.reason.clone();
    // A close frame's reason must fit in 123 bytes.
    while text.len() > 123 {
        text.pop();
    }
    let frame = CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from(text),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    // Closing a socket with unread input makes the kernel send RST, and a
    // client that gets the RST before it reads our close frame sees 1006
    // instead of the code. Read (and drop) what the client still sends
    // until its close reply, end of stream, or a short deadline.
    let drain = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
}
