//! Retry pauses that double, with jitter. After an outage every room of a
//! node retries its snapshot, its state callback or its lock at once;
//! pauses that only double would keep them in lockstep, each retry a
//! burst. The plain schedule doubles from the first pause up to the
//! longest; each jittered pause is drawn from `[b, 2b)` where `b` is the
//! plain pause, at most half the longest. So a retry never comes sooner
//! than the plain schedule said (the webhook receivers and stores that
//! failed get at least that long), and never later than the longest.
//! Plain data; the caller sleeps.

use std::time::Duration;

/// A doubling schedule of retry pauses.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    /// The next pause before jitter.
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// Pauses from `first` doubling up to `longest`, jittered.
    pub fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            longest,
            next: first,
            jitter: true,
        }
    }

    /// The same schedule without jitter (tests that check exact times).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The next pause; the one after is twice as long (up to the longest).
    pub fn next_pause(&mut self) -> Duration {
        let plain = self.next;
        self.next = (plain * 2).min(self.longest);
        if !self.jitter {
            return plain;
        }
        let base = plain.min(self.longest / 2);
        let spread = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        base + Duration::from_nanos(fastrand::u64(0..spread.max(1)))
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(30);

    #[test]
    fn without_jitter_the_pauses_double_up_to_the_longest() {
        let mut backoff = Backoff::new(FIRST, LONGEST).without_jitter();
        let pauses: Vec<u64> = (0..7).map(|_| backoff.next_pause().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), FIRST);
    }

    #[test]
    fn jittered_pauses_vary_from_the_plain_schedule_to_twice_it() {
        let plain = [1, 2, 4, 8, 16, 30, 30].map(Duration::from_secs);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut backoff = Backoff::new(FIRST, LONGEST);
            for plain in plain {
                let pause = backoff.next_pause();
                let base = plain.min(LONGEST / 2);
                assert!(
                    pause >= base && pause < 2 * base,
                    "{pause:?} outside [{base:?}, {:?})",
                    2 * base
                );
                // Never sooner than the plain schedule below the cap.
                if plain <= LONGEST / 2 {
                    assert!(pause >= plain);
                }
                seen.insert(pause);
            }
        }
        // 350 draws from ranges of a second or more: lockstep would show
        // as a handful of values.
        assert!(seen.len() > 300, "only {} distinct pauses", seen.len());
    }
}
