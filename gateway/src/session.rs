//! One client WebSocket: a task that reads the client's frames into the
//! room's upstream, pings the client, and writes out whatever the room's
//! frames could not write directly ([`crate::client_socket`]).
//!
//! Binary frames are y-sync messages, passed through whole (the room node
//! decodes them). Text frames are side protocols: `y-pk-batch#` markers
//! bracket chunks that are joined here into one message (closed with 1008
//! unless the end marker comes within `batch_timeout`), `__YPS:` messages
//! are relayed to the room's other sessions, anything else closes the
//! socket with 1003. The gateway pings every `ping_interval` and closes a
//! socket silent for `dead_after`. On exit the room is told, so the
//! client's awareness is removed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::FusedStream;
use futures_util::{SinkExt, StreamExt};
use partyline_proto::{close, RoomName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::batch::{BatchError, Reassembler, BATCH_PREFIX};
use crate::client_socket::{ClientIo, ClientSocket};
use crate::messages::{ClientFrame, CloseReason, SessionGrant};
use crate::upstream::UpstreamHandle;
use crate::Shared;

/// How long a closing socket keeps reading for the client's close reply.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// While draining raw bytes at close, this long without any means the
/// client has sent everything.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

type Socket = WebSocketStream<ClientIo>;

/// Runs a client session on an upgraded socket until either side closes.
/// `read_buf` holds bytes read past the HTTP request.
pub(crate) async fn serve(
    stream: TcpStream,
    read_buf: Vec<u8>,
    room: RoomName,
    grant: SessionGrant,
    grant_ends: Option<SystemTime>,
    shared: Arc<Shared>,
) {
    let config = &shared.config;
    let session_id = shared.next_session_id();
    let (read, write) = stream.into_split();
    let out = Arc::new(
        ClientSocket::new(write, config.session_queue).max_bytes(config.session_queue_bytes),
    );
    let max = config.max_message_bytes;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut socket = WebSocketStream::from_partially_read(
        ClientIo::new(read, out.clone()),
        read_buf,
        Role::Server,
        Some(ws_config),
    )
    .await;
    let upstream = tokio::select! {
        // Boxed, like the close below: a future's size is that of its
        // largest state, and every idle socket holds one.
        opened = Box::pin(shared.upstreams.open(&room, session_id, grant, &out)) => opened,
        _ = shared.cancel.cancelled() => Err(CloseReason::new(config.shutdown_close_code, "gateway shutting down")),
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(reason) => {
            Box::pin(send_close(&mut socket, &reason)).await;
            return;
        }
    };
    let metrics = crate::telemetry::metrics();
    metrics.connections.add(1, &[]);
    let mut ending = Ending {
        deadline: SessionEnd::first(config.max_session, grant_ends),
        by_client: None,
    };
    let reason = pump(
        &mut socket,
        &room,
        session_id,
        &upstream,
        &shared,
        &out,
        &mut ending,
    )
    .await;
    let client_close = ending.by_client;
    metrics.connections.add(-1, &[]);
    // What the room's lifecycle events say: our close, the client's, or a
    // socket that just ended.
    let client_closed = reason.is_none() && client_close.is_some();
    let how = reason
        .clone()
        .or(client_close)
        .unwrap_or_else(|| CloseReason::new(close::ABNORMAL, "connection lost"));
    Box::pin(upstream.close(session_id, how)).await;
    if client_closed {
        // tungstenite queued the close frame that answers the client's;
        // it goes out with a flush (bounded: the client may be gone).
        let _ = Box::pin(tokio::time::timeout(CLOSE_DRAIN, socket.flush())).await;
    }
    if let Some(reason) = reason {
        Box::pin(send_close(&mut socket, &reason)).await;
    }
}

/// Moves frames both ways; returns how to close, or `None` when the client
/// is already gone.
async fn pump(
    socket: &mut Socket,
    room: &RoomName,
    session_id: u64,
    upstream: &UpstreamHandle,
    shared: &Shared,
    out: &ClientSocket,
    ending: &mut Ending,
) -> Option<CloseReason> {
    let config = &shared.config;
    let mut reassembler = Reassembler::new(config.max_message_bytes);
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut message_rate = shared.limits.message_bucket();
    // Boxed and only when set: a timer is 112 bytes of every idle socket's
    // future.
    let mut expires = ending
        .deadline
        .map(|end| (Box::pin(tokio::time::sleep(end.after)), end));
    // Armed by a batch's start marker, dropped when it ends. Boxed and only
    // while a batch is open, like `expires`.
    let mut batch_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // Registered once, not on every wake-up of the loop.
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            // The room's frames went straight into the socket; this wakes
            // only for what the kernel would not take, or to close.
            () = out.woken() => {
                // A client that takes none of our bytes for `dead_after` is
                // as dead as one that sends nothing; one that takes them,
                // however slowly, is alive.
                if Box::pin(out.flush_while_progressing(config.dead_after)).await.is_err() {
                    return None;
                }
                last_heard = Instant::now();
                if let Some(reason) = out.take_close() {
                    return Some(reason);
                }
            }
            message = socket.next() => {
                last_heard = Instant::now();
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::debug!(room = %room, session = session_id, %error, "socket read failed");
                        return too_big(&error);
                    }
                    None => return None,
                };
                if matches!(message, Message::Binary(_) | Message::Text(_))
                    && message_rate.as_mut().is_some_and(|rate| !rate.allow())
                {
                    let total = shared.limits.count_message_rate();
                    tracing::info!(room = %room, session = session_id, total, "session over its message rate; closing");
                    crate::telemetry::refuse("message_rate");
                    return Some(CloseReason::new(close::POLICY_VIOLATION, "message rate over the limit"));
                }
                let forward = match message {
                    Message::Binary(data) if reassembler.is_open() => {
                        reassembler.chunk(&data).map(|()| None)
                    }
                    Message::Binary(data) => Ok(Some(ClientFrame::binary(data))),
                    Message::Text(text) if text.as_str().starts_with(BATCH_PREFIX) => {
                        reassembler.marker(text.as_str()).map(|joined| joined.map(ClientFrame::binary))
                    }
                    Message::Text(text) if text.as_str().starts_with("__YPS:") => {
                        Ok(Some(ClientFrame::text(Bytes::from(text))))
                    }
                    Message::Text(_) => {
                        tracing::info!(room = %room, session = session_id, "unsupported text frame");
                        crate::telemetry::refuse("unsupported_text");
                        return Some(CloseReason::new(close::UNSUPPORTED_DATA, "unsupported text message"));
                    }
                    Message::Close(frame) => {
                        ending.by_client = Some(match frame {
                            Some(frame) => CloseReason::new(u16::from(frame.code), frame.reason.as_str()),
                            None => CloseReason::new(close::NO_STATUS, ""),
                        });
                        return None;
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(None),
                };
                match (reassembler.is_open(), batch_deadline.is_some()) {
                    (true, false) => batch_deadline = Some(Box::pin(tokio::time::sleep(config.batch_timeout))),
                    (false, true) => batch_deadline = None,
                    _ => {}
                }
                match forward {
                    Ok(Some(mut frame)) => {
                        let kind = crate::telemetry::frame_kind(&frame.payload, frame.text);
                        crate::telemetry::metrics().frames_in.add(1, &[opentelemetry::KeyValue::new("kind", kind)]);
                        if config.trace_frames {
                            frame.traceparent = crate::telemetry::frame_traceparent(room.as_str(), session_id, kind, frame.payload.len());
                        }
                        if upstream.client_frame(session_id, frame).await.is_err() {
                            return Some(CloseReason::new(close::INTERNAL_ERROR, "room unavailable"));
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::info!(room = %room, session = session_id, %error, "bad y-pk-batch");
                        let (code, label) = match error {
                            BatchError::TooLarge(_) => (close::MESSAGE_TOO_BIG, "too_big"),
                            _ => (close::PROTOCOL_ERROR, "protocol_error"),
                        };
                        crate::telemetry::refuse(label);
                        return Some(CloseReason::new(code, error.to_string()));
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.dead_after {
                    tracing::debug!(room = %room, session = session_id, "socket silent too long; closing");
                    return None;
                }
                // Queued behind the room's frames, flushed by `woken`.
                if socket.feed(Message::Ping(Bytes::new())).await.is_err() {
                    return None;
                }
            }
            _ = async { expires.as_mut().expect("guarded").0.as_mut().await }, if expires.is_some() => {
                let end = expires.as_ref().expect("guarded").1;
                tracing::debug!(room = %room, session = session_id, why = end.label(), "session ended; closing");
                crate::telemetry::refuse(end.label());
                return Some(end.reason());
            }
            _ = async { batch_deadline.as_mut().expect("guarded").await }, if batch_deadline.is_some() => {
                // Returning drops the reassembler and the chunks it holds.
                tracing::info!(room = %room, session = session_id, timeout = ?config.batch_timeout, "y-pk-batch not completed in time; closing");
                crate::telemetry::refuse("batch_timeout");
                return Some(CloseReason::new(close::POLICY_VIOLATION, "y-pk-batch not completed in time"));
            }
            _ = &mut cancelled => {
                return Some(CloseReason::new(config.shutdown_close_code, "server shutting down"));
            }
        }
    }
}

/// How a session ends: when it must at the latest, and, once the client
/// closed, what its close frame said.
struct Ending {
    deadline: Option<SessionEnd>,
    by_client: Option<CloseReason>,
}

/// When a session is closed whatever it does: at `--auth-max-session`
/// (1008, so a revoked grant stops working within it) or when its grant
/// ends (4401: the JWT's `exp`, the webhook's `expires_at`), whichever
/// comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SessionEnd {
    after: Duration,
    grant: bool,
}

impl SessionEnd {
    fn first(max_session: Option<Duration>, grant_ends: Option<SystemTime>) -> Option<Self> {
        let grant = grant_ends.map(|at| Self {
            after: at.duration_since(SystemTime::now()).unwrap_or_default(),
            grant: true,
        });
        let max = max_session.map(|after| Self {
            after,
            grant: false,
        });
        match (grant, max) {
            (Some(grant), Some(max)) => Some(if grant.after <= max.after { grant } else { max }),
            (one, other) => one.or(other),
        }
    }

    fn label(&self) -> &'static str {
        if self.grant {
            "grant_expired"
        } else {
            "session_expired"
        }
    }

    fn reason(&self) -> CloseReason {
        if self.grant {
            CloseReason::new(close::UNAUTHORIZED, "session expired")
        } else {
            CloseReason::new(
                close::POLICY_VIOLATION,
                "session expired; reconnect to be authorized again",
            )
        }
    }
}

/// tungstenite refuses an over-limit frame or message with a capacity
/// error; the client gets 1009 for it.
fn too_big(error: &tungstenite::Error) -> Option<CloseReason> {
    if !matches!(error, tungstenite::Error::Capacity(_)) {
        return None;
    }
    crate::telemetry::refuse("too_big");
    Some(CloseReason::new(
        close::MESSAGE_TOO_BIG,
        "message over the size limit",
    ))
}

/// Sends the close frame after everything queued, then reads until the
/// client's reply. Bounded by [`CLOSE_DRAIN`] in all.
async fn send_close(socket: &mut Socket, reason: &CloseReason) {
    let mut text = reason.reason.clone();
    // A close frame's reason must fit in 123 bytes.
    while text.len() > 123 {
        text.pop();
    }
    let frame = CloseFrame {
        code: CloseCode::from(reason.code),
        reason: Utf8Bytes::from(text),
    };
    let close = async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // Closing a socket with unread input makes the kernel send RST, and
        // a client that gets the RST before it reads our close frame sees
        // 1006 instead of the code. Read (and drop) what the client still
        // sends until its close reply or end of stream.
        //
        // After a read error (an oversized frame's header, a protocol
        // error) the stream is fused and yields nothing more although the
        // rest of the client's frame may still be on its way: drain the
        // raw bytes then, until the client goes quiet.
        while !socket.is_terminated() {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                Some(Err(_)) => break,
            }
        }
        // On the heap: an array here would sit in every session's future.
        let mut sink = vec![0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(DRAIN_QUIET, socket.get_mut().read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN, close).await;
}

#[cfg(test)]
mod tests {
    /// Every open socket holds one session future, so its size is part of
    /// the memory per idle connection: a buffer declared in an `async fn`
    /// lives in it (a 4 KiB array once made idle sockets 50 % dearer).
    #[tokio::test]
    async fn a_session_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_m, map) = tokio::sync::watch::channel(None);
        let config = std::sync::Arc::new(crate::GatewayConfig::new("g"));
        let router = crate::router::Router::new(map, partyline_proto::link::LinkAuth::Insecure);
        let tracker = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let shared = std::sync::Arc::new(crate::Shared {
            upstreams: crate::upstream::Upstreams::new(
                router.clone(),
                config.clone(),
                tracker.clone(),
                cancel.clone(),
            ),
            router,
            config: config.clone(),
            sessions: tracker,
            cancel,
            next_session_id: std::sync::atomic::AtomicU64::new(1),
            connections: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            api: axum::Router::new(),
            limits: crate::limits::Limits::new(Default::default()),
        });
        let fut = super::serve(
            stream,
            Vec::new(),
            partyline_proto::RoomName::new("x").unwrap(),
            crate::messages::SessionGrant {
                identity: String::new(),
                read_only: false,
                record: None,
            },
            None,
            shared,
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1536, "a session future takes {size} bytes");
    }

    #[test]
    fn the_first_end_wins_and_says_why() {
        use super::{close, SessionEnd};
        use std::time::{Duration, SystemTime};
        let soon = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(SessionEnd::first(None, None), None);
        let grant = SessionEnd::first(Some(Duration::from_secs(3600)), Some(soon)).unwrap();
        assert!(grant.grant && grant.after <= Duration::from_secs(60));
        assert_eq!(grant.reason().code, close::UNAUTHORIZED);
        let max = SessionEnd::first(Some(Duration::from_secs(10)), Some(soon)).unwrap();
        assert_eq!(max.reason().code, close::POLICY_VIOLATION);
        let past = SessionEnd::first(None, Some(SystemTime::UNIX_EPOCH)).unwrap();
        assert_eq!(past.after, Duration::ZERO);
    }
}
