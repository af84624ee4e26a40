//! When the coordinator's loop must next wake if no event comes first:
//! [`Due::next_wake`], and the warm-up a view needs before the leader acts.
//!
//! Owns the choice between the deadlines only, pure so it is tested
//! without NATS; it must not change any of them (the state does).

use std::time::Duration;

use tokio::time::Instant;

use super::RECHECK;
use crate::CoordinatorConfig;

/// What a coordinator's loop waits for; [`Due::next_wake`] picks the
/// earliest. Separate from [`State`](super::State) so the choice is tested
/// without NATS.
#[derive(Debug, Clone, Copy)]
pub(super) struct Due {
    pub(super) connected: bool,
    pub(super) leading: bool,
    pub(super) needs_resync: bool,
    /// When the next node expires if it stays silent.
    pub(super) expiry: Option<Instant>,
    pub(super) evaluate_at: Option<Instant>,
    pub(super) retry_at: Option<Instant>,
    /// The end of warm-up, while a tick still waits for it.
    pub(super) warm_until: Option<Instant>,
    pub(super) last_tick: Instant,
}

impl Due {
    pub(super) fn next_wake(&self, now: Instant) -> Instant {
        let backstop = self.last_tick + RECHECK;
        if !self.connected {
            // Frozen: nothing expires and nothing is written until the
            // reconnect event.
            return backstop;
        }
        let due = if !self.leading {
            [self.expiry, None, None, None]
        } else if self.needs_resync {
            // A tick does nothing else until the resync succeeds, so no
            // other deadline (an overdue node, a passed warm-up) may make
            // it retry sooner than `retry_at`.
            [Some(self.retry_at.unwrap_or(now)), None, None, None]
        } else {
            [
                self.expiry,
                self.evaluate_at,
                self.retry_at,
                self.warm_until,
            ]
        };
        due.into_iter().flatten().fold(backstop, Instant::min)
    }
}

/// How long a view must have been listening before the leader acts on it:
/// long enough for every live node to have sent one heartbeat.
pub(super) fn warm_up(config: &CoordinatorConfig) -> Duration {
    config.heartbeat_interval * 3 / 2
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::RETRY;

    fn idle_leader(last_tick: Instant) -> Due {
        Due {
            connected: true,
            leading: true,
            needs_resync: false,
            expiry: None,
            evaluate_at: None,
            retry_at: None,
            warm_until: None,
            last_tick,
        }
    }
    #[test]
    fn the_backstop_counts_from_the_last_tick_not_from_the_last_event() {
        let t0 = Instant::now();
        let due = idle_leader(t0);
        assert_eq!(due.next_wake(t0), t0 + RECHECK);
        // Heartbeats every 0.4 s must not push it out.
        assert_eq!(due.next_wake(t0 + RECHECK * 2), t0 + RECHECK);
    }

    #[test]
    fn a_failed_resync_waits_for_its_retry_even_with_a_node_overdue() {
        let t0 = Instant::now();
        let mut due = idle_leader(t0);
        due.expiry = Some(t0 - Duration::from_secs(1));
        due.warm_until = Some(t0 - Duration::from_secs(1));
        due.needs_resync = true;
        // Not tried yet: at once.
        assert_eq!(due.next_wake(t0), t0);
        due.retry_at = Some(t0 + RETRY);
        assert_eq!(due.next_wake(t0), t0 + RETRY);
        // Once resynced, the overdue node is handled at once.
        due.needs_resync = false;
        due.retry_at = None;
        assert_eq!(due.next_wake(t0), t0 - Duration::from_secs(1));
    }

    #[test]
    fn a_passed_warm_up_still_wakes_the_leader() {
        let t0 = Instant::now();
        let mut due = idle_leader(t0);
        due.warm_until = Some(t0 + Duration::from_millis(1500));
        assert_eq!(due.next_wake(t0), t0 + RECHECK);
        due.last_tick = t0 + RECHECK;
        assert_eq!(
            due.next_wake(t0 + RECHECK),
            t0 + Duration::from_millis(1500)
        );
        // An event kept the loop busy past it: still due, now.
        let late = t0 + Duration::from_secs(2);
        assert_eq!(due.next_wake(late), t0 + Duration::from_millis(1500));
    }

    #[test]
    fn standbys_wait_only_for_expiries_and_a_frozen_view_for_nothing() {
        let t0 = Instant::now();
        let mut due = idle_leader(t0);
        due.leading = false;
        due.evaluate_at = Some(t0);
        due.retry_at = Some(t0);
        due.expiry = Some(t0 + Duration::from_millis(300));
        assert_eq!(due.next_wake(t0), t0 + Duration::from_millis(300));
        due.connected = false;
        due.leading = true;
        assert_eq!(due.next_wake(t0), t0 + RECHECK);
    }
}
