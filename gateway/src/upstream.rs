//! Upstream streams: one gRPC `OpenRoom` stream per (gateway, room),
//! shared by every local client session of that room.
//!
//! An [`UpstreamActor`] owns the stream and the room's local sessions. It
//! forwards client frames up, and copies each frame the room node sends
//! down to the sessions it is meant for — a room broadcast crosses the
//! gateway ↔ node link once, however many local clients the room has.
//! A session whose queue is full is closed (1008) rather than slowing the
//! room. When the node ends the stream, every session is closed with 1011
//! (the clients reconnect and re-sync); when the owner cannot be reached
//! for `owner_unreachable_timeout`, waiting sessions are closed with 1013.
//! After the last session leaves, the stream lingers for `upstream_linger`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use partyline_proto::pb::{self, gateway_frame, node_frame, room_node_client::RoomNodeClient};
use partyline_proto::{close, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Streaming;

use crate::config::GatewayConfig;
use crate::outbox::Outbox;
use crate::router::Router;

/// gRPC messages carry whole client messages; match the room node.
const MAX_GRPC_MESSAGE: usize = 64 * 1024 * 1024;
/// Frames buffered from local sessions toward the room node.
const UPSTREAM_QUEUE: usize = 1024;

/// A frame for a client socket.
#[derive(Debug, Clone)]
pub struct ToClient {
    /// The bytes of one WebSocket message.
    pub payload: Bytes,
    /// Binary (y-sync) or text (side protocol).
    pub text: bool,
}

/// Why the gateway closes a client socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Human-readable reason (≤ 123 bytes on the wire).
    pub reason: String,
}

impl CloseReason {
    /// A close reason.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Who the client is and what it may do.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    /// Authenticated identity, "" for anonymous.
    pub identity: String,
    /// Whether document updates are refused.
    pub read_only: bool,
}

/// The upstream's answer to a session opening.
enum OpenReply {
    Opened,
    /// The stream is ending; try again on a fresh one with these ports.
    Retry,
    /// The room cannot be served; close the client with this.
    Refused(CloseReason),
}

enum UpstreamCommand {
    Open {
        session_id: u64,
        grant: SessionGrant,
        outbox: Outbox,
        reply: oneshot::Sender<OpenReply>,
    },
    Client {
        session_id: u64,
        payload: Bytes,
        text: bool,
    },
    Close {
        session_id: u64,
    },
}

/// A session's way to its room's upstream.
#[derive(Clone)]
pub struct UpstreamHandle {
    tx: mpsc::Sender<UpstreamCommand>,
}

/// The upstream is gone; the session should close.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("room upstream has ended")]
pub struct UpstreamGone;

impl UpstreamHandle {
    /// Forwards one client frame to the room node.
    pub async fn client_frame(
        &self,
        session_id: u64,
        payload: Bytes,
        text: bool,
    ) -> Result<(), UpstreamGone> {
        self.tx
            .send(UpstreamCommand::Client {
                session_id,
                payload,
                text,
            })
            .await
            .map_err(|_| UpstreamGone)
    }

    /// Tells the room the session left.
    pub async fn close(&self, session_id: u64) {
        let _ = self.tx.send(UpstreamCommand::Close { session_id }).await;
    }
}

struct Entry {
    handle: UpstreamHandle,
    generation: u64,
}

/// The gateway's upstream streams, by room.
#[derive(Clone)]
pub struct Upstreams {
    rooms: Arc<Mutex<HashMap<RoomName, Entry>>>,
    next_generation: Arc<AtomicU64>,
    router: Router,
    config: Arc<GatewayConfig>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Upstreams {
    /// No streams yet.
    pub fn new(
        router: Router,
        config: Arc<GatewayConfig>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            rooms: Arc::default(),
            next_generation: Arc::default(),
            router,
            config,
            tracker,
            cancel,
        }
    }

    /// Opens a session in `room`, starting the room's stream if needed.
    /// Waits while the owner is being reached; `Err` carries the close the
    /// client gets when it cannot be.
    pub async fn open(
        &self,
        room: &RoomName,
        session_id: u64,
        grant: SessionGrant,
        outbox: &Outbox,
    ) -> Result<UpstreamHandle, CloseReason> {
        loop {
            let handle = self.get_or_spawn(room);
            let (reply_tx, reply_rx) = oneshot::channel();
            let command = UpstreamCommand::Open {
                session_id,
                grant: grant.clone(),
                outbox: outbox.clone(),
                reply: reply_tx,
            };
            // A closed channel or a `Retry` means the stream was lingering
            // out as we arrived: try again on a fresh one.
            if handle.tx.send(command).await.is_ok() {
                match reply_rx.await {
                    Ok(OpenReply::Opened) => return Ok(handle),
                    Ok(OpenReply::Refused(reason)) => return Err(reason),
                    Ok(OpenReply::Retry) => {}
                    Err(_) => {
                        return Err(CloseReason::new(
                            close::INTERNAL_ERROR,
                            "room stream failed",
                        ))
                    }
                }
            }
            if self.cancel.is_cancelled() {
                return Err(CloseReason::new(close::GOING_AWAY, "gateway shutting down"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn get_or_spawn(&self, room: &RoomName) -> UpstreamHandle {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = rooms.get(room) {
            return entry.handle.clone();
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
        let handle = UpstreamHandle { tx };
        rooms.insert(
            room.clone(),
            Entry {
                handle: handle.clone(),
                generation,
            },
        );
        let actor = UpstreamActor {
            room: room.clone(),
            config: self.config.clone(),
            router: self.router.clone(),
            cancel: self.cancel.clone(),
            rx,
            sessions: HashMap::new(),
        };
        let upstreams = self.clone();
        let room = room.clone();
        self.tracker.spawn(async move {
            actor.run().await;
            let mut rooms = upstreams
                .rooms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if rooms.get(&room).is_some_and(|e| e.generation == generation) {
                rooms.remove(&room);
            }
        });
        handle
    }
}

/// An open gRPC stream to the room's owner.
struct Connection {
    to_node: mpsc::Sender<pb::GatewayFrame>,
    from_node: Streaming<pb::NodeFrame>,
}

struct UpstreamActor {
    room: RoomName,
    config: Arc<GatewayConfig>,
    router: Router,
    cancel: CancellationToken,
    rx: mpsc::Receiver<UpstreamCommand>,
    sessions: HashMap<u64, Outbox>,
}

impl UpstreamActor {
    async fn run(mut self) {
        let mut connection = match self.connect().await {
            Ok(connection) => connection,
            Err(reason) => {
                tracing::warn!(room = %self.room, reason = %reason.reason, "room owner unreachable");
                self.refuse_waiting(&reason);
                return;
            }
        };
        let linger = tokio::time::sleep(self.config.upstream_linger);
        tokio::pin!(linger);
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break CloseReason::new(close::GOING_AWAY, "gateway shutting down"),
                frame = connection.from_node.message() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(reason) = self.handle_node_frame(frame, &connection).await {
                            break reason;
                        }
                    }
                    Ok(None) => break CloseReason::new(close::INTERNAL_ERROR, "room closed by its node"),
                    Err(status) => {
                        tracing::warn!(room = %self.room, %status, "room stream failed");
                        break CloseReason::new(close::INTERNAL_ERROR, "room stream failed");
                    }
                },
                command = self.rx.recv() => {
                    let Some(command) = command else { break CloseReason::new(close::NORMAL, "") };
                    if self.handle_session_command(command, &connection).await.is_err() {
                        break CloseReason::new(close::INTERNAL_ERROR, "room stream failed");
                    }
                    if self.sessions.is_empty() {
                        linger.as_mut().reset(Instant::now() + self.config.upstream_linger);
                    }
                }
                _ = &mut linger, if self.sessions.is_empty() => {
                    // Sessions racing our exit retry on a fresh stream.
                    self.rx.close();
                    while let Ok(command) = self.rx.try_recv() {
                        if let UpstreamCommand::Open { reply, .. } = command {
                            let _ = reply.send(OpenReply::Retry);
                        }
                    }
                    return;
                }
            }
        };
        for (_, session) in self.sessions.drain() {
            session.close(end.clone());
        }
        self.refuse_waiting(&end);
    }

    /// Stops taking commands and refuses the sessions still waiting.
    fn refuse_waiting(&mut self, reason: &CloseReason) {
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let UpstreamCommand::Open { reply, .. } = command {
                let _ = reply.send(OpenReply::Refused(reason.clone()));
            }
        }
    }

    /// Opens the stream to the room's owner, retrying until the deadline.
    async fn connect(&self) -> Result<Connection, CloseReason> {
        let deadline = Instant::now() + self.config.owner_unreachable_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_connect().await {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    tracing::debug!(room = %self.room, %error, "connecting to room owner failed");
                }
            }
            if Instant::now() + backoff > deadline || self.cancel.is_cancelled() {
                return Err(CloseReason::new(
                    close::TRY_AGAIN_LATER,
                    "room owner unreachable",
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn try_connect(&self) -> Result<Connection, String> {
        let route = self.router.route(&self.room).map_err(|e| e.to_string())?;
        let (to_node, rx) = mpsc::channel(UPSTREAM_QUEUE);
        let attach = gateway_frame::Kind::Attach(pb::Attach {
            room: self.room.as_str().to_owned(),
            epoch: route.epoch,
            gateway_id: self.config.gateway_id.clone(),
        });
        to_node
            .try_send(pb::GatewayFrame { kind: Some(attach) })
            .map_err(|e| e.to_string())?;
        let mut client = RoomNodeClient::new(route.channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let mut from_node = client
            .open_room(ReceiverStream::new(rx))
            .await
            .map_err(|status| status.to_string())?
            .into_inner();
        match from_node.message().await.map_err(|s| s.to_string())? {
            Some(pb::NodeFrame {
                kind: Some(node_frame::Kind::Attached(_)),
            }) => Ok(Connection { to_node, from_node }),
            Some(pb::NodeFrame {
                kind: Some(node_frame::Kind::NotOwner(not_owner)),
            }) => Err(format!(
                "{} is not the owner at epoch {}",
                route.url, not_owner.epoch
            )),
            other => Err(format!("unexpected first frame {other:?}")),
        }
    }

    async fn handle_session_command(
        &mut self,
        command: UpstreamCommand,
        connection: &Connection,
    ) -> Result<(), UpstreamGone> {
        let frame = match command {
            UpstreamCommand::Open {
                session_id,
                grant,
                outbox,
                reply,
            } => {
                self.sessions.insert(session_id, outbox);
                let _ = reply.send(OpenReply::Opened);
                let permission = if grant.read_only {
                    pb::Permission::ReadOnly
                } else {
                    pb::Permission::ReadWrite
                };
                gateway_frame::Kind::OpenSession(pb::OpenSession {
                    session_id,
                    identity: grant.identity,
                    permission: permission as i32,
                })
            }
            UpstreamCommand::Client {
                session_id,
                payload,
                text,
            } => {
                if !self.sessions.contains_key(&session_id) {
                    return Ok(());
                }
                gateway_frame::Kind::ClientMessage(pb::ClientMessage {
                    session_id,
                    payload,
                    kind: frame_kind(text) as i32,
                })
            }
            UpstreamCommand::Close { session_id } => {
                if self.sessions.remove(&session_id).is_none() {
                    return Ok(());
                }
                gateway_frame::Kind::CloseSession(pb::CloseSession { session_id })
            }
        };
        connection
            .to_node
            .send(pb::GatewayFrame { kind: Some(frame) })
            .await
            .map_err(|_| UpstreamGone)
    }

    /// Routes one frame from the node; `Some` ends the stream.
    async fn handle_node_frame(
        &mut self,
        frame: pb::NodeFrame,
        connection: &Connection,
    ) -> Option<CloseReason> {
        let mut slow = Vec::new();
        match frame.kind? {
            node_frame::Kind::Deliver(deliver) => {
                let text = deliver.kind() == pb::FrameKind::Text;
                if let Some(session) = self.sessions.get(&deliver.session_id) {
                    let message = ToClient {
                        payload: deliver.payload,
                        text,
                    };
                    if session.push(message).is_err() {
                        slow.push(deliver.session_id);
                    }
                }
            }
            node_frame::Kind::Broadcast(broadcast) => {
                let text = broadcast.kind() == pb::FrameKind::Text;
                let except = broadcast.has_except.then_some(broadcast.except_session);
                for (&session_id, session) in &self.sessions {
                    if Some(session_id) == except {
                        continue;
                    }
                    let message = ToClient {
                        payload: broadcast.payload.clone(),
                        text,
                    };
                    if session.push(message).is_err() {
                        slow.push(session_id);
                    }
                }
            }
            node_frame::Kind::EndSession(end) => {
                if let Some(session) = self.sessions.remove(&end.session_id) {
                    let code = u16::try_from(end.close_code).unwrap_or(close::INTERNAL_ERROR);
                    session.close(CloseReason::new(code, end.reason));
                }
            }
            node_frame::Kind::NotOwner(not_owner) => {
                tracing::warn!(room = %self.room, epoch = not_owner.epoch, "room moved away from its node");
                return Some(CloseReason::new(close::TRY_AGAIN_LATER, "room moved"));
            }
            node_frame::Kind::Attached(_) => {}
        }
        for session_id in slow {
            if let Some(session) = self.sessions.remove(&session_id) {
                tracing::info!(room = %self.room, session = session_id, "client too slow; closing it");
                session.close(CloseReason::new(close::POLICY_VIOLATION, "client too slow"));
                let frame = gateway_frame::Kind::CloseSession(pb::CloseSession { session_id });
                if connection
                    .to_node
                    .send(pb::GatewayFrame { kind: Some(frame) })
                    .await
                    .is_err()
                {
                    return Some(CloseReason::new(
                        close::INTERNAL_ERROR,
                        "room stream failed",
                    ));
                }
            }
        }
        None
    }
}

fn frame_kind(text: bool) -> pb::FrameKind {
    if text {
        pb::FrameKind::Text
    } else {
        pb::FrameKind::Binary
    }
}
