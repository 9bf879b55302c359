//! Aggregates the dashboard shows, computed when a page reads them (never on the invocation
//! path): the median from the duration histogram, and CPU from two usage readings.

use std::collections::HashMap;
use std::time::Instant;

use crate::metrics::BUCKETS;

/// The median duration in ms from non-cumulative bucket counts (the last bucket above the
/// largest bound), estimated like Prometheus' `histogram_quantile`: linear within the bucket
/// holding the middle invocation (so inside the first one only "below 5 ms" is known), and the
/// largest bound when it is above every bound. `None` without invocations.
pub(crate) fn p50_ms(buckets: &[u64; BUCKETS.len() + 1]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = total as f64 / 2.0;
    let mut below = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        if *count > 0 && (below + count) as f64 >= rank {
            let Some(upper) = BUCKETS.get(i) else {
                // Above the largest bound: that bound is all that is known.
                return BUCKETS.last().map(|b| b * 1000.0);
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = (rank - below as f64) / *count as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += count;
    }
    None
}

/// CPU in millicores per function from successive readings of its cumulative CPU seconds.
#[derive(Debug, Default)]
pub(crate) struct CpuRate {
    /// The last reading and the rate it gave, per function.
    last: HashMap<String, (Instant, f64, Option<f64>)>,
}

impl CpuRate {
    /// Takes a reading of `function`'s CPU seconds at `now`; answers its millicores since the
    /// previous reading (`None` for the first, or when the counter went back: a replica
    /// stopped).
    pub(crate) fn update(&mut self, function: &str, now: Instant, cpu_seconds: f64) -> Option<f64> {
        let rate = self.last.get(function).and_then(|(then, before, _)| {
            let elapsed = now.checked_duration_since(*then)?.as_secs_f64();
            (elapsed >= 0.2 && cpu_seconds >= *before)
                .then(|| (cpu_seconds - before) / elapsed * 1000.0)
        });
        self.last
            .insert(function.to_owned(), (now, cpu_seconds, rate));
        rate
    }

    /// The rate the last reading of `function` gave.
    pub(crate) fn rate(&self, function: &str) -> Option<f64> {
        self.last.get(function).and_then(|(_, _, rate)| *rate)
    }

    /// Forgets functions not in `keep`.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.last.retain(|f, _| keep(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn buckets(counts: &[(usize, u64)]) -> [u64; BUCKETS.len() + 1] {
        let mut b = [0; BUCKETS.len() + 1];
        for (i, n) in counts {
            b[*i] = *n;
        }
        b
    }

    #[test]
    fn the_median_is_interpolated_within_its_bucket() {
        assert_eq!(p50_ms(&buckets(&[])), None);
        // Everything below 5 ms: the middle of the first bucket.
        assert_eq!(p50_ms(&buckets(&[(0, 10)])), Some(2.5));
        // 10 fast, 10 between 100 and 250 ms: the median sits at the fast bucket's top.
        assert_eq!(p50_ms(&buckets(&[(0, 10), (5, 10)])), Some(5.0));
        // 2 fast, 8 between 100 and 250 ms: 3/8 into that bucket.
        let p = p50_ms(&buckets(&[(0, 2), (5, 8)])).unwrap();
        assert!((p - (100.0 + 150.0 * 3.0 / 8.0)).abs() < 1e-9, "{p}");
        // Everything above 10 s: 10 s is all that is known.
        assert_eq!(p50_ms(&buckets(&[(BUCKETS.len(), 3)])), Some(10_000.0));
    }

    #[test]
    fn cpu_is_a_rate_between_readings() {
        let mut cpu = CpuRate::default();
        let t0 = Instant::now();
        assert_eq!(cpu.update("f", t0, 10.0), None);
        let m = cpu.update("f", t0 + Duration::from_secs(2), 11.0).unwrap();
        assert!((m - 500.0).abs() < 1e-9, "{m}");
        assert_eq!(cpu.rate("f"), Some(m));
        // The counter went back (a replica stopped): no rate this time.
        assert_eq!(cpu.update("f", t0 + Duration::from_secs(4), 1.0), None);
        assert_eq!(cpu.rate("f"), None);
        cpu.retain(|f| f != "f");
        assert_eq!(cpu.update("f", t0 + Duration::from_secs(6), 2.0), None);
    }
}
