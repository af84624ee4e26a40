//! Upstream streams: one gRPC `OpenRoom` stream per (gateway, room),
//! shared by every local client session of that room.
//!
//! An upstream actor owns the stream and the room's local sessions. It
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
use opentelemetry::KeyValue;
use partyline_proto::chunk::{split, Joiner, MAX_STREAM_MESSAGE, MAX_UNARY_MESSAGE};
use partyline_proto::pb::{self, gateway_frame, node_frame, room_node_client::RoomNodeClient};
use partyline_proto::{close, RoomName, SYNC_STEP1_EMPTY};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Streaming;

use crate::client_socket::{ClientSocket, Frame};
use crate::config::GatewayConfig;
use crate::router::Router;

/// Frames buffered from local sessions toward the room node.
const UPSTREAM_QUEUE: usize = 1024;
/// A stream that lived this long was serving: its failure starts a new
/// count of failures in a row.
const STABLE_STREAM: Duration = Duration::from_secs(10);
/// First pause before re-opening a room whose stream failed; doubles per
/// failure in a row up to [`REOPEN_BACKOFF_MAX`].
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause before re-opening a failed room.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A WebSocket close reason fits in 123 bytes.
const MAX_CLOSE_REASON: usize = 120;

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
        socket: Arc<ClientSocket>,
        reply: oneshot::Sender<OpenReply>,
    },
    Client {
        session_id: u64,
        payload: Bytes,
        text: bool,
        traceparent: String,
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
        traceparent: String,
    ) -> Result<(), UpstreamGone> {
        let command = UpstreamCommand::Client {
            session_id,
            payload,
            text,
            traceparent,
        };
        // Waiting for queue space is rare; its future is boxed so it does
        // not sit in every session's future.
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => Box::pin(self.tx.send(command))
                .await
                .map_err(|_| UpstreamGone),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(UpstreamGone),
        }
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
        socket: &Arc<ClientSocket>,
    ) -> Result<UpstreamHandle, CloseReason> {
        loop {
            let handle = self.get_or_spawn(room);
            let (reply_tx, reply_rx) = oneshot::channel();
            let command = UpstreamCommand::Open {
                session_id,
                grant: grant.clone(),
                socket: socket.clone(),
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
                return Err(CloseReason::new(
                    self.config.shutdown_close_code,
                    "gateway shutting down",
                ));
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
            let upstreams_open = &crate::telemetry::metrics().upstreams;
            upstreams_open.add(1, &[]);
            actor.run().await;
            upstreams_open.add(-1, &[]);
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
    /// The owner's URL, to notice when a new map moves the room.
    url: String,
}

/// Why opening the stream failed.
enum ConnectError {
    /// The node does not own the room at its epoch.
    NotOwner { url: String, epoch: u64 },
    /// The node refused this gateway's link secret.
    Unauthenticated { url: String },
    /// Unreachable, refused or broken.
    Failed(String),
}

/// A local session as the upstream keeps it: enough to re-open it on
/// another node without the client noticing.
struct LocalSession {
    socket: Arc<ClientSocket>,
    grant: SessionGrant,
    /// The client's last awareness message, re-sent after a move so the new
    /// owner knows the client's awareness (and removes it on close).
    awareness: Option<Bytes>,
}

/// How serving one stream ended.
enum StreamEnd {
    /// Close every session with this.
    Close(CloseReason),
    /// The room moves (or its node failed): re-open it on the owner at
    /// `min_epoch` or newer and send each session `resync` as its SyncStep1.
    /// `failed` says why, when the stream broke rather than moved.
    Move {
        min_epoch: u64,
        resync: Bytes,
        failed: Option<String>,
    },
    /// No sessions for `upstream_linger`.
    Idle,
}

struct UpstreamActor {
    room: RoomName,
    config: Arc<GatewayConfig>,
    router: Router,
    cancel: CancellationToken,
    rx: mpsc::Receiver<UpstreamCommand>,
    sessions: HashMap<u64, LocalSession>,
}

impl UpstreamActor {
    async fn run(mut self) {
        let mut min_epoch = 0;
        let mut resync: Option<Bytes> = None;
        // Streams that failed in a row, each soon after it opened.
        let mut failures = 0u32;
        loop {
            let connection = match self.connect(min_epoch).await {
                Ok(connection) => connection,
                Err(reason) => {
                    tracing::warn!(room = %self.room, reason = %reason.reason, "room owner unreachable");
                    self.close_all(&reason);
                    return;
                }
            };
            let opened = Instant::now();
            let end = match resync.take() {
                Some(resync) => match self.reopen_sessions(&connection, &resync).await {
                    Ok(()) => {
                        crate::telemetry::metrics().reroutes.add(1, &[]);
                        tracing::info!(room = %self.room, owner = %connection.url, sessions = self.sessions.len(), "room re-opened on its new owner");
                        self.serve(connection).await
                    }
                    Err(reason) => failed_stream(reason.reason),
                },
                None => self.serve(connection).await,
            };
            match end {
                StreamEnd::Close(reason) => {
                    self.close_all(&reason);
                    return;
                }
                StreamEnd::Idle => {
                    self.retire();
                    return;
                }
                StreamEnd::Move { .. } if !self.take_waiting_opens() => {
                    self.retire();
                    return;
                }
                StreamEnd::Move {
                    min_epoch: epoch,
                    resync: bytes,
                    failed,
                } => {
                    min_epoch = epoch;
                    resync = Some(bytes);
                    let Some(why) = failed else {
                        failures = 0;
                        continue;
                    };
                    failures = if opened.elapsed() < STABLE_STREAM {
                        failures + 1
                    } else {
                        1
                    };
                    if !self.back_off(failures, &why).await {
                        return;
                    }
                }
            }
        }
    }

    /// After a stream failure (`failures` quick ones in a row): waits
    /// before the next re-open, or gives the room up — closes its clients
    /// with 1011 — and returns `false`. Clients wait meanwhile (nothing is
    /// lost); a room that fails at once must not become a hot loop.
    async fn back_off(&mut self, failures: u32, why: &str) -> bool {
        crate::telemetry::metrics().stream_failures.add(1, &[]);
        if failures >= self.config.room_reopen_attempts {
            crate::telemetry::refuse("room_unservable");
            tracing::error!(room = %self.room, failures, reason = %why, "room stream keeps failing; closing its clients");
            let mut reason = format!("room cannot be served: {why}");
            truncate_at_char(&mut reason, MAX_CLOSE_REASON);
            self.close_all(&CloseReason::new(close::INTERNAL_ERROR, reason));
            return false;
        }
        let backoff = REOPEN_BACKOFF_MIN * 2u32.pow(failures.saturating_sub(1).min(5));
        tokio::select! {
            _ = tokio::time::sleep(backoff.min(REOPEN_BACKOFF_MAX)) => {}
            _ = self.cancel.cancelled() => {}
        }
        true
    }

    /// Takes the sessions that asked to open while the stream was ending,
    /// so they are re-opened with the rest rather than each starting a
    /// fresh stream (which would also forget this room's failures).
    /// Client frames waiting meanwhile are dropped: the re-sync after the
    /// re-open asks each client for everything the room lacks. `true` when
    /// the room has sessions.
    fn take_waiting_opens(&mut self) -> bool {
        while let Ok(command) = self.rx.try_recv() {
            match command {
                UpstreamCommand::Open {
                    session_id,
                    grant,
                    socket,
                    reply,
                } => self.admit(session_id, grant, socket, reply),
                UpstreamCommand::Close { session_id } => {
                    self.sessions.remove(&session_id);
                }
                UpstreamCommand::Client { .. } => {}
            }
        }
        !self.sessions.is_empty()
    }

    /// Keeps a newly opened session and tells its opener.
    fn admit(
        &mut self,
        session_id: u64,
        grant: SessionGrant,
        socket: Arc<ClientSocket>,
        reply: oneshot::Sender<OpenReply>,
    ) {
        self.sessions.insert(
            session_id,
            LocalSession {
                socket,
                grant,
                awareness: None,
            },
        );
        let _ = reply.send(OpenReply::Opened);
    }

    /// Ends quietly with no sessions: openers racing the exit get `Retry`
    /// and start a fresh stream.
    fn retire(&mut self) {
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let UpstreamCommand::Open { reply, .. } = command {
                let _ = reply.send(OpenReply::Retry);
            }
        }
    }

    /// Closes every session and refuses the ones still waiting.
    fn close_all(&mut self, reason: &CloseReason) {
        for (_, session) in self.sessions.drain() {
            session.socket.close(reason.clone());
        }
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let UpstreamCommand::Open { reply, .. } = command {
                let _ = reply.send(OpenReply::Refused(reason.clone()));
            }
        }
    }

    /// Relays frames both ways until the stream ends.
    async fn serve(&mut self, connection: Connection) -> StreamEnd {
        let Connection {
            to_node,
            mut from_node,
            url,
        } = connection;
        let linger = tokio::time::sleep(self.config.upstream_linger);
        tokio::pin!(linger);
        // Armed when a new map gives the room to another node; the old
        // owner's `Released` normally comes first.
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let mut maps = self.router.subscribe();
        maps.mark_unchanged();
        // The map may have moved the room while the stream was opening.
        let mut moving = self
            .router
            .owner_url(&self.room)
            .is_some_and(|owner| owner != url);
        if moving {
            grace
                .as_mut()
                .reset(Instant::now() + self.config.release_grace);
        }
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        // Messages over a chunk arrive in pieces (a large document's
        // SyncStep2); the client gets them whole.
        let mut joiner = Joiner::new(MAX_UNARY_MESSAGE);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    return StreamEnd::Close(CloseReason::new(self.config.shutdown_close_code, "gateway shutting down"));
                }
                frame = from_node.message() => match frame.map(|f| f.map(|f| joiner.push(f))) {
                    Ok(Some(Ok(Some(frame)))) => {
                        if let Some(end) = self.handle_node_frame(frame, &to_node).await {
                            return end;
                        }
                    }
                    Ok(Some(Ok(None))) => {}
                    Ok(Some(Err(error))) => {
                        tracing::warn!(room = %self.room, owner = %url, %error, "room stream broke the chunking rules; re-opening the room");
                        return failed_stream(error.to_string());
                    }
                    Ok(None) => {
                        tracing::warn!(room = %self.room, owner = %url, "room stream ended; re-opening the room");
                        return failed_stream("the room stream ended".to_owned());
                    }
                    Err(status) => {
                        tracing::warn!(room = %self.room, owner = %url, %status, "room stream failed; re-opening the room");
                        return failed_stream(status.message().to_owned());
                    }
                },
                command = self.rx.recv() => {
                    let Some(command) = command else {
                        return StreamEnd::Close(CloseReason::new(close::NORMAL, ""));
                    };
                    if self.handle_session_command(command, &to_node).await.is_err() {
                        return unplanned_move(0);
                    }
                    if self.sessions.is_empty() {
                        linger.as_mut().reset(Instant::now() + self.config.upstream_linger);
                    }
                }
                changed = maps.changed(), if !moving => {
                    if changed.is_err() {
                        moving = true;
                        continue;
                    }
                    if self.router.owner_url(&self.room).is_some_and(|owner| owner != url) {
                        moving = true;
                        grace.as_mut().reset(Instant::now() + self.config.release_grace);
                    }
                }
                _ = &mut grace, if moving => {
                    tracing::warn!(room = %self.room, owner = %url, "old owner did not release the room in time; re-opening it on the new owner");
                    return unplanned_move(self.router.epoch());
                }
                _ = &mut linger, if self.sessions.is_empty() => return StreamEnd::Idle,
            }
        }
    }

    /// Opens the stream to the room's owner at `min_epoch` or newer,
    /// retrying until `owner_unreachable_timeout`.
    async fn connect(&self, mut min_epoch: u64) -> Result<Connection, CloseReason> {
        let deadline = Instant::now() + self.config.owner_unreachable_timeout;
        let mut backoff = Duration::from_millis(20);
        let mut maps = self.router.subscribe();
        let mut told_unauthenticated = false;
        loop {
            if self.cancel.is_cancelled() {
                return Err(CloseReason::new(
                    self.config.shutdown_close_code,
                    "gateway shutting down",
                ));
            }
            if self.router.epoch() >= min_epoch {
                match self.try_connect().await {
                    Ok(connection) => return Ok(connection),
                    Err(ConnectError::NotOwner { url, epoch }) => {
                        tracing::debug!(room = %self.room, %url, epoch, "owner refused the room: not its slot at its epoch");
                        // A node ahead of us: wait for our map to catch up.
                        // A node behind us will catch up by itself.
                        if epoch > self.router.epoch() {
                            min_epoch = min_epoch.max(epoch);
                        }
                    }
                    Err(ConnectError::Unauthenticated { url }) => {
                        // Misconfiguration, not an outage: say it loudly,
                        // once per room and attempt.
                        if !std::mem::replace(&mut told_unauthenticated, true) {
                            tracing::error!(
                                room = %self.room,
                                %url,
                                "the room node refused this gateway's gRPC link secret \
                                 (check --grpc-secret-file on both)"
                            );
                        }
                    }
                    Err(ConnectError::Failed(error)) => {
                        tracing::debug!(room = %self.room, %error, "connecting to room owner failed");
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(CloseReason::new(
                    close::TRY_AGAIN_LATER,
                    "room owner unreachable",
                ));
            }
            // A new map ends the pause early: it may name a live owner.
            let pause = Instant::now() + backoff.min(deadline - Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(pause) => {}
                changed = maps.changed() => {
                    // No more maps will come: only the timer paces retries.
                    if changed.is_err() {
                        tokio::time::sleep_until(pause).await;
                    }
                }
                _ = self.cancel.cancelled() => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn try_connect(&self) -> Result<Connection, ConnectError> {
        let route = self
            .router
            .route(&self.room)
            .map_err(|e| ConnectError::Failed(e.to_string()))?;
        let attach = pb::Attach {
            room: self.room.as_str().to_owned(),
            epoch: route.epoch,
            gateway_id: self.config.gateway_id.clone(),
        };
        match open_room_stream(route.channel, attach, Vec::new(), UPSTREAM_QUEUE).await {
            Ok((to_node, from_node)) => Ok(Connection {
                to_node,
                from_node,
                url: route.url,
            }),
            Err(OpenError::NotOwner(epoch)) => Err(ConnectError::NotOwner {
                url: route.url,
                epoch,
            }),
            Err(OpenError::Unauthenticated) => {
                Err(ConnectError::Unauthenticated { url: route.url })
            }
            Err(OpenError::Failed(error)) => Err(ConnectError::Failed(error)),
        }
    }

    /// Re-opens every local session on a new stream: the node greets each
    /// one (SyncStep1 + awareness, which the client answers with what the
    /// node lacks), gets the client's last awareness back, and answers
    /// `resync` with what the client lacks.
    async fn reopen_sessions(
        &self,
        connection: &Connection,
        resync: &Bytes,
    ) -> Result<(), CloseReason> {
        for (&session_id, session) in &self.sessions {
            let mut frames = vec![open_session(session_id, &session.grant)];
            if let Some(awareness) = &session.awareness {
                frames.push(client_message(
                    session_id,
                    awareness.clone(),
                    false,
                    String::new(),
                ));
            }
            frames.push(client_message(
                session_id,
                resync.clone(),
                false,
                String::new(),
            ));
            for kind in frames {
                if connection
                    .to_node
                    .send(pb::GatewayFrame { kind: Some(kind) })
                    .await
                    .is_err()
                {
                    return Err(CloseReason::new(
                        close::INTERNAL_ERROR,
                        "room stream failed",
                    ));
                }
            }
        }
        Ok(())
    }

    async fn handle_session_command(
        &mut self,
        command: UpstreamCommand,
        to_node: &mpsc::Sender<pb::GatewayFrame>,
    ) -> Result<(), UpstreamGone> {
        let frame = match command {
            UpstreamCommand::Open {
                session_id,
                grant,
                socket,
                reply,
            } => {
                let frame = open_session(session_id, &grant);
                self.admit(session_id, grant, socket, reply);
                frame
            }
            UpstreamCommand::Client {
                session_id,
                payload,
                text,
                traceparent,
            } => {
                let Some(session) = self.sessions.get_mut(&session_id) else {
                    return Ok(());
                };
                // y-sync message type 1 is awareness. Copied: the payload
                // may share the socket's read buffer, which a kept slice
                // would pin for the life of the session.
                if !text && payload.first() == Some(&1) {
                    session.awareness = Some(Bytes::copy_from_slice(&payload));
                }
                client_message(session_id, payload, text, traceparent)
            }
            UpstreamCommand::Close { session_id } => {
                if self.sessions.remove(&session_id).is_none() {
                    return Ok(());
                }
                gateway_frame::Kind::CloseSession(pb::CloseSession { session_id })
            }
        };
        for piece in split(pb::GatewayFrame { kind: Some(frame) }) {
            to_node.send(piece).await.map_err(|_| UpstreamGone)?;
        }
        Ok(())
    }

    /// Routes one frame from the node; `Some` ends the stream.
    async fn handle_node_frame(
        &mut self,
        frame: pb::NodeFrame,
        to_node: &mpsc::Sender<pb::GatewayFrame>,
    ) -> Option<StreamEnd> {
        let mut slow = Vec::new();
        let metrics = crate::telemetry::metrics();
        match frame.kind? {
            node_frame::Kind::Deliver(deliver) => {
                let text = deliver.kind() == pb::FrameKind::Text;
                if let Some(session) = self.sessions.get(&deliver.session_id) {
                    if let Some(frame) = Frame::encode(&deliver.payload, text) {
                        let kind = crate::telemetry::frame_kind(&deliver.payload, text);
                        metrics.frames_out.add(1, &[KeyValue::new("kind", kind)]);
                        if session.socket.send(&frame).is_err() {
                            slow.push(deliver.session_id);
                        }
                    }
                }
            }
            node_frame::Kind::Broadcast(broadcast) => {
                let started = Instant::now();
                let text = broadcast.kind() == pb::FrameKind::Text;
                let except = broadcast.has_except.then_some(broadcast.except_session);
                // Encoded once: every client gets the same bytes, written
                // straight into its socket.
                let frame = Frame::encode(&broadcast.payload, text)?;
                let mut sent = 0;
                for (&session_id, session) in &self.sessions {
                    if Some(session_id) == except {
                        continue;
                    }
                    sent += 1;
                    if session.socket.send(&frame).is_err() {
                        slow.push(session_id);
                    }
                }
                let kind = crate::telemetry::frame_kind(&broadcast.payload, text);
                metrics.frames_out.add(sent, &[KeyValue::new("kind", kind)]);
                metrics.fanout.record(started.elapsed().as_secs_f64(), &[]);
            }
            node_frame::Kind::EndSession(end) => {
                if let Some(session) = self.sessions.remove(&end.session_id) {
                    let code = u16::try_from(end.close_code).unwrap_or(close::INTERNAL_ERROR);
                    session.socket.close(CloseReason::new(code, end.reason));
                }
            }
            node_frame::Kind::Released(released) => {
                tracing::debug!(room = %self.room, epoch = released.epoch, "room released by its old owner");
                return Some(StreamEnd::Move {
                    min_epoch: released.epoch,
                    resync: released.resync,
                    failed: None,
                });
            }
            node_frame::Kind::NotOwner(not_owner) => {
                tracing::info!(room = %self.room, epoch = not_owner.epoch, "room no longer on its node; re-opening it");
                return Some(unplanned_move(not_owner.epoch));
            }
            node_frame::Kind::Attached(_) => {}
        }
        for session_id in slow {
            if let Some(session) = self.sessions.remove(&session_id) {
                crate::telemetry::refuse("too_slow");
                tracing::info!(room = %self.room, session = session_id, "client too slow; closing it");
                session
                    .socket
                    .close(CloseReason::new(close::POLICY_VIOLATION, "client too slow"));
                let frame = gateway_frame::Kind::CloseSession(pb::CloseSession { session_id });
                if to_node
                    .send(pb::GatewayFrame { kind: Some(frame) })
                    .await
                    .is_err()
                {
                    return Some(unplanned_move(0));
                }
            }
        }
        None
    }
}

/// Why a room stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The node does not own the room at this epoch of its own.
    NotOwner(u64),
    /// The node refused the link secret.
    Unauthenticated,
    /// Unreachable, refused or broken.
    Failed(String),
}

/// Opens an `OpenRoom` stream on `channel`: `attach`, then `then` (e.g. a
/// session to open), and waits for the node's `Attached`. The one way any
/// gateway code reaches a room.
pub async fn open_room_stream(
    channel: partyline_proto::link::NodeChannel,
    attach: pb::Attach,
    then: Vec<gateway_frame::Kind>,
    queue: usize,
) -> Result<(mpsc::Sender<pb::GatewayFrame>, Streaming<pb::NodeFrame>), OpenError> {
    let (to_node, rx) = mpsc::channel(queue.max(1 + then.len()));
    for kind in std::iter::once(gateway_frame::Kind::Attach(attach)).chain(then) {
        to_node
            .try_send(pb::GatewayFrame { kind: Some(kind) })
            .map_err(|e| OpenError::Failed(e.to_string()))?;
    }
    let mut client = RoomNodeClient::new(channel)
        .max_decoding_message_size(MAX_STREAM_MESSAGE)
        .max_encoding_message_size(MAX_STREAM_MESSAGE);
    let mut from_node = client
        .open_room(ReceiverStream::new(rx))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated => OpenError::Unauthenticated,
            _ => OpenError::Failed(status.to_string()),
        })?
        .into_inner();
    match from_node
        .message()
        .await
        .map_err(|s| OpenError::Failed(s.to_string()))?
    {
        Some(pb::NodeFrame {
            kind: Some(node_frame::Kind::Attached(_)),
        }) => Ok((to_node, from_node)),
        Some(pb::NodeFrame {
            kind: Some(node_frame::Kind::NotOwner(not_owner)),
        }) => Err(OpenError::NotOwner(not_owner.epoch)),
        other => Err(OpenError::Failed(format!(
            "unexpected first frame {other:?}"
        ))),
    }
}

/// A move nobody announced (node died, stream broke, release timed out):
/// nothing tells what the clients have, so each asks for the whole document.
fn unplanned_move(min_epoch: u64) -> StreamEnd {
    StreamEnd::Move {
        min_epoch,
        resync: Bytes::from_static(SYNC_STEP1_EMPTY),
        failed: None,
    }
}

/// A stream that broke: re-opened like an unplanned move, with back-off,
/// and given up after `room_reopen_attempts` quick failures in a row.
fn failed_stream(why: String) -> StreamEnd {
    StreamEnd::Move {
        min_epoch: 0,
        resync: Bytes::from_static(SYNC_STEP1_EMPTY),
        failed: Some(why),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn open_session(session_id: u64, grant: &SessionGrant) -> gateway_frame::Kind {
    let permission = if grant.read_only {
        pb::Permission::ReadOnly
    } else {
        pb::Permission::ReadWrite
    };
    gateway_frame::Kind::OpenSession(pb::OpenSession {
        session_id,
        identity: grant.identity.clone(),
        permission: permission as i32,
    })
}

fn client_message(
    session_id: u64,
    payload: Bytes,
    text: bool,
    traceparent: String,
) -> gateway_frame::Kind {
    gateway_frame::Kind::ClientMessage(pb::ClientMessage {
        session_id,
        payload,
        kind: frame_kind(text) as i32,
        traceparent,
        more: false,
    })
}

fn frame_kind(text: bool) -> pb::FrameKind {
    if text {
        pb::FrameKind::Text
    } else {
        pb::FrameKind::Binary
    }
}
