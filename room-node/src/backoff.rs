//! A room's retry pauses with a reset: the shared schedule of
//! [`partyline_proto::retry`] (doubling, each pause drawn from `[b, 2b)`
//! where `b` is the plain pause, at most half the longest), restarted
//! after a success. After an outage a node's rooms then do not retry their
//! snapshots, state callbacks or locks in lockstep, and no retry comes
//! sooner than the plain schedule said. Plain data; the caller sleeps.

use std::time::Duration;

use backon::ExponentialBackoff;
use partyline_proto::retry;

/// A doubling schedule of retry pauses that can start over.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    jitter: bool,
    /// Made at the first pause: every room's snapshot schedule holds a
    /// `Backoff`, and only failing ones need the (large) schedule.
    pauses: Option<Box<ExponentialBackoff>>,
}

impl Backoff {
    /// Pauses from `first` doubling up to `longest`, jittered.
    pub fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            longest,
            jitter: true,
            pauses: None,
        }
    }

    /// The same schedule without jitter (tests that check exact times).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self.pauses = None;
        self
    }

    /// The next pause; the one after is twice as long (up to the longest).
    pub fn next_pause(&mut self) -> Duration {
        let (first, longest, jitter) = (self.first, self.longest, self.jitter);
        let pauses = self.pauses.get_or_insert_with(|| {
            Box::new(if jitter {
                retry::jittered(first, longest)
            } else {
                retry::plain(first, longest)
            })
        });
        // Endless schedules: `next` always has one.
        pauses.next().unwrap_or(longest)
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.pauses = None;
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
