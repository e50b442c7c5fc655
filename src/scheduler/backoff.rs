//! Retry pauses: exponential backoff with jitter, never shorter than a vendor's `Retry-After`.
//!
//! Owns: the arithmetic only. Must not: sleep (callers sleep, so they can also watch for a stop).

use std::time::Duration;

/// Exponential backoff with jitter between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: f64,
    max: f64,
    failures: u32,
}

impl Backoff {
    /// Starts at `initial_secs`, doubling per failure up to `max_secs`.
    pub fn new(initial_secs: f64, max_secs: f64) -> Self {
        Backoff {
            initial: initial_secs.max(0.0),
            max: max_secs.max(initial_secs).max(0.0),
            failures: 0,
        }
    }

    /// The pause before the next retry: half to all of the current step (so many clients do not
    /// retry in lock-step), but never less than `retry_after`.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let step = (self.initial * 2f64.powi(self.failures.min(30) as i32)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let jittered = Duration::from_secs_f64(step * (0.5 + fastrand::f64() * 0.5));
        match retry_after {
            Some(wait) => jittered.max(wait),
            None => jittered,
        }
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `base` plus a random delay of up to `jitter_secs`.
pub fn with_jitter(base: Duration, jitter_secs: f64) -> Duration {
    base + Duration::from_secs_f64(jitter_secs.max(0.0) * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(1.0, 8.0);
        let delays: Vec<f64> = (0..6).map(|_| b.next_delay(None).as_secs_f64()).collect();
        for (d, step) in delays.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(
                *d >= step * 0.5 && *d <= step,
                "{d} not in [{}, {step}]",
                step * 0.5
            );
        }
        b.reset();
        assert!(b.next_delay(None) <= Duration::from_secs(1));
    }

    #[test]
    fn never_shorter_than_retry_after() {
        let mut b = Backoff::new(0.1, 1.0);
        for _ in 0..20 {
            assert!(b.next_delay(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }
}
