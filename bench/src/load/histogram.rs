//! A fixed-size, lock-free log-bucket histogram of microsecond durations.
//!
//! Every connection task records into shared histograms with relaxed atomic
//! adds, so no task holds samples and nothing is merged at the end. Values
//! below 128 µs are exact; above, each power of two is split into 64 buckets,
//! so a reported percentile is within 1.6 % of the true sample (the maximum
//! is tracked exactly). About 30 KiB per histogram, whatever the sample count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Groups of buckets: one exact group for `0..64`, then one per power of two.
const GROUPS: usize = (u64::BITS - SUB_BITS + 1) as usize;
const BUCKETS: usize = GROUPS * SUB_BUCKETS as usize;

/// A concurrent histogram of durations in microseconds.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub(super) fn record(&self, duration: Duration) {
        self.record_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one value in microseconds.
    pub(super) fn record_micros(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Samples recorded so far.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0.0..=1.0) in microseconds: the smallest
    /// bucket value with at least `ceil(q · count)` samples at or below it,
    /// capped at the exact maximum. `None` without samples.
    pub(super) fn quantile_micros(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let max = self.max.load(Ordering::Relaxed);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(index).min(max));
            }
        }
        Some(max)
    }

    /// p50 / p99 / max in milliseconds.
    pub(super) fn summary(&self) -> Percentiles {
        let ms = |micros: Option<u64>| micros.map(|micros| micros as f64 / 1000.0);
        Percentiles {
            count: self.count(),
            p50_ms: ms(self.quantile_micros(0.50)),
            p99_ms: ms(self.quantile_micros(0.99)),
            max_ms: ms((self.count() > 0).then(|| self.max.load(Ordering::Relaxed))),
        }
    }
}

/// Quantiles of one histogram, in milliseconds (`None` when empty).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Largest sample (exact).
    pub max_ms: Option<f64>,
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let exponent = u64::BITS - 1 - value.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) & (SUB_BUCKETS - 1);
    ((shift + 1) as u64 * SUB_BUCKETS + sub) as usize
}

/// The midpoint of a bucket's value range.
fn bucket_value(index: usize) -> u64 {
    let group = index as u64 / SUB_BUCKETS;
    let sub = index as u64 % SUB_BUCKETS;
    if group == 0 {
        return sub;
    }
    let shift = group - 1;
    let low = (SUB_BUCKETS + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let histogram = Histogram::default();
        for value in 1..=100 {
            histogram.record_micros(value);
        }
        assert_eq!(histogram.count(), 100);
        assert_eq!(histogram.quantile_micros(0.5), Some(50));
        assert_eq!(histogram.quantile_micros(0.99), Some(99));
        assert_eq!(histogram.quantile_micros(1.0), Some(100));
        assert_eq!(histogram.quantile_micros(0.0), Some(1));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let histogram = Histogram::default();
        assert_eq!(histogram.quantile_micros(0.5), None);
        assert_eq!(histogram.summary(), Percentiles::default());
    }

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut previous = 0;
        for value in (0..20_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket >= previous, "bucket order at {value}");
            assert!(bucket < BUCKETS);
            previous = bucket;
        }
    }

    #[test]
    fn relative_error_is_bounded() {
        for value in [
            200u64,
            1_234,
            99_999,
            250_000,
            1_000_000,
            7_777_777,
            1 << 40,
        ] {
            let histogram = Histogram::default();
            histogram.record_micros(value);
            histogram.record_micros(u64::MAX / 2); // keep the max cap out of the way
            let estimate = histogram.quantile_micros(0.5).unwrap();
            let error = (estimate as f64 - value as f64).abs() / value as f64;
            assert!(error <= 1.0 / 64.0, "{value} -> {estimate} ({error})");
        }
    }

    #[test]
    fn percentiles_of_a_skewed_distribution() {
        let histogram = Histogram::default();
        // 990 fast samples at 1 ms, 10 slow ones at 300 ms
        for _ in 0..990 {
            histogram.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            histogram.record(Duration::from_millis(300));
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 1000);
        let p50 = summary.p50_ms.unwrap();
        assert!((p50 - 1.0).abs() < 0.02, "p50 {p50}");
        let p99 = summary.p99_ms.unwrap();
        assert!(
            (p99 - 1.0).abs() < 0.02,
            "p99 is rank 990, still fast: {p99}"
        );
        assert_eq!(summary.max_ms, Some(300.0));
        let p999 = histogram.quantile_micros(0.999).unwrap();
        assert!((p999 as f64 - 300_000.0).abs() / 300_000.0 < 0.016);
    }

    #[test]
    fn concurrent_recording_counts_everything() {
        let histogram = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for value in 0..10_000 {
                        histogram.record_micros(value);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(histogram.count(), 40_000);
        assert_eq!(histogram.summary().max_ms, Some(9.999));
    }
}
