//! How a room actor ends: released to a new owner, deleted, or unloaded
//! (idle or shutdown). Each stops taking commands (attachers that raced
//! the end get their stream back to retry on a fresh actor), tells its
//! links, and writes the last snapshot and state callback (bounded)
//! before the room's lock is let go with the actor.

use partyline_proto::Epoch;
use std::time::Duration;

use partyline_proto::close;
use partyline_proto::pb::{self, node_frame};
use tokio::sync::oneshot;

use super::actor::RoomActor;
use super::handle::{DeleteHow, Deleted, ExitReason, Rejected, RoomCommand};
use super::pending::{end_session, frame};
use super::snapshots::FINAL_SNAPSHOT_TIMEOUT;
use crate::storage::{RoomStorage, Tombstone};

impl RoomActor {
    /// Stops taking commands; attachers that raced us get their stream back
    /// and retry (on a fresh actor, or elsewhere when the room moved).
    pub(super) fn refuse_commands(&mut self) {
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let RoomCommand::AttachLink {
                tx, inbound, reply, ..
            } = command
            {
                let _ = reply.send(Err(Rejected { tx, inbound }));
            }
        }
    }

    /// Hands the room over after its slot moved: every link learns the
    /// epoch and the room's final state vector (after every frame already
    /// queued for it), its stream ends, and the state is snapshotted before
    /// the room's lock is let go.
    pub(super) async fn release(&mut self, epoch: Epoch) -> ExitReason {
        crate::telemetry::metrics().releases.add(1, &[]);
        self.refuse_commands();
        // Their gateways open them again on the new owner.
        self.sessions_ended(close::SERVICE_RESTART, "room moved to another node");
        let released = frame(node_frame::Kind::Released(pb::Released {
            epoch: epoch.get(),
            resync: self.sync.sync_step1(),
        }));
        for (link_id, link) in self.links.drain() {
            if link.tx.try_send(Ok(released.clone())).is_err() {
                tracing::debug!(room = %self.room, link = link_id, "link full; it will re-sync as after a failure");
            }
        }
        self.unload().await;
        tracing::debug!(room = %self.room, epoch = epoch.get(), "room released to its new owner");
        ExitReason::Released
    }

    /// Deletes the room: every session is ended with 4404 (after every
    /// frame already queued for it), a running snapshot is waited for so
    /// it cannot write after the delete, then the room is marked deleted
    /// with its data kept for `delete_retention` (first: a failure leaves
    /// the room as it was, sessions included), or its log and snapshots
    /// go (a purge, or no retention). `None`: refused, the room goes on.
    pub(super) async fn delete(
        &mut self,
        requests: Vec<(DeleteHow, oneshot::Sender<Result<Deleted, String>>)>,
    ) -> Option<ExitReason> {
        let refuse = |requests: Vec<(DeleteHow, oneshot::Sender<_>)>, why: String| {
            for (_, reply) in requests {
                let _ = reply.send(Err(why.clone()));
            }
        };
        // A snapshot still being written would register after the delete
        // (it is of this epoch, so not fenced): wait for it, or refuse.
        if !self.snapshots.finish_running(FINAL_SNAPSHOT_TIMEOUT).await {
            tracing::warn!(room = %self.room, "delete refused: a snapshot is still being written");
            let why = "a snapshot of the room is still being written; try again";
            refuse(requests, why.to_owned());
            return None;
        }
        let retention = self.config.delete_retention;
        let purge = requests.iter().any(|(how, _)| *how == DeleteHow::Purge)
            || retention.is_zero()
            || self.storage.is_ephemeral();
        let mut deleted = Deleted { purge_at_ms: None };
        if !purge {
            let tombstone = Tombstone::now(retention);
            if let Err(error) = self.storage.tombstone(tombstone).await {
                tracing::error!(room = %self.room, %error, "deleting the room failed; it goes on");
                refuse(requests, error.to_string());
                return None;
            }
            deleted.purge_at_ms = Some(tombstone.purge_at_ms);
        }
        self.refuse_commands();
        self.sessions_ended(close::ROOM_DELETED, "room deleted");
        // Every session is told, waiting a little for a full link: a
        // gateway that misses it would re-open the room and its clients
        // would upload their documents into the deleted room.
        let links: Vec<_> = self.links.drain().collect();
        for (_, link) in links {
            for &session_id in link.sessions.keys() {
                let end = end_session(session_id, close::ROOM_DELETED, "room deleted");
                let sent =
                    tokio::time::timeout(Duration::from_secs(1), link.tx.send(Ok(end))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::warn!(room = %self.room, session = session_id, "could not tell a session its room was deleted");
                }
            }
        }
        let result = if purge {
            let storage = std::mem::replace(&mut self.storage, RoomStorage::ephemeral());
            storage
                .delete(None)
                .await
                .map_err(|error| error.to_string())
        } else {
            Ok(())
        };
        match (&result, deleted.purge_at_ms) {
            (Ok(()), None) => tracing::info!(room = %self.room, "room deleted for good"),
            (Ok(()), Some(at)) => {
                tracing::info!(room = %self.room, purge_at_ms = at, "room deleted; restorable until it is purged")
            }
            (Err(error), _) => {
                tracing::error!(room = %self.room, %error, "deleting the room failed")
            }
        }
        for (_, reply) in requests {
            let _ = reply.send(result.clone().map(|()| deleted));
        }
        let how = if purge {
            DeleteHow::Purge
        } else {
            DeleteHow::Tombstone
        };
        Some(ExitReason::Deleted(how))
    }

    /// Before the room leaves memory: the last snapshot, and the state
    /// callback if changes are unsent (after a callback already in flight,
    /// whose state is older), each bounded.
    pub(super) async fn unload(&mut self) {
        let logged = self.pending.all_logged();
        (self.snapshots)
            .write_last(&mut self.storage, &self.sync, logged)
            .await;
        (self.callback)
            .finish(&self.room, &self.sync, self.epoch)
            .await;
    }
}
