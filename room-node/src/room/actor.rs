//! The room actor: one tokio task per live room, the only code that touches
//! the room's document, awareness, sessions and files.
//!
//! Reached through [`RoomHandle`] (a bounded command channel). Each gateway
//! stream attached to the room is a *link* carrying many client sessions;
//! a broadcast is sent once per link and the gateway fans it out.
//!
//! Commands are handled in batches: every command waiting in the channel is
//! handled, the updates they produced are appended to the log in one write
//! (group commit), and only then do the batch's frames leave — so nothing a
//! client sees from the server is missing from the log.
//!
//! The actor ends with an [`ExitReason`]: `Idle` after `idle_timeout`
//! without links (snapshot first), `Shutdown` on the process token
//! (snapshot first), `Failed` when storage fails. A panic unwinds the task
//! only; the registry logs it and the links' streams end, which closes that
//! room's sessions and nothing else.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use partyline_proto::pb::{self, gateway_frame, node_frame};
use partyline_proto::{close, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::{Stream, StreamExt, StreamMap};
use tokio_util::sync::CancellationToken;

use crate::config::RoomNodeConfig;
use crate::protocol::{Access, SessionKey, SyncRoom};
use crate::storage::{self, AppendError, LoadError, RoomStorage};
use crate::store::{RoomLock, SyncQueue};

/// Identifies one gateway stream within this node.
pub type LinkId = u64;

/// Frames toward one gateway stream.
pub type LinkSender = mpsc::Sender<Result<pb::NodeFrame, tonic::Status>>;

/// First delay before retrying a failed snapshot; doubles up to
/// [`SNAPSHOT_RETRY_MAX`].
const SNAPSHOT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest delay between snapshot retries.
const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long unloading waits for a last snapshot; the log holds every
/// update anyway.
const FINAL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a room retries an unreachable update log.
const LOG_RETRY: Duration = Duration::from_millis(250);

/// How many inputs one batch handles before committing.
const MAX_BATCH: usize = 256;

/// Frames from one gateway stream, as the service hands them over.
pub type LinkInbound = Pin<Box<dyn Stream<Item = Result<pb::GatewayFrame, tonic::Status>> + Send>>;

/// What a room actor is asked to do.
pub enum RoomCommand {
    /// A gateway stream joins; the actor sends `Attached` on `tx`, reads
    /// `inbound` itself from then on, and answers `reply`. A room that is
    /// going away hands the stream back in the reply to retry elsewhere.
    AttachLink {
        /// The stream's id.
        link: LinkId,
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
        epoch: u64,
    },
    /// Server API: the room's figures.
    Info {
        /// Where the answer goes.
        reply: oneshot::Sender<RoomInfo>,
    },
    /// Server API: the room's whole state as one Yjs update v1, or as JSON
    /// of its top-level types.
    State {
        /// JSON instead of the update.
        json: bool,
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
    /// Server API: ends every session (close 4404), deletes the room's log
    /// and snapshots, and unloads the room.
    Delete {
        /// `Ok` once deleted.
        reply: oneshot::Sender<Result<(), String>>,
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
}

/// A link the room did not take, given back to retry on a fresh actor.
pub struct Rejected {
    /// The stream's outbound side.
    pub tx: LinkSender,
    /// The stream's inbound side.
    pub inbound: LinkInbound,
}

/// One thing a link's inbound stream produced.
enum LinkEvent {
    Frame(gateway_frame::Kind),
    /// The gateway closed the stream or it failed.
    Ended,
}

type LinkEvents = Pin<Box<dyn Stream<Item = LinkEvent> + Send>>;

/// The link's frames (chunked messages joined), then one `Ended`.
fn link_events(inbound: LinkInbound) -> LinkEvents {
    let mut joiner = partyline_proto::chunk::Joiner::new(partyline_proto::chunk::MAX_UNARY_MESSAGE);
    Box::pin(
        inbound
            .map_while(Result::ok)
            .map_while(move |frame| match joiner.push(frame) {
                Ok(whole) => Some(whole),
                Err(error) => {
                    // The gateway breaks the link protocol: end the link.
                    tracing::warn!(%error, "gateway link frame refused; dropping the link");
                    None
                }
            })
            .filter_map(|frame| frame.and_then(|f| f.kind).map(LinkEvent::Frame))
            .chain(tokio_stream::once(LinkEvent::Ended)),
    )
}

/// What woke the actor.
enum Input {
    Command(RoomCommand),
    Link(LinkId, LinkEvent),
}

/// A cheap, cloneable way to reach a room actor.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomCommand>,
}

impl RoomHandle {
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
    /// Deleted through the server API.
    Deleted,
}

/// Starts loading `room` and returns its handle and actor future.
pub fn spawn_actor(
    room: RoomName,
    config: Arc<RoomNodeConfig>,
    sync_queue: SyncQueue,
    epoch: u64,
    cancel: CancellationToken,
) -> (RoomHandle, impl std::future::Future<Output = ExitReason>) {
    let (tx, rx) = mpsc::channel(config.room_queue);
    let actor = async move {
        let metrics = crate::telemetry::metrics();
        let started = Instant::now();
        // Rare states are boxed: a future is as large as its largest
        // state, and every live room holds one.
        let loaded = Box::pin(load_with_initial_content(&config, &room, sync_queue, epoch)).await;
        metrics
            .room_loads
            .add(1, &crate::telemetry::result(loaded.is_ok()));
        match loaded {
            Ok(loaded) => {
                metrics
                    .load_duration
                    .record(started.elapsed().as_secs_f64(), &[]);
                metrics.rooms_loaded.add(1, &[]);
                let policy = config.policy_of(room.as_str());
                let (sync, measured) = SyncRoom::with_limits(loaded.doc, config.limits);
                if measured.deepest_type > config.limits.max_type_depth {
                    // Stored before the limit existed: served as it is.
                    tracing::warn!(room = %room, depth = measured.deepest_type, limit = config.limits.max_type_depth, "document nests shared types past the limit");
                }
                let doc_bytes = measured.state_bytes;
                RoomActor {
                    room,
                    config,
                    epoch,
                    cancel,
                    rx,
                    sync,
                    storage: loaded.storage,
                    _lock: loaded.lock,
                    releasing: None,
                    links: HashMap::new(),
                    inbound: StreamMap::new(),
                    outbox: Vec::new(),
                    pending_log: Vec::new(),
                    pending_bytes: 0,
                    log_down_since: None,
                    refused_writes: false,
                    since_snapshot: Growth::default(),
                    policy,
                    doc_bytes,
                    awareness_sent: HashMap::new(),
                    awareness_held: HashMap::new(),
                    snapshot_task: None,
                    snapshot_growth: Growth::default(),
                    snapshot_retry: None,
                    last_session_left: false,
                    dirty: false,
                    applied: Vec::new(),
                    deleting: Vec::new(),
                    last_snapshot: None,
                    callback_due: None,
                    callback_task: None,
                    open_sessions: 0,
                }
                .run()
                .await
            }
            Err(error) => ExitReason::Failed(error),
        }
    };
    (RoomHandle { tx }, actor)
}

/// Loads `room`; a room with nothing stored asks the initial-content hook
/// (when configured) and logs its answer as the room's first update, so
/// the hook is asked once per room.
async fn load_with_initial_content(
    config: &RoomNodeConfig,
    room: &RoomName,
    sync_queue: SyncQueue,
    epoch: u64,
) -> Result<storage::Loaded, LoadError> {
    let mut loaded = storage::load(config, room, sync_queue, epoch).await?;
    let Some(hooks) = &config.hooks else {
        return Ok(loaded);
    };
    if loaded.stored || config.mode_of(room.as_str()) == crate::config::RoomMode::Ephemeral {
        return Ok(loaded);
    }
    if let Some(content) = hooks.initial_content(room.as_str()).await? {
        use yrs::Transact;
        if let Err(error) = loaded.doc.transact_mut().apply_update(content.update) {
            return Err(crate::hooks::HookError::NotAnUpdate {
                url: hooks.config().load_url.clone().unwrap_or_default(),
                reason: error.to_string(),
            }
            .into());
        }
        match loaded.storage.append(&[content.body]).await {
            Ok(()) => {}
            Err(AppendError::Failed(error)) => return Err(error.into()),
            Err(AppendError::Unavailable(error)) => return Err(error.into()),
            Err(AppendError::DiskFull(error)) => return Err(error.into()),
            Err(AppendError::Fenced { epoch: current }) => {
                return Err(crate::remote::RemoteError::Fenced {
                    slot: partyline_proto::slot_of(room.as_str()).get(),
                    current,
                    ours: epoch,
                }
                .into())
            }
        }
        loaded.stored = true;
        tracing::info!(room = %room, "new room filled from load_url");
    }
    Ok(loaded)
}

/// One client session of a link (its awareness is the [`SyncRoom`]'s to
/// track, by [`SessionKey`]).
#[derive(Debug, Default)]
struct Session {
    read_only: bool,
    /// When this session's last SyncStep1 / QueryAwareness was answered:
    /// each answer may be the whole document (or every presence), so a
    /// client asking in a loop gets at most one per `min_resync_interval`.
    answered_sync: Option<Instant>,
    answered_awareness: Option<Instant>,
    /// Requests dropped since the last answer: a client asking again and
    /// again is not a provider, and is closed past [`MAX_REPEATED_REQUESTS`].
    repeated: u32,
}

/// Repeated SyncStep1 / QueryAwareness requests a session may send inside
/// `min_resync_interval` before it is closed (1008).
const MAX_REPEATED_REQUESTS: u32 = 16;

/// The session key server-API updates are handled under (they carry no
/// awareness).
const SERVER_SESSION: SessionKey = (u64::MAX, u64::MAX);

/// One gateway stream and its sessions.
struct Link {
    tx: LinkSender,
    sessions: HashMap<u64, Session>,
}

/// A frame waiting for the batch's log append.
enum Out {
    /// To one link (a reply or an `EndSession`).
    Link(LinkId, pb::NodeFrame),
    /// To every link.
    All(pb::NodeFrame),
}

struct RoomActor {
    room: RoomName,
    config: Arc<RoomNodeConfig>,
    epoch: u64,
    cancel: CancellationToken,
    rx: mpsc::Receiver<RoomCommand>,
    sync: SyncRoom,
    storage: RoomStorage,
    /// Held until the actor is gone, after its last snapshot.
    _lock: Option<RoomLock>,
    /// Set by `Release`: the epoch the room's slot moved away at.
    releasing: Option<u64>,
    links: HashMap<LinkId, Link>,
    /// Every link's inbound frames, read by the actor itself: no task
    /// between the gRPC stream and the room.
    inbound: StreamMap<LinkId, LinkEvents>,
    outbox: Vec<Out>,
    pending_log: Vec<Bytes>,
    /// Bytes in `pending_log`.
    pending_bytes: u64,
    /// Set while the log refuses appends: the batch and its frames wait.
    log_down_since: Option<Instant>,
    /// Writes were refused while the log was down; once it is back every
    /// session gets a SyncStep1 so clients send them again.
    refused_writes: bool,
    /// Log growth since the last snapshot (snapshot triggers).
    since_snapshot: Growth,
    /// This room's limits.
    policy: crate::config::RoomPolicy,
    /// Document size estimate: state at load plus every update since.
    doc_bytes: u64,
    /// Awareness throttle: when each session's awareness last went out,
    /// and its latest held-back one.
    awareness_sent: HashMap<(LinkId, u64), Instant>,
    awareness_held: HashMap<(LinkId, u64), Bytes>,
    /// The snapshot being written, on its own task.
    snapshot_task: Option<tokio::task::JoinHandle<Result<(), storage::SnapshotError>>>,
    /// Growth the running snapshot covers, given back if it fails.
    snapshot_growth: Growth,
    /// After a failed snapshot: when to try again, and the current delay.
    snapshot_retry: Option<(Instant, Duration)>,
    /// The last session left during this batch: snapshot after it.
    last_session_left: bool,
    /// Updates logged since the last snapshot.
    dirty: bool,
    /// Server-side updates of this batch, answered once it is logged.
    applied: Vec<oneshot::Sender<Result<(), ApplyError>>>,
    /// Set by `Delete`: delete once the batch is committed.
    deleting: Vec<oneshot::Sender<Result<(), String>>>,
    /// When this node last wrote a snapshot of the room.
    last_snapshot: Option<std::time::SystemTime>,
    /// Changes not sent to the state callback yet, and when to send them.
    callback_due: Option<crate::hooks::Debounce>,
    /// The state callback in flight (retries included).
    callback_task: Option<tokio::task::JoinHandle<()>>,
    /// Sessions open in the room (the sessions gauge gets them back when
    /// the actor goes, however it goes).
    open_sessions: i64,
}

impl Drop for RoomActor {
    fn drop(&mut self) {
        let metrics = crate::telemetry::metrics();
        metrics.rooms_loaded.add(-1, &[]);
        metrics.sessions.add(-self.open_sessions, &[]);
    }
}

/// Log growth since the last snapshot.
#[derive(Debug, Default)]
struct Growth {
    bytes: u64,
    updates: u64,
}

impl RoomActor {
    async fn run(mut self) -> ExitReason {
        let mut snapshot_tick = tokio::time::interval(self.config.snapshot_interval);
        snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let idle_timeout = self.policy.idle_timeout.unwrap_or(self.config.idle_timeout);
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // While the log is unreachable, appends are retried on this timer
        // only, not on every batch.
        let retry = tokio::time::sleep(LOG_RETRY);
        tokio::pin!(retry);
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Only rooms holding throttled awareness pay for the timer.
            let awareness_flush_at = self.next_awareness_flush();
            // One callback at a time: the next waits for the one in flight.
            let callback_at = match (&self.callback_due, &self.config.hooks) {
                (Some(debounce), Some(hooks)) if self.callback_task.is_none() => {
                    Some(debounce.due(hooks.config()))
                }
                _ => None,
            };
            let first = tokio::select! {
                biased;
                _ = &mut cancelled => {
                    self.rx.close();
                    Box::pin(self.unload()).await;
                    return ExitReason::Shutdown;
                }
                // Before inputs: a busy room must still notice a finished
                // snapshot, or the next one never starts.
                result = wait_for(&mut self.snapshot_task) => {
                    self.snapshot_task = None;
                    self.snapshot_finished(result);
                    if self.snapshot_due() {
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
                Some((link, event)) = self.inbound.next(), if !self.inbound.is_empty() => Input::Link(link, event),
                _ = snapshot_tick.tick() => {
                    self.start_snapshot();
                    continue;
                }
                _ = tokio::time::sleep_until(self.snapshot_retry.map_or_else(Instant::now, |(at, _)| at)),
                    if self.snapshot_retry.is_some() && self.snapshot_task.is_none() => {
                    self.start_snapshot();
                    continue;
                }
                _ = tokio::time::sleep_until(awareness_flush_at.unwrap_or_else(Instant::now)), if awareness_flush_at.is_some() => {
                    self.flush_awareness();
                    if let Err(error) = self.commit(false).await {
                        return ExitReason::Failed(LoadError::Local(error));
                    }
                    if let Some(epoch) = self.releasing {
                        return Box::pin(self.release(epoch)).await;
                    }
                    continue;
                }
                _ = &mut retry, if self.log_down_since.is_some() => {
                    retry.as_mut().reset(Instant::now() + LOG_RETRY);
                    if let Err(error) = self.commit(true).await {
                        return ExitReason::Failed(LoadError::Local(error));
                    }
                    if let Some(epoch) = self.releasing {
                        return Box::pin(self.release(epoch)).await;
                    }
                    continue;
                }
                _ = &mut idle, if self.links.is_empty() => {
                    self.refuse_commands();
                    Box::pin(self.unload()).await;
                    return ExitReason::Idle;
                }
                _ = wait_for(&mut self.callback_task) => {
                    self.callback_task = None;
                    continue;
                }
                _ = tokio::time::sleep_until(callback_at.unwrap_or_else(Instant::now)), if callback_at.is_some() => {
                    self.start_callback();
                    continue;
                }
            };
            let batch_started = Instant::now();
            self.handle(first);
            // Group commit: take whatever else is ready before the log write.
            let mut handled = 1;
            while handled < MAX_BATCH {
                if let Some((link, event)) = self.next_ready_link_event().await {
                    self.handle(Input::Link(link, event));
                } else if let Ok(command) = self.rx.try_recv() {
                    self.handle(Input::Command(command));
                } else {
                    break;
                }
                handled += 1;
            }
            let was_down = self.log_down_since.is_some();
            if let Err(error) = self.commit(false).await {
                return ExitReason::Failed(LoadError::Local(error));
            }
            crate::telemetry::metrics()
                .batch_duration
                .record(batch_started.elapsed().as_secs_f64(), &[]);
            if !was_down && self.log_down_since.is_some() {
                retry.as_mut().reset(Instant::now() + LOG_RETRY);
            }
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
            if self.snapshot_due() || std::mem::take(&mut self.last_session_left) {
                self.start_snapshot();
            }
            self.callback_if_due();
        }
    }

    /// Stops taking commands; attachers that raced us get their stream back
    /// and retry (on a fresh actor, or elsewhere when the room moved).
    fn refuse_commands(&mut self) {
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
    async fn release(mut self, epoch: u64) -> ExitReason {
        crate::telemetry::metrics().releases.add(1, &[]);
        self.refuse_commands();
        let released = frame(node_frame::Kind::Released(pb::Released {
            epoch,
            resync: self.sync.sync_step1(),
        }));
        for (link_id, link) in self.links.drain() {
            if link.tx.try_send(Ok(released.clone())).is_err() {
                tracing::debug!(room = %self.room, link = link_id, "link full; it will re-sync as after a failure");
            }
        }
        self.unload().await;
        tracing::debug!(room = %self.room, epoch, "room released to its new owner");
        ExitReason::Released
    }

    /// Deletes the room: every session is ended with 4404 (after every
    /// frame already queued for it), a running snapshot is waited for so
    /// it cannot write after the delete, then the log and snapshots go.
    async fn delete(
        &mut self,
        replies: Vec<oneshot::Sender<Result<(), String>>>,
    ) -> Option<ExitReason> {
        // A snapshot still being written would register after the delete
        // (it is of this epoch, so not fenced): wait for it, or refuse.
        if let Some(task) = self.snapshot_task.as_mut() {
            match tokio::time::timeout(FINAL_SNAPSHOT_TIMEOUT, task).await {
                Ok(result) => {
                    self.snapshot_task = None;
                    self.snapshot_finished(result);
                }
                Err(_) => {
                    tracing::warn!(room = %self.room, "delete refused: a snapshot is still being written");
                    for reply in replies {
                        let _ = reply.send(Err(
                            "a snapshot of the room is still being written; try again".to_owned(),
                        ));
                    }
                    return None;
                }
            }
        }
        self.refuse_commands();
        // Every session is told, waiting a little for a full link: a
        // gateway that misses it would re-open the room and its clients
        // would upload their documents into the deleted room.
        for (_, link) in self.links.drain() {
            for &session_id in link.sessions.keys() {
                let end = frame(node_frame::Kind::EndSession(pb::EndSession {
                    session_id,
                    close_code: u32::from(close::ROOM_DELETED),
                    reason: "room deleted".to_owned(),
                }));
                let sent =
                    tokio::time::timeout(Duration::from_secs(1), link.tx.send(Ok(end))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::warn!(room = %self.room, session = session_id, "could not tell a session its room was deleted");
                }
            }
        }
        let storage = std::mem::replace(&mut self.storage, RoomStorage::Ephemeral);
        let result = storage.delete().await;
        match &result {
            Ok(()) => tracing::info!(room = %self.room, "room deleted"),
            Err(error) => tracing::error!(room = %self.room, %error, "deleting the room failed"),
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
        Some(ExitReason::Deleted)
    }

    /// The room's figures for the server API.
    fn info(&self) -> RoomInfo {
        RoomInfo {
            sessions: self.links.values().map(|l| l.sessions.len()).sum(),
            gateways: self.links.len(),
            doc_bytes: self.sync.encode_state().len() as u64,
            last_snapshot: self.last_snapshot,
            updates_since_snapshot: self.since_snapshot.updates + self.snapshot_growth.updates,
        }
    }

    /// What a write of `bytes` may do now: refused while the log is down
    /// and the hold buffer full, or past the room's `max_doc_bytes`.
    fn write_access(&self, bytes: usize) -> Access {
        if self.log_down_since.is_some() && self.pending_bytes >= self.config.log_buffer_bytes {
            Access::LogUnavailable
        } else if self.doc_bytes + bytes as u64
            > self
                .policy
                .max_doc_bytes
                .unwrap_or(self.config.max_doc_bytes)
        {
            Access::DocumentFull
        } else {
            Access::ReadWrite
        }
    }

    /// A server-side update: applied, logged and broadcast like a client's
    /// (the room's size policy and log-outage refusals apply too).
    fn apply(&mut self, update: Vec<u8>, reply: oneshot::Sender<Result<(), ApplyError>>) {
        // Checked and decoded once, by the sync handler, as a client's is.
        let access = self.write_access(update.len());
        let message = crate::protocol::encode(&yrs::sync::Message::Sync(
            yrs::sync::SyncMessage::Update(update),
        ));
        match self.sync.handle_frame(&message, access, SERVER_SESSION) {
            Ok(outcome) if outcome.missing_dependency => {
                let _ = reply.send(Err(ApplyError::BadUpdate(
                    "update depends on content the room does not have".to_owned(),
                )));
            }
            Ok(mut outcome) if outcome.refused.is_some() => {
                // Logged and sent like any edit: yrs took part of it.
                let error = outcome.refused.take().map(|e| e.to_string());
                self.take_logged(outcome.log, outcome.broadcast);
                let _ = reply.send(Err(ApplyError::BadUpdate(error.unwrap_or_default())));
            }
            Ok(outcome) if outcome.write_denied => {
                let _ = reply.send(Err(match access {
                    Access::DocumentFull => ApplyError::DocumentFull,
                    _ => ApplyError::StorageUnavailable,
                }));
            }
            Ok(outcome) => {
                self.take_logged(outcome.log, outcome.broadcast);
                self.applied.push(reply);
            }
            Err(error) => {
                let _ = reply.send(Err(ApplyError::BadUpdate(error.to_string())));
            }
        }
    }

    /// Queues a server-side update's log entries and broadcasts.
    fn take_logged(&mut self, log: Vec<Bytes>, broadcasts: Vec<Bytes>) {
        let logged = log.iter().map(|u| u.len() as u64).sum::<u64>();
        if !log.is_empty() {
            self.dirty = true;
        }
        self.pending_bytes += logged;
        self.doc_bytes += logged;
        self.pending_log.extend(log);
        for payload in broadcasts {
            self.outbox.push(Out::All(broadcast(payload)));
        }
    }

    /// A link event that is ready now, without waiting. Polls with the
    /// task's own waker (a no-op waker would leave the streams unable to
    /// wake the actor later).
    async fn next_ready_link_event(&mut self) -> Option<(LinkId, LinkEvent)> {
        if self.inbound.is_empty() {
            return None;
        }
        std::future::poll_fn(|cx| match Pin::new(&mut self.inbound).poll_next(cx) {
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Command(RoomCommand::AttachLink {
                link,
                tx,
                inbound,
                reply,
            }) => {
                let attached = node_frame::Kind::Attached(pb::Attached {
                    epoch: self.epoch,
                    node_id: self.config.node_id.to_string(),
                });
                self.outbox.push(Out::Link(link, frame(attached)));
                self.links.insert(
                    link,
                    Link {
                        tx,
                        sessions: HashMap::new(),
                    },
                );
                self.inbound.insert(link, link_events(inbound));
                let _ = reply.send(Ok(()));
            }
            Input::Command(RoomCommand::Release { epoch }) => self.releasing = Some(epoch),
            Input::Command(RoomCommand::Info { reply }) => {
                let _ = reply.send(self.info());
            }
            Input::Command(RoomCommand::State { json, reply }) => {
                let state = if json {
                    crate::render::doc_to_json(self.sync.doc())
                        .to_string()
                        .into_bytes()
                } else {
                    self.sync.encode_state()
                };
                let _ = reply.send(state);
            }
            Input::Command(RoomCommand::Apply { update, reply }) => self.apply(update, reply),
            // Every delete of the batch gets the one delete's result.
            Input::Command(RoomCommand::Delete { reply }) => self.deleting.push(reply),
            #[cfg(test)]
            Input::Command(RoomCommand::Panic) => panic!("panic requested by a test"),
            Input::Link(link, LinkEvent::Frame(frame)) => self.handle_frame(link, frame),
            Input::Link(link, LinkEvent::Ended) => self.drop_link(link),
        }
    }

    fn handle_frame(&mut self, link_id: LinkId, kind: gateway_frame::Kind) {
        match kind {
            gateway_frame::Kind::OpenSession(open) => {
                // Only a gateway's explicit answer grants anything: a
                // missing or unknown permission (a bug, or a client of
                // the gRPC port that is no gateway) must not mean write.
                let read_only = match open.permission() {
                    pb::Permission::ReadOnly => true,
                    pb::Permission::ReadWrite => false,
                    pb::Permission::Unspecified => {
                        let end = node_frame::Kind::EndSession(pb::EndSession {
                            session_id: open.session_id,
                            close_code: u32::from(close::POLICY_VIOLATION),
                            reason: "session opened without a permission".to_owned(),
                        });
                        self.outbox.push(Out::Link(link_id, frame(end)));
                        crate::telemetry::refuse("permission_unspecified");
                        tracing::warn!(room = %self.room, session = open.session_id, "session refused: opened without a permission");
                        return;
                    }
                };
                let open_sessions: usize = self.links.values().map(|l| l.sessions.len()).sum();
                if self
                    .policy
                    .max_sessions
                    .is_some_and(|max| open_sessions >= max)
                {
                    let end = node_frame::Kind::EndSession(pb::EndSession {
                        session_id: open.session_id,
                        close_code: u32::from(close::POLICY_VIOLATION),
                        reason: format!("room is full ({open_sessions} sessions)"),
                    });
                    self.outbox.push(Out::Link(link_id, frame(end)));
                    crate::telemetry::refuse("room_full");
                    tracing::info!(room = %self.room, sessions = open_sessions, "session refused: room is full");
                    return;
                }
                let Some(link) = self.links.get_mut(&link_id) else {
                    return;
                };
                let replaced = link.sessions.insert(
                    open.session_id,
                    Session {
                        read_only,
                        ..Session::default()
                    },
                );
                if replaced.is_none() {
                    self.open_sessions += 1;
                    crate::telemetry::metrics().sessions.add(1, &[]);
                }
                for payload in self.sync.handshake() {
                    self.outbox
                        .push(Out::Link(link_id, deliver(open.session_id, payload)));
                }
            }
            gateway_frame::Kind::CloseSession(close) => {
                self.close_session(link_id, close.session_id)
            }
            gateway_frame::Kind::ClientMessage(message) => self.handle_message(link_id, message),
            gateway_frame::Kind::Attach(_) => {
                tracing::warn!(room = %self.room, link = link_id, "attach frame on an attached stream ignored");
            }
        }
    }

    fn handle_message(&mut self, link_id: LinkId, message: pb::ClientMessage) {
        let session_id = message.session_id;
        let _span =
            crate::telemetry::frame_span(&message.traceparent, self.room.as_str(), session_id);
        // Before the session is borrowed from `self`.
        let room_access = self.write_access(message.payload.len());
        let Some(session) = self
            .links
            .get_mut(&link_id)
            .and_then(|link| link.sessions.get_mut(&session_id))
        else {
            return;
        };
        if self
            .policy
            .max_frame_bytes
            .is_some_and(|max| message.payload.len() > max)
        {
            crate::telemetry::refuse("frame_too_big");
            tracing::info!(room = %self.room, session = session_id, bytes = message.payload.len(), "message over the room's max_frame_bytes; closing session");
            self.end_session(
                link_id,
                session_id,
                close::MESSAGE_TOO_BIG,
                "message over the room's size limit",
            );
            return;
        }
        if message.kind() == pb::FrameKind::Text {
            if message.payload.starts_with(b"__YPS:")
                && session.read_only
                && !self.policy.read_only_custom_messages
            {
                // A viewer could otherwise speak to every app client.
                crate::telemetry::refuse("read_only_custom_message");
                tracing::debug!(room = %self.room, session = session_id, "custom message from a read-only session dropped");
            } else if message.payload.starts_with(b"__YPS:") {
                self.outbox.push(Out::All(frame(node_frame::Kind::Broadcast(
                    pb::Broadcast {
                        payload: message.payload,
                        kind: pb::FrameKind::Text as i32,
                        has_except: true,
                        except_session: session_id,
                        more: false,
                    },
                ))));
            } else {
                self.end_session(
                    link_id,
                    session_id,
                    close::UNSUPPORTED_DATA,
                    "unsupported text message",
                );
            }
            return;
        }
        let answered = match message.payload.as_ref() {
            [0, 0, ..] => Some(&mut session.answered_sync),
            [3, ..] => Some(&mut session.answered_awareness),
            _ => None,
        };
        if let Some(answered) = answered {
            let now = Instant::now();
            if answered.is_some_and(|at| now < at + self.config.min_resync_interval) {
                // Already answered: everything since reaches the session
                // as broadcasts, so dropping the repeat loses nothing.
                crate::telemetry::refuse("repeated_sync_request");
                session.repeated += 1;
                if session.repeated > MAX_REPEATED_REQUESTS {
                    tracing::info!(room = %self.room, session = session_id, "session keeps repeating sync requests; closing it");
                    self.end_session(
                        link_id,
                        session_id,
                        close::POLICY_VIOLATION,
                        "too many repeated sync requests",
                    );
                } else {
                    tracing::debug!(room = %self.room, session = session_id, "repeated sync request inside min_resync_interval dropped");
                }
                return;
            }
            *answered = Some(now);
            session.repeated = 0;
        }
        let access = if session.read_only {
            Access::ReadOnly
        } else {
            room_access
        };
        match self
            .sync
            .handle_frame(&message.payload, access, (link_id, session_id))
        {
            Ok(outcome) => {
                if outcome.missing_dependency {
                    crate::telemetry::refuse("missing_dependency");
                    tracing::debug!(room = %self.room, session = session_id, "update builds on content the room does not have; asked the client for everything");
                }
                if outcome.awareness_dropped > 0 {
                    crate::telemetry::refuse("awareness_not_taken");
                    tracing::debug!(room = %self.room, session = session_id, dropped = outcome.awareness_dropped, "awareness entries of other sessions' ids or over the session's limits dropped");
                }
                if outcome.write_denied {
                    crate::telemetry::refuse(match access {
                        Access::LogUnavailable => "log_unavailable",
                        Access::DocumentFull => "document_full",
                        _ => "read_only",
                    });
                    if access == Access::LogUnavailable {
                        self.refused_writes = true;
                        tracing::warn!(room = %self.room, session = session_id, "write refused: update log unreachable and the hold buffer is full");
                    } else if access == Access::DocumentFull {
                        tracing::info!(room = %self.room, session = session_id, bytes = self.doc_bytes, "write refused: document at max_doc_bytes");
                    } else {
                        tracing::info!(room = %self.room, session = session_id, "write from a read-only session dropped");
                    }
                }
                if !outcome.log.is_empty() {
                    self.dirty = true;
                }
                let logged = outcome.log.iter().map(|u| u.len() as u64).sum::<u64>();
                self.pending_bytes += logged;
                self.doc_bytes += logged;
                self.pending_log.extend(outcome.log);
                for payload in outcome.reply {
                    let frame = deliver(session_id, payload);
                    if access == Access::LogUnavailable {
                        // Told at once: the held outbox waits for the log.
                        if let Some(link) = self.links.get(&link_id) {
                            let _ = link.tx.try_send(Ok(frame));
                        }
                    } else {
                        self.outbox.push(Out::Link(link_id, frame));
                    }
                }
                let is_awareness = message.payload.first() == Some(&1);
                for payload in outcome.broadcast {
                    match self.policy.awareness_throttle {
                        Some(window) if is_awareness => {
                            self.throttle_awareness((link_id, session_id), payload, window)
                        }
                        _ => self.outbox.push(Out::All(broadcast(payload))),
                    }
                }
                if let Some(error) = outcome.refused {
                    // What yrs took of it is logged and sent above.
                    crate::telemetry::refuse("protocol_error");
                    tracing::info!(room = %self.room, session = session_id, %error, "update refused after yrs took part of it; closing session");
                    self.end_session(
                        link_id,
                        session_id,
                        close::PROTOCOL_ERROR,
                        &error.to_string(),
                    );
                }
            }
            Err(error) => {
                crate::telemetry::refuse("protocol_error");
                tracing::info!(room = %self.room, session = session_id, %error, "malformed frame; closing session");
                self.end_session(
                    link_id,
                    session_id,
                    close::PROTOCOL_ERROR,
                    &error.to_string(),
                );
            }
        }
    }

    /// Relays a session's awareness now, or holds it (latest wins) until
    /// its window since the last relay has passed.
    fn throttle_awareness(&mut self, key: (LinkId, u64), payload: Bytes, window: Duration) {
        let now = Instant::now();
        match self.awareness_sent.get(&key) {
            Some(&sent) if now < sent + window => {
                self.awareness_held.insert(key, payload);
            }
            _ => {
                self.awareness_sent.insert(key, now);
                self.outbox.push(Out::All(broadcast(payload)));
            }
        }
    }

    /// When the earliest held awareness may go out; `None` when none is held.
    fn next_awareness_flush(&self) -> Option<Instant> {
        if self.awareness_held.is_empty() {
            return None;
        }
        let window = self.policy.awareness_throttle.unwrap_or_default();
        let earliest = self
            .awareness_held
            .keys()
            .filter_map(|key| self.awareness_sent.get(key))
            .map(|&sent| sent + window)
            .min();
        Some(earliest.unwrap_or_else(Instant::now))
    }

    /// Relays every held awareness whose window has passed.
    fn flush_awareness(&mut self) {
        let window = self.policy.awareness_throttle.unwrap_or_default();
        let now = Instant::now();
        let due: Vec<(LinkId, u64)> = self
            .awareness_held
            .keys()
            .filter(|key| {
                self.awareness_sent
                    .get(key)
                    .is_none_or(|&sent| now >= sent + window)
            })
            .copied()
            .collect();
        for key in due {
            if let Some(payload) = self.awareness_held.remove(&key) {
                self.awareness_sent.insert(key, now);
                self.outbox.push(Out::All(broadcast(payload)));
            }
        }
    }

    /// Ends a session on the room's initiative; the gateway closes the socket.
    fn end_session(&mut self, link_id: LinkId, session_id: u64, code: u16, reason: &str) {
        let end = node_frame::Kind::EndSession(pb::EndSession {
            session_id,
            close_code: u32::from(code),
            reason: reason.to_owned(),
        });
        self.outbox.push(Out::Link(link_id, frame(end)));
        self.close_session(link_id, session_id);
    }

    fn close_session(&mut self, link_id: LinkId, session_id: u64) {
        let Some(_) = self
            .links
            .get_mut(&link_id)
            .and_then(|link| link.sessions.remove(&session_id))
        else {
            return;
        };
        self.open_sessions -= 1;
        crate::telemetry::metrics().sessions.add(-1, &[]);
        self.end_awareness([(link_id, session_id)]);
        self.awareness_sent.remove(&(link_id, session_id));
        self.awareness_held.remove(&(link_id, session_id));
        self.note_if_last_left();
    }

    /// The room just lost its last session: a snapshot trigger.
    fn note_if_last_left(&mut self) {
        if self.links.values().all(|link| link.sessions.is_empty()) {
            self.last_session_left = true;
        }
    }

    fn drop_link(&mut self, link_id: LinkId) {
        let Some(link) = self.links.remove(&link_id) else {
            return;
        };
        let had_sessions = !link.sessions.is_empty();
        let dropped = link.sessions.len() as i64;
        self.open_sessions -= dropped;
        crate::telemetry::metrics().sessions.add(-dropped, &[]);
        self.end_awareness(link.sessions.into_keys().map(|session| (link_id, session)));
        if had_sessions {
            self.note_if_last_left();
        }
    }

    /// Removes what closed sessions spoke for, telling the others.
    fn end_awareness(&mut self, sessions: impl IntoIterator<Item = SessionKey>) {
        if let Some(payload) = self.sync.end_sessions(sessions) {
            self.outbox.push(Out::All(broadcast(payload)));
        }
    }

    /// Appends the batch's updates to the log, then sends its frames. When
    /// the log is unreachable the batch and its frames wait for the next
    /// try (nothing is acknowledged before it is logged); only a local disk
    /// error is fatal.
    async fn commit(&mut self, retrying: bool) -> Result<(), crate::store::StoreError> {
        if self.log_down_since.is_some() && !retrying {
            return Ok(());
        }
        if !self.pending_log.is_empty() {
            let started = Instant::now();
            let appended = self.storage.append(&self.pending_log).await;
            let metrics = crate::telemetry::metrics();
            match &appended {
                Ok(()) => metrics
                    .append_duration
                    .record(started.elapsed().as_secs_f64(), &[]),
                Err(_) => metrics.append_failures.add(1, &[]),
            }
            match appended {
                Ok(()) => {
                    self.note_change();
                    self.since_snapshot.updates += self.pending_log.len() as u64;
                    self.since_snapshot.bytes += self.pending_bytes;
                    self.pending_log.clear();
                    self.pending_bytes = 0;
                    if let Some(since) = self.log_down_since.take() {
                        tracing::info!(room = %self.room, down_for = ?since.elapsed(), "update log reachable again; held updates logged and sent");
                        if std::mem::take(&mut self.refused_writes) {
                            // Refused writes are still in the clients' documents.
                            self.outbox
                                .push(Out::All(broadcast(self.sync.sync_step1())));
                        }
                    }
                }
                Err(AppendError::Failed(error)) => return Err(error),
                Err(AppendError::Fenced { epoch }) => {
                    // A newer owner took the slot while this node could not
                    // hear of it. The batch is not logged, so nothing of it
                    // is sent or acknowledged: hand the room over as for a
                    // moved slot (its clients resend the batch there).
                    tracing::warn!(room = %self.room, epoch, "append fenced: a newer owner holds the room's slot; releasing the room without acknowledging the batch");
                    self.releasing = Some(self.releasing.map_or(epoch, |e| e.max(epoch)));
                    return Ok(());
                }
                Err(error @ (AppendError::Unavailable(_) | AppendError::DiskFull(_))) => {
                    if self.log_down_since.is_none() {
                        tracing::warn!(room = %self.room, %error, "update log unreachable (or its disk full); holding updates until it takes writes again");
                        self.log_down_since = Some(Instant::now());
                    }
                    return Ok(());
                }
            }
        } else if self.log_down_since.take().is_some() {
            tracing::info!(room = %self.room, "update log reachable again");
        }
        // Dropping a slow link removes awareness, which queues more frames.
        while !self.outbox.is_empty() {
            let mut slow = Vec::new();
            for out in std::mem::take(&mut self.outbox) {
                match out {
                    Out::Link(link_id, frame) => {
                        if let Some(link) = self.links.get(&link_id) {
                            if !send_chunked(&link.tx, frame) {
                                slow.push(link_id);
                            }
                        }
                    }
                    Out::All(frame) => {
                        for (&link_id, link) in &self.links {
                            if !send_chunked(&link.tx, frame.clone()) {
                                slow.push(link_id);
                            }
                        }
                    }
                }
            }
            slow.sort_unstable();
            slow.dedup();
            for link_id in slow {
                tracing::warn!(room = %self.room, link = link_id, "gateway link too slow or gone; dropping it");
                self.drop_link(link_id);
            }
        }
        for reply in self.applied.drain(..) {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    /// Logged changes start (or extend) the state callback's debounce.
    fn note_change(&mut self) {
        // Ephemeral rooms store nothing, and call back nothing either.
        if !self.config.hooks.as_ref().is_some_and(|h| h.has_callback())
            || matches!(self.storage, RoomStorage::Ephemeral)
        {
            return;
        }
        let now = Instant::now();
        match &mut self.callback_due {
            Some(debounce) => debounce.touch(now),
            None => self.callback_due = Some(crate::hooks::Debounce::new(now)),
        }
    }

    /// Sends the room's state to the callback on its own task (retries
    /// included); changes after this point wait for the next one.
    fn start_callback(&mut self) {
        let Some(hooks) = self.config.hooks.clone() else {
            return;
        };
        self.callback_due = None;
        let state = self.sync.encode_state();
        let json = crate::render::doc_to_json(self.sync.doc());
        let room = self.room.clone();
        let version = crate::hooks::StateVersion {
            epoch: self.epoch,
            taken: std::time::SystemTime::now(),
        };
        self.callback_task = Some(tokio::spawn(async move {
            match hooks.send_state(room.as_str(), &state, json, version).await {
                Ok(()) => tracing::debug!(room = %room, bytes = state.len(), "state callback sent"),
                Err(error) => {
                    tracing::error!(room = %room, %error, "state callback failed after its retries; the next change sends the state again")
                }
            }
        }));
    }

    /// Before the room leaves memory: the last snapshot, and the state
    /// callback if changes are unsent: after a callback already in flight
    /// (its state is older), each bounded by the callback timeout.
    async fn unload(&mut self) {
        self.final_snapshot().await;
        let Some(limit) = self
            .config
            .hooks
            .as_ref()
            .map(|hooks| hooks.config().callback_timeout)
        else {
            return;
        };
        if let Some(task) = self.callback_task.take() {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(room = %self.room, "a state callback is still running at unload; it goes on in the background");
            }
        }
        if self.callback_due.is_none() {
            return;
        }
        self.start_callback();
        if let Some(task) = self.callback_task.take() {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(room = %self.room, "last state callback still running at unload; it goes on in the background");
            }
        }
    }

    /// Starts the state callback when it is due and none is in flight; a
    /// busy room whose inputs never leave the select idle still gets it.
    fn callback_if_due(&mut self) {
        let due = match (&self.callback_due, &self.config.hooks) {
            (Some(debounce), Some(hooks)) => debounce.due(hooks.config()),
            _ => return,
        };
        if self.callback_task.is_none() && Instant::now() >= due {
            self.start_callback();
        }
    }

    /// Whether the log grew enough since the last snapshot for another.
    fn snapshot_due(&self) -> bool {
        self.since_snapshot.bytes >= self.config.snapshot_log_bytes
            || self.since_snapshot.updates >= self.config.snapshot_log_updates
    }

    /// Starts a snapshot on its own task when updates arrived since the
    /// last one, none is running, and no failure asked to wait.
    fn start_snapshot(&mut self) {
        // Never snapshot state that holds updates the log does not have.
        if !self.dirty || !self.pending_log.is_empty() || self.snapshot_task.is_some() {
            return;
        }
        if self
            .snapshot_retry
            .is_some_and(|(at, _)| Instant::now() < at)
        {
            return;
        }
        let state = self.sync.encode_state();
        let bytes = state.len() as u64;
        // Exact again (the running figure only adds update sizes, so
        // deletions and overwrites made it an overestimate).
        self.doc_bytes = bytes;
        let work = self.storage.begin_snapshot(self.epoch, state);
        self.dirty = false;
        self.snapshot_growth = std::mem::take(&mut self.since_snapshot);
        let started = Instant::now();
        let room = self.room.clone();
        self.snapshot_task = Some(tokio::spawn(async move {
            let result = work.write().await;
            record_snapshot(started, bytes, result.is_ok());
            tracing::debug!(room = %room, took = ?started.elapsed(), ok = result.is_ok(), "snapshot finished");
            result
        }));
    }

    /// Books a finished snapshot: a failure keeps the room dirty and
    /// retries with a doubling delay (the log was not trimmed).
    fn snapshot_finished(
        &mut self,
        result: Result<Result<(), storage::SnapshotError>, tokio::task::JoinError>,
    ) {
        let result = result.unwrap_or_else(|join| Err(storage::SnapshotError::from(join)));
        match result {
            Err(error) if error.fenced => {
                // Retrying cannot help: the slot moved on. The map will
                // move the room; its new owner read the log.
                self.snapshot_growth = Growth::default();
                tracing::info!(room = %self.room, %error, "snapshot refused: a newer owner holds the room's slot (the log has every update)");
            }
            Ok(()) => {
                self.last_snapshot = Some(std::time::SystemTime::now());
                self.snapshot_growth = Growth::default();
                if self.snapshot_retry.take().is_some() {
                    tracing::info!(room = %self.room, "snapshot succeeded again");
                }
            }
            Err(error) => {
                self.dirty = true;
                let covered = std::mem::take(&mut self.snapshot_growth);
                self.since_snapshot.bytes += covered.bytes;
                self.since_snapshot.updates += covered.updates;
                let delay = self
                    .snapshot_retry
                    .map_or(SNAPSHOT_RETRY_MIN, |(_, delay)| {
                        (delay * 2).min(SNAPSHOT_RETRY_MAX)
                    });
                self.snapshot_retry = Some((Instant::now() + delay, delay));
                tracing::error!(room = %self.room, %error, retry_in = ?delay, "snapshot failed; the log still holds every update");
            }
        }
    }

    /// Before unloading: waits for a running snapshot, then writes a last
    /// one if needed, each bounded by [`FINAL_SNAPSHOT_TIMEOUT`].
    async fn final_snapshot(&mut self) {
        if let Some(task) = self.snapshot_task.take() {
            match tokio::time::timeout(FINAL_SNAPSHOT_TIMEOUT, task).await {
                Ok(result) => self.snapshot_finished(result),
                Err(_) => {
                    tracing::warn!(room = %self.room, "snapshot still running at unload; the log holds every update");
                    return;
                }
            }
        }
        if !self.dirty || !self.pending_log.is_empty() {
            return;
        }
        let state = self.sync.encode_state();
        let bytes = state.len() as u64;
        let work = self.storage.begin_snapshot(self.epoch, state);
        let started = Instant::now();
        let written = tokio::time::timeout(FINAL_SNAPSHOT_TIMEOUT, work.write()).await;
        record_snapshot(started, bytes, matches!(written, Ok(Ok(()))));
        match written {
            Ok(Ok(())) => {
                self.dirty = false;
                self.last_snapshot = Some(std::time::SystemTime::now());
            }
            Ok(Err(error)) if error.fenced => {
                // The usual end of a planned move on shared Redis storage:
                // the new owner loaded (and claimed the slot) first.
                tracing::info!(room = %self.room, %error, "last snapshot left to the room's new owner (the log has every update)")
            }
            Ok(Err(error)) => {
                tracing::error!(room = %self.room, %error, "last snapshot failed; the log still holds every update")
            }
            Err(_) => {
                tracing::warn!(room = %self.room, "last snapshot timed out; the log holds every update")
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

/// Waits for a task, or forever when there is none.
async fn wait_for<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Queues `frame` toward a link, split into chunks when it is large (see
/// [`partyline_proto::chunk`]); `false` when the link cannot take it.
fn send_chunked(tx: &LinkSender, frame: pb::NodeFrame) -> bool {
    partyline_proto::chunk::split(frame).all(|piece| tx.try_send(Ok(piece)).is_ok())
}

fn frame(kind: node_frame::Kind) -> pb::NodeFrame {
    pb::NodeFrame { kind: Some(kind) }
}

fn deliver(session_id: u64, payload: Bytes) -> pb::NodeFrame {
    frame(node_frame::Kind::Deliver(pb::Deliver {
        session_id,
        payload,
        kind: pb::FrameKind::Binary as i32,
        more: false,
    }))
}

fn broadcast(payload: Bytes) -> pb::NodeFrame {
    frame(node_frame::Kind::Broadcast(pb::Broadcast {
        payload,
        kind: pb::FrameKind::Binary as i32,
        has_except: false,
        except_session: 0,
        more: false,
    }))
}

/// How long [`crate::registry::Registry::attach`] keeps retrying a room
/// that is unloading or failing to load.
pub const ATTACH_DEADLINE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    /// Every live room holds its actor's future, so its size is memory per
    /// room; rare states (load, unload, release, delete) are boxed to keep
    /// it near the actor's own size.
    #[test]
    fn a_room_actor_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = std::sync::Arc::new(crate::config::RoomNodeConfig::new(
            partyline_proto::NodeId::new("n"),
            dir.path().to_owned(),
        ));
        let (_handle, actor) = super::spawn_actor(
            partyline_proto::RoomName::new("x").unwrap(),
            config,
            crate::store::SyncQueue::default(),
            0,
            tokio_util::sync::CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&actor);
        assert!(size <= 4096, "a room actor future takes {size} bytes");
    }
}
