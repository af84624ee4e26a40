//! How the rest of the node speaks to a room: [`RoomHandle`] and the
//! [`RoomCommand`]s it carries, the answers they get, and the
//! [`ExitReason`] an actor ends with. No logic lives here.

use partyline_proto::Epoch;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use partyline_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;

use crate::storage::LoadError;

/// Identifies one gateway stream within this node.
pub type LinkId = u64;

/// Frames toward one gateway stream.
pub type LinkSender = mpsc::Sender<Result<pb::NodeFrame, tonic::Status>>;

/// Frames from one gateway stream, as the service hands them over.
pub type LinkInbound = Pin<Box<dyn Stream<Item = Result<pb::GatewayFrame, tonic::Status>> + Send>>;

/// How long [`crate::registry::Registry::attach`] keeps retrying a room
/// that is unloading or failing to load.
pub const ATTACH_DEADLINE: Duration = Duration::from_secs(10);

/// What a room actor is asked to do.
pub enum RoomCommand {
    /// A gateway stream joins; the actor sends `Attached` on `tx`, reads
    /// `inbound` itself from then on, and answers `reply`. A room that is
    /// going away hands the stream back in the reply to retry elsewhere.
    AttachLink {
        /// The stream's id.
        link: LinkId,
        /// The gateway's id (from its `Attach`), for the sessions list.
        gateway: Arc<str>,
        /// Where the room's frames for this stream go.
        tx: LinkSender,
        /// What the gateway sends on this stream.
        inbound: LinkInbound,
        /// `Ok` once attached.
        reply: oneshot::Sender<Result<(), Rejected>>,
    },
    /// The room's slot moved to another node at `epoch`: tell every link
    /// (`Released`), write a snapshot and unload, so the new owner loads
    /// everything this node accepted.
    Release {
        /// The epoch that moved the slot away.
        epoch: Epoch,
    },
    /// Server API: the room's figures.
    Info {
        /// Where the answer goes.
        reply: oneshot::Sender<RoomInfo>,
    },
    /// Server API: the room's whole state as one Yjs update v1 (the
    /// service renders JSON from it, off the room's task).
    State {
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<u8>>,
    },
    /// Server API: applies a Yjs update v1 like a client edit (logged, then
    /// broadcast to every session); answered once it is in the log.
    Apply {
        /// The update.
        update: Vec<u8>,
        /// `Ok` once logged.
        reply: oneshot::Sender<Result<(), ApplyError>>,
    },
    /// Server API: ends every session (close 4404) and deletes the room
    /// as `how` says (keeping its data restorable for `delete_retention`,
    /// or for good), then unloads it.
    Delete {
        /// Tombstone, purge, or purge only if its retention ended.
        how: DeleteHow,
        /// `Ok` once deleted.
        reply: oneshot::Sender<Result<Deleted, String>>,
    },
    /// Server API: brings a deleted room back, with everything it held.
    Restore {
        /// `Ok(true)` once restored; `Ok(false)` when the room was not
        /// deleted.
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Server API: the room's sessions over every gateway.
    Sessions {
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<pb::SessionInfo>>,
    },
    /// Server API: closes every session of `user` with 4401 "access
    /// revoked"; answers how many.
    CloseUser {
        /// The user id, exactly.
        user: String,
        /// Where the count goes.
        reply: oneshot::Sender<usize>,
    },
    /// Server API: asks every gateway with sessions here to authorize them
    /// again; answers how many sessions that covers.
    Recheck {
        /// Where the count goes.
        reply: oneshot::Sender<usize>,
    },
    /// Server API: sends `message` to every session as a y-partyserver
    /// custom message; answers how many sessions that is.
    Message {
        /// What follows `__YPS:`.
        message: String,
        /// Where the count goes.
        reply: oneshot::Sender<usize>,
    },
    /// Server API: stores a snapshot of the room now as a version,
    /// labelled; answered once it is stored.
    TakeVersion {
        /// The label, if any.
        label: Option<String>,
        /// The stored version, or why it was not stored.
        reply: oneshot::Sender<Result<crate::storage::Version, String>>,
    },
    /// Makes the actor panic, to prove a panic stays inside its room.
    #[cfg(test)]
    Panic,
}

/// A room's figures for the server API.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    /// Client sessions, over all gateways.
    pub sessions: usize,
    /// Gateway streams attached.
    pub gateways: usize,
    /// Size of the state as one Yjs update v1.
    pub doc_bytes: u64,
    /// When this node last wrote a snapshot of the room, if it did.
    pub last_snapshot: Option<std::time::SystemTime>,
    /// Updates logged since the last snapshot.
    pub updates_since_snapshot: u64,
}

/// How a room is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteHow {
    /// Sessions refused (4404) and data kept for `delete_retention`,
    /// restorable (at once for good when the retention is zero).
    Tombstone,
    /// For good, at once (`DELETE …?purge=true`).
    Purge,
    /// For good, only if the room is deleted and its retention ended (the
    /// owner's sweep).
    Expired,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// When the kept data is purged (Unix ms); `None`: purged already.
    pub purge_at_ms: Option<u64>,
}

/// Why a server-side update was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The bytes are not a Yjs update v1.
    #[error("not a Yjs update (v1): {0}")]
    BadUpdate(String),
    /// The room's policy caps the document's size.
    #[error("document too large (max_doc_bytes)")]
    DocumentFull,
    /// The update log is unreachable and the room's hold buffer is full.
    #[error("storage unavailable")]
    StorageUnavailable,
    /// The room is ephemeral: it keeps no document.
    #[error("ephemeral room: document updates are not kept")]
    Ephemeral,
}

/// A link the room did not take, given back to retry on a fresh actor.
pub struct Rejected {
    /// The stream's outbound side.
    pub tx: LinkSender,
    /// The stream's inbound side.
    pub inbound: LinkInbound,
}

/// A cheap, cloneable way to reach a room actor.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    pub(super) tx: mpsc::Sender<RoomCommand>,
    /// Set once the actor found the room deleted: it then answers only
    /// attaches (refused with 4404), deletes and restores, and drops the
    /// other commands' replies.
    pub(super) deleted: Arc<AtomicBool>,
}

impl RoomHandle {
    /// Whether the room turned out to be deleted (see [`Self::deleted`]).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Sends a command, waiting for queue space; gives it back when the
    /// actor is gone.
    pub async fn send(&self, command: RoomCommand) -> Result<(), RoomCommand> {
        self.tx.send(command).await.map_err(|returned| returned.0)
    }
}

/// Why a room actor ended.
#[derive(Debug)]
pub enum ExitReason {
    /// No links for `idle_timeout`; snapshotted and unloaded.
    Idle,
    /// The process is shutting down; snapshotted.
    Shutdown,
    /// The slot moved to another node; links told, snapshotted.
    Released,
    /// Storage failed; the room stopped before acknowledging anything
    /// it could not persist.
    Failed(LoadError),
    /// Deleted through the server API (or purged by the owner's sweep).
    Deleted(DeleteHow),
    /// A deleted room brought back through the server API.
    Restored,
    /// A deleted room's stand-in ended (idle, shutdown, moved): the room
    /// was never loaded, so there is no event.
    Refusing,
}

impl ExitReason {
    /// The lifecycle event of this end (`room.unloaded`, `room.deleted`
    /// or `room.restored`) and its reason; `None` for a failure, which the
    /// actor reports itself when the room had loaded.
    pub fn event(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Idle => Some(("room.unloaded", "idle")),
            Self::Shutdown => Some(("room.unloaded", "shutdown")),
            Self::Released => Some(("room.unloaded", "moved")),
            Self::Deleted(DeleteHow::Tombstone) => Some(("room.deleted", "deleted")),
            Self::Deleted(DeleteHow::Purge) => Some(("room.deleted", "purged")),
            Self::Deleted(DeleteHow::Expired) => Some(("room.deleted", "expired")),
            Self::Restored => Some(("room.restored", "restored")),
            Self::Failed(_) | Self::Refusing => None,
        }
    }
}
