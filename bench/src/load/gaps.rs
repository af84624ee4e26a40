//! Delivery gaps: per room, the longest silence between two consecutive
//! deliveries.
//!
//! A *delivery* here is a frame from the server that brought a client of the
//! room at least one update of this run it had not seen (duplicates do not
//! count). Every client of a room feeds the same [`GapTracker`], so a room's
//! gap is the time during which *no* client of the room received anything
//! new — what the failover benchmark measures as "time until the room's
//! updates flow again". The time before a room's first delivery and after
//! its last one is not a gap.
//!
//! Receive times come from several connection tasks, so a tracker may see
//! them slightly out of order (by task scheduling, microseconds); a time
//! earlier than the latest one seen is counted as a delivery but does not
//! split a gap already measured, so a gap can be overstated by at most that
//! scheduling skew.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::histogram::Percentiles;

/// One room's deliveries so far, as the gap computation needs them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GapTracker {
    /// Deliveries observed.
    pub deliveries: u64,
    /// Time of the latest delivery, µs since the run's epoch.
    pub last_micros: u64,
    /// The longest gap so far, µs (0 with fewer than two deliveries).
    pub max_gap_micros: u64,
    /// When that gap started (the delivery before it), µs since the epoch.
    pub gap_started_micros: u64,
}

impl GapTracker {
    /// Records a delivery at `at_micros`.
    pub(super) fn observe(&mut self, at_micros: u64) {
        self.deliveries += 1;
        if self.deliveries == 1 {
            self.last_micros = at_micros;
            return;
        }
        if at_micros <= self.last_micros {
            return; // seen late by its task; inside a gap already measured
        }
        let gap = at_micros - self.last_micros;
        if gap > self.max_gap_micros {
            self.max_gap_micros = gap;
            self.gap_started_micros = self.last_micros;
        }
        self.last_micros = at_micros;
    }

    /// The longest gap, if the room had two deliveries.
    pub(super) fn max_gap(&self) -> Option<u64> {
        (self.deliveries >= 2).then_some(self.max_gap_micros)
    }
}

/// The gap trackers of every room of one step, with the room's owed and
/// received deliveries (to tell which rooms lost updates).
#[derive(Default)]
pub(crate) struct RoomGaps {
    rooms: Box<[Mutex<GapTracker>]>,
    expected: Box<[AtomicU64]>,
    delivered: Box<[AtomicU64]>,
}

impl RoomGaps {
    /// Trackers for `rooms` rooms.
    pub(super) fn new(rooms: usize) -> Self {
        Self {
            rooms: (0..rooms)
                .map(|_| Mutex::new(GapTracker::default()))
                .collect(),
            expected: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `count` deliveries owed to the clients of `room`.
    pub(super) fn owe(&self, room: usize, count: u64) {
        if let Some(expected) = self.expected.get(room) {
            expected.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Adds `count` deliveries received by clients of `room`.
    pub(super) fn received(&self, room: usize, count: u64) {
        if let Some(delivered) = self.delivered.get(room) {
            delivered.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Deliveries owed to `room` and not received.
    pub(super) fn missing(&self, room: usize) -> u64 {
        let load = |counters: &[AtomicU64]| {
            counters
                .get(room)
                .map_or(0, |counter| counter.load(Ordering::Relaxed))
        };
        load(&self.expected).saturating_sub(load(&self.delivered))
    }

    /// Records a delivery to a client of `room` at `at_micros`.
    pub(super) fn observe(&self, room: usize, at_micros: u64) {
        if let Some(tracker) = self.rooms.get(room) {
            tracker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .observe(at_micros);
        }
    }

    /// A copy of every room's tracker, by room index.
    pub(super) fn snapshot(&self) -> Vec<GapTracker> {
        self.rooms
            .iter()
            .map(|tracker| {
                *tracker
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            })
            .collect()
    }
}

/// p50 / p99 / max of the rooms' longest gaps, in ms, over the rooms that
/// had at least two deliveries (`count`). Exact nearest-rank percentiles.
pub(crate) fn summarize(trackers: &[GapTracker]) -> Percentiles {
    let mut gaps: Vec<u64> = trackers.iter().filter_map(GapTracker::max_gap).collect();
    gaps.sort_unstable();
    let at = |q: f64| -> Option<f64> {
        if gaps.is_empty() {
            return None;
        }
        let rank = ((q * gaps.len() as f64).ceil() as usize).clamp(1, gaps.len());
        Some(gaps[rank - 1] as f64 / 1000.0)
    };
    Percentiles {
        count: gaps.len() as u64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_and_its_start() {
        let mut tracker = GapTracker::default();
        assert_eq!(tracker.max_gap(), None);
        tracker.observe(1_000);
        assert_eq!(tracker.max_gap(), None, "one delivery is no gap");
        for at in [1_100, 1_250, 4_250, 4_300, 5_000] {
            tracker.observe(at);
        }
        assert_eq!(tracker.max_gap(), Some(3_000));
        assert_eq!(tracker.gap_started_micros, 1_250);
        assert_eq!(tracker.last_micros, 5_000);
        assert_eq!(tracker.deliveries, 6);
    }

    #[test]
    fn first_of_equal_gaps_wins_and_late_times_do_not_open_gaps() {
        let mut tracker = GapTracker::default();
        for at in [0, 500, 1_000] {
            tracker.observe(at);
        }
        assert_eq!(tracker.max_gap(), Some(500));
        assert_eq!(tracker.gap_started_micros, 0, "the first of two equal gaps");
        // a time seen late by its task, then one at the same instant
        tracker.observe(900);
        tracker.observe(1_000);
        assert_eq!(tracker.last_micros, 1_000);
        assert_eq!(tracker.max_gap(), Some(500));
        assert_eq!(tracker.deliveries, 5);
        tracker.observe(1_600);
        assert_eq!(tracker.max_gap(), Some(600), "measured from the latest");
        assert_eq!(tracker.gap_started_micros, 1_000);
    }

    #[test]
    fn gaps_start_after_the_first_delivery_not_at_time_zero() {
        let mut tracker = GapTracker::default();
        tracker.observe(10_000_000); // first delivery 10 s into the run
        tracker.observe(10_001_000);
        assert_eq!(tracker.max_gap(), Some(1_000));
        assert_eq!(tracker.gap_started_micros, 10_000_000);
    }

    #[test]
    fn rooms_are_tracked_apart() {
        let gaps = RoomGaps::new(2);
        for at in [0, 100, 200] {
            gaps.observe(0, at);
        }
        gaps.observe(1, 50);
        gaps.observe(1, 2_050);
        gaps.observe(7, 0); // no such room: ignored
        let rooms = gaps.snapshot();
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[0].max_gap(), Some(100));
        assert_eq!(rooms[1].max_gap(), Some(2_000));
        assert_eq!(rooms[1].gap_started_micros, 50);
        gaps.owe(1, 10);
        gaps.received(1, 7);
        gaps.received(0, 3);
        gaps.owe(9, 1); // no such room: ignored
        assert_eq!(
            (gaps.missing(0), gaps.missing(1), gaps.missing(9)),
            (0, 3, 0)
        );
    }

    #[test]
    fn percentiles_over_rooms() {
        assert_eq!(summarize(&[]), Percentiles::default());
        let room = |gap_ms: u64| {
            let mut tracker = GapTracker::default();
            tracker.observe(0);
            tracker.observe(gap_ms * 1000);
            tracker
        };
        let mut rooms: Vec<GapTracker> = (1..=100).map(room).collect();
        rooms.push(GapTracker::default()); // no deliveries: not counted
        let mut single = GapTracker::default();
        single.observe(5);
        rooms.push(single); // one delivery: not counted
        let summary = summarize(&rooms);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_ms, Some(50.0));
        assert_eq!(summary.p99_ms, Some(99.0));
        assert_eq!(summary.max_ms, Some(100.0));
        let one = summarize(&[room(7)]);
        assert_eq!(
            (one.count, one.p50_ms, one.p99_ms, one.max_ms),
            (1, Some(7.0), Some(7.0), Some(7.0))
        );
    }
}
