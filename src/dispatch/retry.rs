//! The retry policy: exponential backoff with jitter, a cap, and limits on
//! attempts and age.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Each further retry waits this many times longer.
    pub multiplier: f64,
    /// No retry waits longer than this (unless the server asks for longer).
    pub max_delay: Duration,
    /// ± this fraction of random spread, so that many failed messages do
    /// not come back at the same instant.
    pub jitter: f64,
    /// Give up when the notification is older than this.
    pub max_age: Duration,
    /// Give up after this many attempts; 0 = only `max_age` limits.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
            max_age: Duration::from_secs(24 * 3600),
            max_attempts: 0,
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt (1-based), before
    /// jitter.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay to wait after the `attempts`-th failed attempt, with jitter,
    /// and at least what the server asked for.
    pub fn delay(&self, attempts: u32, server_asked: Option<Duration>) -> Duration {
        let base = self.base_delay(attempts).as_secs_f64();
        let spread = base * self.jitter;
        let jittered = if spread > 0.0 {
            base + rand::rng().random_range(-spread..=spread)
        } else {
            base
        };
        let d = Duration::from_secs_f64(jittered.max(0.0));
        match server_asked {
            Some(s) if s > d => s,
            _ => d,
        }
    }

    /// Whether to stop retrying after `attempts` attempts at `age`.
    pub fn exhausted(&self, attempts: u32, age: Duration) -> bool {
        (self.max_attempts > 0 && attempts >= self.max_attempts) || age >= self.max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..Default::default()
        };
        assert_eq!(p.delay(1, None), Duration::from_secs(2));
        assert_eq!(p.delay(2, None), Duration::from_secs(4));
        assert_eq!(p.delay(5, None), Duration::from_secs(32));
        assert_eq!(p.delay(30, None), Duration::from_secs(300));
        assert_eq!(p.delay(1000, None), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy::default();
        for _ in 0..1000 {
            let d = p.delay(3, None).as_secs_f64();
            assert!((6.4..=9.6).contains(&d), "{d}");
        }
    }

    #[test]
    fn a_longer_server_back_off_wins() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn limits_end_retrying() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        assert!(!p.exhausted(2, Duration::from_secs(1)));
        assert!(p.exhausted(3, Duration::from_secs(1)));
        assert!(p.exhausted(1, Duration::from_secs(24 * 3600)));
    }
}
