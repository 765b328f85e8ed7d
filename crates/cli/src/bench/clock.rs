//! The bench clock: nanoseconds since the UNIX epoch, read from a monotonic [`Instant`].
//!
//! The wall-clock time is sampled once at start; after that the clock advances with
//! `Instant`, so it never jumps within a run. Using the epoch as origin (rather than the run's
//! start) keeps the timestamps of two bench processes on the same host comparable, so
//! `bench sub` can measure latency of messages sent by a separate `bench pub`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A monotonic clock in nanoseconds since the UNIX epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    epoch_ns: u64,
}

impl Clock {
    /// A clock anchored now.
    pub fn new() -> Self {
        let epoch_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
            .unwrap_or(0);
        Self {
            start: Instant::now(),
            epoch_ns,
        }
    }

    /// Current time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.at(Instant::now())
    }

    /// The clock's reading at `instant`.
    pub fn at(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.start);
        self.epoch_ns
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_follows_instants() {
        let c = Clock::new();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        let now = Instant::now();
        let later = now + std::time::Duration::from_millis(5);
        assert_eq!(c.at(later) - c.at(now), 5_000_000);
        // Anchored on the wall clock: within a minute of SystemTime.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(c.now_ns().abs_diff(wall) < 60_000_000_000);
    }
}
