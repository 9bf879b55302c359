//! A function's latest invocations (status, duration, when) in a fixed ring, for the
//! dashboard. Written on the invocation path under the metrics' existing lock: a store into
//! an array, no allocation, no formatting.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::ui::model::Invocation;

/// Invocations kept per function.
pub(crate) const RECENT: usize = 32;

/// The ring.
#[derive(Clone, Debug)]
pub(crate) struct Recent {
    slots: [Invocation; RECENT],
    /// Invocations recorded so far (the next slot is `written % RECENT`).
    written: u64,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: [Invocation::default(); RECENT],
            written: 0,
        }
    }
}

impl Recent {
    /// Records an invocation that ended now with `status` after `seconds`.
    #[inline]
    pub(crate) fn record(&mut self, status: u16, seconds: f64) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // Saturating float-to-int cast: at most u32::MAX µs (71 minutes).
        let micros = (seconds * 1e6) as u32;
        let slot = (self.written % RECENT as u64) as usize;
        self.slots[slot] = Invocation {
            at_ms,
            status,
            micros,
        };
        self.written += 1;
    }

    /// Invocations recorded since the start.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// The kept invocations, newest first.
    pub(crate) fn newest_first(&self) -> Vec<Invocation> {
        let kept = self.written.min(RECENT as u64) as usize;
        (1..=kept)
            .map(|back| {
                let index = (self.written - back as u64) % RECENT as u64;
                self.slots[index as usize]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_newest_first() {
        let mut r = Recent::default();
        assert!(r.newest_first().is_empty());
        r.record(200, 0.001);
        r.record(500, 0.25);
        let got = r.newest_first();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].status, got[0].micros), (500, 250_000));
        assert_eq!((got[1].status, got[1].micros), (200, 1_000));
        assert!(got[0].at_ms > 0);
        for i in 0..(RECENT as u16 + 5) {
            r.record(i, 0.0);
        }
        let got = r.newest_first();
        assert_eq!(got.len(), RECENT);
        assert_eq!(got[0].status, RECENT as u16 + 4);
        assert_eq!(got[RECENT - 1].status, 5);
        assert_eq!(r.written(), RECENT as u64 + 7);
        // Absurd durations saturate instead of wrapping.
        r.record(200, 1e9);
        assert_eq!(r.newest_first()[0].micros, u32::MAX);
    }
}
