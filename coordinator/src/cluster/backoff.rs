//! Retry pauses that grow while a retry keeps failing: the NATS reconnect
//! schedule and the slot map watch's [`Backoff`].
//!
//! Every pause is drawn at random between zero and its step's ceiling
//! (full jitter): after an outage every node of a cluster starts failing at
//! the same moment, and fixed doubling pauses would then have them all
//! retry at the same instants. Owns the schedules (base, doubling, ceiling)
//! and the draw; it must not sleep or retry anything itself.

use std::time::Duration;

use super::RECONNECT_DELAY_MAX;

/// Ceiling of the first pause between two failed reconnect attempts.
const RECONNECT_DELAY_BASE: Duration = Duration::from_millis(100);

/// The pause before reconnect attempt `attempts` (async-nats counts from
/// 1): none for the first, then drawn below [`reconnect_ceiling`].
pub(super) fn reconnect_delay(attempts: usize) -> Duration {
    full_jitter(reconnect_ceiling(attempts))
}

/// Immediately, then 100 ms doubling up to [`RECONNECT_DELAY_MAX`].
fn reconnect_ceiling(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    (RECONNECT_DELAY_BASE * 2u32.pow(exponent)).min(RECONNECT_DELAY_MAX)
}

/// A pause drawn uniformly from zero to `ceiling`. Without random bytes
/// from the OS it is the ceiling itself: retrying in step beats panicking
/// inside the NATS client's reconnect loop.
pub(super) fn full_jitter(ceiling: Duration) -> Duration {
    let Ok(random) = getrandom::u64() else {
        return ceiling;
    };
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(random % nanos.saturating_add(1))
}

/// Pauses whose ceiling doubles from a base up to a maximum while retries
/// keep failing, and drops back to the base once one succeeds.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Starts at `base`; no ceiling ever exceeds `max`.
    pub(super) const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            ceiling: base,
        }
    }

    /// The pause before the next try, drawn below the current ceiling;
    /// the ceiling then doubles.
    pub(super) fn next_pause(&mut self) -> Duration {
        let pause = full_jitter(self.ceiling);
        self.ceiling = (self.ceiling * 2).min(self.max);
        pause
    }

    /// A try succeeded: the next failure starts from the base again.
    pub(super) fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pause within `0..=ceiling`, and spread over it: some in each
    /// half. Pauses that do not vary (no jitter) fail the second check; a
    /// jittered draw fails it with odds of 2^-63.
    fn assert_spread(pauses: &[Duration], ceiling: Duration) {
        assert!(
            pauses.iter().all(|pause| *pause <= ceiling),
            "a pause above {ceiling:?}: {pauses:?}"
        );
        let half = ceiling / 2;
        assert!(
            pauses.iter().any(|pause| *pause < half) && pauses.iter().any(|pause| *pause > half),
            "pauses do not vary below {ceiling:?}: {pauses:?}"
        );
    }

    #[test]
    fn reconnect_delay_is_capped() {
        assert_eq!(reconnect_ceiling(0), Duration::ZERO);
        assert_eq!(reconnect_ceiling(1), Duration::ZERO);
        assert_eq!(reconnect_ceiling(2), Duration::from_millis(100));
        assert_eq!(reconnect_ceiling(3), Duration::from_millis(200));
        assert_eq!(reconnect_ceiling(100), RECONNECT_DELAY_MAX);
    }

    #[test]
    fn reconnect_pauses_vary_below_their_ceiling() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for attempts in [2, 3, 4, 5, 6, 100, usize::MAX] {
            let pauses: Vec<Duration> = (0..64).map(|_| reconnect_delay(attempts)).collect();
            assert_spread(&pauses, reconnect_ceiling(attempts));
        }
    }

    #[test]
    fn backoff_pauses_vary_below_a_doubling_ceiling_and_reset() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(base, max);
        let ceilings = [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis);
        for ceiling in ceilings {
            assert_eq!(backoff.ceiling, ceiling);
            let pauses: Vec<Duration> = (0..64).map(|_| backoff.clone().next_pause()).collect();
            assert_spread(&pauses, ceiling);
            assert!(backoff.next_pause() <= ceiling);
        }
        backoff.reset();
        let pauses: Vec<Duration> = (0..64).map(|_| backoff.clone().next_pause()).collect();
        assert_spread(&pauses, base);
    }
}
