//! One room stream's life: client frames up, node frames down to the
//! sessions they are for, until the stream ends, the room moves, the
//! linger runs out or the gateway shuts down.
//!
//! Owns the fan-out (a broadcast is encoded once and written straight
//! into each client's socket), closing clients too slow to keep up, each
//! client's last awareness (kept for a re-open) and re-opening sessions on
//! a new stream. It never dials the owner (`connect`) nor decides whether
//! a failed room is tried again (`actor`).

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::KeyValue;
use partyline_proto::chunk::{split, Joiner, MAX_UNARY_MESSAGE};
use partyline_proto::close;
use partyline_proto::pb::{self, gateway_frame, node_frame};
use partyline_proto::ysync::SyncKind;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::actor::{failed_stream, open_session, unplanned_move};
use super::connect::Connection;
use super::{StreamEnd, UpstreamActor, UpstreamCommand, UpstreamGone};
use crate::client_socket::Frame;
use crate::messages::{ClientFrame, CloseReason};

impl UpstreamActor {
    /// Relays frames both ways until the stream ends.
    pub(super) async fn serve(&mut self, connection: Connection) -> StreamEnd {
        let Connection {
            to_node,
            mut from_node,
            url,
        } = connection;
        let linger = tokio::time::sleep(self.config.upstream_linger);
        tokio::pin!(linger);
        // Armed when a new map gives the room to another node; the old
        // owner's `Released` normally comes first.
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let mut maps = self.router.subscribe();
        maps.mark_unchanged();
        // The map may have moved the room while the stream was opening.
        let mut moving = self
            .router
            .owner_url(&self.room)
            .is_some_and(|owner| owner != url);
        if moving {
            grace
                .as_mut()
                .reset(Instant::now() + self.config.release_grace);
        }
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        // Messages over a chunk arrive in pieces (a large document's
        // SyncStep2); the client gets them whole.
        let mut joiner = Joiner::new(MAX_UNARY_MESSAGE);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    return StreamEnd::Close(CloseReason::new(self.config.shutdown_close_code, "gateway shutting down"));
                }
                frame = from_node.message() => match frame.map(|f| f.map(|f| joiner.push(f))) {
                    Ok(Some(Ok(Some(frame)))) => {
                        if let Some(end) = self.handle_node_frame(frame, &to_node).await {
                            return end;
                        }
                    }
                    Ok(Some(Ok(None))) => {}
                    Ok(Some(Err(error))) => {
                        tracing::warn!(room = %self.room, owner = %url, %error, "room stream broke the chunking rules; re-opening the room");
                        return failed_stream(error.to_string());
                    }
                    // A node ends a stream with no session on it when the
                    // room goes away (a delete): nothing to re-open then,
                    // unless a session is waiting to open.
                    Ok(None) if self.sessions.is_empty() => {
                        tracing::debug!(room = %self.room, owner = %url, "room stream ended with no session on it");
                        return failed_stream("the room stream ended".to_owned());
                    }
                    Ok(None) => {
                        tracing::warn!(room = %self.room, owner = %url, "room stream ended; re-opening the room");
                        return failed_stream("the room stream ended".to_owned());
                    }
                    Err(status) => {
                        tracing::warn!(room = %self.room, owner = %url, %status, "room stream failed; re-opening the room");
                        return failed_stream(status.message().to_owned());
                    }
                },
                command = self.rx.recv() => {
                    let Some(command) = command else {
                        return StreamEnd::Close(CloseReason::new(close::NORMAL, ""));
                    };
                    if self.handle_session_command(command, &to_node).await.is_err() {
                        return unplanned_move(0);
                    }
                    if self.sessions.is_empty() {
                        linger.as_mut().reset(Instant::now() + self.config.upstream_linger);
                    }
                }
                changed = maps.changed(), if !moving => {
                    if changed.is_err() {
                        moving = true;
                        continue;
                    }
                    if self.router.owner_url(&self.room).is_some_and(|owner| owner != url) {
                        moving = true;
                        grace.as_mut().reset(Instant::now() + self.config.release_grace);
                    }
                }
                _ = &mut grace, if moving => {
                    tracing::warn!(room = %self.room, owner = %url, "old owner did not release the room in time; re-opening it on the new owner");
                    return unplanned_move(self.router.epoch());
                }
                _ = &mut linger, if self.sessions.is_empty() => return StreamEnd::Idle,
            }
        }
    }

    /// Re-opens every local session on a new stream: the node greets each
    /// one (SyncStep1 + awareness, which the client answers with what the
    /// node lacks), gets the client's last awareness back, and answers
    /// `resync` with what the client lacks.
    pub(super) async fn reopen_sessions(
        &self,
        connection: &Connection,
        resync: &Bytes,
    ) -> Result<(), CloseReason> {
        for (&session_id, session) in &self.sessions {
            let mut frames = vec![open_session(session_id, &session.grant)];
            let replayed = session.awareness.iter().chain([resync]);
            frames.extend(replayed.map(|payload| {
                let frame = ClientFrame::binary(payload.clone());
                gateway_frame::Kind::ClientMessage(frame.into_message(session_id))
            }));
            for kind in frames {
                if connection
                    .to_node
                    .send(pb::GatewayFrame { kind: Some(kind) })
                    .await
                    .is_err()
                {
                    return Err(CloseReason::new(
                        close::INTERNAL_ERROR,
                        "room stream failed",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Passes one session's command on to the node; `Err` when the stream
    /// is gone.
    async fn handle_session_command(
        &mut self,
        command: UpstreamCommand,
        to_node: &mpsc::Sender<pb::GatewayFrame>,
    ) -> Result<(), UpstreamGone> {
        let frame = match command {
            UpstreamCommand::Open {
                session_id,
                grant,
                socket,
                reply,
            } => {
                let frame = open_session(session_id, &grant);
                self.admit(session_id, grant, socket, reply);
                frame
            }
            UpstreamCommand::Client { session_id, frame } => {
                let Some(session) = self.sessions.get_mut(&session_id) else {
                    return Ok(());
                };
                // Copied: the payload may share the socket's read buffer,
                // which a kept slice would pin for the life of the session.
                if frame.kind() == Some(SyncKind::Awareness) {
                    session.awareness = Some(Bytes::copy_from_slice(&frame.payload));
                }
                gateway_frame::Kind::ClientMessage(frame.into_message(session_id))
            }
            UpstreamCommand::Close { session_id, how } => {
                if self.sessions.remove(&session_id).is_none() {
                    return Ok(());
                }
                gateway_frame::Kind::CloseSession(pb::CloseSession {
                    session_id,
                    close_code: u32::from(how.code),
                    reason: how.reason,
                })
            }
            UpstreamCommand::Rechecked {
                session_id,
                verdict,
            } => match self.apply_verdict(session_id, verdict) {
                Some(frame) => frame,
                None => return Ok(()),
            },
            UpstreamCommand::RecheckDone => {
                self.recheck_done();
                return Ok(());
            }
        };
        for piece in split(pb::GatewayFrame { kind: Some(frame) }) {
            to_node.send(piece).await.map_err(|_| UpstreamGone)?;
        }
        Ok(())
    }

    /// Routes one frame from the node; `Some` ends the stream.
    async fn handle_node_frame(
        &mut self,
        frame: pb::NodeFrame,
        to_node: &mpsc::Sender<pb::GatewayFrame>,
    ) -> Option<StreamEnd> {
        let mut slow = Vec::new();
        let metrics = crate::telemetry::metrics();
        match frame.kind? {
            node_frame::Kind::Deliver(deliver) => {
                let text = deliver.kind() == pb::FrameKind::Text;
                if let Some(session) = self.sessions.get(&deliver.session_id) {
                    if let Some(frame) = Frame::encode(&deliver.payload, text) {
                        let kind = crate::telemetry::frame_kind(&deliver.payload, text);
                        metrics.frames_out.add(1, &[KeyValue::new("kind", kind)]);
                        if session.socket.send(&frame).is_err() {
                            slow.push(deliver.session_id);
                        }
                    }
                }
            }
            node_frame::Kind::Broadcast(broadcast) => {
                let started = Instant::now();
                let text = broadcast.kind() == pb::FrameKind::Text;
                let except = broadcast.has_except.then_some(broadcast.except_session);
                // Encoded once: every client gets the same bytes, written
                // straight into its socket.
                let frame = Frame::encode(&broadcast.payload, text)?;
                let mut sent = 0;
                for (&session_id, session) in &self.sessions {
                    if Some(session_id) == except {
                        continue;
                    }
                    sent += 1;
                    if session.socket.send(&frame).is_err() {
                        slow.push(session_id);
                    }
                }
                let kind = crate::telemetry::frame_kind(&broadcast.payload, text);
                metrics.frames_out.add(sent, &[KeyValue::new("kind", kind)]);
                metrics.fanout.record(started.elapsed().as_secs_f64(), &[]);
            }
            node_frame::Kind::EndSession(end) => {
                if let Some(session) = self.sessions.remove(&end.session_id) {
                    let code = u16::try_from(end.close_code).unwrap_or(close::INTERNAL_ERROR);
                    if code == close::UNAUTHORIZED {
                        self.forget_grant(session.grant.record.clone());
                    }
                    session.socket.close(CloseReason::new(code, end.reason));
                }
            }
            node_frame::Kind::Released(released) => {
                tracing::debug!(room = %self.room, epoch = released.epoch, "room released by its old owner");
                return Some(StreamEnd::Move {
                    min_epoch: released.epoch,
                    resync: released.resync,
                    failed: None,
                });
            }
            node_frame::Kind::NotOwner(not_owner) => {
                tracing::info!(room = %self.room, epoch = not_owner.epoch, "room no longer on its node; re-opening it");
                return Some(unplanned_move(not_owner.epoch));
            }
            node_frame::Kind::Recheck(_) => self.start_recheck(),
            node_frame::Kind::Attached(_) => {}
        }
        for session_id in slow {
            if let Some(session) = self.sessions.remove(&session_id) {
                crate::telemetry::refuse("too_slow");
                tracing::info!(room = %self.room, session = session_id, "client too slow; closing it");
                session
                    .socket
                    .close(CloseReason::new(close::POLICY_VIOLATION, "client too slow"));
                let frame = gateway_frame::Kind::CloseSession(pb::CloseSession {
                    session_id,
                    close_code: u32::from(close::POLICY_VIOLATION),
                    reason: "client too slow".to_owned(),
                });
                if to_node
                    .send(pb::GatewayFrame { kind: Some(frame) })
                    .await
                    .is_err()
                {
                    return Some(unplanned_move(0));
                }
            }
        }
        None
    }
}
