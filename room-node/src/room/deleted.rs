//! A deleted room's stand-in. A load that finds the room's tombstone reads
//! nothing else and runs this instead of the room actor: every session a
//! gateway opens is ended with 4404 "room deleted" (stock y-websocket 3
//! then stops reconnecting), `Restore` takes the tombstone away, `Delete`
//! with `Purge` (or `Expired` once the retention ended) removes the data
//! for good. Other server-API commands are dropped unanswered; the
//! registry sees the handle marked deleted and answers "room deleted".
//! It holds the room's storage and lock like the actor, so restores and
//! purges are fenced as every other write is.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use partyline_proto::pb::{self, node_frame};
use partyline_proto::{close, Epoch, RoomName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handle::{DeleteHow, Deleted, ExitReason, LinkInbound, LinkSender, RoomCommand};
use crate::config::RoomNodeConfig;
use crate::storage::{self, RoomStorage, Tombstone};

/// Why a deleted room refuses its sessions.
const REASON: &str = "room deleted";

/// Serves a deleted room until it is restored, purged, idle or moved.
pub(super) async fn serve(
    loaded: storage::Loaded,
    tombstone: Tombstone,
    room: RoomName,
    config: Arc<RoomNodeConfig>,
    epoch: Epoch,
    cancel: CancellationToken,
    mut rx: mpsc::Receiver<RoomCommand>,
) -> ExitReason {
    let storage::Loaded {
        mut storage,
        lock: _lock,
        ..
    } = loaded;
    // Refused links end with the stand-in: a restored room's gateways
    // then attach to the real one.
    let links = cancel.child_token();
    let _end_links = links.clone().drop_guard();
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        let command = tokio::select! {
            () = cancel.cancelled() => return ExitReason::Refusing,
            () = &mut idle => return ExitReason::Refusing,
            command = rx.recv() => match command {
                Some(command) => command,
                None => return ExitReason::Refusing,
            },
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + config.idle_timeout);
        match command {
            RoomCommand::AttachLink {
                tx, inbound, reply, ..
            } => {
                let _ = reply.send(Ok(()));
                let node = config.node_id.to_string();
                let refusal = Refusal {
                    code: close::ROOM_DELETED,
                    reason: REASON,
                    metric: "room_deleted",
                };
                tokio::spawn(refuse_link(
                    tx,
                    inbound,
                    node,
                    epoch,
                    links.clone(),
                    refusal,
                ));
            }
            RoomCommand::Restore { reply } => {
                let result = storage.restore(tombstone).await;
                let restored = result.is_ok();
                if let Err(error) = &result {
                    tracing::warn!(room = %room, %error, "restoring the deleted room failed");
                }
                let _ = reply.send(result.map(|()| true).map_err(|e| e.to_string()));
                if restored {
                    tracing::info!(room = %room, "deleted room restored");
                    return ExitReason::Restored;
                }
            }
            RoomCommand::Delete { how, reply } => {
                let purge = match how {
                    DeleteHow::Purge => true,
                    DeleteHow::Expired => {
                        tombstone.expired(crate::unix_ms(std::time::SystemTime::now()))
                    }
                    DeleteHow::Tombstone => false,
                };
                if !purge {
                    // Deleted already: the same answer as the first time.
                    let kept = Deleted {
                        purge_at_ms: Some(tombstone.purge_at_ms),
                    };
                    let _ = reply.send(Ok(kept));
                    continue;
                }
                let storage = std::mem::replace(&mut storage, RoomStorage::ephemeral());
                let result = storage.delete(Some(tombstone)).await;
                match &result {
                    Ok(()) => tracing::info!(room = %room, how = ?how, "deleted room purged"),
                    Err(error) => {
                        tracing::error!(room = %room, %error, "purging the deleted room failed")
                    }
                }
                let done = result.is_ok();
                let purged = Deleted { purge_at_ms: None };
                let _ = reply.send(result.map(|()| purged).map_err(|e| e.to_string()));
                // Its storage handle is spent either way; a failed purge
                // is retried on a fresh load.
                return if done {
                    ExitReason::Deleted(how)
                } else {
                    ExitReason::Refusing
                };
            }
            RoomCommand::Release { .. } => return ExitReason::Refusing,
            // Dropped: the handle says the room is deleted.
            _ => {}
        }
    }
}

/// Marks `handle`'s room deleted, before any command is read.
pub(super) fn mark(deleted: &std::sync::atomic::AtomicBool) {
    deleted.store(true, Ordering::Release);
}

/// How every session of a refused link is ended.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
    /// The refusal's metric label.
    pub metric: &'static str,
}

/// Serves a stream for a room that takes no session (deleted, or allowed
/// by no policy): attached, then every session it opens is ended as
/// `refusal` says, until the stream or `cancel` ends.
pub async fn refuse_link(
    tx: LinkSender,
    mut inbound: LinkInbound,
    node_id: String,
    epoch: Epoch,
    cancel: CancellationToken,
    refusal: Refusal,
) {
    use tokio_stream::StreamExt;
    let attached = node_frame::Kind::Attached(pb::Attached {
        epoch: epoch.get(),
        node_id,
    });
    if tx
        .send(Ok(pb::NodeFrame {
            kind: Some(attached),
        }))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = inbound.next() => frame,
            _ = cancel.cancelled() => return,
        };
        let Some(Ok(frame)) = frame else { return };
        if let Some(pb::gateway_frame::Kind::OpenSession(open)) = frame.kind {
            crate::telemetry::refuse(refusal.metric);
            tracing::info!(
                session = open.session_id,
                reason = refusal.reason,
                "session refused"
            );
            let end = node_frame::Kind::EndSession(pb::EndSession {
                session_id: open.session_id,
                close_code: u32::from(refusal.code),
                reason: refusal.reason.to_owned(),
            });
            if tx
                .send(Ok(pb::NodeFrame { kind: Some(end) }))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
