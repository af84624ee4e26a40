//! Retry pauses every role shares: they start at a minimum and double,
//! each drawn from `[d, 2d)` and so never over the maximum. After an
//! outage the rooms of a node (or a gateway's streams) then do not all
//! retry at the same instants, and no retry comes sooner than the plain
//! doubling schedule below its cap. Plain schedules; callers sleep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Jittered pauses from `min` up to `max`. backon's jitter adds up to the
/// delay itself, hence the doubling stops at half of `max`.
pub fn jittered(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The same schedule without jitter: `min`, `2 min`, … up to `max` (tests
/// that check exact times).
pub fn plain(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_pauses_double_between_the_base_and_the_max() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut firsts = Vec::new();
        for _ in 0..20 {
            let pauses: Vec<Duration> = jittered(min, max).take(12).collect();
            // Never shorter than the un-jittered schedule below the cap,
            // never over the max.
            for (n, pause) in pauses.iter().enumerate() {
                let floor = (min * 2u32.pow(n.min(10) as u32)).min(max / 2);
                assert!(*pause >= floor - Duration::from_micros(1), "{n}: {pause:?}");
                assert!(*pause <= max, "{n}: {pause:?}");
            }
            firsts.push(pauses[0]);
        }
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() > 1, "no jitter: every first pause {firsts:?}");
    }
}
