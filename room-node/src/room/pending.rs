//! What a batch produced and has not let out yet: the updates to append to
//! the log and the frames that may leave only after them (group commit:
//! one append per batch, so nothing a client sees from the server is
//! missing from the log), plus the server-API writes answered once logged.
//!
//! While the log is unreachable (or its disk full) the batch and its
//! frames are *held*: appends are retried on a timer ([`LOG_RETRY`]), not
//! on every batch, and writes are refused once the held updates reach the
//! room's hold buffer. When the log takes writes again the held batch is
//! logged and sent, and if writes were refused meanwhile every session is
//! asked for a resync (the refused edits are still in the clients).
//! [`PendingLog::commit`] decides; the actor sends what it lets out.

use partyline_proto::Epoch;
use std::time::Duration;

use bytes::Bytes;
use partyline_proto::pb::{self, node_frame};
use partyline_proto::RoomName;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handle::{ApplyError, LinkId};
use crate::storage::{RoomStorage, StorageError};

/// How often a room retries an unreachable update log.
pub(super) const LOG_RETRY: Duration = Duration::from_millis(250);

/// A frame waiting for the batch's log append.
pub(super) enum Out {
    /// To one link (a reply or an `EndSession`).
    Link(LinkId, pb::NodeFrame),
    /// To every link.
    All(pb::NodeFrame),
}

/// Where a room's updates are appended (a seam for the unit tests).
pub(super) trait UpdateLog {
    /// Appends a batch in one write.
    fn append(
        &mut self,
        updates: &[Bytes],
    ) -> impl std::future::Future<Output = Result<(), StorageError>>;
}

impl UpdateLog for RoomStorage {
    // Storage's own future, not one wrapping it: every room's future
    // holds it.
    fn append(
        &mut self,
        updates: &[Bytes],
    ) -> impl std::future::Future<Output = Result<(), StorageError>> {
        RoomStorage::append(self, updates)
    }
}

/// What [`PendingLog::commit`] let happen.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Commit {
    /// Everything held is logged: the outbox may leave.
    Logged {
        /// Log entries this commit appended.
        updates: u64,
        /// Their bytes.
        bytes: u64,
        /// Writes were refused while the log was down: ask every session
        /// for a resync before the outbox leaves.
        resync: bool,
    },
    /// The log is unreachable: the batch and its frames wait.
    Held,
    /// A newer owner claimed the slot at `epoch`: nothing of the batch is
    /// logged, sent or acknowledged; the room is to be released.
    Fenced {
        /// The newer epoch.
        epoch: Epoch,
    },
}

/// The batch's log entries, frames and server-API replies.
pub(super) struct PendingLog {
    /// How many held bytes make the room refuse writes while the log is
    /// unreachable.
    hold_limit: u64,
    updates: Vec<Bytes>,
    /// Bytes in `updates`.
    bytes: u64,
    outbox: Vec<Out>,
    /// Server-side updates of this batch, answered once it is logged.
    applied: Vec<oneshot::Sender<Result<(), ApplyError>>>,
    /// Set while the log refuses appends.
    down_since: Option<Instant>,
    /// When to try an unreachable log again.
    retry_at: Option<Instant>,
    /// Writes were refused while the log was down.
    refused_writes: bool,
}

impl PendingLog {
    /// Nothing pending; writes refused past `hold_limit` held bytes.
    pub(super) fn new(hold_limit: u64) -> Self {
        Self {
            hold_limit,
            updates: Vec::new(),
            bytes: 0,
            outbox: Vec::new(),
            applied: Vec::new(),
            down_since: None,
            retry_at: None,
            refused_writes: false,
        }
    }

    /// Queues log entries; returns their bytes.
    pub(super) fn log(&mut self, updates: Vec<Bytes>) -> u64 {
        let bytes = updates.iter().map(|u| u.len() as u64).sum::<u64>();
        self.bytes += bytes;
        self.updates.extend(updates);
        bytes
    }

    /// Queues a frame to leave after the batch is logged.
    pub(super) fn push(&mut self, out: Out) {
        self.outbox.push(out);
    }

    /// Queues a server-API reply, answered `Ok` once the batch is logged.
    pub(super) fn acknowledge_after(&mut self, reply: oneshot::Sender<Result<(), ApplyError>>) {
        self.applied.push(reply);
    }

    /// Whether every queued update is in the log.
    pub(super) fn all_logged(&self) -> bool {
        self.updates.is_empty()
    }

    /// Whether the log is unreachable (frames are held).
    #[cfg(test)]
    pub(super) fn holding(&self) -> bool {
        self.down_since.is_some()
    }

    /// Whether writes are refused: the log is unreachable and the hold
    /// buffer is full.
    pub(super) fn full(&self) -> bool {
        self.down_since.is_some() && self.bytes >= self.hold_limit
    }

    /// A write was refused because the hold buffer is full.
    pub(super) fn note_refused_write(&mut self) {
        self.refused_writes = true;
    }

    /// When to try the unreachable log again; `None` while it is reachable.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Appends the batch's updates to the log. While the log is
    /// unreachable only a retry (`retrying`, on [`Self::retry_at`]) tries
    /// it; only a local disk error is fatal.
    pub(super) async fn commit(
        &mut self,
        log: &mut impl UpdateLog,
        room: &RoomName,
        retrying: bool,
    ) -> Result<Commit, StorageError> {
        if self.down_since.is_some() {
            if !retrying {
                return Ok(Commit::Held);
            }
            self.retry_at = Some(Instant::now() + LOG_RETRY);
        }
        if self.updates.is_empty() {
            if self.down_since.take().is_some() {
                self.retry_at = None;
                tracing::info!(room = %room, "update log reachable again");
            }
            return Ok(Commit::Logged {
                updates: 0,
                bytes: 0,
                resync: false,
            });
        }
        let started = Instant::now();
        let appended = log.append(&self.updates).await;
        let metrics = crate::telemetry::metrics();
        match &appended {
            Ok(()) => metrics
                .append_duration
                .record(started.elapsed().as_secs_f64(), &[]),
            Err(_) => metrics.append_failures.add(1, &[]),
        }
        match appended {
            Ok(()) => {
                let updates = self.updates.len() as u64;
                let bytes = std::mem::take(&mut self.bytes);
                self.updates.clear();
                let mut resync = false;
                if let Some(since) = self.down_since.take() {
                    self.retry_at = None;
                    tracing::info!(room = %room, down_for = ?since.elapsed(), "update log reachable again; held updates logged and sent");
                    // Refused writes are still in the clients' documents.
                    resync = std::mem::take(&mut self.refused_writes);
                }
                Ok(Commit::Logged {
                    updates,
                    bytes,
                    resync,
                })
            }
            Err(error @ (StorageError::Failed(_) | StorageError::Task(_))) => Err(error),
            Err(StorageError::Fenced { epoch }) => {
                // A newer owner took the slot while this node could not
                // hear of it. The batch is not logged, so nothing of it
                // is sent or acknowledged: hand the room over as for a
                // moved slot (its clients resend the batch there).
                tracing::warn!(room = %room, epoch = epoch.get(), "append fenced: a newer owner holds the room's slot; releasing the room without acknowledging the batch");
                Ok(Commit::Fenced { epoch })
            }
            Err(error @ StorageError::Unavailable(_)) => {
                if self.down_since.is_none() {
                    tracing::warn!(room = %room, %error, "update log unreachable (or its disk full); holding updates until it takes writes again");
                    self.down_since = Some(Instant::now());
                    self.retry_at = Some(Instant::now() + LOG_RETRY);
                }
                Ok(Commit::Held)
            }
        }
    }

    /// The frames let out by the last commit, to send.
    pub(super) fn take_outbox(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether frames wait to be sent.
    pub(super) fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Answers the server-API writes of the logged batch.
    pub(super) fn acknowledge(&mut self) {
        for reply in self.applied.drain(..) {
            let _ = reply.send(Ok(()));
        }
    }
}

/// A node frame of `kind`.
pub(super) fn frame(kind: node_frame::Kind) -> pb::NodeFrame {
    pb::NodeFrame { kind: Some(kind) }
}

/// A binary message for one session.
pub(super) fn deliver(session_id: u64, payload: Bytes) -> pb::NodeFrame {
    frame(node_frame::Kind::Deliver(pb::Deliver {
        session_id,
        payload,
        kind: pb::FrameKind::Binary as i32,
        more: false,
    }))
}

/// A binary message for every session of the room.
pub(super) fn broadcast(payload: Bytes) -> pb::NodeFrame {
    frame(node_frame::Kind::Broadcast(pb::Broadcast {
        payload,
        kind: pb::FrameKind::Binary as i32,
        has_except: false,
        except_session: 0,
        more: false,
    }))
}

/// A frame ending one session with `code` and `reason`.
pub(super) fn end_session(session_id: u64, code: u16, reason: impl Into<String>) -> pb::NodeFrame {
    frame(node_frame::Kind::EndSession(pb::EndSession {
        session_id,
        close_code: u32::from(code),
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log with an outage switch that counts its appends.
    #[derive(Default)]
    struct FakeLog {
        down: bool,
        fenced: Option<u64>,
        appends: usize,
        entries: Vec<Bytes>,
    }

    impl FakeLog {
        /// A log in an outage.
        fn down() -> Self {
            Self {
                down: true,
                ..Self::default()
            }
        }
    }

    impl UpdateLog for FakeLog {
        async fn append(&mut self, updates: &[Bytes]) -> Result<(), StorageError> {
            self.appends += 1;
            if let Some(epoch) = self.fenced {
                return Err(StorageError::Fenced {
                    epoch: Epoch::new(epoch),
                });
            }
            if self.down {
                return Err(StorageError::Unavailable("down".into()));
            }
            self.entries.extend_from_slice(updates);
            Ok(())
        }
    }

    fn pending(hold_limit: u64) -> PendingLog {
        PendingLog::new(hold_limit)
    }

    fn room() -> RoomName {
        RoomName::new("r").unwrap()
    }

    fn update(bytes: usize) -> Vec<Bytes> {
        vec![Bytes::from(vec![7; bytes])]
    }

    fn logged(updates: u64, bytes: u64, resync: bool) -> Commit {
        Commit::Logged {
            updates,
            bytes,
            resync,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_one_append_and_its_frames_leave_after_it() {
        let mut log = FakeLog::default();
        let mut pending = pending(1000);
        pending.log(update(10));
        pending.log(update(5));
        pending.push(Out::All(broadcast(Bytes::from_static(b"x"))));
        let (reply, answer) = oneshot::channel();
        pending.acknowledge_after(reply);
        assert!(!pending.all_logged());
        assert_eq!(
            pending.commit(&mut log, &room(), false).await.unwrap(),
            logged(2, 15, false)
        );
        assert_eq!(
            (log.appends, log.entries.len()),
            (1, 2),
            "one append per batch"
        );
        assert!(pending.all_logged());
        assert_eq!(pending.take_outbox().len(), 1);
        pending.acknowledge();
        assert!(answer.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_log_holds_the_batch_and_is_retried_on_its_timer_only() {
        let mut log = FakeLog::down();
        let mut pending = pending(1000);
        pending.log(update(10));
        pending.push(Out::All(broadcast(Bytes::from_static(b"x"))));
        assert_eq!(
            pending.commit(&mut log, &room(), false).await.unwrap(),
            Commit::Held
        );
        assert!(pending.holding());
        assert_eq!(pending.retry_at(), Some(Instant::now() + LOG_RETRY));
        // Later batches queue behind it without touching the log.
        pending.log(update(10));
        assert_eq!(
            pending.commit(&mut log, &room(), false).await.unwrap(),
            Commit::Held
        );
        assert_eq!(log.appends, 1, "only the timer retries the log");
        tokio::time::advance(LOG_RETRY).await;
        assert_eq!(
            pending.commit(&mut log, &room(), true).await.unwrap(),
            Commit::Held
        );
        assert_eq!(log.appends, 2);
        assert_eq!(
            pending.retry_at(),
            Some(Instant::now() + LOG_RETRY),
            "timer rearmed"
        );
        log.down = false;
        tokio::time::advance(LOG_RETRY).await;
        assert_eq!(
            pending.commit(&mut log, &room(), true).await.unwrap(),
            logged(2, 20, false)
        );
        assert!(!pending.holding());
        assert_eq!(pending.retry_at(), None);
        assert_eq!(log.entries.len(), 2, "everything held is logged");
        assert_eq!(pending.take_outbox().len(), 1, "and the held frames leave");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_are_refused_once_the_hold_is_full_and_resynced_after() {
        let mut log = FakeLog::down();
        let mut pending = pending(100);
        pending.log(update(60));
        assert!(!pending.full(), "a reachable log refuses nothing");
        assert_eq!(
            pending.commit(&mut log, &room(), false).await.unwrap(),
            Commit::Held
        );
        assert!(!pending.full(), "60 of 100 bytes held");
        pending.log(update(40));
        assert!(pending.full(), "100 of 100 bytes held");
        pending.note_refused_write();
        log.down = false;
        assert_eq!(
            pending.commit(&mut log, &room(), true).await.unwrap(),
            logged(2, 100, true)
        );
        assert!(!pending.full());
        // The resync is asked for once.
        log.down = true;
        pending.log(update(1));
        assert_eq!(
            pending.commit(&mut log, &room(), false).await.unwrap(),
            Commit::Held
        );
        log.down = false;
        assert_eq!(
            pending.commit(&mut log, &room(), true).await.unwrap(),
            logged(1, 1, false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_append_lets_nothing_out() {
        let mut log = FakeLog {
            fenced: Some(9),
            ..FakeLog::default()
        };
        let mut pending = pending(100);
        pending.log(update(5));
        pending.push(Out::All(broadcast(Bytes::from_static(b"x"))));
        assert_eq!(
            pending.commit(&mut log, &room(), false).await.unwrap(),
            Commit::Fenced {
                epoch: Epoch::new(9)
            }
        );
        assert!(!pending.all_logged(), "the batch is not logged");
        assert!(!pending.holding(), "not an outage: nothing is retried");
    }
}
