//! One-off sessions on a room, for operators and backends rather than
//! browsers: read a room's whole state (export) or apply an update to it
//! (import), through the room's owner over the same gRPC stream gateways
//! use — so a live room's clients see an import at once and it is logged
//! like any edit.

use std::time::Duration;

use bytes::Bytes;
use partyline_proto::pb::{self, gateway_frame, node_frame};
use partyline_proto::SYNC_STEP1_EMPTY;

use crate::upstream::{open_room_stream, OpenError};
use tokio::sync::mpsc;
use tonic::Streaming;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

/// Session id of the one-off session within its own stream.
const SESSION: u64 = 1;

/// Why a one-off room session failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomApiError {
    /// The owner could not be reached or refused the stream.
    #[error("room node {url}: {message}")]
    Node {
        /// The node's gRPC URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The node does not own the room at its epoch (the map moved).
    #[error("{url} does not own the room at epoch {epoch}; retry")]
    NotOwner {
        /// The node's gRPC URL.
        url: String,
        /// The node's epoch.
        epoch: u64,
    },
    /// No answer in time.
    #[error("no answer from the room within {0:?}")]
    Timeout(Duration),
    /// The bytes given are not a Yjs update.
    #[error("not a Yjs update (v1): {0}")]
    BadUpdate(String),
    /// The room ended the session.
    #[error("room closed the session: {0}")]
    Ended(String),
}

/// A one-off session on `room` at its owner `url`.
struct OneOff {
    url: String,
    to_node: mpsc::Sender<pb::GatewayFrame>,
    from_node: Streaming<pb::NodeFrame>,
}

impl OneOff {
    async fn open(url: &str, room: &str, epoch: u64, id: &str) -> Result<Self, RoomApiError> {
        let node_error = |message: String| RoomApiError::Node {
            url: url.to_owned(),
            message,
        };
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| node_error(e.to_string()))?
            .connect()
            .await
            .map_err(|e| node_error(e.to_string()))?;
        let attach = pb::Attach {
            room: room.to_owned(),
            epoch,
            gateway_id: id.to_owned(),
        };
        let open = gateway_frame::Kind::OpenSession(pb::OpenSession {
            session_id: SESSION,
            identity: id.to_owned(),
            permission: pb::Permission::ReadWrite as i32,
        });
        match open_room_stream(channel, attach, vec![open], 16).await {
            Ok((to_node, from_node)) => Ok(Self {
                url: url.to_owned(),
                to_node,
                from_node,
            }),
            Err(OpenError::NotOwner(epoch)) => Err(RoomApiError::NotOwner {
                url: url.to_owned(),
                epoch,
            }),
            Err(OpenError::Failed(message)) => Err(node_error(message)),
        }
    }

    async fn send(&self, payload: Bytes) -> Result<(), RoomApiError> {
        let kind = gateway_frame::Kind::ClientMessage(pb::ClientMessage {
            session_id: SESSION,
            payload,
            kind: pb::FrameKind::Binary as i32,
        });
        self.to_node
            .send(pb::GatewayFrame { kind: Some(kind) })
            .await
            .map_err(|_| RoomApiError::Ended("stream closed".to_owned()))
    }

    /// The next y-sync message for this session (deliveries and
    /// broadcasts alike).
    async fn next_message(&mut self) -> Result<Message, RoomApiError> {
        loop {
            let frame = self
                .from_node
                .message()
                .await
                .map_err(|status| RoomApiError::Node {
                    url: self.url.clone(),
                    message: status.to_string(),
                })?
                .ok_or_else(|| RoomApiError::Ended("stream ended".to_owned()))?;
            let payload = match frame.kind {
                Some(node_frame::Kind::Deliver(deliver)) => deliver.payload,
                Some(node_frame::Kind::Broadcast(broadcast)) => broadcast.payload,
                Some(node_frame::Kind::EndSession(end)) => {
                    return Err(RoomApiError::Ended(end.reason))
                }
                Some(node_frame::Kind::Released(_)) => {
                    return Err(RoomApiError::Ended("the room moved; retry".to_owned()))
                }
                _ => continue,
            };
            if let Ok(message) = Message::decode_v1(&payload) {
                return Ok(message);
            }
        }
    }
}

/// The room's whole state as one Yjs update (v1), as `Y.applyUpdate` reads it.
pub async fn export(
    url: &str,
    room: &str,
    epoch: u64,
    timeout: Duration,
) -> Result<Vec<u8>, RoomApiError> {
    tokio::time::timeout(timeout, async {
        let mut session = OneOff::open(url, room, epoch, "admin-export").await?;
        session.send(Bytes::from_static(SYNC_STEP1_EMPTY)).await?;
        loop {
            if let Message::Sync(SyncMessage::SyncStep2(update)) = session.next_message().await? {
                return Ok(update);
            }
        }
    })
    .await
    .map_err(|_| RoomApiError::Timeout(timeout))?
}

/// Applies a Yjs update (v1) to the room; returns once the room has logged
/// and broadcast it (its echo came back).
pub async fn import(
    url: &str,
    room: &str,
    epoch: u64,
    update: Vec<u8>,
    timeout: Duration,
) -> Result<(), RoomApiError> {
    let decoded =
        yrs::Update::decode_v1(&update).map_err(|e| RoomApiError::BadUpdate(e.to_string()))?;
    // Nothing to apply, so the room would echo nothing.
    if decoded.is_empty() {
        return Ok(());
    }
    let message = Message::Sync(SyncMessage::Update(update.clone())).encode_v1();
    tokio::time::timeout(timeout, async {
        let mut session = OneOff::open(url, room, epoch, "admin-import").await?;
        session.send(message.into()).await?;
        loop {
            match session.next_message().await? {
                Message::Sync(SyncMessage::Update(echo)) if echo == update => return Ok(()),
                Message::Auth(Some(reason)) => return Err(RoomApiError::Ended(reason)),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| RoomApiError::Timeout(timeout))?
}
