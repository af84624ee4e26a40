//! The room actor: the loop that waits on the room's inputs and timers,
//! and the dispatch of each input to the parts that own its rules (see
//! the table in [`super`]). It owns the document ([`SyncRoom`]), storage
//! and the room's lock, and is the only code that touches them.
//!
//! A panic unwinds this task only: the registry logs it, and the links'
//! streams end, which closes this room's sessions and nothing else. On
//! shutdown, idle, release or delete the room writes its last snapshot and
//! state callback (bounded) before its lock is let go.

use partyline_proto::Epoch;
use std::sync::Arc;
use std::time::Duration;

use partyline_proto::pb::{self, gateway_frame, node_frame};
use partyline_proto::RoomName;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::awareness::AwarenessThrottle;
use super::callback::StateCallback;
use super::handle::{DeleteHow, Deleted, ExitReason, LinkId, RoomCommand, RoomInfo};
use super::links::{LinkEvent, Links};
use super::pending::{broadcast, deliver, frame, Commit, Out, PendingLog};
use super::snapshots::Snapshots;
use crate::config::{RoomNodeConfig, RoomPolicy};
use crate::protocol::SyncRoom;
use crate::storage::{LoadError, RoomLock, RoomStorage, StorageError};

/// How many inputs one batch handles before committing.
const MAX_BATCH: usize = 256;

/// What woke the actor.
enum Input {
    Command(RoomCommand),
    Link(LinkId, LinkEvent),
}

/// A live room: its document, storage and lock, and the parts holding
/// its rules. Fields are `pub(super)` for the files that continue this
/// `impl` by concern ([`super::messages`], [`super::ending`]) and for
/// [`super::load`], which builds it.
pub(super) struct RoomActor {
    pub(super) room: RoomName,
    pub(super) config: Arc<RoomNodeConfig>,
    pub(super) epoch: Epoch,
    pub(super) cancel: CancellationToken,
    pub(super) rx: mpsc::Receiver<RoomCommand>,
    pub(super) sync: SyncRoom,
    pub(super) storage: RoomStorage,
    /// Held until the actor is gone, after its last snapshot.
    pub(super) _lock: Option<RoomLock>,
    /// This room's limits.
    pub(super) policy: RoomPolicy,
    /// Set by `Release` (or a fenced append): the epoch the room's slot
    /// moved away at.
    pub(super) releasing: Option<Epoch>,
    /// Set by `Delete`: delete once the batch is committed.
    pub(super) deleting: Vec<(DeleteHow, oneshot::Sender<Result<Deleted, String>>)>,
    /// Document size estimate: state at load plus every update since.
    pub(super) doc_bytes: u64,
    /// Gateway links and their sessions.
    pub(super) links: Links,
    /// The batch's log entries and frames, held while the log is down.
    pub(super) pending: PendingLog,
    /// The snapshot schedule and the snapshot being written.
    pub(super) snapshots: Snapshots,
    /// Per-session awareness throttle (the room's policy).
    pub(super) awareness: AwarenessThrottle,
    /// The state callback's debounce and the callback in flight.
    pub(super) callback: StateCallback,
    /// Where lifecycle events go, when configured.
    pub(super) events: Option<Arc<crate::events::Events>>,
}

impl Drop for RoomActor {
    fn drop(&mut self) {
        crate::telemetry::metrics().rooms_loaded.add(-1, &[]);
    }
}

impl RoomActor {
    /// The loop: waits on inputs and timers, handles a batch, commits it.
    pub(super) async fn run(mut self) -> ExitReason {
        let mut snapshot_tick = tokio::time::interval(self.config.snapshot_interval);
        snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let idle_timeout = self.policy.idle_timeout.unwrap_or(self.config.idle_timeout);
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // Kept across turns, as `idle` is: a sleep made inside the
        // `select!` would grow every room's future by its size.
        let log_retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(log_retry);
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Deadlines live only through the select: whatever lives across
            // an await is in every room's future.
            let first = {
                let awareness_at = self.awareness.next_flush();
                let callback_at = self.callback.due_at();
                let log_retry_at = self.pending.retry_at();
                if let Some(at) = log_retry_at.filter(|&at| at != log_retry.deadline()) {
                    log_retry.as_mut().reset(at);
                }
                // Armed only when a snapshot may start: one waits for the
                // log to hold every update, and a past deadline armed
                // meanwhile would wake this loop without pause.
                let snapshot_retry_at = (!self.snapshots.running() && self.pending.all_logged())
                    .then(|| self.snapshots.schedule.retry_at())
                    .flatten();
                tokio::select! {
                    biased;
                    _ = &mut cancelled => {
                        self.rx.close();
                        self.sessions_ended(partyline_proto::close::GOING_AWAY, "server shutting down");
                        Box::pin(self.unload()).await;
                        return ExitReason::Shutdown;
                    }
                    // Before inputs: a busy room must still notice a finished
                    // snapshot, or the next one never starts.
                    result = self.snapshots.wait() => {
                        self.snapshots.finished(result);
                        if self.snapshots.schedule.due() || self.snapshots.wants_version() {
                            self.start_snapshot();
                        }
                        continue;
                    }
                    command = self.rx.recv() => match command {
                        Some(command) => Input::Command(command),
                        None => {
                            Box::pin(self.unload()).await;
                            return ExitReason::Idle;
                        }
                    },
                    (link, event) = self.links.next() => Input::Link(link, event),
                    _ = snapshot_tick.tick() => {
                        self.start_snapshot();
                        continue;
                    }
                    _ = sleep_until(snapshot_retry_at), if snapshot_retry_at.is_some() => {
                        self.start_snapshot();
                        continue;
                    }
                    _ = sleep_until(awareness_at), if awareness_at.is_some() => {
                        for payload in self.awareness.flush(Instant::now()) {
                            self.pending.push(Out::All(broadcast(payload)));
                        }
                        match self.commit_or_end(false).await {
                            Some(exit) => return exit,
                            None => continue,
                        }
                    }
                    // While the log is unreachable, appends are retried on
                    // this timer only, not on every batch.
                    _ = &mut log_retry, if log_retry_at.is_some() => {
                        match self.commit_or_end(true).await {
                            Some(exit) => return exit,
                            None => continue,
                        }
                    }
                    _ = &mut idle, if self.links.is_empty() => {
                        self.refuse_commands();
                        Box::pin(self.unload()).await;
                        return ExitReason::Idle;
                    }
                    () = self.callback.wait() => continue,
                    _ = sleep_until(callback_at), if callback_at.is_some() => {
                        self.callback.start(&self.room, &self.sync, self.epoch);
                        continue;
                    }
                }
            };
            let batch_started = Instant::now();
            self.handle(first);
            // Group commit: take whatever else is ready before the log write.
            let mut handled = 1;
            while handled < MAX_BATCH {
                if let Some((link, event)) = self.links.next_ready().await {
                    self.handle(Input::Link(link, event));
                } else if let Ok(command) = self.rx.try_recv() {
                    self.handle(Input::Command(command));
                } else {
                    break;
                }
                handled += 1;
            }
            if let Err(error) = self.commit(false).await {
                return self.failed(error);
            }
            if self.sync.diverged() {
                return self.failed(LoadError::Diverged);
            }
            crate::telemetry::metrics()
                .batch_duration
                .record(batch_started.elapsed().as_secs_f64(), &[]);
            if let Some(epoch) = self.releasing {
                return Box::pin(self.release(epoch)).await;
            }
            if !self.deleting.is_empty() {
                let replies = std::mem::take(&mut self.deleting);
                if let Some(exit) = Box::pin(self.delete(replies)).await {
                    return exit;
                }
            }
            if self.links.is_empty() {
                idle.as_mut().reset(Instant::now() + idle_timeout);
            }
            if self.snapshots.schedule.due()
                || self.snapshots.schedule.take_emptied()
                || self.snapshots.wants_version()
            {
                self.start_snapshot();
            }
            self.callback
                .start_if_due(&self.room, &self.sync, self.epoch);
        }
    }

    /// Hands one input to the part that owns it; nothing here waits.
    fn handle(&mut self, input: Input) {
        match input {
            Input::Command(RoomCommand::AttachLink {
                link,
                gateway,
                tx,
                inbound,
                reply,
            }) => {
                let attached = node_frame::Kind::Attached(pb::Attached {
                    epoch: self.epoch.get(),
                    node_id: self.config.node_id.to_string(),
                });
                self.pending.push(Out::Link(link, frame(attached)));
                self.links.attach(link, gateway, tx, inbound);
                let _ = reply.send(Ok(()));
            }
            Input::Command(RoomCommand::Release { epoch }) => self.releasing = Some(epoch),
            Input::Command(RoomCommand::Info { reply }) => {
                let _ = reply.send(RoomInfo {
                    sessions: self.links.sessions(),
                    gateways: self.links.len(),
                    doc_bytes: self.sync.encode_state().len() as u64,
                    last_snapshot: self.snapshots.schedule.last(),
                    updates_since_snapshot: self.snapshots.schedule.updates_since(),
                });
            }
            Input::Command(RoomCommand::State { reply }) => {
                let _ = reply.send(self.sync.encode_state());
            }
            Input::Command(RoomCommand::Apply { update, reply }) => self.apply(update, reply),
            Input::Command(RoomCommand::Sessions { reply }) => {
                let _ = reply.send(self.links.list());
            }
            Input::Command(RoomCommand::CloseUser { user, reply }) => {
                let _ = reply.send(self.close_user(&user));
            }
            Input::Command(RoomCommand::Recheck { reply }) => {
                let _ = reply.send(self.recheck());
            }
            Input::Command(RoomCommand::Message { message, reply }) => {
                let _ = reply.send(self.server_message(&message));
            }
            Input::Command(RoomCommand::TakeVersion { label, reply }) => {
                self.snapshots.take(super::snapshots::Take { label, reply });
            }
            // The owner's sweep found a tombstone gone since: restored.
            Input::Command(RoomCommand::Delete {
                how: DeleteHow::Expired,
                reply,
            }) => {
                let _ = reply.send(Err("the room is not deleted".to_owned()));
            }
            // Every delete of the batch gets the one delete's result.
            Input::Command(RoomCommand::Delete { how, reply }) => self.deleting.push((how, reply)),
            Input::Command(RoomCommand::Restore { reply }) => {
                let _ = reply.send(Ok(false));
            }
            #[cfg(test)]
            Input::Command(RoomCommand::Panic) => panic!("panic requested by a test"),
            Input::Link(link, LinkEvent::Frame(kind)) => self.handle_frame(link, kind),
            Input::Link(link, LinkEvent::Ended) => self.drop_link(link),
        }
    }

    /// One whole frame from a gateway link.
    fn handle_frame(&mut self, link_id: LinkId, kind: gateway_frame::Kind) {
        match kind {
            gateway_frame::Kind::OpenSession(open) => {
                let max = self.policy.max_sessions;
                match self.links.open_session(&self.room, link_id, &open, max) {
                    Ok(true) => {
                        self.session_opened(link_id, open.session_id);
                        for payload in self.sync.handshake() {
                            let greeting = deliver(open.session_id, payload);
                            self.pending.push(Out::Link(link_id, greeting));
                        }
                    }
                    Ok(false) => {}
                    Err(refusal) => self.pending.push(Out::Link(link_id, refusal)),
                }
            }
            gateway_frame::Kind::CloseSession(closed) => {
                let code = match u16::try_from(closed.close_code) {
                    Ok(0) | Err(_) => partyline_proto::close::ABNORMAL,
                    Ok(code) => code,
                };
                self.close_session(link_id, closed.session_id, code, &closed.reason)
            }
            gateway_frame::Kind::ClientMessage(message) => self.handle_message(link_id, message),
            gateway_frame::Kind::UpdateSession(update) => self.update_session(link_id, &update),
            gateway_frame::Kind::Attach(_) => {
                tracing::warn!(room = %self.room, link = link_id, "attach frame on an attached stream ignored");
            }
        }
    }

    /// Appends the batch's updates to the log, then sends its frames. When
    /// the log is unreachable the batch and its frames wait for the next
    /// try (nothing is acknowledged before it is logged); only a local disk
    /// error is fatal.
    async fn commit(&mut self, retrying: bool) -> Result<(), StorageError> {
        match self
            .pending
            .commit(&mut self.storage, &self.room, retrying)
            .await?
        {
            Commit::Held => return Ok(()),
            Commit::Fenced { epoch } => {
                self.releasing = Some(self.releasing.map_or(epoch, |e| e.max(epoch)));
                return Ok(());
            }
            Commit::Logged {
                updates,
                bytes,
                resync,
            } => {
                if updates > 0 {
                    self.callback.note_change(Instant::now());
                    self.snapshots.schedule.note_logged(updates, bytes);
                }
                if resync {
                    let step1 = self.sync.sync_step1();
                    self.pending.push(Out::All(broadcast(step1)));
                }
            }
        }
        // Dropping a slow link removes awareness, which queues more frames.
        while self.pending.has_outbox() {
            for link_id in self.links.send(self.pending.take_outbox()) {
                tracing::warn!(room = %self.room, link = link_id, "gateway link too slow or gone; dropping it");
                self.drop_link(link_id);
            }
        }
        self.pending.acknowledge();
        Ok(())
    }

    /// The room stops on a storage error, or when its document no longer
    /// matches its log: its sessions end with its links (reported, with
    /// the room, in lifecycle events), their gateways open it again, and
    /// it loads from storage.
    fn failed(&self, error: impl Into<LoadError>) -> ExitReason {
        if let Some(events) = &self.events {
            let reason = partyline_proto::close::INTERNAL_ERROR;
            self.sessions_ended(reason, "room failed");
            let data = serde_json::json!({ "reason": "failed" });
            events.emit("room.unloaded", self.room.as_str(), data);
        }
        let error = error.into();
        if matches!(error, LoadError::Diverged) {
            tracing::error!(room = %self.room, "a refused update left the document unlike its log; reloading the room");
        }
        ExitReason::Failed(error)
    }

    /// Commits outside a batch; `Some` when the room ends (a local disk
    /// error, or a fenced append releasing it).
    async fn commit_or_end(&mut self, retrying: bool) -> Option<ExitReason> {
        if let Err(error) = self.commit(retrying).await {
            return Some(self.failed(error));
        }
        let epoch = self.releasing?;
        Some(Box::pin(self.release(epoch)).await)
    }

    /// Starts a snapshot when one may start (see [`Snapshots::start`]).
    fn start_snapshot(&mut self) {
        let logged = self.pending.all_logged();
        let started = self.snapshots.start(&mut self.storage, &self.sync, logged);
        if let Some(bytes) = started {
            // Exact again (the running figure only adds update sizes, so
            // deletions and overwrites made it an overestimate).
            self.doc_bytes = bytes;
        }
    }
}

/// Sleeps until `at`; the `select!` arm using it is disabled when `None`.
async fn sleep_until(at: Option<Instant>) {
    tokio::time::sleep_until(at.unwrap_or_else(Instant::now)).await
}

/// Waits for a task, or forever when there is none.
pub(super) async fn wait_for<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
