//! Reaching a room's owner: the `OpenRoom` stream's opening handshake
//! ([`open_room_stream`]: `Attach`, then the node's `Attached` or
//! `NotOwner`) and the actor's retry loop around it, which follows new slot
//! maps and gives up after `owner_unreachable_timeout`.
//!
//! Owns the retry pacing (jittered, ended early by a new map) and the
//! reading of a node's refusal. It keeps no session state and sends no
//! client frames: once a stream is open, `relay` serves it.

use std::time::Duration;

use partyline_proto::close;
use partyline_proto::pb::{self, gateway_frame, node_frame};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{UpstreamActor, UPSTREAM_QUEUE};
use crate::messages::CloseReason;

/// First pause between tries to reach a room's owner.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest pause between tries to reach a room's owner.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// An open gRPC stream to the room's owner.
pub(super) struct Connection {
    /// Frames toward the node (bounded: a full queue waits the sender).
    pub(super) to_node: mpsc::Sender<pb::GatewayFrame>,
    /// Frames from the node, possibly in chunks.
    pub(super) from_node: Streaming<pb::NodeFrame>,
    /// The owner's URL, to notice when a new map moves the room.
    pub(super) url: String,
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

impl UpstreamActor {
    /// Opens the stream to the room's owner at `min_epoch` or newer,
    /// retrying until `owner_unreachable_timeout`.
    pub(super) async fn connect(&self, mut min_epoch: u64) -> Result<Connection, CloseReason> {
        let deadline = Instant::now() + self.config.owner_unreachable_timeout;
        let mut pauses = partyline_proto::retry::jittered(CONNECT_BACKOFF_MIN, CONNECT_BACKOFF_MAX);
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
            let pause = pauses.next().unwrap_or(CONNECT_BACKOFF_MAX);
            let pause = Instant::now() + pause.min(deadline - Instant::now());
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
}

/// Why a room stream could not be opened.
#[derive(Debug)]
enum OpenError {
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
async fn open_room_stream(
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
    let mut client = partyline_proto::link::stream_client(channel);
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
