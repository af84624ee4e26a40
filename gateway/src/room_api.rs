//! Server-side calls on rooms, for backends and operators rather than
//! browsers: the HTTP API ([`crate::http_api`]) and `partyline admin`.
//!
//! Each call is a unary RPC to the room's owner (`RoomInfo`, `RoomState`,
//! `ApplyUpdate`, `DeleteRoom`, `WarmRoom`, the sessions calls, the
//! versions' `ListVersions`, `GetVersion`, `TakeVersion`, `RestoreVersion`;
//! `ListRooms` to any node). The
//! owner applies an update like a client edit — logged, then broadcast to
//! every session — so a live room's clients see it at once. A node that no
//! longer owns the room answers with its epoch; [`RoomApi`] then waits for
//! a slot map at least that new and asks the new owner, as the upstream
//! streams do.

use std::time::Duration;

use bytes::Bytes;
use partyline_proto::link::NodeChannel;
use partyline_proto::pb::{self, room_node_client::RoomNodeClient};
use partyline_proto::{RoomName, DELETED_METADATA, EPOCH_METADATA};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::router::Router;

/// Pause between tries while a room's owner is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why a server-side call on a room failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomApiError {
    /// The room has no stored state and is not loaded.
    #[error("room not found")]
    NotFound,
    /// The room is deleted but restorable (`POST …/restore`).
    #[error("{0}")]
    Deleted(String),
    /// The request is wrong (a bad update, a bad room name).
    #[error("{0}")]
    BadRequest(String),
    /// The room's policy refuses it (document too large).
    #[error("{0}")]
    Refused(String),
    /// No room policy allows the room's name.
    #[error("{0}")]
    NotAllowed(String),
    /// The room's mode does not allow it (a version of a room that keeps
    /// none).
    #[error("{0}")]
    Conflict(String),
    /// The owner could not be reached, refused the call or failed.
    #[error("room node {url}: {message}")]
    Node {
        /// The node's gRPC URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// No owner answered in time (the map is moving or a node is down).
    #[error("no answer from the room's owner within {0:?}")]
    Timeout(Duration),
}

impl RoomApiError {
    fn from_status(url: &str, status: Status) -> Self {
        match status.code() {
            Code::NotFound if status.metadata().contains_key(DELETED_METADATA) => {
                Self::Deleted(status.message().to_owned())
            }
            Code::NotFound => Self::NotFound,
            Code::InvalidArgument => Self::BadRequest(status.message().to_owned()),
            Code::ResourceExhausted => Self::Refused(status.message().to_owned()),
            Code::PermissionDenied => Self::NotAllowed(status.message().to_owned()),
            // NOT_OWNER carries an epoch and never gets here.
            Code::FailedPrecondition => Self::Conflict(status.message().to_owned()),
            _ => Self::Node {
                url: url.to_owned(),
                message: status.message().to_owned(),
            },
        }
    }
}

/// The epoch a node sent with a NOT_OWNER answer.
fn not_owner_epoch(status: &Status) -> Option<u64> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    status
        .metadata()
        .get(EPOCH_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A call about `room` routed with the map at `epoch`.
fn room_request(room: &RoomName, epoch: u64) -> pb::RoomRequest {
    pb::RoomRequest {
        room: room.as_str().to_owned(),
        epoch,
    }
}

fn client(channel: NodeChannel) -> RoomNodeClient<NodeChannel> {
    partyline_proto::link::call_client(channel)
}

/// Server-side calls routed by the gateway's slot map.
#[derive(Clone)]
pub struct RoomApi {
    router: Router,
    timeout: Duration,
}

impl RoomApi {
    /// Calls routed with `router`, each given up after `timeout`.
    pub fn new(router: Router, timeout: Duration) -> Self {
        Self { router, timeout }
    }

    /// Runs `call` on `room`'s owner, re-routing on NOT_OWNER and retrying
    /// an unreachable owner until the timeout. Returns the answer and the
    /// owner's URL.
    async fn on_owner<T, F, Fut>(
        &self,
        room: &RoomName,
        call: F,
    ) -> Result<(T, String), RoomApiError>
    where
        F: Fn(RoomNodeClient<NodeChannel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut maps = self.router.subscribe();
        let mut min_epoch = 0;
        loop {
            let mut last_error = None;
            if self.router.epoch() >= min_epoch {
                let route = self.router.route(room).map_err(|e| RoomApiError::Node {
                    url: String::new(),
                    message: e.to_string(),
                })?;
                match tokio::time::timeout_at(deadline, call(client(route.channel), route.epoch))
                    .await
                {
                    Err(_) => return Err(RoomApiError::Timeout(self.timeout)),
                    Ok(Ok(answer)) => return Ok((answer, route.url)),
                    Ok(Err(status)) => match not_owner_epoch(&status) {
                        // A node ahead of our map: wait for the map.
                        Some(epoch) if epoch > self.router.epoch() => min_epoch = epoch,
                        // A node behind it catches up by itself.
                        Some(_) => {}
                        // Unreachable, or the room is (un)loading: retry.
                        None if status.code() == Code::Unavailable => {
                            last_error = Some(RoomApiError::from_status(&route.url, status));
                        }
                        None => return Err(RoomApiError::from_status(&route.url, status)),
                    },
                }
            }
            if Instant::now() >= deadline {
                return Err(last_error.unwrap_or(RoomApiError::Timeout(self.timeout)));
            }
            // A new map may name a live owner: it ends the pause early.
            let pause = (Instant::now() + RETRY_PAUSE).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(pause) => {}
                changed = maps.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(pause).await;
                    }
                }
            }
        }
    }

    /// The room's figures, and its owner's URL.
    pub async fn info(&self, room: &RoomName) -> Result<(pb::RoomInfoReply, String), RoomApiError> {
        self.on_owner(room, |mut node, epoch| async move {
            node.room_info(room_request(room, epoch))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// The room's state in `format` (one Yjs update v1, JSON of its
    /// top-level types, or ProseMirror JSON of its XML fragments), and its
    /// owner's URL.
    pub async fn state(
        &self,
        room: &RoomName,
        format: pb::StateFormat,
    ) -> Result<(Bytes, String), RoomApiError> {
        let (reply, url) = self
            .on_owner(room, |mut node, epoch| async move {
                let request = pb::RoomStateRequest {
                    room: room.as_str().to_owned(),
                    epoch,
                    format: format as i32,
                };
                node.room_state(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok((reply.state, url))
    }

    /// Applies a Yjs update v1; returns the owner's URL once the room
    /// logged it (and sent it to every session).
    pub async fn apply(&self, room: &RoomName, update: Bytes) -> Result<String, RoomApiError> {
        self.on_owner(room, |mut node, epoch| {
            let request = pb::ApplyUpdateRequest {
                room: room.as_str().to_owned(),
                epoch,
                update: update.clone(),
            };
            async move { node.apply_update(request).await.map(|_| ()) }
        })
        .await
        .map(|((), url)| url)
    }

    /// Closes the room's sessions and deletes it: kept restorable for the
    /// owner's retention, or at once for good with `purge`. `None` when
    /// there was nothing to delete; else when the kept data is purged
    /// (Unix ms; 0: purged already).
    pub async fn delete(&self, room: &RoomName, purge: bool) -> Result<Option<u64>, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                let request = pb::DeleteRoomRequest {
                    room: room.as_str().to_owned(),
                    epoch,
                    purge,
                };
                node.delete_room(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.existed.then_some(reply.purge_at_unix_ms))
    }

    /// Brings a deleted room back with everything it held.
    pub async fn restore(&self, room: &RoomName) -> Result<(), RoomApiError> {
        self.on_owner(room, |mut node, epoch| async move {
            node.restore_room(room_request(room, epoch)).await.map(drop)
        })
        .await
        .map(drop)
    }

    /// Loads the room on its owner; `true` when it was loaded already.
    pub async fn warm(&self, room: &RoomName) -> Result<(bool, String), RoomApiError> {
        let (reply, url) = self
            .on_owner(room, |mut node, epoch| async move {
                node.warm_room(room_request(room, epoch))
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok((reply.was_loaded, url))
    }

    /// The room's client sessions over every gateway (none when the room
    /// is not loaded).
    pub async fn sessions(&self, room: &RoomName) -> Result<Vec<pb::SessionInfo>, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                node.list_sessions(room_request(room, epoch))
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.sessions)
    }

    /// Closes `user`'s sessions in the room (4401 "access revoked");
    /// how many.
    pub async fn close_sessions(&self, room: &RoomName, user: &str) -> Result<u32, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                let request = pb::CloseSessionsRequest {
                    room: room.as_str().to_owned(),
                    epoch,
                    user: user.to_owned(),
                };
                node.close_sessions(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.closed)
    }

    /// Asks every gateway with sessions in the room to authorize them
    /// again; how many sessions that covers.
    pub async fn recheck_sessions(&self, room: &RoomName) -> Result<u32, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                node.recheck_sessions(room_request(room, epoch))
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.sessions)
    }

    /// Sends a y-partyserver custom message to every session of the room;
    /// how many sessions got it.
    pub async fn send_message(&self, room: &RoomName, message: &str) -> Result<u32, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                let request = pb::SendMessageRequest {
                    room: room.as_str().to_owned(),
                    epoch,
                    message: message.to_owned(),
                };
                node.send_message(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.sessions)
    }

    /// The room's stored versions, newest first.
    pub async fn versions(&self, room: &RoomName) -> Result<Vec<pb::VersionInfo>, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                node.list_versions(room_request(room, epoch))
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.versions)
    }

    /// One stored version of the room in `format` (as [`Self::state`]).
    pub async fn version(
        &self,
        room: &RoomName,
        id: &str,
        format: pb::StateFormat,
    ) -> Result<Bytes, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                let request = pb::GetVersionRequest {
                    room: room.as_str().to_owned(),
                    epoch,
                    id: id.to_owned(),
                    format: format as i32,
                };
                node.get_version(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok(reply.state)
    }

    /// Stores a snapshot of the room now as a version labelled `label`.
    pub async fn take_version(
        &self,
        room: &RoomName,
        label: Option<&str>,
    ) -> Result<pb::VersionInfo, RoomApiError> {
        let (reply, _) = self
            .on_owner(room, |mut node, epoch| async move {
                let request = pb::TakeVersionRequest {
                    room: room.as_str().to_owned(),
                    epoch,
                    label: label.map(str::to_owned),
                };
                node.take_version(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok(reply)
    }

    /// Makes the room's content equal to version `id`'s with one update,
    /// logged and sent to every session; returns once it is logged.
    pub async fn restore_version(&self, room: &RoomName, id: &str) -> Result<(), RoomApiError> {
        self.on_owner(room, |mut node, epoch| async move {
            let request = pb::RestoreVersionRequest {
                room: room.as_str().to_owned(),
                epoch,
                id: id.to_owned(),
            };
            node.restore_version(request).await.map(|_| ())
        })
        .await
        .map(|((), _)| ())
    }

    /// Rooms with stored state whose names start with `prefix`, after
    /// `after`, at most `limit`; and whether more follow. Any node answers
    /// for the whole (shared) storage.
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<String>, bool), RoomApiError> {
        // Any room name routes to some live node.
        let anchor = RoomName::new(if prefix.is_empty() { "-" } else { prefix })
            .map_err(|e| RoomApiError::BadRequest(e.to_string()))?;
        let (reply, _) = self
            .on_owner(&anchor, |mut node, _| async move {
                let request = pb::ListRoomsRequest {
                    prefix: prefix.to_owned(),
                    after: after.to_owned(),
                    limit,
                };
                node.list_rooms(request).await.map(|r| r.into_inner())
            })
            .await?;
        Ok((reply.rooms, reply.more))
    }
}
