//! Rate limits: a token bucket, used for the broker-wide connection rate
//! (`max_connection_rate`) and for each client's publish rate and bandwidth
//! (`max_publish_rate`, `max_publish_bandwidth`).

use std::time::{Duration, Instant};

/// Tokens flow in at `rate` per second up to `burst`; taking more than there are leaves a
/// debt that says how long to wait.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` tokens per second, at most one second's worth saved up.
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = rate.max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if needed; returns how long until the debt is paid.
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A client's publish limits: messages and bytes per second.
#[derive(Debug)]
pub(crate) struct PublishLimit {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Whether the client was told about in the log already.
    logged: bool,
}

impl PublishLimit {
    /// `None` when both rates are 0 (unlimited).
    pub fn new(messages_per_sec: u32, bytes_per_sec: u64, now: Instant) -> Option<Self> {
        let bucket = |rate: f64| (rate > 0.0).then(|| TokenBucket::new(rate, now));
        let limit = Self {
            messages: bucket(f64::from(messages_per_sec)),
            bytes: bucket(bytes_per_sec as f64),
            logged: false,
        };
        (limit.messages.is_some() || limit.bytes.is_some()).then_some(limit)
    }

    /// Counts a PUBLISH of `size` bytes; returns how long the client must wait (no reads)
    /// before it may go on, and whether that is the first time (to log it once).
    pub fn publish(&mut self, size: usize, now: Instant) -> (Duration, bool) {
        let m = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(1.0, now));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(size as f64, now));
        let wait = m.max(b);
        let first = !wait.is_zero() && !std::mem::replace(&mut self.logged, true);
        (wait, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_and_makes_debt_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        for _ in 0..10 {
            assert!(b.try_take(1.0, t0));
        }
        assert!(!b.try_take(1.0, t0));
        assert!(b.try_take(1.0, t0 + Duration::from_millis(100)));
        let wait = b.take(5.0, t0 + Duration::from_millis(100));
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn publish_limits_wait_for_the_slower_of_messages_and_bytes() {
        let t0 = Instant::now();
        assert!(PublishLimit::new(0, 0, t0).is_none());
        let mut l = PublishLimit::new(100, 1000, t0).unwrap();
        // 1000 bytes of burst, then 500 bytes of debt: 0.5 s.
        assert_eq!(l.publish(1000, t0), (Duration::ZERO, false));
        let (wait, first) = l.publish(500, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9 && first);
        let (_, first) = l.publish(1, t0);
        assert!(!first, "logged once");
    }
}
