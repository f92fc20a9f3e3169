//! Exponential backoff with jitter, for every retry loop in the core.

use rand::Rng;
use std::time::Duration;

/// Delays that start near `initial`, double on each failure up to `max`, and carry ±20 %
/// jitter so that many clients recovering from the same outage do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self { initial, max, current: initial }
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0.8..1.2);
        let delay = self.current.mul_f64(jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_secs_f64()).collect();
        let expected = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8];
        for (d, e) in delays.iter().zip(expected) {
            assert!(*d >= e * 0.8 - 1e-9 && *d <= e * 1.2 + 1e-9, "{d} not within 20% of {e}");
        }
        b.reset();
        let d = b.next_delay().as_secs_f64();
        assert!((0.08..=0.12).contains(&d), "{d}");
    }
}
