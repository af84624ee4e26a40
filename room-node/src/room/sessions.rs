//! The sessions API's part of the room actor: closing one user's sessions
//! (4401), asking the gateways to authorize their sessions again, a
//! gateway's downgrade of a session after such a recheck, and the server's
//! custom messages to every session. Listing is
//! [`super::links::Links::list`]. Runs inside the actor's batch; nothing
//! here waits.

use partyline_proto::close;
use partyline_proto::pb::{self, node_frame};

use super::actor::RoomActor;
use super::handle::LinkId;
use super::links::Session;
use super::pending::{frame, Out};

/// The close reason of a session whose user's access was taken away.
pub(super) const REVOKED: &str = "access revoked";

impl RoomActor {
    /// `session.opened`, when events are configured.
    pub(super) fn session_opened(&self, link_id: LinkId, session_id: u64) {
        let Some(events) = &self.events else { return };
        let Some(link) = self.links.link(link_id) else {
            return;
        };
        let Some(session) = link.sessions.get(&session_id) else {
            return;
        };
        let data = serde_json::json!({
            "session": format!("{}/{session_id}", link.gateway),
            "user": &*session.user,
            "access": access(session),
            "gateway": &*link.gateway,
        });
        events.emit("session.opened", self.room.as_str(), data);
    }

    /// `session.closed`, with how long the session lasted and how it ended.
    pub(super) fn session_closed(
        &self,
        gateway: &str,
        session_id: u64,
        session: &Session,
        code: u16,
        reason: &str,
    ) {
        let Some(events) = &self.events else { return };
        let now = crate::unix_ms(std::time::SystemTime::now());
        let data = serde_json::json!({
            "session": format!("{gateway}/{session_id}"),
            "user": &*session.user,
            "access": access(session),
            "gateway": gateway,
            "duration_ms": now.saturating_sub(session.since_unix_ms),
            "close_code": code,
            "close_reason": reason,
        });
        events.emit("session.closed", self.room.as_str(), data);
    }

    /// `session.closed` for every session still open, as the room ends.
    pub(super) fn sessions_ended(&self, code: u16, reason: &str) {
        if self.events.is_none() {
            return;
        }
        for (_, link) in self.links.iter() {
            for (&session_id, session) in &link.sessions {
                self.session_closed(&link.gateway, session_id, session, code, reason);
            }
        }
    }

    /// Closes every session of `user` with 4401; how many there were.
    pub(super) fn close_user(&mut self, user: &str) -> usize {
        let sessions = self.links.of_user(user);
        for &(link_id, session_id) in &sessions {
            self.end_session(link_id, session_id, close::UNAUTHORIZED, REVOKED);
        }
        if !sessions.is_empty() {
            tracing::info!(room = %self.room, user, sessions = sessions.len(), "sessions closed: access revoked");
        }
        sessions.len()
    }

    /// Sends `recheck` to every link with sessions; how many sessions
    /// those links carry.
    pub(super) fn recheck(&mut self) -> usize {
        let links = self.links.with_sessions();
        for &(link_id, _) in &links {
            let recheck = frame(node_frame::Kind::Recheck(pb::Recheck {}));
            self.pending.push(Out::Link(link_id, recheck));
        }
        links.iter().map(|(_, sessions)| sessions).sum()
    }

    /// Sends `message` to every session as y-partyserver does
    /// (`broadcastCustomMessage`: a `__YPS:` text frame); how many sessions
    /// get it.
    pub(super) fn server_message(&mut self, message: &str) -> usize {
        let sessions = self.links.sessions();
        if sessions > 0 {
            let relay = node_frame::Kind::Broadcast(pb::Broadcast {
                payload: format!("__YPS:{message}").into(),
                kind: pb::FrameKind::Text as i32,
                has_except: false,
                except_session: 0,
                more: false,
            });
            self.pending.push(Out::All(frame(relay)));
        }
        sessions
    }

    /// A gateway authorized a session again: it may only lose write access
    /// this way (more comes with a new connect).
    pub(super) fn update_session(&mut self, link_id: LinkId, update: &pb::UpdateSession) {
        if update.permission() != pb::Permission::ReadOnly {
            return;
        }
        if let Some(session) = self.links.session_mut(link_id, update.session_id) {
            if !session.read_only {
                session.read_only = true;
                tracing::info!(room = %self.room, session = update.session_id, "session made read-only by a recheck");
            }
        }
    }
}

/// A session's access as events and the API name it.
fn access(session: &Session) -> &'static str {
    if session.read_only {
        "read"
    } else {
        "write"
    }
}
