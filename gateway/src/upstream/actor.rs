//! An upstream actor's life across streams: connect, serve, and after the
//! stream ends either close the room's sessions, retire quietly, or
//! re-open the room on its (new) owner with every session carried over.
//!
//! Owns the re-open policy: quick failures in a row are counted, paced
//! with a jittered back-off and given up after `room_reopen_attempts`;
//! and the session table's bookkeeping outside a live stream. It does not
//! relay frames (`relay`) nor dial the owner (`connect`).

use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBackoff;
use bytes::Bytes;
use partyline_proto::pb::{self, gateway_frame};
use partyline_proto::{close, SYNC_STEP1_EMPTY};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{LocalSession, OpenReply, StreamEnd, UpstreamActor, UpstreamCommand};
use crate::client_socket::ClientSocket;
use crate::messages::{CloseReason, SessionGrant};

/// A stream that lived this long was serving: its failure starts a new
/// count of failures in a row.
const STABLE_STREAM: Duration = Duration::from_secs(10);
/// First pause before re-opening a room whose stream failed; doubles per
/// failure in a row up to [`REOPEN_BACKOFF_MAX`].
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause before re-opening a failed room.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A WebSocket close reason fits in 123 bytes.
const MAX_CLOSE_REASON: usize = 120;

impl UpstreamActor {
    /// Serves the room until it is closed, given up or idle; the registry
    /// forgets the room when this returns.
    pub(super) async fn run(mut self) {
        let mut min_epoch = 0;
        let mut resync: Option<Bytes> = None;
        // Streams that failed in a row, each soon after it opened, and the
        // pauses for the next ones.
        let mut failures = 0u32;
        let mut pauses = reopen_backoff();
        loop {
            let connection = match self.connect(min_epoch).await {
                Ok(connection) => connection,
                Err(reason) => {
                    tracing::warn!(room = %self.room, reason = %reason.reason, "room owner unreachable");
                    self.close_all(&reason);
                    return;
                }
            };
            let opened = Instant::now();
            let end = match resync.take() {
                Some(resync) => match self.reopen_sessions(&connection, &resync).await {
                    Ok(()) => {
                        crate::telemetry::metrics().reroutes.add(1, &[]);
                        tracing::info!(room = %self.room, owner = %connection.url, sessions = self.sessions.len(), "room re-opened on its new owner");
                        self.serve(connection).await
                    }
                    Err(reason) => failed_stream(reason.reason),
                },
                None => self.serve(connection).await,
            };
            match end {
                StreamEnd::Close(reason) => {
                    self.close_all(&reason);
                    return;
                }
                StreamEnd::Idle => {
                    self.retire();
                    return;
                }
                StreamEnd::Move { .. } if !self.take_waiting_opens() => {
                    self.retire();
                    return;
                }
                StreamEnd::Move {
                    min_epoch: epoch,
                    resync: bytes,
                    failed,
                } => {
                    min_epoch = epoch;
                    resync = Some(bytes);
                    let Some(why) = failed else {
                        failures = 0;
                        continue;
                    };
                    if opened.elapsed() < STABLE_STREAM {
                        failures += 1;
                    } else {
                        failures = 1;
                    }
                    if failures == 1 {
                        pauses = reopen_backoff();
                    }
                    if !self.back_off(failures, &mut pauses, &why).await {
                        return;
                    }
                }
            }
        }
    }

    /// After a stream failure (`failures` quick ones in a row): waits the
    /// next of `pauses` before the next re-open, or gives the room up —
    /// closes its clients with 1011 — and returns `false`. Clients wait
    /// meanwhile (nothing is lost); a room that fails at once must not
    /// become a hot loop.
    async fn back_off(
        &mut self,
        failures: u32,
        pauses: &mut ExponentialBackoff,
        why: &str,
    ) -> bool {
        crate::telemetry::metrics().stream_failures.add(1, &[]);
        if failures >= self.config.room_reopen_attempts {
            crate::telemetry::refuse("room_unservable");
            tracing::error!(room = %self.room, failures, reason = %why, "room stream keeps failing; closing its clients");
            let mut reason = format!("room cannot be served: {why}");
            truncate_at_char(&mut reason, MAX_CLOSE_REASON);
            self.close_all(&CloseReason::new(close::INTERNAL_ERROR, reason));
            return false;
        }
        let pause = pauses.next().unwrap_or(REOPEN_BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.cancel.cancelled() => {}
        }
        true
    }

    /// Takes the sessions that asked to open while the stream was ending,
    /// so they are re-opened with the rest rather than each starting a
    /// fresh stream (which would also forget this room's failures).
    /// Client frames waiting meanwhile are dropped: the re-sync after the
    /// re-open asks each client for everything the room lacks. `true` when
    /// the room has sessions.
    fn take_waiting_opens(&mut self) -> bool {
        while let Ok(command) = self.rx.try_recv() {
            match command {
                UpstreamCommand::Open {
                    session_id,
                    grant,
                    socket,
                    reply,
                } => self.admit(session_id, grant, socket, reply),
                UpstreamCommand::Close { session_id, .. } => {
                    self.sessions.remove(&session_id);
                }
                // Applied here; the re-open tells the node what they left.
                UpstreamCommand::Rechecked {
                    session_id,
                    verdict,
                } => {
                    let _ = self.apply_verdict(session_id, verdict);
                }
                UpstreamCommand::RecheckDone => self.recheck_done(),
                UpstreamCommand::Client { .. } => {}
            }
        }
        !self.sessions.is_empty()
    }

    /// Keeps a newly opened session and tells its opener.
    pub(super) fn admit(
        &mut self,
        session_id: u64,
        grant: SessionGrant,
        socket: Arc<ClientSocket>,
        reply: oneshot::Sender<OpenReply>,
    ) {
        self.sessions.insert(
            session_id,
            LocalSession {
                socket,
                grant,
                awareness: None,
            },
        );
        let _ = reply.send(OpenReply::Opened);
    }

    /// Ends quietly with no sessions: openers racing the exit get `Retry`
    /// and start a fresh stream.
    fn retire(&mut self) {
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let UpstreamCommand::Open { reply, .. } = command {
                let _ = reply.send(OpenReply::Retry);
            }
        }
    }

    /// Closes every session and refuses the ones still waiting.
    fn close_all(&mut self, reason: &CloseReason) {
        for (_, session) in self.sessions.drain() {
            session.socket.close(reason.clone());
        }
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let UpstreamCommand::Open { reply, .. } = command {
                let _ = reply.send(OpenReply::Refused(reason.clone()));
            }
        }
    }
}

/// Pauses between quick re-opens of a failing room.
fn reopen_backoff() -> ExponentialBackoff {
    partyline_proto::retry::jittered(REOPEN_BACKOFF_MIN, REOPEN_BACKOFF_MAX)
}

/// A move nobody announced (node died, stream broke, release timed out):
/// nothing tells what the clients have, so each asks for the whole document.
pub(super) fn unplanned_move(min_epoch: u64) -> StreamEnd {
    StreamEnd::Move {
        min_epoch,
        resync: Bytes::from_static(SYNC_STEP1_EMPTY),
        failed: None,
    }
}

/// A stream that broke: re-opened like an unplanned move, with back-off,
/// and given up after `room_reopen_attempts` quick failures in a row.
pub(super) fn failed_stream(why: String) -> StreamEnd {
    StreamEnd::Move {
        min_epoch: 0,
        resync: Bytes::from_static(SYNC_STEP1_EMPTY),
        failed: Some(why),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The frame that opens session `session_id` on the room stream.
pub(super) fn open_session(session_id: u64, grant: &SessionGrant) -> gateway_frame::Kind {
    let permission = if grant.read_only {
        pb::Permission::ReadOnly
    } else {
        pb::Permission::ReadWrite
    };
    gateway_frame::Kind::OpenSession(pb::OpenSession {
        session_id,
        identity: grant.identity.clone(),
        permission: permission as i32,
    })
}
