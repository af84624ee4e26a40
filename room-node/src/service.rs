//! The `RoomNode` gRPC service: accepts gateway streams, checks ownership
//! and hands each stream to its room actor, which reads it from then on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use partyline_proto::pb::{self, gateway_frame, room_node_server::RoomNode};
use partyline_proto::{RoomName, EPOCH_METADATA, MAX_SERVER_MESSAGE_BYTES};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::RoomMode;
use crate::ownership::Ownership;
use crate::registry::{AttachError, CallError, Registry};
use crate::room::{ApplyError, DeleteHow, RoomCommand};
use crate::storage::{valid_id, valid_label, Version, MAX_LABEL_BYTES};

/// Longest user id `CloseSessions` takes (ids are the authorizer's, a few
/// dozen bytes).
const MAX_USER_BYTES: usize = 1024;

/// How long a new stream may take to send its `Attach` frame.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most room names one `ListRooms` answer carries.
const LIST_LIMIT_MAX: usize = 1000;

fn room_name(room: String) -> Result<RoomName, Status> {
    RoomName::new(room).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A server-API failure as gRPC: NOT_OWNER is FAILED_PRECONDITION with the
/// node's epoch in the metadata.
fn call_status(error: CallError) -> Status {
    match error {
        CallError::NotOwner(not_owner) => {
            let mut status = Status::failed_precondition(error.to_string());
            if let Ok(value) = not_owner.epoch.to_string().parse() {
                status.metadata_mut().insert(EPOCH_METADATA, value);
            }
            status
        }
        CallError::NotFound(_) => Status::not_found(error.to_string()),
        CallError::NotAllowed(_) => Status::permission_denied(error.to_string()),
        CallError::Unavailable(..) => Status::unavailable(error.to_string()),
        CallError::Deleted(_) => {
            let mut status = Status::not_found(error.to_string());
            status.metadata_mut().insert(
                partyline_proto::DELETED_METADATA,
                "1".parse().expect("ascii"),
            );
            status
        }
    }
}

/// An [`ApplyError`] as gRPC.
fn apply_status(error: ApplyError) -> Status {
    match error {
        ApplyError::BadUpdate(_) => Status::invalid_argument(error.to_string()),
        ApplyError::DocumentFull => Status::resource_exhausted(error.to_string()),
        ApplyError::StorageUnavailable => Status::unavailable(error.to_string()),
        ApplyError::Ephemeral => Status::permission_denied(error.to_string()),
    }
}

/// A stored version as gRPC.
fn version_info(version: Version) -> pb::VersionInfo {
    pb::VersionInfo {
        id: version.name,
        taken_at_unix_ms: version.at_unix_ms,
        size: version.size,
        label: version.label,
    }
}

/// A version id from a request, checked.
fn version_id(id: &str) -> Result<&str, Status> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(Status::invalid_argument(format!(
            "bad version id {id:?}: take one from the room's version list"
        )))
    }
}

/// A room's state (one Yjs update v1) in `format`, rendered on the
/// blocking pool (a whole document: CPU work) if its formatting is within
/// `max_render_bytes`.
async fn render_state(
    renders: &crate::render::Renders,
    state: Vec<u8>,
    format: pb::StateFormat,
    max_render_bytes: u64,
) -> Result<Vec<u8>, Status> {
    use crate::render::JsonFormat;
    let format = match format {
        pb::StateFormat::UpdateV1 | pb::StateFormat::Unspecified => return Ok(state),
        pb::StateFormat::Json => JsonFormat::Plain,
        pb::StateFormat::Prosemirror => JsonFormat::Prosemirror,
    };
    renders
        .run(move || {
            crate::render::render_state(&state, format, max_render_bytes)
                .map(|json| json.to_string().into_bytes())
                .map_err(render_status)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

/// A render refused: too costly is the document's fault (413 at the
/// gateway); an unreadable state is ours.
fn render_status(error: crate::render::budget::RenderError) -> Status {
    match error {
        crate::render::budget::RenderError::TooCostly { .. } => {
            Status::resource_exhausted(error.to_string())
        }
        crate::render::budget::RenderError::Unreadable(_) => Status::internal(error.to_string()),
    }
}

/// The gRPC face of a room node.
pub struct RoomNodeService {
    registry: Registry,
    ownership: Ownership,
    link_queue: usize,
    next_link: AtomicU64,
}

impl RoomNodeService {
    /// A service serving the rooms `ownership` says are this node's.
    pub fn new(registry: Registry, ownership: Ownership, link_queue: usize) -> Self {
        Self {
            registry,
            ownership,
            link_queue,
            next_link: AtomicU64::new(1),
        }
    }
}

type NodeStream = ReceiverStream<Result<pb::NodeFrame, Status>>;

impl RoomNodeService {
    /// Asks `room`'s actor when the room is in memory; `None` when it is
    /// not (a room that is not loaded has no sessions: nothing is loaded to
    /// say so). A node that does not own the room says so either way.
    async fn call_if_loaded<T>(
        &self,
        room: &RoomName,
        command: impl Fn(tokio::sync::oneshot::Sender<T>) -> RoomCommand,
    ) -> Result<Option<T>, Status> {
        if !self.registry.is_loaded(room) {
            return match self.ownership.check(room) {
                Ok(_) => Ok(None),
                Err(not_owner) => Err(call_status(not_owner.into())),
            };
        }
        match self.registry.call(room, false, command).await {
            Ok(answer) => Ok(Some(answer)),
            Err(CallError::NotFound(_)) => Ok(None),
            Err(error) => Err(call_status(error)),
        }
    }

    /// [`Self::call_if_loaded`] for a command answering how many sessions
    /// it reached: none when the room is not loaded.
    async fn count_if_loaded(
        &self,
        room: &RoomName,
        command: impl Fn(tokio::sync::oneshot::Sender<usize>) -> RoomCommand,
    ) -> Result<u32, Status> {
        let count = self
            .call_if_loaded(room, command)
            .await?
            .unwrap_or_default();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

#[tonic::async_trait]
impl RoomNode for RoomNodeService {
    type OpenRoomStream = NodeStream;

    async fn open_room(
        &self,
        request: Request<Streaming<pb::GatewayFrame>>,
    ) -> Result<Response<NodeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(ATTACH_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no attach frame"))??;
        let Some(pb::GatewayFrame {
            kind: Some(gateway_frame::Kind::Attach(attach)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first frame must be attach"));
        };
        let room =
            RoomName::new(attach.room).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(self.link_queue);
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let gateway: Arc<str> = attach.gateway_id.as_str().into();
        match self
            .registry
            .attach(&room, link, &gateway, tx, Box::pin(inbound))
            .await
        {
            Ok(()) => {}
            // The refusal is already queued on the stream.
            Err(AttachError::NotOwner(_)) => return Ok(Response::new(ReceiverStream::new(rx))),
            Err(error) => return Err(Status::unavailable(error.to_string())),
        }
        tracing::debug!(room = %room, link, gateway = %attach.gateway_id, "gateway stream attached");
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn room_info(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RoomInfoReply>, Status> {
        let room = room_name(request.into_inner().room)?;
        let was_loaded = self.registry.is_loaded(&room);
        let info = self
            .registry
            .call(&room, false, |reply| RoomCommand::Info { reply })
            .await
            .map_err(call_status)?;
        let unix_ms = |at: std::time::SystemTime| {
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        Ok(Response::new(pb::RoomInfoReply {
            node_id: self.registry.node_id().to_string(),
            epoch: self.ownership.check(&room).unwrap_or_default().get(),
            loaded: was_loaded,
            sessions: info.sessions as u32,
            gateways: info.gateways as u32,
            doc_bytes: info.doc_bytes,
            last_snapshot_unix_ms: info.last_snapshot.map_or(0, unix_ms),
            updates_since_snapshot: info.updates_since_snapshot,
            mode: self.registry.mode_of(&room).as_str().to_owned(),
        }))
    }

    async fn room_state(
        &self,
        request: Request<pb::RoomStateRequest>,
    ) -> Result<Response<pb::RoomStateReply>, Status> {
        let request = request.into_inner();
        let format = request.format();
        let room = room_name(request.room)?;
        let state = self
            .registry
            .call(&room, false, |reply| RoomCommand::State { reply })
            .await
            .map_err(call_status)?;
        let limit = self.registry.max_render_bytes();
        let state = render_state(self.registry.renders(), state, format, limit).await?;
        Ok(Response::new(pb::RoomStateReply {
            state: state.into(),
        }))
    }

    async fn apply_update(
        &self,
        request: Request<pb::ApplyUpdateRequest>,
    ) -> Result<Response<pb::ApplyUpdateReply>, Status> {
        let request = request.into_inner();
        let room = room_name(request.room)?;
        let update = request.update.to_vec();
        self.registry
            .call(&room, true, |reply| RoomCommand::Apply {
                update: update.clone(),
                reply,
            })
            .await
            .map_err(call_status)?
            .map_err(apply_status)?;
        Ok(Response::new(pb::ApplyUpdateReply {}))
    }

    async fn delete_room(
        &self,
        request: Request<pb::DeleteRoomRequest>,
    ) -> Result<Response<pb::DeleteRoomReply>, Status> {
        let request = request.into_inner();
        let room = room_name(request.room)?;
        let how = if request.purge {
            DeleteHow::Purge
        } else {
            DeleteHow::Tombstone
        };
        match self
            .registry
            .call(&room, false, |reply| RoomCommand::Delete { how, reply })
            .await
        {
            Ok(Ok(deleted)) => Ok(Response::new(pb::DeleteRoomReply {
                existed: true,
                purge_at_unix_ms: deleted.purge_at_ms.unwrap_or(0),
            })),
            Ok(Err(error)) => Err(Status::unavailable(format!("delete failed: {error}"))),
            Err(CallError::NotFound(_)) => Ok(Response::new(pb::DeleteRoomReply {
                existed: false,
                purge_at_unix_ms: 0,
            })),
            Err(error) => Err(call_status(error)),
        }
    }

    async fn restore_room(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RestoreRoomReply>, Status> {
        let room = room_name(request.into_inner().room)?;
        let restored = self
            .registry
            .call(&room, false, |reply| RoomCommand::Restore { reply })
            .await
            .map_err(call_status)?
            .map_err(|error| Status::unavailable(format!("restore failed: {error}")))?;
        if !restored {
            return Err(Status::failed_precondition(format!(
                "room {room} is not deleted"
            )));
        }
        Ok(Response::new(pb::RestoreRoomReply {}))
    }

    async fn warm_room(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::WarmRoomReply>, Status> {
        let room = room_name(request.into_inner().room)?;
        let was_loaded = self.registry.is_loaded(&room);
        self.registry
            .call(&room, true, |reply| RoomCommand::Info { reply })
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::WarmRoomReply { was_loaded }))
    }

    async fn list_rooms(
        &self,
        request: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsReply>, Status> {
        let request = request.into_inner();
        let limit = (request.limit as usize).clamp(1, LIST_LIMIT_MAX);
        let (rooms, more) = self
            .registry
            .list_rooms(&request.prefix, &request.after, limit)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ListRoomsReply { rooms, more }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ListSessionsReply>, Status> {
        let room = room_name(request.into_inner().room)?;
        let sessions = self
            .call_if_loaded(&room, |reply| RoomCommand::Sessions { reply })
            .await?
            .unwrap_or_default();
        Ok(Response::new(pb::ListSessionsReply { sessions }))
    }

    async fn close_sessions(
        &self,
        request: Request<pb::CloseSessionsRequest>,
    ) -> Result<Response<pb::CloseSessionsReply>, Status> {
        let request = request.into_inner();
        let room = room_name(request.room)?;
        let user = request.user;
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(Status::invalid_argument(format!(
                "a user id of 1 to {MAX_USER_BYTES} bytes is needed"
            )));
        }
        let closed = self
            .count_if_loaded(&room, |reply| RoomCommand::CloseUser {
                user: user.clone(),
                reply,
            })
            .await?;
        Ok(Response::new(pb::CloseSessionsReply { closed }))
    }

    async fn recheck_sessions(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RecheckSessionsReply>, Status> {
        let room = room_name(request.into_inner().room)?;
        let sessions = self
            .count_if_loaded(&room, |reply| RoomCommand::Recheck { reply })
            .await?;
        Ok(Response::new(pb::RecheckSessionsReply { sessions }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageReply>, Status> {
        let request = request.into_inner();
        let room = room_name(request.room)?;
        let message = request.message;
        if message.len() > MAX_SERVER_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "a message of {} bytes; at most {MAX_SERVER_MESSAGE_BYTES}",
                message.len()
            )));
        }
        let sessions = self
            .count_if_loaded(&room, |reply| RoomCommand::Message {
                message: message.clone(),
                reply,
            })
            .await?;
        Ok(Response::new(pb::SendMessageReply { sessions }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ListVersionsReply>, Status> {
        let room = room_name(request.into_inner().room)?;
        let unavailable = |e: crate::storage::StorageError| Status::unavailable(e.to_string());
        let versions = self.registry.versions(&room).await.map_err(unavailable)?;
        if versions.is_empty()
            && !self.registry.is_loaded(&room)
            && !self.registry.has_state(&room).await.map_err(unavailable)?
        {
            return Err(Status::not_found(format!("room {room} not found")));
        }
        Ok(Response::new(pb::ListVersionsReply {
            versions: versions.into_iter().map(version_info).collect(),
        }))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::RoomStateReply>, Status> {
        let request = request.into_inner();
        let format = request.format();
        let room = room_name(request.room)?;
        let id = version_id(&request.id)?;
        let state = self
            .registry
            .fetch_version(&room, id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("room {room} has no version {id}")))?;
        Ok(Response::new(pb::RoomStateReply {
            state: render_state(
                self.registry.renders(),
                state,
                format,
                self.registry.max_render_bytes(),
            )
            .await?
            .into(),
        }))
    }

    async fn take_version(
        &self,
        request: Request<pb::TakeVersionRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        let request = request.into_inner();
        let room = room_name(request.room)?;
        let label = request.label.filter(|label| !label.is_empty());
        if label.as_deref().is_some_and(|label| !valid_label(label)) {
            return Err(Status::invalid_argument(format!(
                "a label is at most {MAX_LABEL_BYTES} bytes, without control characters"
            )));
        }
        let mode = self.registry.mode_of(&room);
        if mode != RoomMode::History {
            return Err(Status::failed_precondition(format!(
                "room {room} is in {} mode, which keeps no versions: give its names the history mode (--room-mode PREFIX=history)",
                mode.as_str()
            )));
        }
        let version = self
            .registry
            .call(&room, false, |reply| RoomCommand::TakeVersion {
                label: label.clone(),
                reply,
            })
            .await
            .map_err(call_status)?
            .map_err(|e| Status::unavailable(format!("version not stored: {e}")))?;
        Ok(Response::new(version_info(version)))
    }

    async fn restore_version(
        &self,
        request: Request<pb::RestoreVersionRequest>,
    ) -> Result<Response<pb::ApplyUpdateReply>, Status> {
        let request = request.into_inner();
        let room = room_name(request.room)?;
        let id = version_id(&request.id)?;
        // Asked first, so a node that does not own the room fetches nothing.
        self.ownership
            .check(&room)
            .map_err(|e| call_status(e.into()))?;
        let started = std::time::Instant::now();
        let version = self
            .registry
            .fetch_version(&room, id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("room {room} has no version {id}")))?;
        // The update is built off the room (a whole document's work, on
        // the blocking pool) against the room's state now; edits arriving
        // meanwhile stay, after the restore, as any concurrent edit would.
        let current = self
            .registry
            .call(&room, true, |reply| RoomCommand::State { reply })
            .await
            .map_err(call_status)?;
        let max_render_bytes = self.registry.max_render_bytes();
        let update = (self.registry.renders())
            .run(move || crate::restore::restore_update(&current, &version, max_render_bytes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                crate::restore::RestoreError::TooCostly(_) => {
                    Status::resource_exhausted(format!("version {id} not restored: {e}"))
                }
                _ => Status::failed_precondition(format!("version {id} not restored: {e}")),
            })?;
        self.registry
            .call(&room, true, |reply| RoomCommand::Apply {
                update: update.clone(),
                reply,
            })
            .await
            .map_err(call_status)?
            .map_err(apply_status)?;
        // From the call to the restore in the log (its frames leave with it).
        let took = started.elapsed();
        tracing::info!(room = %room, version = id, ?took, "version restored");
        Ok(Response::new(pb::ApplyUpdateReply {}))
    }
}
