//! The awareness throttle of a room whose policy sets
//! `awareness_throttle`: a session's awareness is relayed at most once per
//! window; what arrives inside the window is held (latest wins) and relayed
//! when the window has passed. Plain data on the actor's clock; the actor
//! owns it, asks [`AwarenessThrottle::next_flush`] when to wake, and drops
//! a session's entries when the session closes.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::SessionKey;

/// When each session's awareness last went out, and what is held back.
#[derive(Debug, Default)]
pub(super) struct AwarenessThrottle {
    /// `None`: every awareness update is relayed at once.
    window: Option<Duration>,
    sent: HashMap<SessionKey, Instant>,
    held: HashMap<SessionKey, Bytes>,
}

impl AwarenessThrottle {
    /// A throttle relaying each session at most once per `window`.
    pub(super) fn new(window: Option<Duration>) -> Self {
        Self {
            window,
            ..Self::default()
        }
    }

    /// `session`'s awareness update: `Some` to relay now, `None` when it is
    /// held until the session's window has passed.
    pub(super) fn offer(
        &mut self,
        session: SessionKey,
        payload: Bytes,
        now: Instant,
    ) -> Option<Bytes> {
        let Some(window) = self.window else {
            return Some(payload);
        };
        match self.sent.get(&session) {
            Some(&sent) if now < sent + window => {
                self.held.insert(session, payload);
                None
            }
            _ => {
                self.sent.insert(session, now);
                Some(payload)
            }
        }
    }

    /// When the earliest held update may go out; `None` when none is held
    /// (only rooms holding something pay for a timer).
    pub(super) fn next_flush(&self) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        let window = self.window.unwrap_or_default();
        let earliest = self
            .held
            .keys()
            .filter_map(|session| self.sent.get(session))
            .map(|&sent| sent + window)
            .min();
        Some(earliest.unwrap_or_else(Instant::now))
    }

    /// The held updates whose window has passed at `now`, to relay.
    pub(super) fn flush(&mut self, now: Instant) -> Vec<Bytes> {
        let window = self.window.unwrap_or_default();
        let due: Vec<SessionKey> = self
            .held
            .keys()
            .filter(|session| {
                self.sent
                    .get(session)
                    .is_none_or(|&sent| now >= sent + window)
            })
            .copied()
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for session in due {
            if let Some(payload) = self.held.remove(&session) {
                self.sent.insert(session, now);
                out.push(payload);
            }
        }
        out
    }

    /// Forgets a closed session (its held update is dropped: its
    /// awareness is removed anyway).
    pub(super) fn forget(&mut self, session: SessionKey) {
        self.sent.remove(&session);
        self.held.remove(&session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(500);
    const A: SessionKey = (1, 1);
    const B: SessionKey = (1, 2);

    fn bytes(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn one_update_per_window_and_the_latest_held_one_after_it() {
        let mut throttle = AwarenessThrottle::new(Some(WINDOW));
        let start = Instant::now();
        assert_eq!(throttle.offer(A, bytes("a1"), start), Some(bytes("a1")));
        assert_eq!(throttle.next_flush(), None, "nothing held, no timer");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(throttle.offer(A, bytes("a2"), Instant::now()), None);
        assert_eq!(throttle.offer(A, bytes("a3"), Instant::now()), None);
        // Another session has a window of its own.
        assert_eq!(
            throttle.offer(B, bytes("b1"), Instant::now()),
            Some(bytes("b1"))
        );
        assert_eq!(throttle.next_flush(), Some(start + WINDOW));
        assert!(
            throttle.flush(Instant::now()).is_empty(),
            "not before the window"
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            throttle.flush(Instant::now()),
            vec![bytes("a3")],
            "latest wins"
        );
        assert_eq!(throttle.next_flush(), None);
        // The flush opened a new window.
        assert_eq!(throttle.offer(A, bytes("a4"), Instant::now()), None);
        assert_eq!(throttle.next_flush(), Some(Instant::now() + WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_window_or_after_it_updates_go_at_once() {
        let mut unthrottled = AwarenessThrottle::new(None);
        for _ in 0..3 {
            assert!(unthrottled.offer(A, bytes("a"), Instant::now()).is_some());
        }
        let mut throttle = AwarenessThrottle::new(Some(WINDOW));
        assert!(throttle.offer(A, bytes("a1"), Instant::now()).is_some());
        tokio::time::advance(WINDOW).await;
        assert!(throttle.offer(A, bytes("a2"), Instant::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_session_leaves_nothing_held() {
        let mut throttle = AwarenessThrottle::new(Some(WINDOW));
        throttle.offer(A, bytes("a1"), Instant::now());
        throttle.offer(A, bytes("a2"), Instant::now());
        throttle.forget(A);
        assert_eq!(throttle.next_flush(), None);
        tokio::time::advance(WINDOW).await;
        assert!(throttle.flush(Instant::now()).is_empty());
        assert!(throttle.offer(A, bytes("a3"), Instant::now()).is_some());
    }
}
