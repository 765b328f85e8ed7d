//! The reconnect policy: capped exponential backoff with jitter.

use std::time::Duration;

/// When and how often the event loop reconnects after a connection is lost.
///
/// The delay before attempt `n` (0-based) is `min(max_delay, initial_delay * 2^n)`, reduced
/// by a random part of up to `jitter` of itself so that many clients do not come back at the
/// same instant. The first connection is not retried: [`crate::ClientBuilder::connect`]
/// reports its error.
///
/// ```
/// use std::time::Duration;
/// use sagitta_client::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10))
///     .jitter(0.2)
///     .max_attempts(20);
/// assert!(policy.is_enabled());
/// assert!(!ReconnectPolicy::disabled().is_enabled());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    enabled: bool,
    initial_delay: Duration,
    max_delay: Duration,
    jitter: f64,
    max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// Enabled: 500 ms doubling up to 30 s, jitter 0.5, no attempt limit.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl ReconnectPolicy {
    /// No reconnect: a lost connection closes the client and fails what is pending.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Reconnect forever, starting after `initial_delay`, doubling up to `max_delay`, with
    /// jitter 0.5.
    pub fn exponential(initial_delay: Duration, max_delay: Duration) -> Self {
        Self {
            enabled: true,
            initial_delay,
            max_delay: max_delay.max(initial_delay),
            jitter: 0.5,
            max_attempts: None,
        }
    }

    /// Takes up to `fraction` (0.0 to 1.0) of each delay away at random.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Gives up after `attempts` failed attempts in a row; the client then closes with
    /// [`crate::ClientError::Reconnect`].
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// True unless [`Self::disabled`].
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// True if `failed` attempts in a row exhaust the policy.
    pub(crate) fn exhausted(&self, failed: u32) -> bool {
        self.max_attempts.is_some_and(|max| failed >= max)
    }

    /// The delay before attempt `attempt` (0-based); `random` is uniform in `[0, 1)`.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self
            .initial_delay
            .saturating_mul(factor)
            .min(self.max_delay);
        let factor = 1.0 - self.jitter * random.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = ReconnectPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(0.0);
        let delays: Vec<_> = (0..6).map(|n| p.delay(n, 0.7).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_takes_at_most_its_fraction() {
        let p = ReconnectPolicy::exponential(Duration::from_millis(1000), Duration::from_secs(10))
            .jitter(0.5);
        assert_eq!(p.delay(0, 0.0), Duration::from_millis(1000));
        assert_eq!(p.delay(0, 0.5), Duration::from_millis(750));
        assert_eq!(p.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(p.clone().jitter(7.0).delay(0, 1.0), Duration::ZERO);
        assert_eq!(p.jitter(f64::NAN).delay(0, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn attempts_limit() {
        let p = ReconnectPolicy::default().max_attempts(3);
        assert!(!p.exhausted(2));
        assert!(p.exhausted(3));
        assert!(!ReconnectPolicy::default().exhausted(u32::MAX));
        assert!(!ReconnectPolicy::disabled().is_enabled());
    }
}
