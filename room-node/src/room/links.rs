//! The gateway links attached to a room and their client sessions: which
//! sessions are open (and the sessions gauge), who may open one, how often
//! a session's resync requests are answered, and sending the room's frames
//! to every link (a link that cannot take them is reported as slow, for
//! the actor to drop). Each link's inbound frames are read by the actor
//! itself, through [`Links::next`]: no task between the gRPC stream and
//! the room.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use partyline_proto::pb::{self, gateway_frame};
use partyline_proto::{close, RoomName};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt, StreamMap};

use super::handle::{LinkId, LinkInbound, LinkSender};
use super::pending::{end_session, Out};
use partyline_proto::ysync::SyncKind;

/// Repeated SyncStep1 / QueryAwareness requests a session may send inside
/// `min_resync_interval` before it is closed (1008).
const MAX_REPEATED_REQUESTS: u32 = 16;

/// One thing a link's inbound stream produced.
pub(super) enum LinkEvent {
    /// A whole frame (chunks joined).
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

/// One client session of a link (its awareness is the
/// [`crate::protocol::SyncRoom`]'s to track).
#[derive(Debug, Default)]
pub(super) struct Session {
    /// The gateway opened it read-only (or made it so on a recheck).
    pub(super) read_only: bool,
    /// The user the gateway authenticated ("" for anonymous): whom the
    /// sessions API lists and closes.
    pub(super) user: Box<str>,
    /// When it opened here (Unix ms).
    pub(super) since_unix_ms: u64,
    /// When this session's last SyncStep1 / QueryAwareness was answered:
    /// each answer may be the whole document (or every presence), so a
    /// client asking in a loop gets at most one per `min_resync_interval`.
    answered_sync: Option<Instant>,
    answered_awareness: Option<Instant>,
    /// Requests dropped since the last answer: a client asking again and
    /// again is not a provider, and is closed past [`MAX_REPEATED_REQUESTS`].
    repeated: u32,
}

/// What to do with a session's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Handle it.
    Answer,
    /// Already answered inside the interval: everything since reaches the
    /// session as broadcasts, so dropping the repeat loses nothing.
    Drop,
    /// The session keeps repeating itself: close it.
    Close,
}

impl Session {
    /// Whether a message of `kind` arriving at `now` is handled: a resync
    /// request is answered at most once per `min_interval`.
    pub(super) fn gate(
        &mut self,
        kind: Option<SyncKind>,
        now: Instant,
        min_interval: Duration,
    ) -> Gate {
        let answered = match kind {
            Some(SyncKind::SyncStep1) => &mut self.answered_sync,
            Some(SyncKind::QueryAwareness) => &mut self.answered_awareness,
            _ => return Gate::Answer,
        };
        if answered.is_some_and(|at| now < at + min_interval) {
            self.repeated += 1;
            return if self.repeated > MAX_REPEATED_REQUESTS {
                Gate::Close
            } else {
                Gate::Drop
            };
        }
        *answered = Some(now);
        self.repeated = 0;
        Gate::Answer
    }
}

/// One gateway stream and its sessions.
pub(super) struct Link {
    /// Frames toward the gateway.
    pub(super) tx: LinkSender,
    /// The gateway's id.
    pub(super) gateway: Arc<str>,
    /// Its sessions by id.
    pub(super) sessions: HashMap<u64, Session>,
}

/// Every link of a room.
#[derive(Default)]
pub(super) struct Links {
    links: HashMap<LinkId, Link>,
    /// Every link's inbound frames.
    inbound: StreamMap<LinkId, LinkEvents>,
    /// Sessions open in the room (the sessions gauge gets them back when
    /// the room goes, however it goes).
    open_sessions: i64,
}

impl Drop for Links {
    fn drop(&mut self) {
        crate::telemetry::metrics()
            .sessions
            .add(-self.open_sessions, &[]);
    }
}

impl Links {
    /// Adds a gateway stream; the actor reads `inbound` from now on.
    pub(super) fn attach(
        &mut self,
        link: LinkId,
        gateway: Arc<str>,
        tx: LinkSender,
        inbound: LinkInbound,
    ) {
        self.links.insert(
            link,
            Link {
                tx,
                gateway,
                sessions: HashMap::new(),
            },
        );
        self.inbound.insert(link, link_events(inbound));
    }

    /// Whether no link is attached.
    pub(super) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Gateway streams attached.
    pub(super) fn len(&self) -> usize {
        self.links.len()
    }

    /// Client sessions over all links.
    pub(super) fn sessions(&self) -> usize {
        self.links.values().map(|l| l.sessions.len()).sum()
    }

    /// Whether no link has a session.
    pub(super) fn no_sessions(&self) -> bool {
        self.links.values().all(|link| link.sessions.is_empty())
    }

    /// The next event of any link; pending while there is none. Cancel
    /// safe ([`StreamMap`] keeps unread items).
    pub(super) async fn next(&mut self) -> (LinkId, LinkEvent) {
        if !self.inbound.is_empty() {
            if let Some(event) = self.inbound.next().await {
                return event;
            }
        }
        std::future::pending().await
    }

    /// A link event that is ready now, without waiting. Polls with the
    /// task's own waker (a no-op waker would leave the streams unable to
    /// wake the actor later).
    pub(super) async fn next_ready(&mut self) -> Option<(LinkId, LinkEvent)> {
        if self.inbound.is_empty() {
            return None;
        }
        std::future::poll_fn(|cx| match Pin::new(&mut self.inbound).poll_next(cx) {
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    /// Opens a session on `link_id`: `Ok(true)` when open (greet it),
    /// `Ok(false)` when the link is gone, `Err` with the frame refusing it.
    /// Only a gateway's explicit answer grants anything: a missing or
    /// unknown permission (a bug, or a client of the gRPC port that is no
    /// gateway) must not mean write.
    pub(super) fn open_session(
        &mut self,
        room: &RoomName,
        link_id: LinkId,
        open: &pb::OpenSession,
        max_sessions: Option<usize>,
    ) -> Result<bool, pb::NodeFrame> {
        let read_only = match open.permission() {
            pb::Permission::ReadOnly => true,
            pb::Permission::ReadWrite => false,
            pb::Permission::Unspecified => {
                crate::telemetry::refuse("permission_unspecified");
                tracing::warn!(room = %room, session = open.session_id, "session refused: opened without a permission");
                return Err(end_session(
                    open.session_id,
                    close::POLICY_VIOLATION,
                    "session opened without a permission",
                ));
            }
        };
        let open_sessions = self.sessions();
        if max_sessions.is_some_and(|max| open_sessions >= max) {
            crate::telemetry::refuse("room_full");
            tracing::info!(room = %room, sessions = open_sessions, "session refused: room is full");
            return Err(end_session(
                open.session_id,
                close::POLICY_VIOLATION,
                format!("room is full ({open_sessions} sessions)"),
            ));
        }
        let Some(link) = self.links.get_mut(&link_id) else {
            return Ok(false);
        };
        let session = Session {
            read_only,
            user: open.identity.as_str().into(),
            since_unix_ms: crate::unix_ms(SystemTime::now()),
            ..Session::default()
        };
        if link.sessions.insert(open.session_id, session).is_none() {
            self.open_sessions += 1;
            crate::telemetry::metrics().sessions.add(1, &[]);
        }
        Ok(true)
    }

    /// The session, if it is open.
    pub(super) fn session_mut(&mut self, link_id: LinkId, session_id: u64) -> Option<&mut Session> {
        self.links
            .get_mut(&link_id)
            .and_then(|link| link.sessions.get_mut(&session_id))
    }

    /// Every session, as the sessions API lists them.
    pub(super) fn list(&self) -> Vec<pb::SessionInfo> {
        let mut sessions: Vec<pb::SessionInfo> = self
            .links
            .values()
            .flat_map(|link| {
                link.sessions.iter().map(|(&id, session)| {
                    let permission = if session.read_only {
                        pb::Permission::ReadOnly
                    } else {
                        pb::Permission::ReadWrite
                    };
                    pb::SessionInfo {
                        id: format!("{}/{id}", link.gateway),
                        user: session.user.to_string(),
                        permission: permission as i32,
                        connected_unix_ms: session.since_unix_ms,
                        gateway: link.gateway.to_string(),
                    }
                })
            })
            .collect();
        sessions.sort_by(|a, b| (a.connected_unix_ms, &a.id).cmp(&(b.connected_unix_ms, &b.id)));
        sessions
    }

    /// The sessions of `user`, by link.
    pub(super) fn of_user(&self, user: &str) -> Vec<(LinkId, u64)> {
        self.links
            .iter()
            .flat_map(|(&link_id, link)| {
                link.sessions
                    .iter()
                    .filter(|(_, session)| &*session.user == user)
                    .map(move |(&session_id, _)| (link_id, session_id))
            })
            .collect()
    }

    /// The links that have sessions, and how many sessions they have.
    pub(super) fn with_sessions(&self) -> Vec<(LinkId, usize)> {
        self.links
            .iter()
            .filter(|(_, link)| !link.sessions.is_empty())
            .map(|(&link_id, link)| (link_id, link.sessions.len()))
            .collect()
    }

    /// The link of `link_id`, if attached.
    pub(super) fn link(&self, link_id: LinkId) -> Option<&Link> {
        self.links.get(&link_id)
    }

    /// Every link, to read.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&LinkId, &Link)> {
        self.links.iter()
    }

    /// Closes a session; it and its link's gateway, `None` when it was not
    /// open.
    pub(super) fn close_session(
        &mut self,
        link_id: LinkId,
        session_id: u64,
    ) -> Option<(Arc<str>, Session)> {
        let link = self.links.get_mut(&link_id)?;
        let session = link.sessions.remove(&session_id)?;
        self.open_sessions -= 1;
        crate::telemetry::metrics().sessions.add(-1, &[]);
        Some((link.gateway.clone(), session))
    }

    /// Detaches a link; returns it (its sessions in it), `None` when it was
    /// not attached. Its inbound stream ends on its own.
    pub(super) fn drop_link(&mut self, link_id: LinkId) -> Option<Link> {
        let link = self.links.remove(&link_id)?;
        let dropped = link.sessions.len() as i64;
        self.open_sessions -= dropped;
        crate::telemetry::metrics().sessions.add(-dropped, &[]);
        Some(link)
    }

    /// Every link, taken out (the room is going away; the gauge is
    /// settled when the room drops).
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (LinkId, Link)> + '_ {
        self.links.drain()
    }

    /// Sends `frame` to one link now, bypassing the outbox (dropped when
    /// the link is full).
    pub(super) fn try_send(&self, link_id: LinkId, frame: pb::NodeFrame) {
        if let Some(link) = self.links.get(&link_id) {
            let _ = link.tx.try_send(Ok(frame));
        }
    }

    /// Queues `outbox` toward the links; returns the links that could not
    /// take their frames (sorted, once each), for the caller to drop.
    pub(super) fn send(&self, outbox: Vec<Out>) -> Vec<LinkId> {
        let mut slow = Vec::new();
        for out in outbox {
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
        slow
    }
}

/// Queues `frame` toward a link, split into chunks when it is large (see
/// [`partyline_proto::chunk`]); `false` when the link cannot take it.
fn send_chunked(tx: &LinkSender, frame: pb::NodeFrame) -> bool {
    partyline_proto::chunk::split(frame).all(|piece| tx.try_send(Ok(piece)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    const INTERVAL: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_resync_request_is_answered_once_per_interval_per_kind() {
        let mut session = Session::default();
        let step1 = Some(SyncKind::SyncStep1);
        let query = Some(SyncKind::QueryAwareness);
        assert_eq!(session.gate(step1, Instant::now(), INTERVAL), Gate::Answer);
        assert_eq!(session.gate(query, Instant::now(), INTERVAL), Gate::Answer);
        tokio::time::advance(INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(session.gate(step1, Instant::now(), INTERVAL), Gate::Drop);
        assert_eq!(session.gate(query, Instant::now(), INTERVAL), Gate::Drop);
        // Edits and awareness are never held back.
        for kind in [
            Some(SyncKind::Update),
            Some(SyncKind::Awareness),
            Some(SyncKind::SyncStep2),
        ] {
            assert_eq!(session.gate(kind, Instant::now(), INTERVAL), Gate::Answer);
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(session.gate(step1, Instant::now(), INTERVAL), Gate::Answer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_repeating_requests_is_closed_past_the_limit() {
        let mut session = Session::default();
        let step1 = Some(SyncKind::SyncStep1);
        assert_eq!(session.gate(step1, Instant::now(), INTERVAL), Gate::Answer);
        for _ in 0..MAX_REPEATED_REQUESTS {
            assert_eq!(session.gate(step1, Instant::now(), INTERVAL), Gate::Drop);
        }
        assert_eq!(session.gate(step1, Instant::now(), INTERVAL), Gate::Close);
        // An answered request starts the count over.
        let mut patient = Session::default();
        for _ in 0..=MAX_REPEATED_REQUESTS {
            assert_eq!(patient.gate(step1, Instant::now(), INTERVAL), Gate::Answer);
            assert_eq!(patient.gate(step1, Instant::now(), INTERVAL), Gate::Drop);
            tokio::time::advance(INTERVAL).await;
        }
    }

    fn open(session_id: u64, permission: pb::Permission) -> pb::OpenSession {
        let mut open = pb::OpenSession {
            session_id,
            ..Default::default()
        };
        open.set_permission(permission);
        open
    }

    #[tokio::test]
    async fn sessions_need_a_permission_and_room_below_max_sessions() {
        let room = RoomName::new("r").unwrap();
        let mut links = Links::default();
        let (tx, _rx) = mpsc::channel(8);
        links.attach(1, "g1".into(), tx, Box::pin(tokio_stream::pending()));
        assert!(links
            .open_session(&room, 1, &open(1, pb::Permission::Unspecified), None)
            .is_err());
        assert_eq!(
            links.open_session(&room, 1, &open(1, pb::Permission::ReadOnly), Some(2)),
            Ok(true)
        );
        assert!(links.session_mut(1, 1).unwrap().read_only);
        assert_eq!(
            links.open_session(&room, 1, &open(2, pb::Permission::ReadWrite), Some(2)),
            Ok(true)
        );
        assert!(links
            .open_session(&room, 1, &open(3, pb::Permission::ReadWrite), Some(2))
            .is_err());
        assert_eq!(
            links.open_session(&room, 9, &open(3, pb::Permission::ReadWrite), None),
            Ok(false)
        );
        assert_eq!(links.sessions(), 2);
        assert!(links.close_session(1, 1).is_some());
        assert!(links.close_session(1, 1).is_none());
        assert!(!links.no_sessions());
        let dropped = links.drop_link(1).unwrap();
        assert_eq!(
            dropped.sessions.keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        assert!(links.no_sessions() && links.is_empty());
    }
}
