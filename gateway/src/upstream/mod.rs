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
//!
//! This module owns the registry of rooms ([`Upstreams`]), a session's
//! handle on its room ([`UpstreamHandle`]) and the actor's state; the
//! actor's life across streams is in `actor`, one stream's relaying in
//! `relay`, reaching the owner in `connect`. Sessions reach the actor only
//! through its command channel, never its state; the actor writes to
//! client sockets only through [`ClientSocket`]. On shutdown the actor
//! closes its sessions with `shutdown_close_code` and ends; a panicking
//! actor drops its sessions' sockets, which then close.

mod actor;
mod connect;
mod recheck;
mod relay;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use partyline_proto::directory::{Directory, Live};
use partyline_proto::{close, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client_socket::ClientSocket;
use crate::config::GatewayConfig;
use crate::messages::{ClientFrame, CloseReason, SessionGrant};
use crate::router::Router;

/// Frames buffered from local sessions toward the room node.
const UPSTREAM_QUEUE: usize = 1024;

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
        frame: ClientFrame,
    },
    Close {
        session_id: u64,
        /// How the socket closed, for the room's lifecycle events.
        how: CloseReason,
    },
    /// A recheck's answer for one session.
    Rechecked {
        session_id: u64,
        verdict: recheck::Verdict,
    },
    /// The recheck in flight is done.
    RecheckDone,
}

/// A session's way to its room's upstream.
#[derive(Clone)]
pub(crate) struct UpstreamHandle {
    tx: mpsc::Sender<UpstreamCommand>,
}

/// The upstream is gone; the session should close.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("room upstream has ended")]
pub(crate) struct UpstreamGone;

impl UpstreamHandle {
    /// Forwards one client frame to the room node.
    pub(crate) async fn client_frame(
        &self,
        session_id: u64,
        frame: ClientFrame,
    ) -> Result<(), UpstreamGone> {
        let command = UpstreamCommand::Client { session_id, frame };
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

    /// Tells the room the session left, and how its socket closed.
    pub(crate) async fn close(&self, session_id: u64, how: CloseReason) {
        let _ = self
            .tx
            .send(UpstreamCommand::Close { session_id, how })
            .await;
    }
}

/// The gateway's upstream streams, by room.
#[derive(Clone)]
pub(crate) struct Upstreams {
    rooms: Directory<UpstreamHandle>,
    router: Router,
    config: Arc<GatewayConfig>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Upstreams {
    /// No streams yet.
    pub(crate) fn new(
        router: Router,
        config: Arc<GatewayConfig>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            rooms: Directory::new(),
            router,
            config,
            tracker,
            cancel,
        }
    }

    /// Opens a session in `room`, starting the room's stream if needed.
    /// Waits while the owner is being reached; `Err` carries the close the
    /// client gets when it cannot be.
    pub(crate) async fn open(
        &self,
        room: &RoomName,
        session_id: u64,
        grant: SessionGrant,
        socket: &Arc<ClientSocket>,
    ) -> Result<UpstreamHandle, CloseReason> {
        loop {
            let (handle, live) = self.get_or_spawn(room);
            let (reply_tx, reply_rx) = oneshot::channel();
            let command = UpstreamCommand::Open {
                session_id,
                grant: grant.clone(),
                socket: socket.clone(),
                reply: reply_tx,
            };
            // A closed channel or a `Retry` means the stream was lingering
            // out as we arrived: try again on a fresh one once it is gone.
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
            tokio::select! {
                () = live.exited() => {}
                () = self.cancel.cancelled() => {
                    return Err(CloseReason::new(
                        self.config.shutdown_close_code,
                        "gateway shutting down",
                    ))
                }
            }
        }
    }

    fn get_or_spawn(&self, room: &RoomName) -> (UpstreamHandle, Live) {
        self.rooms.get_or_spawn(room, |live| {
            let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
            let actor = UpstreamActor {
                room: room.clone(),
                config: self.config.clone(),
                router: self.router.clone(),
                cancel: self.cancel.clone(),
                me: tx.downgrade(),
                rx,
                sessions: HashMap::new(),
                recheck: recheck::RecheckState::default(),
            };
            let upstreams = self.clone();
            let (room, live) = (room.clone(), live.clone());
            self.tracker.spawn(async move {
                let upstreams_open = &crate::telemetry::metrics().upstreams;
                upstreams_open.add(1, &[]);
                actor.run().await;
                upstreams_open.add(-1, &[]);
                upstreams.rooms.exited(&room, &live);
            });
            UpstreamHandle { tx }
        })
    }
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

/// One room's upstream: the only code that touches its stream and its
/// sessions' table.
struct UpstreamActor {
    room: RoomName,
    config: Arc<GatewayConfig>,
    router: Router,
    cancel: CancellationToken,
    /// Its own command channel, for the recheck task's answers (weak: the
    /// channel must still close when every session's handle is gone).
    me: mpsc::WeakSender<UpstreamCommand>,
    rx: mpsc::Receiver<UpstreamCommand>,
    sessions: HashMap<u64, LocalSession>,
    /// The recheck in flight, if any.
    recheck: recheck::RecheckState,
}
