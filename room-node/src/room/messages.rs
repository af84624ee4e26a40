//! What the room actor does with a client's message: the session's limits
//! (frame size, repeated resync requests, text frames), the y-sync handling
//! ([`crate::protocol::SyncRoom::handle_frame`], which says what kind of message it
//! handled), and queueing the outcome: log entries first, then replies and
//! broadcasts, awareness through the throttle. Server-API updates take the
//! same path without a session. Runs inside the actor's batch; nothing here
//! waits.

use bytes::Bytes;
use partyline_proto::close;
use partyline_proto::pb::{self, node_frame};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::actor::RoomActor;
use super::handle::{ApplyError, LinkId};
use super::links::Gate;
use super::pending::{broadcast, deliver, end_session, frame, Out};
use crate::protocol::{Access, Outcome, SessionKey};
use partyline_proto::ysync::SyncKind;

impl RoomActor {
    /// A client's message: the session's limits first, then the y-sync
    /// handling, then its outcome queued for the batch's commit.
    pub(super) fn handle_message(&mut self, link_id: LinkId, message: pb::ClientMessage) {
        let session_id = message.session_id;
        let _span =
            crate::telemetry::frame_span(&message.traceparent, self.room.as_str(), session_id);
        let room_access = self.write_access(message.payload.len());
        let min_resync = self.config.min_resync_interval;
        let Some(session) = self.links.session_mut(link_id, session_id) else {
            return;
        };
        let read_only = session.read_only;
        let text = message.kind() == pb::FrameKind::Text;
        let too_big = self
            .policy
            .max_frame_bytes
            .is_some_and(|max| message.payload.len() > max);
        // Only a binary frame within the size limit is a request to count.
        let gate = if too_big || text {
            Gate::Answer
        } else {
            session.gate(
                partyline_proto::ysync::message_kind(&message.payload),
                Instant::now(),
                min_resync,
            )
        };
        if too_big {
            crate::telemetry::refuse("frame_too_big");
            tracing::info!(room = %self.room, session = session_id, bytes = message.payload.len(), "message over the room's max_frame_bytes; closing session");
            let reason = "message over the room's size limit";
            return self.end_session(link_id, session_id, close::MESSAGE_TOO_BIG, reason);
        }
        if text {
            return self.text_message(link_id, session_id, read_only, message.payload);
        }
        if gate != Gate::Answer {
            crate::telemetry::refuse("repeated_sync_request");
        }
        match gate {
            Gate::Answer => {}
            Gate::Drop => {
                tracing::debug!(room = %self.room, session = session_id, "repeated sync request inside min_resync_interval dropped");
                return;
            }
            Gate::Close => {
                tracing::info!(room = %self.room, session = session_id, "session keeps repeating sync requests; closing it");
                let reason = "too many repeated sync requests";
                return self.end_session(link_id, session_id, close::POLICY_VIOLATION, reason);
            }
        }
        let access = if read_only {
            Access::ReadOnly
        } else {
            room_access
        };
        match self
            .sync
            .handle_frame(&message.payload, access, (link_id, session_id))
        {
            Ok(outcome) => self.take_outcome(link_id, session_id, access, outcome),
            Err(error) => {
                crate::telemetry::refuse("protocol_error");
                tracing::info!(room = %self.room, session = session_id, %error, "malformed frame; closing session");
                let reason = error.to_string();
                self.end_session(link_id, session_id, close::PROTOCOL_ERROR, &reason);
            }
        }
    }

    /// Queues what handling a session's message produced.
    fn take_outcome(&mut self, link_id: LinkId, session_id: u64, access: Access, outcome: Outcome) {
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
                Access::Ephemeral => "ephemeral_write",
                _ => "read_only",
            });
            if access == Access::LogUnavailable {
                self.pending.note_refused_write();
                tracing::warn!(room = %self.room, session = session_id, "write refused: update log unreachable and the hold buffer is full");
            } else if access == Access::DocumentFull {
                tracing::info!(room = %self.room, session = session_id, bytes = self.doc_bytes, "write refused: document at max_doc_bytes");
            } else if access == Access::Ephemeral {
                tracing::debug!(room = %self.room, session = session_id, "write to an ephemeral room refused");
            } else {
                tracing::info!(room = %self.room, session = session_id, "write from a read-only session dropped");
            }
        }
        self.doc_bytes += self.pending.log(outcome.log);
        for payload in outcome.reply {
            let frame = deliver(session_id, payload);
            if access == Access::LogUnavailable {
                // Told at once: the held outbox waits for the log.
                self.links.try_send(link_id, frame);
            } else {
                self.pending.push(Out::Link(link_id, frame));
            }
        }
        let session = (link_id, session_id);
        for payload in outcome.broadcast {
            let relayed = match outcome.kind {
                Some(SyncKind::Awareness) => self.awareness.offer(session, payload, Instant::now()),
                _ => Some(payload),
            };
            if let Some(payload) = relayed {
                self.pending.push(Out::All(broadcast(payload)));
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

    /// A text frame: a y-partyserver custom message (`__YPS:`) is relayed
    /// to the room's other sessions; anything else closes the session.
    fn text_message(&mut self, link_id: LinkId, session_id: u64, read_only: bool, payload: Bytes) {
        let custom = payload.starts_with(b"__YPS:");
        if custom && read_only && !self.policy.read_only_custom_messages {
            // A viewer could otherwise speak to every app client.
            crate::telemetry::refuse("read_only_custom_message");
            tracing::debug!(room = %self.room, session = session_id, "custom message from a read-only session dropped");
        } else if custom {
            let relay = node_frame::Kind::Broadcast(pb::Broadcast {
                payload,
                kind: pb::FrameKind::Text as i32,
                has_except: true,
                except_session: session_id,
                more: false,
            });
            self.pending.push(Out::All(frame(relay)));
        } else {
            let reason = "unsupported text message";
            self.end_session(link_id, session_id, close::UNSUPPORTED_DATA, reason);
        }
    }

    /// What a write of `bytes` may do now: refused in an ephemeral room,
    /// while the log is down and the hold buffer full, or past the room's
    /// `max_doc_bytes`.
    fn write_access(&self, bytes: usize) -> Access {
        let max_doc_bytes = self
            .policy
            .max_doc_bytes
            .unwrap_or(self.config.max_doc_bytes);
        // An ephemeral room is one whose storage keeps nothing: no walk of
        // the mode table per frame.
        if self.storage.is_ephemeral() {
            Access::Ephemeral
        } else if self.pending.full() {
            Access::LogUnavailable
        } else if self.doc_bytes + bytes as u64 > max_doc_bytes {
            Access::DocumentFull
        } else {
            Access::ReadWrite
        }
    }

    /// A server-side update: applied, logged and broadcast like a client's
    /// (the room's size policy and log-outage refusals apply too),
    /// answered once it is logged.
    pub(super) fn apply(
        &mut self,
        update: Vec<u8>,
        reply: oneshot::Sender<Result<(), ApplyError>>,
    ) {
        let access = self.write_access(update.len());
        let result = match self.sync.apply_server_update(update, access) {
            Ok(mut outcome) => {
                // What yrs took of a refused or held-back update is logged
                // and sent like any edit.
                let refused = outcome.refused.take();
                self.doc_bytes += self.pending.log(outcome.log);
                for payload in outcome.broadcast {
                    self.pending.push(Out::All(broadcast(payload)));
                }
                if outcome.missing_dependency {
                    Err(ApplyError::BadUpdate(
                        "update depends on content the room does not have".to_owned(),
                    ))
                } else if outcome.write_denied {
                    Err(match access {
                        Access::DocumentFull => ApplyError::DocumentFull,
                        Access::Ephemeral => ApplyError::Ephemeral,
                        _ => ApplyError::StorageUnavailable,
                    })
                } else if let Some(error) = refused {
                    Err(ApplyError::BadUpdate(error.to_string()))
                } else {
                    return self.pending.acknowledge_after(reply);
                }
            }
            Err(error) => Err(ApplyError::BadUpdate(error.to_string())),
        };
        let _ = reply.send(result);
    }

    /// Ends a session on the room's initiative; the gateway closes the socket.
    pub(super) fn end_session(
        &mut self,
        link_id: LinkId,
        session_id: u64,
        code: u16,
        reason: &str,
    ) {
        let end = end_session(session_id, code, reason);
        self.pending.push(Out::Link(link_id, end));
        self.close_session(link_id, session_id, code, reason);
    }

    /// A session closed (with `code` and `reason`, for its event): its
    /// awareness goes, and an emptied room is a snapshot trigger.
    pub(super) fn close_session(
        &mut self,
        link_id: LinkId,
        session_id: u64,
        code: u16,
        reason: &str,
    ) {
        let Some((gateway, session)) = self.links.close_session(link_id, session_id) else {
            return;
        };
        self.session_closed(&gateway, session_id, &session, code, reason);
        self.end_awareness([(link_id, session_id)]);
        self.awareness.forget((link_id, session_id));
        if self.links.no_sessions() {
            self.snapshots.schedule.note_emptied();
        }
    }

    /// A link ended or was dropped: as for closing each of its sessions.
    pub(super) fn drop_link(&mut self, link_id: LinkId) {
        let Some(link) = self.links.drop_link(link_id) else {
            return;
        };
        for (&session_id, session) in &link.sessions {
            self.session_closed(
                &link.gateway,
                session_id,
                session,
                close::ABNORMAL,
                "gateway stream ended",
            );
        }
        let had_sessions = !link.sessions.is_empty();
        self.end_awareness(link.sessions.into_keys().map(|session| (link_id, session)));
        if had_sessions && self.links.no_sessions() {
            self.snapshots.schedule.note_emptied();
        }
    }

    /// Removes what closed sessions spoke for, telling the others.
    fn end_awareness(&mut self, sessions: impl IntoIterator<Item = SessionKey>) {
        if let Some(payload) = self.sync.end_sessions(sessions) {
            self.pending.push(Out::All(broadcast(payload)));
        }
    }
}
