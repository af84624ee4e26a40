//! A room's snapshots: [`SnapshotSchedule`] decides when one is due and
//! when a failed one is retried (plain data on the actor's clock, unit
//! tested); [`Snapshots`] runs them, one at a time on a task of its own so
//! a slow store never holds up the room, and writes the last one before
//! the room unloads. The log holds every update whatever happens here: a
//! snapshot only shortens the next load.

use partyline_proto::Epoch;
use std::time::{Duration, SystemTime};

use partyline_proto::RoomName;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::protocol::SyncRoom;
use crate::storage::{RoomStorage, StorageError, Version};

/// A version asked for through the server API: the next snapshot, with
/// this label, answered once it is stored.
pub(crate) struct Take {
    /// The version's label.
    pub(crate) label: Option<String>,
    /// The stored version, or why it was not stored.
    pub(crate) reply: oneshot::Sender<Result<Version, String>>,
}

/// First delay before retrying a failed snapshot; doubles up to
/// [`SNAPSHOT_RETRY_MAX`], jittered ([`crate::backoff`]).
const SNAPSHOT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest delay between snapshot retries.
const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long unloading (or a delete) waits for a snapshot; the log holds
/// every update anyway.
pub(super) const FINAL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(15);

/// Log growth since the last snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Growth {
    bytes: u64,
    updates: u64,
}

/// How a snapshot ended, as the schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    /// Stored.
    Written,
    /// A newer owner holds the room's slot: retrying cannot help.
    Fenced,
    /// Not stored; worth retrying.
    Failed,
}

/// When a room's next snapshot is due.
#[derive(Debug)]
pub(super) struct SnapshotSchedule {
    /// Log bytes since the last snapshot that make one due.
    log_bytes: u64,
    /// Log entries since the last snapshot that make one due.
    log_updates: u64,
    /// Growth no snapshot covers yet.
    since: Growth,
    /// Growth the running snapshot covers, given back if it fails.
    in_flight: Growth,
    /// Updates were logged since the last snapshot began.
    dirty: bool,
    /// After a failure: when to try again.
    retry_at: Option<Instant>,
    /// The retry delays.
    backoff: Backoff,
    /// The room's last session left: a snapshot trigger.
    emptied: bool,
    /// When this node last wrote a snapshot of the room.
    last: Option<SystemTime>,
}

impl SnapshotSchedule {
    /// A schedule taking a snapshot after `log_bytes` or `log_updates` of
    /// log growth (and on the actor's timer, and when the room empties).
    pub(super) fn new(log_bytes: u64, log_updates: u64) -> Self {
        Self {
            log_bytes,
            log_updates,
            since: Growth::default(),
            in_flight: Growth::default(),
            dirty: false,
            retry_at: None,
            backoff: Backoff::new(SNAPSHOT_RETRY_MIN, SNAPSHOT_RETRY_MAX),
            emptied: false,
            last: None,
        }
    }

    /// The same schedule with plain doubling retry delays (tests that
    /// check exact times).
    #[cfg(test)]
    fn without_jitter(mut self) -> Self {
        self.backoff = self.backoff.without_jitter();
        self
    }

    /// `updates` entries of `bytes` were appended to the log.
    pub(super) fn note_logged(&mut self, updates: u64, bytes: u64) {
        self.dirty = true;
        self.since.updates += updates;
        self.since.bytes += bytes;
    }

    /// The room's last session just left.
    pub(super) fn note_emptied(&mut self) {
        self.emptied = true;
    }

    /// Whether the log grew enough since the last snapshot for another.
    pub(super) fn due(&self) -> bool {
        self.since.bytes >= self.log_bytes || self.since.updates >= self.log_updates
    }

    /// Whether the room emptied since last asked (asking clears it).
    pub(super) fn take_emptied(&mut self) -> bool {
        std::mem::take(&mut self.emptied)
    }

    /// Begins a snapshot at `now` if one has anything to cover and no
    /// failure asked to wait; `false`: none now. The caller makes sure
    /// none is running and every update is in the log.
    pub(super) fn begin(&mut self, now: Instant) -> bool {
        if !self.dirty || self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        self.begin_now();
        true
    }

    /// Begins a snapshot whatever the schedule says (a version asked for
    /// through the API).
    fn begin_now(&mut self) {
        self.dirty = false;
        self.in_flight = std::mem::take(&mut self.since);
    }

    /// Books the running snapshot's end at `now`; after a failure, returns
    /// when to retry (the delay doubles from 1 s up to 30 s, jittered, and
    /// the room stays dirty).
    pub(super) fn finished(&mut self, finished: Finished, now: Instant) -> Option<Instant> {
        let covered = std::mem::take(&mut self.in_flight);
        match finished {
            // The map will move the room; its new owner reads the log.
            Finished::Fenced => None,
            Finished::Written => {
                self.last = Some(SystemTime::now());
                self.retry_at = None;
                self.backoff.reset();
                None
            }
            Finished::Failed => {
                self.dirty = true;
                self.since.bytes += covered.bytes;
                self.since.updates += covered.updates;
                let retry_at = now + self.backoff.next_pause();
                self.retry_at = Some(retry_at);
                Some(retry_at)
            }
        }
    }

    /// The last snapshot, written outside [`Self::begin`] at unload.
    fn wrote_last(&mut self) {
        self.dirty = false;
        self.last = Some(SystemTime::now());
    }

    /// When a failed snapshot is retried, if one failed.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// When this node last wrote a snapshot of the room.
    pub(super) fn last(&self) -> Option<SystemTime> {
        self.last
    }

    /// Log entries no finished snapshot covers.
    pub(super) fn updates_since(&self) -> u64 {
        self.since.updates + self.in_flight.updates
    }
}

/// A room's snapshot schedule and the snapshot being written.
pub(super) struct Snapshots {
    /// The room, for the log lines.
    room: RoomName,
    /// The slot-map epoch the room's snapshots are written at.
    epoch: Epoch,
    /// The rules.
    pub(super) schedule: SnapshotSchedule,
    /// The snapshot being written, on its own task.
    task: Option<JoinHandle<Result<(), StorageError>>>,
    /// Versions asked for, each waiting for a snapshot of its own.
    takes: Vec<Take>,
}

impl Snapshots {
    /// No snapshot running; see [`SnapshotSchedule::new`].
    pub(super) fn new(room: RoomName, epoch: Epoch, log_bytes: u64, log_updates: u64) -> Self {
        Self {
            room,
            epoch,
            schedule: SnapshotSchedule::new(log_bytes, log_updates),
            task: None,
            takes: Vec::new(),
        }
    }

    /// Queues a version asked for through the API; the next snapshot
    /// stores it (see [`Self::start`]).
    pub(super) fn take(&mut self, take: Take) {
        self.takes.push(take);
    }

    /// Whether a version waits for its snapshot.
    pub(super) fn wants_version(&self) -> bool {
        !self.takes.is_empty()
    }

    /// Whether a snapshot is being written.
    pub(super) fn running(&self) -> bool {
        self.task.is_some()
    }

    /// Starts a snapshot on its own task when updates arrived since the
    /// last one (or a version was asked for), none is running, and no
    /// failure asked to wait. Never of state holding updates the log does
    /// not have (`logged`: it has all). Returns the state's exact size
    /// when one started.
    pub(super) fn start(
        &mut self,
        storage: &mut RoomStorage,
        sync: &SyncRoom,
        logged: bool,
    ) -> Option<u64> {
        if !logged || self.task.is_some() {
            return None;
        }
        let take = if self.takes.is_empty() {
            if !self.schedule.begin(Instant::now()) {
                return None;
            }
            None
        } else {
            self.schedule.begin_now();
            Some(self.takes.remove(0))
        };
        let state = sync.encode_state();
        let bytes = state.len() as u64;
        let label = take.as_ref().and_then(|take| take.label.clone());
        let work = storage.begin_snapshot(self.epoch, state, label);
        let version = work.version().cloned();
        let started = Instant::now();
        let room = self.room.clone();
        self.task = Some(tokio::spawn(async move {
            let result = work.write().await;
            record_snapshot(started, bytes, result.is_ok());
            tracing::debug!(room = %room, took = ?started.elapsed(), ok = result.is_ok(), "snapshot finished");
            if let Some(take) = take {
                let answer = match (&result, version) {
                    (Ok(()), Some(version)) => Ok(version),
                    (Ok(()), None) => Err("this room keeps no versions".to_owned()),
                    (Err(error), _) => Err(error.to_string()),
                };
                let _ = take.reply.send(answer);
            }
            result
        }));
        Some(bytes)
    }

    /// Waits for the running snapshot to end, or forever when none runs.
    /// Cancel safe: the task goes on, and is waited for again.
    pub(super) async fn wait(&mut self) -> Result<Result<(), StorageError>, JoinError> {
        let result = super::actor::wait_for(&mut self.task).await;
        self.task = None;
        result
    }

    /// Books a finished snapshot: a failure keeps the room dirty and
    /// retries with a doubling delay (the log was not trimmed).
    pub(super) fn finished(&mut self, result: Result<Result<(), StorageError>, JoinError>) {
        let room = &self.room;
        let result = result.unwrap_or_else(|join| Err(StorageError::from(join)));
        let now = Instant::now();
        match result {
            Err(error @ StorageError::Fenced { .. }) => {
                self.schedule.finished(Finished::Fenced, now);
                tracing::info!(room = %room, %error, "snapshot refused: a newer owner holds the room's slot (the log has every update)");
            }
            Ok(()) => {
                let was_retrying = self.schedule.retry_at().is_some();
                self.schedule.finished(Finished::Written, now);
                if was_retrying {
                    tracing::info!(room = %room, "snapshot succeeded again");
                }
            }
            Err(error) => {
                let retry_at = self.schedule.finished(Finished::Failed, now);
                let delay = retry_at.map(|at| at - now).unwrap_or_default();
                tracing::error!(room = %room, %error, retry_in = ?delay, "snapshot failed; the log still holds every update");
            }
        }
    }

    /// Waits up to `limit` for the running snapshot and books it; `false`
    /// when it is still running.
    pub(super) async fn finish_running(&mut self, limit: Duration) -> bool {
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        match tokio::time::timeout(limit, task).await {
            Ok(result) => {
                self.task = None;
                self.finished(result);
                true
            }
            Err(_) => false,
        }
    }

    /// Before unloading: waits for a running snapshot, then writes a last
    /// one if needed, each bounded by [`FINAL_SNAPSHOT_TIMEOUT`].
    pub(super) async fn write_last(
        &mut self,
        storage: &mut RoomStorage,
        sync: &SyncRoom,
        logged: bool,
    ) {
        let room = self.room.clone();
        if !self.finish_running(FINAL_SNAPSHOT_TIMEOUT).await {
            self.task = None;
            tracing::warn!(room = %room, "snapshot still running at unload; the log holds every update");
            return;
        }
        if !self.schedule.dirty || !logged {
            return;
        }
        let state = sync.encode_state();
        let bytes = state.len() as u64;
        let work = storage.begin_snapshot(self.epoch, state, None);
        let started = Instant::now();
        let written = tokio::time::timeout(FINAL_SNAPSHOT_TIMEOUT, work.write()).await;
        record_snapshot(started, bytes, matches!(written, Ok(Ok(()))));
        match written {
            Ok(Ok(())) => self.schedule.wrote_last(),
            Ok(Err(error @ StorageError::Fenced { .. })) => {
                // The usual end of a planned move on shared Redis storage:
                // the new owner loaded (and claimed the slot) first.
                tracing::info!(room = %room, %error, "last snapshot left to the room's new owner (the log has every update)")
            }
            Ok(Err(error)) => {
                tracing::error!(room = %room, %error, "last snapshot failed; the log still holds every update")
            }
            Err(_) => {
                tracing::warn!(room = %room, "last snapshot timed out; the log holds every update")
            }
        }
    }
}

/// Books one snapshot in the metrics.
fn record_snapshot(started: Instant, bytes: u64, ok: bool) {
    let metrics = crate::telemetry::metrics();
    metrics.snapshots.add(1, &crate::telemetry::result(ok));
    if ok {
        metrics
            .snapshot_duration
            .record(started.elapsed().as_secs_f64(), &[]);
        metrics.snapshot_bytes.record(bytes, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> SnapshotSchedule {
        SnapshotSchedule::new(1000, 10).without_jitter()
    }

    #[tokio::test(start_paused = true)]
    async fn due_after_enough_log_bytes_or_entries() {
        let mut by_bytes = schedule();
        by_bytes.note_logged(1, 999);
        assert!(!by_bytes.due());
        by_bytes.note_logged(1, 1);
        assert!(by_bytes.due(), "1000 bytes make a snapshot due");
        let mut by_updates = schedule();
        by_updates.note_logged(9, 9);
        assert!(!by_updates.due());
        by_updates.note_logged(1, 1);
        assert!(by_updates.due(), "10 entries make a snapshot due");
        assert!(by_updates.begin(Instant::now()));
        assert!(!by_updates.due(), "a running snapshot covers its growth");
        assert_eq!(by_updates.updates_since(), 10, "until it is written");
        by_updates.finished(Finished::Written, Instant::now());
        assert_eq!(by_updates.updates_since(), 0);
        assert!(by_updates.last().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_room_with_new_updates_is_snapshotted() {
        let mut schedule = schedule();
        assert!(!schedule.begin(Instant::now()), "nothing logged");
        schedule.note_logged(1, 10);
        assert!(schedule.begin(Instant::now()));
        schedule.finished(Finished::Written, Instant::now());
        assert!(
            !schedule.begin(Instant::now()),
            "nothing since the last one"
        );
        // A room that emptied asks once.
        schedule.note_emptied();
        assert!(schedule.take_emptied());
        assert!(!schedule.take_emptied());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_waits_doubling_delays_then_covers_its_growth_again() {
        let mut schedule = schedule();
        schedule.note_logged(4, 40);
        let mut expected = Vec::new();
        let mut delays = Vec::new();
        for _ in 0..7 {
            let start = Instant::now();
            assert!(schedule.begin(start));
            let retry_at = schedule.finished(Finished::Failed, start).unwrap();
            assert_eq!(schedule.retry_at(), Some(retry_at));
            assert_eq!(schedule.updates_since(), 4, "the growth is given back");
            delays.push(retry_at - start);
            // Not before the retry time, even with new updates.
            schedule.note_logged(0, 0);
            tokio::time::advance(retry_at - start - Duration::from_millis(1)).await;
            assert!(
                !schedule.begin(Instant::now()),
                "begun before the retry time"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        for secs in [1, 2, 4, 8, 16, 30, 30] {
            expected.push(Duration::from_secs(secs));
        }
        assert_eq!(delays, expected);
        assert!(schedule.begin(Instant::now()));
        assert_eq!(schedule.finished(Finished::Written, Instant::now()), None);
        assert_eq!(schedule.retry_at(), None, "a success ends the retries");
        schedule.note_logged(1, 1);
        assert!(schedule.begin(Instant::now()));
        let start = Instant::now();
        assert_eq!(
            schedule.finished(Finished::Failed, start),
            Some(start + SNAPSHOT_RETRY_MIN),
            "and starts the delay over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_snapshot_is_not_retried() {
        let mut schedule = schedule();
        schedule.note_logged(3, 30);
        assert!(schedule.begin(Instant::now()));
        assert_eq!(schedule.finished(Finished::Fenced, Instant::now()), None);
        assert_eq!(schedule.retry_at(), None);
        assert!(!schedule.begin(Instant::now()), "nothing to retry");
        assert_eq!(schedule.updates_since(), 0);
        assert_eq!(
            schedule.last(),
            None,
            "a refused snapshot is not the last one"
        );
    }

    #[tokio::test]
    async fn a_version_asked_for_is_a_snapshot_even_of_a_clean_room() {
        use crate::config::RoomNodeConfig;
        use crate::storage::{NodeStorage, RoomFiles};
        let dir = tempfile::tempdir().unwrap();
        let config = RoomNodeConfig::new(partyline_proto::NodeId::new("n"), dir.path().to_owned());
        let room = RoomName::new("doc-take").unwrap();
        let loaded = NodeStorage::files(&config)
            .load(&config, &room, Epoch::new(1))
            .await
            .unwrap();
        let mut storage = loaded.storage;
        let sync = SyncRoom::new(loaded.doc);
        let mut snapshots = Snapshots::new(room.clone(), Epoch::new(1), u64::MAX, u64::MAX);
        assert_eq!(snapshots.start(&mut storage, &sync, true), None, "clean");

        let (reply, answer) = oneshot::channel();
        let label = Some("before the review".to_owned());
        snapshots.take(Take { label, reply });
        assert!(snapshots.wants_version());
        assert_eq!(
            snapshots.start(&mut storage, &sync, false),
            None,
            "waits for the log"
        );
        assert!(snapshots.start(&mut storage, &sync, true).is_some());
        assert!(!snapshots.wants_version());
        let version = answer.await.unwrap().unwrap();
        assert_eq!(version.label.as_deref(), Some("before the review"));
        let result = snapshots.wait().await;
        snapshots.finished(result);
        let listed = RoomFiles::versions(dir.path(), room.as_str()).unwrap();
        assert_eq!(listed, vec![version]);
    }
}
