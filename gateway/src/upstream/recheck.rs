//! Rechecks: the room node asked (`POST /v1/rooms/{room}/sessions/recheck`)
//! to authorize this room's local sessions again. Each session is asked
//! about with the request it connected with; one that is refused now is
//! closed (4401 "access revoked"), one granted read only where it could
//! write is made read-only (its next edit is refused by the node, which
//! tells the client), and the rest keep what they have. An authorizer that
//! cannot decide (webhook down) changes nothing: a recheck never closes a
//! session on a failure to answer.
//!
//! The authorizer is asked on a task of its own, a few sessions at a time,
//! so the stream keeps relaying meanwhile; its verdicts come back through
//! the actor's command channel. One recheck runs at a time per room: one
//! asked for meanwhile runs once it is done.

use std::sync::Arc;

use futures_util::StreamExt;
use partyline_proto::close;
use partyline_proto::pb::{self, gateway_frame};

use super::{UpstreamActor, UpstreamCommand};
use crate::auth::{Access, ConnectRecord, Refusal};
use crate::messages::CloseReason;

/// Sessions whose authorizer calls are in flight at once.
const CONCURRENCY: usize = 8;

/// The close reason of a session refused on a recheck.
const REVOKED: &str = "access revoked";

/// What a recheck decided for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Unchanged (or the authorizer could not decide).
    Keep,
    /// Writable before, read only now.
    ReadOnly,
    /// Refused now.
    Revoke,
}

impl Verdict {
    fn of(answer: &Result<Access, Refusal>, read_only: bool) -> Self {
        match answer {
            Ok(access) if access.read_only && !read_only => Self::ReadOnly,
            Ok(_) | Err(Refusal::Unavailable(_)) => Self::Keep,
            Err(_) => Self::Revoke,
        }
    }
}

/// Whether a recheck runs, and whether another was asked for meanwhile.
#[derive(Debug, Default)]
pub(super) struct RecheckState {
    running: bool,
    again: bool,
}

impl UpstreamActor {
    /// Starts a recheck of every local session, or queues one behind the
    /// recheck in flight.
    pub(super) fn start_recheck(&mut self) {
        if self.recheck.running {
            self.recheck.again = true;
            return;
        }
        let sessions: Vec<(u64, Arc<ConnectRecord>, bool)> = self
            .sessions
            .iter()
            .filter_map(|(&id, session)| {
                let record = session.grant.record.clone()?;
                Some((id, record, session.grant.read_only))
            })
            .collect();
        if sessions.is_empty() {
            return;
        }
        self.recheck.running = true;
        let (config, me, room) = (self.config.clone(), self.me.clone(), self.room.clone());
        tracing::info!(room = %room, sessions = sessions.len(), "rechecking sessions");
        tokio::spawn(async move {
            let mut verdicts = futures_util::stream::iter(sessions)
                .map(|(session_id, record, read_only)| {
                    let config = config.clone();
                    async move {
                        let answer = config.auth.recheck(&record.request()).await;
                        if let Err(Refusal::Unavailable(why)) = &answer {
                            tracing::warn!(session = session_id, %why, "recheck could not decide; the session keeps its access");
                        }
                        (session_id, Verdict::of(&answer, read_only))
                    }
                })
                .buffer_unordered(CONCURRENCY);
            while let Some((session_id, verdict)) = verdicts.next().await {
                if verdict == Verdict::Keep {
                    continue;
                }
                let Some(tx) = me.upgrade() else { return };
                let command = UpstreamCommand::Rechecked {
                    session_id,
                    verdict,
                };
                if tx.send(command).await.is_err() {
                    return;
                }
            }
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(UpstreamCommand::RecheckDone).await;
            }
        });
    }

    /// A session's access was revoked (by the sessions API, or a recheck):
    /// its cached authorizer answer goes, so a reconnect is asked about
    /// again rather than let in on the old answer.
    pub(super) fn forget_grant(&self, record: Option<Arc<ConnectRecord>>) {
        if let Some(record) = record {
            let config = self.config.clone();
            tokio::spawn(async move { config.auth.forget(&record.request()).await });
        }
    }

    /// The recheck in flight ended: run the one asked for meanwhile.
    pub(super) fn recheck_done(&mut self) {
        self.recheck.running = false;
        if std::mem::take(&mut self.recheck.again) {
            self.start_recheck();
        }
    }

    /// Applies a session's verdict here; the frame that tells the node, if
    /// it must be told.
    pub(super) fn apply_verdict(
        &mut self,
        session_id: u64,
        verdict: Verdict,
    ) -> Option<gateway_frame::Kind> {
        match verdict {
            Verdict::Keep => None,
            Verdict::Revoke => {
                let session = self.sessions.remove(&session_id)?;
                tracing::info!(room = %self.room, session = session_id, "session refused on recheck; closing it");
                session
                    .socket
                    .close(CloseReason::new(close::UNAUTHORIZED, REVOKED));
                Some(gateway_frame::Kind::CloseSession(pb::CloseSession {
                    session_id,
                    close_code: u32::from(close::UNAUTHORIZED),
                    reason: REVOKED.to_owned(),
                }))
            }
            Verdict::ReadOnly => {
                let session = self.sessions.get_mut(&session_id)?;
                session.grant.read_only = true;
                tracing::info!(room = %self.room, session = session_id, "session made read-only on recheck");
                Some(gateway_frame::Kind::UpdateSession(pb::UpdateSession {
                    session_id,
                    permission: pb::Permission::ReadOnly as i32,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(read_only: bool) -> Result<Access, Refusal> {
        Ok(Access {
            identity: "u".into(),
            name: None,
            read_only,
            expires_at: None,
        })
    }

    #[test]
    fn verdicts_only_take_away() {
        assert_eq!(Verdict::of(&access(true), false), Verdict::ReadOnly);
        assert_eq!(Verdict::of(&access(true), true), Verdict::Keep);
        assert_eq!(Verdict::of(&access(false), true), Verdict::Keep);
        assert_eq!(Verdict::of(&access(false), false), Verdict::Keep);
        let refused = Err(Refusal::Forbidden("r".into()));
        assert_eq!(Verdict::of(&refused, false), Verdict::Revoke);
        let invalid = Err(Refusal::Invalid("expired".into()));
        assert_eq!(Verdict::of(&invalid, true), Verdict::Revoke);
        let down = Err(Refusal::Unavailable("timeout".into()));
        assert_eq!(Verdict::of(&down, false), Verdict::Keep);
    }
}
